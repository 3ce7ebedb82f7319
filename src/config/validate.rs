//! Rules across entries and sections, checked once every entry is read:
//! what must exist, and what must be unique. Rules about a single entry live
//! with its reader (`database.rs`, `user.rs`).

use super::model::{ClientTls, Database, DbRole, Jwt, Tls, User};
use super::walk::Ctx;
use super::Entry;

pub(super) fn check(
    ctx: &mut Ctx<'_>,
    databases: &[Entry<Database>],
    users: &[Entry<User>],
    jwt: Option<&Jwt>,
    tls: Option<&Tls>,
) {
    require_some(ctx, "databases", databases.len());
    // Without [jwt], every login is a configured user: no users admits no one.
    if jwt.is_none() {
        require_some(ctx, "users", users.len());
    }
    check_database_names(ctx, databases);
    check_unique(ctx, users, "user", |u| &u.name);
    if let Some(jwt) = jwt {
        check_jwt_roles(ctx, jwt, users);
        let tls_on = tls.is_some_and(|t| t.client_tls != ClientTls::Disabled);
        if jwt.require_tls && !tls_on && !ctx.has_error_at("tls") {
            ctx.error(
                "jwt.require_tls",
                "JWT logins must arrive over TLS, but TLS for clients is not configured: add a [tls] \
                 section with cert_file and key_file, or set require_tls = false only where the network \
                 between clients and pgwarden is trusted (tokens then travel in clear text)",
            );
        }
    }
}

/// A JWT role must not be a static user's name or server role, nor the
/// authenticator: a token must never obtain those credentials.
fn check_jwt_roles(ctx: &mut Ctx<'_>, jwt: &Jwt, users: &[Entry<User>]) {
    let clash = |role: &str| -> Option<String> {
        if let Some(u) = users.iter().find(|u| u.value.name == role || u.value.server_user == role) {
            return Some(format!("it is the static user or server role of {}", u.path));
        }
        (jwt.server_user.as_deref() == Some(role)).then(|| "it is jwt.server_user".to_string())
    };
    for (claim, role) in &jwt.role_map {
        if let Some(why) = clash(role) {
            ctx.error(
                &format!("jwt.role_map.{claim:?}"),
                format!("role {role:?} cannot be a JWT role: {why}"),
            );
        }
    }
    for (i, role) in jwt.roles.iter().enumerate() {
        if let Some(why) = clash(&role.name) {
            ctx.error(
                &format!("jwt.roles[{i}].name"),
                format!("role {:?} cannot be a JWT role: {why}", role.name),
            );
        }
    }
}

/// `[[key]]` must have at least one entry (unless the key is already
/// reported as malformed).
fn require_some(ctx: &mut Ctx<'_>, key: &str, count: usize) {
    if count == 0 && !ctx.has_error_at(key) {
        ctx.error(key, format!("at least one [[{key}]] entry is required"));
    }
}

/// Entries sharing a name form one cluster (a primary and its replicas):
/// each host at most once, at most one `role = "primary"`, and at least one
/// entry that can take writes (`primary` or `auto`).
fn check_database_names(ctx: &mut Ctx<'_>, databases: &[Entry<Database>]) {
    for (i, entry) in databases.iter().enumerate() {
        let d = &entry.value;
        if d.name.is_empty() {
            continue;
        }
        let earlier = &databases[..i];
        if let Some(first) = earlier.iter().find(|e| {
            e.value.name == d.name
                && e.value.host == d.host
                && e.value.port == d.port
                && e.value.database_name == d.database_name
        }) {
            ctx.error(
                &format!("{}.host", entry.path),
                format!(
                    "database {:?} lists {}:{} (database_name {:?}) twice (first at {}); each host of a \
                     primary/replica set appears once",
                    d.name, d.host, d.port, d.database_name, first.path
                ),
            );
        }
        if d.role == DbRole::Primary {
            if let Some(first) =
                earlier.iter().find(|e| e.value.name == d.name && e.value.role == DbRole::Primary)
            {
                ctx.error(
                    &format!("{}.role", entry.path),
                    format!(
                        "database {:?} has a second role = \"primary\" entry (first at {}); one entry is the \
                         primary, the others are \"replica\" (or \"auto\" to ask each server)",
                        d.name, first.path
                    ),
                );
            }
        }
        let first_of_name = !earlier.iter().any(|e| e.value.name == d.name);
        let writable = databases.iter().any(|e| e.value.name == d.name && e.value.role != DbRole::Replica);
        if first_of_name && !writable {
            ctx.error(
                &format!("{}.role", entry.path),
                format!(
                    "database {:?} has only role = \"replica\" entries: add its primary (role = \"primary\", \
                     or \"auto\" to ask the server)",
                    d.name
                ),
            );
        }
    }
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
