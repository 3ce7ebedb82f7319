//! Client startup and authentication, as a sequence of awaits on one
//! connection: first packet (SSLRequest/GSSENCRequest answered `N`,
//! CancelRequest forwarded), authentication by the user's configured
//! method, then the welcome: ParameterStatus from a real server connection
//! synced to the client's settings, our BackendKeyData, ReadyForQuery.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{self, ScramCredential, ScramSecret, Secret};
use crate::config::{AuthMethod, ClientTls, Identity};
use crate::net::tls::TlsSession;
use crate::net::{self, ReadHalf, WriteHalf};
use crate::protocol::backend;
use crate::protocol::frame::{self, Writer};
use crate::protocol::startup::{self, StartupPacket};
use crate::protocol::{MAX_PASSWORD_MESSAGE_LEN, MAX_STARTUP_PACKET_LEN};
use crate::route::cluster::Want;
use crate::session::cancel::CancelSlot;
use crate::session::ctx::{PoolKey, ShardCtx};
use crate::session::params::{self, ParamSet};
use crate::session::server::ServerConn;
use crate::session::SessionError;

/// Initial capacity of a client's read buffer.
pub const CLIENT_READ_BUF: usize = 16 * 1024;

/// Parameters Postgres reports with ParameterStatus, with their canonical
/// spelling (clients such as JDBC compare names case-sensitively) and the
/// lowercase key a `ParamSet` stores them under (spelled out, so a login
/// does not allocate a lowercased copy of each).
const REPORTED: &[(&str, &str)] = &[
    ("application_name", "application_name"),
    ("client_encoding", "client_encoding"),
    ("DateStyle", "datestyle"),
    ("default_transaction_read_only", "default_transaction_read_only"),
    ("in_hot_standby", "in_hot_standby"),
    ("integer_datetimes", "integer_datetimes"),
    ("IntervalStyle", "intervalstyle"),
    ("is_superuser", "is_superuser"),
    ("scram_iterations", "scram_iterations"),
    ("search_path", "search_path"),
    ("server_encoding", "server_encoding"),
    ("server_version", "server_version"),
    ("session_authorization", "session_authorization"),
    ("standard_conforming_strings", "standard_conforming_strings"),
    ("TimeZone", "timezone"),
];

/// A client connection during login.
pub struct ClientConn {
    pub rd: ReadHalf,
    pub wr: WriteHalf,
    pub buf: Vec<u8>,
    pub peer: crate::net::Peer,
    /// TLS state once the client started TLS.
    pub tls: Option<Box<TlsSession>>,
    /// Ciphertext read and not yet decrypted (TLS only).
    pub cipher: Vec<u8>,
}

/// A logged-in client, ready for the relay.
pub struct Session {
    pub user: String,
    pub database: String,
    /// The first of the pools of this (user, database) pair, one per host
    /// of the database; `pool + host` is host `host`'s.
    pub pool: usize,
    /// The host of the server the session holds (session mode), or held
    /// last.
    pub host: usize,
    pub params: ParamSet,
    pub pid: i32,
    pub cancel: Arc<CancelSlot>,
    /// A JWT login in `identity = "set_role"` mode: statements that could
    /// change the role are refused.
    pub role_locked: bool,
    /// A read-only login (a token's claim, a read-only JWT role, or a
    /// `[[users]]` entry's `read_only`): writes are refused, the server
    /// connection has `default_transaction_read_only = on`, and with
    /// replicas only replicas serve it.
    pub read_only: bool,
    /// `SET pgwarden.route = 'primary'`: every transaction goes to the
    /// primary until `SET pgwarden.route = 'auto'` (or a RESET).
    pub pin_primary: bool,
    /// With `jwt.expire_sessions`: the token's `exp` (seconds since the
    /// epoch), after which the session ends at a transaction boundary.
    pub expires_at: Option<u64>,
}

/// What the first packet asked for.
pub enum Opening {
    Login(Session, Option<Box<ServerConn>>),
    /// A CancelRequest was handled; close the connection.
    Cancelled,
}

