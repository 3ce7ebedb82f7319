//! Shards: one io_uring executor per worker thread, pinned to a CPU, each
//! with its own SO_REUSEPORT listener, clients and pool slices.
//!
//! The runtime is monoio with its io_uring driver named explicitly (its
//! default would fall back to epoll), with SINGLE_ISSUER (only the shard's
//! thread submits) and DEFER_TASKRUN (completions are processed when the
//! shard asks for them, not in interrupts), the two flags that took a bare
//! relay from ~28 to ~24 µs of proxy CPU per transaction here.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monoio::{IoUringDriver, RuntimeBuilder};

use crate::net::tls::TlsSession;
use crate::net::{self, Listener};
use crate::session::ctx::{ShardCtx, Shared};
use crate::session::login::{self, ClientConn, Opening};
use crate::session::relay::{End, Finish, Relay};

/// io_uring submission queue entries per shard.
const URING_ENTRIES: u32 = 4096;

/// How often a shard reaps idle server connections.
const REAP_INTERVAL: Duration = Duration::from_millis(500);

/// A running shard.
pub struct ShardHandle {
    pub id: usize,
    pub thread: JoinHandle<()>,
}

/// What [`start`] started.
pub struct Started {
    /// The TCP address every shard listens on.
    pub addr: SocketAddr,
    /// The Unix socket (`unix_socket_dir`); its file is removed when this
    /// is dropped, so keep it until the shards have stopped.
    pub unix: Option<net::UnixSocket>,
    pub handles: Vec<ShardHandle>,
}

/// Binds the first listener (resolving port 0 to a real port so every shard
/// shares it) and the Unix socket if one is configured, then starts `n`
/// shards. Returns once every shard is listening, or the first shard's
/// start-up error.
pub fn start(shared: Arc<Shared>, listen: SocketAddr, n: usize) -> Result<Started, String> {
    let probe = std::net::TcpListener::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = probe.local_addr().map_err(|e| e.to_string())?;
    drop(probe);
    let unix = match &shared.config.general.unix_socket_dir {
        Some(dir) => {
            let path = net::unix_socket_path(dir, addr.port());
            let socket = net::UnixSocket::bind(&path).map_err(|e| {
                format!("cannot listen on the Unix socket {} (unix_socket_dir): {e}", path.display())
            })?;
            Some(socket)
        }
        None => None,
    };
    let (tx, rx) = mpsc::channel::<(usize, Result<(), String>)>();
    let mut handles = Vec::new();
    for id in 0..n {
        let shared = shared.clone();
        let tx = tx.clone();
        let unix_handle = match &unix {
            Some(u) => {
                Some(u.handle().map_err(|e| format!("cannot share the Unix socket with shard {id}: {e}"))?)
            }
            None => None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("pgwarden-shard-{id}"))
            .spawn(move || run_shard(id, shared, addr, unix_handle, tx))
            .map_err(|e| format!("cannot start shard thread {id}: {e}"))?;
        handles.push(ShardHandle { id, thread });
    }
    drop(tx);
    for _ in 0..n {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok((_, Ok(()))) => {}
            Ok((id, Err(e))) => return Err(format!("shard {id} failed to start: {e}")),
            Err(_) => return Err("a shard did not report within 10 s".into()),
        }
    }
    Ok(Started { addr, unix, handles })
}

