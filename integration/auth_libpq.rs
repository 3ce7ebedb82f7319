//! Our server-side auth against a real client: libpq, through psql, logs
//! into a one-connection server that decides with [`ScramServer`],
//! [`md5_verify`] or [`verify_cleartext`]. This is what the proxy's client
//! side will face.

#[path = "auth_support/mod.rs"]
mod support;

use std::net::{SocketAddr, TcpListener};
use std::thread;

use pgwarden::auth::{
    md5_secret, md5_verify, verify_cleartext, AuthError, ScramSecret, ScramServer, Secret, SCRAM_SHA_256,
};
use support::login_server::{psql_client, ServerConn};

const USER: &str = "alice";
const PASSWORD: &str = "alice-pass";
/// libpq SASLpreps this; our secret must have been derived the same way.
const UNICODE_PASSWORD: &str = "\u{2168}-p\u{00E4}\u{00AD}ss\u{00A0}word";
const MD5_SALT: [u8; 4] = [0x9a, 0x00, b',', 0xff];

/// How the fake server authenticates.
enum Method {
    Scram(ScramServer),
    Md5(Secret),
    Cleartext(Secret),
}

/// What each side concluded.
struct Attempt {
    psql_succeeded: bool,
    psql_stderr: String,
    /// The server's verdict: `Err` holds the error's text.
    server: Result<(), String>,
}

/// psql logs in with `password`; the server checks it with `method`.
fn attempt(method: Method, password: &str) -> Attempt {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("local addr");
    let server = thread::spawn(move || serve_one(&listener, method));
    let output = psql_client(addr, USER, password).expect("run psql");
    let server = server.join().expect("server thread");
    Attempt {
        psql_succeeded: output.status.success(),
        psql_stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        server,
    }
}

fn serve_one(listener: &TcpListener, method: Method) -> Result<(), String> {
    let (mut conn, params) = ServerConn::accept(listener).map_err(|e| e.to_string())?;
    let user = params.get("user").cloned().unwrap_or_default();
    let verdict = match method {
        Method::Scram(server) => scram(&mut conn, server),
        Method::Md5(secret) => md5(&mut conn, &secret, &user),
        Method::Cleartext(secret) => cleartext(&mut conn, &secret, &user),
    };
    match verdict {
        Ok(()) => conn.accept_login_and_serve().map_err(|e| e.to_string()),
        Err(e) => {
            let _ = conn.send_error("28P01", &format!("password authentication failed for user \"{user}\""));
            Err(e)
        }
    }
}

fn scram(conn: &mut ServerConn, mut server: ScramServer) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    let auth = |e: AuthError| e.to_string();
    conn.send_auth_sasl(SCRAM_SHA_256).map_err(io)?;
    let (mechanism, client_first) = conn.read_sasl_initial().map_err(io)?;
    if mechanism != SCRAM_SHA_256 {
        return Err(format!("client chose {mechanism}"));
    }
    let server_first = server.client_first(&client_first).map_err(auth)?;
    conn.send_auth_data(11, &server_first).map_err(io)?;
    let client_final = conn.read_sasl_response().map_err(io)?;
    let outcome = server.client_final(&client_final).map_err(auth)?;
    conn.send_auth_data(12, &outcome.server_final).map_err(io)
}

fn md5(conn: &mut ServerConn, secret: &Secret, user: &str) -> Result<(), String> {
    conn.send_auth_md5(MD5_SALT).map_err(|e| e.to_string())?;
    let response = conn.read_password().map_err(|e| e.to_string())?;
    if !md5_verify(secret, user, MD5_SALT, &response) {
        return Err("md5 response does not match".into());
    }
    Ok(())
}

fn cleartext(conn: &mut ServerConn, secret: &Secret, user: &str) -> Result<(), String> {
    conn.send_auth_cleartext().map_err(|e| e.to_string())?;
    let password = conn.read_password().map_err(|e| e.to_string())?;
    if !verify_cleartext(secret, user, &password) {
        return Err("wrong cleartext password".into());
    }
    Ok(())
}

fn assert_accepted(attempt: &Attempt) {
    assert_eq!(attempt.server, Ok(()), "psql said: {}", attempt.psql_stderr);
    assert!(attempt.psql_succeeded, "psql failed: {}", attempt.psql_stderr);
}

fn assert_refused(attempt: &Attempt, server_error: &str) {
    assert_eq!(attempt.server, Err(server_error.to_owned()));
    assert!(!attempt.psql_succeeded);
    assert!(attempt.psql_stderr.contains("password authentication failed"), "{}", attempt.psql_stderr);
}

/// A SCRAM server for a secret derived from `password`.
fn scram_for(password: &str) -> Method {
    let secret = ScramSecret::for_plain(password).expect("secret");
    Method::Scram(ScramServer::new(&secret))
}

#[test]
fn libpq_scram_login_against_a_secret_for_a_plain_password() {
    assert_accepted(&attempt(scram_for(PASSWORD), PASSWORD));
}

#[test]
fn libpq_scram_wrong_password_is_refused() {
    let attempt = attempt(scram_for(PASSWORD), "alice-pass2");
    assert_refused(&attempt, &AuthError::InvalidProof.to_string());
}

#[test]
fn libpq_scram_saslprep_agrees_with_ours() {
    assert_accepted(&attempt(scram_for(UNICODE_PASSWORD), UNICODE_PASSWORD));
    // libpq prepares the password to "IX-p\u{00E4}ss word": that spelling
    // logs in too.
    assert_accepted(&attempt(scram_for(UNICODE_PASSWORD), "IX-p\u{00E4}ss word"));
}

#[test]
fn libpq_scram_mock_login_fails_like_a_wrong_password() {
    let attempt = attempt(Method::Scram(ScramServer::mock(USER, &[7; 32])), PASSWORD);
    assert_refused(&attempt, &AuthError::InvalidProof.to_string());
}

#[test]
fn libpq_md5_login() {
    let secret = Secret::parse(&md5_secret(USER, PASSWORD));
    assert_accepted(&attempt(Method::Md5(secret.clone()), PASSWORD));
    assert_accepted(&attempt(Method::Md5(Secret::Plain(PASSWORD.into())), PASSWORD));
    assert_refused(&attempt(Method::Md5(secret), "wrong"), "md5 response does not match");
}

#[test]
fn libpq_cleartext_login_against_every_kind_of_secret() {
    let secrets = [
        Secret::Plain(PASSWORD.into()),
        Secret::parse(&md5_secret(USER, PASSWORD)),
        Secret::Scram(ScramSecret::for_plain(PASSWORD).expect("secret")),
    ];
    for secret in secrets {
        assert_accepted(&attempt(Method::Cleartext(secret.clone()), PASSWORD));
        assert_refused(&attempt(Method::Cleartext(secret), "wrong"), "wrong cleartext password");
    }
}
