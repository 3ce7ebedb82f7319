//! State a session reaches: [`Shared`] across shards (immutable after
//! start-up except for atomics and login-path mutexes) and [`ShardCtx`],
//! owned by one shard and never touched by another thread.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::auth::{ScramCredential, ScramSecret, Secret};
use crate::config::{Config, PoolMode};
use crate::pool::{Checkout, PoolShared, PoolSlice};
use crate::route::cluster::{now_ms, Cluster, Host, PickState, Want};
use crate::session::cancel::CancelRegistry;
use crate::session::prepared::Registry;
use crate::session::server::{ServerConn, ServerLogin};
use crate::session::SessionError;

/// How often a waiting client re-checks the pool besides being woken (a
/// connection may have been freed on another shard).
const POOL_RECHECK: Duration = Duration::from_millis(10);

/// Idle time after which a pooled connection is checked for a closed
/// socket before it is lent out.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(5);

/// Statements whose grammar verdict a shard keeps.
pub const GRAMMAR_CACHE_ENTRIES: usize = 4096;

/// Which refusal a statement's grammar check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    RoleChange,
    Write,
}

/// What a pool is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PoolKey {
    /// A `[[users]]` entry and a database.
    User { user: String, database: String },
    /// A JWT role, a database, and whether its sessions are read-only.
    JwtRole { role: String, database: String, read_only: bool },
}

/// One pool: a (user or JWT role, database, host) triple. The pools of
/// one (user, database) pair sit at consecutive indexes, one per host of
/// the database's cluster, in `[[databases]]` order: the first index is the
/// pair's (a session's `pool`), host `h`'s pool is that plus `h`.
#[derive(Debug)]
pub struct PoolDef {
    /// The user, or the JWT role, for messages and logs.
    pub user: String,
    pub database: String,
    pub mode: PoolMode,
    pub shared: Arc<PoolShared>,
    pub login: ServerLogin,
    /// Made by `jwt.auto_provision` (counted against `max_auto_pools`).
    pub auto: bool,
    /// Clients logged in with this pool, across shards (on the pair's
    /// first pool only).
    pub sessions: AtomicUsize,
    /// The database's hosts, and which one this pool connects to.
    pub cluster: Arc<Cluster>,
    pub host: usize,
}

/// Every pool, static and provisioned. Only logins and a new server
/// connection read it (shards keep their own copy of the definitions they
/// use); pools are added, never removed or changed.
#[derive(Default)]
pub struct PoolTable {
    inner: RwLock<PoolTableInner>,
}

#[derive(Default)]
struct PoolTableInner {
    defs: Vec<Arc<PoolDef>>,
    index: HashMap<PoolKey, usize>,
    /// Pools made by `jwt.auto_provision`.
    auto: usize,
}

impl PoolTableInner {
    /// Forgets auto-provisioned pools with no client and no server
    /// connection left (idle connections go at `server_idle_timeout_ms`),
    /// so that new roles find room under `max_auto_pools`. A forgotten
    /// pool's slot stays in `defs` (indexes are never reused): a login that
    /// looked it up just before still works with it.
    fn reap_auto(&mut self) {
        let defs = &self.defs;
        let before = self.index.len();
        self.index.retain(|_, &mut idx| {
            let d = &defs[idx];
            let hosts = &defs[idx..idx + d.cluster.hosts.len()];
            !(d.auto && d.sessions.load(Ordering::Acquire) == 0 && hosts.iter().all(|h| h.shared.open() == 0))
        });
        let reaped = before - self.index.len();
        if reaped > 0 {
            self.auto -= reaped;
            log::info!("reaped {reaped} idle auto-provisioned pools");
        }
    }
}

impl PoolTable {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, PoolTableInner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the pools of one (user, database) pair, one per host.
    fn add(&self, key: PoolKey, hosts: usize, make: impl FnMut(usize) -> PoolDef) -> usize {
        let mut t = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let idx = t.defs.len();
        t.defs.extend((0..hosts).map(make).map(Arc::new));
        t.index.insert(key, idx);
        idx
    }

    pub fn lookup(&self, key: &PoolKey) -> Option<usize> {
        self.read().index.get(key).copied()
    }

