//! A database's hosts (one primary, its replicas) as the shards see them:
//! each host's observed role and ban deadline are atomics, written by the
//! health thread (and by a shard whose connect failed) and read without a
//! lock on every routing decision.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::HostRole;
use crate::config::{DbRole, General, LoadBalancing, PrimaryReads, ReadOnlyFallback};

const ROLE_UNKNOWN: u8 = 0;
const ROLE_PRIMARY: u8 = 1;
const ROLE_REPLICA: u8 = 2;

/// Milliseconds since the first call in this process, plus one (so that a
/// ban deadline of 0 means "never banned"). Monotonic.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_millis() as u64 + 1
}

/// One `[[databases]]` entry of a cluster.
#[derive(Debug)]
pub struct Host {
    pub addr: crate::net::ServerAddr,
    /// Index of `addr` in the shared target table (cancel requests).
    pub target: u32,
    pub database_name: String,
    pub configured: DbRole,
    /// `host:port` as configured, for logs.
    pub label: String,
    role: AtomicU8,
    /// `now_ms()` until which the host gets no new transactions.
    banned_until: AtomicU64,
}

impl Host {
    pub fn new(
        addr: crate::net::ServerAddr,
        target: u32,
        database_name: String,
        configured: DbRole,
        label: String,
    ) -> Host {
        let role = match configured {
            DbRole::Primary => ROLE_PRIMARY,
            DbRole::Replica => ROLE_REPLICA,
            // Unknown (and unusable) until the first health check.
            DbRole::Auto => ROLE_UNKNOWN,
        };
        Host {
            addr,
            target,
            database_name,
            configured,
            label,
            role: AtomicU8::new(role),
            banned_until: AtomicU64::new(0),
        }
    }

    /// The role last observed (or configured); `None` before an `auto`
    /// host's first check.
    pub fn role(&self) -> Option<HostRole> {
        match self.role.load(Ordering::Acquire) {
            ROLE_PRIMARY => Some(HostRole::Primary),
            ROLE_REPLICA => Some(HostRole::Replica),
            _ => None,
        }
    }

    pub fn set_role(&self, role: HostRole) {
        let v = match role {
            HostRole::Primary => ROLE_PRIMARY,
            HostRole::Replica => ROLE_REPLICA,
        };
        self.role.store(v, Ordering::Release);
    }

    pub fn banned_until(&self) -> u64 {
        self.banned_until.load(Ordering::Acquire)
    }

    /// Not banned at `now` (a `now_ms()` value).
    pub fn usable(&self, now: u64) -> bool {
        self.banned_until() <= now
    }

    /// Bans the host until `now + ban`, or longer if it is banned longer
    /// already. Returns whether it was usable before (a new ban, to log).
    pub fn ban(&self, now: u64, ban: Duration) -> bool {
        let until = now + ban.as_millis() as u64;
        let before = self.banned_until.fetch_max(until, Ordering::AcqRel);
        before <= now
    }

    /// Lifts a ban (the health thread, once the host answers again and its
    /// ban ran out, or when a promotion makes it the primary).
    pub fn unban(&self) {
        self.banned_until.store(0, Ordering::Release);
    }

    fn is(&self, role: u8, now: u64) -> bool {
        self.role.load(Ordering::Acquire) == role && self.usable(now)
    }
}

/// The hosts clients reach by one database name.
#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub hosts: Vec<Host>,
}

/// What a transaction needs from a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// It may write: the primary.
    Primary,
    /// It only reads: a replica, or the primary as `primary_reads` says.
    Read,
    /// A read-only user: replicas only, unless `read_only_fallback` says
    /// the primary may serve it (read-only enforced).
    ReadOnlyUser,
    /// A login's first connection (transaction pooling): the primary, or
    /// any healthy host when the primary is down, so that reads still work.
    Login,
}

/// No host can take the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoHost {
    Primary,
    Replica,
    Any,
}

/// A shard's own load-balancing state (never shared).
#[derive(Debug, Default)]
pub struct PickState {
    cursor: usize,
    rng: u64,
}

impl PickState {
    pub fn new(seed: u64) -> PickState {
        PickState { cursor: seed as usize, rng: seed | 1 }
    }

    fn random(&mut self, n: usize) -> usize {
        // xorshift64: not for secrets, just to spread reads.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x % n as u64) as usize
    }
}

impl Cluster {
    /// One host: no routing, no health checks, nothing on the hot path.
    pub fn single(&self) -> bool {
        self.hosts.len() == 1
    }

    /// The first usable host that is (or became) a primary; when every
    /// primary is banned, the first primary all the same: there is nowhere
    /// else a write could go, and a ban from a slow health check must not
    /// turn into an outage (a primary that is really down fails to connect).
    pub fn primary(&self, now: u64) -> Option<usize> {
        self.usable_primary(now).or_else(|| self.any_primary())
    }

