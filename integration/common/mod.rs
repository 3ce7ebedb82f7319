//! Test harness shared by the end-to-end tests: a throwaway Postgres per test
//! binary, the pgwarden binary started on a config built by the test, and
//! helpers to run real clients (psql, pgbench, tokio-postgres) through it.
//!
//! - [`PgServer`]: initdb + pg_ctl in a temp dir on a free port, listening on
//!   127.0.0.1 only (unix socket inside the temp dir, trusted; TCP logins use
//!   scram-sha-256). As root it runs as the `postgres` system user, like
//!   `scripts/pg.sh`. [`PgServer::shared`] starts one per test binary and stops
//!   it when the process exits (an `atexit` hook, plus a watchdog process in
//!   case the test binary is killed).
//! - [`Proxy`]: `pgwarden --config FILE`, waiting (bounded) for its
//!   `listening on ADDR` log line; a thread keeps draining its output into a
//!   buffer so the pipe never fills. Dropping it kills the process.
//! - [`config`]: the standard test config (user `app`/`app-secret`, database
//!   `app`, two workers, transaction pooling, a small pool) with overrides.
//! - [`run`]: child processes with a deadline, so a hung proxy fails a test
//!   instead of hanging CI. Passwords go through the environment, never on a
//!   command line or in a failure message.
#![allow(dead_code)]

pub mod pki;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The login every standard config has.
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app-secret";
pub const APP_DB: &str = "app";
/// A second login and database, created on the shared server, for tests of
/// separate pools. Not in the standard config: add [`app2_entries`].
pub const APP2_USER: &str = "app2";
pub const APP2_PASSWORD: &str = "app2-secret";
pub const APP2_DB: &str = "app2";

/// How long the proxy may take to log `listening on`.
pub const PROXY_START_TIMEOUT: Duration = Duration::from_secs(20);
/// Default deadline for one psql run.
pub const PSQL_TIMEOUT: Duration = Duration::from_secs(60);
/// Default deadline for one pgbench run.
pub const PGBENCH_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// A name no other test (or test run) uses: `prefix_<pid>_<n>`. Safe as an
/// SQL identifier if `prefix` is.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{}_{}_{}", prefix, std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn postgres_ids() -> (u32, u32) {
    let name = CString::new("postgres").unwrap();
    // SAFETY: getpwnam returns a pointer to static storage or null; we copy
    // the two fields out at once, and tests only call this during the
    // one-time server start.
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        assert!(
            !pw.is_null(),
            "running as root but there is no 'postgres' system user; run scripts/install-deps.sh"
        );
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}

/// The highest installed Postgres bin directory (`PG_BINDIR` overrides).
pub fn pg_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let version: Vec<u32> =
                entry.file_name().to_string_lossy().split('.').map(|p| p.parse().unwrap_or(0)).collect();
            let bin = entry.path().join("bin");
            if bin.join("pg_ctl").exists() && best.as_ref().is_none_or(|(v, _)| version > *v) {
                best = Some((version, bin));
            }
        }
    }
    best.map(|(_, bin)| bin)
        .expect("no Postgres in /usr/lib/postgresql/*/bin; run scripts/install-deps.sh (or set PG_BINDIR)")
}

/// The pgwarden binary under test (`PGWARDEN_BIN` overrides, e.g. to try a
/// release build).
pub fn pgwarden_bin() -> PathBuf {
    match std::env::var_os("PGWARDEN_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_BIN_EXE_pgwarden")),
    }
}

/// The repository root (for example configs and helper scripts).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn new_temp_dir(prefix: &str) -> PathBuf {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("{}-{}-{}", prefix, std::process::id(), nanos));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Removes environment variables that would make libpq clients connect
/// somewhere else than the test says.
fn clear_libpq_env(cmd: &mut Command) {
    for var in [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
        "PGPASSFILE",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGOPTIONS",
        "PGAPPNAME",
        "PGSSLMODE",
        "PGCONNECT_TIMEOUT",
        "PGTARGETSESSIONATTRS",
    ] {
        cmd.env_remove(var);
    }
}