    pub fn get(&self, idx: usize) -> Option<Arc<PoolDef>> {
        self.read().defs.get(idx).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().defs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pools for `key` (one per host), made by `make` if they do not
    /// exist yet; `auto` pools count (once per key) against `max_auto`.
    pub fn provision(
        &self,
        key: PoolKey,
        auto: bool,
        max_auto: usize,
        hosts: usize,
        make: impl FnMut(usize) -> PoolDef,
    ) -> Result<usize, String> {
        let mut t = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if let Some(&idx) = t.index.get(&key) {
            return Ok(idx);
        }
        if auto {
            if t.auto >= max_auto {
                t.reap_auto();
            }
            if t.auto >= max_auto {
                return Err(format!(
                    "no pool can be provisioned: max_auto_pools ({max_auto}) pools exist already; \
                     raise jwt.max_auto_pools or list the role under [[jwt.roles]]"
                ));
            }
            t.auto += 1;
        }
        let idx = t.defs.len();
        t.defs.extend((0..hosts).map(make).map(Arc::new));
        t.index.insert(key, idx);
        Ok(idx)
    }
}

/// Process-wide state, shared by all shards.
pub struct Shared {
    pub config: Arc<Config>,
    pub pools: PoolTable,
    /// Databases by the name clients use: their hosts, health and roles.
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// JWT keys and rules, when `[jwt]` is configured.
    pub jwt: Option<crate::session::jwt::JwtRuntime>,
    /// TLS for clients, unless `[tls]` is absent or `client_tls = "disabled"`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Server addresses, indexed by `ServerLogin::target`.
    pub targets: Vec<crate::net::ServerAddr>,
    pub cancel: CancelRegistry,
    pub shutdown: AtomicBool,
    /// The authenticator's INHERIT/ownership warning was logged.
    pub authenticator_warned: AtomicBool,
    /// SCRAM keys recovered from client logins, for users whose server
    /// password is configured only as a SCRAM secret.
    pub scram_keys: Mutex<HashMap<String, ScramCredential>>,
    /// SCRAM secrets derived once at start-up for users configured with a
    /// plaintext password (PBKDF2 costs milliseconds: never per login).
    pub scram_for_plain: HashMap<String, ScramSecret>,
    pub shards: usize,
}

impl Shared {
    /// Builds pools for every (user, database) pair of the config.
    pub fn new(config: Arc<Config>, shards: usize) -> Result<Shared, String> {
        let mut targets: Vec<crate::net::ServerAddr> = Vec::new();
        let pools = PoolTable::default();
        let g = &config.general;
        let mut hosts: Vec<(String, Host)> = Vec::new();
        for db in &config.databases {
            let addr = crate::net::resolve(&db.host, db.port)
                .map_err(|e| format!("databases: cannot resolve {}:{}: {e}", db.host, db.port))?;
            let target = match targets.iter().position(|t| *t == addr) {
                Some(i) => i,
                None => {
                    targets.push(addr.clone());
                    targets.len() - 1
                }
            } as u32;
            let label = match &addr {
                crate::net::ServerAddr::Unix(path) => path.display().to_string(),
                crate::net::ServerAddr::Tcp(_) => format!("{}:{}", db.host, db.port),
            };
            hosts.push((db.name.clone(), Host::new(addr, target, db.database_name.clone(), db.role, label)));
        }
        let mut clusters: HashMap<String, Arc<Cluster>> = HashMap::new();
        for db in &config.databases {
            if clusters.contains_key(&db.name) {
                continue;
            }
            let mine = hosts.iter().filter(|(n, _)| *n == db.name).count();
            let mut members = Vec::with_capacity(mine);
            let mut rest = Vec::with_capacity(hosts.len() - mine);
            for (n, h) in hosts.drain(..) {
                if n == db.name {
                    members.push(h);
                } else {
                    rest.push((n, h));
                }
            }
            hosts = rest;
            clusters.insert(db.name.clone(), Arc::new(Cluster { name: db.name.clone(), hosts: members }));
        }
        let mut names: Vec<&String> = clusters.keys().collect();
        names.sort_by_key(|n| config.databases.iter().position(|d| &d.name == *n));
        for name in names {
            let cluster = &clusters[name];
            for user in &config.users {
                let password =
                    user.server_password.as_deref().or(user.password.as_deref()).map(Secret::parse);
                let make = |h: usize| {
                    let host = &cluster.hosts[h];
                    PoolDef {
                        user: user.name.clone(),
                        database: name.clone(),
                        mode: config.pool_mode(user),
                        shared: Arc::new(PoolShared::new(config.pool_size(user), shards)),
                        login: ServerLogin {
                            addr: host.addr.clone(),
                            target: host.target,
                            database: host.database_name.clone(),
                            user: user.server_user.clone(),
                            password: password.clone(),
                            role: None,
                            read_only: user.read_only,
                            scram_keys: None,
                            connect_timeout: Duration::from_millis(g.server_connect_timeout_ms),
                        },
                        auto: false,
                        sessions: AtomicUsize::new(0),
                        cluster: cluster.clone(),
                        host: h,
                    }
                };
                pools.add(
                    PoolKey::User { user: user.name.clone(), database: name.clone() },
                    cluster.hosts.len(),
                    make,
                );
            }
        }
        let jwt = match &config.jwt {
            Some(j) => Some(crate::session::jwt::JwtRuntime::new(&config, j)?),
            None => None,
        };
        let tls = match &config.tls {
            Some(t) if t.client_tls != crate::config::ClientTls::Disabled => {
                Some(crate::net::tls::server_config(&t.cert_file, &t.key_file)?)
            }
            _ => None,
        };
        let mut scram_for_plain = HashMap::new();
        for user in &config.users {
            if let Some(Secret::Plain(p)) = user.password.as_deref().map(Secret::parse) {
                let s = ScramSecret::for_plain(&p).map_err(|e| format!("users: {}: {e}", user.name))?;
                scram_for_plain.insert(user.name.clone(), s);
            }
        }
        Ok(Shared {
            scram_for_plain,
            config,
            pools,
            clusters,
            jwt,
            tls,
            targets,
            cancel: CancelRegistry::new(shards),
            shutdown: AtomicBool::new(false),
            authenticator_warned: AtomicBool::new(false),
            scram_keys: Mutex::new(HashMap::new()),
            shards,
        })
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// The pool of JWT `role` on `database`, provisioned on first use when
    /// the role is listed under `[[jwt.roles]]` or `auto_provision` is on.
    pub fn jwt_pool(&self, role: &str, database: &str, read_only: bool) -> Result<usize, SessionError> {
        let key = PoolKey::JwtRole { role: role.to_owned(), database: database.to_owned(), read_only };
        if let Some(idx) = self.pools.lookup(&key) {
            return Ok(idx);
        }
        let jwt = self.config.jwt.as_ref().ok_or_else(|| SessionError::Refused {
            sqlstate: "28000",
            message: "JWT logins are not configured".into(),
        })?;
        let cluster = self.clusters.get(database).ok_or_else(|| SessionError::Refused {
            sqlstate: "3D000",
            message: format!("database \"{database}\" does not exist"),
        })?;
        let listed = jwt.role(role);
        if listed.is_none() && !jwt.auto_provision {
            return Err(SessionError::Refused {
                sqlstate: "28000",
                message: format!(
                    "role \"{role}\" is not allowed: it is not listed under [[jwt.roles]] and \
                     jwt.auto_provision is off"
                ),
            });
        }
        let g = &self.config.general;
        let (server_user, role_param) = match jwt.identity {
            crate::config::Identity::SetRole => {
                (jwt.server_user.clone().unwrap_or_default(), Some(role.to_owned()))
            }
            crate::config::Identity::Login => (role.to_owned(), None),
        };
        let size = listed.and_then(|r| r.pool_size).unwrap_or(jwt.auto_provision_pool_size);
        let mode = listed.and_then(|r| r.pool_mode).unwrap_or(g.pool_mode);
        let make = |h: usize| {
            let host = &cluster.hosts[h];
            PoolDef {
                user: role.to_owned(),
                database: database.to_owned(),
                mode,
                shared: Arc::new(PoolShared::new(size, self.shards)),
                login: ServerLogin {
                    addr: host.addr.clone(),
                    target: host.target,
                    database: host.database_name.clone(),
                    user: server_user.clone(),
                    password: jwt.server_password.as_deref().map(Secret::parse),
                    role: role_param.clone(),
                    read_only,
                    scram_keys: None,
                    connect_timeout: Duration::from_millis(g.server_connect_timeout_ms),
                },
                auto: listed.is_none(),
                sessions: AtomicUsize::new(0),
                cluster: cluster.clone(),
                host: h,
            }
        };
        let idx = self
            .pools
            .provision(key, listed.is_none(), jwt.max_auto_pools as usize, cluster.hosts.len(), make)
            .map_err(|message| SessionError::Refused { sqlstate: "53300", message })?;
        if listed.is_none() {
            log::info!(
                "provisioned a pool for JWT role \"{role}\" on database \"{database}\" (pool_size {size})"
            );
        }
        Ok(idx)
    }
}

/// One shard's state. Lives in an `Rc`; never crosses threads.
pub struct ShardCtx {
    pub id: usize,
    pub shared: Arc<Shared>,
    /// This shard's copy of the pool definitions it has used.
    defs: RefCell<Vec<Option<Arc<PoolDef>>>>,
    slices: RefCell<Vec<Option<PoolSlice<Box<ServerConn>>>>>,
    /// Tokens this shard verified.
    pub tokens: RefCell<crate::session::jwt::TokenCache>,
    /// Verdicts of the grammar check on statements the lexer flagged, by
    /// statement text (see [`ShardCtx::grammar_clears`]).
    grammar: RefCell<HashMap<(Check, [u8; 32]), bool>>,
    /// This shard's reference to the published key set, with its version.
    keys: RefCell<Option<(u64, Arc<crate::auth::jwt::KeySet>)>>,
    pub registry: RefCell<Registry>,
    waiters: RefCell<HashMap<u64, Option<Waker>>>,
    woken: RefCell<HashSet<u64>>,
    next_id: Cell<u64>,
    pub cancel_counter: Cell<u32>,
    /// Load-balancing state among replicas.
    pick: RefCell<PickState>,
    shutdown_wakers: RefCell<HashMap<u64, Waker>>,
    pub clients: Cell<usize>,
}

impl ShardCtx {
    pub fn new(id: usize, shared: Arc<Shared>) -> Rc<ShardCtx> {
        let n = shared.pools.len();
        Rc::new(ShardCtx {
            id,
            shared,
            defs: RefCell::new((0..n).map(|_| None).collect()),
            slices: RefCell::new((0..n).map(|_| None).collect()),
            tokens: RefCell::new(Default::default()),
            keys: RefCell::new(None),
            grammar: RefCell::new(HashMap::new()),
            registry: RefCell::new(Registry::default()),
            waiters: RefCell::new(HashMap::new()),
            woken: RefCell::new(HashSet::new()),
            next_id: Cell::new(0),
            cancel_counter: Cell::new(0),
            pick: RefCell::new(PickState::new(id as u64 * 0x9e37_79b9_7f4a_7c15 + 1)),
            shutdown_wakers: RefCell::new(HashMap::new()),
            clients: Cell::new(0),
        })
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.set(self.next_id.get() + 1);
        self.next_id.get()
    }

