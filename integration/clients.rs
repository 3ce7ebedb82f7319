//! Real command-line clients through the proxy: psql and pgbench.

mod common;

use common::{
    assert_pgbench_ok, config, database_entry, run, unique_name, with_backend_sampler, PgServer, Proxy,
    APP_USER, PGBENCH_TIMEOUT,
};

/// A fresh database owned by `app`, initialised by pgbench directly on
/// Postgres (scale 1), and a proxy config that serves it.
fn pgbench_database(pg: &PgServer, prefix: &str) -> String {
    let db = pg.create_database(prefix);
    let init = run(pg.pgbench_direct(&db, &["-i", "-s", "1", "-q"]), None, PGBENCH_TIMEOUT);
    init.assert_success();
    db
}

#[test]
fn psql_simple_queries() {
    let pg = PgServer::shared();
    let proxy = Proxy::start(&config(pg, ""));
    let out = proxy.psql(
        &[
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "select 40 + 2",
            "-c",
            "select current_user, current_database()",
            "-c",
            "select string_agg(g::text, ',') from generate_series(1, 5) g",
        ],
        None,
    );
    out.assert_success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines, ["42", "app|app", "1,2,3,4,5"], "{out}");
}

#[test]
fn psql_multiple_statements_in_one_query() {
    let pg = PgServer::shared();
    let table = unique_name("multi");
    let proxy = Proxy::start(&config(pg, ""));
    // One Query message holding several statements (an implicit transaction).
    let sql = format!(
        "create table {table} (id int); insert into {table} values (1), (2); \
         select count(*) from {table}; select sum(id) from {table}"
    );
    let out = proxy.psql(&["-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", &sql], None);
    out.assert_success();
    let lines: Vec<&str> = out.stdout.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines, ["2", "3"], "{out}");
    assert_eq!(pg.query_i64(&format!("select count(*) from {table}")), 2);
}

#[test]
fn psql_error_then_recovery() {
    let pg = PgServer::shared();
    let table = unique_name("recover");
    pg.exec(&format!("create table {table} (id int primary key)"));
    let proxy = Proxy::start(&config(pg, "default_pool_size = 1"));
    // No ON_ERROR_STOP: psql goes on after each error on the same connection.
    let script = format!(
        "\\set VERBOSITY verbose\n\
         select 1/0;\n\
         select 'after error';\n\
         begin;\n\
         insert into {table} values (1);\n\
         select * from no_such_table_{table};\n\
         select 'in failed transaction';\n\
         rollback;\n\
         select 'count=' || count(*) from {table};\n\
         insert into {table} values (2);\n\
         insert into {table} values (2);\n\
         select 'ids=' || string_agg(id::text, ',') from {table};\n"
    );
    let out = proxy.psql(&["-q", "-A", "-t", "-f", "-"], Some(&script));
    assert!(!out.timed_out(), "{out}");
    // SQLSTATEs come through with the errors.
    assert!(out.stderr.contains("22012"), "division by zero: {out}");
    assert!(out.stderr.contains("42P01"), "undefined table: {out}");
    assert!(out.stderr.contains("25P02"), "in failed transaction: {out}");
    assert!(out.stderr.contains("23505"), "unique violation: {out}");
    let lines: Vec<&str> = out.stdout.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines, ["after error", "count=0", "ids=2"], "{out}");
    assert_eq!(pg.psql_direct(&format!("select string_agg(id::text, ',') from {table}")), "2");
}

#[test]
fn psql_copy_in_and_out() {
    let pg = PgServer::shared();
    let table = unique_name("psqlcopy");
    pg.exec(&format!("create table {table} (id int, name text, note text)"));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    let output = dir.path().join("out.csv");
    let mut csv = String::new();
    for i in 0..5000 {
        csv.push_str(&format!("{i},name {i},\"quoted, \"\"note\"\" {i}\"\n"));
    }
    std::fs::write(&input, &csv).unwrap();
    let proxy = Proxy::start(&config(pg, ""));
    let out = proxy.psql(
        &[
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &format!("\\copy {table} from '{}' csv", input.display()),
            "-c",
            &format!("\\copy (select * from {table} order by id) to '{}' csv", output.display()),
        ],
        None,
    );
    out.assert_success();
    assert_eq!(pg.query_i64(&format!("select count(*) from {table}")), 5000);
    assert_eq!(pg.psql_direct(&format!("select note from {table} where id = 4321")), "quoted, \"note\" 4321");
    let copied = std::fs::read_to_string(&output).unwrap();
    assert!(copied == csv, "COPY TO through the proxy differs from the input");

    // COPY FROM STDIN fed through psql's own stdin.
    let stdin_table = unique_name("psqlcopystdin");
    pg.exec(&format!("create table {stdin_table} (id int, v text)"));
    let mut script = format!("copy {stdin_table} from stdin;\n");
    for i in 0..1000 {
        script.push_str(&format!("{i}\tv{i}\n"));
    }
    script.push_str("\\.\nselect count(*), sum(id) from ");
    script.push_str(&stdin_table);
    script.push_str(";\n");
    let out = proxy.psql(&["-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"], Some(&script));
    out.assert_success();
    assert!(out.stdout.contains("1000|499500"), "{out}");
}

