//! A server connection: connecting and logging into Postgres, running the
//! proxy's own simple queries (parameter sync, reset), and its bookkeeping
//! (cancel key, parameters, prepared statements).

use std::time::{Duration, Instant};

use crate::auth::{self, Secret};
use crate::net::{self, ReadHalf, WriteHalf};
use crate::protocol::backend;
use crate::protocol::frame::{self, Reader, Writer};
use crate::protocol::startup;
use crate::session::params::ParamSet;
use crate::session::prepared::ServerStatements;
use crate::session::SessionError;

/// Largest message accepted from a server during login and the proxy's own
/// queries (relayed traffic uses `max_message_size`).
const SERVER_CONTROL_MSG_MAX: u32 = 16 * 1024 * 1024;

/// Initial capacity of a server connection's read buffer.
pub const SERVER_READ_BUF: usize = 64 * 1024;

/// A proxy query's result: ParameterStatus changes and the first value, or
/// the server's error.
type QueryOutcome = Result<(Vec<(String, String)>, Option<String>), PgError>;

/// How to log in to Postgres.
#[derive(Clone)]
pub struct ServerLogin {
    pub addr: crate::net::ServerAddr,
    /// Index of `addr` in the shared target table (for cancel requests).
    pub target: u32,
    pub database: String,
    pub user: String,
    pub password: Option<Secret>,
    /// A role to take at login (the `role` startup parameter), for JWT
    /// logins in `identity = "set_role"` mode.
    pub role: Option<String>,
    /// Start the session with `default_transaction_read_only = on`.
    pub read_only: bool,
    /// SCRAM keys recovered from a client login, for a SCRAM-secret-only user.
    pub scram_keys: Option<auth::ScramCredential>,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for ServerLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerLogin")
            .field("addr", &self.addr)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Which session state a client may have left on a server that the proxy
/// must clean before another client uses it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dirty {
    /// A SET/RESET ran: reset session authorization, role and settings.
    pub settings: bool,
    /// PREPARE, DEALLOCATE, LISTEN, DECLARE CURSOR, DISCARD...: run `DISCARD ALL`.
    pub session: bool,
}

/// One logged-in server connection.
pub struct ServerConn {
    pub rd: Option<ReadHalf>,
    pub wr: Option<WriteHalf>,
    /// Bytes read but not yet processed (start of a partial message).
    pub buf: Vec<u8>,
    pub pid: i32,
    pub key: i32,
    pub target: u32,
    pub addr: crate::net::ServerAddr,
    pub created: Instant,
    /// Parameter values as last reported by the server or set by the proxy.
    pub params: ParamSet,
    /// Names the server reports with ParameterStatus (their values in
    /// `params` stay right after a reset; the others' do not).
    pub reported: std::collections::HashSet<String>,
    /// Names the proxy has SET on this connection for some client.
    pub set_keys: Vec<String>,
    /// Digest of the client ParamSet this connection matches; 0 = unknown.
    pub params_digest: u64,
    pub stmts: ServerStatements,
    pub dirty: Dirty,
    /// SQL-level prepared statements (PREPARE) on this connection, all of
    /// the one client it serves (the connection is DISCARDed before it
    /// serves another).
    pub sql_prepared: std::collections::HashSet<String>,
    /// When it last went idle in the pool.
    pub idle_since: Instant,
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConn").field("addr", &self.addr).field("pid", &self.pid).finish()
    }
}

/// A server's ErrorResponse, kept as (field code, text) pairs.
#[derive(Debug, Clone)]
pub struct PgError {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl PgError {
    /// Reads severity, SQLSTATE and message with the protocol codec.
    pub fn parse(body: &[u8]) -> PgError {
        let fields = backend::ErrorFields::parse(body).ok();
        let field = |code: u8, default: &str| {
            fields
                .and_then(|f| f.field(code))
                .map_or_else(|| default.to_string(), |v| String::from_utf8_lossy(v).into_owned())
        };
        PgError { severity: field(b'S', "ERROR"), code: field(b'C', "XX000"), message: field(b'M', "") }
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)
    }
}

impl ServerConn {
    /// Connects and logs in; returns once the server sent ReadyForQuery.
    pub async fn connect(login: &ServerLogin, stmt_cache: usize) -> Result<ServerConn, SessionError> {
        let (rd, wr) = net::connect(&login.addr, login.connect_timeout)
            .await
            .map_err(|e| SessionError::ServerUnavailable(format!("cannot connect to {}: {e}", login.addr)))?;
        let mut s = ServerConn {
            rd: Some(rd),
            wr: Some(wr),
            buf: Vec::with_capacity(SERVER_READ_BUF),
            pid: 0,
            key: 0,
            target: login.target,
            addr: login.addr.clone(),
            created: Instant::now(),
            params: ParamSet::default(),
            reported: Default::default(),
            set_keys: Vec::new(),
            params_digest: 0,
            stmts: ServerStatements::new(stmt_cache),
            dirty: Dirty::default(),
            sql_prepared: Default::default(),
            idle_since: Instant::now(),
        };
        let deadline = login.connect_timeout;
        match net::timeout(deadline, s.login(login)).await {
            Some(r) => r.map(|_| s),
            None => Err(SessionError::ServerUnavailable(format!(
                "login to {} timed out after {} ms",
                login.addr,
                deadline.as_millis()
            ))),
        }
    }

