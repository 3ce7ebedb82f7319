//! The command line: `pgwarden check`, `--help`, and refusing to start on a
//! broken config. No Postgres needed.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{config_for_port, pgwarden_bin, repo_root, run, CmdOutput};

fn pgwarden(args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(pgwarden_bin());
    cmd.args(args);
    run(cmd, None, Duration::from_secs(30))
}

fn check_text(toml: &str) -> CmdOutput {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("pgwarden.toml");
    std::fs::write(&path, toml).expect("write config");
    pgwarden(&["check", "--config", path.to_str().unwrap()])
}

/// The output lines that name `key_path` as `key_path: message`.
fn error_lines<'a>(out: &'a CmdOutput, key_path: &str) -> Vec<&'a str> {
    let needle = format!("{key_path}:");
    out.stdout.lines().chain(out.stderr.lines()).filter(|line| line.contains(&needle)).collect()
}

#[test]
fn example_config_is_valid() {
    let path = repo_root().join("config/pgwarden.toml");
    assert!(path.exists(), "missing example config {}", path.display());
    let out = pgwarden(&["check", "--config", path.to_str().unwrap()]);
    assert!(out.success(), "check of the example config failed: {out}");
    assert!(out.stdout.lines().any(|l| l.trim() == "ok"), "check did not print `ok`: {out}");
}

#[test]
fn standard_test_config_is_valid() {
    // The config every integration test builds on must itself pass check.
    let out = check_text(&config_for_port(5432, ""));
    assert!(out.success(), "check of the test config failed: {out}");
    assert!(out.stdout.lines().any(|l| l.trim() == "ok"), "{out}");
}

#[test]
fn wrong_type_names_its_key_path() {
    let toml = r#"
[general]
listen = "127.0.0.1:6432"

[[databases]]
name = "app"
host = "127.0.0.1"
port = "x"

[[users]]
name = "app"
password = "secret"
"#;
    let out = check_text(toml);
    assert!(!out.success(), "check accepted a string port: {out}");
    assert_eq!(out.code(), Some(1), "check must exit 1 on errors: {out}");
    let lines = error_lines(&out, "databases[0].port");
    assert!(!lines.is_empty(), "no `databases[0].port: ...` line: {out}");
    assert!(
        lines.iter().any(|l| l.contains("integer")),
        "the error should say an integer was expected: {out}"
    );
    assert!(!out.stdout.lines().any(|l| l.trim() == "ok"), "check printed ok for a broken config: {out}");
}

#[test]
fn several_errors_reported_at_once() {
    // Each value has the right type but is not allowed: validation must
    // report all of them, one per line, each with its key path.
    let toml = r#"
[general]
listen = "not an address"
pool_mode = "sometimes"

[[databases]]
name = "app"
host = "127.0.0.1"
port = 5432

[[users]]
name = "app"
password = "secret"

[[users]]
name = "other"
password = "secret"
auth = "kerberos"
"#;
    let out = check_text(toml);
    assert_eq!(out.code(), Some(1), "check must exit 1 on errors: {out}");
    for key_path in ["general.listen", "general.pool_mode", "users[1].auth"] {
        let lines = error_lines(&out, key_path);
        assert_eq!(lines.len(), 1, "expected exactly one `{key_path}: ...` line: {out}");
    }
    assert!(error_lines(&out, "users[0]").is_empty(), "users[0] is valid but was reported: {out}");
}

#[test]
fn missing_config_file_fails() {
    let out = pgwarden(&["check", "--config", "/nonexistent/pgwarden.toml"]);
    assert!(!out.success(), "check of a missing file succeeded: {out}");
    assert!(!out.stdout.lines().any(|l| l.trim() == "ok"), "{out}");
}

#[test]
fn help_mentions_check_and_config() {
    let out = pgwarden(&["--help"]);
    assert!(out.success(), "--help failed: {out}");
    let text = out.all();
    assert!(text.contains("check"), "--help does not mention check: {out}");
    assert!(text.contains("--config"), "--help does not mention --config: {out}");
}