impl ClientConn {
    pub fn new(rd: ReadHalf, wr: WriteHalf, peer: crate::net::Peer) -> ClientConn {
        ClientConn { rd, wr, buf: Vec::with_capacity(CLIENT_READ_BUF), peer, tls: None, cipher: Vec::new() }
    }

    /// Reads more bytes (plaintext: decrypted when TLS is on); end of
    /// stream is [`SessionError::ClientGone`].
    async fn fill(&mut self) -> Result<(), SessionError> {
        if self.tls.is_none() {
            let buf = std::mem::take(&mut self.buf);
            let (res, buf) = net::read_append(&mut self.rd, buf).await;
            self.buf = buf;
            return match res {
                Ok(0) | Err(_) => Err(SessionError::ClientGone),
                Ok(_) => Ok(()),
            };
        }
        let before = self.buf.len();
        while self.buf.len() == before {
            self.read_tls().await?;
        }
        Ok(())
    }

    /// One read of ciphertext, decrypted into `buf`; answers whatever TLS
    /// has to say (handshake flights, alerts).
    async fn read_tls(&mut self) -> Result<(), SessionError> {
        let mut cipher = std::mem::take(&mut self.cipher);
        if cipher.capacity() < CLIENT_READ_BUF {
            cipher.reserve(CLIENT_READ_BUF);
        }
        let (res, mut cipher) = net::read_append(&mut self.rd, cipher).await;
        if !matches!(res, Ok(n) if n > 0) {
            return Err(SessionError::ClientGone);
        }
        let tls = self.tls.as_mut().expect("TLS on");
        let decrypted = tls.decrypt(&mut cipher, &mut self.buf);
        self.cipher = cipher;
        let mut out = Vec::new();
        tls.encrypt(&mut Vec::new(), &mut out);
        if !out.is_empty() {
            let (res, _) = net::write_all(&mut self.wr, out).await;
            res.map_err(|_| SessionError::ClientGone)?;
        }
        match decrypted {
            Ok(false) => Ok(()),
            Ok(true) => Err(SessionError::ClientGone),
            Err(e) => {
                log::info!("client {}: TLS error: {}", self.peer, e.0);
                Err(SessionError::ClientGone)
            }
        }
    }

    /// Answers SSLRequest with `S` and runs the TLS handshake.
    async fn start_tls(&mut self, config: &Arc<rustls::ServerConfig>) -> Result<(), SessionError> {
        let session =
            TlsSession::new(config).map_err(|e| SessionError::Refused { sqlstate: "08P01", message: e.0 })?;
        self.send(vec![b'S']).await?;
        self.tls = Some(Box::new(session));
        while self.tls.as_ref().is_some_and(|t| t.is_handshaking()) {
            self.read_tls().await?;
        }
        Ok(())
    }

    pub async fn send(&mut self, mut out: Vec<u8>) -> Result<(), SessionError> {
        if let Some(tls) = self.tls.as_mut() {
            let mut cipher = Vec::with_capacity(out.len() + 64);
            tls.encrypt(&mut out, &mut cipher);
            out = cipher;
        }
        let (res, _) = net::write_all(&mut self.wr, out).await;
        res.map_err(|_| SessionError::ClientGone)
    }

    /// Reads one message of at most `max` bytes (checked on the header,
    /// before the body is read).
    async fn recv(&mut self, max: u32) -> Result<(u8, Vec<u8>), SessionError> {
        loop {
            if let Some((h, body)) = frame::read_message(&self.buf, max)? {
                let out = (h.tag, body.to_vec());
                self.buf.drain(..h.total_len());
                return Ok(out);
            }
            self.fill().await?;
        }
    }

    /// Sends an ErrorResponse with severity FATAL.
    pub async fn fatal(&mut self, sqlstate: &str, message: &str) {
        let mut out = Vec::new();
        backend::error_response(&mut out, "FATAL", sqlstate, message);
        let _ = self.send(out).await;
    }
}