    async fn login(&mut self, login: &ServerLogin) -> Result<(), SessionError> {
        let mut out = Vec::new();
        let mut params: Vec<(&str, &str)> = vec![("user", &login.user), ("database", &login.database)];
        if let Some(role) = &login.role {
            params.push(("role", role));
        }
        if login.read_only {
            params.push(("default_transaction_read_only", "on"));
        }
        startup::encode_startup(&mut out, &params);
        self.send(out).await?;
        let mut scram: Option<auth::ScramClient> = None;
        loop {
            let (tag, body) = self.recv().await?;
            match tag {
                b'R' => {
                    self.on_auth_request(login, &body, &mut scram).await?;
                }
                b'S' => {
                    self.on_parameter_status(&body);
                }
                b'K' => {
                    let mut r = Reader::new(b'K', &body);
                    self.pid = r.i32("pid").map_err(SessionError::server_protocol)?;
                    self.key = r.i32("key").map_err(SessionError::server_protocol)?;
                }
                b'N' => {}
                b'E' => return Err(SessionError::ServerRefused(PgError::parse(&body))),
                b'Z' => return Ok(()),
                b'v' => {} // NegotiateProtocolVersion: we speak 3.0 with no extensions
                t => {
                    return Err(SessionError::ServerProtocol(format!(
                        "unexpected message {} during login",
                        crate::protocol::printable(t)
                    )))
                }
            }
        }
    }

    /// Answers one Authentication request. Returns true to keep reading.
    async fn on_auth_request(
        &mut self,
        login: &ServerLogin,
        body: &[u8],
        scram: &mut Option<auth::ScramClient>,
    ) -> Result<bool, SessionError> {
        let mut r = Reader::new(b'R', body);
        let code = r.i32("auth code").map_err(SessionError::server_protocol)?;
        let password = || {
            login.password.as_ref().ok_or_else(|| {
                SessionError::ServerAuth(format!(
                    "server asks for a password for user \"{}\" and none is configured (server_password)",
                    login.user
                ))
            })
        };
        let mut out = Vec::new();
        match code {
            0 => return Ok(true),
            3 => match password()? {
                Secret::Plain(p) => password_message(&mut out, p.as_bytes()),
                _ => {
                    return Err(SessionError::ServerAuth(
                        "server asks for a cleartext password; server_password holds a hash".into(),
                    ))
                }
            },
            5 => {
                let salt: [u8; 4] =
                    r.bytes(4, "salt").map_err(SessionError::server_protocol)?.try_into().unwrap();
                let resp = auth::md5_response(&login.user, password()?, salt).map_err(|_| {
                    SessionError::ServerAuth("server asks for md5; server_password is a SCRAM secret".into())
                })?;
                password_message(&mut out, resp.as_bytes());
            }
            10 => {
                let cred = scram_credential(login)?;
                let mut c =
                    auth::ScramClient::new(cred).map_err(|e| SessionError::ServerAuth(e.to_string()))?;
                let first = c.client_first();
                let mut w = Writer::new(&mut out, b'p');
                w.cstr(b"SCRAM-SHA-256").i32(first.len() as i32).bytes(&first);
                w.finish();
                *scram = Some(c);
            }
            11 => {
                let c = scram
                    .as_mut()
                    .ok_or_else(|| SessionError::ServerProtocol("SASLContinue before SASL".into()))?;
                let fin = c.server_first(r.rest()).map_err(|e| SessionError::ServerAuth(e.to_string()))?;
                let mut w = Writer::new(&mut out, b'p');
                w.bytes(&fin);
                w.finish();
            }
            12 => {
                let c = scram
                    .as_mut()
                    .ok_or_else(|| SessionError::ServerProtocol("SASLFinal before SASL".into()))?;
                c.server_final(r.rest()).map_err(|e| SessionError::ServerAuth(e.to_string()))?;
                return Ok(true);
            }
            other => {
                return Err(SessionError::ServerAuth(format!(
                    "server asks for authentication method {other}, which pgwarden does not support"
                )))
            }
        }
        self.send(out).await?;
        Ok(true)
    }

    /// Records a ParameterStatus body.
    pub fn on_parameter_status(&mut self, body: &[u8]) -> Option<(String, String)> {
        let mut r = Reader::new(b'S', body);
        let name = r.cstr_utf8("name").ok()?.to_ascii_lowercase();
        let value = r.cstr_utf8("value").ok()?.to_string();
        self.params.set(&name, &value);
        if !self.reported.contains(&name) {
            self.reported.insert(name.clone());
        }
        Some((name, value))
    }

    /// Writes all of `out`.
    pub async fn send(&mut self, out: Vec<u8>) -> Result<(), SessionError> {
        let wr = self.wr.as_mut().expect("server write half present");
        let (res, _) = net::write_all(wr, out).await;
        res.map_err(|e| SessionError::ServerLost(e.to_string()))
    }