fn run_shard(
    id: usize,
    shared: Arc<Shared>,
    addr: SocketAddr,
    unix: Option<std::os::unix::net::UnixListener>,
    ready: mpsc::Sender<(usize, Result<(), String>)>,
) {
    if shared.config.general.pin_workers {
        pin_to_cpu(id);
    }
    let mut rt = match build_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send((id, Err(e)));
            return;
        }
    };
    rt.block_on(async move {
        let listener = match Listener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send((id, Err(format!("cannot listen on {addr}: {e}"))));
                return;
            }
        };
        let unix = match unix.map(net::UnixListener::new).transpose() {
            Ok(u) => u,
            Err(e) => {
                let _ = ready.send((id, Err(format!("cannot accept on the Unix socket: {e}"))));
                return;
            }
        };
        let ctx = ShardCtx::new(id, shared);
        let _ = ready.send((id, Ok(())));
        drop(ready);
        monoio::spawn(maintenance(ctx.clone()));
        // One task per listener: an accept is never dropped half-done (a
        // cancelled io_uring accept could lose the connection it took).
        let unix_loop = unix.map(|u| monoio::spawn(accept_loop(ctx.clone(), u)));
        accept_loop(ctx.clone(), listener).await;
        if let Some(task) = unix_loop {
            task.await;
        }
        drain(&ctx).await;
    });
}

/// Runs `fut` to completion on a temporary runtime on this thread (start-up
/// checks, before the shards start).
pub fn block_on<F: std::future::Future>(fut: F) -> Result<F::Output, String> {
    let mut rt = build_runtime()?;
    Ok(rt.block_on(fut))
}

/// Builds the shard's io_uring runtime, saying what to change if the kernel
/// refuses.
fn build_runtime() -> Result<monoio::Runtime<monoio::time::TimeDriver<IoUringDriver>>, String> {
    let mut urb = io_uring_06::IoUring::builder();
    urb.setup_single_issuer().setup_defer_taskrun();
    RuntimeBuilder::<IoUringDriver>::new()
        .with_entries(URING_ENTRIES)
        .uring_builder(urb)
        .enable_timer()
        .build()
        .or_else(|first| {
            // Kernels before 6.1 lack DEFER_TASKRUN; try without the flags.
            log::warn!("io_uring with SINGLE_ISSUER|DEFER_TASKRUN failed ({first}); retrying without them");
            RuntimeBuilder::<IoUringDriver>::new().with_entries(URING_ENTRIES).enable_timer().build()
        })
        .map_err(|e| {
            format!(
                "cannot create an io_uring instance: {e}. pgwarden needs Linux io_uring (5.11 or newer; 6.1+ recommended). \
                 Check that io_uring is not disabled (sysctl kernel.io_uring_disabled = 0), that seccomp or the container \
                 runtime allows io_uring_setup, and that RLIMIT_MEMLOCK is large enough on kernels before 5.12 (ulimit -l)."
            )
        })
}

/// Pins the current thread to CPU `id % cpus`.
fn pin_to_cpu(id: usize) {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(id % cpus, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            log::debug!("shard {id}: could not pin to a CPU: {}", std::io::Error::last_os_error());
        }
    }
}

