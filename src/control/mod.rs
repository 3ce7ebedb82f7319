//! The control thread: everything slow or global, never on the per-message
//! path. It turns SIGINT/SIGTERM into a graceful shutdown, and runs the JWKS
//! refresher ([`jwks`]) and the host health checks ([`health`]) on threads of
//! their own; later issues add reload and stats here.

pub mod health;
pub mod jwks;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::session::ctx::Shared;
use crate::shard::ShardHandle;

/// Waits for SIGINT or SIGTERM, starts the graceful shutdown and waits for
/// the shards to finish (each stops after `shutdown_timeout_ms` at most).
pub fn run(shared: Arc<Shared>, shards: Vec<ShardHandle>) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    if let Err(e) = jwks::spawn(shared.clone()) {
        log::error!("{e}");
    }
    if let Err(e) = health::spawn(shared.clone()) {
        log::error!("{e}");
    }
    if let Some(sig) = signals.forever().next() {
        let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
        log::info!(
            "received {name}: no new connections; running transactions get up to {} ms to finish",
            shared.config.general.shutdown_timeout_ms
        );
    }
    shared.shutdown.store(true, Ordering::Release);
    if let Some(rt) = shared.jwt.as_ref() {
        rt.store.wake();
    }
    let deadline = Duration::from_millis(shared.config.general.shutdown_timeout_ms + 5_000);
    let start = std::time::Instant::now();
    for h in shards {
        while !h.thread.is_finished() && start.elapsed() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if h.thread.is_finished() {
            let _ = h.thread.join();
        } else {
            log::warn!("shard {} did not stop in time", h.id);
        }
    }
    log::info!("pgwarden stopped");
    Ok(())
}