/// pgbench through a pool smaller than the number of clients, transaction
/// mode; every transaction must commit and the pool must stay within size.
fn pgbench_small_pool(protocol: &str) {
    let pg = PgServer::shared();
    let db = pgbench_database(pg, &format!("bench_{protocol}"));
    let proxy = Proxy::start(&config(pg, &format!("default_pool_size = 4\n{}", database_entry(pg, &db))));
    let clients = 16;
    let per_client = 40;
    let (out, max_backends) = with_backend_sampler(pg, APP_USER, &db, || {
        proxy.pgbench(
            &db,
            &["-n", "-M", protocol, "-c", &clients.to_string(), "-j", "2", "-t", &per_client.to_string()],
        )
    });
    assert_pgbench_ok(&out, clients * per_client);
    // Every tpcb-like transaction inserts one history row: all committed.
    let history = pg.psql_in(&db, "select count(*) from pgbench_history").parse::<u64>().unwrap();
    assert_eq!(history, clients * per_client);
    assert!(
        (1..=4).contains(&max_backends),
        "pool_size 4 but Postgres saw {max_backends} server connections at once"
    );
}

#[test]
fn pgbench_simple_more_clients_than_pool() {
    pgbench_small_pool("simple");
}

#[test]
fn pgbench_extended_more_clients_than_pool() {
    pgbench_small_pool("extended");
}

#[test]
fn pgbench_prepared_more_clients_than_pool() {
    pgbench_small_pool("prepared");
}

#[test]
fn pgbench_prepared_64_clients() {
    let pg = PgServer::shared();
    let db = pgbench_database(pg, "bench_c64");
    let proxy = Proxy::start(&config(pg, &format!("default_pool_size = 20\n{}", database_entry(pg, &db))));
    let (out, max_backends) = with_backend_sampler(pg, APP_USER, &db, || {
        proxy.pgbench(&db, &["-n", "-M", "prepared", "-c", "64", "-j", "2", "-t", "25"])
    });
    assert_pgbench_ok(&out, 64 * 25);
    let history = pg.psql_in(&db, "select count(*) from pgbench_history").parse::<u64>().unwrap();
    assert_eq!(history, 64 * 25);
    assert!(
        (1..=20).contains(&max_backends),
        "pool_size 20 but Postgres saw {max_backends} server connections at once"
    );
}

#[test]
fn pgbench_new_connection_per_transaction() {
    // -C: every transaction is a fresh login (SCRAM) through the proxy.
    let pg = PgServer::shared();
    let db = pgbench_database(pg, "bench_reconnect");
    let proxy = Proxy::start(&config(pg, &format!("default_pool_size = 4\n{}", database_entry(pg, &db))));
    let out = proxy.pgbench(&db, &["-n", "-C", "-S", "-M", "simple", "-c", "8", "-j", "2", "-t", "25"]);
    assert_pgbench_ok(&out, 8 * 25);
    // The pool keeps its server connections: far fewer than 200 logins.
    let backends = pg.backend_count(APP_USER, &db);
    assert!(backends <= 4, "{backends} server connections for pool_size 4");
}

#[test]
fn pgbench_init_through_proxy() {
    // pgbench -i: DDL, COPY and VACUUM through the proxy.
    let pg = PgServer::shared();
    let db = pg.create_database("bench_init");
    let proxy = Proxy::start(&config(pg, &database_entry(pg, &db)));
    let out = proxy.pgbench(&db, &["-i", "-s", "1"]);
    out.assert_success();
    assert_eq!(pg.psql_in(&db, "select count(*) from pgbench_accounts"), "100000");
    assert_eq!(pg.psql_in(&db, "select count(*) from pgbench_branches"), "1");
}
