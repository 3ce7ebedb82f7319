//! Raw extended-protocol sequences that drivers send and the response
//! tracker must follow exactly: an error before the Sync has arrived (the
//! server skips to Sync, simple queries included), and a batch left open by
//! Flush (the server connection must stay with its client until Sync).
//! Messages are built with pgwarden's own codec and checked against what
//! Postgres answers.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{config, PgServer, Proxy, APP_DB, APP_PASSWORD, APP_USER};
use pgwarden::protocol::frontend::FrontendMessage;

fn trust_user() -> String {
    format!(
        "[[users]]\nname = \"pipetrust\"\nauth = \"trust\"\nserver_user = \"{APP_USER}\"\nserver_password = \"{APP_PASSWORD}\"\n"
    )
}

fn startup(user: &str, db: &str) -> Vec<u8> {
    let mut out = Vec::new();
    pgwarden::protocol::startup::encode_startup(&mut out, &[("user", user), ("database", db)]);
    out
}

fn send(s: &mut TcpStream, msgs: &[FrontendMessage<'_>]) {
    let mut out = Vec::new();
    for m in msgs {
        m.encode(&mut out);
    }
    s.write_all(&out).expect("send");
}

/// Reads one message: (tag, body).
fn recv(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut header = [0u8; 5];
    s.read_exact(&mut header).expect("reading a message header");
    let len = u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).expect("reading a message body");
    (header[0], body)
}

/// Reads messages up to and including ReadyForQuery; returns their tags.
fn until_ready(s: &mut TcpStream) -> Vec<u8> {
    let mut tags = Vec::new();
    loop {
        let (t, _) = recv(s);
        tags.push(t);
        if t == b'Z' {
            return tags;
        }
    }
}

fn login(proxy: &Proxy) -> TcpStream {
    let mut s = TcpStream::connect(proxy.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&startup("pipetrust", APP_DB)).unwrap();
    let tags = until_ready(&mut s);
    assert!(!tags.contains(&b'E'), "login failed: {tags:?}");
    s
}

fn parse<'a>(name: &'a [u8], query: &'a [u8]) -> FrontendMessage<'a> {
    FrontendMessage::Parse { name, query, param_types: vec![] }
}

fn bind(statement: &[u8]) -> FrontendMessage<'_> {
    FrontendMessage::Bind {
        portal: b"",
        statement,
        param_formats: vec![],
        params: vec![],
        result_formats: vec![],
    }
}

fn execute(max_rows: i32) -> FrontendMessage<'static> {
    FrontendMessage::Execute { portal: b"", max_rows }
}

/// A simple query that must work: returns its single value.
fn select(s: &mut TcpStream, sql: &str) -> String {
    send(s, &[FrontendMessage::Query(sql.as_bytes())]);
    let mut value = None;
    loop {
        let (t, body) = recv(s);
        match t {
            b'D' => {
                let len = i32::from_be_bytes(body[2..6].try_into().unwrap()) as usize;
                value = Some(String::from_utf8_lossy(&body[6..6 + len]).into_owned());
            }
            b'E' => panic!("`{sql}` failed: {}", String::from_utf8_lossy(&body)),
            b'Z' => return value.expect("a row"),
            _ => {}
        }
    }
}

#[test]
fn an_error_before_sync_skips_everything_up_to_the_sync() {
    let pg = PgServer::shared();
    let proxy = Proxy::start(&config(pg, &format!("workers = 1\ndefault_pool_size = 1\n{}", trust_user())));
    let mut s = login(&proxy);
    // The Parse fails; Postgres answers at once (errors are flushed) and
    // then skips Bind, Execute, the named Parse and even a simple Query.
    send(&mut s, &[parse(b"", b"selec 1"), bind(b""), execute(0), FrontendMessage::Flush]);
    let (t, _) = recv(&mut s);
    assert_eq!(t, b'E', "the Parse error");
    send(
        &mut s,
        &[parse(b"skipped", b"select 2"), FrontendMessage::Query(b"select 3"), FrontendMessage::Sync],
    );
    assert_eq!(until_ready(&mut s), vec![b'Z'], "only ReadyForQuery after the skipped messages");
    // The skipped Parse prepared nothing: binding it fails like on Postgres.
    send(&mut s, &[bind(b"skipped"), execute(0), FrontendMessage::Sync]);
    let tags = until_ready(&mut s);
    assert_eq!(tags, vec![b'E', b'Z'], "{tags:?}");
    // And the session (and the pooled server connection) still works.
    assert_eq!(select(&mut s, "select 42"), "42");
    let mut other = login(&proxy);
    assert_eq!(select(&mut other, "select 43"), "43");
}

#[test]
fn a_batch_left_open_by_flush_keeps_its_server_connection() {
    let pg = PgServer::shared();
    let proxy = Proxy::start(&config(
        pg,
        &format!("workers = 1\ndefault_pool_size = 1\ncheckout_timeout_ms = 20000\n{}", trust_user()),
    ));
    let mut a = login(&proxy);
    let mut b = login(&proxy);
    // A portal suspended after one row, no Sync yet: the implicit
    // transaction and the portal live on this server connection.
    send(
        &mut a,
        &[parse(b"", b"select generate_series(1, 3)"), bind(b""), execute(1), FrontendMessage::Flush],
    );
    let mut tags = Vec::new();
    while tags.last() != Some(&b's') {
        tags.push(recv(&mut a).0);
    }
    assert_eq!(tags, vec![b'1', b'2', b'D', b's']);
    // Another client must wait for the one server connection...
    send(&mut b, &[FrontendMessage::Query(b"select 'b'")]);
    b.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut byte = [0u8; 1];
    let early = b.read(&mut byte);
    assert!(early.is_err(), "the second client got an answer while the first one's batch was open");
    // ...until the first client finishes its batch.
    send(&mut a, &[execute(0), FrontendMessage::Sync]);
    assert_eq!(until_ready(&mut a), vec![b'D', b'D', b'C', b'Z'], "the rest of the portal");
    b.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    let tags = until_ready(&mut b);
    assert!(tags.contains(&b'D') && !tags.contains(&b'E'), "{tags:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
