//! Host health: what a health check means for a host's role and ban. Pure:
//! times and check results come in as arguments; the health thread runs
//! the checks and publishes the resulting [`Health`] to the shards.
//!
//! [`cluster`] holds what the shards read: each host's role and ban as
//! atomics, and the choice of a host for a transaction.

pub mod cluster;

use std::time::{Duration, Instant};

/// What a host is, as configured or as last observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostRole {
    Primary,
    Replica,
}

/// One health check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Reached; `in_recovery` from `pg_is_in_recovery()`, `lag` the replay
    /// lag (None on a primary, or when unknown).
    Up { in_recovery: bool, lag: Option<Duration> },
    /// Could not connect or query within the timeout.
    Down,
}

/// Why a host is banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanReason {
    Unreachable,
    Lagging(Duration),
}

/// A host's health as the shards see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// The role observed last (`None` for an `auto` host before its first
    /// check); the server's view wins over the configuration.
    pub role: Option<HostRole>,
    /// Banned until this instant: no new transactions.
    pub banned_until: Option<(Instant, BanReason)>,
}

impl Health {
    pub fn new(role: Option<HostRole>) -> Health {
        Health { role, banned_until: None }
    }

    pub fn usable(&self, now: Instant) -> bool {
        self.banned_until.is_none_or(|(until, _)| now >= until)
    }
}

/// What changed with a check, for the log (every ban and unban is logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Banned(BanReason),
    Unbanned,
}

/// Applies a check to `h`: a host that is down, or a replica lagging more
/// than `max_lag`, is banned for `ban_time`; a host that is up again and
/// whose ban ran out is unbanned; the role follows `pg_is_in_recovery()`
/// (a replica out of recovery is a primary from then on, never again
/// treated as read-only).
pub fn apply(
    h: &mut Health,
    check: Check,
    now: Instant,
    max_lag: Duration,
    ban_time: Duration,
) -> Transition {
    match check {
        Check::Down => {
            let was_usable = h.usable(now);
            h.banned_until = Some((now + ban_time, BanReason::Unreachable));
            if was_usable {
                Transition::Banned(BanReason::Unreachable)
            } else {
                Transition::None
            }
        }
        Check::Up { in_recovery, lag } => {
            // A role change is seen by comparing `h.role` before and after.
            let observed = if in_recovery { HostRole::Replica } else { HostRole::Primary };
            if h.role.replace(observed) == Some(HostRole::Replica) && observed == HostRole::Primary {
                h.banned_until = None;
            }
            if h.role == Some(HostRole::Replica) {
                if let Some(lag) = lag.filter(|l| *l > max_lag) {
                    let was_usable = h.usable(now);
                    h.banned_until = Some((now + ban_time, BanReason::Lagging(lag)));
                    return if was_usable {
                        Transition::Banned(BanReason::Lagging(lag))
                    } else {
                        Transition::None
                    };
                }
            }
            match h.banned_until {
                Some((until, _)) if now >= until => {
                    h.banned_until = None;
                    Transition::Unbanned
                }
                _ => Transition::None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAG: Duration = Duration::from_secs(1);
    const BAN: Duration = Duration::from_secs(10);

    #[test]
    fn down_bans_and_up_after_the_ban_unbans() {
        let t0 = Instant::now();
        let mut h = Health::new(Some(HostRole::Replica));
        assert_eq!(apply(&mut h, Check::Down, t0, LAG, BAN), Transition::Banned(BanReason::Unreachable));
        assert!(!h.usable(t0 + Duration::from_secs(5)));
        // Still down: the ban is extended, not logged again.
        assert_eq!(apply(&mut h, Check::Down, t0 + Duration::from_secs(5), LAG, BAN), Transition::None);
        let up = Check::Up { in_recovery: true, lag: Some(Duration::ZERO) };
        assert_eq!(apply(&mut h, up, t0 + Duration::from_secs(6), LAG, BAN), Transition::None);
        assert_eq!(apply(&mut h, up, t0 + Duration::from_secs(16), LAG, BAN), Transition::Unbanned);
        assert!(h.usable(t0 + Duration::from_secs(16)));
    }

    #[test]
    fn lag_bans_a_replica_and_promotion_makes_a_primary() {
        let t0 = Instant::now();
        let mut h = Health::new(Some(HostRole::Replica));
        let lagging = Check::Up { in_recovery: true, lag: Some(Duration::from_secs(3)) };
        assert_eq!(
            apply(&mut h, lagging, t0, LAG, BAN),
            Transition::Banned(BanReason::Lagging(Duration::from_secs(3)))
        );
        assert!(!h.usable(t0));
        let promoted = Check::Up { in_recovery: false, lag: None };
        assert_eq!(apply(&mut h, promoted, t0 + Duration::from_secs(1), LAG, BAN), Transition::None);
        assert_eq!(h.role, Some(HostRole::Primary));
        assert!(h.usable(t0 + Duration::from_secs(1)));
        // A primary's lag is never a reason to ban it (a host that reports
        // being in recovery is a replica, whatever it was).
        let mut p = Health::new(Some(HostRole::Primary));
        let primary_lag = Check::Up { in_recovery: false, lag: Some(Duration::from_secs(3)) };
        assert_eq!(apply(&mut p, primary_lag, t0, LAG, BAN), Transition::None);
    }
}
