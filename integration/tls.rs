//! TLS for clients, with real libpq clients (psql, pgbench) against a test CA
//! made by openssl: sslmode=require and verify-full, client_tls = required,
//! and JWT logins that need TLS.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::pki::Pki;
use common::{
    config, database_entry, run, unique_name, CmdOutput, PgServer, Proxy, APP_DB, APP_PASSWORD, APP_USER,
};
use pgwarden::auth::jwt::sign::generate_pkcs8;
use pgwarden::auth::jwt::{Algorithm, SigningKey};

/// psql through the proxy with libpq's SSL settings.
fn psql(proxy: &Proxy, user: &str, password: &str, ssl: &[(&str, &str)], sql: &str) -> CmdOutput {
    let mut cmd = proxy.psql_cmd(user, password, APP_DB);
    for (k, v) in ssl {
        cmd.env(k, v);
    }
    cmd.args(["-At", "-c", sql]);
    run(cmd, None, common::PSQL_TIMEOUT)
}

#[test]
fn psql_over_tls_require_and_verify_full() {
    let pg = PgServer::shared();
    let pki = Pki::new();
    let proxy = Proxy::start(&config(pg, &pki.tls_section("allowed")));
    let ca = pki.path("ca.crt");
    let ca = ca.to_str().unwrap();
    let out = psql(&proxy, APP_USER, APP_PASSWORD, &[("PGSSLMODE", "require")], "SELECT 40 + 2");
    assert!(out.success() && out.stdout.trim() == "42", "{out}");
    let out = psql(&proxy, APP_USER, APP_PASSWORD, &[("PGSSLMODE", "require")], "\\conninfo");
    assert!(out.stdout.contains("SSL connection (protocol: TLSv1."), "{out}");
    let verify = [("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca)];
    let out = psql(&proxy, APP_USER, APP_PASSWORD, &verify, "SELECT current_user");
    assert!(out.success() && out.stdout.trim() == APP_USER, "{out}");
    // A certificate from another CA is not trusted.
    let other = pki.path("other-ca.crt");
    let wrong = [("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", other.to_str().unwrap())];
    let out = psql(&proxy, APP_USER, APP_PASSWORD, &wrong, "SELECT 1");
    assert!(!out.success() && out.stderr.contains("certificate verify failed"), "{out}");
    // Plain text is still allowed with client_tls = "allowed".
    let out = psql(&proxy, APP_USER, APP_PASSWORD, &[("PGSSLMODE", "disable")], "SELECT 1");
    assert!(out.success(), "{out}");
    // Large results and COPY cross TLS records intact.
    let out = psql(
        &proxy,
        APP_USER,
        APP_PASSWORD,
        &[("PGSSLMODE", "require")],
        "SELECT md5(string_agg(repeat(i::text, 100), ',')) = md5((SELECT string_agg(repeat(i::text, 100), ',') FROM generate_series(1, 20000) i)) FROM generate_series(1, 20000) i",
    );
    assert!(out.success() && out.stdout.trim() == "t", "{out}");
}

#[test]
fn client_tls_required_refuses_plain_text() {
    let pg = PgServer::shared();
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let unix = format!("unix_socket_dir = {:?}\n", dir.path().to_str().unwrap());
    let proxy = Proxy::start(&config(pg, &format!("{unix}{}", pki.tls_section("required"))));
    let out = psql(&proxy, APP_USER, APP_PASSWORD, &[("PGSSLMODE", "disable")], "SELECT 1");
    assert!(!out.success() && out.stderr.contains("pgwarden requires TLS"), "{out}");
    let out = psql(&proxy, APP_USER, APP_PASSWORD, &[("PGSSLMODE", "require")], "SELECT 1");
    assert!(out.success(), "{out}");
    // The Unix socket does not leave the host: no TLS there (as Postgres).
    let out = proxy.psql_via_socket(dir.path(), APP_USER, APP_PASSWORD, "SELECT 1");
    assert!(out.success() && out.stdout.trim() == "1", "{out}");
}

#[test]
fn jwt_needs_tls_and_pgbench_runs_with_a_token() {
    let pg = PgServer::shared();
    let pki = Pki::new();
    let db = pg.create_database("pgwtls");
    let status = pg.pgbench_direct(&db, &["-i", "-s", "1", "-q"]).status().expect("pgbench -i");
    assert!(status.success());
    let prefix = unique_name("pgwtlsjwt");
    let (auth, role) = (format!("{prefix}_auth"), format!("{prefix}_app"));
    pg.exec(&format!(
        "CREATE ROLE {auth} LOGIN NOINHERIT PASSWORD 'auth-secret'; CREATE ROLE {role} NOLOGIN;
         GRANT {role} TO {auth};"
    ));
    pg.psql_in(&db, &format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"));
    let key = SigningKey::from_pkcs8(&generate_pkcs8(Algorithm::RS256).unwrap()).unwrap();
    let pem = pki.path("jwt.pem");
    std::fs::write(&pem, key.public_pem()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        pg,
        &format!(
            "workers = 1\nunix_socket_dir = {:?}\n{}{}[jwt]\npublic_key_file = {:?}\nserver_user = \"{auth}\"\nserver_password = \"auth-secret\"\n\
             auto_provision = true\nallowed_roles = [\"{prefix}_*\"]\n",
            dir.path().to_str().unwrap(),
            pki.tls_section("allowed"),
            database_entry(pg, &db),
            pem.to_str().unwrap()
        ),
    );
    let proxy = Proxy::start(&cfg);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({"sub": role, "exp": now + 600, "iat": now});
    let token = key.sign(Algorithm::RS256, Some("k1"), claims.as_object().unwrap()).unwrap();
    // Over plain TCP the password is never asked for.
    let out = psql(&proxy, &role, &token, &[("PGSSLMODE", "disable")], "SELECT 1");
    assert!(!out.success() && out.stderr.contains("requires an encrypted connection"), "{out}");
    assert!(!proxy.logs().contains(&token[..30]), "token in the log");
    let out = psql(&proxy, &role, &token, &[("PGSSLMODE", "require")], "SELECT current_user");
    assert!(out.success() && out.stdout.trim() == role, "{out}");
    // Over the Unix socket a token needs no TLS: it never leaves the host.
    let out = proxy.psql_via_socket(dir.path(), &role, &token, "SELECT current_user");
    assert!(out.success() && out.stdout.trim() == role, "{out}");
    for extra in [&["-S", "-c", "4", "-T", "3"][..], &["-S", "-c", "2", "-T", "3", "-C"][..]] {
        let mut cmd = proxy.pgbench_cmd(&role, &token, &db, &[extra, &["-n"]].concat());
        cmd.env("PGSSLMODE", "require");
        let out = run(cmd, None, common::PGBENCH_TIMEOUT);
        assert!(out.success(), "pgbench {extra:?}: {out}");
        assert!(out.stdout.contains("number of failed transactions: 0"), "pgbench {extra:?}: {out}");
    }
}
