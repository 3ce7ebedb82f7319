//! `[[databases]]`: the databases clients may name, and where they live.
//! Rules about one entry are here; rules across entries (unique names) are in
//! `validate.rs`.

use super::model::{Database, DbRole};
use super::walk::{Ctx, Reader};
use super::Entry;

/// Postgres identifiers longer than this are truncated (`NAMEDATALEN - 1`).
pub(super) const MAX_NAME_BYTES: usize = 63;
/// Host names are at most 253 bytes (RFC 1035).
const MAX_HOST_BYTES: usize = 253;
const DEFAULT_PORT: u16 = 5432;
/// `sun_path` holds 108 bytes on Linux, one of them the terminating NUL.
const MAX_SOCKET_PATH_BYTES: usize = 107;

/// Reads every `[[databases]]` entry (none if the key is absent).
pub(super) fn read_all(ctx: &mut Ctx<'_>, root: &mut Reader<'_>) -> Vec<Entry<Database>> {
    root.table_array(ctx, "databases")
        .into_iter()
        .map(|(path, table)| {
            let mut r = Reader::new(table, path);
            let value = read(ctx, &mut r);
            let path = r.path().to_string();
            r.finish(ctx);
            Entry { path, value }
        })
        .collect()
}

/// One entry; a missing or wrong name is left empty (and reported).
fn read(ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> Database {
    let name = r.required(ctx, "name", |r, ctx, key| r.name(ctx, key, MAX_NAME_BYTES));
    let host = r.required(ctx, "host", |r, ctx, key| r.name(ctx, key, MAX_HOST_BYTES));
    let port = r.uint(ctx, "port", 1..=u16::MAX).unwrap_or(DEFAULT_PORT);
    let database_name = r.name(ctx, "database_name", MAX_NAME_BYTES);
    let role = r.choice(ctx, "role").unwrap_or(DbRole::Primary);
    if let Some(dir) = host.as_deref().filter(|h| h.starts_with('/')) {
        // A socket directory, as in libpq: the socket is DIR/.s.PGSQL.PORT.
        if let Err(message) = check_socket_path(&crate::net::unix_socket_path(dir, port)) {
            ctx.error(&r.path_of("host"), message);
        }
    }
    let name = name.unwrap_or_default();
    Database {
        database_name: database_name.unwrap_or_else(|| name.clone()),
        name,
        host: host.unwrap_or_default(),
        port,
        role,
    }
}

/// A Unix socket path must fit a socket address.
pub(super) fn check_socket_path(socket: &std::path::Path) -> Result<(), String> {
    let len = socket.as_os_str().len();
    if len > MAX_SOCKET_PATH_BYTES {
        return Err(format!(
            "the Unix socket path {} is {len} bytes, over the {MAX_SOCKET_PATH_BYTES} a socket address holds: \
             use a shorter directory",
            socket.display()
        ));
    }
    Ok(())
}
