//! JWT logins end to end against a real Postgres: a token as the password,
//! the role it names taken through the authenticator (`identity =
//! "set_role"`), refusals with the reason, and no statement that escapes the
//! role. Plain TCP with `require_tls = false` (TLS termination comes next).

mod common;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{
    config, connect_with, one, sqlstate, unique_name, PgServer, Proxy, APP_DB, APP_PASSWORD, APP_USER,
};
use pgwarden::auth::jwt::sign::generate_pkcs8;
use pgwarden::auth::jwt::{Algorithm, SigningKey};
use serde_json::{json, Map, Value};
use tokio_postgres::Client;

const AUTH_PASSWORD: &str = "auth-secret";

/// An authenticator role and JWT roles granted to it, a table the first role
/// may use, a key pair, and a proxy configured for them.
struct Setup {
    pg: &'static PgServer,
    proxy: Proxy,
    key: SigningKey,
    authenticator: String,
    /// Granted to the authenticator and allowed.
    role_a: String,
    role_b: String,
    /// Granted to the authenticator but outside allowed_roles.
    other: String,
    table: String,
    _dir: tempfile::TempDir,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

impl Setup {
    fn new(extra_jwt: &str) -> Setup {
        Setup::with_general("", extra_jwt)
    }

    /// `general`: extra `[general]` lines.
    fn with_general(general: &str, extra_jwt: &str) -> Setup {
        let pg = PgServer::shared();
        let prefix = unique_name("pgwjwt");
        let authenticator = format!("{prefix}_auth");
        let role_a = format!("{prefix}_a");
        let role_b = format!("{prefix}_b");
        let other = unique_name("pgwother");
        let table = format!("{prefix}_t");
        pg.exec(&format!(
            "CREATE ROLE {authenticator} LOGIN NOINHERIT PASSWORD '{AUTH_PASSWORD}';
             CREATE ROLE {role_a} NOLOGIN; CREATE ROLE {role_b} NOLOGIN; CREATE ROLE {other} NOLOGIN;
             GRANT {role_a}, {role_b}, {other} TO {authenticator};
             CREATE TABLE {table} (id int, who text);
             REVOKE ALL ON {table} FROM PUBLIC;
             GRANT SELECT, INSERT ON {table} TO {role_a};"
        ));
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_pkcs8(&generate_pkcs8(Algorithm::ES256).unwrap()).unwrap();
        let pem_path = dir.path().join("public.pem");
        std::fs::write(&pem_path, key.public_pem()).unwrap();
        let cfg = config(
            pg,
            &format!(
                "workers = 1\n{general}\n[jwt]\npublic_key_file = {:?}\nrequire_tls = false\nserver_user = \"{authenticator}\"\n\
                 server_password = \"{AUTH_PASSWORD}\"\nauto_provision = true\nallowed_roles = [\"{prefix}_*\"]\n\
                 audience = \"pgwarden\"\nissuer = \"https://idp.test\"\n{extra_jwt}\n",
                path_str(&pem_path)
            ),
        );
        let proxy = Proxy::start(&cfg);
        Setup { pg, proxy, key, authenticator, role_a, role_b, other, table, _dir: dir }
    }