// ---------------------------------------------------------------------------
// Running child processes with a deadline
// ---------------------------------------------------------------------------

/// What a finished (or killed) child process left behind.
#[derive(Debug)]
pub struct CmdOutput {
    /// The command line, for messages (never contains a password).
    pub what: String,
    /// None if it was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CmdOutput {
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// stdout and stderr together.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Panics with the whole output unless the command exited 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "command failed: {self}");
        self
    }
}

impl std::fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = match self.status {
            Some(s) => format!("{s}"),
            None => "KILLED AT DEADLINE (hung?)".to_string(),
        };
        write!(
            f,
            "`{}` -> {} after {:.1}s\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            status,
            self.elapsed.as_secs_f64(),
            tail(&self.stdout, 8000),
            tail(&self.stderr, 8000)
        )
    }
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn describe(cmd: &Command) -> String {
    let mut out = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        out.push(' ');
        let arg = arg.to_string_lossy();
        if arg.contains(' ') || arg.is_empty() {
            out.push_str(&format!("'{arg}'"));
        } else {
            out.push_str(&arg);
        }
    }
    out
}

fn drain<R: Read + Send + 'static>(mut reader: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = reader.read_to_end(&mut buf);
        buf
    })
}

/// Runs `cmd` to completion, feeding it `stdin`, killing it at `timeout`.
pub fn run(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> CmdOutput {
    let what = describe(&cmd);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
    let writer = stdin.map(|data| {
        let data = data.to_vec();
        let mut pipe = child.stdin.take().expect("stdin pipe");
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let out = drain(child.stdout.take().expect("stdout pipe"));
    let err = drain(child.stderr.take().expect("stderr pipe"));
    let status = loop {
        match child.try_wait().expect("try_wait") {
            Some(status) => break Some(status),
            None if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    CmdOutput {
        what,
        status,
        stdout: String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned(),
        elapsed: started.elapsed(),
    }
}

// ---------------------------------------------------------------------------
// PgServer
// ---------------------------------------------------------------------------

/// A throwaway Postgres: see the module docs.
pub struct PgServer {
    root: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

struct Cleanup {
    bin: PathBuf,
    data: PathBuf,
    root: PathBuf,
    as_postgres: bool,
}

static SHARED: OnceLock<PgServer> = OnceLock::new();
static CLEANUP: OnceLock<Cleanup> = OnceLock::new();

extern "C" fn stop_shared_at_exit() {
    if let Some(c) = CLEANUP.get() {
        stop_cluster(&c.bin, &c.data, c.as_postgres, "immediate");
        let _ = std::fs::remove_dir_all(&c.root);
    }
}

fn pg_command(bin: &Path, tool: &str, as_postgres: bool) -> Command {
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    };
    // The cluster's children must not keep our pipes open.
    cmd.stdin(Stdio::null());
    cmd
}

fn stop_cluster(bin: &Path, data: &Path, as_postgres: bool, mode: &str) {
    let mut cmd = pg_command(bin, "pg_ctl", as_postgres);
    cmd.args(["stop", "-w", "-t", "30", "-m", mode, "-D"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _ = cmd.status();
}

impl PgServer {
    /// The server shared by every test in this binary; started on first use,
    /// stopped when the process exits.
    pub fn shared() -> &'static PgServer {
        SHARED.get_or_init(|| {
            let server = PgServer::start();
            let _ = CLEANUP.set(Cleanup {
                bin: server.bin.clone(),
                data: server.data.clone(),
                root: server.root.clone(),
                as_postgres: server.as_postgres,
            });
            // SAFETY: registering a plain extern "C" fn with no captured state.
            unsafe {
                libc::atexit(stop_shared_at_exit);
            }
            server.spawn_watchdog();
            server
        })
    }

    /// Starts a new server with roles `app`, `app2` and databases `app`,
    /// `app2`. Prefer [`PgServer::shared`]; a server from here is stopped
    /// when dropped.
    pub fn start() -> PgServer {
        let bin = pg_bindir();
        let as_postgres = is_root();
        let root = new_temp_dir("pgwarden-it-pg");
        if as_postgres {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(&root, Some(uid), Some(gid)).expect("chown temp dir");
        }
        let data = root.join("data");

        let init = {
            let mut cmd = pg_command(&bin, "initdb", as_postgres);
            cmd.arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "-N"])
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"]);
            run(cmd, None, Duration::from_secs(120))
        };
        assert!(init.success(), "initdb failed: {init}");

        let mut last_failure = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let conf = format!(
                "listen_addresses = '127.0.0.1'\n\
                 port = {port}\n\
                 unix_socket_directories = '{}'\n\
                 max_connections = 200\n\
                 fsync = off\n\
                 synchronous_commit = off\n\
                 full_page_writes = off\n\
                 password_encryption = 'scram-sha-256'\n\
                 wal_keep_size = '1GB'\n\
                 max_wal_senders = 20\n\
                 log_line_prefix = '%m [%p] %q%u@%d '\n",
                root.display()
            );
            // postgresql.auto.conf is read last and is owned by the cluster
            // user; write it through a file we own, then copy it into place.
            let auto = data.join("postgresql.auto.conf");
            std::fs::write(&auto, conf).expect("write postgresql.auto.conf");
            if as_postgres {
                let (uid, gid) = postgres_ids();
                std::os::unix::fs::chown(&auto, Some(uid), Some(gid)).expect("chown conf");
            }
            let mut cmd = pg_command(&bin, "pg_ctl", as_postgres);
            cmd.args(["start", "-w", "-t", "60", "-D"]).arg(&data).arg("-l").arg(root.join("postgres.log"));
            let started = run(cmd, None, Duration::from_secs(90));
            if started.success() {
                let server = PgServer { root, data, bin, port, as_postgres };
                server.create_fixtures();
                return server;
            }
            last_failure = format!(
                "{started}\n--- postgres.log ---\n{}",
                std::fs::read_to_string(root.join("postgres.log")).unwrap_or_default()
            );
        }
        panic!("could not start Postgres: {last_failure}");
    }

    /// Starts a streaming replica of this server (`pg_basebackup -R` over
    /// the trusted socket), on its own port, and waits until it is in
    /// recovery. Dropped: stopped and removed.
    pub fn start_replica(&self) -> PgServer {
        let root = new_temp_dir("pgwarden-it-replica");
        if self.as_postgres {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(&root, Some(uid), Some(gid)).expect("chown temp dir");
        }
        let data = root.join("data");
        let mut cmd = pg_command(&self.bin, "pg_basebackup", self.as_postgres);
        cmd.arg("-h")
            .arg(&self.root)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-R", "-X", "stream", "-c", "fast", "-D"])
            .arg(&data);
        let backup = run(cmd, None, Duration::from_secs(120));
        assert!(backup.success(), "pg_basebackup failed: {backup}");
        let port = free_port();
        // -R wrote primary_conninfo into postgresql.auto.conf: append to it.
        let auto = data.join("postgresql.auto.conf");
        let mut conf = std::fs::read_to_string(&auto).unwrap_or_default();
        conf.push_str(&format!(
            "\nport = {port}\nunix_socket_directories = '{}'\nhot_standby = on\n",
            root.display()
        ));
        std::fs::write(&auto, conf).expect("write replica postgresql.auto.conf");
        let replica = PgServer { root, data, bin: self.bin.clone(), port, as_postgres: self.as_postgres };
        replica.start_again();
        replica
    }

    /// Starts a stopped cluster again (a replica after [`PgServer::stop`]).
    pub fn start_again(&self) {
        let mut cmd = pg_command(&self.bin, "pg_ctl", self.as_postgres);
        cmd.args(["start", "-w", "-t", "60", "-D"])
            .arg(&self.data)
            .arg("-l")
            .arg(self.root.join("postgres.log"));
        let started = run(cmd, None, Duration::from_secs(90));
        assert!(started.success(), "pg_ctl start failed: {started}\n{}", self.log());
    }

    /// Promotes a replica to a primary and waits until it is out of recovery.
    pub fn promote(&self) {
        let mut cmd = pg_command(&self.bin, "pg_ctl", self.as_postgres);
        cmd.args(["promote", "-w", "-t", "60", "-D"]).arg(&self.data);
        let out = run(cmd, None, Duration::from_secs(90));
        assert!(out.success(), "pg_ctl promote failed: {out}");
    }

    fn create_fixtures(&self) {
        self.psql_in(
            "postgres",
            &format!(
                "CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}';\n\
                 CREATE ROLE {APP2_USER} LOGIN PASSWORD '{APP2_PASSWORD}';\n\
                 CREATE DATABASE {APP_DB} OWNER {APP_USER};\n\
                 CREATE DATABASE {APP2_DB} OWNER {APP2_USER};"
            ),
        );
        // Tables the tests create as superuser stay usable by the app roles.
        for db in [APP_DB, APP2_DB] {
            self.psql_in(
                db,
                "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO PUBLIC;\n\
                 ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO PUBLIC;\n\
                 GRANT ALL ON SCHEMA public TO PUBLIC;",
            );
        }
    }

    /// Stops the cluster if this test process dies without running exit
    /// handlers (killed by a timeout, say).
    fn spawn_watchdog(&self) {
        let pg_ctl = format!(
            "{}{} stop -m immediate -w -t 30 -D '{}'",
            if self.as_postgres { "runuser -u postgres -- " } else { "" },
            self.bin.join("pg_ctl").display(),
            self.data.display()
        );
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {pg_ctl}; rm -rf '{root}'",
            pid = std::process::id(),
            root = self.root.display()
        );
        let _ = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The unix socket directory (trusted logins, any role).
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    pub fn bindir(&self) -> &Path {
        &self.bin
    }

    /// A libpq/tokio-postgres key=value DSN straight to Postgres over TCP.
    pub fn dsn(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname={} sslmode=disable",
            self.port, user, password, db
        )
    }

    /// A tokio-postgres config straight to Postgres over TCP.
    pub fn tokio_config(&self, user: &str, password: &str, db: &str) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(db)
            .connect_timeout(Duration::from_secs(10));
        cfg
    }

    /// Runs SQL as superuser in database `app` over the unix socket and
    /// returns the unaligned, tuples-only output, trimmed. Panics on error.
    pub fn psql_direct(&self, sql: &str) -> String {
        self.psql_in(APP_DB, sql)
    }

    /// [`PgServer::psql_direct`] in another database.
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        self.psql_as("postgres", db, sql)
    }

    /// Runs SQL as `role` (no password: the socket is trusted).
    pub fn psql_as(&self, role: &str, db: &str, sql: &str) -> String {
        let mut cmd = Command::new(self.bin.join("psql"));
        clear_libpq_env(&mut cmd);
        cmd.arg("-h")
            .arg(&self.root)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", role, "-d", db, "-X", "-q", "-A", "-t"])
            .args(["-v", "ON_ERROR_STOP=1", "-f", "-"]);
        let out = run(cmd, Some(sql.as_bytes()), PSQL_TIMEOUT);
        assert!(out.success(), "direct psql failed on:\n{sql}\n{out}");
        out.stdout.trim().to_string()
    }

    /// Runs SQL as superuser in database `app`, ignoring its output.
    pub fn exec(&self, sql: &str) {
        self.psql_direct(sql);
    }

    /// Runs SQL as superuser in database `app` and parses a single integer.
    pub fn query_i64(&self, sql: &str) -> i64 {
        let out = self.psql_direct(sql);
        out.parse().unwrap_or_else(|e| panic!("expected an integer from `{sql}`, got {out:?}: {e}"))
    }

    /// Creates a database owned by `app` and returns its name.
    pub fn create_database(&self, prefix: &str) -> String {
        let name = unique_name(prefix);
        self.psql_in("postgres", &format!("CREATE DATABASE {name} OWNER {APP_USER}"));
        self.psql_in(
            &name,
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO PUBLIC;\n\
             GRANT ALL ON SCHEMA public TO PUBLIC;",
        );
        name
    }

    /// Server connections of `user` to `db`, as Postgres sees them (other
    /// than this query's own).
    pub fn backend_count(&self, user: &str, db: &str) -> i64 {
        self.query_i64(&format!(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE usename = '{user}' AND datname = '{db}' AND pid <> pg_backend_pid()"
        ))
    }

    /// Stops this server now (for servers from [`PgServer::start`]).
    pub fn stop(&self) {
        stop_cluster(&self.bin, &self.data, self.as_postgres, "fast");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("postgres.log")).unwrap_or_default()
    }

    /// A `pgbench` command straight to Postgres over TCP as `app`, password in
    /// the environment.
    pub fn pgbench_direct(&self, db: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.bin.join("pgbench"));
        clear_libpq_env(&mut cmd);
        cmd.env("PGPASSWORD", APP_PASSWORD)
            .env("PGCONNECT_TIMEOUT", "10")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", APP_USER])
            .args(args)
            .arg(db);
        cmd
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Only reached for servers from start(), never for the shared one
        // (statics are not dropped); that one is stopped at exit.
        self.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

