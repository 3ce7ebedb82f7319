//! Error reporting: every error at once, paths, expected/found, ranges,
//! unknown keys and sections, missing sections, duplicates.

use super::*;

#[test]
fn reports_every_error_at_once_with_its_path() {
    let text = r#"
        [general]
        listen = "localhost"
        workers = 0
        pool_mode = "sesion"
        max_message_size = 12

        [[databases]]
        name = "a"
        host = "h"

        [[databases]]
        name = "b"
        host = "h"
        port = "x"
        prot = 5432

        [[users]]
        name = "u"
        pool_size = 0
    "#;
    assert_eq!(
        errors(text),
        [
            "general.listen: expected an address \"ip:port\" such as \"127.0.0.1:6432\" or \"[::1]:6432\", found \"localhost\"",
            "general.workers: must be between 1 and 1024, found 0",
            "general.pool_mode: expected one of \"transaction\", \"session\", found \"sesion\"; did you mean \"session\"?",
            "general.max_message_size: must be between 1024 and 1073741824, found 12",
            "databases[1].port: expected an integer, found string \"x\"",
            "databases[1].prot: unknown key; did you mean \"port\"?",
            "users[0].pool_size: must be between 1 and 10000, found 0",
            "users[0].password: required key is missing: auth = \"scram-sha-256\" (from general.auth_method) needs a password (only auth = \"trust\" does not)",
        ]
    );
}

#[test]
fn errors_display_one_per_line() {
    let e = parse("[general]\nworkers = 0\nlog_level = 1\n", &no_env).unwrap_err();
    assert_eq!(e.paths(), ["general.workers", "general.log_level", "databases", "users"]);
    let shown = e.to_string();
    assert_eq!(shown.lines().count(), 4);
    assert!(shown.starts_with("general.workers: must be between 1 and 1024, found 0\n"));
    assert!(!shown.ends_with('\n'));
    assert_eq!(ConfigError::new("", "whole file").to_string(), "whole file");
}