/// Runs the opening of a connection up to ReadyForQuery, within the login
/// timeout.
pub async fn open(ctx: &Rc<ShardCtx>, conn: &mut ClientConn) -> Result<Opening, SessionError> {
    let t = Duration::from_millis(ctx.shared.config.general.client_login_timeout_ms);
    match net::timeout(t, open_inner(ctx, conn)).await {
        Some(r) => r,
        None => Err(SessionError::Refused {
            sqlstate: "08006",
            message: format!("login did not complete within client_login_timeout_ms ({} ms)", t.as_millis()),
        }),
    }
}

async fn open_inner(ctx: &Rc<ShardCtx>, conn: &mut ClientConn) -> Result<Opening, SessionError> {
    loop {
        let packet = loop {
            if let Some((p, n)) = startup::decode(&conn.buf)? {
                break (to_owned_packet(p), n);
            }
            if conn.buf.len() >= MAX_STARTUP_PACKET_LEN as usize {
                return Err(SessionError::Refused {
                    sqlstate: "08P01",
                    message: "invalid startup packet".into(),
                });
            }
            conn.fill().await?;
        };
        conn.buf.drain(..packet.1);
        match packet.0 {
            // No TLS over the Unix socket (as with Postgres): it never
            // leaves the host.
            OwnedPacket::Ssl
                if conn.tls.is_none() && ctx.shared.tls.is_some() && !conn.peer.is_local_socket() =>
            {
                // Bytes sent after SSLRequest but before our answer would be
                // taken as if they had come over TLS (CVE-2021-23222).
                if !conn.buf.is_empty() {
                    return Err(SessionError::Refused {
                        sqlstate: "08P01",
                        message: "received unencrypted data after SSL request".into(),
                    });
                }
                let config = ctx.shared.tls.clone().expect("checked");
                // Boxed, as are the cancel forward and the JWT login below:
                // large state machines off the common path would otherwise
                // make every login future (moved at spawn) as large as they.
                Box::pin(conn.start_tls(&config)).await?;
            }
            OwnedPacket::Ssl | OwnedPacket::GssEnc => {
                // No TLS (or GSS encryption): the client may go on in plain text.
                conn.send(vec![b'N']).await?;
            }
            OwnedPacket::Cancel { pid, key } => {
                Box::pin(forward_cancel(ctx, pid, key)).await;
                return Ok(Opening::Cancelled);
            }
            OwnedPacket::Startup { minor, params } => {
                let required =
                    ctx.shared.config.tls.as_ref().is_some_and(|t| t.client_tls == ClientTls::Required);
                if required && conn.tls.is_none() && !conn.peer.is_local_socket() {
                    return Err(SessionError::Refused {
                        sqlstate: "28000",
                        message: "pgwarden requires TLS: connect with sslmode=require (or stronger)".into(),
                    });
                }
                return login(ctx, conn, minor, params).await;
            }
        }
    }
}

enum OwnedPacket {
    Ssl,
    GssEnc,
    Cancel { pid: i32, key: i32 },
    Startup { minor: u16, params: Vec<(String, String)> },
}

fn to_owned_packet(p: StartupPacket<'_>) -> OwnedPacket {
    match p {
        StartupPacket::SslRequest => OwnedPacket::Ssl,
        StartupPacket::GssEncRequest => OwnedPacket::GssEnc,
        StartupPacket::Cancel { pid, key } => OwnedPacket::Cancel { pid, key },
        StartupPacket::Startup { minor, params, .. } => OwnedPacket::Startup {
            minor,
            params: params.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        },
    }
}

