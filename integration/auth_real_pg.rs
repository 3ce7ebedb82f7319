//! The auth primitives against a real PostgreSQL 15, started by the test.
//!
//! Proves what unit tests cannot: that our SCRAM client (with a password and
//! with keys recovered from a client's exchange: the passthrough), our md5
//! response and our SASLprep agree with the real server, and that secrets
//! copied from `pg_authid` parse and verify.
//!
//! One server serves every check: initdb costs seconds, and the checks only
//! read the roles created at the start.

#[path = "auth_support/mod.rs"]
mod support;

use std::fmt::Debug;
use std::net::{SocketAddr, TcpListener};
use std::thread;

use pgwarden::auth::{
    md5_response, md5_secret, verify_cleartext, AuthError, ScramClient, ScramCredential, ScramSecret,
    ScramServer, Secret, SCRAM_SHA_256,
};
use support::login_server::{psql_client, ServerConn};
use support::pg::TempPostgres;
use support::wire::{AuthRequest, Conn, WireError};

const SCRAM_USER: &str = "scram_user";
const SCRAM_PASSWORD: &str = "scram-pass";
const MD5_USER: &str = "md5_user";
const MD5_PASSWORD: &str = "md5-pass";
/// Exercises SASLprep: a soft hyphen (mapped to nothing), a no-break space
/// (mapped to a space) and a ligature (split by NFKC).
const UNICODE_USER: &str = "unicode_user";
const UNICODE_PASSWORD: &str = "p\u{00E4}\u{00AD}ss\u{00A0}w\u{00F6}rd\u{FB01}";
/// SASLprep-prohibited (U+0340 before normalization): both sides must fall
/// back to the raw bytes.
const RAW_USER: &str = "raw_user";
const RAW_PASSWORD: &str = "\u{00E9}\u{0340}x";

const HBA: &[&str] = &["host all md5_user 127.0.0.1/32 md5", "host all all 127.0.0.1/32 scram-sha-256"];

/// Why a test login failed: the server said no, or our side did.
#[derive(Debug)]
enum LoginError {
    Wire(WireError),
    Auth(AuthError),
}

impl From<WireError> for LoginError {
    fn from(e: WireError) -> Self {
        LoginError::Wire(e)
    }
}

impl From<AuthError> for LoginError {
    fn from(e: AuthError) -> Self {
        LoginError::Auth(e)
    }
}

#[test]
fn real_postgres_accepts_our_scram_and_md5_logins() {
    let pg = TempPostgres::start(HBA).unwrap_or_else(|e| panic!("starting PostgreSQL: {e}"));
    create_roles(&pg);

    scram_password_login(&pg);
    scram_wrong_password_is_refused_by_the_server(&pg);
    scram_secret_from_pg_authid_verifies_cleartext(&pg);
    scram_passthrough_with_recovered_keys(&pg);
    scram_stale_secret_is_caught_before_sending_a_proof(&pg);
    libpq_logs_in_through_a_scram_passthrough(&pg);
    saslprep_agrees_with_postgres(&pg, UNICODE_USER, UNICODE_PASSWORD);
    saslprep_agrees_with_postgres(&pg, RAW_USER, RAW_PASSWORD);
    md5_login_from_password_and_from_secret(&pg);
    md5_wrong_password_is_refused_by_the_server(&pg);
}

fn create_roles(pg: &TempPostgres) {
    let sql = format!(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE {SCRAM_USER} LOGIN PASSWORD '{SCRAM_PASSWORD}';
         CREATE ROLE {UNICODE_USER} LOGIN PASSWORD '{UNICODE_PASSWORD}';
         CREATE ROLE {RAW_USER} LOGIN PASSWORD '{RAW_PASSWORD}';
         SET password_encryption = 'md5';
         CREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PASSWORD}';"
    );
    pg.psql(&sql).unwrap_or_else(|e| panic!("creating roles: {e}"));
}

