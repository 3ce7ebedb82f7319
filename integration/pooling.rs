//! Pooling behaviour end to end with tokio-postgres (and raw sockets where a
//! driver would be too polite): COPY, LISTEN/NOTIFY, errors and rollback,
//! clients dying mid-transaction, cancel, checkout timeouts, separate pools,
//! session state isolation in transaction mode, prepared statements across
//! server connections, authentication errors, malformed input, shutdown.
//!
//! Tests that need to know which server connection a client gets use
//! `workers = 1`: with several shards each shard has its own slice of a pool,
//! so "the one free server connection" would depend on which shard accepted
//! the client.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    app2_entries, config, connect_app, connect_with, sqlstate, unique_name, within, PgServer, Proxy, APP2_DB,
    APP2_PASSWORD, APP2_USER, APP_DB, APP_PASSWORD, APP_USER,
};
use futures_util::{SinkExt, StreamExt};
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// The first column of every row a simple query returned.
async fn column(client: &Client, sql: &str) -> Vec<Option<String>> {
    let messages =
        within(20, sql, client.simple_query(sql)).await.unwrap_or_else(|e| panic!("`{sql}` failed: {e:?}"));
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
            _ => None,
        })
        .collect()
}

/// The single value a simple query returned.
async fn value(client: &Client, sql: &str) -> String {
    let rows = column(client, sql).await;
    assert_eq!(rows.len(), 1, "`{sql}` returned {rows:?}");
    rows[0].clone().unwrap_or_default()
}

async fn show(client: &Client, setting: &str) -> String {
    value(client, &format!("SHOW {setting}")).await
}

async fn backend_pid(client: &Client) -> String {
    value(client, "SELECT pg_backend_pid()").await
}

/// Runs `sql` expecting an error; returns it.
async fn expect_error(client: &Client, sql: &str) -> tokio_postgres::Error {
    match within(30, sql, client.simple_query(sql)).await {
        Ok(rows) => panic!("`{sql}` succeeded ({} messages), expected an error", rows.len()),
        Err(e) => e,
    }
}

fn app_config_with(proxy: &Proxy, application_name: &str) -> tokio_postgres::Config {
    let mut cfg = proxy.tokio_config(APP_USER, APP_PASSWORD, APP_DB);
    cfg.application_name(application_name);
    cfg
}

async fn connect_cfg(cfg: &tokio_postgres::Config) -> (Client, tokio::task::JoinHandle<()>) {
    connect_with(cfg).await.unwrap_or_else(|e| panic!("connect through the proxy failed: {e:?}"))
}

// ---------------------------------------------------------------------------
// COPY
// ---------------------------------------------------------------------------

