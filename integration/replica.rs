//! The streaming-replica harness the replica tests build on: a real
//! `pg_basebackup -R` standby of the shared server that follows its writes,
//! can be stopped, started and promoted.

mod common;

use std::time::{Duration, Instant};

use common::{
    config, connect_app, connect_with, one, run, sqlstate, unique_name, PgServer, Proxy, APP_DB,
    APP_PASSWORD, APP_USER,
};
use tokio_postgres::Client;

fn eventually(what: &str, f: impl FnMut() -> bool) {
    eventually_or(what, f, String::new);
}

/// [`eventually`], with `more` (a server log) in the failure message.
fn eventually_or(what: &str, mut f: impl FnMut() -> bool, more: impl Fn() -> String) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out: {what}\n{}", more());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_replica_follows_the_primary_and_can_be_promoted() {
    let primary = PgServer::shared();
    let replica = primary.start_replica();
    assert_eq!(replica.psql_in(APP_DB, "SELECT pg_is_in_recovery()").trim(), "t");
    assert_eq!(primary.psql_in(APP_DB, "SELECT pg_is_in_recovery()").trim(), "f");
    let table = unique_name("pgwrepl");
    primary.exec(&format!("CREATE TABLE {table} (id int); INSERT INTO {table} VALUES (1), (2)"));
    eventually("the replica replays the CREATE", || {
        replica.psql_in(APP_DB, &format!("SELECT to_regclass('{table}') IS NOT NULL")).trim() == "t"
    });
    eventually("the replica replays the insert", || {
        replica.psql_in(APP_DB, &format!("SELECT count(*) FROM {table}")).trim() == "2"
    });
    // Stopped and started again, it catches up.
    replica.stop();
    primary.exec(&format!("INSERT INTO {table} VALUES (3)"));
    replica.start_again();
    eventually("the restarted replica catches up", || {
        replica.psql_in(APP_DB, &format!("SELECT count(*) FROM {table}")).trim() == "3"
    });
    replica.promote();
    eventually("the promoted replica leaves recovery", || {
        replica.psql_in(APP_DB, "SELECT pg_is_in_recovery()").trim() == "f"
    });
}

// ---------------------------------------------------------------------------
// Routing through pgwarden
// ---------------------------------------------------------------------------

/// `[general]` lines and a replica entry for database `db` (the standard
/// config has `app` on the primary), health checked every 200 ms.
fn with_replica(replica: &PgServer, db: &str, general: &str) -> String {
    format!(
        "healthcheck_interval_ms = 200\nhealthcheck_timeout_ms = 10000\nban_time_ms = 1000\n{general}\n\
         [[databases]]\nname = \"{db}\"\nhost = \"127.0.0.1\"\nport = {}\nrole = \"replica\"\n\n",
        replica.port()
    )
}

async fn refused(client: &Client, sql: &str) -> (String, String) {
    match client.simple_query(sql).await {
        Ok(_) => panic!("`{sql}` succeeded; expected a refusal"),
        Err(e) => {
            let db = e.as_db_error().unwrap_or_else(|| panic!("`{sql}`: no server error: {e:?}"));
            (db.code().code().to_string(), db.message().to_string())
        }
    }
}