#[test]
fn bad_enum_values_list_the_accepted_ones() {
    assert_eq!(
        errors(&with_general(r#"log_level = "verbose""#)),
        [r#"general.log_level: expected one of "error", "warn", "info", "debug", "trace", found "verbose""#]
    );
    assert_eq!(
        errors(&with_general(r#"auth_method = "scram""#)),
        [r#"general.auth_method: expected one of "scram-sha-256", "md5", "plain", "trust", found "scram""#]
    );
    assert_eq!(
        errors(&with_general("pool_mode = 1")),
        [r#"general.pool_mode: expected a string, one of "transaction", "session", found integer 1"#]
    );
    assert_eq!(
        errors(&with_user("password = \"p\"\npool_mode = \"Session\"")),
        [
            r#"users[0].pool_mode: expected one of "transaction", "session", found "Session"; did you mean "session"?"#
        ]
    );
}

#[test]
fn type_errors_say_expected_and_found() {
    assert_eq!(
        errors(&with_general("default_pool_size = \"20\"")),
        [r#"general.default_pool_size: expected an integer, found string "20""#]
    );
    assert_eq!(
        errors(&with_general("listen = 6432")),
        ["general.listen: expected a string, found integer 6432"]
    );
    assert_eq!(
        errors(&with_general("checkout_timeout_ms = [1]")),
        ["general.checkout_timeout_ms: expected an integer, found array"]
    );
    assert_eq!(
        errors(&format!("general = 5\n{MINIMAL}")),
        ["general: expected a table ([general]), found integer 5"]
    );
}

#[test]
fn out_of_range_values_say_the_range() {
    let cases = [
        ("default_pool_size = 0", "general.default_pool_size: must be between 1 and 10000, found 0"),
        ("default_pool_size = -5", "general.default_pool_size: must be between 1 and 10000, found -5"),
        ("checkout_timeout_ms = 0", "general.checkout_timeout_ms: must be between 1 and 2592000000, found 0"),
        (
            "server_connect_timeout_ms = 0",
            "general.server_connect_timeout_ms: must be between 1 and 2592000000, found 0",
        ),
        (
            "client_login_timeout_ms = 0",
            "general.client_login_timeout_ms: must be between 1 and 2592000000, found 0",
        ),
        (
            "server_lifetime_ms = 9999999999999",
            "general.server_lifetime_ms: must be between 0 and 2592000000, found 9999999999999",
        ),
        (
            "max_message_size = 1073741825",
            "general.max_message_size: must be between 1024 and 1073741824, found 1073741825",
        ),
        (
            "max_client_connections = 0",
            "general.max_client_connections: must be between 1 and 1000000, found 0",
        ),
        (
            "prepared_statements_cache_size = -1",
            "general.prepared_statements_cache_size: must be between 0 and 100000, found -1",
        ),
    ];
    for (line, message) in cases {
        assert_eq!(errors(&with_general(line)), [message], "{line}");
    }
    assert_eq!(
        errors(&format!("{MINIMAL}port = 0\n").replace("[[users]]", "port = 0\n[[users]]")),
        ["databases[0].port: must be between 1 and 65535, found 0", "users[0].port: unknown key"]
    );
}

#[test]
fn unknown_keys_and_sections() {
    assert_eq!(
        errors(&with_general("pool_size = 5")),
        [r#"general.pool_size: unknown key; did you mean "default_pool_size"?"#]
    );
    assert_eq!(
        errors(&with_user("password = \"p\"\nauth_method = \"md5\"")),
        [r#"users[0].auth_method: unknown key; did you mean "auth"?"#]
    );
    assert_eq!(
        errors(&format!("{MINIMAL}\n[tls]\ncert = \"x\"\n")),
        [
            "tls.cert_file: required key is missing",
            "tls.key_file: required key is missing",
            r#"tls.cert: unknown key; did you mean "cert_file"?"#
        ]
    );
    assert_eq!(errors(&format!("{MINIMAL}\n[admin]\nport = 1\n")), ["admin: unknown section"]);
    assert_eq!(
        errors(&format!("{MINIMAL}\n[genral]\nworkers = 1\n")),
        [r#"genral: unknown section; did you mean "general"?"#]
    );
    assert_eq!(
        errors(&format!("listen = \"127.0.0.1:1\"\n{MINIMAL}")),
        ["listen: unknown top-level key (settings belong in a section such as [general])"]
    );
    assert_eq!(
        errors("[[database]]\nname = \"a\"\nhost = \"h\"\n[[users]]\nname = \"u\"\npassword = \"p\"\n"),
        [
            r#"database: unknown section; did you mean "databases"?"#,
            "databases: at least one [[databases]] entry is required",
        ]
    );
    assert_eq!(errors(&with_general("\"odd key\" = 1")), [r#"general."odd key": unknown key"#]);
}

#[test]
fn syntax_errors_give_the_position_but_not_the_line() {
    let e = parse("[general]\nlisten = \n", &no_env).unwrap_err();
    assert_eq!(e.paths(), [""]);
    assert!(e.0[0].message.starts_with("invalid TOML at line 2, column"), "{e}");

    let e = parse(&with_user("password = \"hunter2"), &no_env).unwrap_err();
    assert!(e.0[0].message.starts_with("invalid TOML at line 6"), "{e}");
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

#[test]
fn databases_and_users_are_required() {
    assert_eq!(
        errors(""),
        [
            "databases: at least one [[databases]] entry is required",
            "users: at least one [[users]] entry is required",
        ]
    );
    assert_eq!(
        errors("databases = []\nusers = []\n"),
        [
            "databases: at least one [[databases]] entry is required",
            "users: at least one [[users]] entry is required",
        ]
    );
    assert_eq!(
        errors(&format!("databases = 5\n{}", &MINIMAL[MINIMAL.find("[[users]]").unwrap()..])),
        ["databases: expected an array of tables ([[databases]]), found integer 5"]
    );
    assert_eq!(
        errors("[databases]\nname = \"a\"\n[[users]]\nname = \"u\"\npassword = \"p\"\n"),
        ["databases: expected an array of tables ([[databases]]), found table"]
    );
    assert_eq!(
        errors(&format!("{MINIMAL}\n[[databases]]\n").replace("[[databases]]\nname", "databases = [1]\n[[databases]]\nname")),
        ["invalid TOML at line 3, column 1: invalid table header; duplicate key `databases` in document root"],
        "TOML itself refuses mixing the two forms"
    );
}

#[test]
fn entries_need_their_required_keys() {
    assert_eq!(
        errors("[[databases]]\nport = 5432\n[[users]]\npassword = \"p\"\n"),
        [
            "databases[0].name: required key is missing",
            "databases[0].host: required key is missing",
            "users[0].name: required key is missing",
        ]
    );
    let long = "n".repeat(64);
    assert_eq!(
        errors(&format!(
            "[[databases]]\nname = \"\"\nhost = \"h\"\n[[users]]\nname = \"{long}\"\npassword = \"p\"\n"
        )),
        ["databases[0].name: must not be empty", "users[0].name: must be at most 63 bytes, found 64 bytes",]
    );
}

#[test]
fn a_unix_socket_directory_must_fit_a_socket_address() {
    let entry = |dir: &str| {
        format!("[[databases]]\nname = \"app\"\nhost = \"{dir}\"\nport = 5432\n[[users]]\nname = \"u\"\npassword = \"p\"\n")
    };
    assert_eq!(parse_ok(&entry("/var/run/postgresql")).databases[0].host, "/var/run/postgresql");
    // 96 bytes of directory + "/.s.PGSQL.5432" (14) = 110 > 107.
    let long = format!("/{}", "d".repeat(95));
    assert_eq!(
        errors(&entry(&long)),
        [format!(
            "databases[0].host: the Unix socket path {long}/.s.PGSQL.5432 is 110 bytes, over the 107 a socket \
             address holds: use a shorter directory"
        )]
    );
}

#[test]
fn unix_socket_dir_is_an_absolute_directory_or_empty() {
    let general = |v: &str| with_general(&format!("listen = \"127.0.0.1:6432\"\nunix_socket_dir = \"{v}\""));
    assert_eq!(parse_ok(&general("")).general.unix_socket_dir, None, "\"\" is PgBouncer's off");
    assert_eq!(parse_ok(&general("/tmp")).general.unix_socket_dir.as_deref(), Some("/tmp"));
    assert_eq!(
        errors(&general("tmp")),
        ["general.unix_socket_dir: expected an absolute directory such as \"/tmp\", found \"tmp\""]
    );
    let long = format!("/{}", "d".repeat(95));
    assert_eq!(
        errors(&general(&long)),
        [format!(
            "general.unix_socket_dir: the Unix socket path {long}/.s.PGSQL.6432 is 110 bytes, over the 107 a \
             socket address holds: use a shorter directory"
        )]
    );
}

#[test]
fn duplicate_names_are_errors() {
    let text = r#"
        [[databases]]
        name = "app"
        host = "a"
        [[databases]]
        name = "other"
        host = "b"
        [[databases]]
        name = "app"
        host = "a"
        [[users]]
        name = "u"
        password = "p"
        [[users]]
        name = "u"
        password = "q"
    "#;
    assert_eq!(
        errors(text),
        [
            r#"databases[2].host: database "app" lists a:5432 (database_name "app") twice (first at databases[0]); each host of a primary/replica set appears once"#,
            r#"databases[2].role: database "app" has a second role = "primary" entry (first at databases[0]); one entry is the primary, the others are "replica" (or "auto" to ask each server)"#,
            r#"users[1].name: duplicate user name "u" (first defined at users[0])"#,
        ]
    );
}

#[test]
fn a_replica_set_needs_a_primary_and_a_health_check_login() {
    let text = r#"
        [[databases]]
        name = "app"
        host = "a"
        role = "replica"
        [[databases]]
        name = "app"
        host = "b"
        role = "replica"
        [[databases]]
        name = "other"
        host = "b"
        role = "standby"
        [jwt]
        public_key_file = "k.pem"
        require_tls = false
        identity = "login"
        auto_provision = true
    "#;
    assert_eq!(
        errors(text),
        [
            r#"databases[2].role: expected one of "primary", "replica", "auto", found "standby""#,
            r#"databases[0].role: database "app" has only role = "replica" entries: add its primary (role = "primary", or "auto" to ask the server)"#,
            r#"general.healthcheck_user: databases with replicas (or role = "auto") are health-checked, and no user to log in as is known: set healthcheck_user (and healthcheck_password), or add a [[users]] entry"#,
        ]
    );
}