/// The standard test config, with `extra` applied:
///
/// - lines of `extra` before its first `[table]` header are `[general]`
///   keys; each replaces the standard key of the same name or is added;
/// - the rest of `extra` (`[[databases]]`, `[[users]]`, ...) is appended.
///
/// Standard: listen on 127.0.0.1:0, `workers = 2`, transaction pooling,
/// `default_pool_size = 4`, `checkout_timeout_ms = 10000`,
/// `shutdown_timeout_ms = 5000`, database `app` on the given server, user
/// `app` / `app-secret` (scram-sha-256).
pub fn config(pg: &PgServer, extra: &str) -> String {
    config_for_port(pg.port(), extra)
}

/// [`config`] for a Postgres port, without a running server.
pub fn config_for_port(pg_port: u16, extra: &str) -> String {
    let mut general: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in [
        ("listen", "\"127.0.0.1:0\""),
        ("workers", "2"),
        ("pool_mode", "\"transaction\""),
        ("default_pool_size", "4"),
        ("checkout_timeout_ms", "10000"),
        ("shutdown_timeout_ms", "5000"),
        ("auth_method", "\"scram-sha-256\""),
        ("log_level", "\"info\""),
    ] {
        general.insert(k.to_string(), v.to_string());
    }
    let mut tables = String::new();
    let mut in_tables = false;
    for line in extra.lines() {
        let trimmed = line.trim();
        if !in_tables && trimmed.starts_with('[') {
            in_tables = true;
        }
        if in_tables {
            tables.push_str(line);
            tables.push('\n');
        } else if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        } else {
            let (key, value) = trimmed
                .split_once('=')
                .unwrap_or_else(|| panic!("config override is not `key = value`: {line:?}"));
            general.insert(key.trim().to_string(), value.trim().to_string());
        }
    }
    let mut out = String::from("[general]\n");
    for (k, v) in &general {
        out.push_str(&format!("{k} = {v}\n"));
    }
    out.push_str(&format!(
        "\n[[databases]]\nname = \"{APP_DB}\"\nhost = \"127.0.0.1\"\nport = {pg_port}\n\
         \n[[users]]\nname = \"{APP_USER}\"\npassword = \"{APP_PASSWORD}\"\n\n"
    ));
    out.push_str(&tables);
    out
}