async fn accept_loop(ctx: Rc<ShardCtx>, listener: impl net::Accept) {
    let max_clients = ctx.shared.config.general.max_client_connections as usize;
    let mut shutdown = std::pin::pin!(ctx.shutdown_signal());
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = &mut shutdown => break,
        };
        match accepted {
            Ok((rd, wr, peer)) => {
                let ctx2 = ctx.clone();
                let conn = ClientConn::new(rd, wr, peer);
                if ctx.clients.get() >= max_clients {
                    monoio::spawn(async move {
                        let mut conn = conn;
                        conn.fatal("53300", "sorry, too many clients already (max_client_connections)").await;
                    });
                    continue;
                }
                monoio::spawn(client_task(ctx2, conn));
            }
            Err(e) => {
                log::warn!("shard {}: accept failed: {e}", ctx.id);
                net::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    drop(listener);
    log::debug!("shard {}: stopped accepting", ctx.id);
}

/// After accepting stopped: lets running transactions finish for up to
/// `shutdown_timeout_ms`, then returns (dropping what is left).
async fn drain(ctx: &Rc<ShardCtx>) {
    let limit = Duration::from_millis(ctx.shared.config.general.shutdown_timeout_ms);
    let start = Instant::now();
    while ctx.clients.get() > 0 && start.elapsed() < limit {
        net::sleep(Duration::from_millis(20)).await;
    }
    if ctx.clients.get() > 0 {
        log::warn!(
            "shard {}: shutdown timeout reached with {} clients still connected",
            ctx.id,
            ctx.clients.get()
        );
    }
    ctx.reap();
}

/// One client's task: login, relay, goodbye.
async fn client_task(ctx: Rc<ShardCtx>, mut conn: ClientConn) {
    ctx.clients.set(ctx.clients.get() + 1);
    let peer = conn.peer;
    let started = Instant::now();
    log::info!("shard {}: client {peer} connected", ctx.id);
    // Login (~4 KiB) and relay (~5 KiB) are the large state machines:
    // boxed, the spawned task stays small and does not carry both inline
    // (login keeps its rare paths boxed where they are taken, so that it
    // stays this size).
    match Box::pin(login::open(&ctx, &mut conn)).await {
        Ok(Opening::Login(session, server)) => {
            log::info!(
                "shard {}: client {peer} authenticated as user \"{}\" database \"{}\"",
                ctx.id,
                session.user,
                session.database
            );
            let (user, db, pid, pool) =
                (session.user.clone(), session.database.clone(), session.pid, session.pool);
            let ClientConn { rd, wr, buf, tls, cipher, .. } = conn;
            let relay = Relay::new(ctx.clone(), session, server, buf, tls, cipher);
            let Finish { end, wr, mut tls, pending } = Box::pin(relay.run(rd, wr)).await;
            ctx.shared.cancel.unregister(pid);
            ctx.session_ended(pool);
            match end {
                End::ClientLeft => {}
                End::Shutdown => {
                    let msg = "terminating connection: pgwarden is shutting down";
                    send_fatal(wr, tls.as_deref_mut(), pending, "57P01", msg).await
                }
                End::Error(e) => {
                    log::warn!("shard {}: client {peer} (user \"{user}\"): {e}", ctx.id);
                    send_fatal(wr, tls.as_deref_mut(), pending, e.sqlstate(), &e.client_message()).await;
                }
            }
            log::info!(
                "shard {}: client {peer} disconnected (user \"{user}\" database \"{db}\", {:.1} s)",
                ctx.id,
                started.elapsed().as_secs_f64()
            );
        }
        Ok(Opening::Cancelled) => {}
        Err(crate::session::SessionError::ClientGone) => {}
        Err(e) => {
            log::info!("shard {}: client {peer} login failed: {e}", ctx.id);
            conn.fatal(e.sqlstate(), &e.client_message()).await;
        }
    }
    ctx.clients.set(ctx.clients.get() - 1);
}

/// Sends `pending` (answers not yet written), then a FATAL error.
async fn send_fatal(
    wr: Option<net::WriteHalf>,
    tls: Option<&mut TlsSession>,
    pending: Vec<u8>,
    sqlstate: &str,
    msg: &str,
) {
    if let Some(mut wr) = wr {
        let mut out = pending;
        crate::protocol::backend::error_response(&mut out, "FATAL", sqlstate, msg);
        if let Some(tls) = tls {
            let mut cipher = Vec::new();
            tls.encrypt(&mut out, &mut cipher);
            tls.close();
            tls.encrypt(&mut Vec::new(), &mut cipher);
            out = cipher;
        }
        let _ = net::write_all(&mut wr, out).await;
    }
}

/// Periodic per-shard housekeeping: reaps idle server connections and, at
/// shutdown, wakes every session.
async fn maintenance(ctx: Rc<ShardCtx>) {
    let mut notified = false;
    loop {
        net::sleep(REAP_INTERVAL.min(Duration::from_millis(100))).await;
        ctx.reap();
        if ctx.shared.shutting_down() && !notified {
            ctx.notify_shutdown();
            notified = true;
        }
        if notified && ctx.clients.get() == 0 {
            ctx.reap();
            break;
        }
    }
}
