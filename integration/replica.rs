//! The streaming-replica harness the replica tests build on: a real
//! `pg_basebackup -R` standby of the shared server that follows its writes,
//! can be stopped, started and promoted.

mod common;

use std::time::{Duration, Instant};

use common::{unique_name, PgServer, APP_DB};

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out: {what}");
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