/// Forwards a CancelRequest to the server the client is bound to, if any.
async fn forward_cancel(ctx: &Rc<ShardCtx>, pid: i32, key: i32) {
    let Some((target, spid, skey)) = ctx.shared.cancel.lookup(pid, key) else {
        log::debug!("shard {}: cancel request for unknown or idle client ignored", ctx.id);
        return;
    };
    let addr = &ctx.shared.targets[target as usize];
    let timeout = Duration::from_millis(ctx.shared.config.general.server_connect_timeout_ms);
    match crate::session::server::send_cancel(addr, spid, skey, timeout).await {
        Ok(()) => log::info!("shard {}: forwarded cancel request to {addr}", ctx.id),
        Err(e) => log::warn!("shard {}: could not forward cancel request to {addr}: {e}", ctx.id),
    }
}

async fn login(
    ctx: &Rc<ShardCtx>,
    conn: &mut ClientConn,
    minor: u16,
    raw: Vec<(String, String)>,
) -> Result<Opening, SessionError> {
    let get = |k: &str| raw.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let user = get("user").ok_or_else(|| SessionError::Refused {
        sqlstate: "28000",
        message: "no PostgreSQL user name specified in startup packet".into(),
    })?;
    let database = get("database").filter(|d| !d.is_empty()).unwrap_or_else(|| user.clone());
    negotiate_version(conn, minor, &raw).await?;
    // AuthenticationOk (and SASLFinal) go out with the welcome, in one write:
    // every separate packet costs the client a wake-up.
    let (mut role_locked, mut expires_at) = (false, None);
    let read_only;
    let (mut out, pool) = match jwt_identity(ctx, &user) {
        Some(expected) => {
            let (out, role, ro, exp) = Box::pin(authenticate_jwt(ctx, conn, &user, expected)).await?;
            let jwt = ctx.shared.config.jwt.as_ref().expect("JWT login only with [jwt]");
            role_locked = jwt.identity == Identity::SetRole;
            read_only = ro;
            expires_at = jwt.expire_sessions.then_some(exp);
            (out, ctx.shared.jwt_pool(&role, &database, read_only)?)
        }
        None => {
            let out = authenticate(ctx, conn, &user).await?;
            read_only = ctx.shared.config.user(&user).is_some_and(|u| u.read_only);
            let key = PoolKey::User { user: user.clone(), database: database.clone() };
            let pool = ctx.shared.pools.lookup(&key).ok_or_else(|| SessionError::Refused {
                sqlstate: "3D000",
                message: format!("database \"{database}\" does not exist"),
            })?;
            (out, pool)
        }
    };
    let pairs: Vec<(&str, &str)> =
        raw.iter().filter(|(k, _)| !k.starts_with("_pq_.")).map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let params = ParamSet::from_startup(&pairs).map_err(|e| SessionError::Refused {
        sqlstate: if e.0.contains("cannot be set") { "42501" } else { "22023" },
        message: e.0,
    })?;
    if (read_only || role_locked)
        && params.iter().any(|(k, _)| k == "standard_conforming_strings" || k == "backslash_quote")
    {
        return Err(SessionError::Refused {
            sqlstate: "42501",
            message: "standard_conforming_strings and backslash_quote cannot be set in a session pgwarden \
                      inspects"
                .into(),
        });
    }
    if read_only && params.iter().any(|(k, _)| k.contains("transaction_read_only")) {
        return Err(SessionError::Refused {
            sqlstate: "25006",
            message: "this login is read-only: default_transaction_read_only and transaction_read_only \
                      cannot be set"
                .into(),
        });
    }
    if ctx.shared.shutting_down() {
        return Err(SessionError::Shutdown);
    }
    let mode = ctx.def(pool).mode;
    // Read-only users never touch the primary (unless read_only_fallback
    // says so); a session-mode session keeps this connection throughout.
    let want = if read_only {
        Want::ReadOnlyUser
    } else if mode == crate::config::PoolMode::Session {
        Want::Primary
    } else {
        Want::Login
    };
    let (host, server) = ctx.checkout_routed(pool, want).await?;
    let mut lease = crate::session::ctx::Lease::new(ctx, pool + host, server);
    sync_params(lease.conn(), &params).await?;
    let key = random_i32();
    let mut counter = ctx.cancel_counter.get();
    let (pid, cancel) = ctx.shared.cancel.register(ctx.id, &mut counter, key);
    ctx.cancel_counter.set(counter);
    welcome(&mut out, lease.conn(), pid, key);
    if let Err(e) = conn.send(out).await {
        ctx.shared.cancel.unregister(pid);
        ctx.release(pool + host, lease.take());
        return Err(e);
    }
    let server = lease.take();
    ctx.session_started(pool);
    let session = Session {
        user,
        database,
        pool,
        host,
        params,
        pid,
        cancel,
        role_locked,
        read_only,
        expires_at,
        pin_primary: false,
    };
    if mode == crate::config::PoolMode::Transaction {
        ctx.release(pool + host, server);
        Ok(Opening::Login(session, None))
    } else {
        Ok(Opening::Login(session, Some(server)))
    }
}

