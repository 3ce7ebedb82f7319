//! `[jwt]`: token logins. Rules about the section itself are here; the
//! cross-section ones (a JWT role must not be a static user, TLS must be
//! configured when required) are in `validate.rs`.

use std::path::PathBuf;

use toml::Table;

use super::database::MAX_NAME_BYTES;
use super::general::POOL_SIZE_RANGE;
use super::model::{Identity, Jwt, JwtRole};
use super::walk::{quote_value, Ctx, Reader};
use crate::auth::jwt::Algorithm;

/// Default pool size of a role's pool made by `auto_provision`.
pub(super) const DEFAULT_AUTO_POOL_SIZE: u32 = 5;
pub(super) const DEFAULT_MAX_AUTO_POOLS: u32 = 100;
const MAX_AUTO_POOLS: u32 = 100_000;
/// Clock skew allowed at most: one hour.
const MAX_LEEWAY_SECS: u64 = 3_600;
/// Longest claim path, in bytes.
const MAX_CLAIM_PATH_BYTES: usize = 256;

pub(super) fn read(ctx: &mut Ctx<'_>, table: &Table) -> Jwt {
    let mut r = Reader::new(table, "jwt");
    let public_key_files = r.strings(ctx, "public_key_file").unwrap_or_default();
    let jwks_file = r.string(ctx, "jwks_file");
    let jwks_allow_http = r.boolean(ctx, "jwks_allow_http").unwrap_or(false);
    let jwks_url = jwks_url(ctx, &mut r, jwks_allow_http);
    let jwks_ca_file = r.string(ctx, "jwks_ca_file");
    let jwks_cache_ttl_secs = r.uint(ctx, "jwks_cache_ttl", 10..=86_400).unwrap_or(DEFAULT_JWKS_TTL_SECS);
    let jwks_refresh_cooldown_secs = r.uint(ctx, "jwks_refresh_cooldown_secs", 1..=3_600).unwrap_or(30);
    let jwks_max_stale_secs =
        r.uint(ctx, "jwks_max_stale_secs", 60..=30 * 86_400).unwrap_or(DEFAULT_JWKS_MAX_STALE_SECS);
    let algorithms = algorithms(ctx, &mut r);
    let issuers = non_empty_list(ctx, &mut r, "issuer");
    let audiences = non_empty_list(ctx, &mut r, "audience");
    let leeway_secs = r.uint(ctx, "leeway_secs", 0..=MAX_LEEWAY_SECS).unwrap_or(0);
    let username_claim = claim_path(ctx, &mut r, "username_claim").unwrap_or_else(|| "sub".into());
    let user_suffix = r.name(ctx, "user_suffix", MAX_NAME_BYTES);
    let match_startup_user = r.boolean(ctx, "match_startup_user").unwrap_or(true);
    let role_map = role_map(ctx, &mut r);
    let allowed_roles = allowed_roles(ctx, &mut r);
    let identity = r.choice(ctx, "identity").unwrap_or(Identity::SetRole);
    let identity_known = !ctx.has_error_at(&r.path_of("identity"));
    let server_user = r.name(ctx, "server_user", MAX_NAME_BYTES);
    let server_password = r.secret(ctx, "server_password");
    if server_password.as_deref().is_some_and(|p| p.starts_with("SCRAM-SHA-256$")) {
        ctx.error(
            &r.path_of("server_password"),
            "is a SCRAM secret, which cannot log in to the server: give the plaintext password \
             (from the environment with \"${NAME}\")",
        );
    }
    let allow_superuser_server_user = r.boolean(ctx, "allow_superuser_server_user").unwrap_or(false);
    let auto_provision = r.boolean(ctx, "auto_provision").unwrap_or(false);
    let auto_provision_pool_size =
        r.uint(ctx, "auto_provision_pool_size", POOL_SIZE_RANGE).unwrap_or(DEFAULT_AUTO_POOL_SIZE);
    let max_auto_pools = r.uint(ctx, "max_auto_pools", 1..=MAX_AUTO_POOLS).unwrap_or(DEFAULT_MAX_AUTO_POOLS);
    let auto_provision_read_only = r.boolean(ctx, "auto_provision_read_only").unwrap_or(false);
    let read_only_claim = claim_path(ctx, &mut r, "read_only_claim");
    let read_only_values = non_empty_list(ctx, &mut r, "read_only_values");
    if read_only_claim.is_some() && read_only_values.is_empty() && !r.present("read_only_values") {
        ctx.error(
            &r.path_of("read_only_values"),
            "required key is missing: read_only_claim needs the values that make a token read-only",
        );
    }
    let require_tls = r.boolean(ctx, "require_tls").unwrap_or(true);
    let expire_sessions = r.boolean(ctx, "expire_sessions").unwrap_or(false);
    let roles = roles(ctx, &mut r);

    let no_source = public_key_files.is_empty() && jwks_file.is_none() && !r.present("jwks_url");
    if no_source && !ctx.has_error_at(&r.path_of("public_key_file")) {
        ctx.error("jwt", "no verification keys: set public_key_file (PEM), jwks_file or jwks_url");
    }
    if identity_known && identity == Identity::SetRole && server_user.is_none() && !r.present("server_user") {
        ctx.error(
            &r.path_of("server_user"),
            "required key is missing: identity = \"set_role\" logs in as server_user and takes the \
             token's role from there (or set identity = \"login\")",
        );
    }
    if !auto_provision && roles.is_empty() && !r.present("roles") {
        ctx.error(
            "jwt.roles",
            "no role can log in: list the roles under [[jwt.roles]], or set auto_provision = true",
        );
    }
    r.finish(ctx);
    Jwt {
        public_key_files: public_key_files.into_iter().map(PathBuf::from).collect(),
        jwks_file: jwks_file.map(PathBuf::from),
        jwks_url,
        jwks_ca_file: jwks_ca_file.map(PathBuf::from),
        jwks_allow_http,
        jwks_cache_ttl_secs,
        jwks_refresh_cooldown_secs,
        jwks_max_stale_secs,
        algorithms,
        issuers,
        audiences,
        leeway_secs,
        username_claim,
        user_suffix,
        match_startup_user,
        role_map,
        allowed_roles,
        identity,
        server_user,
        server_password,
        allow_superuser_server_user,
        auto_provision,
        auto_provision_pool_size,
        max_auto_pools,
        auto_provision_read_only,
        read_only_claim,
        read_only_values,
        require_tls,
        expire_sessions,
        roles,
    }
}