/// About 10 MB of COPY text: `id \t payload \n`, payloads of varying length.
fn copy_payload(rows: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::with_capacity(rows * 110);
    for id in 0..rows {
        out.extend_from_slice(id.to_string().as_bytes());
        out.push(b'\t');
        let len = 20 + (next() % 160) as usize;
        for _ in 0..len {
            out.push(ALPHABET[(next() % ALPHABET.len() as u64) as usize]);
        }
        out.push(b'\n');
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_10mb() {
    let pg = PgServer::shared();
    let table = unique_name("copybig");
    pg.exec(&format!("CREATE TABLE {table} (id int PRIMARY KEY, payload text NOT NULL)"));
    let proxy = Proxy::start(&config(pg, ""));
    let (client, _conn) = connect_app(&proxy).await;

    let data = copy_payload(100_000);
    assert!(data.len() > 9_000_000, "payload is {} bytes", data.len());

    // COPY FROM STDIN, in 64 KiB chunks.
    let copied = within(120, "COPY FROM STDIN", async {
        let sink = client
            .copy_in(&format!("COPY {table} (id, payload) FROM STDIN"))
            .await
            .expect("COPY FROM STDIN start");
        futures_util::pin_mut!(sink);
        for chunk in data.chunks(64 * 1024) {
            sink.send(std::io::Cursor::new(chunk.to_vec())).await.expect("COPY data");
        }
        sink.as_mut().finish().await.expect("COPY FROM STDIN finish")
    })
    .await;
    assert_eq!(copied, 100_000);

    // What landed on Postgres is exactly what was sent.
    let stored = pg.psql_direct(&format!("COPY (SELECT id, payload FROM {table} ORDER BY id) TO STDOUT"));
    assert!(
        stored.as_bytes() == data.trim_ascii_end(),
        "rows stored through the proxy differ from the rows sent ({} vs {} bytes)",
        stored.len(),
        data.len()
    );

    // COPY TO STDOUT through the proxy returns exactly the same bytes.
    let received = within(120, "COPY TO STDOUT", async {
        let stream = client
            .copy_out(&format!("COPY (SELECT id, payload FROM {table} ORDER BY id) TO STDOUT"))
            .await
            .expect("COPY TO STDOUT start");
        futures_util::pin_mut!(stream);
        let mut received = Vec::with_capacity(data.len());
        while let Some(chunk) = stream.next().await {
            received.extend_from_slice(&chunk.expect("COPY TO STDOUT data"));
        }
        received
    })
    .await;
    assert!(
        received == data,
        "COPY TO STDOUT through the proxy returned {} bytes that differ from the {} stored",
        received.len(),
        data.len()
    );

    // A COPY that fails half way reports the error and leaves the
    // connection usable.
    let bad = within(30, "bad COPY", async {
        let sink =
            client.copy_in(&format!("COPY {table} (id, payload) FROM STDIN")).await.expect("COPY start");
        futures_util::pin_mut!(sink);
        sink.send(std::io::Cursor::new(b"200000\tfine\nnot-a-number\tbad\n".to_vec())).await.ok();
        sink.as_mut().finish().await
    })
    .await;
    let err = bad.expect_err("a COPY with a malformed row succeeded");
    assert_eq!(sqlstate(&err).as_deref(), Some("22P02"), "{err:?}");
    assert_eq!(value(&client, &format!("SELECT count(*) FROM {table}")).await, "100000");
}

// ---------------------------------------------------------------------------
// LISTEN / NOTIFY and session state in session mode
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_in_session_mode() {
    let pg = PgServer::shared();
    let proxy = Proxy::start(&config(pg, "pool_mode = \"session\"\ndefault_pool_size = 4"));
    let channel = unique_name("chan");

    // The listener drives its connection by hand to see notifications.
    let cfg = proxy.tokio_config(APP_USER, APP_PASSWORD, APP_DB);
    let (listener, mut connection) =
        within(20, "connect", cfg.connect(NoTls)).await.expect("connect listener");
    let (tx, rx) = mpsc::channel::<(String, String)>();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    within(10, "LISTEN", listener.batch_execute(&format!("LISTEN {channel}"))).await.expect("LISTEN");

    let (notifier, _conn) = connect_app(&proxy).await;
    notifier.batch_execute(&format!("NOTIFY {channel}, 'one'")).await.expect("NOTIFY");
    notifier.simple_query(&format!("SELECT pg_notify('{channel}', 'two')")).await.expect("pg_notify");
    notifier
        .batch_execute(&format!("BEGIN; NOTIFY {channel}, 'three'; COMMIT"))
        .await
        .expect("NOTIFY in a transaction");

    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 3 && Instant::now() < deadline {
        match rx.try_recv() {
            Ok(n) => got.push(n),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let expected: Vec<(String, String)> =
        ["one", "two", "three"].iter().map(|p| (channel.clone(), p.to_string())).collect();
    assert_eq!(got, expected, "notifications through the proxy");

    // Session mode keeps session state across transactions.
    listener.batch_execute("SET statement_timeout = '4321ms'").await.unwrap();
    listener
        .batch_execute("CREATE TEMP TABLE session_tmp (v int); INSERT INTO session_tmp VALUES (7)")
        .await
        .unwrap();
    listener.batch_execute("BEGIN; COMMIT").await.unwrap();
    assert_eq!(show(&listener, "statement_timeout").await, "4321ms");
    assert_eq!(value(&listener, "SELECT v FROM session_tmp").await, "7");
    driver.abort();
}

// ---------------------------------------------------------------------------
// errors, rollback, dying clients
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_in_transaction_then_rollback() {
    let pg = PgServer::shared();
    let table = unique_name("errtx");
    pg.exec(&format!("CREATE TABLE {table} (id int PRIMARY KEY)"));
    let proxy = Proxy::start(&config(pg, "workers = 1\ndefault_pool_size = 1"));
    let (c1, _conn1) = connect_app(&proxy).await;

    c1.batch_execute("BEGIN").await.unwrap();
    c1.execute(&format!("INSERT INTO {table} VALUES ($1)"), &[&1i32]).await.expect("insert");
    let err = c1.query("SELECT 1 / $1::int", &[&0i32]).await.expect_err("division by zero succeeded");
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"), "{err:?}");
    let err = expect_error(&c1, "SELECT 1").await;
    assert_eq!(sqlstate(&err).as_deref(), Some("25P02"), "{err:?}");
    c1.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(value(&c1, "SELECT 'alive'").await, "alive");
    assert_eq!(value(&c1, &format!("SELECT count(*) FROM {table}")).await, "0");

    // The single server connection went back to the pool clean.
    let (c2, _conn2) = connect_app(&proxy).await;
    assert_eq!(value(&c2, "SELECT 2").await, "2");
    c1.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (5); COMMIT")).await.unwrap();
    assert_eq!(pg.psql_direct(&format!("SELECT string_agg(id::text, ',') FROM {table}")), "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_transaction_is_rolled_back() {
    let pg = PgServer::shared();
    let table = unique_name("killed");
    pg.exec(&format!("CREATE TABLE {table} (id int)"));
    let proxy = Proxy::start(&config(pg, "workers = 1\ndefault_pool_size = 1\ncheckout_timeout_ms = 10000"));

    // 1: the connection is torn down (socket closed, no Terminate).
    let (c1, conn1) = connect_app(&proxy).await;
    c1.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (1)")).await.unwrap();
    conn1.abort();
    let _ = conn1.await;
    drop(c1);

    // 2: the client says goodbye (Terminate) with a transaction open.
    let (c2, _conn2) = connect_app(&proxy).await;
    c2.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (2)")).await.unwrap();
    drop(c2);

    // The one pooled server connection serves the next client, outside any
    // transaction of the dead ones.
    let (c3, _conn3) = connect_app(&proxy).await;
    assert_eq!(
        value(&c3, &format!("SELECT count(*) FROM {table}")).await,
        "0",
        "a dead client's uncommitted rows are visible"
    );
    c3.batch_execute(&format!("INSERT INTO {table} VALUES (3)")).await.unwrap();
    assert_eq!(
        value(&c3, "SELECT 'in a transaction? ' || (now() = statement_timestamp())::text").await,
        "in a transaction? true"
    );

    // Postgres never commits them, and no server session sits in their
    // transaction.
    let stuck = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' \
         AND query LIKE '%{table}%'"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while pg.query_i64(&stuck) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pg.query_i64(&stuck), 0, "a server session is left in the dead client's transaction");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pg.psql_direct(&format!("SELECT string_agg(id::text, ',') FROM {table}")), "3");
}

// ---------------------------------------------------------------------------
// cancel
// ---------------------------------------------------------------------------

/// Waits until Postgres runs a query containing `marker`.
async fn wait_running(pg: &PgServer, marker: &str) {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%{marker}%' \
         AND pid <> pg_backend_pid()"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while pg.query_i64(&sql) == 0 {
        assert!(Instant::now() < deadline, "query {marker} never started on Postgres");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_cancels_the_running_query() {
    let pg = PgServer::shared();
    let proxy = Proxy::start(&config(pg, ""));
    // Several rounds: each CancelRequest is a new TCP connection, which may
    // land on another shard than the client's.
    for round in 0..3 {
        let (client, _conn) = connect_app(&proxy).await;
        let token = client.cancel_token();
        let marker = unique_name("cancelme");
        let sql = format!("SELECT pg_sleep(30) /* {marker} */");
        let started = Instant::now();
        let query = tokio::spawn(async move {
            let result = client.simple_query(&sql).await;
            (client, result)
        });
        wait_running(pg, &marker).await;
        within(10, "cancel_query", token.cancel_query(NoTls)).await.expect("sending the cancel request");
        let (client, result) = within(15, "cancelled query to return", query).await.unwrap();
        let err = result.expect_err("pg_sleep(30) finished although it was cancelled");
        assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "round {round}: {err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "round {round}: cancel took {:?}",
            started.elapsed()
        );
        assert_eq!(value(&client, "SELECT 'still here'").await, "still here");
    }
}

/// A `host` that starts with `/` is the server's Unix socket directory (as in
/// libpq): queries, pooled transactions and cancel requests go over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_over_unix_socket() {
    let pg = PgServer::shared();
    let dir = pg.socket_dir().display().to_string();
    let toml = config(pg, "workers = 1\ndefault_pool_size = 1");
    assert!(toml.contains("host = \"127.0.0.1\""));
    let proxy = Proxy::start(&toml.replacen("host = \"127.0.0.1\"", &format!("host = \"{dir}\""), 1));
    let (a, _ca) = connect_app(&proxy).await;
    let (b, _cb) = connect_app(&proxy).await;
    // inet_server_port() is NULL on a Unix-socket connection.
    assert_eq!(
        value(&a, "SELECT (inet_server_port() IS NULL)::text || ' ' || current_user").await,
        "true app"
    );
    // Two clients take turns on the one pooled server connection.
    for i in 0..20 {
        let c = if i % 2 == 0 { &a } else { &b };
        assert_eq!(value(c, &format!("SELECT {i}")).await, i.to_string());
    }
    assert_eq!(backend_pid(&a).await, backend_pid(&b).await, "pool_size 1: one server connection");
    // A cancel request is forwarded over the socket too.
    let token = a.cancel_token();
    let marker = unique_name("cancelunix");
    let sql = format!("SELECT pg_sleep(30) /* {marker} */");
    let query = tokio::spawn(async move { a.simple_query(&sql).await.map(|_| ()) });
    wait_running(pg, &marker).await;
    within(10, "cancel_query", token.cancel_query(NoTls)).await.expect("sending the cancel request");
    let err =
        within(15, "cancelled query", query).await.unwrap().expect_err("pg_sleep(30) was not cancelled");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    assert_eq!(value(&b, "SELECT 'still here'").await, "still here");

    // A directory with no server socket: the client is told where it looked.
    let missing = format!("/tmp/{}", unique_name("nosocket"));
    let proxy = Proxy::start(&toml.replacen("host = \"127.0.0.1\"", &format!("host = \"{missing}\""), 1));
    let Err(err) = connect_with(&proxy.tokio_config(APP_USER, APP_PASSWORD, APP_DB)).await else {
        panic!("a login with no server to reach succeeded");
    };
    assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err:?}");
    let text = format!("{err:?}");
    assert!(text.contains(&format!("{missing}/.s.PGSQL.{}", pg.port())), "{text}");
}

/// `unix_socket_dir`: clients on the same host connect over a Unix socket
/// (psql -h DIR), authenticate as over TCP, and can cancel; the socket file
/// is removed at shutdown, a stale one is replaced and a live one is an error.
#[test]
fn clients_over_unix_socket() {
    let pg = PgServer::shared();
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_string();
    let toml = config(pg, &format!("unix_socket_dir = \"{dir_s}\""));
    let mut proxy = Proxy::start(&toml);
    let socket = dir.path().join(format!(".s.PGSQL.{}", proxy.port()));
    assert!(socket.exists(), "no socket at {}", socket.display());
    let psql = |password: &str, sql: &str| proxy.psql_via_socket(dir.path(), APP_USER, password, sql);
    let out = psql(APP_PASSWORD, "SELECT current_user || ' ' || count(*) FROM generate_series(1, 3)");
    assert!(out.success() && out.stdout.trim() == "app 3", "{out}");
    let out = psql("wrong", "SELECT 1");
    assert!(!out.success() && out.stderr.contains("password authentication failed"), "{out}");
    assert!(proxy.log_shows("client unix socket (pid "), "{}", proxy.logs());
    // Cancel over the socket: psql sends the CancelRequest the way it came.
    let mut cmd = proxy.psql_cmd_via(&dir_s, APP_USER, APP_PASSWORD, APP_DB);
    let marker = unique_name("unixcancel");
    cmd.args(["-At", "-c", &format!("SELECT pg_sleep(30) /* {marker} */")]);
    cmd.stderr(std::process::Stdio::piped());
    let started = Instant::now();
    let child = cmd.spawn().unwrap();
    let running = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%{marker}%' \
         AND pid <> pg_backend_pid()"
    );
    while pg.query_i64(&running) == 0 {
        assert!(started.elapsed() < Duration::from_secs(15), "the query never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Ctrl-C: psql sends a CancelRequest to where it is connected, the socket.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("canceling statement due to user request"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(15), "cancel took {:?}", started.elapsed());

    // The socket file goes with the proxy.
    proxy.stop();
    assert!(!socket.exists(), "socket file left behind");
    // A stale socket file (nobody listening) is replaced.
    let stale = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(stale);
    let port = proxy.port();
    let pinned = toml.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""));
    assert_ne!(pinned, toml);
    let mut again = Proxy::start(&pinned);
    let out = again.psql_via_socket(dir.path(), APP_USER, APP_PASSWORD, "SELECT 7");
    assert!(out.success() && out.stdout.trim() == "7", "{out}");
    again.stop();
    // A socket in use is not taken over: start-up fails and says why.
    let port = common::free_port();
    let busy = std::os::unix::net::UnixListener::bind(dir.path().join(format!(".s.PGSQL.{port}"))).unwrap();
    let err = match Proxy::try_start(
        &toml.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\"")),
    ) {
        Ok(_) => panic!("pgwarden took over a Unix socket in use"),
        Err(e) => e,
    };
    assert!(err.contains("another process is listening on it"), "{err}");
    drop(busy);
}

