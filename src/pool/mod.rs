//! Pool decisions: synchronous, no awaits, no I/O.
//!
//! A pool is one (user, database) pair. Every shard holds its own
//! [`PoolSlice`] of it, created the first time one of its clients needs it;
//! all slices of a pool share one [`PoolShared`] whose atomic counter
//! enforces `pool_size` across shards.
//!
//! Concurrency note: the only cross-shard state is [`PoolShared`]: `open`
//! is taken with a compare-and-swap when a shard opens a connection and
//! given back when it closes one, so the global cap holds without locks.
//! Checkout and release of idle connections touch shard-local state only.
//! A shard that cannot open (cap reached) and has no idle connection raises
//! `starving`; shards holding more idle connections than their fair share
//! then close the surplus, handing budget to the starving shard.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// State of one pool shared by all shards.
#[derive(Debug)]
pub struct PoolShared {
    /// Server connections open across all shards.
    open: AtomicU32,
    /// The global cap (`pool_size`).
    cap: u32,
    /// Shards that have clients waiting because the cap is reached.
    starving: AtomicU32,
    /// Fair share of one shard: `cap / shards` (0 when there are more
    /// shards than connections: then any idle connection is surplus while
    /// another shard starves).
    fair_share: u32,
}

impl PoolShared {
    pub fn new(cap: u32, shards: usize) -> Self {
        let fair_share = cap / shards.max(1) as u32;
        PoolShared { open: AtomicU32::new(0), cap, starving: AtomicU32::new(0), fair_share }
    }

