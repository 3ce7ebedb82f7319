//! Session state and memory in transaction and session mode, end to end:
//! what a client changes stays its own (or is reset), never reaches the next
//! client on the same server connection; large values stream through
//! without the proxy holding them whole.
//!
//! Every test uses `workers = 1` and a pool of one, so consecutive clients
//! provably share one server connection.

mod common;

use std::time::Duration;

use common::{config, connect_with, sqlstate, within, PgServer, Proxy, APP_DB, APP_PASSWORD, APP_USER};
use futures_util::SinkExt;
use tokio_postgres::{Client, SimpleQueryMessage};

async fn value(client: &Client, sql: &str) -> String {
    let rows = within(20, sql, client.simple_query(sql)).await.unwrap_or_else(|e| panic!("`{sql}`: {e:?}"));
    rows.into_iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_string()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("`{sql}` returned no row"))
}

async fn connect(proxy: &Proxy) -> (Client, tokio::task::JoinHandle<()>) {
    connect_with(&proxy.tokio_config(APP_USER, APP_PASSWORD, APP_DB))
        .await
        .expect("connect through the proxy")
}

fn one_server(pg: &PgServer, extra: &str) -> Proxy {
    Proxy::start(&config(pg, &format!("workers = 1\ndefault_pool_size = 1\n{extra}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_role_never_reaches_the_next_client() {
    let pg = PgServer::shared();
    let role = common::unique_name("pgw_role");
    pg.exec(&format!("CREATE ROLE {role} NOLOGIN; GRANT {role} TO {APP_USER}"));
    let proxy = one_server(pg, "");
    let (c1, _t1) = connect(&proxy).await;
    let pid1 = value(&c1, "select pg_backend_pid()").await;
    // Inside a transaction the role holds for the transaction.
    c1.simple_query(&format!("BEGIN; SET ROLE {role}")).await.unwrap();
    assert_eq!(value(&c1, "select current_user").await, role);
    c1.simple_query("COMMIT").await.unwrap();
    // Outside one: the server connection is reset before it is reused.
    c1.simple_query(&format!("SET ROLE {role}")).await.unwrap();
    c1.simple_query(&format!("SET SESSION AUTHORIZATION DEFAULT; SET ROLE {role}")).await.unwrap();
    let (c2, _t2) = connect(&proxy).await;
    assert_eq!(value(&c2, "select pg_backend_pid()").await, pid1, "same server connection");
    assert_eq!(value(&c2, "select current_user").await, APP_USER);
    assert_eq!(value(&c2, "select session_user").await, APP_USER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_settings_follow_their_client_only() {
    let pg = PgServer::shared();
    let proxy = one_server(pg, "");
    let (c1, _t1) = connect(&proxy).await;
    let (c2, _t2) = connect(&proxy).await;
    c1.simple_query("SET application_name = 'client-one'").await.unwrap();
    c1.simple_query("SET TimeZone = 'Pacific/Auckland'").await.unwrap();
    assert_eq!(value(&c2, "show application_name").await, "");
    assert_ne!(value(&c2, "show timezone").await, "Pacific/Auckland");
    assert_eq!(value(&c1, "show application_name").await, "client-one");
    assert_eq!(value(&c1, "show timezone").await, "Pacific/Auckland");
    assert_eq!(value(&c2, "show application_name").await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_discard_all_drops_its_statements_as_on_postgres() {
    let pg = PgServer::shared();
    let proxy = one_server(pg, "");
    let (c1, _t1) = connect(&proxy).await;
    let stmt = c1.prepare("select $1::int + 1").await.unwrap();
    let n: i32 = c1.query_one(&stmt, &[&41i32]).await.unwrap().get(0);
    assert_eq!(n, 42);
    // DISCARD PLANS keeps prepared statements, inside a transaction too.
    c1.simple_query("BEGIN").await.unwrap();
    c1.simple_query("DISCARD PLANS").await.unwrap();
    let n: i32 = c1.query_one(&stmt, &[&2i32]).await.unwrap().get(0);
    assert_eq!(n, 3);
    c1.simple_query("COMMIT").await.unwrap();
    // DISCARD ALL drops them: Postgres answers 26000 afterwards, and so
    // must the proxy, even though the server-side statement is shared.
    c1.simple_query("DISCARD ALL").await.unwrap();
    let err = c1.query_one(&stmt, &[&1i32]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("26000"), "{err:?}");
    // Preparing again works, and other clients' statements were not harmed.
    let (c2, _t2) = connect(&proxy).await;
    let s2 = c2.prepare("select $1::int + 1").await.unwrap();
    let stmt = c1.prepare("select $1::int + 1").await.unwrap();
    let n: i32 = c1.query_one(&stmt, &[&1i32]).await.unwrap().get(0);
    assert_eq!(n, 2);
    let n: i32 = c2.query_one(&s2, &[&5i32]).await.unwrap().get(0);
    assert_eq!(n, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_reuses_a_reset_server_connection() {
    let pg = PgServer::shared();
    let proxy = one_server(pg, "pool_mode = \"session\"");
    let pid = {
        let (c1, t1) = connect(&proxy).await;
        c1.simple_query("SET search_path = pgw_nowhere").await.unwrap();
        c1.simple_query("PREPARE pgw_s AS select 1").await.unwrap();
        let pid = value(&c1, "select pg_backend_pid()").await;
        drop(c1);
        let _ = t1.await;
        pid
    };
    let (c2, _t2) = connect(&proxy).await;
    assert_eq!(value(&c2, "select pg_backend_pid()").await, pid, "the server connection was reused");
    assert_eq!(value(&c2, "show search_path").await, "\"$user\", public");
    let err = c2.simple_query("EXECUTE pgw_s").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("26000"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_plain_and_unknown_users() {
    let pg = PgServer::shared();
    let extra = format!(
        "[[users]]\nname = \"pgw_md5\"\npassword = \"md5-pass\"\nauth = \"md5\"\nserver_user = \"{APP_USER}\"\nserver_password = \"{APP_PASSWORD}\"\n\n\
         [[users]]\nname = \"pgw_plain\"\npassword = \"plain-pass\"\nauth = \"plain\"\nserver_user = \"{APP_USER}\"\nserver_password = \"{APP_PASSWORD}\"\n\n\
         [[databases]]\nname = \"pgw_alias\"\nhost = \"127.0.0.1\"\nport = {}\ndatabase_name = \"{APP_DB}\"\n",
        pg.port()
    );
    let proxy = Proxy::start(&config(pg, &extra));
    for (user, pass) in [("pgw_md5", "md5-pass"), ("pgw_plain", "plain-pass")] {
        let (c, _t) = connect_with(&proxy.tokio_config(user, pass, "pgw_alias"))
            .await
            .unwrap_or_else(|e| panic!("{user}: {e:?}"));
        assert_eq!(value(&c, "select current_user").await, APP_USER);
        let Err(err) = connect_with(&proxy.tokio_config(user, "wrong", "pgw_alias")).await else {
            panic!("{user}: a wrong password was accepted");
        };
        assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{user}: {err:?}");
    }
    let Err(err) = connect_with(&proxy.tokio_config("pgw_nobody", "x", APP_DB)).await else {
        panic!("an unknown user was accepted");
    };
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "unknown user: {err:?}");
    assert!(
        !proxy.logs().contains("plain-pass") && !proxy.logs().contains("md5-pass"),
        "no password in logs"
    );
}

/// Peak resident memory of a process, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_stream_without_being_buffered_whole() {
    const BIG: usize = 64 * 1024 * 1024;
    let pg = PgServer::shared();
    let table = common::unique_name("pgw_big");
    pg.exec(&format!("CREATE TABLE {table} (b bytea); GRANT ALL ON {table} TO {APP_USER}"));
    let proxy = one_server(pg, "");
    let (c, _t) = connect(&proxy).await;
    value(&c, "select 1").await;
    let before = vm_hwm_kib(proxy.pid());

    // A 64 MiB bytea parameter: one Bind message.
    let blob = vec![0xabu8; BIG];
    within(120, "bytea insert", c.execute(&format!("insert into {table} values ($1)") as &str, &[&blob]))
        .await
        .expect("insert 64 MiB bytea");
    drop(blob);
    // 64 MiB of COPY data.
    let sink = c.copy_in(&format!("copy {table} (b) from stdin") as &str).await.unwrap();
    let mut sink = Box::pin(sink);
    let line = format!("\\\\x{}\n", "cd".repeat(512 * 1024)).into_bytes();
    for _ in 0..(BIG / line.len() + 1) {
        within(60, "copy data", sink.send(std::io::Cursor::new(line.clone()))).await.unwrap();
    }
    within(120, "copy finish", sink.as_mut().finish()).await.expect("copy in");
    // And back out: the 64 MiB row in one DataRow.
    let len: i32 = c
        .query_one(&format!("select length(b) from {table} where get_byte(b, 0) = 171") as &str, &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(len as usize, BIG);
    let row = within(
        120,
        "select bytea",
        c.query_one(&format!("select b from {table} where get_byte(b, 0) = 171") as &str, &[]),
    )
    .await
    .unwrap();
    let back: Vec<u8> = row.get(0);
    assert_eq!(back.len(), BIG);
    drop(back);

    let grown_mib = (vm_hwm_kib(proxy.pid()).saturating_sub(before)) / 1024;
    assert!(grown_mib < 24, "proxy peak memory grew by {grown_mib} MiB while relaying 64 MiB messages");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_execute_deallocate_across_transactions() {
    let pg = PgServer::shared();
    // Two server connections and two clients preparing the same name with
    // different texts, interleaved, so statements must follow their client.
    let proxy = Proxy::start(&config(pg, "workers = 1\ndefault_pool_size = 2"));
    let (a, _ta) = connect(&proxy).await;
    let (b, _tb) = connect(&proxy).await;
    a.simple_query("PREPARE same (int) AS SELECT $1 * 10").await.unwrap();
    b.simple_query("PREPARE same (int) AS SELECT $1 + 1000").await.unwrap();
    // Hold one server connection in a transaction so the other client has
    // to use the other one, then swap.
    for round in 0..4 {
        let (first, second) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        first.simple_query("BEGIN").await.unwrap();
        value(first, "select 1").await;
        assert_eq!(value(&a, "EXECUTE same(2)").await, "20", "round {round}");
        assert_eq!(value(&b, "EXECUTE same(2)").await, "1002", "round {round}");
        first.simple_query("COMMIT").await.unwrap();
        let _ = second;
    }
    // PREPARE of an existing name fails as on Postgres, on any connection.
    let err = a.simple_query("PREPARE same AS SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42P05"), "{err:?}");
    // DEALLOCATE works wherever the client lands, and then the name is gone.
    a.simple_query("DEALLOCATE same").await.unwrap();
    let err = a.simple_query("EXECUTE same(1)").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("26000"), "{err:?}");
    assert_eq!(value(&b, "EXECUTE same(1)").await, "1001");
    // A client that never prepared the name cannot reach another's.
    let (c, _tc) = connect(&proxy).await;
    let err = c.simple_query("EXECUTE same(1)").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("26000"), "{err:?}");
}