/// `[[databases]]` entry for another database on the server.
pub fn database_entry(pg: &PgServer, name: &str) -> String {
    format!("[[databases]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {}\n\n", pg.port())
}

/// `[[users]]` entry.
pub fn user_entry(name: &str, password: &str) -> String {
    format!("[[users]]\nname = \"{name}\"\npassword = \"{password}\"\n\n")
}

/// Database `app2` and user `app2` as config entries.
pub fn app2_entries(pg: &PgServer) -> String {
    format!("{}{}", database_entry(pg, APP2_DB), user_entry(APP2_USER, APP2_PASSWORD))
}

// ---------------------------------------------------------------------------
// Proxy
// ---------------------------------------------------------------------------

/// A running pgwarden: see the module docs.
pub struct Proxy {
    child: Option<Child>,
    addr: SocketAddr,
    logs: Arc<Mutex<String>>,
    dir: PathBuf,
}

impl Proxy {
    /// Starts pgwarden on `config_toml`; panics (with its output) unless it
    /// logs `listening on ADDR` within [`PROXY_START_TIMEOUT`].
    pub fn start(config_toml: &str) -> Proxy {
        Proxy::try_start(config_toml).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Proxy::start`], returning the failure instead.
    pub fn try_start(config_toml: &str) -> Result<Proxy, String> {
        let dir = new_temp_dir("pgwarden-it-proxy");
        let config_path = dir.join("pgwarden.toml");
        std::fs::write(&config_path, config_toml).expect("write config");
        let bin = pgwarden_bin();
        let mut cmd = Command::new(&bin);
        cmd.arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; it makes the kernel kill the
        // proxy if the test thread that started it dies without cleanup.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", bin.display()))?;

        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        let stderr = child.stderr.take().expect("stderr pipe");
        let stdout = child.stdout.take().expect("stdout pipe");
        spawn_log_drain(stderr, logs.clone(), Some(tx));
        spawn_log_drain(stdout, logs.clone(), None);

        let deadline = Instant::now() + PROXY_START_TIMEOUT;
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => break addr,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    thread::sleep(Duration::from_millis(100));
                }
            }
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() >= deadline {
                if exited.is_none() {
                    let _ = child.kill();
                }
                let status = child.wait().ok();
                thread::sleep(Duration::from_millis(100));
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!(
                    "pgwarden did not log `listening on ADDR` within {:?} (exit: {:?})\n--- pgwarden output ---\n{}",
                    PROXY_START_TIMEOUT,
                    status,
                    logs.lock().unwrap()
                ));
            }
        };
        Ok(Proxy { child: Some(child), addr, logs, dir })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Everything the proxy wrote to stderr and stdout so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Whether the log shows `needle` within 10 s (the log is read by a
    /// thread: a line can lag behind the event that wrote it).
    pub fn log_shows(&self, needle: &str) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if self.logs().contains(needle) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits (up to 60 s) for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_within(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("pgwarden did not exit within 60 s of SIGTERM"))
    }

    /// SIGTERM, then waits up to `limit`; None (and the process killed) if
    /// it did not exit in time.
    pub fn stop_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// A key=value DSN to the proxy (libpq, tokio-postgres, psycopg).
    pub fn dsn(&self, user: &str, password: &str, db: &str) -> String {
        format!("host=127.0.0.1 port={} user={} password={} dbname={}", self.port(), user, password, db)
    }

    /// A tokio-postgres config for the proxy.
    pub fn tokio_config(&self, user: &str, password: &str, db: &str) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(self.port())
            .user(user)
            .password(password)
            .dbname(db)
            .connect_timeout(Duration::from_secs(10));
        cfg
    }

    /// A `psql` command to the proxy as `user` on `db`, password in the
    /// environment; add arguments, then [`run`] it (or use [`Proxy::psql`]).
    pub fn psql_cmd(&self, user: &str, password: &str, db: &str) -> Command {
        self.psql_cmd_via("127.0.0.1", user, password, db)
    }

    /// [`Proxy::psql_cmd`] to `host`: an address, or the directory of the
    /// proxy's Unix socket (`unix_socket_dir`).
    pub fn psql_cmd_via(&self, host: &str, user: &str, password: &str, db: &str) -> Command {
        let mut cmd = Command::new(pg_bindir().join("psql"));
        clear_libpq_env(&mut cmd);
        cmd.env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .args(["-h", host, "-p", &self.port().to_string()])
            .args(["-U", user, "-d", db, "-X"]);
        cmd
    }

    /// `psql -At -c sql` on `app` through the proxy's Unix socket in `dir`
    /// (`unix_socket_dir`; libpq uses no TLS there).
    pub fn psql_via_socket(&self, dir: &Path, user: &str, password: &str, sql: &str) -> CmdOutput {
        let mut cmd =
            self.psql_cmd_via(dir.to_str().expect("UTF-8 socket directory"), user, password, APP_DB);
        cmd.args(["-At", "-c", sql]);
        run(cmd, None, PSQL_TIMEOUT)
    }

    /// psql as `app` on `app` with `args`, optional stdin, [`PSQL_TIMEOUT`].
    pub fn psql(&self, args: &[&str], stdin: Option<&str>) -> CmdOutput {
        let mut cmd = self.psql_cmd(APP_USER, APP_PASSWORD, APP_DB);
        cmd.args(args);
        run(cmd, stdin.map(str::as_bytes), PSQL_TIMEOUT)
    }

    /// A `pgbench` command to the proxy as `user` on `db` (the database name
    /// is added last, after `args`).
    pub fn pgbench_cmd(&self, user: &str, password: &str, db: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(pg_bindir().join("pgbench"));
        clear_libpq_env(&mut cmd);
        cmd.env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .args(["-h", "127.0.0.1", "-p", &self.port().to_string()])
            .args(["-U", user])
            .args(args)
            .arg(db);
        cmd
    }

    /// pgbench as `app` on `db` with [`PGBENCH_TIMEOUT`].
    pub fn pgbench(&self, db: &str, args: &[&str]) -> CmdOutput {
        run(self.pgbench_cmd(APP_USER, APP_PASSWORD, db, args), None, PGBENCH_TIMEOUT)
    }
}

fn spawn_log_drain<R: Read + Send + 'static>(
    reader: R,
    logs: Arc<Mutex<String>>,
    mut on_listen: Option<mpsc::Sender<SocketAddr>>,
) {
    thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            if let Some(tx) = on_listen.as_ref() {
                if let Some(addr) = parse_listening(&text) {
                    let _ = tx.send(addr);
                    on_listen = None;
                }
            }
            let mut logs = logs.lock().unwrap();
            logs.push_str(&text);
            if !text.ends_with('\n') {
                logs.push('\n');
            }
        }
    });
}

/// The address in a `... listening on 127.0.0.1:41234 with 2 shards` line.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let token = rest.split_whitespace().next()?;
    let token = token.trim_end_matches([',', '.', ';', ')']);
    token.parse().ok()
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- pgwarden output (test failed) ---\n{}\n--- end of pgwarden output ---",
                tail(&self.logs(), 20000)
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// pgbench output
// ---------------------------------------------------------------------------

/// The numbers a pgbench run printed.
#[derive(Debug, Default, Clone, Copy)]
pub struct PgbenchSummary {
    pub processed: u64,
    pub failed: Option<u64>,
    pub tps: f64,
}

/// Parses pgbench's summary; None if it has none.
pub fn parse_pgbench(stdout: &str) -> Option<PgbenchSummary> {
    let mut summary = PgbenchSummary::default();
    let mut seen = false;
    for line in stdout.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("number of transactions actually processed:") {
            let n = rest.trim().split(['/', ' ']).next()?;
            summary.processed = n.parse().ok()?;
            seen = true;
        } else if let Some(rest) = line.strip_prefix("number of failed transactions:") {
            summary.failed = rest.split_whitespace().next()?.parse().ok();
        } else if let Some(rest) = line.strip_prefix("tps = ") {
            if summary.tps == 0.0 {
                summary.tps = rest.split_whitespace().next()?.parse().ok()?;
            }
        }
    }
    seen.then_some(summary)
}

/// Asserts a pgbench run succeeded: exit 0, `expected` transactions
/// processed, no failed transactions, no error on stderr.
#[track_caller]
pub fn assert_pgbench_ok(out: &CmdOutput, expected: u64) -> PgbenchSummary {
    assert!(out.success(), "pgbench failed: {out}");
    let summary = parse_pgbench(&out.stdout).unwrap_or_else(|| panic!("no pgbench summary in: {out}"));
    assert_eq!(
        summary.processed, expected,
        "pgbench processed {} of {expected} transactions: {out}",
        summary.processed
    );
    if let Some(failed) = summary.failed {
        assert_eq!(failed, 0, "pgbench reported failed transactions: {out}");
    }
    assert!(
        out.stdout.contains("number of failed transactions: 0")
            || !out.stdout.contains("number of failed transactions"),
        "pgbench reported failed transactions: {out}"
    );
    let lower = out.stderr.to_lowercase();
    assert!(!lower.contains("error") && !lower.contains("aborted"), "pgbench printed errors: {out}");
    summary
}

/// Samples, every 50 ms, how many server connections `user` has to `db`
/// while `f` runs (and once after); returns `f`'s result and the largest
/// count seen.
pub fn with_backend_sampler<T>(pg: &PgServer, user: &str, db: &str, f: impl FnOnce() -> T) -> (T, i64) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let max = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let sampler = {
        let (stop, max) = (stop.clone(), max.clone());
        let (bin, sock, port) = (pg.bin.clone(), pg.root.clone(), pg.port);
        let sql =
            format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{user}' AND datname = '{db}'");
        thread::spawn(move || loop {
            // Checked before sampling, acted on after: one sample always
            // follows the end of `f`.
            let last = stop.load(Ordering::Relaxed);
            {
                let mut cmd = Command::new(bin.join("psql"));
                clear_libpq_env(&mut cmd);
                cmd.arg("-h")
                    .arg(&sock)
                    .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
                    .args(["-X", "-A", "-t", "-c", &sql]);
                let out = run(cmd, None, Duration::from_secs(10));
                if let Ok(n) = out.stdout.trim().parse::<i64>() {
                    max.fetch_max(n, Ordering::Relaxed);
                }
            }
            if last {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        })
    };
    let result = f();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    (result, max.load(Ordering::Relaxed))
}

// ---------------------------------------------------------------------------
// tokio-postgres helpers
// ---------------------------------------------------------------------------

/// Awaits `fut`, panicking with `what` if it takes longer than `secs`.
pub async fn within<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s: {what}"),
    }
}

/// Connects with `cfg` (over plain TCP) and drives the connection on a task.
pub async fn connect_with(
    cfg: &tokio_postgres::Config,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let (client, connection) = within(20, "connect", cfg.connect(tokio_postgres::NoTls)).await?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, task))
}

/// Connects to the proxy as `app` on `app`; panics on failure.
pub async fn connect_app(proxy: &Proxy) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    connect_with(&proxy.tokio_config(APP_USER, APP_PASSWORD, APP_DB))
        .await
        .unwrap_or_else(|e| panic!("connect through the proxy failed: {e:?}"))
}

/// The first column of the first row `sql` returns (simple protocol);
/// panics on an error or no row.
pub async fn one(client: &tokio_postgres::Client, sql: &str) -> String {
    let rows = client.simple_query(sql).await.unwrap_or_else(|e| panic!("`{sql}`: {e:?}"));
    rows.into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_string()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("`{sql}` returned no row"))
}

/// The SQLSTATE of a tokio-postgres error, if the server (or proxy) sent one.
pub fn sqlstate(err: &tokio_postgres::Error) -> Option<String> {
    err.code().map(|c| c.code().to_string())
}