    /// Whether the real grammar clears a statement the lexer flagged for
    /// `check` (see `sql::grammar`). Parsing costs microseconds, so verdicts
    /// are kept per shard by statement text, at most
    /// [`GRAMMAR_CACHE_ENTRIES`] (then the cache starts over).
    pub fn grammar_clears(&self, check: Check, text: &[u8]) -> bool {
        // SHA-256, not a fast hash: a collision with a cleared text would
        // clear a statement that was never checked.
        let digest = ring::digest::digest(&ring::digest::SHA256, text);
        let key = (check, <[u8; 32]>::try_from(digest.as_ref()).expect("SHA-256 is 32 bytes"));
        if let Some(&v) = self.grammar.borrow().get(&key) {
            return v;
        }
        let verdict = std::str::from_utf8(text).is_ok_and(|t| match check {
            Check::RoleChange => crate::sql::grammar::role_change_cleared(t),
            Check::Write => crate::sql::grammar::write_cleared(t),
        });
        let mut cache = self.grammar.borrow_mut();
        if cache.len() >= GRAMMAR_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, verdict);
        verdict
    }

    /// The current JWT key set: one atomic load, and a lock-free load of the
    /// new set when the control thread published one since the last call.
    pub fn jwt_keys(&self) -> Option<Arc<crate::auth::jwt::KeySet>> {
        let store = &self.shared.jwt.as_ref()?.store;
        let version = store.version();
        let mut cached = self.keys.borrow_mut();
        match cached.as_ref() {
            Some((v, keys)) if *v == version => Some(keys.clone()),
            _ => {
                let keys = store.load();
                *cached = Some((version, keys.clone()));
                Some(keys)
            }
        }
    }