    fn usable_primary(&self, now: u64) -> Option<usize> {
        self.hosts.iter().position(|h| h.is(ROLE_PRIMARY, now))
    }

    fn any_primary(&self) -> Option<usize> {
        self.hosts.iter().position(|h| h.role.load(Ordering::Acquire) == ROLE_PRIMARY)
    }

    /// A usable replica (and the primary too when `with_primary`), by the
    /// load-balancing rule; `lent(i)` is how many connections to host `i`
    /// this shard has lent out.
    pub fn pick_reader(
        &self,
        now: u64,
        with_primary: bool,
        lb: LoadBalancing,
        st: &mut PickState,
        lent: impl Fn(usize) -> usize,
    ) -> Option<usize> {
        let ok = |h: &Host| h.is(ROLE_REPLICA, now) || (with_primary && h.is(ROLE_PRIMARY, now));
        let n = self.hosts.len();
        match lb {
            LoadBalancing::RoundRobin => {
                for step in 0..n {
                    let i = (st.cursor + step) % n;
                    if ok(&self.hosts[i]) {
                        st.cursor = (i + 1) % n;
                        return Some(i);
                    }
                }
                None
            }
            LoadBalancing::Random => {
                let count = self.hosts.iter().filter(|h| ok(h)).count();
                if count == 0 {
                    return None;
                }
                let k = st.random(count);
                self.hosts.iter().enumerate().filter(|(_, h)| ok(h)).nth(k).map(|(i, _)| i)
            }
            LoadBalancing::LeastConnections => {
                // Ties go round robin, so an idle shard still spreads.
                let start = st.cursor;
                st.cursor = st.cursor.wrapping_add(1);
                (0..n).map(|s| (start + s) % n).filter(|&i| ok(&self.hosts[i])).min_by_key(|&i| lent(i))
            }
        }
    }

    /// The host for a transaction that wants `want`, by the `[general]`
    /// routing keys. A single-host cluster always answers host 0.
    pub fn choose(
        &self,
        want: Want,
        g: &General,
        st: &mut PickState,
        lent: impl Fn(usize) -> usize,
    ) -> Result<usize, NoHost> {
        if self.single() {
            return Ok(0);
        }
        let now = now_ms();
        let lb = g.load_balancing;
        match want {
            Want::Primary => self.primary(now).ok_or(NoHost::Primary),
            Want::Read if !g.read_write_split => self.primary(now).ok_or(NoHost::Primary),
            Want::Read => match g.primary_reads {
                PrimaryReads::Include => self
                    .pick_reader(now, true, lb, st, lent)
                    .or_else(|| self.any_primary())
                    .ok_or(NoHost::Any),
                PrimaryReads::Exclude => self.pick_reader(now, false, lb, st, lent).ok_or(NoHost::Replica),
                PrimaryReads::Fallback => self
                    .pick_reader(now, false, lb, st, lent)
                    .or_else(|| self.primary(now))
                    .ok_or(NoHost::Any),
            },
            Want::Login => self
                .usable_primary(now)
                .or_else(|| self.pick_reader(now, false, lb, st, lent))
                .or_else(|| self.any_primary())
                .ok_or(NoHost::Any),
            Want::ReadOnlyUser => match (self.pick_reader(now, false, lb, st, lent), g.read_only_fallback) {
                (Some(i), _) => Ok(i),
                (None, ReadOnlyFallback::Primary) => self.primary(now).ok_or(NoHost::Any),
                (None, ReadOnlyFallback::Error) => Err(NoHost::Replica),
            },
        }
    }

