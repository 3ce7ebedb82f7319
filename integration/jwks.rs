//! JWKS from a URL, refreshed by the control thread, against a real HTTPS
//! server in this test (rustls, a test CA given as jwks_ca_file): key
//! rotation without restart, an identity provider that goes down, a burst of
//! unknown kids, and a start with the provider down.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::pki::Pki;
use common::{config, connect_with, unique_name, PgServer, Proxy, APP_DB};
use pgwarden::auth::jwt::sign::generate_pkcs8;
use pgwarden::auth::jwt::{Algorithm, SigningKey};
use serde_json::json;

/// What the JWKS server answers.
struct State {
    body: String,
    /// Drop connections without answering (a dead identity provider).
    down: bool,
}

struct JwksServer {
    port: u16,
    state: Arc<Mutex<State>>,
    fetches: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl JwksServer {
    fn start(pki: &Pki, body: String) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let config =
            pgwarden::net::tls::server_config(&pki.path("server.crt"), &pki.path("server.key")).unwrap();
        let state = Arc::new(Mutex::new(State { body, down: false }));
        let fetches = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, f, s) = (state.clone(), fetches.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Acquire) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, f, config) = (st.clone(), f.clone(), config.clone());
                std::thread::spawn(move || serve(conn, &config, &st, &f));
            }
        });
        JwksServer { port, state, fetches, stop }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}/.well-known/jwks.json", self.port)
    }

    fn set_keys(&self, keys: &[(&SigningKey, &str)]) {
        self.state.lock().unwrap().body = jwks(keys);
    }

    fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::Acquire)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, config: &Arc<rustls::ServerConfig>, state: &Mutex<State>, fetches: &AtomicUsize) {
    if state.lock().unwrap().down {
        return; // connection dropped
    }
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let tls = rustls::ServerConnection::new(config.clone()).unwrap();
    let mut stream = rustls::StreamOwned::new(tls, conn);
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    fetches.fetch_add(1, Ordering::AcqRel);
    let body = state.lock().unwrap().body.clone();
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes());
    stream.conn.send_close_notify();
    let _ = stream.flush();
}

fn jwks(keys: &[(&SigningKey, &str)]) -> String {
    let keys: Vec<_> = keys.iter().map(|(k, kid)| k.verifying_key().to_jwk(kid)).collect();
    json!({ "keys": keys }).to_string()
}

fn new_key() -> SigningKey {
    SigningKey::from_pkcs8(&generate_pkcs8(Algorithm::ES256).unwrap()).unwrap()
}

struct Setup {
    pg: &'static PgServer,
    proxy: Proxy,
    role: String,
    _pki: Pki,
}

impl Setup {
    fn new(pki: Pki, server: &JwksServer) -> Setup {
        let pg = PgServer::shared();
        let prefix = unique_name("pgwjwks");
        let (auth, role) = (format!("{prefix}_auth"), format!("{prefix}_r"));
        pg.exec(&format!(
            "CREATE ROLE {auth} LOGIN NOINHERIT PASSWORD 'auth-secret'; CREATE ROLE {role} NOLOGIN;
             GRANT {role} TO {auth};"
        ));
        let cfg = config(
            pg,
            &format!(
                "workers = 2\n[jwt]\njwks_url = \"{}\"\njwks_ca_file = {:?}\njwks_refresh_cooldown_secs = 60\n\
                 server_user = \"{auth}\"\nserver_password = \"auth-secret\"\nauto_provision = true\n\
                 allowed_roles = [\"{prefix}_*\"]\nrequire_tls = false\n",
                server.url(),
                pki.path("ca.crt").to_str().unwrap()
            ),
        );
        Setup { pg, proxy: Proxy::start(&cfg), role, _pki: pki }
    }

    fn token(&self, key: &SigningKey, kid: &str) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let claims = json!({"sub": self.role, "exp": now + 300, "iat": now, "jti": unique_name("t")});
        key.sign(Algorithm::ES256, Some(kid), claims.as_object().unwrap()).unwrap()
    }

    async fn login(&self, key: &SigningKey, kid: &str) -> Result<(), String> {
        let cfg = self.proxy.tokio_config(&self.role, &self.token(key, kid), APP_DB);
        match connect_with(&cfg).await {
            Ok((c, _)) => {
                let row = c.query_one("SELECT current_user", &[]).await.map_err(|e| format!("{e:?}"))?;
                assert_eq!(row.get::<_, String>(0), self.role);
                Ok(())
            }
            Err(e) => Err(e.as_db_error().map_or_else(|| format!("{e:?}"), |d| d.message().to_string())),
        }
    }
}

/// Polls `login` until it succeeds or `secs` pass.
async fn eventually(s: &Setup, key: &SigningKey, kid: &str, secs: u64) -> Result<(), String> {
    let start = Instant::now();
    loop {
        match s.login(key, kid).await {
            Ok(()) => return Ok(()),
            Err(e) if start.elapsed() > Duration::from_secs(secs) => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_outage_and_unknown_kid_bursts() {
    let pki = Pki::new();
    let (k1, k2) = (new_key(), new_key());
    let server = JwksServer::start(&pki, jwks(&[(&k1, "k1")]));
    let s = Setup::new(pki, &server);
    // The first fetch happens at start-up (wait for it, so that the first
    // login does not spend the cooldown on a forced refresh).
    let start = Instant::now();
    while server.fetches() == 0 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.login(&k1, "k1").await.unwrap_or_else(|e| panic!("{e}\n{}", s.proxy.logs()));
    let after_start = server.fetches();
    assert!(after_start >= 1);

    // Rotation at the identity provider: the unknown kid forces one refresh.
    server.set_keys(&[(&k2, "k2")]);
    s.login(&k2, "k2").await.unwrap_or_else(|e| panic!("rotated key refused: {e}\n{}", s.proxy.logs()));
    assert_eq!(server.fetches(), after_start + 1, "one forced refresh");
    // The old key is gone with the rotation.
    let err = s.login(&k1, "k1").await.unwrap_err();
    assert!(err.contains("unknown signing key"), "{err}");

    // A burst of unknown kids within the cooldown costs no further fetch.
    let before_burst = server.fetches();
    for i in 0..20 {
        let err = s.login(&new_key(), &format!("random-{i}")).await.unwrap_err();
        assert!(err.contains("unknown signing key"), "{err}");
    }
    assert!(server.fetches() <= before_burst + 1, "{} fetches for a burst", server.fetches() - before_burst);

    // The identity provider goes down: known keys keep working.
    server.set_down(true);
    for _ in 0..3 {
        s.login(&k2, "k2").await.unwrap_or_else(|e| panic!("known key refused while the IdP is down: {e}"));
    }
    assert!(!s.proxy.logs().contains("eyJ"), "a token reached the log");
    let _ = s.pg;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_with_the_provider_down_and_recovers() {
    let pki = Pki::new();
    let k1 = new_key();
    let server = JwksServer::start(&pki, jwks(&[(&k1, "k1")]));
    server.set_down(true);
    let s = Setup::new(pki, &server);
    let err = s.login(&k1, "k1").await.unwrap_err();
    assert!(err.contains("unknown signing key"), "{err}");
    assert!(s.proxy.log_shows("fetch failed"), "{}", s.proxy.logs());
    server.set_down(false);
    // The retry schedule (5 s, then doubling) picks the keys up.
    eventually(&s, &k1, "k1", 30).await.unwrap_or_else(|e| panic!("{e}\n{}", s.proxy.logs()));
}
