//! From verified claims to a Postgres role: the identity claim, the role map,
//! the allowed roles, and the names a token may never become. Pure.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde_json::{Map, Value};

use super::validate::claim_at;

/// Longest identity or role, in bytes (Postgres's NAMEDATALEN - 1).
pub const MAX_ROLE_BYTES: usize = 63;

/// The rules, built once from the configuration.
#[derive(Debug, Clone, Default)]
pub struct RoleRules {
    pub username_claim: String,
    pub role_map: HashMap<String, String>,
    /// Exact names, or prefixes ending with `*`; empty: no restriction.
    pub allowed_roles: Vec<String>,
    /// Static users, their server roles, the authenticator: never a JWT role.
    pub forbidden: HashSet<String>,
}

/// Who a token says the client is, and the role it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub identity: String,
    pub role: String,
}

/// Why no role could be given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleError {
    MissingClaim(String),
    NotAString(String),
    BadIdentity { claim: String, why: &'static str },
    NotAllowed { role: String, why: &'static str },
}

impl fmt::Display for RoleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoleError::MissingClaim(c) => write!(f, "token has no {c:?} claim"),
            RoleError::NotAString(c) => write!(f, "claim {c:?} is not a string"),
            RoleError::BadIdentity { claim, why } => write!(f, "claim {claim:?} {why}"),
            RoleError::NotAllowed { role, why } => write!(f, "role \"{role}\" is not allowed: {why}"),
        }
    }
}

impl RoleRules {
    /// The identity from `claims` and the role it maps to.
    pub fn resolve(&self, claims: &Map<String, Value>) -> Result<Resolved, RoleError> {
        let claim = &self.username_claim;
        let identity = match claim_at(claims, claim) {
            None | Some(Value::Null) => return Err(RoleError::MissingClaim(claim.clone())),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(RoleError::NotAString(claim.clone())),
        };
        if let Some(why) = bad_name(&identity) {
            return Err(RoleError::BadIdentity { claim: claim.clone(), why });
        }
        let role = self.role_map.get(&identity).cloned().unwrap_or_else(|| identity.clone());
        self.check_role(&role)?;
        Ok(Resolved { identity, role })
    }

    /// Whether a token may become `role`.
    pub fn check_role(&self, role: &str) -> Result<(), RoleError> {
        let refuse = |why| Err(RoleError::NotAllowed { role: role.to_owned(), why });
        if bad_name(role).is_some() {
            return refuse("not a valid role name");
        }
        if role == "postgres" || role.starts_with("pg_") {
            return refuse("reserved role");
        }
        if self.forbidden.contains(role) {
            return refuse("it is a configured user or the server user");
        }
        if !self.allowed_roles.is_empty() && !self.allowed_roles.iter().any(|p| pattern_matches(p, role)) {
            return refuse("not in allowed_roles");
        }
        Ok(())
    }
}

fn bad_name(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("is empty")
    } else if s.len() > MAX_ROLE_BYTES {
        Some("is longer than 63 bytes")
    } else if s.contains('\0') {
        Some("contains a NUL character")
    } else {
        None
    }
}

/// Whether the claim at `path` holds one of `values`: as the whole string,
/// as one word of a space-separated string (an OAuth `scope`), or as an
/// element of an array.
pub fn claim_has_value(claims: &Map<String, Value>, path: &str, values: &[String]) -> bool {
    let hit = |s: &str| values.iter().any(|v| v == s);
    match claim_at(claims, path) {
        Some(Value::String(s)) => hit(s) || s.split_whitespace().any(hit),
        Some(Value::Array(items)) => items.iter().any(|i| i.as_str().is_some_and(hit)),
        _ => false,
    }
}

/// `app_*` matches names starting with `app_`; anything else matches itself.
pub fn pattern_matches(pattern: &str, role: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => role.starts_with(prefix),
        None => pattern == role,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rules() -> RoleRules {
        RoleRules {
            username_claim: "sub".into(),
            role_map: [("alice@example.com".to_string(), "analyst".to_string())].into(),
            allowed_roles: vec!["analyst".into(), "app_*".into()],
            forbidden: ["app_admin".to_string(), "authenticator".to_string()].into(),
        }
    }

    fn claims(v: serde_json::Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn maps_and_allows() {
        let r = rules();
        assert_eq!(
            r.resolve(&claims(json!({"sub": "alice@example.com"}))).unwrap(),
            Resolved { identity: "alice@example.com".into(), role: "analyst".into() }
        );
        assert_eq!(r.resolve(&claims(json!({"sub": "app_web"}))).unwrap().role, "app_web");
    }

    #[test]
    fn refuses_what_it_must() {
        let r = rules();
        let err = |v| r.resolve(&claims(v)).unwrap_err().to_string();
        assert_eq!(err(json!({})), "token has no \"sub\" claim");
        assert_eq!(err(json!({"sub": 7})), "claim \"sub\" is not a string");
        assert_eq!(err(json!({"sub": ["a"]})), "claim \"sub\" is not a string");
        assert_eq!(err(json!({"sub": ""})), "claim \"sub\" is empty");
        assert_eq!(err(json!({"sub": "x".repeat(64)})), "claim \"sub\" is longer than 63 bytes");
        assert_eq!(err(json!({"sub": "a\u{0}b"})), "claim \"sub\" contains a NUL character");
        assert_eq!(err(json!({"sub": "bob"})), "role \"bob\" is not allowed: not in allowed_roles");
        assert!(err(json!({"sub": "app_admin"})).contains("configured user"));
        let open = RoleRules { allowed_roles: vec![], ..rules() };
        assert!(open
            .resolve(&claims(json!({"sub": "postgres"})))
            .unwrap_err()
            .to_string()
            .contains("reserved"));
        assert!(open.resolve(&claims(json!({"sub": "pg_read_all_data"}))).is_err());
        assert!(open.resolve(&claims(json!({"sub": "authenticator"}))).is_err());
        assert_eq!(open.resolve(&claims(json!({"sub": "bob"}))).unwrap().role, "bob");
    }

    #[test]
    fn read_only_claims() {
        let values = vec!["read_only".to_string(), "db:read".to_string()];
        let yes = [
            json!({"scope": "openid db:read"}),
            json!({"scope": "read_only"}),
            json!({"scope": ["x", "db:read"]}),
        ];
        for c in yes {
            assert!(claim_has_value(&claims(c.clone()), "scope", &values), "{c}");
        }
        let no =
            [json!({"scope": "db:write"}), json!({"scope": 1}), json!({}), json!({"scope": ["db:readx"]})];
        for c in no {
            assert!(!claim_has_value(&claims(c.clone()), "scope", &values), "{c}");
        }
        let nested = claims(json!({"app": {"access": "read_only"}}));
        assert!(claim_has_value(&nested, "app.access", &values));
    }

    #[test]
    fn nested_claims() {
        let r = RoleRules { username_claim: "realm_access.role".into(), ..RoleRules::default() };
        let c = claims(json!({"sub": "x", "realm_access": {"role": "reporting"}}));
        assert_eq!(r.resolve(&c).unwrap().role, "reporting");
    }
}