#[test]
fn bogus_cancel_request_cancels_nothing() {
    let pg = PgServer::shared();
    let proxy = Proxy::start(&config(pg, ""));
    let sleeper = std::thread::spawn({
        let mut cmd = proxy.psql_cmd(APP_USER, APP_PASSWORD, APP_DB);
        cmd.args(["-A", "-t", "-c", "SELECT 'slept' FROM pg_sleep(2)"]);
        move || common::run(cmd, None, Duration::from_secs(30))
    });
    std::thread::sleep(Duration::from_millis(700));
    for (pid, secret) in [(1u32, 1u32), (0, 0), (u32::MAX, 12345)] {
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        let mut msg = Vec::new();
        msg.extend_from_slice(&16u32.to_be_bytes());
        msg.extend_from_slice(&80_877_102u32.to_be_bytes());
        msg.extend_from_slice(&pid.to_be_bytes());
        msg.extend_from_slice(&secret.to_be_bytes());
        s.write_all(&msg).unwrap();
    }
    let out = sleeper.join().unwrap();
    out.assert_success();
    assert_eq!(out.stdout.trim(), "slept", "{out}");
}

// ---------------------------------------------------------------------------
// pool limits
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_timeout_answers_53300() {
    let pg = PgServer::shared();
    let proxy = Proxy::start(&config(pg, "workers = 1\ndefault_pool_size = 1\ncheckout_timeout_ms = 500"));
    let (holder, _c1) = connect_app(&proxy).await;
    let (waiter, _c2) = connect_app(&proxy).await;
    holder.batch_execute("BEGIN").await.unwrap();
    assert_eq!(value(&holder, "SELECT 1").await, "1");

    let started = Instant::now();
    let err = within(10, "query on an exhausted pool", waiter.simple_query("SELECT 2"))
        .await
        .expect_err("got a server connection while the only one was in a transaction");
    let elapsed = started.elapsed();
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err:?}");
    let message = err.as_db_error().map(|e| e.message().to_lowercase()).unwrap_or_default();
    assert!(message.contains("pool") && message.contains("exhausted"), "message: {message:?}");
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(5),
        "53300 after {elapsed:?}; checkout_timeout_ms is 500"
    );

    holder.batch_execute("COMMIT").await.unwrap();
    let (late, _c3) = connect_app(&proxy).await;
    assert_eq!(value(&late, "SELECT 3").await, "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_databases_have_separate_pools() {
    let pg = PgServer::shared();
    let proxy = Proxy::start(&config(
        pg,
        &format!("default_pool_size = 1\ncheckout_timeout_ms = 1500\n{}", app2_entries(pg)),
    ));
    let (holder, _c) = connect_app(&proxy).await;
    holder.batch_execute("BEGIN").await.unwrap();
    assert_eq!(value(&holder, "SELECT 1").await, "1");

    for (user, password, db) in [
        (APP2_USER, APP2_PASSWORD, APP2_DB),
        (APP_USER, APP_PASSWORD, APP2_DB),
        (APP2_USER, APP2_PASSWORD, APP_DB),
    ] {
        let started = Instant::now();
        let (client, _conn) = connect_cfg(&proxy.tokio_config(user, password, db)).await;
        let who = value(&client, "SELECT current_user || '@' || current_database()").await;
        assert_eq!(who, format!("{user}@{db}"));
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{user}@{db} waited {:?}: blocked by app@app's pool?",
            started.elapsed()
        );
    }

    // The same pool as the holder's is indeed exhausted (so the above proves
    // the pools are separate). The proxy may need a server connection to
    // log a client in, so 53300 may come at login or on the first query.
    let err = match connect_with(&proxy.tokio_config(APP_USER, APP_PASSWORD, APP_DB)).await {
        Err(e) => e,
        Ok((same, _c2)) => expect_error(&same, "SELECT 1").await,
    };
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err:?}");
    holder.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_of_one_serves_clients_of_every_shard() {
    // Two shards, one server connection in all: clients one after the other,
    // whichever shard accepts them, all get served.
    let pg = PgServer::shared();
    let proxy = Proxy::start(&config(pg, "workers = 2\ndefault_pool_size = 1\ncheckout_timeout_ms = 3000"));
    for i in 0..10 {
        let (client, _conn) = connect_app(&proxy).await;
        assert_eq!(value(&client, &format!("SELECT {i}")).await, i.to_string());
        drop(client);
    }
    let (a, _ca) = connect_app(&proxy).await;
    let (b, _cb) = connect_app(&proxy).await;
    for i in 0..10 {
        let c = if i % 2 == 0 { &a } else { &b };
        assert_eq!(value(c, &format!("SELECT {i}")).await, i.to_string());
    }
}

