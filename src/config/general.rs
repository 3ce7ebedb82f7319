//! `[general]`: process-wide settings. Defaults live in
//! [`General::default`]; ranges are the constants below.

use std::net::SocketAddr;
use std::ops::RangeInclusive;

use toml::{Table, Value};

use super::model::{auto_workers, General, OnOff, MAX_WORKERS};
use super::walk::{expected, in_range, quote_value, Ctx, Reader};

/// Accepted pool sizes, here and in `[[users]]`.
pub(super) const POOL_SIZE_RANGE: RangeInclusive<u32> = 1..=10_000;
/// Longest timeout or lifetime accepted: 30 days, far below what would
/// overflow an `Instant`.
pub(super) const MAX_DURATION_MS: u64 = 30 * 24 * 3_600_000;
/// 1 KiB ..= 1 GiB (Postgres's own limit for a message).
pub(super) const MESSAGE_SIZE_RANGE: RangeInclusive<u32> = 1024..=1 << 30;
pub(super) const MAX_CLIENT_CONNECTIONS: u32 = 1_000_000;
pub(super) const MAX_PREPARED_STATEMENTS_CACHE_SIZE: u32 = 100_000;

/// Reads `[general]` (`table` is `None` when the section is absent). Wrong
/// values are reported and replaced by their defaults, so that the checks
/// that follow still run.
pub(super) fn read(ctx: &mut Ctx<'_>, table: Option<&Table>) -> General {
    let empty = Table::new();
    let mut r = Reader::new(table.unwrap_or(&empty), "general");
    let d = General::default();
    let positive_ms = 1..=MAX_DURATION_MS;
    let any_ms = 0..=MAX_DURATION_MS;
    // The socket's name carries listen's port.
    let listen = listen(&mut r, ctx).unwrap_or(d.listen);
    let general = General {
        listen,
        unix_socket_dir: unix_socket_dir(&mut r, ctx, listen.port()),
        workers: workers(&mut r, ctx).unwrap_or(d.workers),
        pin_workers: r.boolean(ctx, "pin_workers").unwrap_or(d.pin_workers),
        pool_mode: r.choice(ctx, "pool_mode").unwrap_or(d.pool_mode),
        default_pool_size: r.uint(ctx, "default_pool_size", POOL_SIZE_RANGE).unwrap_or(d.default_pool_size),
        checkout_timeout_ms: r
            .uint(ctx, "checkout_timeout_ms", positive_ms.clone())
            .unwrap_or(d.checkout_timeout_ms),
        server_connect_timeout_ms: r
            .uint(ctx, "server_connect_timeout_ms", positive_ms.clone())
            .unwrap_or(d.server_connect_timeout_ms),
        server_idle_timeout_ms: r
            .uint(ctx, "server_idle_timeout_ms", any_ms.clone())
            .unwrap_or(d.server_idle_timeout_ms),
        server_lifetime_ms: r.uint(ctx, "server_lifetime_ms", any_ms.clone()).unwrap_or(d.server_lifetime_ms),
        client_login_timeout_ms: r
            .uint(ctx, "client_login_timeout_ms", positive_ms)
            .unwrap_or(d.client_login_timeout_ms),
        shutdown_timeout_ms: r.uint(ctx, "shutdown_timeout_ms", any_ms).unwrap_or(d.shutdown_timeout_ms),
        max_message_size: r.uint(ctx, "max_message_size", MESSAGE_SIZE_RANGE).unwrap_or(d.max_message_size),
        max_client_connections: r
            .uint(ctx, "max_client_connections", 1..=MAX_CLIENT_CONNECTIONS)
            .unwrap_or(d.max_client_connections),
        prepared_statements_cache_size: r
            .uint(ctx, "prepared_statements_cache_size", 0..=MAX_PREPARED_STATEMENTS_CACHE_SIZE)
            .unwrap_or(d.prepared_statements_cache_size),
        auth_method: r.choice(ctx, "auth_method").unwrap_or(d.auth_method),
        log_level: r.choice(ctx, "log_level").unwrap_or(d.log_level),
        healthcheck_interval_ms: r
            .uint(ctx, "healthcheck_interval_ms", 100..=MAX_DURATION_MS)
            .unwrap_or(d.healthcheck_interval_ms),
        healthcheck_timeout_ms: r
            .uint(ctx, "healthcheck_timeout_ms", 100..=MAX_DURATION_MS)
            .unwrap_or(d.healthcheck_timeout_ms),
        max_replica_lag_ms: r
            .uint(ctx, "max_replica_lag_ms", 0..=MAX_DURATION_MS)
            .unwrap_or(d.max_replica_lag_ms),
        ban_time_ms: r.uint(ctx, "ban_time_ms", 100..=MAX_DURATION_MS).unwrap_or(d.ban_time_ms),
        load_balancing: r.choice(ctx, "load_balancing").unwrap_or(d.load_balancing),
        read_write_split: r.choice::<OnOff>(ctx, "read_write_split").map_or(d.read_write_split, |v| v.0),
        primary_reads: r.choice(ctx, "primary_reads").unwrap_or(d.primary_reads),
        read_only_fallback: r.choice(ctx, "read_only_fallback").unwrap_or(d.read_only_fallback),
        healthcheck_user: r.name(ctx, "healthcheck_user", super::database::MAX_NAME_BYTES),
        healthcheck_password: r.secret(ctx, "healthcheck_password"),
    };
    r.finish(ctx);
    general
}