    /// A client logged in with pool `idx` (counted until [`Self::session_ended`]).
    pub fn session_started(&self, idx: usize) {
        self.def(idx).sessions.fetch_add(1, Ordering::AcqRel);
    }

    pub fn session_ended(&self, idx: usize) {
        self.def(idx).sessions.fetch_sub(1, Ordering::AcqRel);
    }

    /// The definition of pool `idx` (a valid index from the pool table).
    pub fn def(&self, idx: usize) -> Arc<PoolDef> {
        let mut defs = self.defs.borrow_mut();
        if defs.len() <= idx {
            defs.resize_with(idx + 1, || None);
        }
        defs[idx]
            .get_or_insert_with(|| self.shared.pools.get(idx).expect("pool indexes come from the pool table"))
            .clone()
    }

    /// Runs `f` on this shard's slice of pool `idx`, creating it lazily.
    pub fn with_slice<R>(&self, idx: usize, f: impl FnOnce(&mut PoolSlice<Box<ServerConn>>) -> R) -> R {
        let mut slices = self.slices.borrow_mut();
        if slices.len() <= idx {
            slices.resize_with(idx + 1, || None);
        }
        let slot = &mut slices[idx];
        let slice = match slot {
            Some(s) => s,
            None => slot.insert(PoolSlice::new(self.def(idx).shared.clone())),
        };
        f(slice)
    }