pub(super) const DEFAULT_JWKS_TTL_SECS: u64 = 300;
pub(super) const DEFAULT_JWKS_MAX_STALE_SECS: u64 = 86_400;

/// `https://...`, or `http://...` with `jwks_allow_http = true`.
fn jwks_url(ctx: &mut Ctx<'_>, r: &mut Reader<'_>, allow_http: bool) -> Option<String> {
    let path = r.path_of("jwks_url");
    let url = r.string(ctx, "jwks_url")?;
    let rest = if let Some(rest) = url.strip_prefix("https://") {
        rest
    } else if let Some(rest) = url.strip_prefix("http://") {
        if !allow_http {
            ctx.error(
                &path,
                "plain http lets anyone on the path replace the signing keys: use https://, or set \
                 jwks_allow_http = true (tests only)",
            );
            return None;
        }
        rest
    } else {
        ctx.error(&path, format!("expected an https:// URL, found {}", quote_value(&url)));
        return None;
    };
    if rest.is_empty() || rest.starts_with('/') || url.chars().any(char::is_whitespace) {
        ctx.error(&path, format!("expected an https:// URL with a host, found {}", quote_value(&url)));
        return None;
    }
    Some(url)
}

fn algorithms(ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> Vec<Algorithm> {
    let path = r.path_of("algorithms");
    let Some(names) = r.strings(ctx, "algorithms") else {
        return Algorithm::ALL.to_vec();
    };
    let known: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        match Algorithm::from_name(name) {
            Some(alg) if !out.contains(&alg) => out.push(alg),
            Some(_) => {}
            None => {
                let why = if name.starts_with("HS") || name.eq_ignore_ascii_case("none") {
                    "pgwarden verifies with public keys only, so HMAC and \"none\" are never accepted"
                        .to_string()
                } else {
                    format!("expected one of {}", known.join(", "))
                };
                ctx.error(
                    &format!("{path}[{i}]"),
                    format!("unsupported algorithm {}: {why}", quote_value(name)),
                );
            }
        }
    }
    if out.is_empty() && !names.is_empty() {
        return Algorithm::ALL.to_vec(); // errors reported above
    }
    if names.is_empty() {
        ctx.error(&path, "must list at least one algorithm (leave the key out for the default list)");
    }
    out
}