async fn eventually_async(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_the_replica_and_writes_to_the_primary() {
    let primary = PgServer::shared();
    let replica = primary.start_replica();
    let proxy = Proxy::start(&config(
        primary,
        &with_replica(&replica, APP_DB, "primary_reads = \"exclude\"\nlog_level = \"debug\""),
    ));
    let (c, _t) = connect_app(&proxy).await;
    let rport = replica.port().to_string();
    let pport = primary.port().to_string();

    assert_eq!(one(&c, "SELECT pg_is_in_recovery()").await, "t");
    assert_eq!(one(&c, "SELECT inet_server_port()").await, rport);
    // Writes and DDL go to the primary.
    let table = unique_name("pgwroute");
    c.simple_query(&format!("CREATE TABLE {table} (id int)")).await.unwrap();
    c.simple_query(&format!("INSERT INTO {table} VALUES (1)")).await.unwrap();
    // A transaction that starts with a read and then writes began on the
    // primary (BEGIN routes there) and stays there.
    c.simple_query("BEGIN").await.unwrap();
    assert_eq!(one(&c, "SELECT pg_is_in_recovery()").await, "f");
    c.simple_query(&format!("INSERT INTO {table} VALUES (2)")).await.unwrap();
    c.simple_query("COMMIT").await.unwrap();
    // Reads and a write in one simple query: the primary.
    assert_eq!(one(&c, &format!("SELECT inet_server_port(); INSERT INTO {table} VALUES (3)")).await, pport);
    // A read-only transaction goes to a replica and stays there.
    c.simple_query("BEGIN READ ONLY").await.unwrap();
    assert_eq!(one(&c, "SELECT inet_server_port()").await, rport);
    assert_eq!(one(&c, "SELECT inet_server_port()").await, rport);
    c.simple_query("COMMIT").await.unwrap();
    // What only the primary can do, though it writes nothing.
    assert_eq!(one(&c, "SELECT inet_server_port(), pg_current_xact_id()").await, pport);
    // Each transaction is routed afresh, however quickly the next follows
    // (the previous server may not be back in its pool yet).
    for i in 0..200 {
        assert_eq!(one(&c, "SELECT inet_server_port()").await, rport, "read {i}");
        assert_eq!(one(&c, "SELECT inet_server_port(), pg_current_xact_id()").await, pport, "primary {i}");
    }
    // Hints and the session setting pin to the primary.
    assert_eq!(one(&c, "/* pgwarden:primary */ SELECT inet_server_port()").await, pport);
    c.simple_query("SET pgwarden.route = 'primary'").await.unwrap();
    assert_eq!(one(&c, "SELECT inet_server_port()").await, pport);
    c.simple_query("SET pgwarden.route TO auto").await.unwrap();
    assert_eq!(one(&c, "SELECT inet_server_port()").await, rport);
    let (code, msg) = refused(&c, "SET pgwarden.route = 'replica'").await;
    assert_eq!(code, "22023", "{msg}");
    assert!(msg.contains("'primary'"), "{msg}");

    // The extended protocol: named statements prepared on one host run on
    // the other, reads on the replica, writes on the primary.
    // Replication is asynchronous: wait until the replica has the rows.
    eventually("the replica replays the inserts", || {
        replica.psql_in(APP_DB, &format!("SELECT to_regclass('{table}') IS NOT NULL")).trim() == "t"
            && replica.psql_in(APP_DB, &format!("SELECT count(*) FROM {table}")).trim() == "3"
    });
    // Prepared on the replica once it has replayed the CREATE.
    let read_sql = format!("SELECT inet_server_port()::text, count(*) FROM {table}");
    let start = Instant::now();
    let read = loop {
        match c.prepare(&read_sql).await {
            Ok(st) => break st,
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                eprintln!("not replayed yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("prepare on the replica: {e:?}"),
        }
    };
    let write = c
        .prepare(&format!("INSERT INTO {table} VALUES ($1) RETURNING inet_server_port()::text"))
        .await
        .unwrap();
    for i in 0..5 {
        let r = match c.query_one(&read, &[]).await {
            Ok(r) => r,
            Err(e) => {
                let d = replica.psql_in(
                    APP_DB,
                    &format!(
                        "SELECT to_regclass('{table}'), pg_last_wal_replay_lsn(), pg_last_wal_receive_lsn()"
                    ),
                );
                let p =
                    primary.psql_in(APP_DB, &format!("SELECT to_regclass('{table}'), pg_current_wal_lsn()"));
                panic!("read {i}: {e:?}\nreplica: {d}\nprimary: {p}\n{}", proxy.logs());
            }
        };
        assert_eq!(r.get::<_, String>(0), rport);
        let w = c.query_one(&write, &[&(10 + i)]).await.unwrap();
        assert_eq!(w.get::<_, String>(0), pport);
    }
    assert_eq!(primary.query_i64(&format!("SELECT count(*) FROM {table}")), 8);
    // Pipelined: a write sent right behind a read (before the read's answer)
    // is routed on its own, to the primary, not relayed to the read's replica.
    for i in 0..20 {
        let v: i32 = 100 + i;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&v];
        let (r, w) = futures_util::join!(c.query_one(&read, &[]), c.query_one(&write, &params));
        assert_eq!(r.unwrap().get::<_, String>(0), rport, "pipelined read {i}");
        assert_eq!(w.unwrap().get::<_, String>(0), pport, "pipelined write {i}");
        // The same behind a statement being prepared (not replayable).
        let text = format!("SELECT inet_server_port()::text, {i}");
        let (p, w) = futures_util::join!(c.prepare(&text), c.query_one(&write, &params));
        assert_eq!(c.query_one(&p.unwrap(), &[]).await.unwrap().get::<_, String>(0), rport);
        assert_eq!(w.unwrap().get::<_, String>(0), pport, "pipelined write {i}");
    }
    assert_eq!(primary.query_i64(&format!("SELECT count(*) FROM {table}")), 48);
    // A read-only statement's own transaction on the replica: SELECT ...
    // FOR UPDATE would fail there, so it goes to the primary.
    let r =
        c.query_one(&format!("SELECT inet_server_port()::text FROM {table} LIMIT 1 FOR UPDATE"), &[]).await;
    assert_eq!(r.unwrap().get::<_, String>(0), pport);
    c.simple_query(&format!("DROP TABLE {table}")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_users_are_served_by_replicas_only_and_fail_closed() {
    let primary = PgServer::shared();
    let replica = primary.start_replica();
    let ro = unique_name("pgwro");
    primary.exec(&format!(
        "CREATE ROLE {ro} LOGIN PASSWORD 'ro-secret'; GRANT CONNECT ON DATABASE {APP_DB} TO {ro}"
    ));
    eventually_or(
        "the replica has the role",
        || {
            replica.psql_in(APP_DB, &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{ro}'")).trim()
                == "1"
        },
        || format!("replica log:\n{}", replica.log()),
    );
    let users = format!("[[users]]\nname = \"{ro}\"\npassword = \"ro-secret\"\nread_only = true\n");
    let proxy = Proxy::start(&config(primary, &format!("{}{users}", with_replica(&replica, APP_DB, ""))));
    let mut fallback = Proxy::start(&config(
        primary,
        &format!("{}{users}", with_replica(&replica, APP_DB, "read_only_fallback = \"primary\"")),
    ));
    let ro_cfg = |p: &Proxy| p.tokio_config(&ro, "ro-secret", APP_DB);
    let (c, _t) = connect_with(&ro_cfg(&proxy)).await.expect("read-only login");
    let rport = replica.port().to_string();
    for _ in 0..4 {
        assert_eq!(one(&c, "SELECT inet_server_port()").await, rport);
    }
    // Writes are refused, by pgwarden or by the standby itself.
    let (code, _) = refused(&c, "CREATE TABLE pgw_never (id int)").await;
    assert_eq!(code, "25006");
    let (code, msg) = refused(&c, "SET pgwarden.route = 'primary'").await;
    assert_eq!(code, "25006", "{msg}");
    let (code, _) = refused(&c, "/* pgwarden:primary */ SELECT 1").await;
    assert_eq!(code, "25006");
    assert_eq!(primary.backend_count(&ro, APP_DB), 0, "a read-only user reached the primary");

    // The replica goes away: banned within the health interval; read-only
    // users get a clear error, ordinary reads fall back to the primary.
    replica.stop();
    eventually("the replica is banned", || proxy.log_shows("banned host"));
    let (code, msg) = refused(&c, "SELECT 1").await;
    assert_eq!(code, "57P03", "{msg}");
    assert!(msg.contains("no replica"), "{msg}");
    match connect_with(&ro_cfg(&proxy)).await {
        Ok(_) => panic!("a read-only login succeeded with no replica"),
        Err(e) => assert_eq!(sqlstate(&e).as_deref(), Some("57P03"), "{e:?}"),
    }
    let (app, _t2) = connect_app(&proxy).await;
    assert_eq!(one(&app, "SELECT pg_is_in_recovery()").await, "f");
    // read_only_fallback = "primary": the primary, read-only.
    let (f, _t3) = connect_with(&ro_cfg(&fallback)).await.expect("fallback login");
    assert_eq!(one(&f, "SELECT pg_is_in_recovery()").await, "f");
    assert_eq!(one(&f, "SHOW transaction_read_only").await, "on");
    let (code, _) = refused(&f, "CREATE TABLE pgw_never (id int)").await;
    assert_eq!(code, "25006");
    drop(f);
    fallback.stop();

    // Back again: unbanned, read-only users are served again.
    replica.start_again();
    eventually("the replica is unbanned", || proxy.log_shows("unbanned host"));
    eventually_async("read-only reads work again", async || match c.simple_query("SELECT 1").await {
        Ok(_) => true,
        Err(e) => {
            eprintln!("not yet: {e:?}");
            false
        }
    })
    .await;
    assert_eq!(one(&c, "SELECT inet_server_port()").await, rport);
    // Only the fallback proxy ever took the read-only user to the primary.
    eventually("the fallback proxy's connections are gone", || primary.backend_count(&ro, APP_DB) == 0);
    drop(c);
    primary.exec(&format!("REVOKE CONNECT ON DATABASE {APP_DB} FROM {ro}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_is_a_primary_candidate_not_a_read_target() {
    let primary = PgServer::shared();
    let replica = primary.start_replica();
    let proxy =
        Proxy::start(&config(primary, &with_replica(&replica, APP_DB, "primary_reads = \"fallback\"")));
    let (c, _t) = connect_app(&proxy).await;
    assert_eq!(one(&c, "SELECT inet_server_port()").await, replica.port().to_string());
    // A second pgwarden whose configured primary is gone (nothing listens):
    // writes have nowhere to go until the replica is promoted.
    let gone = common::free_port();
    let orphan = Proxy::start(&common::config_for_port(
        gone,
        &with_replica(&replica, APP_DB, "primary_reads = \"fallback\""),
    ));
    let (o, _t2) = connect_with(&orphan.tokio_config(APP_USER, APP_PASSWORD, APP_DB)).await.expect("login");
    let (code, msg) = refused(&o, "SELECT inet_server_port(), txid_current()").await;
    assert_eq!(code, "08006", "{msg}");
    assert!(msg.contains("cannot connect"), "{msg}");
    replica.promote();
    eventually("the promotion is seen", || proxy.log_shows("promoted") && orphan.log_shows("promoted"));
    // No replica left: reads fall back to the primary, never the promoted host.
    for _ in 0..4 {
        assert_eq!(one(&c, "SELECT inet_server_port()").await, primary.port().to_string());
    }
    // The promoted host takes writes where the configured primary is gone.
    eventually_async("writes reach the promoted host", async || {
        o.simple_query("SELECT txid_current()").await.is_ok()
    })
    .await;
    assert_eq!(one(&o, "SELECT inet_server_port(), txid_current()").await, replica.port().to_string());
}

#[test]
fn pgbench_select_only_runs_without_errors_while_the_replica_restarts() {
    let primary = PgServer::shared();
    let db = primary.create_database("pgwbenchrepl");
    let init = run(primary.pgbench_direct(&db, &["-i", "-s", "1", "-q"]), None, Duration::from_secs(120));
    assert!(init.success(), "pgbench -i: {init}");
    let replica = primary.start_replica();
    let entries = format!(
        "{}[[databases]]\nname = \"{db}\"\nhost = \"127.0.0.1\"\nport = {}\n\n",
        with_replica(&replica, &db, ""),
        primary.port()
    );
    let proxy = Proxy::start(&config(primary, &entries));
    let bench = {
        let cmd =
            proxy.pgbench_cmd(APP_USER, APP_PASSWORD, &db, &["-S", "-c", "4", "-j", "2", "-T", "10", "-n"]);
        std::thread::spawn(move || run(cmd, None, Duration::from_secs(60)))
    };
    std::thread::sleep(Duration::from_secs(2));
    replica.stop();
    std::thread::sleep(Duration::from_secs(3));
    replica.start_again();
    let out = bench.join().unwrap();
    assert!(out.success(), "pgbench failed while the replica restarted: {out}\n{}", proxy.logs());
    assert!(!out.all().contains("aborted"), "{out}");
    assert!(proxy.log_shows("banned host"), "{}", proxy.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_roles_are_asked_of_each_server_and_settings_follow_the_client() {
    let primary = PgServer::shared();
    let replica = primary.start_replica();
    // Both entries say "auto": pg_is_in_recovery() decides.
    let cfg = format!(
        "healthcheck_interval_ms = 200\nprimary_reads = \"exclude\"\n\
         [[databases]]\nname = \"auto\"\nhost = \"127.0.0.1\"\nport = {}\ndatabase_name = \"{APP_DB}\"\nrole = \"auto\"\n\n\
         [[databases]]\nname = \"auto\"\nhost = \"127.0.0.1\"\nport = {}\ndatabase_name = \"{APP_DB}\"\nrole = \"auto\"\n",
        replica.port(),
        primary.port()
    );
    let proxy = Proxy::start(&config(primary, &cfg));
    eventually("both roles are known", || proxy.log_shows("is a primary") && proxy.log_shows("is a replica"));
    let (c, _t) = connect_with(&proxy.tokio_config(APP_USER, APP_PASSWORD, "auto")).await.expect("login");
    assert_eq!(one(&c, "SELECT inet_server_port()").await, replica.port().to_string());
    assert_eq!(one(&c, "SELECT inet_server_port(), txid_current()").await, primary.port().to_string());
    // Settings that follow a client from one server connection to the next
    // (reported ones, as in transaction pooling on one host) follow it
    // across hosts too.
    c.simple_query("SET application_name = 'pgw_route'").await.unwrap();
    c.simple_query("SET TimeZone = 'Asia/Tokyo'").await.unwrap();
    for sql in [
        "SELECT current_setting('application_name') || current_setting('TimeZone')",
        "/* pgwarden:primary */ SELECT current_setting('application_name') || current_setting('TimeZone')",
    ] {
        assert_eq!(one(&c, sql).await, "pgw_routeAsia/Tokyo", "{sql}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_is_banned_and_unbanned_when_it_catches_up() {
    let primary = PgServer::shared();
    let replica = primary.start_replica();
    let proxy = Proxy::start(&config(
        primary,
        &with_replica(&replica, APP_DB, "max_replica_lag_ms = 300\nprimary_reads = \"fallback\""),
    ));
    let (c, _t) = connect_app(&proxy).await;
    let rport = replica.port().to_string();
    assert_eq!(one(&c, "SELECT inet_server_port()").await, rport);
    // Replay paused while the primary writes: the replica falls behind.
    replica.psql_in(APP_DB, "SELECT pg_wal_replay_pause()");
    let table = unique_name("pgwlag");
    primary.exec(&format!("CREATE TABLE {table} (id int); INSERT INTO {table} VALUES (1)"));
    eventually("the lagging replica is banned", || proxy.log_shows("exceeds max_replica_lag_ms"));
    assert_eq!(one(&c, "SELECT inet_server_port()").await, primary.port().to_string());
    replica.psql_in(APP_DB, "SELECT pg_wal_replay_resume()");
    eventually("the replica is unbanned", || proxy.log_shows("unbanned host"));
    eventually_async("reads are on the replica again", async || {
        one(&c, "SELECT inet_server_port()").await == rport
    })
    .await;
    primary.exec(&format!("DROP TABLE {table}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_never_reaches_the_primary() {
    use pgwarden::auth::jwt::sign::generate_pkcs8;
    use pgwarden::auth::jwt::{Algorithm, SigningKey};
    let primary = PgServer::shared();
    let prefix = unique_name("pgwrojwt");
    let (auth, role) = (format!("{prefix}_auth"), format!("{prefix}_r"));
    primary.exec(&format!(
        "CREATE ROLE {auth} LOGIN NOINHERIT PASSWORD 'auth-secret'; CREATE ROLE {role} NOLOGIN; \
         GRANT {role} TO {auth}"
    ));
    let replica = primary.start_replica();
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_pkcs8(&generate_pkcs8(Algorithm::ES256).unwrap()).unwrap();
    let pem = dir.path().join("public.pem");
    std::fs::write(&pem, key.public_pem()).unwrap();
    let jwt = format!(
        "[jwt]\npublic_key_file = {:?}\nrequire_tls = false\nserver_user = \"{auth}\"\n\
         server_password = \"auth-secret\"\nauto_provision = true\nallowed_roles = [\"{prefix}_*\"]\n\
         read_only_claim = \"scope\"\nread_only_values = [\"read\"]\n",
        pem.to_str().unwrap()
    );
    let proxy = Proxy::start(&config(primary, &format!("{}{jwt}", with_replica(&replica, APP_DB, ""))));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({"sub": role, "scope": "read", "iat": now, "exp": now + 300});
    let token = key.sign(Algorithm::ES256, None, claims.as_object().unwrap()).unwrap();
    // The start-up check of the authenticator may still be connected.
    eventually("no authenticator session on the primary", || primary.backend_count(&auth, APP_DB) == 0);
    let (c, _t) = connect_with(&proxy.tokio_config(&role, &token, APP_DB)).await.expect("token login");
    for _ in 0..4 {
        assert_eq!(one(&c, "SELECT inet_server_port()").await, replica.port().to_string());
    }
    assert_eq!(one(&c, "SELECT current_user").await, role);
    let (code, _) = refused(&c, "CREATE TABLE pgw_never (id int)").await;
    assert_eq!(code, "25006");
    let (code, _) = refused(&c, "SET pgwarden.route = 'primary'").await;
    assert_eq!(code, "25006");
    assert_eq!(primary.backend_count(&auth, APP_DB), 0, "the read-only token's session reached the primary");
}