    /// The host of pool pair `base`'s database for a transaction that
    /// wants `want` (always 0 for a single-host database).
    pub fn choose_host(&self, base: usize, want: Want) -> Result<usize, SessionError> {
        let def = self.def(base);
        let cluster = &def.cluster;
        if cluster.single() {
            return Ok(0);
        }
        let lent =
            |h: usize| self.with_slice(base + h, |s| (s.open_here() as usize).saturating_sub(s.idle_count()));
        let g = &self.shared.config.general;
        let mut pick = self.pick.borrow_mut();
        cluster.choose(want, g, &mut pick, lent).map_err(|no| SessionError::Refused {
            sqlstate: "57P03",
            message: cluster.no_host_message(no, want),
        })
    }

    /// A server connection of pool pair `base` on the host routing picks
    /// for `want`. A host that cannot be connected to is banned (see
    /// [`Self::open`]) and the next candidate is tried. Returns the host.
    pub async fn checkout_routed(
        &self,
        base: usize,
        want: Want,
    ) -> Result<(usize, Box<ServerConn>), SessionError> {
        let hosts = self.def(base).cluster.hosts.len();
        let mut tries = 0;
        loop {
            let host = self.choose_host(base, want)?;
            match self.checkout(base + host).await {
                Ok(c) => return Ok((host, c)),
                Err(e) if hosts > 1 && tries + 1 < hosts && host_failure(&e) => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Gets a server connection from pool `idx` within the checkout timeout.
    /// Safe to cancel (drop) at any await: the wait queue and the pool's
    /// budget are restored by guards.
    pub async fn checkout(&self, idx: usize) -> Result<Box<ServerConn>, SessionError> {
        let timeout = Duration::from_millis(self.shared.config.general.checkout_timeout_ms);
        // The clock is read only if the checkout has to wait.
        let mut deadline: Option<Instant> = None;
        let guard = WaiterGuard { ctx: self, idx, id: self.next_id() };
        let id = guard.id;
        loop {
            match self.with_slice(idx, |s| s.checkout(id)) {
                Checkout::Idle(conn) => {
                    // Several connections may have come back while this
                    // waiter was waking up: pass the turn on.
                    self.wake_next_if_available(idx);
                    match self.usable(conn) {
                        Some(conn) => return Ok(conn),
                        None => {
                            self.with_slice(idx, |s| s.closed());
                            continue;
                        }
                    }
                }
                Checkout::Open => {
                    self.wake_next_if_available(idx);
                    // Boxed: opening a connection (connect, server login)
                    // is a large state machine that every checkout future,
                    // and so every login and relay future, would otherwise
                    // carry inline and copy, for a path taken rarely.
                    return Box::pin(self.open(idx)).await;
                }
                Checkout::Wait => {
                    let now = Instant::now();
                    let deadline = *deadline.get_or_insert(now + timeout);
                    if now >= deadline {
                        drop(guard);
                        let p = self.def(idx);
                        return Err(SessionError::PoolExhausted {
                            user: p.user.clone(),
                            database: p.database.clone(),
                            waited_ms: timeout.as_millis() as u64,
                            pool_size: p.shared.cap(),
                        });
                    }
                    let wait = POOL_RECHECK.min(deadline - now);
                    crate::net::timeout(wait, WaitWake { ctx: self, id }).await;
                }
            }
        }
    }

    /// Drops a pooled connection whose socket closed while idle.
    fn usable(&self, conn: Box<ServerConn>) -> Option<Box<ServerConn>> {
        if conn.idle_since.elapsed() < IDLE_CHECK_AFTER {
            return Some(conn);
        }
        match conn.rd.as_ref().map(crate::net::peer_closed) {
            Some(false) => Some(conn),
            _ => None,
        }
    }

    async fn open(&self, idx: usize) -> Result<Box<ServerConn>, SessionError> {
        let def = self.def(idx);
        let mut login = def.login.clone();
        if matches!(login.password, Some(Secret::Scram(_))) {
            login.scram_keys =
                self.shared.scram_keys.lock().unwrap_or_else(|p| p.into_inner()).get(&def.user).cloned();
        }
        let cache = self.shared.config.general.prepared_statements_cache_size.max(1) as usize;
        // Gives the budget back if this future is dropped mid-connect.
        let mut lease = LeaseGuard { ctx: self, idx, armed: true };
        let mut res = ServerConn::connect(&login, cache).await;
        if let (Ok(conn), Some(_)) = (res.as_mut(), login.role.as_ref()) {
            if let Err(e) = self.check_authenticator(conn, &login.user).await {
                res = Err(e);
            }
        }
        lease.armed = false;
        match res {
            Ok(c) => {
                log::debug!(
                    "shard {}: opened server connection to {} for pool {}/{}",
                    self.id,
                    login.addr,
                    def.user,
                    def.database
                );
                Ok(Box::new(c))
            }
            Err(e) => {
                self.with_slice(idx, |s| s.open_failed());
                self.wake_first(idx);
                let cluster = &def.cluster;
                if !cluster.single() && host_failure(&e) {
                    let ban = Duration::from_millis(self.shared.config.general.ban_time_ms);
                    let host = &cluster.hosts[def.host];
                    if host.ban(now_ms(), ban) {
                        log::warn!(
                            "shard {}: banned host {} of database \"{}\" for {} ms: {e}",
                            self.id,
                            host.label,
                            cluster.name,
                            ban.as_millis()
                        );
                    }
                }
                Err(e)
            }
        }
    }

    async fn check_authenticator(&self, conn: &mut ServerConn, user: &str) -> Result<(), SessionError> {
        check_authenticator(&self.shared, conn, user).await
    }

    /// Returns a clean connection to pool `idx` and wakes the next waiter.
    pub fn release(&self, idx: usize, mut conn: Box<ServerConn>) {
        let lifetime = Duration::from_millis(self.shared.config.general.server_lifetime_ms);
        let now = Instant::now();
        let expired = conn.expired(now, lifetime) || self.shared.shutting_down();
        conn.idle_since = now;
        let closed = self.with_slice(idx, |s| s.release(conn, expired, now));
        drop(closed);
        self.wake_first(idx);
    }

    /// A lent-out connection is being closed (broken or unclean).
    pub fn discard(&self, idx: usize, conn: Box<ServerConn>) {
        drop(conn);
        self.with_slice(idx, |s| s.closed());
        self.wake_first(idx);
    }

    fn wake_next_if_available(&self, idx: usize) {
        let available = self.with_slice(idx, |s| s.idle_count() > 0 || s.shared().open() < s.shared().cap());
        if available {
            self.wake_first(idx);
        }
    }

    fn wake_first(&self, idx: usize) {
        if let Some(w) = self.with_slice(idx, |s| s.first_waiter()) {
            if self.woken.borrow().contains(&w) {
                return; // already woken, not yet run
            }
            self.woken.borrow_mut().insert(w);
            if let Some(Some(waker)) = self.waiters.borrow_mut().remove(&w) {
                waker.wake();
            }
        }
    }

    /// Closes idle connections past the idle timeout, or surplus while
    /// another shard starves. Called by the shard's maintenance task.
    pub fn reap(&self) {
        let idle = Duration::from_millis(self.shared.config.general.server_idle_timeout_ms);
        let now = Instant::now();
        let n = self.slices.borrow().len();
        for idx in 0..n {
            let closed = {
                let mut slices = self.slices.borrow_mut();
                match slices[idx].as_mut() {
                    Some(s) if self.shared.shutting_down() => s.drain(),
                    Some(s) => s.reap(now, idle),
                    None => Vec::new(),
                }
            };
            if !closed.is_empty() {
                log::debug!("shard {}: closed {} idle server connections", self.id, closed.len());
                self.wake_first(idx);
            }
        }
    }

    /// Signals every session of this shard that shutdown began.
    pub fn notify_shutdown(&self) {
        for (_, w) in self.shutdown_wakers.borrow_mut().drain() {
            w.wake();
        }
    }

    /// A future that completes when shutdown begins.
    pub fn shutdown_signal(&self) -> ShutdownSignal<'_> {
        ShutdownSignal { ctx: self, id: self.next_id(), registered: false }
    }
}

/// Removes a waiter from the pool's queue however its checkout ends.
struct WaiterGuard<'a> {
    ctx: &'a ShardCtx,
    idx: usize,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.ctx.with_slice(self.idx, |s| s.cancel_wait(self.id));
        // Most checkouts never wait: skip hashing into empty maps.
        if !self.ctx.waiters.borrow().is_empty() {
            self.ctx.waiters.borrow_mut().remove(&self.id);
        }
        let was_woken = !self.ctx.woken.borrow().is_empty() && self.ctx.woken.borrow_mut().remove(&self.id);
        if was_woken {
            // Woken for a connection it will not take: pass the turn on.
            self.ctx.wake_next_if_available(self.idx);
        }
    }
}

/// A server connection lent during login: discarded (budget returned) if
/// the login is abandoned before the connection is handed on.
pub struct Lease<'a> {
    ctx: &'a ShardCtx,
    idx: usize,
    conn: Option<Box<ServerConn>>,
}

