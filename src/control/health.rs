//! Host health for databases with a primary and replicas: a thread of its
//! own (`pgwarden-health`, with its own io_uring runtime) checks every host
//! every `healthcheck_interval_ms` and publishes each host's role and ban
//! to the shards through the atomics of [`Cluster`]. Every ban, unban and
//! promotion is logged.
//!
//! A check is one query on a connection kept open between checks:
//! `pg_is_in_recovery()` and, on a replica, the replay lag (zero while the
//! replica has replayed everything it received, else the age of the last
//! replayed transaction).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::route::cluster::{now_ms, Cluster, Host};
use crate::route::{apply, BanReason, Check, Health, HostRole, Transition};
use crate::session::ctx::Shared;
use crate::session::server::{ServerConn, ServerLogin};

/// Recovery state and replay lag in milliseconds, as one text value. The
/// lag is 0 while a WAL receiver runs and everything received is replayed;
/// otherwise (behind, or not receiving at all) it is the age of the last
/// replayed transaction, or the time since the replica started if it
/// replayed none.
const CHECK_SQL: &str = "SELECT pg_catalog.pg_is_in_recovery()::text || ',' || COALESCE(CASE \
    WHEN NOT pg_catalog.pg_is_in_recovery() THEN 0 \
    WHEN pg_catalog.pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_catalog.pg_last_wal_replay_lsn() \
    AND EXISTS (SELECT 1 FROM pg_catalog.pg_stat_wal_receiver) THEN 0 \
    ELSE (EXTRACT(EPOCH FROM pg_catalog.now() - COALESCE(pg_catalog.pg_last_xact_replay_timestamp(), \
    pg_catalog.pg_postmaster_start_time())) * 1000)::bigint END, 0)::text";

/// One host as the health thread tracks it.
struct Probe {
    cluster: Arc<Cluster>,
    host: usize,
    health: Health,
    conn: Option<ServerConn>,
    login: ServerLogin,
    /// A failed login of the health check was logged.
    warned_login: bool,
    /// Why the last check failed, for the ban's log line.
    last_error: String,
}

