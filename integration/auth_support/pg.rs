//! A throwaway PostgreSQL server for tests.
//!
//! `TempPostgres::start` runs initdb in a fresh temporary directory, writes
//! the test's pg_hba.conf, and starts the server on 127.0.0.1 with a free
//! port and a unix socket inside that directory, so tests never collide with
//! each other or with a system server. Dropping it stops the server
//! (immediate mode) and deletes the directory, also when a test panics.
//!
//! PostgreSQL refuses to run as root; when the tests run as root (CI does)
//! every PostgreSQL binary runs as the `postgres` system user via `runuser`.
//! The binaries come from `$PGWARDEN_PG_BIN`, by default Debian's
//! PostgreSQL 15 directory.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the PostgreSQL binaries are unless `PGWARDEN_PG_BIN` says otherwise.
pub const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// How long `pg_ctl` may wait for the server to start or stop.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// Ports tried before giving up (another process may take a free port
/// between our probe and the server's bind).
const START_ATTEMPTS: usize = 3;
/// The superuser, which logs in over the unix socket without a password.
pub const SUPERUSER: &str = "postgres";

/// A running throwaway server; stopped and deleted on drop.
pub struct TempPostgres {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    running: bool,
}

impl TempPostgres {
    /// Initializes and starts a server. `hba_lines` are pg_hba.conf lines
    /// added after one that lets the superuser in over the unix socket.
    pub fn start(hba_lines: &[&str]) -> Result<TempPostgres, String> {
        let bin = pg_bin();
        if !bin.join("postgres").exists() {
            return Err(format!(
                "no PostgreSQL binaries in {} (install postgresql-15 or set PGWARDEN_PG_BIN)",
                bin.display()
            ));
        }
        // From here on the guard exists, so any failure cleans up.
        let mut pg = TempPostgres { root: make_temp_dir()?, bin, port: 0, running: false };
        pg.init(hba_lines)?;
        pg.start_on_free_port()?;
        Ok(pg)
    }

    /// The server's TCP address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Runs SQL as the superuser with psql; returns its unaligned,
    /// tuples-only output (one row a line, columns separated by `|`).
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        let conninfo = format!(
            "host={} port={} user={SUPERUSER} dbname=postgres client_encoding=UTF8",
            self.socket_dir().display(),
            self.port
        );
        let output = self
            .command("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &conninfo, "-c", sql])
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        check("psql", &output)?;
        Ok(String::from_utf8_lossy(&output.stdout).trim_end().to_owned())
    }

    fn init(&self, hba_lines: &[&str]) -> Result<(), String> {
        fs::create_dir(self.socket_dir()).map_err(|e| format!("cannot create socket dir: {e}"))?;
        give_to_postgres(&self.root)?;
        give_to_postgres(&self.socket_dir())?;
        let data = self.data_dir();
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])
            .output()
            .map_err(|e| format!("cannot run initdb: {e}"))?;
        check("initdb", &output)?;
        let mut hba = format!("local all {SUPERUSER} trust\n");
        for line in hba_lines {
            hba.push_str(line);
            hba.push('\n');
        }
        // The file exists (initdb wrote it), so it keeps postgres as owner.
        fs::write(data.join("pg_hba.conf"), hba).map_err(|e| format!("cannot write pg_hba.conf: {e}"))
    }

    fn start_on_free_port(&mut self) -> Result<(), String> {
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            self.port = free_port()?;
            self.running = true; // a half-started server must be stopped too
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.stop();
                    last_error = e;
                }
            }
        }
        Err(last_error)
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} \
             -c fsync=off -c max_connections=20 -c shared_buffers=16MB",
            self.port,
            self.socket_dir().display()
        );
        let output = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_file())
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "-o", &options, "start"])
            .output()
            .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        check("pg_ctl start", &output).map_err(|e| format!("{e}\nserver log:\n{}", self.log()))
    }

    fn stop(&mut self) {
        if !std::mem::take(&mut self.running) {
            return;
        }
        let result = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "-t", PG_CTL_TIMEOUT_SECS, "stop"])
            .output();
        if let Err(e) = result.map_err(|e| e.to_string()).and_then(|o| check("pg_ctl stop", &o)) {
            eprintln!("warning: stopping the test PostgreSQL: {e}");
        }
    }

    /// The server log, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// A command running a PostgreSQL binary as the postgres user when we are
    /// root, as ourselves otherwise.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", SUPERUSER, "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.root.join("sock")
    }

    fn log_file(&self) -> PathBuf {
        self.root.join("server.log")
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        self.stop();
        if let Err(e) = fs::remove_dir_all(&self.root) {
            eprintln!("warning: removing {}: {e}", self.root.display());
        }
    }
}

/// The directory of the PostgreSQL binaries: `$PGWARDEN_PG_BIN` or
/// [`DEFAULT_PG_BIN`].
pub fn pg_bin() -> PathBuf {
    PathBuf::from(std::env::var("PGWARDEN_PG_BIN").unwrap_or_else(|_| DEFAULT_PG_BIN.into()))
}

fn make_temp_dir() -> Result<PathBuf, String> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let name =
        format!("pgwarden-pg-{}-{nanos}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let dir = std::env::temp_dir().join(name);
    fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("cannot probe a free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn running_as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Makes `path` owned by the postgres user (when we are root and may).
fn give_to_postgres(path: &Path) -> Result<(), String> {
    if !running_as_root() {
        return Ok(());
    }
    let (uid, gid) = postgres_ids()?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| format!("cannot chown {}: {e}", path.display()))
}

/// The postgres user's uid and gid, from /etc/passwd.
fn postgres_ids() -> Result<(u32, u32), String> {
    let passwd = fs::read_to_string("/etc/passwd").map_err(|e| format!("cannot read /etc/passwd: {e}"))?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&SUPERUSER))
        .and_then(|fields| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
        .ok_or_else(|| format!("no {SUPERUSER} user in /etc/passwd (install postgresql-15)"))
}

fn check(what: &str, output: &Output) -> Result<(), String> {
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}