impl<'a> Lease<'a> {
    pub fn new(ctx: &'a ShardCtx, idx: usize, conn: Box<ServerConn>) -> Self {
        Lease { ctx, idx, conn: Some(conn) }
    }

    pub fn conn(&mut self) -> &mut ServerConn {
        self.conn.as_mut().expect("lease holds its connection until taken")
    }

    /// Hands the connection on; the lease no longer guards it.
    pub fn take(mut self) -> Box<ServerConn> {
        self.conn.take().expect("lease holds its connection until taken")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.ctx.discard(self.idx, conn);
        }
    }
}

/// Gives back the budget of a connection being opened if the opening is
/// abandoned (its future dropped).
struct LeaseGuard<'a> {
    ctx: &'a ShardCtx,
    idx: usize,
    armed: bool,
}

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.ctx.with_slice(self.idx, |s| s.open_failed());
            self.ctx.wake_first(self.idx);
        }
    }
}

/// Waits until a release wakes waiter `id`.
struct WaitWake<'a> {
    ctx: &'a ShardCtx,
    id: u64,
}

impl Future for WaitWake<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.ctx.woken.borrow_mut().remove(&self.id) {
            return Poll::Ready(());
        }
        self.ctx.waiters.borrow_mut().insert(self.id, Some(cx.waker().clone()));
        Poll::Pending
    }
}