// ---------------------------------------------------------------------------
// session state in transaction mode
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_do_not_leak_between_clients() {
    let pg = PgServer::shared();
    let proxy = Proxy::start(&config(pg, "workers = 1\ndefault_pool_size = 1"));

    let (clean, _c2) = connect_cfg(&app_config_with(&proxy, "clean_two")).await;
    let timeout0 = show(&clean, "statement_timeout").await;
    let path0 = show(&clean, "search_path").await;
    let work_mem0 = show(&clean, "work_mem").await;
    assert_eq!(show(&clean, "application_name").await, "clean_two");

    let (leaky, _c1) = connect_cfg(&app_config_with(&proxy, "leaky_one")).await;
    assert_eq!(show(&leaky, "application_name").await, "leaky_one");
    leaky.batch_execute("SET statement_timeout = '4321ms'").await.expect("SET outside a transaction");
    leaky
        .batch_execute("BEGIN; SET search_path = leaked_schema, public; SET LOCAL work_mem = '7MB'; COMMIT")
        .await
        .expect("SET inside a transaction");

    let check = |phase: &'static str| {
        let clean = &clean;
        let (timeout0, path0, work_mem0) = (&timeout0, &path0, &work_mem0);
        async move {
            assert_eq!(&show(clean, "application_name").await, "clean_two", "{phase}");
            assert_eq!(&show(clean, "statement_timeout").await, timeout0, "{phase}");
            assert_eq!(&show(clean, "search_path").await, path0, "{phase}");
            assert_eq!(&show(clean, "work_mem").await, work_mem0, "{phase}");
            let in_tx = column(
                clean,
                "BEGIN; SELECT current_setting('application_name') || '|' || current_setting('statement_timeout') || '|' || current_setting('search_path'); COMMIT",
            )
            .await;
            assert_eq!(in_tx, vec![Some(format!("clean_two|{timeout0}|{path0}"))], "{phase}");
        }
    };
    check("after leaky_one's SETs").await;

    // And again after more SETs, in a transaction and as the last thing.
    leaky
        .batch_execute("BEGIN; SET statement_timeout = '99s'; SET application_name = 'renamed'; COMMIT")
        .await
        .unwrap();
    leaky.batch_execute("SET search_path = other_schema").await.unwrap();
    check("after more SETs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_follow_the_client_to_any_server() {
    let pg = PgServer::shared();
    let schemas: Vec<String> = (0..3).map(|_| unique_name("sp")).collect();
    for s in &schemas {
        pg.exec(&format!("CREATE SCHEMA {s} AUTHORIZATION {APP_USER}"));
    }
    let proxy = Proxy::start(&config(pg, "workers = 1\ndefault_pool_size = 2"));
    let client_cfg = |app: &str, schema: &str| {
        let mut cfg = app_config_with(&proxy, app);
        cfg.options(format!("-c search_path={schema},public"));
        cfg
    };
    let (a, _ca) = connect_cfg(&client_cfg("client_a", &schemas[0])).await;
    let (h1, _c1) = connect_cfg(&client_cfg("holder_one", &schemas[1])).await;
    let (h2, _c2) = connect_cfg(&client_cfg("holder_two", &schemas[2])).await;
    // current_schema() is NULL when no schema on the search_path exists
    // (e.g. the path arrived as one quoted name): show the path then.
    let whoami = "SELECT current_setting('application_name') || '|' \
                  || coalesce(current_schema(), 'no schema on search_path ' || current_setting('search_path')) \
                  || '|' || pg_backend_pid()";
    let parse = |s: String| -> (String, String) {
        let (settings, pid) = s.rsplit_once('|').unwrap_or_else(|| panic!("unexpected answer {s:?}"));
        (settings.to_string(), pid.to_string())
    };
    let expect_a = format!("client_a|{}", schemas[0]);

    // a runs on server x, holder_one takes the other server y.
    a.batch_execute("BEGIN").await.unwrap();
    let (settings, x) = parse(value(&a, whoami).await);
    assert_eq!(settings, expect_a);
    h1.batch_execute("BEGIN").await.unwrap();
    let (settings, y) = parse(value(&h1, whoami).await);
    assert_eq!(settings, format!("holder_one|{}", schemas[1]));
    assert_ne!(x, y, "two transactions at once on one server connection");
    // a lets x go; holder_two takes it; holder_one lets y go.
    a.batch_execute("COMMIT").await.unwrap();
    h2.batch_execute("BEGIN").await.unwrap();
    let (settings, _) = parse(value(&h2, whoami).await);
    assert_eq!(settings, format!("holder_two|{}", schemas[2]));
    h1.batch_execute("COMMIT").await.unwrap();
    // Now a can only run on y, last used by holder_one: a's own startup
    // parameters must be in force there.
    let (settings, pid) = parse(value(&a, whoami).await);
    assert_ne!(pid, x, "a ran on the server connection holder_two holds");
    assert_eq!(settings, expect_a, "client_a's startup parameters on another server");
    h2.batch_execute("COMMIT").await.unwrap();

    // Then many clients at once, each checking its own parameters.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let schema = schemas[i % schemas.len()].clone();
        let cfg = client_cfg(&format!("many_{i}"), &schema);
        tasks.push(tokio::spawn(async move {
            let (c, _conn) = connect_cfg(&cfg).await;
            let expected = format!("many_{i}|{schema}");
            for round in 0..15 {
                let got = if round % 2 == 0 {
                    value(&c, "SELECT current_setting('application_name') || '|' || coalesce(current_schema(), current_setting('search_path')) FROM pg_sleep(0.002)").await
                } else {
                    let rows = column(&c, "BEGIN; SELECT current_setting('application_name') || '|' || coalesce(current_schema(), current_setting('search_path')) FROM pg_sleep(0.002); COMMIT").await;
                    rows[0].clone().unwrap()
                };
                assert_eq!(got, expected, "client {i} round {round}");
            }
        }));
    }
    for t in tasks {
        within(60, "interleaved clients", t).await.unwrap();
    }
}

