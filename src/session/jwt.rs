//! JWT logins at run time: the key set and rules shared by all shards, and
//! each shard's cache of tokens it already verified.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use arc_swap::ArcSwap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::auth::jwt::{self, JwtError, KeySet, Policy, RoleRules, Verified, VerifyingKey};
use crate::config::{Config, Jwt};

/// Tokens a shard remembers as verified (a reconnect with the same token
/// skips the signature check).
pub const TOKEN_CACHE_ENTRIES: usize = 10_000;

/// The current key set, published by the control thread (read-copy
/// update): a shard reads one atomic version per login and, when it changed,
/// loads the new set without a lock (`ArcSwap`).
pub struct KeyStore {
    version: AtomicU64,
    current: ArcSwap<KeySet>,
    /// Keys from public_key_file and jwks_file, always part of the set.
    pub static_keys: Vec<VerifyingKey>,
    /// Whether a jwks_url exists (only then can a refresh help).
    pub has_url: bool,
    /// Milliseconds since the epoch before which no forced refresh starts.
    next_forced_ms: AtomicU64,
    cooldown_ms: u64,
    /// A forced refresh was asked for and has not finished.
    pub in_flight: AtomicBool,
    /// Fetch attempts finished (successful or not).
    pub attempts: AtomicU64,
    pub failures: AtomicU64,
    wake: (Mutex<bool>, Condvar),
}

impl KeyStore {
    pub fn new(static_keys: Vec<VerifyingKey>, has_url: bool, cooldown_secs: u64) -> KeyStore {
        let (set, _) = KeySet::new(static_keys.clone());
        KeyStore {
            version: AtomicU64::new(1),
            current: ArcSwap::from_pointee(set),
            static_keys,
            has_url,
            next_forced_ms: AtomicU64::new(0),
            cooldown_ms: cooldown_secs * 1000,
            in_flight: AtomicBool::new(false),
            attempts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            wake: (Mutex::new(false), Condvar::new()),
        }
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn load(&self) -> Arc<KeySet> {
        self.current.load_full()
    }

    /// Replaces the key set (control thread).
    pub fn publish(&self, keys: KeySet) {
        self.current.store(Arc::new(keys));
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Asks the control thread for a refresh because a token named an
    /// unknown kid: at most one per cooldown, however many logins ask.
    /// Returns whether a refresh is running or starting (worth waiting for).
    pub fn request_refresh(&self) -> bool {
        if !self.has_url {
            return false;
        }
        if self.in_flight.load(Ordering::Acquire) {
            return true;
        }
        let now = now_ms();
        if now < self.next_forced_ms.load(Ordering::Acquire) {
            return false;
        }
        // One caller wins the right to start it; the others wait for it.
        if self.in_flight.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return true;
        }
        if now < self.next_forced_ms.load(Ordering::Acquire) {
            // A refresh finished between our two looks: the cooldown holds.
            self.in_flight.store(false, Ordering::Release);
            return false;
        }
        self.next_forced_ms.store(now + self.cooldown_ms, Ordering::Release);
        let (lock, cv) = &self.wake;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
        true
    }

    /// Control thread: waits up to `timeout` for a forced refresh request;
    /// returns whether one came.
    pub fn wait_for_request(&self, timeout: std::time::Duration) -> bool {
        let (lock, cv) = &self.wake;
        let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (mut guard, _) =
            cv.wait_timeout_while(guard, timeout, |asked| !*asked).unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *guard, false)
    }

    /// Control thread: a fetch attempt finished.
    pub fn attempt_done(&self, ok: bool) {
        if !ok {
            self.failures.fetch_add(1, Ordering::AcqRel);
        }
        self.in_flight.store(false, Ordering::Release);
        self.attempts.fetch_add(1, Ordering::AcqRel);
    }

    /// Wakes the control thread (at shutdown).
    pub fn wake(&self) {
        let (lock, cv) = &self.wake;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }
}

/// Milliseconds on a monotonic clock (a wall-clock step must not block or
/// unblock forced refreshes).
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1
}

/// What every shard reads to check a token.
pub struct JwtRuntime {
    pub store: Arc<KeyStore>,
    pub policy: Policy,
    pub rules: RoleRules,
}

