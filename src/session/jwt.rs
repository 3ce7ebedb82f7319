//! JWT logins at run time: the key set and rules shared by all shards, and
//! each shard's cache of tokens it already verified.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::auth::jwt::{self, JwtError, KeySet, Policy, RoleRules, Verified, VerifyingKey};
use crate::config::{Config, Jwt};

/// Tokens a shard remembers as verified (a reconnect with the same token
/// skips the signature check).
pub const TOKEN_CACHE_ENTRIES: usize = 10_000;

/// What every shard reads to check a token. Immutable once built.
pub struct JwtRuntime {
    pub keys: Arc<KeySet>,
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
        let (keys, dropped) = KeySet::new(keys);
        if dropped > 0 {
            log::warn!("jwt: {dropped} keys dropped (duplicate kid, or more than {})", jwt::keys::MAX_KEYS);
        }
        let mut forbidden: std::collections::HashSet<String> =
            config.users.iter().flat_map(|u| [u.name.clone(), u.server_user.clone()]).collect();
        forbidden.extend(jwt.server_user.clone());
        Ok(JwtRuntime {
            keys: Arc::new(keys),
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

    /// Validates `token` now, through the shard's cache.
    pub fn validate(&self, cache: &mut TokenCache, token: &[u8]) -> Result<Rc<Verified>, JwtError> {
        let now = now_secs();
        let digest = token_digest(token);
        if let Some(v) = cache.get(&digest, &self.keys, now) {
            return Ok(v);
        }
        let verified = Rc::new(jwt::validate(token, &self.keys, &self.policy, now)?);
        cache.insert(digest, verified.clone(), &self.keys, now);
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