    /// Takes budget for one new connection; false when the cap is reached.
    pub fn try_acquire(&self) -> bool {
        let mut cur = self.open.load(Ordering::Relaxed);
        loop {
            if cur >= self.cap {
                return false;
            }
            match self.open.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Gives back the budget of one closed connection.
    pub fn release_budget(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn cap(&self) -> u32 {
        self.cap
    }

    fn someone_starving(&self) -> bool {
        self.starving.load(Ordering::Relaxed) > 0
    }
}

/// What a checkout should do next.
#[derive(Debug)]
pub enum Checkout<T> {
    /// An idle connection from this shard's slice.
    Idle(T),
    /// Budget was taken: open a new connection (and call
    /// [`PoolSlice::opened`] or [`PoolSlice::open_failed`]).
    Open,
    /// Nothing available: wait for a release (or retry after a short tick).
    Wait,
}

/// What to do with a connection a client hands back.
#[derive(Debug, PartialEq, Eq)]
pub enum Release {
    /// Keep it idle in the slice.
    Keep,
    /// Close it (expired, or surplus while another shard starves).
    Close,
}

/// An idle connection with its bookkeeping.
#[derive(Debug)]
struct Idle<T> {
    conn: T,
    since: Instant,
}

/// One shard's slice of a pool. `T` is the server connection type.
#[derive(Debug)]
pub struct PoolSlice<T> {
    shared: std::sync::Arc<PoolShared>,
    /// Idle connections, most recently used last (LIFO keeps a hot set and
    /// lets the rest reach the idle timeout).
    idle: Vec<Idle<T>>,
    /// Connections of this slice open now (idle, lent out or connecting).
    open_here: u32,
    /// Clients of this shard waiting for a connection, in arrival order.
    waiters: VecDeque<u64>,
    /// Whether this slice counts itself in `shared.starving`.
    starving: bool,
}

impl<T> PoolSlice<T> {
    pub fn new(shared: std::sync::Arc<PoolShared>) -> Self {
        PoolSlice { shared, idle: Vec::new(), open_here: 0, waiters: VecDeque::new(), starving: false }
    }

    pub fn shared(&self) -> &PoolShared {
        &self.shared
    }

    /// Tries to get a connection for waiter `id` (0 for a first attempt by a
    /// client not yet queued). A queued waiter only proceeds at the head of
    /// the queue, so clients are served in arrival order.
    pub fn checkout(&mut self, id: u64) -> Checkout<T> {
        let at_head = self.waiters.front().is_none_or(|&w| w == id);
        if at_head {
            if let Some(idle) = self.idle.pop() {
                self.dequeue(id);
                return Checkout::Idle(idle.conn);
            }
            if self.shared.try_acquire() {
                self.open_here += 1;
                self.dequeue(id);
                return Checkout::Open;
            }
        }
        if !self.waiters.contains(&id) {
            self.waiters.push_back(id);
        }
        self.set_starving(true);
        Checkout::Wait
    }

    /// A waiter gave up (timeout or client gone).
    pub fn cancel_wait(&mut self, id: u64) {
        self.dequeue(id);
    }

    fn dequeue(&mut self, id: u64) {
        if let Some(pos) = self.waiters.iter().position(|&w| w == id) {
            self.waiters.remove(pos);
        }
        if self.waiters.is_empty() {
            self.set_starving(false);
        }
    }

    fn set_starving(&mut self, on: bool) {
        if on != self.starving {
            self.starving = on;
            if on {
                self.shared.starving.fetch_add(1, Ordering::AcqRel);
            } else {
                self.shared.starving.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// The head of the wait queue, to be woken after a release.
    pub fn first_waiter(&self) -> Option<u64> {
        self.waiters.front().copied()
    }

    /// A connection opened after [`Checkout::Open`] failed: give the budget back.
    pub fn open_failed(&mut self) {
        self.closed();
    }

    /// A lent-out connection was closed instead of returned.
    pub fn closed(&mut self) {
        self.open_here -= 1;
        self.shared.release_budget();
    }

    /// Returns a clean connection. `expired` is the caller's lifetime check.
    /// With `Release::Close` the caller closes it; the budget is already
    /// given back.
    pub fn release(&mut self, conn: T, expired: bool, now: Instant) -> Option<T> {
        if expired || self.over_fair_share_while_others_starve() {
            self.closed();
            return Some(conn);
        }
        self.idle.push(Idle { conn, since: now });
        None
    }

    fn over_fair_share_while_others_starve(&self) -> bool {
        self.waiters.is_empty() && self.shared.someone_starving() && self.open_here > self.shared.fair_share
    }

    /// Removes idle connections unused for `idle_timeout` (if non-zero) or
    /// surplus to this shard's fair share while another shard starves.
    /// Returns them for closing; their budget is already given back.
    pub fn reap(&mut self, now: Instant, idle_timeout: Duration) -> Vec<T> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.idle.len() {
            let stale = !idle_timeout.is_zero() && now.duration_since(self.idle[i].since) >= idle_timeout;
            if stale || self.over_fair_share_while_others_starve() {
                out.push(self.idle.remove(i).conn);
                self.closed();
            } else {
                i += 1;
            }
        }
        out
    }

    /// Takes every idle connection (shutdown).
    pub fn drain(&mut self) -> Vec<T> {
        let out: Vec<T> = self.idle.drain(..).map(|i| i.conn).collect();
        for _ in 0..out.len() {
            self.closed();
        }
        out
    }

    pub fn idle_count(&self) -> usize {
        self.idle.len()
    }

    pub fn open_here(&self) -> u32 {
        self.open_here
    }

    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }
}

impl<T> Drop for PoolSlice<T> {
    fn drop(&mut self) {
        self.set_starving(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn cap_holds_across_slices() {
        let shared = Arc::new(PoolShared::new(3, 2));
        let mut a: PoolSlice<u32> = PoolSlice::new(shared.clone());
        let mut b: PoolSlice<u32> = PoolSlice::new(shared.clone());
        assert!(matches!(a.checkout(1), Checkout::Open));
        assert!(matches!(a.checkout(2), Checkout::Open));
        assert!(matches!(b.checkout(3), Checkout::Open));
        assert!(matches!(b.checkout(4), Checkout::Wait));
        assert_eq!(shared.open(), 3);
        b.closed();
        assert!(matches!(b.checkout(4), Checkout::Open));
    }

    #[test]
    fn release_then_idle_checkout_in_fifo_order() {
        let shared = Arc::new(PoolShared::new(1, 1));
        let mut s: PoolSlice<u32> = PoolSlice::new(shared);
        assert!(matches!(s.checkout(1), Checkout::Open));
        assert!(matches!(s.checkout(2), Checkout::Wait));
        assert!(matches!(s.checkout(3), Checkout::Wait));
        assert!(s.release(7, false, Instant::now()).is_none());
        // waiter 3 is not at the head: it must not jump the queue
        assert!(matches!(s.checkout(3), Checkout::Wait));
        assert!(matches!(s.checkout(2), Checkout::Idle(7)));
        assert_eq!(s.first_waiter(), Some(3));
    }

    #[test]
    fn surplus_is_closed_when_another_shard_starves() {
        let shared = Arc::new(PoolShared::new(2, 2));
        let mut a: PoolSlice<u32> = PoolSlice::new(shared.clone());
        let mut b: PoolSlice<u32> = PoolSlice::new(shared.clone());
        assert!(matches!(a.checkout(1), Checkout::Open));
        assert!(matches!(a.checkout(2), Checkout::Open));
        assert!(matches!(b.checkout(3), Checkout::Wait));
        assert!(a.release(10, false, Instant::now()).is_some(), "surplus closed");
        assert!(matches!(b.checkout(3), Checkout::Open));
        assert!(a.release(11, false, Instant::now()).is_none(), "fair share kept");
    }

    #[test]
    fn a_pool_of_one_moves_to_the_starving_shard() {
        let shared = Arc::new(PoolShared::new(1, 2));
        let mut a: PoolSlice<u32> = PoolSlice::new(shared.clone());
        let mut b: PoolSlice<u32> = PoolSlice::new(shared.clone());
        assert!(matches!(a.checkout(1), Checkout::Open));
        assert!(a.release(1, false, Instant::now()).is_none());
        assert!(matches!(b.checkout(2), Checkout::Wait));
        assert_eq!(a.reap(Instant::now(), Duration::ZERO), vec![1]);
        assert!(matches!(b.checkout(2), Checkout::Open));
    }

    #[test]
    fn expired_and_idle_reaping() {
        let shared = Arc::new(PoolShared::new(2, 1));
        let mut s: PoolSlice<u32> = PoolSlice::new(shared.clone());
        assert!(matches!(s.checkout(1), Checkout::Open));
        assert!(s.release(1, true, Instant::now()).is_some());
        assert_eq!(shared.open(), 0);
        assert!(matches!(s.checkout(1), Checkout::Open));
        let t0 = Instant::now();
        assert!(s.release(5, false, t0).is_none());
        assert!(s.reap(t0, Duration::from_secs(1)).is_empty());
        assert_eq!(s.reap(t0 + Duration::from_secs(2), Duration::from_secs(1)), vec![5]);
        assert_eq!(shared.open(), 0);
    }
}