fn non_empty_list(ctx: &mut Ctx<'_>, r: &mut Reader<'_>, key: &'static str) -> Vec<String> {
    let path = r.path_of(key);
    let list = r.strings(ctx, key).unwrap_or_default();
    if list.iter().any(String::is_empty) {
        ctx.error(&path, "must not contain an empty string");
    }
    list
}

fn claim_path(ctx: &mut Ctx<'_>, r: &mut Reader<'_>, key: &'static str) -> Option<String> {
    let path = r.path_of(key);
    let value = r.string(ctx, key)?;
    if value.is_empty() || value.len() > MAX_CLAIM_PATH_BYTES || value.split('.').any(str::is_empty) {
        ctx.error(
            &path,
            format!(
                "expected a claim name or a dotted path such as \"realm_access.role\" (at most \
                 {MAX_CLAIM_PATH_BYTES} bytes), found {}",
                quote_value(&value)
            ),
        );
        return None;
    }
    Some(value)
}

/// Why `role` may never be a JWT role, if it may not.
pub fn reserved_role(role: &str) -> Option<&'static str> {
    if role == "postgres" {
        Some("\"postgres\" is reserved")
    } else if role.starts_with("pg_") {
        Some("roles starting with \"pg_\" are reserved")
    } else if role.is_empty() || role.len() > MAX_NAME_BYTES || role.contains('\0') {
        Some("not a valid role name")
    } else {
        None
    }
}

fn check_role(ctx: &mut Ctx<'_>, path: &str, role: &str) -> bool {
    match reserved_role(role) {
        Some(why) => {
            ctx.error(path, format!("role {} cannot be a JWT role: {why}", quote_value(role)));
            false
        }
        None => true,
    }
}

fn role_map(ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> Vec<(String, String)> {
    let path = r.path_of("role_map");
    let map = r.string_table(ctx, "role_map").unwrap_or_default();
    map.into_iter().filter(|(claim, role)| check_role(ctx, &format!("{path}.{claim:?}"), role)).collect()
}

fn allowed_roles(ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> Vec<String> {
    let path = r.path_of("allowed_roles");
    let patterns = r.strings(ctx, "allowed_roles").unwrap_or_default();
    for (i, p) in patterns.iter().enumerate() {
        let body = p.strip_suffix('*').unwrap_or(p);
        if p.is_empty() || p == "*" || body.contains('*') {
            ctx.error(
                &format!("{path}[{i}]"),
                format!(
                    "expected a role name or a prefix ending in \"*\" (such as \"app_*\"), found {}",
                    quote_value(p)
                ),
            );
        }
    }
    patterns
}

fn roles(ctx: &mut Ctx<'_>, r: &mut Reader<'_>) -> Vec<JwtRole> {
    let mut out: Vec<JwtRole> = Vec::new();
    for (path, table) in r.table_array(ctx, "roles") {
        let mut e = Reader::new(table, path);
        let name =
            e.required(ctx, "name", |e, ctx, key| e.name(ctx, key, MAX_NAME_BYTES)).unwrap_or_default();
        let pool_size = e.uint(ctx, "pool_size", POOL_SIZE_RANGE);
        let pool_mode = e.choice(ctx, "pool_mode");
        let read_only = e.boolean(ctx, "read_only").unwrap_or(false);
        let name_path = e.path_of("name");
        if !name.is_empty() && check_role(ctx, &name_path, &name) && out.iter().any(|r| r.name == name) {
            ctx.error(&name_path, format!("duplicate role {}", quote_value(&name)));
        }
        e.finish(ctx);
        out.push(JwtRole { name, read_only, pool_size, pool_mode });
    }
    out
}