#[test]
fn proxy_refuses_to_start_on_invalid_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config_for_port(5432, "pool_mode = \"sometimes\"\nlisten = \"127.0.0.1:0\""))
        .unwrap();
    let mut cmd = Command::new(pgwarden_bin());
    cmd.arg("--config").arg(&path);
    let out = run(cmd, None, Duration::from_secs(15));
    assert!(!out.timed_out(), "pgwarden kept running on an invalid config: {out}");
    assert!(!out.success(), "pgwarden exited 0 on an invalid config: {out}");
    assert!(out.all().contains("general.pool_mode"), "the startup error should name the bad key: {out}");
}

#[test]
fn keygen_and_token_make_keys_openssl_reads() {
    let dir = tempfile::tempdir().expect("temp dir");
    for alg in ["RS256", "ES256", "EdDSA"] {
        let out_dir = dir.path().join(alg);
        let out = pgwarden(&["keygen", "--alg", alg, "--out", out_dir.to_str().unwrap()]);
        assert!(out.success(), "keygen {alg}: {out}");
        assert!(out.stdout.contains("kid "), "{out}");
        // OpenSSL reads both halves, and derives the same public key.
        let private = out_dir.join("private.pem");
        let derived = Command::new("openssl")
            .args(["pkey", "-pubout", "-in", private.to_str().unwrap()])
            .output()
            .expect("run openssl");
        assert!(derived.status.success(), "openssl cannot read the {alg} private key");
        let public = std::fs::read(out_dir.join("public.pem")).unwrap();
        assert_eq!(derived.stdout, public, "{alg}: public.pem differs from the private key's");
        let token = pgwarden(&[
            "token",
            "--key",
            private.to_str().unwrap(),
            "--sub",
            "alice",
            "--ttl",
            "5m",
            "--aud",
            "pg",
        ]);
        assert!(token.success(), "token {alg}: {token}");
        assert_eq!(token.stdout.trim().split('.').count(), 3, "not a compact JWS: {token}");
    }
    let again = pgwarden(&["keygen", "--out", dir.path().join("EdDSA").to_str().unwrap(), "--alg", "EdDSA"]);
    assert!(!again.success(), "keygen overwrote a private key: {again}");
    let missing = pgwarden(&["token", "--sub", "x"]);
    assert!(!missing.success() && missing.stderr.contains("--key"), "{missing}");
    let bad_alg = pgwarden(&["keygen", "--alg", "HS256", "--out", "x"]);
    assert!(!bad_alg.success() && bad_alg.stderr.contains("unknown algorithm"), "{bad_alg}");
}

#[test]
fn jwt_example_config_is_valid_and_check_loads_its_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let example = repo_root().join("config/jwt.toml");
    let check = |dir: &std::path::Path| {
        let mut cmd = Command::new(pgwarden_bin());
        cmd.current_dir(dir).env("PGWARDEN_AUTHENTICATOR_PASSWORD", "x").args([
            "check",
            "--config",
            example.to_str().unwrap(),
        ]);
        run(cmd, None, Duration::from_secs(30))
    };
    // Without the key file, check names it.
    let out = check(dir.path());
    assert!(!out.success() && out.stderr.contains("jwt.public_key_file"), "{out}");
    let keys = dir.path().join("keys");
    assert!(pgwarden(&["keygen", "--out", keys.to_str().unwrap()]).success());
    let out = check(dir.path());
    assert!(!out.success() && out.stderr.contains("tls.cert_file"), "{out}");
    let pki = common::pki::Pki::new();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    for (from, to) in [("server.crt", "certs/server.crt"), ("server.key", "certs/server.key")] {
        std::fs::copy(pki.path(from), dir.path().join(to)).unwrap();
    }
    let out = check(dir.path());
    assert!(out.success(), "check of config/jwt.toml with its keys failed: {out}");
}