// ---------------------------------------------------------------------------
// prepared statements in transaction mode
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statement_runs_on_another_server_connection() {
    let pg = PgServer::shared();
    let proxy = Proxy::start(&config(pg, "workers = 1\ndefault_pool_size = 2"));
    let (a, _ca) = connect_app(&proxy).await;
    let (h1, _c1) = connect_app(&proxy).await;
    let (h2, _c2) = connect_app(&proxy).await;
    let stmt = a.prepare("SELECT $1::int * 2, pg_backend_pid()").await.expect("prepare");

    a.batch_execute("BEGIN").await.unwrap();
    let row = a.query_one(&stmt, &[&1i32]).await.expect("execute in transaction");
    let x: i32 = row.get(1);
    assert_eq!(row.get::<_, i32>(0), 2);
    h1.batch_execute("BEGIN").await.unwrap();
    let y: i32 = backend_pid(&h1).await.parse().unwrap();
    assert_ne!(x, y);
    a.batch_execute("COMMIT").await.unwrap();
    h2.batch_execute("BEGIN").await.unwrap();
    backend_pid(&h2).await;
    h1.batch_execute("COMMIT").await.unwrap();

    // Only y is free now: the statement prepared on x must work there.
    for i in 0..5 {
        let row = a
            .query_one(&stmt, &[&(21 + i)])
            .await
            .expect("execute a statement prepared on another server connection");
        assert_eq!(row.get::<_, i32>(0), 2 * (21 + i));
        assert_ne!(row.get::<_, i32>(1), x, "ran on the server connection h2 holds");
    }
    h2.batch_execute("COMMIT").await.unwrap();
    // Still fine once both are free again.
    let row = a.query_one(&stmt, &[&50i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_from_many_clients() {
    let pg = PgServer::shared();
    let table = unique_name("prep");
    pg.exec(&format!("CREATE TABLE {table} (client int, n int)"));
    let proxy = Proxy::start(&config(pg, "default_pool_size = 2"));
    let mut tasks = Vec::new();
    for client_no in 0..4i32 {
        let cfg = proxy.tokio_config(APP_USER, APP_PASSWORD, APP_DB);
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            let (c, _conn) = connect_cfg(&cfg).await;
            let add = c.prepare("SELECT $1::int + $2::int").await.unwrap();
            let insert =
                c.prepare(&format!("INSERT INTO {table} (client, n) VALUES ($1, $2)")).await.unwrap();
            for n in 0..30i32 {
                let row = c.query_one(&add, &[&n, &client_no]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), n + client_no);
                if n % 3 == 0 {
                    // Hold the server a little, inside a transaction.
                    c.batch_execute("BEGIN").await.unwrap();
                    c.execute(&insert, &[&client_no, &n]).await.unwrap();
                    c.batch_execute("SELECT pg_sleep(0.005)").await.unwrap();
                    c.batch_execute("COMMIT").await.unwrap();
                } else {
                    c.execute(&insert, &[&client_no, &n]).await.unwrap();
                }
                // An unnamed-style one-off statement too.
                let row = c.query_one("SELECT $1::text", &[&format!("c{client_no}n{n}")]).await.unwrap();
                assert_eq!(row.get::<_, String>(0), format!("c{client_no}n{n}"));
            }
        }));
    }
    for t in tasks {
        within(90, "prepared statement clients", t).await.unwrap();
    }
    assert_eq!(
        pg.psql_direct(&format!("SELECT count(*), sum(n) FROM {table}")),
        format!("{}|{}", 4 * 30, 4 * (29 * 30 / 2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_execute_in_one_transaction() {
    let pg = PgServer::shared();
    let proxy = Proxy::start(&config(pg, "default_pool_size = 2"));
    let mut tasks = Vec::new();
    for i in 0..3i32 {
        let cfg = proxy.tokio_config(APP_USER, APP_PASSWORD, APP_DB);
        tasks.push(tokio::spawn(async move {
            let (c, _conn) = connect_cfg(&cfg).await;
            for round in 0..10i32 {
                // Every client uses the same statement name.
                let rows = column(
                    &c,
                    &format!(
                        "BEGIN; PREPARE same_name (int) AS SELECT $1 * 10; \
                         EXECUTE same_name({}); DEALLOCATE same_name; COMMIT",
                        i * 100 + round
                    ),
                )
                .await;
                assert_eq!(rows, vec![Some(((i * 100 + round) * 10).to_string())]);
            }
        }));
    }
    for t in tasks {
        within(60, "PREPARE/EXECUTE clients", t).await.unwrap();
    }
}

// ---------------------------------------------------------------------------
// authentication and routing errors
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_28p01() {
    let pg = PgServer::shared();
    let proxy = Proxy::start(&config(pg, ""));
    let err = connect_with(&proxy.tokio_config(APP_USER, "not-the-password", APP_DB))
        .await
        .expect_err("logged in with a wrong password");
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err:?}");

    let err = connect_with(&proxy.tokio_config("nobody_here", "whatever", APP_DB))
        .await
        .expect_err("logged in as an unknown user");
    let code = sqlstate(&err).unwrap_or_default();
    assert!(code.starts_with("28"), "unknown user got {code:?}: {err:?}");

    // The right password still works afterwards.
    let (c, _conn) = connect_app(&proxy).await;
    assert_eq!(value(&c, "SELECT current_user").await, APP_USER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database_is_3d000() {
    let pg = PgServer::shared();
    let proxy = Proxy::start(&config(pg, ""));
    let err = connect_with(&proxy.tokio_config(APP_USER, APP_PASSWORD, "no_such_db"))
        .await
        .expect_err("connected to a database missing from the config");
    assert_eq!(sqlstate(&err).as_deref(), Some("3D000"), "{err:?}");
}

// ---------------------------------------------------------------------------
// malformed input on raw sockets
// ---------------------------------------------------------------------------

/// A user that logs in without a password, so raw sockets can get past
/// authentication; it becomes `app` on the server.
const TRUST_USER: &str = "[[users]]\nname = \"rawtrust\"\npassword = \"unused-for-trust\"\nauth = \"trust\"\nserver_user = \"app\"\nserver_password = \"app-secret\"\n";

#[derive(Debug, PartialEq)]
enum Reply {
    /// An ErrorResponse came back (maybe followed by a close).
    Error,
    /// The connection was closed or reset without a message.
    Closed,
    /// Some other message type.
    Other(u8),
    /// Nothing within the deadline: the proxy is waiting for more.
    Nothing,
}

fn reply(stream: &mut TcpStream) -> Reply {
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => Reply::Closed,
        Ok(_) if byte[0] == b'E' => Reply::Error,
        Ok(_) => Reply::Other(byte[0]),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
            Reply::Nothing
        }
        Err(_) => Reply::Closed,
    }
}

fn startup_packet(user: &str, db: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608u32.to_be_bytes());
    for (k, v) in [("user", user), ("database", db)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

/// Logs in as the trust user and reads up to ReadyForQuery.
fn raw_login(proxy: &Proxy) -> TcpStream {
    let mut s = TcpStream::connect(proxy.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&startup_packet("rawtrust", APP_DB)).unwrap();
    loop {
        let mut header = [0u8; 5];
        s.read_exact(&mut header).expect("reading a message during login");
        let len = u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).expect("reading a message body during login");
        match header[0] {
            b'R' => {
                let code = u32::from_be_bytes(body[0..4].try_into().unwrap());
                assert!(code == 0, "trust user asked for authentication code {code}");
            }
            b'E' => panic!("login failed: {}", String::from_utf8_lossy(&body)),
            b'Z' => return s,
            _ => {}
        }
    }
}

fn assert_refused(what: &str, r: Reply) {
    assert!(
        r == Reply::Error || r == Reply::Closed,
        "{what}: expected an ErrorResponse or a closed connection, got {r:?}"
    );
}

fn assert_serving(proxy: &Proxy, what: &str) {
    let out = proxy.psql(&["-A", "-t", "-c", "SELECT 'serving'"], None);
    assert!(out.success() && out.stdout.trim() == "serving", "after {what}: {out}");
}

#[test]
fn trust_user_becomes_its_server_user() {
    let pg = PgServer::shared();
    let proxy = Proxy::start(&config(pg, TRUST_USER));
    let mut cmd = proxy.psql_cmd("rawtrust", "", APP_DB);
    cmd.env_remove("PGPASSWORD").args(["-w", "-A", "-t", "-c", "SELECT current_user"]);
    let out = common::run(cmd, None, Duration::from_secs(30));
    out.assert_success();
    assert_eq!(out.stdout.trim(), APP_USER, "{out}");
}

#[test]
fn malformed_startup_is_refused_and_others_are_served() {
    let pg = PgServer::shared();
    let proxy = Proxy::start(&config(pg, ""));

    // A client that sends half a startup packet and then nothing must not
    // hold anyone else up.
    let mut idle = TcpStream::connect(proxy.addr()).unwrap();
    idle.write_all(&startup_packet("app", "app")[..6]).unwrap();

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("an HTTP request", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec()),
        ("a startup length of 3", vec![0, 0, 0, 3, 0, 3, 0, 0]),
        ("a 2 GB startup length", vec![0x7f, 0xff, 0xff, 0xf0, 0, 3, 0, 0]),
        ("protocol version 2.0", [8u32.to_be_bytes(), 0x0002_0000u32.to_be_bytes()].concat()),
        ("random bytes", (0..64u32).map(|i| (i * 37 + 11) as u8).collect()),
    ];
    for (what, bytes) in cases {
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        s.write_all(&bytes).unwrap();
        assert_refused(what, reply(&mut s));
        assert_serving(&proxy, what);
    }
    drop(idle);
    assert_serving(&proxy, "all malformed startups");
}

#[test]
fn malformed_messages_after_login_are_refused() {
    let pg = PgServer::shared();
    let proxy = Proxy::start(&config(pg, &format!("max_message_size = 1048576\n{TRUST_USER}")));
    // Sanity: the raw login itself works and answers queries.
    let mut s = raw_login(&proxy);
    let mut q = vec![b'Q'];
    q.extend_from_slice(&13u32.to_be_bytes());
    q.extend_from_slice(b"SELECT 1\0");
    s.write_all(&q).unwrap();
    assert_eq!(reply(&mut s), Reply::Other(b'T'), "a raw query got no RowDescription");

    let cases: Vec<(&str, Vec<u8>)> = vec![
        // Length far above max_message_size: refuse before reading a body.
        ("a 2 GB Query", [vec![b'Q'], 0x7fff_fff0u32.to_be_bytes().to_vec()].concat()),
        (
            "a 4 MB Query over max_message_size",
            [vec![b'Q'], (4u32 << 20).to_be_bytes().to_vec(), b"SELECT".to_vec()].concat(),
        ),
        ("a length below 4", vec![b'Q', 0, 0, 0, 2]),
        ("a negative length", vec![b'Q', 0xff, 0xff, 0xff, 0xf0]),
    ];
    for (what, bytes) in cases {
        let mut s = raw_login(&proxy);
        s.write_all(&bytes).unwrap();
        assert_refused(what, reply(&mut s));
        assert_serving(&proxy, what);
    }
}

// ---------------------------------------------------------------------------
// shutdown
// ---------------------------------------------------------------------------

#[test]
fn sigterm_shuts_down_gracefully() {
    let pg = PgServer::shared();
    let mut proxy = Proxy::start(&config(pg, &format!("shutdown_timeout_ms = 2000\n{TRUST_USER}")));
    assert_serving(&proxy, "start");
    // An idle client is connected when the signal comes.
    let mut idle = raw_login(&proxy);
    let addr = proxy.addr();
    let started = Instant::now();
    let status =
        proxy.stop_within(Duration::from_secs(20)).expect("pgwarden did not exit within 20 s of SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "shutdown took {:?} with shutdown_timeout_ms = 2000",
        started.elapsed()
    );
    // The idle client was disconnected (maybe with an error first), and
    // nobody listens any more.
    let r = reply(&mut idle);
    assert!(r == Reply::Closed || r == Reply::Error, "idle client got {r:?}");
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "still accepting connections after exit"
    );
}