/// Completes when the shard begins shutting down.
pub struct ShutdownSignal<'a> {
    ctx: &'a ShardCtx,
    id: u64,
    registered: bool,
}

impl Drop for ShutdownSignal<'_> {
    fn drop(&mut self) {
        if self.registered {
            self.ctx.shutdown_wakers.borrow_mut().remove(&self.id);
        }
    }
}

impl Future for ShutdownSignal<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.ctx.shared.shutting_down() {
            return Poll::Ready(());
        }
        // The session task's waker never changes: register it once.
        if !self.registered {
            let id = self.id;
            self.ctx.shutdown_wakers.borrow_mut().insert(id, cx.waker().clone());
            self.registered = true;
        }
        Poll::Pending
    }
}

/// An error that says the host, not the request, failed: it could not be
/// reached, or it refused connections (starting up, shutting down, out of
/// connection slots). Such a host is banned; a login error is not a reason.
pub fn host_failure(e: &SessionError) -> bool {
    match e {
        SessionError::ServerUnavailable(_) | SessionError::ServerLost(_) => true,
        // 53300 is also a per-role or per-database connection limit: only
        // the server-wide one ("too many clients") says the host is full.
        SessionError::ServerRefused(pg) => {
            pg.code.starts_with("57P")
                || pg.code.starts_with("08")
                || (pg.code.starts_with("53") && pg.code != "53300")
                || (pg.code == "53300" && pg.message.contains("too many clients"))
        }
        _ => false,
    }
}