    fn token(&self, sub: &str, extra: Value) -> String {
        let mut claims: Map<String, Value> =
            json!({"sub": sub, "aud": "pgwarden", "iss": "https://idp.test", "iat": now(), "exp": now() + 300})
                .as_object()
                .unwrap()
                .clone();
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                claims.remove(k);
            } else {
                claims.insert(k.clone(), v.clone());
            }
        }
        self.key.sign(Algorithm::ES256, Some("test-key"), &claims).unwrap()
    }

    async fn connect(&self, user: &str, token: &str) -> Result<Client, tokio_postgres::Error> {
        connect_with(&self.proxy.tokio_config(user, token, APP_DB)).await.map(|(c, _)| c)
    }

    async fn login(&self, role: &str) -> Client {
        self.connect(role, &self.token(role, json!({})))
            .await
            .unwrap_or_else(|e| panic!("JWT login as {role} failed: {e:?}\n{}", self.proxy.logs()))
    }

    /// Connects, expecting a refusal; returns (SQLSTATE, message).
    async fn refused(&self, user: &str, token: &str) -> (String, String) {
        match self.connect(user, token).await {
            Ok(_) => panic!("login as {user} succeeded; expected a refusal"),
            Err(e) => {
                let db = e.as_db_error().unwrap_or_else(|| panic!("no server error: {e:?}"));
                (db.code().code().to_string(), db.message().to_string())
            }
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.proxy.stop();
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_logs_in_as_its_role_and_data_round_trips() {
    let s = Setup::new("");
    let c = s.login(&s.role_a).await;
    assert_eq!(one(&c, "SELECT current_user").await, s.role_a);
    assert_eq!(one(&c, "SELECT session_user").await, s.authenticator);
    c.simple_query(&format!("BEGIN; INSERT INTO {} VALUES (1, current_user); COMMIT", s.table))
        .await
        .unwrap();
    c.simple_query(&format!("BEGIN; INSERT INTO {} VALUES (2, 'rolled back'); ROLLBACK", s.table))
        .await
        .unwrap();
    // Checked by a direct connection.
    let direct = s.pg.psql_direct(&format!("SELECT string_agg(id || ':' || who, ',') FROM {}", s.table));
    assert_eq!(direct.trim(), format!("1:{}", s.role_a));
    // Extended protocol too.
    let row =
        c.query_one(&format!("SELECT count(*) FROM {} WHERE id = $1", s.table), &[&1i32]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    // A second identity at the same time stays independent.
    let b = s.login(&s.role_b).await;
    assert_eq!(one(&b, "SELECT current_user").await, s.role_b);
    let err = b.simple_query(&format!("SELECT * FROM {}", s.table)).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err:?}");
    assert_eq!(one(&c, "SELECT current_user").await, s.role_a);
    // The same identity reconnects with a fresh token.
    drop(c);
    let again = s.connect(&s.role_a, &s.token(&s.role_a, json!({"iat": now(), "jti": "2"}))).await.unwrap();
    assert_eq!(one(&again, "SELECT current_user").await, s.role_a);
    let logs = s.proxy.logs();
    assert!(s.proxy.log_shows("provisioned a pool for JWT role"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_the_reason() {
    let s = Setup::new("");
    let a = s.role_a.clone();
    let good = s.token(&a, json!({}));
    let expired = s.token(&a, json!({"exp": now() - 10}));
    let early = s.token(&a, json!({"nbf": now() + 600}));
    let wrong_aud = s.token(&a, json!({"aud": "other"}));
    let no_aud = s.token(&a, json!({"aud": null}));
    let other_key = SigningKey::from_pkcs8(&generate_pkcs8(Algorithm::ES256).unwrap()).unwrap();
    let forged = other_key.sign(Algorithm::ES256, None, good_claims(&a).as_object().unwrap()).unwrap();
    let mut parts: Vec<&str> = good.split('.').collect();
    let tampered_payload =
        base64_url(&serde_json::to_vec(&json!({"sub": "postgres", "exp": now() + 60})).unwrap());
    parts[1] = &tampered_payload;
    let tampered = parts.join(".");
    let none = format!(
        "{}.{}.",
        base64_url(br#"{"alg":"none"}"#),
        base64_url(&serde_json::to_vec(&good_claims(&a)).unwrap())
    );
    let wrong_iss = s.token(&a, json!({"iss": "https://evil.test"}));
    // HS256 keyed with the public key's PEM: the classic confusion.
    let hs256 = {
        let h = base64_url(br#"{"alg":"HS256","typ":"JWT"}"#);
        let p = base64_url(&serde_json::to_vec(&good_claims(&a)).unwrap());
        let pem = s.key.public_pem();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, pem.as_bytes());
        let mac = ring::hmac::sign(&key, format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", base64_url(mac.as_ref()))
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("wrong issuer", wrong_iss, "issuer mismatch"),
        ("HS256 with the public key", hs256, "algorithm \"HS256\" is not allowed"),
        ("expired", expired, "token expired"),
        ("not yet valid", early, "not yet valid"),
        ("wrong audience", wrong_aud, "audience mismatch"),
        ("no audience", no_aud, "token has no aud"),
        ("other key", forged, "signature verification failed"),
        ("tampered", tampered, "signature verification failed"),
        ("alg none", none, "algorithm \"none\" is not allowed"),
        ("not a JWT", "hunter2".into(), "malformed token"),
        ("oversized", "a".repeat(70_000), "password message longer than"),
    ];
    for (what, token, reason) in cases {
        let (code, message) = s.refused(&a, &token).await;
        assert!(code == "28P01" || code == "28000" || code == "08P01", "{what}: {code} {message}");
        assert!(message.contains(reason), "{what}: {message:?} lacks {reason:?}");
        if token.len() > 10 {
            assert!(!message.contains(&token), "{what}: the message echoes the token");
        }
    }
    // An empty password.
    let (code, message) = s.refused(&a, "").await;
    assert_eq!(code, "28P01", "{message}");
    assert!(message.contains("empty password"), "{message}");
    let logs = s.proxy.logs();
    assert!(!logs.contains(&good[..40]), "a token reached the log");
    assert!(s.proxy.log_shows("refused (kid \"test-key\""), "refusals are logged with the kid: {logs}");
}

fn good_claims(sub: &str) -> Value {
    json!({"sub": sub, "aud": "pgwarden", "iss": "https://idp.test", "exp": now() + 300})
}

fn base64_url(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_that_must_not_log_in() {
    let s = Setup::new("");
    // The token is for b, the startup user is a.
    let (code, msg) = s.refused(&s.role_a, &s.token(&s.role_b, json!({}))).await;
    assert_eq!(code, "28000", "{msg}");
    assert!(msg.contains("not for"), "{msg}");
    // A role granted to the authenticator but outside allowed_roles.
    let (code, msg) = s.refused(&s.other, &s.token(&s.other, json!({}))).await;
    assert_eq!(code, "28000", "{msg}");
    assert!(msg.contains("not in allowed_roles"), "{msg}");
    // The authenticator itself, and postgres.
    let (_, msg) = s.refused(&s.authenticator, &s.token(&s.authenticator, json!({}))).await;
    assert!(msg.contains("not allowed"), "{msg}");
    let (_, msg) = s.refused("postgres", &s.token("postgres", json!({}))).await;
    assert!(msg.contains("not allowed"), "{msg}");
    // A token whose sub names a static user does not get that user's
    // credentials: the static user logs in with its password only.
    let err = s.connect(APP_USER, &s.token(APP_USER, json!({}))).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err:?}");
    s.connect(APP_USER, APP_PASSWORD).await.expect("the static user still logs in with its password");
    // An allowed role that does not exist fails closed, at the server.
    let ghost = format!("{}_ghost", s.role_a);
    let err = s.connect(&ghost, &s.token(&ghost, json!({}))).await.unwrap_err();
    let msg = format!("{err:?}");
    assert!(msg.contains("does not exist") || msg.contains("permission denied"), "{msg}");
    // Nothing ran as the authenticator meanwhile: the good login still works.
    let c = s.login(&s.role_a).await;
    assert_eq!(one(&c, "SELECT current_user").await, s.role_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_escapes_are_refused() {
    let s = Setup::new("");
    let c = s.login(&s.role_a).await;
    let auth = &s.authenticator;
    let other = &s.other;
    let escapes = [
        format!("SET ROLE {other}"),
        "SET ROLE NONE".to_string(),
        "RESET ROLE".to_string(),
        format!("SET SESSION AUTHORIZATION {auth}"),
        "RESET SESSION AUTHORIZATION".to_string(),
        format!("SELECT set_config('role', '{other}', false)"),
        format!("DO $$ BEGIN EXECUTE 'SET ROLE {other}'; END $$"),
        "DISCARD ALL".to_string(),
        format!("SELECT 1; SET ROLE {other}"),
        format!("SET LOCAL ROLE {other}"),
        format!("UPDATE pg_settings SET setting = '{other}' WHERE name = 'role'"),
        // A function made now could change the role later, out of sight.
        format!("CREATE FUNCTION pg_temp.f() RETURNS void LANGUAGE plpgsql AS $$BEGIN EXECUTE 'SET RO'||'LE {other}'; END$$"),
        // With it off, backslashes would split strings differently from the lexer.
        "SET standard_conforming_strings = off".to_string(),
        format!("SELECT 1 --\rSET ROLE {other}"),
    ];
    for sql in &escapes {
        let err = c.simple_query(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{sql}: {err:?}");
        assert_eq!(one(&c, "SELECT current_user").await, s.role_a, "after {sql}");
        // Extended protocol: the statement prepares, and executing it raises.
        let res = c.query(sql.as_str(), &[]).await;
        let err = res.expect_err(sql);
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "extended {sql}: {err:?}");
        assert_eq!(one(&c, "SELECT current_user").await, s.role_a, "after extended {sql}");
    }
    // The proxy's own cleanup (DISCARD ALL after a temporary table) keeps
    // the token's role on the connection.
    c.simple_query("CREATE TEMP TABLE pgw_tmp (a int)").await.unwrap();
    for _ in 0..3 {
        assert_eq!(one(&c, "SELECT current_user").await, s.role_a);
    }
    // False alarms of the lexer are cleared by the grammar: a column or a
    // string that says "role" is not a role change.
    assert_eq!(one(&c, "SELECT 'SET ROLE is refused here' AS role").await, "SET ROLE is refused here");
    let row = c.query_one("SELECT $1::text AS role", &[&"x"]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "x");
    // Inside a transaction the refusal fails the transaction, as Postgres would.
    c.simple_query("BEGIN").await.unwrap();
    assert!(c.simple_query("SET ROLE NONE").await.is_err());
    let err = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("25P02"));
    c.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(one(&c, "SELECT current_user").await, s.role_a);
    assert_eq!(one(&c, "SELECT session_user").await, *auth);
    // psql, for real.
    let out = s.proxy.psql_cmd(&s.role_a, &s.token(&s.role_a, json!({})), APP_DB);
    let mut cmd = out;
    cmd.args(["-At", "-c", "SET ROLE NONE", "-c", "SELECT current_user"]);
    let res = common::run(cmd, None, common::PSQL_TIMEOUT);
    assert!(res.stderr.contains("locked to the role its token names"), "{res}");
    assert!(res.stdout.trim() == s.role_a, "{res}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_tokens_can_read_and_never_write() {
    let s = Setup::new("read_only_claim = \"scope\"\nread_only_values = [\"db:read\"]");
    let t = &s.table;
    let (writer_fn, ro_off_fn, seq) = (format!("{t}_w"), format!("{t}_off"), format!("{t}_seq"));
    s.pg.exec(&format!(
        "CREATE FUNCTION {writer_fn}() RETURNS void LANGUAGE sql AS $$ INSERT INTO {t} VALUES (9, 'fn') $$;
         CREATE FUNCTION {ro_off_fn}() RETURNS text LANGUAGE sql
             AS $$ SELECT set_config('default_transaction_read_only', 'off', false) $$;
         CREATE SEQUENCE {seq}; GRANT USAGE ON SEQUENCE {seq} TO {a};
         GRANT UPDATE ON {t} TO {a};",
        a = s.role_a
    ));
    let token = s.token(&s.role_a, json!({"scope": "openid db:read"}));
    let c = s.connect(&s.role_a, &token).await.unwrap_or_else(|e| panic!("{e:?}\n{}", s.proxy.logs()));
    assert_eq!(one(&c, "SELECT current_user").await, s.role_a);
    assert_eq!(one(&c, "SHOW default_transaction_read_only").await, "on");
    assert_eq!(one(&c, &format!("SELECT count(*) FROM {t}")).await, "0");
    let writes = [
        format!("INSERT INTO {t} VALUES (1, 'x')"),
        format!("UPDATE {t} SET who = 'x'"),
        format!("DELETE FROM {t}"),
        format!("MERGE INTO {t} USING (SELECT 1 AS id) s ON {t}.id = s.id WHEN MATCHED THEN DELETE"),
        format!("WITH d AS (DELETE FROM {t} RETURNING *) SELECT * FROM d"),
        format!("SELECT * FROM {t} FOR UPDATE"),
        format!("SELECT * FROM {t} FOR SHARE"),
        format!("SELECT * INTO {t}_copy FROM {t}"),
        format!("CREATE TABLE {t}_new (a int)"),
        format!("DROP TABLE {t}"),
        format!("TRUNCATE {t}"),
        format!("SELECT nextval('{seq}')"),
        format!("SELECT setval('{seq}', 5)"),
        "CALL no_such_procedure()".to_string(),
        "DO $$ BEGIN NULL; END $$".to_string(),
        "BEGIN READ WRITE".to_string(),
        "START TRANSACTION READ WRITE".to_string(),
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE".to_string(),
        "SET default_transaction_read_only = off".to_string(),
        "SET transaction_read_only = off".to_string(),
        "SELECT set_config('default_transaction_read_only', 'off', false)".to_string(),
    ];
    for sql in &writes {
        // Refused by pgwarden, before Postgres sees it.
        let by_proxy = |e: &tokio_postgres::Error| {
            e.as_db_error().is_some_and(|d| d.message().contains("this session is read-only"))
        };
        let err = c.simple_query(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&err).as_deref(), Some("25006"), "{sql}: {err:?}");
        assert!(by_proxy(&err), "{sql}: {err:?}");
        let err = c.query(sql.as_str(), &[]).await.expect_err(sql);
        assert_eq!(sqlstate(&err).as_deref(), Some("25006"), "extended {sql}: {err:?}");
        assert!(by_proxy(&err), "extended {sql}: {err:?}");
        assert_eq!(one(&c, "SHOW default_transaction_read_only").await, "on", "after {sql}");
    }
    // Keywords used as names are cleared by the grammar.
    assert_eq!(one(&c, "SELECT 'x' AS comment, 'y' AS share").await, "x");
    // COPY FROM refused.
    let err = c.simple_query(&format!("COPY {t} FROM STDIN")).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("25006"), "{err:?}");
    // A write hidden in a function: Postgres refuses it (the session is read-only).
    let err = c.simple_query(&format!("SELECT {writer_fn}()")).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("25006"), "{err:?}");
    assert_eq!(s.pg.psql_direct(&format!("SELECT count(*) FROM {t}")).trim(), "0");
    // The same role without the read-only scope writes (a separate pool).
    let w = s.login(&s.role_a).await;
    w.simple_query(&format!("INSERT INTO {t} VALUES (1, 'writer')")).await.unwrap();
    assert_eq!(one(&c, &format!("SELECT count(*) FROM {t}")).await, "1");
    // A function that turns read-only off ends the session.
    let res = c.simple_query(&format!("SELECT {ro_off_fn}()")).await;
    let after = c.simple_query("SELECT 1").await;
    assert!(res.is_err() || after.is_err(), "the session survived read-only being turned off");
    let logs = s.proxy.logs();
    assert!(s.proxy.log_shows("got default_transaction_read_only = off"), "{logs}");
    // A read-only login cannot ask for read-write in its startup packet.
    let mut cfg = s.proxy.tokio_config(&s.role_a, &token, APP_DB);
    cfg.options("-c default_transaction_read_only=off");
    let err = connect_with(&cfg).await.map(|_| ()).unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("25006"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superuser_authenticator_is_refused_unless_allowed() {
    let s = Setup::new("");
    s.pg.exec(&format!("ALTER ROLE {} SUPERUSER", s.authenticator));
    let (code, msg) = s.refused(&s.role_a, &s.token(&s.role_a, json!({}))).await;
    assert_eq!(code, "28000", "{msg}");
    assert!(msg.contains("server user is a superuser"), "{msg}");
    assert!(s.proxy.log_shows("allow_superuser_server_user"), "{}", s.proxy.logs());
    let allowed = Setup::new("allow_superuser_server_user = true");
    allowed.pg.exec(&format!("ALTER ROLE {} SUPERUSER INHERIT", allowed.authenticator));
    let c = allowed.login(&allowed.role_a).await;
    assert_eq!(one(&c, "SELECT current_user").await, allowed.role_a);
    assert!(allowed.proxy.log_shows("has INHERIT"), "{}", allowed.proxy.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_login_connects_as_the_role_itself() {
    let s = Setup::new("identity = \"login\"");
    s.pg.exec(&format!("ALTER ROLE {} LOGIN PASSWORD '{AUTH_PASSWORD}'", s.role_a));
    let c = s.login(&s.role_a).await;
    assert_eq!(one(&c, "SELECT current_user").await, s.role_a);
    assert_eq!(one(&c, "SELECT session_user").await, s.role_a);
    // Nothing to escape to: the session user is the role.
    c.simple_query("SET ROLE NONE").await.unwrap();
    assert_eq!(one(&c, "SELECT current_user").await, s.role_a);
    // A role that cannot log in (NOLOGIN, no password) fails closed, with
    // the server's own error.
    let err = s.connect(&s.role_b, &s.token(&s.role_b, json!({}))).await.unwrap_err();
    let msg = format!("{err:?}");
    assert!(msg.contains("password authentication failed") || msg.contains("not permitted"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_sessions_ends_a_session_after_its_token_at_a_boundary() {
    let s = Setup::new("expire_sessions = true");
    let token = s.token(&s.role_a, json!({"exp": now() + 3}));
    let c = s.connect(&s.role_a, &token).await.unwrap();
    assert_eq!(one(&c, "SELECT current_user").await, s.role_a);
    c.simple_query("BEGIN").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    // Inside the transaction the session goes on, past exp.
    assert_eq!(one(&c, "SELECT 1").await, "1");
    c.simple_query("COMMIT").await.unwrap();
    // At the boundary it ends.
    let err = c.simple_query("SELECT 1").await.unwrap_err();
    let text = format!("{err:?}");
    assert!(text.contains("token expired") || err.is_closed(), "{text}");
    assert!(s.proxy.log_shows("its token expired (expire_sessions)"), "{}", s.proxy.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_username_claim() {
    let s = Setup::new("username_claim = \"realm_access.role\"\nmatch_startup_user = false");
    // The identity comes from the nested claim, whatever sub says.
    let token = s.token("someone@example.com", json!({"realm_access": {"role": s.role_b}}));
    let c = s.connect("anyname", &token).await.unwrap_or_else(|e| panic!("{e:?}\n{}", s.proxy.logs()));
    assert_eq!(one(&c, "SELECT current_user").await, s.role_b);
    let (code, msg) = s.refused("anyname", &s.token("x", json!({"realm_access": {"role": 7}}))).await;
    assert_eq!(code, "28000", "{msg}");
    assert!(msg.contains("claim \"realm_access.role\" is not a string"), "{msg}");
}

#[test]
fn a_superuser_authenticator_stops_start_up() {
    let pg = PgServer::shared();
    let auth = unique_name("pgwsuper");
    pg.exec(&format!("CREATE ROLE {auth} LOGIN SUPERUSER PASSWORD '{AUTH_PASSWORD}'"));
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("public.pem");
    let key = SigningKey::from_pkcs8(&generate_pkcs8(Algorithm::ES256).unwrap()).unwrap();
    std::fs::write(&pem, key.public_pem()).unwrap();
    let cfg = config(
        pg,
        &format!(
            "[jwt]\npublic_key_file = {:?}\nrequire_tls = false\nserver_user = \"{auth}\"\n\
             server_password = \"{AUTH_PASSWORD}\"\nauto_provision = true\n",
            path_str(&pem)
        ),
    );
    let err = match Proxy::try_start(&cfg) {
        Ok(mut p) => {
            p.stop();
            panic!("pgwarden started with a superuser authenticator")
        }
        Err(e) => e,
    };
    assert!(err.contains("refusing to start") && err.contains("superuser"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_auto_provisioned_pools_make_room_for_new_roles() {
    let s = Setup::with_general("server_idle_timeout_ms = 300", "max_auto_pools = 1");
    let a = s.login(&s.role_a).await;
    assert_eq!(one(&a, "SELECT current_user").await, s.role_a);
    // The only auto pool is in use: a second role finds no room.
    let (code, msg) = s.refused(&s.role_b, &s.token(&s.role_b, json!({}))).await;
    assert_eq!(code, "53300", "{msg}");
    assert!(msg.contains("max_auto_pools"), "{msg}");
    // Once its client is gone and its connections idle out, it is reaped.
    drop(a);
    let start = std::time::Instant::now();
    loop {
        match s.connect(&s.role_b, &s.token(&s.role_b, json!({}))).await {
            Ok(b) => {
                assert_eq!(one(&b, "SELECT current_user").await, s.role_b);
                break;
            }
            Err(e) if start.elapsed() > std::time::Duration::from_secs(20) => {
                panic!("{e:?}\n{}", s.proxy.logs())
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
    assert!(s.proxy.log_shows("reaped 1 idle auto-provisioned pools"), "{}", s.proxy.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_suffix_marks_jwt_logins() {
    let s = Setup::new("user_suffix = \"@jwt\"");
    // "<identity>@jwt" is a JWT login for that identity.
    let token = s.token(&s.role_a, json!({}));
    let c = s.connect(&format!("{}@jwt", s.role_a), &token).await.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(one(&c, "SELECT current_user").await, s.role_a);
    // Without the suffix, the same name is not a JWT login (and not a
    // configured user either): refused like an unknown user.
    let err = s.connect(&s.role_a, &token).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err:?}");
    // The suffix on a token for someone else does not help.
    let (code, msg) = s.refused(&format!("{}@jwt", s.role_b), &token).await;
    assert_eq!(code, "28000", "{msg}");
    assert!(msg.contains("followed by \"@jwt\""), "{msg}");
}