/// Answers a client asking for a newer minor version or `_pq_` options with
/// NegotiateProtocolVersion: we speak 3.0 and no extensions.
async fn negotiate_version(
    conn: &mut ClientConn,
    minor: u16,
    raw: &[(String, String)],
) -> Result<(), SessionError> {
    let unknown: Vec<&str> =
        raw.iter().filter(|(k, _)| k.starts_with("_pq_.")).map(|(k, _)| k.as_str()).collect();
    if minor == 0 && unknown.is_empty() {
        return Ok(());
    }
    let mut out = Vec::new();
    let mut w = Writer::new(&mut out, b'v');
    w.i32(0).i32(unknown.len() as i32);
    for u in &unknown {
        w.cstr(u.as_bytes());
    }
    w.finish();
    conn.send(out).await
}

fn random_i32() -> i32 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    ring::rand::SystemRandom::new().fill(&mut b).expect("system random source");
    i32::from_be_bytes(b)
}

fn auth_failed(user: &str) -> SessionError {
    SessionError::AuthFailed(format!("password authentication failed for user \"{user}\""))
}

/// Authenticates `user` by its configured method. An unknown user goes
/// through a SCRAM exchange against a random secret and fails like a wrong
/// password, so user names cannot be probed.
/// Returns the messages that end authentication (SASLFinal for SCRAM, then
/// AuthenticationOk), for the caller to send with the welcome.
async fn authenticate(
    ctx: &Rc<ShardCtx>,
    conn: &mut ClientConn,
    user: &str,
) -> Result<Vec<u8>, SessionError> {
    let cfg = ctx.shared.config.user(user);
    let (method, secret) = match cfg {
        Some(u) => (u.auth_method, u.password.as_deref().map(Secret::parse)),
        None => {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&random_i32().to_be_bytes());
            let server = auth::ScramServer::mock(user, &key);
            scram_exchange(conn, server, &mut Vec::new()).await?;
            return Err(auth_failed(user));
        }
    };
    let mut out = Vec::with_capacity(512);
    match (method, secret) {
        (AuthMethod::Trust, _) => {
            log::debug!("user \"{user}\" logs in with trust");
        }
        (AuthMethod::Plain, Some(secret)) => {
            send_auth(conn, 3, &[]).await?;
            let (_, body) = recv_password(conn).await?;
            let pw = crate::protocol::frontend::decode_password(&body)?;
            if !auth::verify_cleartext(&secret, user, pw) {
                return Err(auth_failed(user));
            }
        }
        (AuthMethod::Md5, Some(secret)) => {
            let salt = random_i32().to_be_bytes();
            send_auth(conn, 5, &salt).await?;
            let (_, body) = recv_password(conn).await?;
            let resp = crate::protocol::frontend::decode_password(&body)?;
            if !auth::md5_verify(&secret, user, salt, resp) {
                return Err(auth_failed(user));
            }
        }
        (AuthMethod::ScramSha256, Some(secret)) => {
            let scram = match &secret {
                Secret::Scram(s) => s.clone(),
                Secret::Plain(_) => match ctx.shared.scram_for_plain.get(user) {
                    Some(s) => s.clone(),
                    None => return Err(auth_failed(user)),
                },
                Secret::Md5(_) => return Err(auth_failed(user)),
            };
            let client_key = scram_exchange(conn, auth::ScramServer::new(&scram), &mut out).await.map_err(
                |e| match e {
                    SessionError::AuthFailed(_) => auth_failed(user),
                    other => other,
                },
            )?;
            if matches!(secret, Secret::Scram(_)) {
                remember_scram_keys(ctx, user, &scram, client_key);
            }
        }
        (_, None) => return Err(auth_failed(user)),
    }
    auth_message(&mut out, 0, &[]);
    Ok(out)
}

