//! Cancel keys: the BackendKeyData pgwarden hands a client is its own, never
//! a server's. The process id encodes the owning shard, so a CancelRequest
//! that the kernel delivers to any shard finds the right registry.
//!
//! Concurrency note: each shard's registry is a `Mutex<HashMap>` touched
//! only at login, logout and on a CancelRequest (never per message). The
//! server a client is bound to lives in two atomics of its slot, written by
//! the owning shard at checkout and release with relaxed stores and read by
//! whichever shard receives the cancel. A torn read can only pair a stale
//! server key with a stale target, which Postgres ignores.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Bits of the process id that number clients within a shard.
const CLIENT_BITS: u32 = 21;

/// One client's cancel slot.
#[derive(Debug)]
pub struct CancelSlot {
    pub key: i32,
    /// Server (pid << 32 | key as u32) the client is bound to.
    server: AtomicU64,
    /// Target index + 1 of that server; 0 when unbound.
    target: AtomicU32,
}

impl CancelSlot {
    pub fn bind(&self, target: u32, pid: i32, key: i32) {
        self.server.store(((pid as u32 as u64) << 32) | key as u32 as u64, Ordering::Relaxed);
        self.target.store(target + 1, Ordering::Release);
    }

    pub fn unbind(&self) {
        self.target.store(0, Ordering::Release);
    }

    /// (target, server pid, server key) while bound.
    pub fn current(&self) -> Option<(u32, i32, i32)> {
        let t = self.target.load(Ordering::Acquire);
        if t == 0 {
            return None;
        }
        let s = self.server.load(Ordering::Relaxed);
        Some((t - 1, (s >> 32) as i32, s as u32 as i32))
    }
}

/// All shards' registries.
#[derive(Debug)]
pub struct CancelRegistry {
    shards: Vec<Mutex<HashMap<i32, Arc<CancelSlot>>>>,
}

impl CancelRegistry {
    pub fn new(shards: usize) -> Self {
        CancelRegistry { shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect() }
    }

    /// Registers a client of `shard`; `counter` is the shard's running
    /// client number. Returns (pid, slot).
    pub fn register(&self, shard: usize, counter: &mut u32, key: i32) -> (i32, Arc<CancelSlot>) {
        let mut map = self.shards[shard].lock().unwrap_or_else(|p| p.into_inner());
        loop {
            *counter = (*counter + 1) & ((1 << CLIENT_BITS) - 1);
            let pid = ((shard as u32) << CLIENT_BITS | *counter) as i32;
            if *counter == 0 || map.contains_key(&pid) {
                continue;
            }
            let slot = Arc::new(CancelSlot { key, server: AtomicU64::new(0), target: AtomicU32::new(0) });
            map.insert(pid, slot.clone());
            return (pid, slot);
        }
    }

    pub fn unregister(&self, pid: i32) {
        if let Some(m) = self.shards.get(owner(pid)) {
            m.lock().unwrap_or_else(|p| p.into_inner()).remove(&pid);
        }
    }

    /// The server to cancel for a CancelRequest (pid, key), if the key
    /// matches (compared in constant time) and the client is bound.
    pub fn lookup(&self, pid: i32, key: i32) -> Option<(u32, i32, i32)> {
        let slot = self.shards.get(owner(pid))?.lock().unwrap_or_else(|p| p.into_inner()).get(&pid)?.clone();
        // Branch-free comparison: no early exit on the first differing bit.
        if (slot.key ^ key) != 0 {
            return None;
        }
        slot.current()
    }
}

fn owner(pid: i32) -> usize {
    (pid as u32 >> CLIENT_BITS) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_encodes_shard_and_lookup_checks_key() {
        let reg = CancelRegistry::new(3);
        let mut c = 0;
        let (pid, slot) = reg.register(2, &mut c, 1234);
        assert_eq!(owner(pid), 2);
        assert!(pid > 0);
        assert_eq!(reg.lookup(pid, 1234), None, "unbound");
        slot.bind(5, 777, -3);
        assert_eq!(reg.lookup(pid, 1234), Some((5, 777, -3)));
        assert_eq!(reg.lookup(pid, 1235), None);
        reg.unregister(pid);
        assert_eq!(reg.lookup(pid, 1234), None);
    }
}