/// `unix_socket_dir`: an absolute directory; `""` is the same as leaving it
/// out (PgBouncer's spelling of "no Unix socket").
fn unix_socket_dir(r: &mut Reader<'_>, ctx: &mut Ctx<'_>, port: u16) -> Option<String> {
    let dir = r.string(ctx, "unix_socket_dir")?;
    if dir.is_empty() {
        return None;
    }
    let path = r.path_of("unix_socket_dir");
    if !dir.starts_with('/') {
        ctx.error(
            &path,
            format!("expected an absolute directory such as \"/tmp\", found {}", quote_value(&dir)),
        );
        return None;
    }
    // Port 0 is chosen at start-up: check the longest port number.
    let socket = crate::net::unix_socket_path(&dir, if port == 0 { u16::MAX } else { port });
    if let Err(message) = super::database::check_socket_path(&socket) {
        ctx.error(&path, message);
        return None;
    }
    Some(dir)
}

/// `listen`: an `ip:port` (port 0 lets the OS choose, for tests).
fn listen(r: &mut Reader<'_>, ctx: &mut Ctx<'_>) -> Option<SocketAddr> {
    let text = r.string(ctx, "listen")?;
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            let message = format!(
                "expected an address \"ip:port\" such as \"127.0.0.1:6432\" or \
                 \"[::1]:6432\", found {}",
                quote_value(&text)
            );
            ctx.error(&r.path_of("listen"), message);
            None
        }
    }
}

/// `workers`: `"auto"` or an integer in `1..=MAX_WORKERS`.
fn workers(r: &mut Reader<'_>, ctx: &mut Ctx<'_>) -> Option<usize> {
    let path = r.path_of("workers");
    let expectation = format!("\"auto\" or an integer between 1 and {MAX_WORKERS}");
    match r.get(ctx, "workers")? {
        Value::Integer(n) => in_range(ctx, &path, *n, 1..=MAX_WORKERS).map(usize::from),
        Value::String(raw) => {
            let text = ctx.expand(&path, raw)?;
            if text == "auto" {
                return Some(auto_workers());
            }
            ctx.error(&path, format!("expected {expectation}, found string {}", quote_value(&text)));
            None
        }
        other => {
            ctx.error(&path, expected(&expectation, other, false));
            None
        }
    }
}