/// For a JWT login, the identity the token must carry (the startup user
/// without `user_suffix`); `None` for a static user's login. Without a
/// suffix, a configured user name is always a static login, so a token can
/// never take that user's place.
fn jwt_identity<'u>(ctx: &ShardCtx, user: &'u str) -> Option<&'u str> {
    let jwt = ctx.shared.config.jwt.as_ref()?;
    match &jwt.user_suffix {
        Some(suffix) => user.strip_suffix(suffix.as_str()).filter(|u| !u.is_empty()),
        None => ctx.shared.config.user(user).is_none().then_some(user),
    }
}

/// Asks for the token as a cleartext password and checks it; returns the
/// AuthenticationOk to send with the welcome, the role to become, whether
/// the session is read-only, and the token's `exp`.
async fn authenticate_jwt(
    ctx: &Rc<ShardCtx>,
    conn: &mut ClientConn,
    user: &str,
    expected: &str,
) -> Result<(Vec<u8>, String, bool, u64), SessionError> {
    let jwt = ctx.shared.config.jwt.as_ref().expect("JWT login only with [jwt]");
    let rt = ctx.shared.jwt.as_ref().expect("JWT runtime built with [jwt]");
    if jwt.require_tls && conn.tls.is_none() && !conn.peer.is_local_socket() {
        log::info!("shard {}: JWT login for user \"{user}\" from {} refused: no TLS", ctx.id, conn.peer);
        return Err(SessionError::Refused {
            sqlstate: "28000",
            message: "JWT login requires an encrypted connection: connect with sslmode=require".into(),
        });
    }
    send_auth(conn, 3, &[]).await?;
    let (_, body) = recv_password(conn).await?;
    let token = crate::protocol::frontend::decode_password(&body)?;
    let refuse = |sqlstate: &'static str, reason: String| {
        let (kid, iss) = describe_token(token);
        log::info!(
            "shard {}: JWT login for user \"{user}\" from {} refused (kid {kid}, iss {iss}): {reason}",
            ctx.id,
            conn.peer
        );
        SessionError::Refused {
            sqlstate,
            message: format!("JWT authentication failed for user \"{user}\": {reason}"),
        }
    };
    let keys = ctx.jwt_keys().expect("JWT runtime built with [jwt]");
    // (The token cache is borrowed only within each statement: never across
    // an await.)
    let mut result = rt.validate(&mut ctx.tokens.borrow_mut(), &keys, token);
    if result.as_ref().is_err_and(|e| e.wants_key_refresh()) && wait_for_key_refresh(ctx).await {
        // An unknown kid and a refresh finished: the keys may have rotated.
        let keys = ctx.jwt_keys().expect("JWT runtime built with [jwt]");
        result = rt.validate(&mut ctx.tokens.borrow_mut(), &keys, token);
    }
    let verified = result.map_err(|e| refuse("28P01", e.to_string()))?;
    let resolved = rt.rules.resolve(&verified.claims).map_err(|e| refuse("28000", e.to_string()))?;
    if jwt.match_startup_user && resolved.identity != expected {
        let reason = format!(
            "the token is for {:?}, not for {expected:?} (connect as the token's identity{})",
            resolved.identity,
            jwt.user_suffix.as_deref().map(|s| format!(" followed by {s:?}")).unwrap_or_default()
        );
        return Err(refuse("28000", reason));
    }
    let by_claim = jwt
        .read_only_claim
        .as_deref()
        .is_some_and(|c| crate::auth::jwt::claim_has_value(&verified.claims, c, &jwt.read_only_values));
    let read_only = by_claim
        || match jwt.role(&resolved.role) {
            Some(listed) => listed.read_only,
            None => jwt.auto_provision_read_only,
        };
    log::info!(
        "shard {}: JWT login for user \"{user}\" as role \"{}\"{} (kid {}, iss {})",
        ctx.id,
        resolved.role,
        if read_only { ", read-only" } else { "" },
        verified.kid.as_deref().unwrap_or("-"),
        verified.iss.as_deref().unwrap_or("-")
    );
    let mut out = Vec::with_capacity(512);
    auth_message(&mut out, 0, &[]);
    Ok((out, resolved.role, read_only, verified.exp))
}

