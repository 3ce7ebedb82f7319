//! Named prepared statements in transaction mode: pure bookkeeping.
//!
//! A client's statement names mean nothing to whichever server connection
//! runs its next transaction. So each shard interns statement definitions
//! (query text + parameter types) under proxy-wide names `__pgw_<id>`; a
//! client maps its own names to definitions; each server connection knows
//! which definitions it has prepared, and the relay prepares a missing one
//! right before the message that needs it. Clients that prepare the same
//! text share one server-side statement.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::rc::Rc;

/// Prefix of the server-side names the proxy gives statements.
pub const SERVER_NAME_PREFIX: &str = "__pgw_";

/// Definitions kept per shard before unused ones are dropped.
pub const REGISTRY_SOFT_LIMIT: usize = 10_000;

/// One interned statement definition.
#[derive(Debug)]
pub struct StmtDef {
    pub id: u64,
    pub server_name: Box<[u8]>,
    pub query: Box<[u8]>,
    pub param_types: Box<[u32]>,
    /// Running it may leave session state no command tag reveals
    /// ([`crate::sql::may_leave_session_state`]).
    pub session_state: bool,
    /// Pools on whose servers this text parsed successfully: a client may
    /// prepare it there without waiting for a server connection.
    validated: std::cell::RefCell<Vec<usize>>,
    /// Whether read/write routing judged the text a read (set on first use).
    pub reads_only: std::cell::Cell<Option<bool>>,
}

impl StmtDef {
    /// Whether the text is known to parse on pool `pool`'s servers.
    pub fn validated_for(&self, pool: usize) -> bool {
        self.validated.borrow().contains(&pool)
    }

    /// Records that the text parsed on pool `pool`'s servers.
    pub fn mark_validated(&self, pool: usize) {
        let mut v = self.validated.borrow_mut();
        if !v.contains(&pool) {
            v.push(pool);
        }
    }

    /// Encodes the Parse that prepares this statement on a server.
    pub fn encode_parse(&self, out: &mut Vec<u8>) {
        let mut w = crate::protocol::frame::Writer::new(out, b'P');
        w.cstr(&self.server_name).cstr(&self.query).i16(self.param_types.len() as i16);
        for t in self.param_types.iter() {
            w.u32(*t);
        }
        w.finish();
    }
}

fn content_hash(query: &[u8], types: &[u32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    query.hash(&mut h);
    types.hash(&mut h);
    h.finish()
}

/// The shard's interned definitions.
#[derive(Debug, Default)]
pub struct Registry {
    by_hash: HashMap<u64, Vec<Rc<StmtDef>>>,
    count: usize,
    next_id: u64,
}

impl Registry {
    /// The definition for (query, types), created on first use.
    pub fn intern(&mut self, query: &[u8], types: &[u32]) -> Rc<StmtDef> {
        let h = content_hash(query, types);
        if let Some(found) = self
            .by_hash
            .get(&h)
            .and_then(|v| v.iter().find(|d| &*d.query == query && &*d.param_types == types))
        {
            return found.clone();
        }
        if self.count >= REGISTRY_SOFT_LIMIT {
            self.collect_unused();
        }
        self.next_id += 1;
        let id = self.next_id;
        let def = Rc::new(StmtDef {
            id,
            server_name: format!("{SERVER_NAME_PREFIX}{id}").into_bytes().into_boxed_slice(),
            query: query.into(),
            param_types: types.into(),
            session_state: crate::sql::may_leave_session_state(query),
            validated: Default::default(),
            reads_only: Default::default(),
        });
        self.by_hash.entry(h).or_default().push(def.clone());
        self.count += 1;
        def
    }

    /// Drops definitions no client refers to any more. Servers may still
    /// hold them prepared; they age out of the servers' caches.
    fn collect_unused(&mut self) {
        self.by_hash.retain(|_, v| {
            v.retain(|d| Rc::strong_count(d) > 1);
            !v.is_empty()
        });
        self.count = self.by_hash.values().map(Vec::len).sum();
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// One client's statement names.
#[derive(Debug, Default)]
pub struct ClientStatements {
    map: HashMap<Rc<[u8]>, Rc<StmtDef>>,
}

impl ClientStatements {
    pub fn get(&self, name: &[u8]) -> Option<&Rc<StmtDef>> {
        self.map.get(name)
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.map.contains_key(name)
    }

    pub fn insert(&mut self, name: Rc<[u8]>, def: Rc<StmtDef>) {
        self.map.insert(name, def);
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<Rc<StmtDef>> {
        self.map.remove(name)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The statements one server connection has prepared, with LRU eviction at
/// `cap` entries.
#[derive(Debug)]
pub struct ServerStatements {
    used: HashMap<u64, u64>,
    tick: u64,
    cap: usize,
}

impl ServerStatements {
    pub fn new(cap: usize) -> Self {
        ServerStatements { used: HashMap::new(), tick: 0, cap: cap.max(1) }
    }

    /// Whether `id` is prepared here; marks it used.
    pub fn touch(&mut self, id: u64) -> bool {
        self.tick += 1;
        match self.used.get_mut(&id) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records `id` as prepared. Returns the id evicted to stay within the
    /// cap: the caller closes it on the server.
    pub fn add(&mut self, id: u64) -> Option<u64> {
        self.tick += 1;
        let evicted = if self.used.len() >= self.cap && !self.used.contains_key(&id) {
            let (&old, _) = self.used.iter().min_by_key(|(_, &t)| t).expect("cap >= 1");
            self.used.remove(&old);
            Some(old)
        } else {
            None
        };
        self.used.insert(id, self.tick);
        evicted
    }

    /// Remembers `id` again without evicting anything (the server kept a
    /// statement the proxy tried to close): the cache may exceed its cap
    /// until the next eviction.
    pub fn keep(&mut self, id: u64) {
        self.tick += 1;
        self.used.insert(id, self.tick);
    }

    pub fn forget(&mut self, id: u64) {
        self.used.remove(&id);
    }

    pub fn clear(&mut self) {
        self.used.clear();
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

/// The server-side name of statement `id`.
pub fn server_name(id: u64) -> Vec<u8> {
    format!("{SERVER_NAME_PREFIX}{id}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_shares_a_definition() {
        let mut r = Registry::default();
        let a = r.intern(b"select $1", &[23]);
        let b = r.intern(b"select $1", &[23]);
        let c = r.intern(b"select $1", &[25]);
        assert!(Rc::ptr_eq(&a, &b));
        assert_ne!(a.id, c.id);
        assert_eq!(&*a.server_name, format!("__pgw_{}", a.id).as_bytes());
    }

    #[test]
    fn server_cache_evicts_least_recently_used() {
        let mut s = ServerStatements::new(2);
        assert_eq!(s.add(1), None);
        assert_eq!(s.add(2), None);
        assert!(s.touch(1));
        assert_eq!(s.add(3), Some(2));
        assert!(!s.touch(2));
        assert!(s.touch(1) && s.touch(3));
    }

    #[test]
    fn unused_definitions_are_collected() {
        let mut r = Registry::default();
        let keep = r.intern(b"keep", &[]);
        drop(r.intern(b"drop", &[]));
        r.collect_unused();
        assert_eq!(r.len(), 1);
        assert!(Rc::ptr_eq(&keep, &r.intern(b"keep", &[])));
    }
}