impl JwtRuntime {
    /// Loads the keys the configuration names; every file problem is an
    /// error naming the key and path.
    pub fn new(config: &Config, jwt: &Jwt) -> Result<JwtRuntime, String> {
        let mut keys: Vec<VerifyingKey> = Vec::new();
        for path in &jwt.public_key_files {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("jwt.public_key_file: cannot read {}: {e}", path.display()))?;
            let loaded = VerifyingKey::from_pem(&text)
                .map_err(|e| format!("jwt.public_key_file: {}: {e}", path.display()))?;
            keys.extend(loaded);
        }
        if let Some(path) = &jwt.jwks_file {
            let body = std::fs::read(path)
                .map_err(|e| format!("jwt.jwks_file: cannot read {}: {e}", path.display()))?;
            let (loaded, skipped) =
                jwt::parse_jwks(&body).map_err(|e| format!("jwt.jwks_file: {}: {e}", path.display()))?;
            for s in &skipped {
                log::warn!("jwt.jwks_file {}: skipped {s}", path.display());
            }
            if loaded.is_empty() {
                return Err(format!("jwt.jwks_file: {} holds no usable signing key", path.display()));
            }
            keys.extend(loaded);
        }
        let (_, dropped) = KeySet::new(keys.clone());
        if dropped > 0 {
            log::warn!("jwt: {dropped} keys dropped (duplicate kid, or more than {})", jwt::keys::MAX_KEYS);
        }
        let mut forbidden: std::collections::HashSet<String> =
            config.users.iter().flat_map(|u| [u.name.clone(), u.server_user.clone()]).collect();
        forbidden.extend(jwt.server_user.clone());
        Ok(JwtRuntime {
            store: Arc::new(KeyStore::new(keys, jwt.jwks_url.is_some(), jwt.jwks_refresh_cooldown_secs)),
            policy: Policy {
                algorithms: jwt.algorithms.clone(),
                issuers: jwt.issuers.clone(),
                audiences: jwt.audiences.clone(),
                leeway_secs: jwt.leeway_secs,
            },
            rules: RoleRules {
                username_claim: jwt.username_claim.clone(),
                role_map: jwt.role_map.iter().cloned().collect(),
                allowed_roles: jwt.allowed_roles.clone(),
                forbidden,
            },
        })
    }

    /// Validates `token` now against `keys`, through the shard's cache.
    pub fn validate(
        &self,
        cache: &mut TokenCache,
        keys: &Arc<KeySet>,
        token: &[u8],
    ) -> Result<Rc<Verified>, JwtError> {
        let now = now_secs();
        let digest = token_digest(token);
        if let Some(v) = cache.get(&digest, keys, now) {
            return Ok(v);
        }
        let verified = Rc::new(jwt::validate(token, keys, &self.policy, now)?);
        cache.insert(digest, verified.clone(), keys, now);
        Ok(verified)
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn token_digest(token: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// One shard's verified tokens, keyed by SHA-256 of the token. Entries go at
/// `exp` (plus leeway is not granted again: the cached answer only stands
/// while `now < exp`), and all of them when the key set changes.
#[derive(Default)]
pub struct TokenCache {
    entries: HashMap<[u8; 32], Rc<Verified>>,
    /// The key set the entries were verified against.
    keys: Option<Arc<KeySet>>,
}

impl TokenCache {
    fn check_keys(&mut self, keys: &Arc<KeySet>) {
        if !self.keys.as_ref().is_some_and(|k| Arc::ptr_eq(k, keys)) {
            self.entries.clear();
            self.keys = Some(keys.clone());
        }
    }

    fn get(&mut self, digest: &[u8; 32], keys: &Arc<KeySet>, now: u64) -> Option<Rc<Verified>> {
        self.check_keys(keys);
        let v = self.entries.get(digest)?;
        if now >= v.exp {
            self.entries.remove(digest);
            return None;
        }
        Some(v.clone())
    }

    fn insert(&mut self, digest: [u8; 32], v: Rc<Verified>, keys: &Arc<KeySet>, now: u64) {
        self.check_keys(keys);
        if self.entries.len() >= TOKEN_CACHE_ENTRIES {
            self.entries.retain(|_, v| now < v.exp);
            if self.entries.len() >= TOKEN_CACHE_ENTRIES {
                if let Some(k) = self.entries.keys().next().copied() {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(digest, v);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_refreshes_respect_the_cooldown() {
        let store = KeyStore::new(Vec::new(), true, 60);
        assert!(store.request_refresh(), "the first request starts a refresh");
        assert!(store.request_refresh(), "later ones wait for the one in flight");
        assert!(store.wait_for_request(std::time::Duration::from_millis(1)));
        store.attempt_done(true);
        assert!(!store.request_refresh(), "within the cooldown: no new refresh");
        let no_url = KeyStore::new(Vec::new(), false, 60);
        assert!(!no_url.request_refresh());
    }
}
