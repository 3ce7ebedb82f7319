//! Micro-benchmarks of the pure per-message work on the relay's hot path:
//! framing, response tracking, statement inspection, settings digests.
//!
//! `cargo bench --bench hot_path` runs them for real; under `cargo test`
//! (no `--bench` argument) each runs a few iterations as a smoke test.
//! Figures are ns per operation on whatever machine runs them: compare runs
//! on one machine, never across machines.

use std::hint::black_box;
use std::time::Instant;

use pgwarden::protocol::frame::{self, Writer};
use pgwarden::session::flow::{Expect, Flow};
use pgwarden::session::params::ParamSet;

fn bench(name: &str, iters: u64, mut f: impl FnMut()) {
    for _ in 0..iters.min(1000) {
        f();
    }
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    let ns = t.elapsed().as_nanos() as f64 / iters as f64;
    println!("{name:<48} {ns:>10.1} ns/op");
}

/// A select-only transaction's server response, as Postgres sends it.
fn select_response() -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer::new(&mut out, b'T');
    w.i16(1).cstr(b"abalance").u32(0).i16(0).u32(23).i16(4).i32(-1).i16(0);
    w.finish();
    let mut w = Writer::new(&mut out, b'D');
    w.i16(1).nullable_bytes(Some(b"0"));
    w.finish();
    let mut w = Writer::new(&mut out, b'C');
    w.cstr(b"SELECT 1");
    w.finish();
    let mut w = Writer::new(&mut out, b'Z');
    w.u8(b'I');
    w.finish();
    out
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 2_000_000 } else { 10 };
    let response = select_response();
    let query = b"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";

    bench("frame: walk 4 response headers", n, || {
        let mut pos = 0;
        let buf = black_box(&response[..]);
        while let Some(h) = frame::read_header(&buf[pos..], 1 << 30).unwrap() {
            pos += h.total_len();
        }
        black_box(pos);
    });

    bench("flow: simple query cycle (push + 4 server msgs)", n, || {
        let mut f = Flow::new();
        f.push(Expect::Query { swallow: false });
        for (tag, st) in [(b'T', 0), (b'D', 0), (b'C', 0), (b'Z', b'I')] {
            black_box(f.on_server(tag, st));
        }
        black_box(f.idle());
    });

    bench("sql: may_leave_session_state (select)", n, || {
        black_box(pgwarden::sql::may_leave_session_state(black_box(query)));
    });

    bench("sql: sql_prepared (select)", n, || {
        black_box(pgwarden::sql::sql_prepared(black_box(query)));
    });

    let mut set = ParamSet::default();
    set.set("application_name", "pgbench");
    set.set("client_encoding", "UTF8");
    bench("params: digest compare", n, || {
        black_box(black_box(set.digest()) == black_box(12345));
    });
}
