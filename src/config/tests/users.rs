//! Passwords against auth methods, secrets kept out of messages,
//! `${NAME}` substitution, and loading files.

use super::*;

#[test]
fn md5_cannot_use_a_scram_secret() {
    assert_eq!(
        errors(&with_user(&format!("auth = \"md5\"\npassword = \"{SCRAM}\""))),
        ["users[0].password: is a SCRAM-SHA-256 secret and cannot verify auth = \"md5\": md5 needs \
          the plaintext password or its md5 hash; give one of those, or set auth = \"scram-sha-256\""]
    );
    // The same through the general default, which the message names.
    let text = format!("[general]\nauth_method = \"md5\"\n{}", with_user(&format!("password = \"{SCRAM}\"")));
    let errs = errors(&text);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("auth = \"md5\" (from general.auth_method)"), "{errs:?}");
    assert!(!errs[0].contains("4096"), "the secret is never shown: {errs:?}");
}

#[test]
fn scram_cannot_use_an_md5_hash() {
    assert_eq!(
        errors(&with_user(&format!("password = \"{MD5_HASH}\""))),
        ["users[0].password: is an md5 hash and cannot verify auth = \"scram-sha-256\" (from \
          general.auth_method): SCRAM-SHA-256 needs the plaintext password or a SCRAM-SHA-256 \
          secret; give one of those, or set auth = \"md5\""]
    );
}

#[test]
fn compatible_password_forms_are_accepted() {
    for (auth, password) in [
        ("md5", MD5_HASH),
        ("md5", "plain-text"),
        ("scram-sha-256", SCRAM),
        ("plain", SCRAM),
        ("plain", MD5_HASH),
        ("trust", "anything"),
    ] {
        let config = parse_ok(&with_user(&format!("auth = \"{auth}\"\npassword = \"{password}\"")));
        assert_eq!(config.users[0].password.as_deref(), Some(password));
    }
}

#[test]
fn password_required_unless_trust() {
    let config = parse_ok(&with_user("auth = \"trust\""));
    let user = &config.users[0];
    assert_eq!((user.auth_method, &user.password, &user.server_password), (AuthMethod::Trust, &None, &None));

    assert_eq!(
        errors(&with_user("auth = \"md5\"")),
        ["users[0].password: required key is missing: auth = \"md5\" needs a password (only auth = \"trust\" does not)"]
    );
    assert_eq!(
        errors(&with_user("password = \"\"")),
        ["users[0].password: must not be empty (Postgres refuses empty passwords)"]
    );
}

#[test]
fn one_mistake_one_error() {
    // A wrong auth (here or in general) is not followed by a password error.
    assert_eq!(errors(&with_user(&format!("auth = \"md55\"\npassword = \"{SCRAM}\""))).len(), 1);
    let text = format!("[general]\nauth_method = 5\n{}", with_user(&format!("password = \"{MD5_HASH}\"")));
    assert_eq!(errors(&text).len(), 1);
    // A wrong password is not also "missing".
    assert_eq!(errors(&with_user("password = 5")).len(), 1);
}

#[test]
fn passwords_never_appear_in_errors() {
    let errs = errors(&with_user("password = 12345678"));
    assert_eq!(errs, ["users[0].password: expected a string, found integer"]);

    let errs = errors(&with_user("password = \"SCRAM-SHA-256$hunter2\""));
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("users[0].password: starts with \"SCRAM-SHA-256$\" but is not a well-formed"));
    assert!(!errs[0].contains("hunter2"), "{errs:?}");

    let errs = errors(&with_user("password = \"p\"\nserver_password = \"${X\""));
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("users[0].server_password: unterminated"), "{errs:?}");

    let errs = errors(&with_user(&format!("password = \"{}\"", "x".repeat(1025))));
    assert_eq!(errs, ["users[0].password: must be at most 1024 bytes, found 1025 bytes"]);
}

#[test]
fn debug_redacts_passwords() {
    let config = parse_ok(&with_user("password = \"hunter2\"\nserver_password = \"swordfish\""));
    let shown = format!("{config:?} {:#?}", config.users[0]);
    assert!(!shown.contains("hunter2") && !shown.contains("swordfish"), "{shown}");
    assert!(shown.contains("password: Some(<redacted>)"), "{shown}");
    assert!(shown.contains("name: \"u\""), "{shown}");
}

#[test]
fn env_substitution() {
    let env = env_of(&[
        ("DB_HOST", "db.internal"),
        ("A", "one"),
        ("B", "two"),
        ("NESTED", "${A}"),
        ("MODE", "session"),
        ("ADDR", "127.0.0.1:0"),
    ]);
    let text = r#"
        [general]
        listen = "${ADDR}"
        pool_mode = "${MODE}"
        [[databases]]
        name = "app"
        host = "${DB_HOST}"
        database_name = "${A}_${B}"
        [[users]]
        name = "u"
        password = "${A}-${B}$$x$y"
        server_password = "${NESTED}"
    "#;
    let config = parse(text, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.general.listen.port(), 0);
    assert_eq!(config.general.pool_mode, PoolMode::Session);
    assert_eq!(config.databases[0].host, "db.internal");
    assert_eq!(config.databases[0].database_name, "one_two");
    let user = &config.users[0];
    assert_eq!(user.password.as_deref(), Some("one-two$x$y"));
    assert_eq!(user.server_password.as_deref(), Some("${A}"), "values are not expanded again");
}

#[test]
fn unset_variables_are_named_and_values_never_shown() {
    let env = env_of(&[("SET", "hunter2")]);
    assert_eq!(
        errors_with(&with_user("password = \"${SET}${MISSING}\""), &env),
        ["users[0].password: environment variable MISSING is not set"]
    );
    assert_eq!(
        errors_with(&with_user("password = \"${X1}:${X2}:${X1}\""), &env),
        ["users[0].password: environment variables X1, X2 are not set"]
    );
    assert_eq!(
        errors_with(&with_general("listen = \"${LISTEN}\""), &env),
        ["general.listen: environment variable LISTEN is not set"]
    );
}

#[test]
fn malformed_references() {
    assert_eq!(
        errors(&with_user("password = \"ab${1X}\"")),
        ["users[0].password: invalid environment variable name in \"${...}\" at byte 2: names match \
          [A-Za-z_][A-Za-z0-9_]* (write \"$$\" for a literal \"$\")"]
    );
    assert_eq!(errors(&with_user("password = \"${}\"")).len(), 1);
    assert_eq!(
        errors(&with_general("listen = \"${ADDR\"")),
        ["general.listen: unterminated \"${\" at byte 0 (write \"$$\" for a literal \"$\")"]
    );
}

#[test]
fn load_reads_a_file() {
    let path = std::env::temp_dir().join(format!("pgwarden-config-test-{}.toml", std::process::id()));
    std::fs::write(&path, EXAMPLE).unwrap();
    let loaded = load(&path);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(loaded.unwrap(), parse_ok(EXAMPLE));
}

#[test]
fn load_reports_an_unreadable_file() {
    let path = std::path::Path::new("/nonexistent/pgwarden.toml");
    let e = load(path).unwrap_err();
    assert_eq!(e.paths(), [""]);
    assert!(e.to_string().starts_with("cannot read configuration file /nonexistent/pgwarden.toml: "), "{e}");
}

#[test]
fn enums_display_as_written() {
    assert_eq!(AuthMethod::ScramSha256.to_string(), "scram-sha-256");
    assert_eq!(PoolMode::Session.as_str(), "session");
    assert_eq!(LogLevel::Warn.to_string(), "warn");
}
