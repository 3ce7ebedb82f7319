//! Tests of the whole pipeline, text in, `Config` or errors out, with the
//! helpers they share. Helpers' own tests sit next to them (`walk.rs`,
//! `password.rs`, `env.rs`).

mod errors;
mod example;
mod jwt;
mod users;
mod values;

use std::collections::HashMap;

pub(super) use super::password::tests::SCRAM;
pub(super) use super::*;

/// The documented example; must always parse.
pub(super) const EXAMPLE: &str = include_str!("../../../config/pgwarden.toml");

/// The smallest valid configuration, after an optional `[general]`.
pub(super) const MINIMAL: &str = r#"
[[databases]]
name = "app"
host = "db.internal"

[[users]]
name = "app"
password = "app-secret"
"#;

pub(super) const MD5_HASH: &str = "md5a3556571e93b0d20722ba62be61e8c2d";

pub(super) fn no_env(_: &str) -> Option<String> {
    None
}

pub(super) fn parse_ok(text: &str) -> Config {
    parse(text, &no_env).unwrap_or_else(|e| panic!("unexpected errors:\n{e}"))
}

/// Every error's display line.
pub(super) fn errors(text: &str) -> Vec<String> {
    errors_with(text, &no_env)
}

pub(super) fn errors_with(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    match parse(text, env) {
        Ok(config) => panic!("expected errors, parsed {config:?}"),
        Err(e) => {
            assert!(!e.0.is_empty());
            e.0.iter().map(ToString::to_string).collect()
        }
    }
}

/// `MINIMAL` with `general` as the body of `[general]`.
pub(super) fn with_general(general: &str) -> String {
    format!("[general]\n{general}\n{MINIMAL}")
}

/// One database and one user whose body is `user` (after `name = "u"`).
pub(super) fn with_user(user: &str) -> String {
    format!("[[databases]]\nname = \"app\"\nhost = \"h\"\n[[users]]\nname = \"u\"\n{user}\n")
}

pub(super) fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |name| map.get(name).cloned()
}
