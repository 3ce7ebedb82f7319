//! Rules across entries and sections, checked once every entry is read:
//! what must exist, and what must be unique. Rules about a single entry live
//! with its reader (`database.rs`, `user.rs`).

use super::model::{Database, User};
use super::walk::Ctx;
use super::Entry;

pub(super) fn check(ctx: &mut Ctx<'_>, databases: &[Entry<Database>], users: &[Entry<User>]) {
    require_some(ctx, "databases", databases.len());
    // Users could come from other sources (JWT) in future; for now every
    // login is a configured user, so a config without users admits no one.
    require_some(ctx, "users", users.len());
    check_database_names(ctx, databases);
    check_unique(ctx, users, "user", |u| &u.name);
}

/// `[[key]]` must have at least one entry (unless the key is already
/// reported as malformed).
fn require_some(ctx: &mut Ctx<'_>, key: &str, count: usize) {
    if count == 0 && !ctx.has_error_at(key) {
        ctx.error(key, format!("at least one [[{key}]] entry is required"));
    }
}

/// Database names are unique for now. When several entries may share a name
/// (a primary and its replicas), this is the one place to change.
fn check_database_names(ctx: &mut Ctx<'_>, databases: &[Entry<Database>]) {
    check_unique(ctx, databases, "database", |d| &d.name);
}

/// Reports each entry whose name an earlier entry already has. Empty names
/// are entries whose name was missing or wrong, reported already.
fn check_unique<T>(ctx: &mut Ctx<'_>, entries: &[Entry<T>], what: &str, name: fn(&T) -> &str) {
    for (i, entry) in entries.iter().enumerate() {
        let this = name(&entry.value);
        if this.is_empty() {
            continue;
        }
        if let Some(first) = entries[..i].iter().find(|e| name(&e.value) == this) {
            let message = format!("duplicate {what} name {this:?} (first defined at {})", first.path);
            ctx.error(&format!("{}.name", entry.path), message);
        }
    }
}
