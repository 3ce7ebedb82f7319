//! psycopg 3 (Python) through the proxy: integration/python/psycopg_check.py.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{config, repo_root, run, PgServer, Proxy, APP_DB, APP_PASSWORD, APP_USER};

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

#[test]
fn psycopg_through_the_proxy() {
    let probe = run(
        {
            let mut cmd = Command::new(python());
            cmd.args(["-c", "import psycopg; print(psycopg.__version__)"]);
            cmd
        },
        None,
        Duration::from_secs(30),
    );
    assert!(probe.success(), "psycopg 3 is not importable (run scripts/install-deps.sh): {probe}");

    let pg = PgServer::shared();
    let proxy = Proxy::start(&config(pg, "default_pool_size = 2"));
    let script = repo_root().join("integration/python/psycopg_check.py");
    let mut cmd = Command::new(python());
    cmd.arg(&script)
        // No password in the DSN: it comes from the environment.
        .arg(format!("host=127.0.0.1 port={} user={} dbname={}", proxy.port(), APP_USER, APP_DB))
        .env("PGPASSWORD", APP_PASSWORD)
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGOPTIONS");
    let out = run(cmd, None, Duration::from_secs(180));
    assert!(out.success(), "psycopg checks failed: {out}");
    assert!(out.stdout.contains("all psycopg checks passed"), "the script did not finish: {out}");
}
