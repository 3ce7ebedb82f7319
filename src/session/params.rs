//! Session parameters a client asked for (startup packet, `options`, and
//! reported changes), and the SQL that makes a server connection match
//! them. Pure.
//!
//! In transaction mode consecutive transactions of one client run on
//! different server connections; each checkout compares a 64-bit digest of
//! the client's set with the one the server last applied and only issues
//! `SET`/`RESET` when they differ.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

/// Startup parameters that are not session settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Settings a client may not choose at startup through the proxy: they
/// would change who the session acts as.
const REFUSED: &[&str] = &["role", "session_authorization"];

/// A client's wanted settings, names lower-cased, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamSet {
    pairs: Vec<(String, String)>,
    digest: u64,
}

/// Why a startup parameter was refused (becomes a FATAL to the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError(pub String);

impl ParamSet {
    /// Builds the set from startup parameters, expanding `options`
    /// (`-c name=value` and `--name=value`, backslash-escaped spaces).
    pub fn from_startup(params: &[(&str, &str)]) -> Result<ParamSet, ParamError> {
        let mut set = ParamSet::default();
        for (k, v) in params {
            let k = k.to_ascii_lowercase();
            if k == "options" {
                for (name, value) in parse_options(v)? {
                    set.insert(&name, &value)?;
                }
            } else if k == "replication" {
                return Err(ParamError("replication connections are not supported through pgwarden".into()));
            } else if !NOT_SETTINGS.contains(&k.as_str()) {
                set.insert(&k, v)?;
            }
        }
        Ok(set)
    }

    fn insert(&mut self, name: &str, value: &str) -> Result<(), ParamError> {
        let name = name.to_ascii_lowercase();
        if !valid_name(&name) {
            return Err(ParamError(format!("invalid parameter name \"{name}\"")));
        }
        if REFUSED.contains(&name.as_str()) {
            return Err(ParamError(format!("parameter \"{name}\" cannot be set through pgwarden")));
        }
        if value.contains('\0') {
            return Err(ParamError(format!("invalid value for parameter \"{name}\"")));
        }
        self.set(&name, value);
        Ok(())
    }

    /// Sets `name` (lower-case) to `value`; returns whether it changed.
    pub fn set(&mut self, name: &str, value: &str) -> bool {
        let changed = match self.pairs.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
            Ok(i) if self.pairs[i].1 == value => false,
            Ok(i) => {
                self.pairs[i].1 = value.to_string();
                true
            }
            Err(i) => {
                self.pairs.insert(i, (name.to_string(), value.to_string()));
                true
            }
        };
        if changed {
            self.rehash();
        }
        changed
    }

    fn rehash(&mut self) {
        let mut h = DefaultHasher::new();
        self.pairs.hash(&mut h);
        // 0 means "unknown" on a server connection; never produce it.
        self.digest = h.finish() | 1;
    }

    pub fn digest(&self) -> u64 {
        if self.pairs.is_empty() {
            1
        } else {
            self.digest
        }
    }

    /// Keeps only the names `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let before = self.pairs.len();
        self.pairs.retain(|(k, _)| keep(k));
        if self.pairs.len() != before {
            self.rehash();
        }
    }

    /// Forgets `name` (its value on the server is no longer known).
    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = self.pairs.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
            self.pairs.remove(i);
            self.rehash();
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.binary_search_by(|(k, _)| k.as_str().cmp(name)).ok().map(|i| self.pairs[i].1.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Splits a libpq `options` string into settings, as the server does
/// (pg_split_opts: whitespace separates, backslash escapes).
pub fn parse_options(s: &str) -> Result<Vec<(String, String)>, ParamError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().ok_or_else(|| ParamError("options: -c without a setting".into()))?
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest.to_string()
        } else if let Some(rest) = w.strip_prefix("--") {
            rest.to_string()
        } else {
            return Err(ParamError(format!("options: unsupported option \"{w}\" (only -c name=value)")));
        };
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| ParamError(format!("options: \"{setting}\" is not name=value")))?;
        out.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(out)
}

/// Quotes `v` as an escape-string literal, correct whatever
/// `standard_conforming_strings` says.
pub fn quote_literal(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 4);
    s.push_str("E'");
    for c in v.chars() {
        match c {
            '\'' => s.push_str("''"),
            '\\' => s.push_str("\\\\"),
            c => s.push(c),
        }
    }
    s.push('\'');
    s
}

/// The statements that move a server from `have` (values the proxy knows
/// it has, by name) to `want`, and from `set_before` (names the proxy set on
/// it earlier) back to defaults where `want` has no value. Empty when
/// nothing is to be done.
///
/// Values go through `set_config`, which takes them as raw strings exactly
/// like a startup parameter: `SET search_path TO 'a,b'` would make that one
/// quoted schema name, `set_config('search_path', 'a,b', false)` two.
pub fn sync_sql(want: &ParamSet, have: &ParamSet, set_before: &[String]) -> String {
    let mut sets = Vec::new();
    for (k, v) in want.iter() {
        if have.get(k) != Some(v) {
            sets.push(format!("pg_catalog.set_config({}, {}, false)", quote_literal(k), quote_literal(v)));
        }
    }
    let mut sql = String::new();
    if !sets.is_empty() {
        sql.push_str("SELECT ");
        sql.push_str(&sets.join(", "));
        sql.push(';');
    }
    for k in set_before {
        if want.get(k).is_none() {
            sql.push_str(&format!("RESET {k};"));
        }
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_and_options_are_merged() {
        let s = ParamSet::from_startup(&[
            ("user", "u"),
            ("database", "d"),
            ("application_name", "app"),
            ("options", "-c search_path=a,b --statement-timeout=5s -csearch_path=c\\ d"),
        ])
        .unwrap();
        assert_eq!(s.get("application_name"), Some("app"));
        assert_eq!(s.get("search_path"), Some("c d"));
        assert_eq!(s.get("statement_timeout"), Some("5s"));
        assert_eq!(s.get("user"), None);
    }

    #[test]
    fn role_changes_and_bad_names_are_refused() {
        assert!(ParamSet::from_startup(&[("options", "-c role=postgres")]).is_err());
        assert!(ParamSet::from_startup(&[("session_authorization", "x")]).is_err());
        assert!(ParamSet::from_startup(&[("bad;name", "x")]).is_err());
        assert!(ParamSet::from_startup(&[("replication", "true")]).is_err());
        assert!(ParamSet::from_startup(&[("options", "-X")]).is_err());
    }

    #[test]
    fn digest_tracks_content() {
        let mut a = ParamSet::default();
        let mut b = ParamSet::default();
        a.set("x", "1");
        b.set("x", "1");
        assert_eq!(a.digest(), b.digest());
        assert!(b.set("x", "2"));
        assert!(!b.set("x", "2"));
        assert_ne!(a.digest(), b.digest());
        assert_ne!(ParamSet::default().digest(), 0);
    }

    #[test]
    fn sync_sets_differences_and_resets_leftovers() {
        let mut want = ParamSet::default();
        want.set("application_name", "o'k\\");
        let mut have = ParamSet::default();
        have.set("timezone", "UTC");
        let sql = sync_sql(&want, &have, &["timezone".to_string()]);
        assert_eq!(
            sql,
            "SELECT pg_catalog.set_config(E'application_name', E'o''k\\\\', false);RESET timezone;"
        );
        assert_eq!(sync_sql(&want, &want, &[]), "");
    }
}
