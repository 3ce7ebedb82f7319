//! Micro-benchmarks of JWT logins and statement inspection:
//! token validation cold (signature checked) and cached (the per-shard
//! cache of verified tokens, what a reconnect with the same token pays),
//! the role-change and read-only inspection of typical statements, and the
//! lexical read/write routing decision (`sql::route_of`).
//!
//! `cargo bench --bench jwt` runs them for real; under `cargo test` each
//! runs a few iterations as a smoke test. Figures are ns per operation on
//! whatever machine runs them: compare runs on one machine only.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use pgwarden::auth::jwt::sign::generate_pkcs8;
use pgwarden::auth::jwt::{validate, Algorithm, KeySet, Policy, SigningKey};
use pgwarden::session::jwt::{JwtRuntime, KeyStore, TokenCache};

fn bench(name: &str, iters: u64, mut f: impl FnMut()) {
    for _ in 0..iters.min(100) {
        f();
    }
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    let ns = t.elapsed().as_nanos() as f64 / iters as f64;
    println!("{name:<52} {ns:>12.1} ns/op");
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let scale = |n: u64| if full { n } else { 3 };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({"sub": "analyst", "aud": "pgwarden", "iss": "https://idp", "exp": now + 3600, "iat": now});
    let policy = Policy {
        audiences: vec!["pgwarden".into()],
        issuers: vec!["https://idp".into()],
        ..Policy::default()
    };
    for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
        let key = SigningKey::from_pkcs8(&generate_pkcs8(alg).unwrap()).unwrap();
        let token = key.sign(alg, Some("k1"), claims.as_object().unwrap()).unwrap();
        let keys = Arc::new(KeySet::new([key.verifying_key().with_kid(Some("k1".into()))]).0);
        bench(&format!("validate {alg} (cold: signature checked)"), scale(20_000), || {
            black_box(validate(black_box(token.as_bytes()), &keys, &policy, now).unwrap());
        });
        let rt = JwtRuntime {
            store: Arc::new(KeyStore::new(Vec::new(), false, 30)),
            policy: policy.clone(),
            rules: Default::default(),
        };
        let mut cache = TokenCache::default();
        bench(&format!("validate {alg} (cached: same token again)"), scale(2_000_000), || {
            black_box(rt.validate(&mut cache, &keys, black_box(token.as_bytes())).unwrap());
        });
    }
    let statements: [(&str, &[u8]); 4] = [
        ("pgbench select", b"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"),
        ("pgbench update", b"UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 48213;"),
        (
            "500-byte report query",
            b"SELECT o.id, o.created_at, c.name, sum(l.qty * l.price) AS total FROM orders o JOIN customers c \
              ON c.id = o.customer_id JOIN order_lines l ON l.order_id = o.id WHERE o.created_at >= now() - \
              interval '30 days' AND c.region = 'emea' AND o.status IN ('paid', 'shipped') GROUP BY o.id, \
              o.created_at, c.name HAVING sum(l.qty * l.price) > 1000 ORDER BY total DESC LIMIT 100 -- report",
        ),
        ("SET ROLE (refused)", b"SET ROLE postgres"),
    ];
    // The grammar's second look, only at statements the lexer flagged
    // (verdicts are then cached per shard by statement text).
    let flagged = "UPDATE users SET role = 'admin' WHERE id = 42";
    bench("grammar check of a flagged statement (pg_query parse)", scale(100_000), || {
        black_box(pgwarden::sql::grammar::role_change_cleared(black_box(flagged)));
    });
    for (name, sql) in statements {
        bench(&format!("inspect role change: {name}"), scale(5_000_000), || {
            black_box(pgwarden::sql::may_change_role(black_box(sql)));
        });
        bench(&format!("inspect read-only: {name}"), scale(2_000_000), || {
            black_box(pgwarden::sql::may_write(black_box(sql)));
        });
        bench(&format!("route read/write: {name}"), scale(2_000_000), || {
            black_box(pgwarden::sql::route_of(black_box(sql)));
        });
    }
}