fn rolpassword(pg: &TempPostgres, user: &str) -> String {
    pg.psql(&format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'"))
        .unwrap_or_else(|e| panic!("reading {user}'s secret: {e}"))
}

fn scram_password_login(pg: &TempPostgres) {
    let credential = ScramCredential::Password(SCRAM_PASSWORD.into());
    login_scram(pg.addr(), SCRAM_USER, credential)
        .unwrap_or_else(|e| panic!("SCRAM login with the password: {e:?}\n{}", pg.log()));
}

fn scram_wrong_password_is_refused_by_the_server(pg: &TempPostgres) {
    let credential = ScramCredential::Password("not-the-password".into());
    match login_scram(pg.addr(), SCRAM_USER, credential) {
        Err(LoginError::Wire(WireError::Server { code, .. })) => assert_eq!(code, "28P01"),
        other => panic!("a wrong SCRAM password got {other:?}"),
    }
}

fn scram_secret_from_pg_authid_verifies_cleartext(pg: &TempPostgres) {
    let stored = rolpassword(pg, SCRAM_USER);
    let secret = ScramSecret::parse(&stored).unwrap_or_else(|e| panic!("parsing {SCRAM_USER}'s secret: {e}"));
    assert_eq!(secret.to_string(), stored, "Display must give back PostgreSQL's text");
    let secret = Secret::parse(&stored);
    assert!(matches!(secret, Secret::Scram(_)), "{secret:?}");
    assert!(verify_cleartext(&secret, SCRAM_USER, SCRAM_PASSWORD.as_bytes()));
    assert!(!verify_cleartext(&secret, SCRAM_USER, b"scram-pass "));
}

/// The proxy's view: the config holds only the SCRAM secret copied from
/// pg_authid. A client logs into the proxy (ScramServer); the keys recovered
/// from that exchange log the proxy into PostgreSQL.
fn scram_passthrough_with_recovered_keys(pg: &TempPostgres) {
    let secret = ScramSecret::parse(&rolpassword(pg, SCRAM_USER)).expect("SCRAM secret");
    let client_key = client_logs_into_proxy(&secret, SCRAM_PASSWORD).expect("client login into the proxy");
    let keys = ScramCredential::from_client_key(&secret, client_key);
    login_scram(pg.addr(), SCRAM_USER, keys)
        .unwrap_or_else(|e| panic!("SCRAM passthrough login: {e:?}\n{}", pg.log()));
}

/// The whole passthrough with real programs at both ends: psql logs into a
/// one-connection "proxy" that verifies it with ScramServer against the
/// secret copied from pg_authid, logs into PostgreSQL with the recovered
/// keys, and only then lets psql in.
fn libpq_logs_in_through_a_scram_passthrough(pg: &TempPostgres) {
    let secret = ScramSecret::parse(&rolpassword(pg, SCRAM_USER)).expect("SCRAM secret");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let proxy_addr = listener.local_addr().expect("local addr");
    let upstream = pg.addr();
    let proxy = thread::spawn(move || proxy_one_login(&listener, &secret, upstream));
    let output = psql_client(proxy_addr, SCRAM_USER, SCRAM_PASSWORD).expect("run psql");
    let proxied = proxy.join().expect("proxy thread");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(proxied, Ok(()), "psql said: {stderr}\nserver log:\n{}", pg.log());
    assert!(output.status.success(), "psql failed: {stderr}");
}

/// One client login through the passthrough; `Err` says which step failed.
fn proxy_one_login(listener: &TcpListener, secret: &ScramSecret, upstream: SocketAddr) -> Result<(), String> {
    let (mut conn, params) = ServerConn::accept(listener).map_err(text)?;
    let user = params.get("user").cloned().unwrap_or_default();
    conn.send_auth_sasl(SCRAM_SHA_256).map_err(text)?;
    let (_, client_first) = conn.read_sasl_initial().map_err(text)?;
    let mut server = ScramServer::new(secret);
    conn.send_auth_data(11, &server.client_first(&client_first).map_err(text)?).map_err(text)?;
    let client_final = conn.read_sasl_response().map_err(text)?;
    let outcome = server.client_final(&client_final).map_err(text)?;
    let keys = ScramCredential::from_client_key(secret, outcome.client_key);
    login_scram(upstream, &user, keys).map_err(|e| format!("upstream login: {e:?}"))?;
    conn.send_auth_data(12, &outcome.server_final).map_err(text)?;
    conn.accept_login_and_serve().map_err(text)
}

fn text(e: impl Debug) -> String {
    format!("{e:?}")
}

fn scram_stale_secret_is_caught_before_sending_a_proof(pg: &TempPostgres) {
    let real = ScramSecret::parse(&rolpassword(pg, SCRAM_USER)).expect("SCRAM secret");
    let stale =
        ScramSecret::from_password(SCRAM_PASSWORD, b"a different salt", real.iterations).expect("secret");
    let client_key = client_logs_into_proxy(&stale, SCRAM_PASSWORD).expect("client login into the proxy");
    let keys = ScramCredential::from_client_key(&stale, client_key);
    match login_scram(pg.addr(), SCRAM_USER, keys) {
        Err(LoginError::Auth(AuthError::StaleSecret { what: "salt" })) => {}
        other => panic!("stale keys got {other:?}"),
    }
}

/// A non-ASCII password: our client, our secret derivation and
/// verify_cleartext must all agree with the secret PostgreSQL computed.
fn saslprep_agrees_with_postgres(pg: &TempPostgres, user: &str, password: &str) {
    let stored = rolpassword(pg, user);
    let real = ScramSecret::parse(&stored).expect("SCRAM secret");
    let ours = ScramSecret::from_password(password, &real.salt, real.iterations).expect("secret");
    assert_eq!(ours.to_string(), stored, "{user}: our SCRAM secret differs from PostgreSQL's");
    assert!(verify_cleartext(&Secret::Scram(real), user, password.as_bytes()));
    login_scram(pg.addr(), user, ScramCredential::Password(password.into()))
        .unwrap_or_else(|e| panic!("SCRAM login as {user}: {e:?}\n{}", pg.log()));
}

fn md5_login_from_password_and_from_secret(pg: &TempPostgres) {
    let stored = rolpassword(pg, MD5_USER);
    assert_eq!(stored, md5_secret(MD5_USER, MD5_PASSWORD));
    let secret = Secret::parse(&stored);
    assert!(matches!(secret, Secret::Md5(_)), "{secret:?}");
    assert!(verify_cleartext(&secret, MD5_USER, MD5_PASSWORD.as_bytes()));
    assert!(!verify_cleartext(&secret, MD5_USER, b"md5-pass!"));
    for secret in [Secret::Plain(MD5_PASSWORD.into()), secret] {
        login_md5(pg.addr(), MD5_USER, &secret)
            .unwrap_or_else(|e| panic!("md5 login with {secret:?}: {e:?}\n{}", pg.log()));
    }
}

fn md5_wrong_password_is_refused_by_the_server(pg: &TempPostgres) {
    match login_md5(pg.addr(), MD5_USER, &Secret::Plain("wrong".into())) {
        Err(LoginError::Wire(WireError::Server { code, .. })) => assert_eq!(code, "28P01"),
        other => panic!("a wrong md5 password got {other:?}"),
    }
}

/// A client with `password` logs into our ScramServer holding `secret`;
/// returns the ClientKey the server recovered.
fn client_logs_into_proxy(secret: &ScramSecret, password: &str) -> Result<[u8; 32], AuthError> {
    let mut server = ScramServer::new(secret);
    let mut client = ScramClient::new(ScramCredential::Password(password.into()))?;
    let server_first = server.client_first(&client.client_first())?;
    let client_final = client.server_first(&server_first)?;
    let outcome = server.client_final(&client_final)?;
    client.server_final(&outcome.server_final)?;
    Ok(outcome.client_key)
}

/// Logs into the real server with SCRAM-SHA-256, through ReadyForQuery.
fn login_scram(addr: SocketAddr, user: &str, credential: ScramCredential) -> Result<(), LoginError> {
    let mut conn = Conn::startup(addr, user, "postgres")?;
    match conn.read_auth()? {
        AuthRequest::Sasl { mechanisms } if mechanisms.iter().any(|m| m == SCRAM_SHA_256) => {}
        other => return Err(unexpected(format!("{other:?} instead of SCRAM-SHA-256"))),
    }
    let mut client = ScramClient::new(credential)?;
    conn.send_sasl_initial(SCRAM_SHA_256, &client.client_first())?;
    let AuthRequest::SaslContinue(server_first) = conn.read_auth()? else {
        return Err(unexpected("no AuthenticationSASLContinue".into()));
    };
    conn.send_sasl_response(&client.server_first(&server_first)?)?;
    let AuthRequest::SaslFinal(server_final) = conn.read_auth()? else {
        return Err(unexpected("no AuthenticationSASLFinal".into()));
    };
    client.server_final(&server_final)?;
    expect_ok_and_ready(&mut conn)
}

/// Logs into the real server with md5, through ReadyForQuery.
fn login_md5(addr: SocketAddr, user: &str, secret: &Secret) -> Result<(), LoginError> {
    let mut conn = Conn::startup(addr, user, "postgres")?;
    let AuthRequest::Md5 { salt } = conn.read_auth()? else {
        return Err(unexpected("no AuthenticationMD5Password".into()));
    };
    conn.send_password(md5_response(user, secret, salt)?.as_bytes())?;
    expect_ok_and_ready(&mut conn)
}

fn expect_ok_and_ready(conn: &mut Conn) -> Result<(), LoginError> {
    match conn.read_auth()? {
        AuthRequest::Ok => Ok(conn.await_ready()?),
        other => Err(unexpected(format!("{other:?} instead of AuthenticationOk"))),
    }
}

fn unexpected(what: String) -> LoginError {
    LoginError::Wire(WireError::Unexpected(what))
}