/// Starts the health thread when some database has more than one host.
pub fn spawn(shared: Arc<Shared>) -> Result<(), String> {
    if shared.clusters.values().all(|c| c.single()) {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("pgwarden-health".into())
        .spawn(move || {
            let probes = probes(&shared);
            let res = crate::shard::block_on(run(shared, probes));
            if let Err(e) = res {
                log::error!("health checks cannot run: {e}");
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the health thread: {e}"))
}

/// One probe per host of each database with more than one host.
fn probes(shared: &Shared) -> Vec<Probe> {
    let mut probes = Vec::new();
    let Some((user, password)) = shared.config.healthcheck_login() else { return probes };
    let g = &shared.config.general;
    let mut clusters: Vec<&Arc<Cluster>> = shared.clusters.values().filter(|c| !c.single()).collect();
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    for cluster in clusters {
        for (i, h) in cluster.hosts.iter().enumerate() {
            probes.push(Probe {
                cluster: cluster.clone(),
                host: i,
                health: Health::new(h.role()),
                conn: None,
                login: ServerLogin {
                    addr: h.addr.clone(),
                    target: h.target,
                    database: h.database_name.clone(),
                    user: user.clone(),
                    password: password.as_deref().map(crate::auth::Secret::parse),
                    role: None,
                    read_only: true,
                    scram_keys: None,
                    connect_timeout: Duration::from_millis(g.healthcheck_timeout_ms),
                },
                warned_login: false,
                last_error: String::new(),
            });
        }
    }
    probes
}

async fn run(shared: Arc<Shared>, mut probes: Vec<Probe>) {
    let g = &shared.config.general;
    let interval = Duration::from_millis(g.healthcheck_interval_ms);
    let timeout = Duration::from_millis(g.healthcheck_timeout_ms);
    let max_lag = match g.max_replica_lag_ms {
        0 => Duration::MAX,
        ms => Duration::from_millis(ms),
    };
    let ban = Duration::from_millis(g.ban_time_ms);
    log::info!("health checks: {} hosts every {} ms", probes.len(), interval.as_millis());
    while !shared.shutting_down() {
        let started = Instant::now();
        for p in &mut probes {
            if let Some(check) = probe(p, timeout).await {
                observe(p, check, max_lag, ban);
            }
        }
        let elapsed = started.elapsed();
        if elapsed < interval {
            monoio::time::sleep(interval - elapsed).await;
        }
    }
}

/// Runs one check, reconnecting first if needed; `None` when the check
/// could not log in (that says nothing about the host).
async fn probe(p: &mut Probe, timeout: Duration) -> Option<Check> {
    let res = crate::net::timeout(timeout, async {
        if p.conn.is_none() {
            p.conn = Some(ServerConn::connect(&p.login, 1).await?);
        }
        p.conn.as_mut().expect("connected above").query_value(CHECK_SQL).await
    })
    .await;
    let label = &p.cluster.hosts[p.host].label;
    let value = match res {
        Some(Ok(Ok(Some(v)))) => v,
        Some(Ok(Ok(None))) => String::new(),
        // The server answered but refused the health check's login: that
        // says nothing about its health (the shards log in as other users).
        // Leave what is known as it is, and say what to fix.
        Some(Err(e)) if login_refused(&e) => {
            p.conn = None;
            if !std::mem::replace(&mut p.warned_login, true) {
                log::error!(
                    "health check of host {label} cannot log in: {e}; set general.healthcheck_user and \
                     healthcheck_password to a role that may connect (until then its role and lag are not checked)"
                );
            }
            return None;
        }
        Some(Ok(Err(e))) => {
            p.last_error = e.to_string();
            p.conn = None;
            return Some(Check::Down);
        }
        Some(Err(e)) => {
            p.last_error = e.to_string();
            p.conn = None;
            return Some(Check::Down);
        }
        None => {
            p.last_error = format!("no answer within healthcheck_timeout_ms ({} ms)", timeout.as_millis());
            p.conn = None;
            return Some(Check::Down);
        }
    };
    let mut parts = value.split(',');
    let in_recovery = parts.next() == Some("true");
    let lag = parts.next().and_then(|l| l.parse::<u64>().ok()).map(Duration::from_millis);
    Some(Check::Up { in_recovery, lag: if in_recovery { lag } else { None } })
}

/// A login the server refused for who asked, not for its own state.
fn login_refused(e: &crate::session::SessionError) -> bool {
    use crate::session::SessionError;
    match e {
        SessionError::ServerAuth(_) => true,
        SessionError::ServerRefused(pg) => pg.code.starts_with("28") || pg.code == "3D000",
        _ => false,
    }
}

/// Applies a check to a probe and publishes the result to the shards.
fn observe(p: &mut Probe, check: Check, max_lag: Duration, ban: Duration) {
    let host: &Host = &p.cluster.hosts[p.host];
    let name = &p.cluster.name;
    let now = Instant::now();
    let now_ms = now_ms();
    // A shard that failed to connect banned the host: follow its deadline,
    // so that the unban is logged here.
    let shard_ban = host.banned_until();
    if shard_ban > now_ms {
        let until = now + Duration::from_millis(shard_ban - now_ms);
        if p.health.banned_until.is_none_or(|(u, _)| u < until) {
            let reason = p.health.banned_until.map_or(BanReason::Unreachable, |(_, r)| r);
            p.health.banned_until = Some((until, reason));
        }
    }
    let before = p.health.role;
    let transition = apply(&mut p.health, check, now, max_lag, ban);
    // The role follows what the server says, whatever the configuration:
    // a promoted replica is a primary candidate and no read target, an old
    // primary that rejoined as a standby is no primary candidate.
    if let Some(role) = p.health.role.filter(|r| before != Some(*r)) {
        host.set_role(role);
        match before {
            Some(HostRole::Replica) => {
                host.unban();
                log::warn!(
                    "host {} of database \"{name}\" left recovery (promoted): it is a primary candidate from now \
                     on, and no longer a read target",
                    host.label
                );
            }
            Some(HostRole::Primary) => log::warn!(
                "host {} of database \"{name}\" is in recovery: no longer a primary candidate; a read target while \
                 healthy",
                host.label
            ),
            None => log::info!(
                "host {} of database \"{name}\" is a {}",
                host.label,
                if role == HostRole::Replica { "replica (in recovery)" } else { "primary" }
            ),
        }
    }
    match (check, transition) {
        (_, Transition::Unbanned) => {
            host.unban();
            log::info!("unbanned host {} of database \"{name}\": it answers health checks again", host.label);
        }
        (_, Transition::Banned(reason)) => {
            host.ban(now_ms, ban);
            let why = match reason {
                BanReason::Unreachable => format!("health check failed: {}", p.last_error),
                BanReason::Lagging(lag) => {
                    format!("its replay lag {} ms exceeds max_replica_lag_ms", lag.as_millis())
                }
            };
            log::warn!("banned host {} of database \"{name}\" for {} ms: {why}", host.label, ban.as_millis());
        }
        (Check::Down, Transition::None) => {
            // Still down: the ban runs on.
            host.ban(now_ms, ban);
        }
        (Check::Up { lag: Some(lag), .. }, Transition::None)
            if lag > max_lag && p.health.role == Some(HostRole::Replica) =>
        {
            host.ban(now_ms, ban);
        }
        _ => {}
    }
}