/// On a new `set_role` connection (and once at start-up): refuses a superuser authenticator
/// (unless `allow_superuser_server_user`), warns once if it has INHERIT
/// or owns objects. One query per new server connection, never per
/// transaction.
pub async fn check_authenticator(
    shared: &Shared,
    conn: &mut ServerConn,
    user: &str,
) -> Result<(), SessionError> {
    let sql = "SELECT r.rolsuper::text || ',' || r.rolinherit::text || ',' || \
               (SELECT count(*) FROM pg_catalog.pg_class c WHERE c.relowner = r.oid)::text \
               FROM pg_catalog.pg_roles r WHERE r.rolname = session_user";
    let value = match conn.query_value(sql).await? {
        Ok(Some(v)) => v,
        Ok(None) => String::new(),
        Err(e) => return Err(SessionError::ServerRefused(e)),
    };
    let mut parts = value.split(',');
    let (superuser, inherit, owned) =
        (parts.next() == Some("true"), parts.next() == Some("true"), parts.next());
    let allow = shared.config.jwt.as_ref().is_some_and(|j| j.allow_superuser_server_user);
    if superuser && !allow {
        log::error!(
            "jwt.server_user \"{user}\" is a superuser: refusing JWT logins through it (a superuser can \
             take any role); use a NOSUPERUSER authenticator, or set allow_superuser_server_user = true"
        );
        return Err(SessionError::Refused {
            sqlstate: "28000",
            message: "pgwarden refuses JWT logins: its server user is a superuser (see the pgwarden log)"
                .into(),
        });
    }
    let owns = owned.is_some_and(|n| n != "0");
    if (inherit || owns) && !shared.authenticator_warned.swap(true, Ordering::AcqRel) {
        log::warn!(
            "jwt.server_user \"{user}\"{}{}: make it NOINHERIT and let it own nothing, so that only the \
             token's role acts",
            if inherit { " has INHERIT" } else { "" },
            if owns { " owns objects" } else { "" }
        );
    }
    Ok(())
}
