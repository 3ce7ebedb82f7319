//! Configuration: TOML text to a validated [`Config`], in three layers
//! (DESIGN.md, style rule 6):
//!
//! 1. raw: the text parsed as a `toml::Table`, nothing checked yet;
//! 2. validated: the table walked key by key into [`Config`], recording
//!    every error with its key path instead of stopping at the first (which
//!    is why this does not use serde's derive);
//! 3. runtime: the shards' snapshots, built from a `Config` elsewhere.
//!
//! No global state: [`parse`] is a pure function of the text and an
//! environment lookup, and [`load`] adds only the file read.
//!
//! - `walk`: the typed getters and unknown-key detection every section uses.
//! - `general`, `database`, `user`, `jwt`: one reader per section, with the rules
//!   about a single entry.
//! - `validate`: rules across entries (at least one, unique names).
//! - `env`: `${NAME}` substitution in string values.
//! - `password`: plaintext / md5 hash / SCRAM secret, and which auth
//!   methods each can verify.
//!
//! To add a section: a reader module like `general.rs`, called from
//! [`parse`] with `root.table(...)` or `root.table_array(...)`.
//!
//! The documented example of every key is `config/pgwarden.toml`.

mod database;
mod env;
mod error;
mod general;
mod jwt;
mod model;
mod password;
mod user;
mod validate;
mod walk;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors};
pub use jwt::reserved_role;
pub use model::{
    auto_workers, AuthMethod, ClientTls, Config, Database, DbRole, General, Identity, Jwt, JwtRole,
    LoadBalancing, LogLevel, PoolMode, PrimaryReads, ReadOnlyFallback, Tls, User, MAX_WORKERS,
};
pub use password::PasswordKind;

use walk::{Ctx, Reader};

/// Reads and validates the file at `path`, taking `${NAME}` from the process
/// environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new("", format!("cannot read configuration file {}: {e}", path.display()))
    })?;
    parse(&text, &|name| std::env::var(name).ok())
}

/// Parses and validates `text`, looking `${NAME}` up with `env`. On error,
/// returns every problem found, each with its key path.
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let raw = parse_raw(text)?;
    let mut ctx = Ctx::new(env);
    let config = build(&mut ctx, &raw);
    let errors = ctx.into_errors();
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// An entry of an array of tables, with its path for cross-entry messages.
struct Entry<T> {
    path: String,
    value: T,
}

/// Layer 1: the text as a TOML table. A syntax error stops here: there is no
/// table to walk. Only the parser's message and position are shown, never
/// the offending line, which might hold a password.
fn parse_raw(text: &str) -> Result<toml::Table, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(String::new(), |span| {
            let (line, column) = line_column(text, span.start);
            format!(" at line {line}, column {column}")
        });
        // One line, so that `ConfigErrors` shows one error per line.
        let message = e.message().trim_end().replace('\n', "; ");
        ConfigError::new("", format!("invalid TOML{at}: {message}"))
    })
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

/// Layer 2: walks every section, then the cross-entry checks. Errors go to
/// `ctx`; the `Config` returned is only meaningful when there are none.
fn build(ctx: &mut Ctx<'_>, raw: &toml::Table) -> Config {
    let mut root = Reader::new(raw, "");
    let general_table = root.table(ctx, "general");
    let general = general::read(ctx, general_table);
    let databases = database::read_all(ctx, &mut root);
    let users = user::read_all(ctx, &mut root, &general);
    let tls = root.table(ctx, "tls").map(|t| read_tls(ctx, t));
    let jwt = root.table(ctx, "jwt").map(|t| jwt::read(ctx, t));
    root.finish_top_level(ctx);
    validate::check(ctx, &databases, &users, jwt.as_ref(), tls.as_ref());
    let config = Config {
        general,
        databases: databases.into_iter().map(|e| e.value).collect(),
        users: users.into_iter().map(|e| e.value).collect(),
        jwt,
        tls,
    };
    if config.has_clusters() && config.healthcheck_login().is_none() {
        ctx.error(
            "general.healthcheck_user",
            "databases with replicas (or role = \"auto\") are health-checked, and no user to log in \
             as is known: set healthcheck_user (and healthcheck_password), or add a [[users]] entry",
        );
    }
    config
}

/// `[tls]`: both files are required; `client_tls` defaults to `"allowed"`.
fn read_tls(ctx: &mut Ctx<'_>, table: &toml::Table) -> Tls {
    let mut r = Reader::new(table, "tls");
    let cert_file = r.required(ctx, "cert_file", |r, ctx, key| r.string(ctx, key)).unwrap_or_default();
    let key_file = r.required(ctx, "key_file", |r, ctx, key| r.string(ctx, key)).unwrap_or_default();
    let client_tls = r.choice(ctx, "client_tls").unwrap_or(ClientTls::Allowed);
    r.finish(ctx);
    Tls { cert_file: cert_file.into(), key_file: key_file.into(), client_tls }
}
