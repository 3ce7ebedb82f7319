//! Defaults, and every key read into its field.

use super::*;

#[test]
fn defaults() {
    let config = parse_ok(MINIMAL);
    let g = &config.general;
    assert_eq!(g.listen, "127.0.0.1:6432".parse().unwrap());
    assert_eq!(g.workers, auto_workers());
    assert_eq!(g.pool_mode, PoolMode::Transaction);
    assert_eq!(g.default_pool_size, 20);
    assert_eq!(g.checkout_timeout_ms, 5_000);
    assert_eq!(g.server_connect_timeout_ms, 5_000);
    assert_eq!(g.server_idle_timeout_ms, 600_000);
    assert_eq!(g.server_lifetime_ms, 3_600_000);
    assert_eq!(g.client_login_timeout_ms, 15_000);
    assert_eq!(g.shutdown_timeout_ms, 30_000);
    assert_eq!(g.max_message_size, 1_073_741_824);
    assert_eq!(g.max_client_connections, 10_000);
    assert_eq!(g.prepared_statements_cache_size, 500);
    assert_eq!(g.auth_method, AuthMethod::ScramSha256);
    assert_eq!(g.log_level, LogLevel::Info);

    let db = config.database("app").expect("database app");
    assert_eq!((db.port, db.database_name.as_str()), (5432, "app"));
    assert!(config.database("other").is_none());

    let user = config.user("app").expect("user app");
    assert_eq!(user.auth_method, AuthMethod::ScramSha256);
    assert_eq!(user.server_user, "app");
    assert_eq!(user.server_password.as_deref(), Some("app-secret"));
    assert_eq!((user.pool_size, user.pool_mode), (None, None));
    assert_eq!(config.pool_size(user), 20);
    assert_eq!(config.pool_mode(user), PoolMode::Transaction);
    assert!(config.user("other").is_none());
}

#[test]
fn every_general_key_is_read() {
    let config = parse_ok(&with_general(
        r#"
        listen = "[::1]:7000"
        unix_socket_dir = "/run/pgwarden"
        workers = 3
        pin_workers = false
        pool_mode = "session"
        default_pool_size = 7
        checkout_timeout_ms = 1
        server_connect_timeout_ms = 2
        server_idle_timeout_ms = 0
        server_lifetime_ms = 0
        client_login_timeout_ms = 3
        shutdown_timeout_ms = 0
        max_message_size = 1024
        max_client_connections = 9
        prepared_statements_cache_size = 0
        auth_method = "md5"
        log_level = "trace"
        healthcheck_interval_ms = 250
        healthcheck_timeout_ms = 200
        max_replica_lag_ms = 0
        ban_time_ms = 1000
        load_balancing = "least_connections"
        read_write_split = "off"
        primary_reads = "fallback"
        read_only_fallback = "primary"
        healthcheck_user = "monitor"
        healthcheck_password = "monitor-secret"
        "#,
    ));
    let expected = General {
        listen: "[::1]:7000".parse().unwrap(),
        unix_socket_dir: Some("/run/pgwarden".into()),
        workers: 3,
        pin_workers: false,
        pool_mode: PoolMode::Session,
        default_pool_size: 7,
        checkout_timeout_ms: 1,
        server_connect_timeout_ms: 2,
        server_idle_timeout_ms: 0,
        server_lifetime_ms: 0,
        client_login_timeout_ms: 3,
        shutdown_timeout_ms: 0,
        max_message_size: 1024,
        max_client_connections: 9,
        prepared_statements_cache_size: 0,
        auth_method: AuthMethod::Md5,
        log_level: LogLevel::Trace,
        healthcheck_interval_ms: 250,
        healthcheck_timeout_ms: 200,
        max_replica_lag_ms: 0,
        ban_time_ms: 1000,
        load_balancing: LoadBalancing::LeastConnections,
        read_write_split: false,
        primary_reads: PrimaryReads::Fallback,
        read_only_fallback: ReadOnlyFallback::Primary,
        healthcheck_user: Some("monitor".into()),
        healthcheck_password: Some("monitor-secret".into()),
    };
    assert_eq!(config.general, expected);
    let user = &config.users[0];
    assert_eq!(user.auth_method, AuthMethod::Md5, "inherits general.auth_method");
    assert_eq!((config.pool_size(user), config.pool_mode(user)), (7, PoolMode::Session));
}

#[test]
fn every_entry_key_is_read() {
    let config = parse_ok(&format!(
        r#"
        [[databases]]
        name = "app"
        host = "10.0.0.5"
        port = 6543
        database_name = "app_prod"

        [[databases]]
        name = "app"
        host = "10.0.0.6"
        role = "replica"

        [[users]]
        name = "alice"
        password = "{SCRAM}"
        auth = "scram-sha-256"
        server_user = "app_rw"
        server_password = "server-secret"
        pool_size = 3
        pool_mode = "session"
        read_only = true
        "#
    ));
    assert_eq!(
        config.databases[0],
        Database {
            name: "app".into(),
            host: "10.0.0.5".into(),
            port: 6543,
            database_name: "app_prod".into(),
            role: DbRole::Primary,
        }
    );
    assert_eq!((config.databases[1].role, config.databases[1].port), (DbRole::Replica, 5432));
    assert!(config.has_clusters());
    let user = config.user("alice").unwrap();
    assert_eq!(user.password.as_deref(), Some(SCRAM));
    assert_eq!(user.server_user, "app_rw");
    assert_eq!(user.server_password.as_deref(), Some("server-secret"));
    assert_eq!((config.pool_size(user), config.pool_mode(user)), (3, PoolMode::Session));
    assert!(user.read_only);
    assert_eq!(config.healthcheck_login(), Some(("app_rw".into(), Some("server-secret".into()))));
}

#[test]
fn listen_accepts_port_zero_and_ipv6() {
    let config = parse_ok(&with_general(r#"listen = "127.0.0.1:0""#));
    assert_eq!(config.general.listen.port(), 0);
    let config = parse_ok(&with_general(r#"listen = "[::]:6432""#));
    assert!(config.general.listen.is_ipv6());
}

#[test]
fn listen_must_be_ip_and_port() {
    for bad in ["localhost:6432", "127.0.0.1", "6432", "127.0.0.1:70000"] {
        let errs = errors(&with_general(&format!("listen = {bad:?}")));
        assert_eq!(
            errs,
            vec![format!(
                "general.listen: expected an address \"ip:port\" such as \"127.0.0.1:6432\" \
                 or \"[::1]:6432\", found {bad:?}"
            )]
        );
    }
}

#[test]
fn workers_auto_or_integer() {
    assert_eq!(parse_ok(&with_general(r#"workers = "auto""#)).general.workers, auto_workers());
    assert!(auto_workers() >= 1);
    assert_eq!(parse_ok(&with_general("workers = 4")).general.workers, 4);
    assert_eq!(parse_ok(&with_general("workers = 1024")).general.workers, 1024);
    assert_eq!(
        errors(&with_general("workers = 0")),
        ["general.workers: must be between 1 and 1024, found 0"]
    );
    assert_eq!(
        errors(&with_general("workers = 1025")),
        ["general.workers: must be between 1 and 1024, found 1025"]
    );
    assert_eq!(
        errors(&with_general(r#"workers = "many""#)),
        [r#"general.workers: expected "auto" or an integer between 1 and 1024, found string "many""#]
    );
    assert_eq!(
        errors(&with_general("workers = 2.5")),
        [r#"general.workers: expected "auto" or an integer between 1 and 1024, found float 2.5"#]
    );
}