    /// The client's error when no host can take a transaction.
    pub fn no_host_message(&self, no: NoHost, want: Want) -> String {
        let name = &self.name;
        match (no, want) {
            (NoHost::Replica, Want::ReadOnlyUser) => format!(
                "no replica of database \"{name}\" is available (each is down, banned or lagging), and \
                 read-only users are served by replicas only; retry later, or set \
                 general.read_only_fallback = \"primary\" to let them read from the primary"
            ),
            (NoHost::Replica, _) => format!(
                "no replica of database \"{name}\" is available (each is down, banned or lagging), and \
                 general.primary_reads = \"exclude\" keeps reads off the primary; retry later"
            ),
            (NoHost::Primary, _) => format!(
                "database \"{name}\" has no primary yet (an \"auto\" host's role is unknown before its first \
                 health check); retry later"
            ),
            (NoHost::Any, _) => {
                format!("no host of database \"{name}\" is available (each is down or banned); retry later")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(roles: &[DbRole]) -> Cluster {
        let hosts = roles
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Host::new(
                    crate::net::ServerAddr::Tcp(([127, 0, 0, 1], 5432 + i as u16).into()),
                    i as u32,
                    "app".into(),
                    *r,
                    format!("h{i}"),
                )
            })
            .collect();
        Cluster { name: "app".into(), hosts }
    }

    const BAN: Duration = Duration::from_secs(60);

    #[test]
    fn reads_spread_and_writes_stay_on_the_primary() {
        let c = cluster(&[DbRole::Primary, DbRole::Replica, DbRole::Replica]);
        let mut g = General { primary_reads: PrimaryReads::Exclude, ..General::default() };
        let mut st = PickState::new(0);
        let none = |_| 0;
        assert_eq!(c.choose(Want::Primary, &g, &mut st, none), Ok(0));
        let picks: Vec<_> = (0..4).map(|_| c.choose(Want::Read, &g, &mut st, none).unwrap()).collect();
        assert_eq!(picks, [1, 2, 1, 2]);
        g.primary_reads = PrimaryReads::Include;
        let mut seen = [0; 3];
        for _ in 0..6 {
            seen[c.choose(Want::Read, &g, &mut st, none).unwrap()] += 1;
        }
        assert_eq!(seen, [2, 2, 2]);
        g.read_write_split = false;
        assert_eq!(c.choose(Want::Read, &g, &mut st, none), Ok(0));
        // Read-only users never take the primary while a replica is up.
        for _ in 0..4 {
            assert_ne!(c.choose(Want::ReadOnlyUser, &g, &mut st, none), Ok(0));
        }
    }

    #[test]
    fn bans_and_fallbacks() {
        let c = cluster(&[DbRole::Primary, DbRole::Replica]);
        let mut g = General { primary_reads: PrimaryReads::Exclude, ..General::default() };
        let mut st = PickState::new(0);
        let none = |_| 0;
        assert!(c.hosts[1].ban(now_ms(), BAN));
        assert!(!c.hosts[1].ban(now_ms(), BAN), "a second ban is not news");
        assert_eq!(c.choose(Want::Read, &g, &mut st, none), Err(NoHost::Replica));
        assert_eq!(c.choose(Want::ReadOnlyUser, &g, &mut st, none), Err(NoHost::Replica));
        g.primary_reads = PrimaryReads::Fallback;
        assert_eq!(c.choose(Want::Read, &g, &mut st, none), Ok(0));
        g.read_only_fallback = ReadOnlyFallback::Primary;
        assert_eq!(c.choose(Want::ReadOnlyUser, &g, &mut st, none), Ok(0));
        c.hosts[0].ban(now_ms(), BAN);
        // A banned primary is still the primary when there is no other.
        assert_eq!(c.choose(Want::Primary, &g, &mut st, none), Ok(0));
        c.hosts[1].unban();
        // A promoted replica is a primary candidate, and no longer a reader.
        c.hosts[1].set_role(HostRole::Primary);
        assert_eq!(c.choose(Want::Primary, &g, &mut st, none), Ok(1));
        g.read_only_fallback = ReadOnlyFallback::Error;
        assert_eq!(c.choose(Want::ReadOnlyUser, &g, &mut st, none), Err(NoHost::Replica));
    }

    #[test]
    fn a_login_takes_a_replica_when_the_primary_is_banned() {
        let c = cluster(&[DbRole::Primary, DbRole::Replica]);
        let g = General::default();
        let mut st = PickState::new(0);
        assert_eq!(c.choose(Want::Login, &g, &mut st, |_| 0), Ok(0));
        c.hosts[0].ban(now_ms(), BAN);
        assert_eq!(c.choose(Want::Login, &g, &mut st, |_| 0), Ok(1));
        c.hosts[1].ban(now_ms(), BAN);
        assert_eq!(c.choose(Want::Login, &g, &mut st, |_| 0), Ok(0), "the primary as a last resort");
    }

    #[test]
    fn auto_hosts_wait_for_their_first_check_and_least_connections_picks_the_idlest() {
        let c = cluster(&[DbRole::Auto, DbRole::Replica, DbRole::Replica]);
        let mut st = PickState::new(0);
        let g = General { load_balancing: LoadBalancing::LeastConnections, ..General::default() };
        assert_eq!(c.choose(Want::Primary, &g, &mut st, |_| 0), Err(NoHost::Primary));
        c.hosts[0].set_role(HostRole::Primary);
        assert_eq!(c.choose(Want::Primary, &g, &mut st, |_| 0), Ok(0));
        let lent = |i: usize| [9, 5, 2][i];
        for _ in 0..3 {
            assert_eq!(c.choose(Want::Read, &g, &mut st, lent), Ok(2));
        }
        let g = General { load_balancing: LoadBalancing::Random, ..General::default() };
        for _ in 0..20 {
            assert_ne!(c.choose(Want::ReadOnlyUser, &g, &mut st, |_| 0), Ok(0));
        }
    }
}