/// How long a login with an unknown `kid` waits for the key refresh it asked
/// for.
const KEY_REFRESH_WAIT: Duration = Duration::from_secs(5);

/// Asks the control thread for a JWKS refresh and waits until a fetch
/// attempt finishes (or [`KEY_REFRESH_WAIT`]). Returns false at once when no
/// refresh can run (no jwks_url, or the cooldown since the last one).
async fn wait_for_key_refresh(ctx: &Rc<ShardCtx>) -> bool {
    let Some(rt) = ctx.shared.jwt.as_ref() else { return false };
    let store = &rt.store;
    let attempts = store.attempts.load(std::sync::atomic::Ordering::Acquire);
    if !store.request_refresh() {
        return false;
    }
    let start = std::time::Instant::now();
    while start.elapsed() < KEY_REFRESH_WAIT {
        if store.attempts.load(std::sync::atomic::Ordering::Acquire) != attempts {
            return true;
        }
        net::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The `kid` and `iss` of a token for a log line, read without trusting
/// them (the token may be forged), quoted and cut short. Never the token.
fn describe_token(token: &[u8]) -> (String, String) {
    let short = |s: &str| format!("{:?}", s.chars().take(64).collect::<String>());
    let kid = match crate::auth::jwt::peek_header(token) {
        Ok(h) => h.kid.as_deref().map_or("-".into(), short),
        Err(_) => "-".into(),
    };
    let iss = token
        .split(|&b| b == b'.')
        .nth(1)
        .and_then(|p| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("iss").and_then(|i| i.as_str()).map(short))
        .unwrap_or_else(|| "-".into());
    (kid, iss)
}

/// Keeps the keys a SCRAM login proved, so the proxy can log in to Postgres
/// for a user whose password it only knows as a SCRAM secret.
fn remember_scram_keys(ctx: &Rc<ShardCtx>, user: &str, s: &ScramSecret, client_key: [u8; 32]) {
    let cred = ScramCredential::from_client_key(s, client_key);
    ctx.shared.scram_keys.lock().unwrap_or_else(|p| p.into_inner()).insert(user.to_string(), cred);
}

/// Runs SCRAM-SHA-256 as the server; returns the client's proven ClientKey
/// and appends the SASLFinal message to `final_out` (sent by the caller).
async fn scram_exchange(
    conn: &mut ClientConn,
    mut server: auth::ScramServer,
    final_out: &mut Vec<u8>,
) -> Result<[u8; 32], SessionError> {
    let mut mechs = Vec::new();
    mechs.extend_from_slice(b"SCRAM-SHA-256\0\0");
    send_auth(conn, 10, &mechs).await?;
    let (_, body) = recv_password(conn).await?;
    let (mech, data) = crate::protocol::frontend::decode_sasl_initial(&body)?;
    if mech != "SCRAM-SHA-256" {
        return Err(SessionError::Refused {
            sqlstate: "28000",
            message: format!("SASL authentication mechanism \"{mech}\" is not supported; use SCRAM-SHA-256"),
        });
    }
    let first =
        server.client_first(data.unwrap_or_default()).map_err(|e| SessionError::AuthFailed(e.to_string()))?;
    send_auth(conn, 11, &first).await?;
    let (_, body) = recv_password(conn).await?;
    let outcome = server.client_final(&body).map_err(|e| SessionError::AuthFailed(e.to_string()))?;
    auth_message(final_out, 12, &outcome.server_final);
    Ok(outcome.client_key)
}

async fn send_auth(conn: &mut ClientConn, code: i32, data: &[u8]) -> Result<(), SessionError> {
    let mut out = Vec::new();
    auth_message(&mut out, code, data);
    conn.send(out).await
}

/// Appends an Authentication message (`code`, then `data`).
fn auth_message(out: &mut Vec<u8>, code: i32, data: &[u8]) {
    let mut w = Writer::new(out, b'R');
    w.i32(code).bytes(data);
    w.finish();
}

/// Reads a password-type message ('p'); anything longer than 64 KiB is
/// refused from its header.
async fn recv_password(conn: &mut ClientConn) -> Result<(u8, Vec<u8>), SessionError> {
    let (tag, body) = conn.recv(MAX_PASSWORD_MESSAGE_LEN).await.map_err(|e| match e {
        SessionError::ClientProtocol(crate::protocol::ProtocolError::TooLarge { .. }) => {
            SessionError::Refused {
                sqlstate: "08P01",
                message: format!("password message longer than {MAX_PASSWORD_MESSAGE_LEN} bytes"),
            }
        }
        other => other,
    })?;
    if tag != b'p' {
        return Err(SessionError::Refused {
            sqlstate: "08P01",
            message: format!(
                "expected a password message, got message type {}",
                crate::protocol::printable(tag)
            ),
        });
    }
    Ok((tag, body))
}

/// Makes `server` match the client's settings. Cheap when it already does.
pub async fn sync_params(server: &mut ServerConn, want: &ParamSet) -> Result<(), SessionError> {
    if server.params_digest == want.digest() {
        return Ok(());
    }
    let sql = params::sync_sql(want, &server.params, &server.set_keys);
    if !sql.is_empty() {
        let reported = match server.run_simple(&sql).await? {
            Ok(changes) => changes,
            Err(e) => return Err(SessionError::ServerRefused(e)),
        };
        // Reset names: their value is now the server's default, known only
        // if the server reported it.
        let reset: Vec<String> = server.set_keys.iter().filter(|k| want.get(k).is_none()).cloned().collect();
        for k in &reset {
            if !reported.iter().any(|(n, _)| n == k) {
                server.params.remove(k);
            }
        }
        server.set_keys.retain(|k| want.get(k).is_some());
        for (k, v) in want.iter() {
            if !server.set_keys.iter().any(|s| s == k) {
                server.set_keys.push(k.to_string());
            }
            if !reported.iter().any(|(n, _)| n == k) {
                server.params.set(k, v);
            }
        }
    }
    server.params_digest = want.digest();
    Ok(())
}

/// ParameterStatus for every reported setting, BackendKeyData, ReadyForQuery.
fn welcome(out: &mut Vec<u8>, server: &ServerConn, pid: i32, key: i32) {
    for (name, key) in REPORTED {
        if let Some(v) = server.params.get(key) {
            let mut w = Writer::new(out, b'S');
            w.cstr(name.as_bytes()).cstr(v.as_bytes());
            w.finish();
        }
    }
    let mut w = Writer::new(out, b'K');
    w.i32(pid).i32(key);
    w.finish();
    let mut w = Writer::new(out, b'Z');
    w.u8(b'I');
    w.finish();
}

#[cfg(test)]
mod tests {
    use super::REPORTED;

    #[test]
    fn reported_keys_are_the_lowercase_names() {
        for (name, key) in REPORTED {
            assert_eq!(name.to_ascii_lowercase(), *key, "{name}");
        }
    }
}
