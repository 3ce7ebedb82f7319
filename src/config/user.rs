//! `[[users]]`: who may log in, how they prove it, and the role they use on
//! the server. Rules about one entry (the password fits the auth method) are
//! here; rules across entries (unique names) are in `validate.rs`.

use super::database::MAX_NAME_BYTES;
use super::general::POOL_SIZE_RANGE;
use super::model::{AuthMethod, General, User};
use super::password::{PasswordKind, SCRAM_PREFIX};
use super::walk::{Ctx, Reader};
use super::Entry;

/// Longest password accepted, in bytes (Postgres accepts a password message
/// of at most 64 KiB; secrets and hashes are far shorter).
const MAX_PASSWORD_BYTES: usize = 1024;

/// Reads every `[[users]]` entry (none if the key is absent). `general`
/// supplies the default `auth`.
pub(super) fn read_all(ctx: &mut Ctx<'_>, root: &mut Reader<'_>, general: &General) -> Vec<Entry<User>> {
    // A wrong general.auth_method was reported already, and replaced by the
    // default: do not also judge passwords against that stand-in.
    let general_auth_known = !ctx.has_error_at("general.auth_method");
    root.table_array(ctx, "users")
        .into_iter()
        .map(|(path, table)| {
            let mut r = Reader::new(table, path);
            let value = read(ctx, &mut r, general, general_auth_known);
            let path = r.path().to_string();
            r.finish(ctx);
            Entry { path, value }
        })
        .collect()
}

/// One entry; a missing or wrong name is left empty (and reported).
fn read(ctx: &mut Ctx<'_>, r: &mut Reader<'_>, general: &General, general_auth_known: bool) -> User {
    let name = r.required(ctx, "name", |r, ctx, key| r.name(ctx, key, MAX_NAME_BYTES)).unwrap_or_default();
    let password = read_password(ctx, r, "password");
    let auth = r.choice(ctx, "auth");
    let server_user = r.name(ctx, "server_user", MAX_NAME_BYTES);
    let server_password = read_password(ctx, r, "server_password");
    let pool_size = r.uint(ctx, "pool_size", POOL_SIZE_RANGE);
    let pool_mode = r.choice(ctx, "pool_mode");
    let read_only = r.boolean(ctx, "read_only").unwrap_or(false);

    let auth_known = if r.present("auth") { auth.is_some() } else { general_auth_known };
    let password_known = !ctx.has_error_at(&r.path_of("password"));
    if auth_known && password_known {
        let (auth, inherited) = match auth {
            Some(auth) => (auth, false),
            None => (general.auth_method, true),
        };
        check_password(ctx, r, password.as_deref(), auth, inherited);
    }
    User {
        server_user: server_user.unwrap_or_else(|| name.clone()),
        name,
        server_password: server_password.or_else(|| password.clone()),
        password,
        auth_method: auth.unwrap_or(general.auth_method),
        pool_size,
        pool_mode,
        read_only,
    }
}

/// A password (or server password): a string of limited size, which if it
/// looks like a SCRAM secret must be a well-formed one.
fn read_password(ctx: &mut Ctx<'_>, r: &mut Reader<'_>, key: &'static str) -> Option<String> {
    let path = r.path_of(key);
    let value = r.secret(ctx, key)?;
    let problem = if value.len() > MAX_PASSWORD_BYTES {
        format!("must be at most {MAX_PASSWORD_BYTES} bytes, found {} bytes", value.len())
    } else if PasswordKind::of(&value).is_none() {
        format!(
            "starts with \"{SCRAM_PREFIX}\" but is not a well-formed SCRAM-SHA-256 secret \
             (expected {SCRAM_PREFIX}<iterations>:<salt>$<StoredKey>:<ServerKey>, \
             salt and keys in base64, as in pg_authid)"
        )
    } else {
        return Some(value);
    };
    ctx.error(&path, problem);
    None
}

/// The password must exist unless `auth = "trust"`, be non-empty, and be in
/// a form that can verify `auth`; `inherited`: `auth` is general.auth_method.
fn check_password(
    ctx: &mut Ctx<'_>,
    r: &Reader<'_>,
    password: Option<&str>,
    auth: AuthMethod,
    inherited: bool,
) {
    let path = r.path_of("password");
    let source = if inherited {
        format!("auth = \"{auth}\" (from general.auth_method)")
    } else {
        format!("auth = \"{auth}\"")
    };
    let Some(password) = password else {
        if auth != AuthMethod::Trust {
            let message = format!(
                "required key is missing: {source} needs a password (only auth = \"trust\" does not)"
            );
            ctx.error(&path, message);
        }
        return;
    };
    if password.is_empty() && auth != AuthMethod::Trust {
        ctx.error(&path, "must not be empty (Postgres refuses empty passwords)");
        return;
    }
    let Some(kind) = PasswordKind::of(password) else {
        return; // reported when read
    };
    if !kind.can_verify(auth) {
        let message = format!("is {} and cannot verify {source}: {}", kind.describe(), remedy(auth));
        ctx.error(&path, message);
    }
}

/// What to do when the password's form cannot verify `auth`.
fn remedy(auth: AuthMethod) -> &'static str {
    match auth {
        AuthMethod::Md5 => {
            "md5 needs the plaintext password or its md5 hash; give one of those, \
             or set auth = \"scram-sha-256\""
        }
        _ => {
            "SCRAM-SHA-256 needs the plaintext password or a SCRAM-SHA-256 secret; \
             give one of those, or set auth = \"md5\""
        }
    }
}