    /// Reads one whole message (sequential use only: login, proxy queries).
    pub async fn recv(&mut self) -> Result<(u8, Vec<u8>), SessionError> {
        loop {
            if let Some((h, body)) = frame::read_message(&self.buf, SERVER_CONTROL_MSG_MAX)
                .map_err(SessionError::server_protocol)?
            {
                let out = (h.tag, body.to_vec());
                self.buf.drain(..h.total_len());
                return Ok(out);
            }
            let rd = self.rd.as_mut().expect("server read half present");
            let buf = std::mem::take(&mut self.buf);
            let (res, buf) = net::read_append(rd, buf).await;
            self.buf = buf;
            match res {
                Ok(0) => return Err(SessionError::ServerLost("server closed the connection".into())),
                Ok(_) => {}
                Err(e) => return Err(SessionError::ServerLost(e.to_string())),
            }
        }
    }

    /// Runs the proxy's own simple query and waits for ReadyForQuery.
    /// Returns the first error the server reported, and the
    /// ParameterStatus changes it sent.
    pub async fn run_simple(
        &mut self,
        sql: &str,
    ) -> Result<Result<Vec<(String, String)>, PgError>, SessionError> {
        Ok(self.run_query(sql).await?.map(|(changes, _)| changes))
    }

    /// Runs the proxy's own query and returns the first column of its first
    /// row (as text), or the server's error.
    pub async fn query_value(&mut self, sql: &str) -> Result<Result<Option<String>, PgError>, SessionError> {
        Ok(self.run_query(sql).await?.map(|(_, value)| value))
    }

    /// Sends `sql` as a simple query and reads to ReadyForQuery: the
    /// ParameterStatus changes, the first column of the first row, or the
    /// first error the server reported.
    async fn run_query(&mut self, sql: &str) -> Result<QueryOutcome, SessionError> {
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out, b'Q');
        w.cstr(sql.as_bytes());
        w.finish();
        self.send(out).await?;
        let (mut err, mut changes, mut value) = (None, Vec::new(), None);
        loop {
            let (tag, body) = self.recv().await?;
            match tag {
                b'E' => {
                    err.get_or_insert_with(|| PgError::parse(&body));
                }
                b'S' => changes.extend(self.on_parameter_status(&body)),
                // Int16 columns, then Int32 length and bytes of the first.
                b'D' if value.is_none() && body.len() >= 6 => {
                    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                    if len >= 0 && body.len() >= 6 + len as usize {
                        value = Some(String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned());
                    }
                }
                b'Z' => {
                    if body.first() != Some(&b'I') {
                        return Err(SessionError::ServerProtocol(
                            "proxy query left a transaction open".into(),
                        ));
                    }
                    return Ok(match err {
                        Some(e) => Err(e),
                        None => Ok((changes, value)),
                    });
                }
                _ => {}
            }
        }
    }

    /// After `RESET ALL`/`DISCARD ALL`: settings the server does not report
    /// are back at defaults the proxy does not know, so forget them.
    pub fn forget_unreported_settings(&mut self) {
        let reported = &self.reported;
        self.params.retain(|k| reported.contains(k));
        self.set_keys.clear();
        self.params_digest = 0;
    }

    /// Whether both halves are home (no operation in flight).
    pub fn is_home(&self) -> bool {
        self.rd.is_some() && self.wr.is_some()
    }

    /// Whether the connection outlived `lifetime` (0 = never).
    pub fn expired(&self, now: Instant, lifetime: Duration) -> bool {
        !lifetime.is_zero() && now.duration_since(self.created) >= lifetime
    }
}

fn password_message(out: &mut Vec<u8>, p: &[u8]) {
    let mut w = Writer::new(out, b'p');
    w.cstr(p);
    w.finish();
}

fn scram_credential(login: &ServerLogin) -> Result<auth::ScramCredential, SessionError> {
    match &login.password {
        Some(Secret::Plain(p)) => Ok(auth::ScramCredential::Password(p.clone())),
        Some(Secret::Scram(_)) => login.scram_keys.clone().ok_or_else(|| {
            SessionError::ServerAuth(
                "server asks for SCRAM and server_password is a SCRAM secret: a client must log in with SCRAM first, or configure the plaintext server_password".into(),
            )
        }),
        Some(Secret::Md5(_)) => Err(SessionError::ServerAuth(
            "server asks for SCRAM; server_password is an md5 hash".into(),
        )),
        None => Err(SessionError::ServerAuth(format!(
            "server asks for a password for user \"{}\" and none is configured (server_password)",
            login.user
        ))),
    }
}

/// Sends a CancelRequest for (pid, key) to `addr` on a fresh connection.
pub async fn send_cancel(
    addr: &crate::net::ServerAddr,
    pid: i32,
    key: i32,
    timeout: Duration,
) -> std::io::Result<()> {
    let (_rd, mut wr) = net::connect(addr, timeout).await?;
    let mut out = Vec::new();
    startup::encode_cancel(&mut out, pid, key);
    let (res, _) = net::write_all(&mut wr, out).await;
    res
}
