//! The relay loop: full duplex between one client and, while a transaction
//! (or, in session mode, the session) runs, one server connection.
//!
//! Four operations can be outstanding at once, each owning its socket half
//! and buffer: client read, client write, server read, server write. One
//! receive is outstanding per socket; a direction stops reading while its
//! destination has more than [`PENDING_LIMIT`] bytes unsent, so memory per
//! session stays bounded however large a COPY or a row is.
//!
//! Messages are relayed as they stream in: only headers are parsed, plus
//! the few bodies a decision needs (named Parse, the names at the start of
//! Bind/Describe/Close, ReadyForQuery, ParameterStatus, CommandComplete,
//! ErrorResponse). Everything else passes through without being buffered
//! whole.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;

use crate::config::PoolMode;
use crate::net::tls::TlsSession;
use crate::net::{self, ReadHalf, WriteHalf};
use crate::protocol::backend;
use crate::protocol::frame::{self, Reader, Writer, HEADER_LEN};
use crate::protocol::frontend::FrontendMessage;
use crate::protocol::ProtocolError;
use crate::route::cluster::Want;
use crate::route::HostRole;
use crate::session::ctx::Check;
use crate::session::ctx::ShardCtx;
use crate::session::flow::{Expect, Fake, Flow, Undo, Verdict};
use crate::session::login::{self, Session};
use crate::session::prepared::{ClientStatements, StmtDef};
use crate::session::server::{PgError, ServerConn};
use crate::session::SessionError;
use crate::sql::{sql_prepared, SqlPrepared};

/// Simple queries up to this size are checked for PREPARE/EXECUTE/DEALLOCATE.
const SQL_PREPARED_INSPECT_MAX: usize = 64 * 1024;
/// Largest Query, Parse or FunctionCall a session locked to its token's role
/// may send: each must be read whole and checked before it is relayed.
const ROLE_INSPECT_MAX: usize = 1024 * 1024;

/// Why a role-locked session's refused statement is refused.
const ROLE_REFUSAL: &str =
    "statement refused: this session is locked to the role its token names; SET ROLE, \
     RESET ROLE, SET SESSION AUTHORIZATION, set_config(), DO blocks and DISCARD ALL are not allowed";

/// Most times one read-only request is sent again after its server closed.
const MAX_RETRIES: u32 = 8;

/// Most bytes of a kept request's answer held back (row descriptions and
/// rows, before the command completes) so that a server that dies mid-answer
/// can be replaced without the client seeing half an answer. Past this the
/// answer streams to the client and the request is no longer replayed.
const RETRY_HOLD_MAX: usize = 64 * 1024;

/// Unsent bytes toward one side above which the other side is not read.
pub const PENDING_LIMIT: usize = 256 * 1024;

/// Reported parameters a client's change of which is not replayed on other
/// server connections: read-only ones, and the session's identity.
const NOT_REPLAYED: &[&str] = &[
    "server_version",
    "server_encoding",
    "integer_datetimes",
    "is_superuser",
    "in_hot_standby",
    "session_authorization",
    "scram_iterations",
];

/// How long the end of a session waits for a write in flight.
const SETTLE_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// How a relay ended.
#[derive(Debug)]
pub enum End {
    /// The client sent Terminate or closed its socket.
    ClientLeft,
    /// pgwarden is shutting down and the client was idle.
    Shutdown,
    /// An error the client should hear about (sent as FATAL).
    Error(SessionError),
}

/// How a relay ended, and what is left to tell the client.
pub struct Finish {
    pub end: End,
    pub wr: Option<WriteHalf>,
    pub tls: Option<Box<TlsSession>>,
    /// Client output produced but not written yet (answers to what the
    /// client sent before the end): sent before the final error.
    pub pending: Vec<u8>,
}

/// Relay state for one client.
pub struct Relay {
    ctx: Rc<ShardCtx>,
    session: Session,
    mode: PoolMode,
    max_msg: u32,
    track_prepared: bool,
    server: Option<Box<ServerConn>>,
    flow: Flow,
    stmts: ClientStatements,
    /// The client's SQL-level prepared statements: name -> PREPARE text.
    sql_stmts: HashMap<String, Rc<[u8]>>,
    /// For each simple query in flight, what it does to SQL-level prepared
    /// statements (applied when its CommandComplete arrives).
    sql_pending: VecDeque<Option<(SqlPrepared, Rc<[u8]>)>>,
    /// Client bytes read and not yet processed.
    c_in: Vec<u8>,
    /// Bytes of the current client message still to stream to the server.
    c_skip: usize,
    /// Bytes of the current server message still to stream (or swallow).
    s_skip: usize,
    s_skip_forward: bool,
    /// Bytes queued for the client / the server.
    c_out: Vec<u8>,
    s_out: Vec<u8>,
    /// Spare buffers to swap with in-flight writes.
    c_spare: Vec<u8>,
    s_spare: Vec<u8>,
    terminated: bool,
    /// Bytes of a refused client message still to drop.
    c_skip_discard: usize,
    /// After a request was refused: client messages are dropped up to and
    /// including the next Sync, which is answered with ReadyForQuery.
    discarding: bool,
    /// The client's TLS state, when it uses TLS: reads carry ciphertext into
    /// `c_cipher` and are decrypted into `c_in`; `c_out` is encrypted on its
    /// way out.
    tls: Option<Box<TlsSession>>,
    c_cipher: Vec<u8>,
    /// A read-only session saw read-only turned off: it must end.
    violation: Option<SessionError>,
    /// The database has several hosts: each transaction is routed.
    routed: bool,
    /// A copy of the request just sent to a freshly bound server, kept
    /// until the server's first answer is forwarded: if the server instead
    /// closes (a restart, a dead pooled connection), the request goes to
    /// another connection. Only requests that cannot write are kept.
    retry_buf: Vec<u8>,
    retry_armed: bool,
    /// Bytes of the routed request not yet processed: while the request is
    /// kept (`retry_armed`) or its server is a replica (`route_held`), client
    /// input past it waits, so that nothing is sent that the copy lacks and
    /// no next transaction reaches a replica unrouted.
    req_left: usize,
    /// Bound to a replica for a request routed as a read: the next request
    /// waits until this server is back in the pool, then is routed itself.
    route_held: bool,
    /// The length of the request `request_reads_only` last judged a read.
    route_len: usize,
    /// The bound server closed before answering an armed request.
    retry_now: bool,
    /// Retries of the current request.
    retries: u32,
    retry_why: String,
    /// The length of `c_out` when the kept request was sent: answer bytes
    /// past it are held back, and dropped if the request is sent again.
    retry_mark: usize,
    /// The bound server has answered a request since it was bound (so an
    /// idle flow means "done", not "not started").
    answered: bool,
}

/// What processing client input needs before it can go on.
enum Need {
    /// More bytes from the client.
    Input,
    /// A server connection.
    Server,
    /// The client sent Terminate.
    Terminate,
}

impl Relay {
    pub fn new(
        ctx: Rc<ShardCtx>,
        session: Session,
        server: Option<Box<ServerConn>>,
        c_in: Vec<u8>,
        tls: Option<Box<TlsSession>>,
        c_cipher: Vec<u8>,
    ) -> Relay {
        let g = &ctx.shared.config.general;
        let mode = ctx.def(session.pool).mode;
        let max_msg = g.max_message_size;
        let track_prepared = mode == PoolMode::Transaction && g.prepared_statements_cache_size > 0;
        let mut r = Relay {
            ctx,
            session,
            mode,
            max_msg,
            track_prepared,
            server: None,
            flow: Flow::new(),
            stmts: ClientStatements::default(),
            sql_stmts: HashMap::new(),
            sql_pending: VecDeque::new(),
            c_in,
            c_skip: 0,
            s_skip: 0,
            s_skip_forward: true,
            // Small to start (a login should not cost 64 KiB of fresh
            // pages); they grow with the traffic and are then reused.
            c_out: Vec::with_capacity(4 * 1024),
            s_out: Vec::with_capacity(4 * 1024),
            c_spare: Vec::new(),
            s_spare: Vec::new(),
            terminated: false,
            discarding: false,
            c_skip_discard: 0,
            tls,
            c_cipher,
            violation: None,
            routed: false,
            retry_buf: Vec::new(),
            retry_armed: false,
            req_left: 0,
            route_held: false,
            route_len: 0,
            retry_now: false,
            retries: 0,
            retry_why: String::new(),
            retry_mark: 0,
            answered: false,
        };
        r.routed = !r.ctx.def(r.session.pool).cluster.single();
        if let Some(s) = server {
            r.bind(s);
        }
        r
    }

    /// The pool of the bound server (or of the last one).
    fn bound(&self) -> usize {
        self.session.pool + self.session.host
    }

    fn bind(&mut self, s: Box<ServerConn>) {
        log::trace!("shard {}: client pid {} binds server pid {}", self.ctx.id, self.session.pid, s.pid);
        self.session.cancel.bind(s.target, s.pid, s.key);
        self.flow.reset();
        self.answered = false;
        self.server = Some(s);
    }

    /// Runs until the client leaves or an error ends the session. Returns
    /// what the caller needs to send a final error: the client's write half,
    /// its TLS state, and output not yet written (which goes first).
    pub async fn run(mut self, client_rd: ReadHalf, client_wr: WriteHalf) -> Finish {
        let mut c_read = pin!(net::arm_read(None));
        let mut c_write = pin!(net::arm_write(None));
        let mut s_read = pin!(net::arm_read_cancelable(None));
        let mut s_cancel = net::Canceller::new();
        let mut s_write = pin!(net::arm_write(None));
        let shutdown_ctx = self.ctx.clone();
        let mut shutdown = pin!(shutdown_ctx.shutdown_signal());
        let mut c_rd = Some(client_rd);
        let mut c_wr = Some(client_wr);
        let mut shutting_down = false;

        // Bytes that arrived with the startup packet.
        if let Err(end) = self.process_client().await {
            self.abandon_server();
            return Finish { end, wr: c_wr, tls: self.tls.take(), pending: std::mem::take(&mut self.c_out) };
        }
        let end = loop {
            // Start writes that have bytes waiting.
            // While a request may still be sent again, the first part of its
            // answer is held back (see `RETRY_HOLD_MAX`).
            let client_due = !self.retry_armed
                && (!self.c_out.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write()));
            if client_due {
                if let Some(wr) = c_wr.take() {
                    let buf = match self.tls.as_mut() {
                        Some(tls) => {
                            let mut cipher = std::mem::take(&mut self.c_spare);
                            cipher.clear();
                            tls.encrypt(&mut self.c_out, &mut cipher);
                            cipher
                        }
                        None => std::mem::replace(&mut self.c_out, std::mem::take(&mut self.c_spare)),
                    };
                    c_write.set(net::arm_write(Some((wr, buf))));
                }
            }
            if !self.s_out.is_empty() {
                if let Some(wr) = self.server.as_mut().and_then(|s| s.wr.take()) {
                    let buf = std::mem::replace(&mut self.s_out, std::mem::take(&mut self.s_spare));
                    s_write.set(net::arm_write(Some((wr, buf))));
                }
            }
            // Arm reads unless the other side is backed up.
            // Input held back (see `req_left`) stays in `c_in`: the client is
            // not read until it is processed, so it cannot end up in a read.
            if c_read.is_none()
                && !self.terminated
                && !self.input_held()
                && self.s_out.len() < PENDING_LIMIT
                && self.c_out.len() < PENDING_LIMIT
            {
                if let Some(rd) = c_rd.take() {
                    let buf = if self.tls.is_some() {
                        let mut cipher = std::mem::take(&mut self.c_cipher);
                        if cipher.capacity() < login::CLIENT_READ_BUF {
                            cipher.reserve(login::CLIENT_READ_BUF);
                        }
                        cipher
                    } else {
                        std::mem::take(&mut self.c_in)
                    };
                    c_read.set(net::arm_read(Some((rd, buf))));
                }
            }
            // A transaction-mode server that answered everything is about to
            // go back to the pool: not read, so that its release (which needs
            // both halves home) is not put off until it sends again.
            if s_read.is_none() && self.c_out.len() < PENDING_LIMIT && !self.awaiting_release() {
                if let Some(rd) = self.server.as_mut().and_then(|s| s.rd.take()) {
                    let buf = std::mem::take(&mut self.server.as_mut().expect("bound").buf);
                    s_read.set(net::arm_read_cancelable(Some((rd, buf, s_cancel.handle()))));
                }
            }
            if self.terminated {
                break End::ClientLeft;
            }

            let ev = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = net::poll_slot(s_read.as_mut(), cx) {
                    return Poll::Ready(Event::ServerRead(r));
                }
                if let Poll::Ready(r) = net::poll_slot(c_read.as_mut(), cx) {
                    return Poll::Ready(Event::ClientRead(r));
                }
                if let Poll::Ready(r) = net::poll_slot(c_write.as_mut(), cx) {
                    return Poll::Ready(Event::ClientWrite(r));
                }
                if let Poll::Ready(r) = net::poll_slot(s_write.as_mut(), cx) {
                    return Poll::Ready(Event::ServerWrite(r));
                }
                if !shutting_down && shutdown.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Shutdown);
                }
                Poll::Pending
            })
            .await;

            let step = match ev {
                Event::ClientRead((rd, res, buf)) => {
                    c_read.set(net::arm_read(None));
                    c_rd = Some(rd);
                    match (res, self.tls.as_mut()) {
                        (Ok(0) | Err(_), _) => {
                            if self.tls.is_some() {
                                self.c_cipher = buf;
                            } else {
                                self.c_in = buf;
                            }
                            Err(End::ClientLeft)
                        }
                        (Ok(_), Some(tls)) => {
                            let mut cipher = buf;
                            let res = tls.decrypt(&mut cipher, &mut self.c_in);
                            self.c_cipher = cipher;
                            match res {
                                Ok(false) => self.process_client().await,
                                // What came with the close_notify still counts.
                                Ok(true) => self.process_client().await.and(Err(End::ClientLeft)),
                                Err(e) => {
                                    log::info!("shard {}: client TLS error: {}", self.ctx.id, e.0);
                                    Err(End::ClientLeft)
                                }
                            }
                        }
                        (Ok(_), None) => {
                            self.c_in = buf;
                            self.process_client().await
                        }
                    }
                }
                Event::ServerRead((rd, res, buf)) => {
                    s_read.set(net::arm_read_cancelable(None));
                    let s = self.server.as_mut().expect("server read while bound");
                    s.rd = Some(rd);
                    s.buf = buf;
                    match res {
                        Ok(0) | Err(_) if self.retry_armed || self.idle_between_transactions() => {
                            self.retry_now = true;
                            self.retry_why = match res {
                                Err(e) => e.to_string(),
                                _ => "connection closed".into(),
                            };
                            Ok(())
                        }
                        Ok(0) => {
                            Err(End::Error(SessionError::ServerLost("server closed the connection".into())))
                        }
                        Err(e) => Err(End::Error(SessionError::ServerLost(e.to_string()))),
                        Ok(_) => match self.process_server().await {
                            // Client input held while a retry was possible.
                            Ok(()) if !self.retry_armed && !self.c_in.is_empty() && !self.retry_now => {
                                self.process_client().await
                            }
                            other => other,
                        },
                    }
                }
                Event::ClientWrite((wr, res, buf)) => {
                    c_write.set(net::arm_write(None));
                    c_wr = Some(wr);
                    self.c_spare = buf;
                    match res {
                        Ok(()) if !self.c_in.is_empty() && c_read.is_none() => self.process_client().await,
                        Ok(()) => Ok(()),
                        Err(_) => Err(End::ClientLeft),
                    }
                }
                Event::ServerWrite((wr, res, buf)) => {
                    s_write.set(net::arm_write(None));
                    self.s_spare = buf;
                    match self.server.as_mut() {
                        Some(s) => s.wr = Some(wr),
                        None => drop(wr),
                    }
                    match res {
                        // Input held back while the server was slow to read,
                        // or until the server went back to the pool.
                        Ok(()) if !self.c_in.is_empty() && self.server.is_some() => {
                            match self.maybe_release().await {
                                Ok(()) => self.process_client().await,
                                Err(end) => Err(end),
                            }
                        }
                        Ok(()) => self.maybe_release().await,
                        Err(e) if self.retry_armed => {
                            self.retry_now = true;
                            self.retry_why = e.to_string();
                            Ok(())
                        }
                        Err(e) => Err(End::Error(SessionError::ServerLost(e.to_string()))),
                    }
                }
                Event::Shutdown => {
                    shutting_down = true;
                    Ok(())
                }
            };
            if let Err(end) = step {
                break end;
            }
            if self.retry_now {
                self.retry_now = false;
                // Take the dead server's halves back from operations in flight.
                if let Some(f) = s_read.as_mut().as_pin_mut() {
                    std::mem::replace(&mut s_cancel, net::Canceller::new()).cancel();
                    let (rd, _, buf) = f.await;
                    s_read.set(net::arm_read_cancelable(None));
                    if let Some(s) = self.server.as_mut() {
                        s.rd = Some(rd);
                        s.buf = buf;
                    }
                }
                if let Some(f) = s_write.as_mut().as_pin_mut() {
                    let _ = net::timeout(SETTLE_WRITE_TIMEOUT, f).await;
                    s_write.set(net::arm_write(None));
                }
                let why = std::mem::take(&mut self.retry_why);
                if let Err(end) = self.retry(&why).await {
                    break end;
                }
            }
            if shutting_down && self.server.is_none() && self.c_in.is_empty() && self.c_out.is_empty() {
                break End::Shutdown;
            }
        };
        // Settle: take the server's halves back from operations in flight,
        // so that a server at a clean boundary can be reused.
        if self.server.is_some() {
            if let Some(f) = s_read.as_mut().as_pin_mut() {
                s_cancel.cancel();
                let (rd, res, buf) = f.await;
                s_read.set(net::arm_read_cancelable(None));
                let s = self.server.as_mut().expect("bound");
                s.rd = Some(rd);
                s.buf = buf;
                if matches!(res, Ok(n) if n > 0) && self.server_step().is_err() {
                    self.flow.mark_broken();
                }
            }
            if let Some(f) = s_write.as_mut().as_pin_mut() {
                if let Some((wr, res, _)) = net::timeout(SETTLE_WRITE_TIMEOUT, f).await {
                    if res.is_ok() {
                        if let Some(s) = self.server.as_mut() {
                            s.wr = Some(wr);
                        }
                    }
                }
                s_write.set(net::arm_write(None));
            }
        }
        self.abandon_server();
        if let Some(f) = c_write.as_mut().as_pin_mut() {
            if let Some((wr, Ok(()), _)) = net::timeout(SETTLE_WRITE_TIMEOUT, f).await {
                c_wr = Some(wr);
            }
        }
        // Whole messages only: a message cut mid-stream cannot be followed
        // by an error the client could read.
        let pending = if self.s_skip == 0 { std::mem::take(&mut self.c_out) } else { Vec::new() };
        Finish { end, wr: c_wr, tls: self.tls.take(), pending }
    }

    /// Processes buffered client input as far as it goes, checking out a
    /// server when a message needs one.
    async fn process_client(&mut self) -> Result<(), End> {
        loop {
            match self.client_step() {
                Ok(Need::Input) => return Ok(()),
                Ok(Need::Terminate) => {
                    self.terminated = true;
                    self.c_in.clear();
                    return Ok(());
                }
                Ok(Need::Server) => {
                    if self.ctx.shared.shutting_down() && self.flow.idle() {
                        return Err(End::Error(SessionError::Shutdown));
                    }
                    self.check_expiry()?;
                    let base = self.session.pool;
                    let mut retry_len = None;
                    let mut wanted = None;
                    let checkout = if self.routed {
                        let Some(want) = self.want() else { return Ok(()) };
                        wanted = Some(want);
                        if self.mode == PoolMode::Transaction
                            && (want == Want::Read || self.session.read_only)
                        {
                            retry_len = self.retry_shape();
                        }
                        self.ctx.checkout_routed(base, want).await
                    } else {
                        self.ctx.checkout(base).await.map(|s| (0, s))
                    };
                    let (host, mut server) = match checkout {
                        Ok(s) => s,
                        Err(e) => return self.refuse_request(e),
                    };
                    if let Err(e) = login::sync_params(&mut server, &self.session.params).await {
                        self.ctx.discard(base + host, server);
                        return self.refuse_request(e);
                    }
                    log::debug!(
                        "shard {}: client pid {} routed to host {host} for {wanted:?} (server pid {})",
                        self.ctx.id,
                        self.session.pid,
                        server.pid
                    );
                    self.session.host = host;
                    self.bind(server);
                    let standby = self.routed
                        && self.ctx.def(base).cluster.hosts[host].role() == Some(HostRole::Replica);
                    // A read on a replica: what follows it waits for routing.
                    self.route_held = standby && wanted == Some(Want::Read);
                    self.req_left = self.route_len;
                    // Replayed only on a hot standby (a "read" on the primary
                    // may call a function that writes), and only when no
                    // earlier output is waiting (the answer is held back).
                    match retry_len {
                        Some(len) if standby && self.c_out.is_empty() => self.arm_retry(len),
                        _ => self.retries = 0,
                    }
                }
                Err(e) => return Err(End::Error(e.into())),
            }
        }
    }

    /// What the request at the start of `c_in` needs from the database's
    /// hosts; `None` while more of it must arrive to decide.
    fn want(&mut self) -> Option<Want> {
        if self.session.read_only {
            return Some(Want::ReadOnlyUser);
        }
        if self.mode == PoolMode::Session
            || self.session.pin_primary
            || !self.ctx.shared.config.general.read_write_split
        {
            return Some(Want::Primary);
        }
        match self.request_reads_only() {
            Some(true) => Some(Want::Read),
            Some(false) => Some(Want::Primary),
            None => None,
        }
    }

    /// Whether the request at the start of `c_in` only reads: a whole simple
    /// query, or extended-protocol messages up to a Sync, whose statements
    /// all read ([`Self::reads_only`]). A Flush before the Sync, a function
    /// call, or a statement whose text is not in view (an unnamed statement
    /// prepared earlier) go to the primary. `None`: wait for more input.
    fn request_reads_only(&mut self) -> Option<bool> {
        let mut pos = 0;
        let mut unnamed_reads = false;
        let mut any = false;
        loop {
            let h = match frame::read_header(&self.c_in[pos..], self.max_msg) {
                Ok(Some(h)) => h,
                Ok(None) => return self.route_needs(pos + HEADER_LEN),
                // The relay reports it.
                Err(_) => return Some(false),
            };
            let end = pos + h.total_len();
            if end > self.c_in.len() {
                return self.route_needs(end);
            }
            let body = &self.c_in[pos + HEADER_LEN..end];
            match h.tag {
                b'Q' if pos == 0 => {
                    self.route_len = end;
                    return Some(self.reads_only(body.strip_suffix(&[0]).unwrap_or(body)));
                }
                b'P' => {
                    // Name and text only: no allocation for the types.
                    let mut r = Reader::new(b'P', body);
                    let (Ok(name), Ok(query)) = (r.cstr("statement name"), r.cstr("query")) else {
                        return Some(false);
                    };
                    if !self.reads_only(query) {
                        return Some(false);
                    }
                    unnamed_reads |= name.is_empty();
                    any = true;
                }
                b'B' => {
                    let mut r = Reader::new(b'B', body);
                    let (Ok(_), Ok(stmt)) = (r.cstr("portal"), r.cstr("statement")) else {
                        return Some(false);
                    };
                    let known = if stmt.is_empty() {
                        unnamed_reads
                    } else {
                        let def = self.stmts.get(stmt).cloned();
                        def.is_some_and(|d| match d.reads_only.get() {
                            Some(r) => r,
                            None => {
                                // The text of a prepared statement never
                                // changes: judged once per shard.
                                let r = self.reads_only(&d.query);
                                d.reads_only.set(Some(r));
                                r
                            }
                        })
                    };
                    if !known {
                        return Some(false);
                    }
                    any = true;
                }
                b'D' | b'E' | b'C' => {}
                b'S' => {
                    self.route_len = end;
                    return Some(any);
                }
                _ => return Some(false),
            }
            pos = end;
        }
    }

    /// The length of the request at the start of `c_in` if it can be
    /// replayed on another connection: a whole simple query that does not
    /// touch SQL-level prepared statements, or unnamed Parse, Bind,
    /// Describe and Execute messages up to a Sync (named Parse and Close
    /// change what the client has prepared, Flush waits for answers).
    fn retry_shape(&self) -> Option<usize> {
        let mut pos = 0;
        loop {
            let (h, body) = frame::read_message(&self.c_in[pos..], self.max_msg).ok()??;
            pos += h.total_len();
            match h.tag {
                b'Q' if pos == h.total_len() => {
                    let text = body.strip_suffix(&[0]).unwrap_or(body);
                    return (sql_prepared(text).is_none() && pos <= ROLE_INSPECT_MAX).then_some(pos);
                }
                b'P' if body.first() == Some(&0) => {}
                b'B' | b'D' | b'E' => {}
                b'S' => return (pos <= ROLE_INSPECT_MAX).then_some(pos),
                _ => return None,
            }
        }
    }

    /// Keeps a copy of the request about to be relayed to the server just
    /// bound, until its first answer.
    fn arm_retry(&mut self, len: usize) {
        self.retry_mark = self.c_out.len();
        self.retry_buf.clear();
        self.retry_buf.extend_from_slice(&self.c_in[..len]);
        self.retry_armed = true;
        self.req_left = len;
    }

    /// Client input waits in `c_in` for the bound server to answer or go
    /// back to the pool.
    fn input_held(&self) -> bool {
        !self.c_in.is_empty()
            && (self.retry_armed || self.route_held || (self.routed && self.awaiting_release()))
    }

    fn disarm_retry(&mut self) {
        self.retry_armed = false;
        self.retry_buf.clear();
        self.retries = 0;
    }

    /// A bound transaction-mode server with nothing outstanding: it goes
    /// back to the pool as soon as its halves are home.
    fn awaiting_release(&self) -> bool {
        self.mode == PoolMode::Transaction
            && self.answered
            && !self.retry_armed
            && self.c_skip == 0
            && self.s_skip == 0
            && self.s_out.is_empty()
            && self.flow.idle()
            && self.server.as_ref().is_some_and(|s| s.buf.is_empty())
    }

    /// A transaction-mode server that answered everything and has not been
    /// released yet (its last write still settling): if it closes now, the
    /// client lost nothing, and keeps its session.
    fn idle_between_transactions(&self) -> bool {
        self.mode == PoolMode::Transaction && !self.retry_armed && self.flow.idle() && self.s_out.is_empty()
    }

    /// The bound server closed before answering a kept request: drop it
    /// (and this shard's other idle connections to that host, likely closed
    /// too), put the request back in front of the client's input, and
    /// route it again. At most [`MAX_RETRIES`] times per request.
    async fn retry(&mut self, why: &str) -> Result<(), End> {
        let replay = self.retry_armed;
        self.retry_armed = false;
        self.route_held = false;
        // The unprocessed tail of the request is in the copy already.
        let tail = if replay { self.req_left.min(self.c_in.len()) } else { 0 };
        self.req_left = 0;
        let Some(server) = self.server.take() else { return Ok(()) };
        self.session.cancel.unbind();
        if replay {
            // What the dead server sent of its answer is dropped.
            self.c_out.truncate(self.retry_mark);
            self.retries += 1;
            log::info!(
                "shard {}: server {} closed before answering ({why}); sending the request of client pid {} again (retry {})",
                self.ctx.id,
                server.addr,
                self.session.pid,
                self.retries
            );
        } else {
            self.retry_buf.clear();
            log::info!(
                "shard {}: server {} closed between transactions ({why}); client pid {} keeps its session",
                self.ctx.id,
                server.addr,
                self.session.pid
            );
        }
        self.ctx.discard(self.bound(), server);
        let stale = self.ctx.with_slice(self.bound(), |s| s.drain());
        drop(stale);
        self.s_out.clear();
        self.s_skip = 0;
        self.c_skip = 0;
        self.flow.reset();
        self.sql_pending.clear();
        let rest = std::mem::take(&mut self.c_in);
        self.c_in.extend_from_slice(&self.retry_buf);
        self.c_in.extend_from_slice(&rest[tail..]);
        if self.retries > MAX_RETRIES {
            return Err(End::Error(SessionError::ServerLost(format!(
                "{why}; the request failed on {MAX_RETRIES} server connections in a row"
            ))));
        }
        self.process_client().await
    }

    /// Waits for `need` bytes of a request to route, unless that is more
    /// than inspection reads: then it goes to the primary.
    fn route_needs(&mut self, need: usize) -> Option<bool> {
        if need > ROLE_INSPECT_MAX {
            return Some(false);
        }
        if self.c_in.capacity() < need {
            self.c_in.reserve(need - self.c_in.len());
        }
        None
    }

    /// Whether a statement may run on a replica: it writes nothing by the
    /// read-only inspection (lexer, then the grammar for what the lexer
    /// flags), needs nothing only the primary has ([`crate::sql::needs_primary`]),
    /// and does not mention pgwarden (a `/* pgwarden:primary */` hint, or
    /// `SET pgwarden.route`).
    fn reads_only(&self, text: &[u8]) -> bool {
        match crate::sql::route_of(text) {
            crate::sql::Route::Read => true,
            crate::sql::Route::Primary => false,
            crate::sql::Route::AskGrammar => self.ctx.grammar_clears(Check::Write, text),
        }
    }

    /// Answers a request that cannot get a server with an ErrorResponse and
    /// drops the request, as Postgres does after an error: the rest of the
    /// client's pipeline up to the next Sync (or the current Query) is
    /// skipped and ReadyForQuery follows, so the client can retry.
    fn refuse_request(&mut self, e: SessionError) -> Result<(), End> {
        if matches!(e, SessionError::Shutdown) {
            return Err(End::Error(e));
        }
        log::warn!(
            "shard {}: {} (user \"{}\", database \"{}\")",
            self.ctx.id,
            e,
            self.session.user,
            self.session.database
        );
        backend::error_response(&mut self.c_out, "ERROR", e.sqlstate(), &e.client_message());
        match self.c_in.first() {
            // A simple query or function call: drop it (streaming any part
            // not yet here) and answer ReadyForQuery.
            Some(b'Q' | b'F') => {
                let h = frame::read_header(&self.c_in, self.max_msg)
                    .map_err(|pe| End::Error(pe.into()))?
                    .expect("a header was read before");
                let n = h.total_len().min(self.c_in.len());
                self.c_in.drain(..n);
                self.c_skip_discard = h.total_len() - n;
                self.ready_for_query(b'I');
            }
            // Extended protocol: Postgres skips to the next Sync.
            _ => self.discarding = true,
        }
        Ok(())
    }

    fn ready_for_query(&mut self, status: u8) {
        let mut w = Writer::new(&mut self.c_out, b'Z');
        w.u8(status);
        w.finish();
    }

    /// Drops client input while discarding; returns bytes consumed and
    /// whether discarding ended (at a Sync).
    fn discard_step(&mut self, pos: usize) -> Result<Option<usize>, ProtocolError> {
        if self.c_skip_discard > 0 {
            let n = self.c_skip_discard.min(self.c_in.len() - pos);
            self.c_skip_discard -= n;
            return Ok(if n == 0 { None } else { Some(n) });
        }
        let Some(h) = frame::read_header(&self.c_in[pos..], self.max_msg)? else { return Ok(None) };
        if h.tag == b'S' {
            if self.c_in.len() - pos < h.total_len() {
                return Ok(None);
            }
            self.discarding = false;
            self.ready_for_query(b'I');
            return Ok(Some(h.total_len()));
        }
        let n = h.total_len().min(self.c_in.len() - pos);
        self.c_skip_discard = h.total_len() - n;
        Ok(Some(n))
    }

    /// One pass over buffered client input.
    fn client_step(&mut self) -> Result<Need, ProtocolError> {
        let mut pos = 0;
        let res = loop {
            // The routed request is whole in `c_in`: stop after it.
            if (self.retry_armed || self.route_held) && pos >= self.req_left {
                break Ok(Need::Input);
            }
            if self.discarding || self.c_skip_discard > 0 {
                match self.discard_step(pos)? {
                    Some(n) => {
                        pos += n;
                        continue;
                    }
                    None => break Ok(Need::Input),
                }
            }
            if self.c_skip > 0 {
                let n = self.c_skip.min(self.c_in.len() - pos);
                if n == 0 {
                    break Ok(Need::Input);
                }
                self.s_out.extend_from_slice(&self.c_in[pos..pos + n]);
                pos += n;
                self.c_skip -= n;
                continue;
            }
            let avail = &self.c_in[pos..];
            let Some(h) = frame::read_header(avail, self.max_msg)? else { break Ok(Need::Input) };
            if h.tag == b'X' {
                break Ok(Need::Terminate);
            }
            if self.routed && self.awaiting_release() {
                // A new transaction: routed afresh once this server is back
                // in the pool (its last write is settling).
                break Ok(Need::Input);
            }
            if self.server.is_none() {
                match self.answer_locally(pos)? {
                    Some(n) => {
                        pos += n;
                        continue;
                    }
                    None => break Ok(Need::Server),
                }
            }
            match self.client_message(h, pos)? {
                Some(used) => pos += used,
                None => break Ok(Need::Input),
            }
            if self.s_out.len() >= PENDING_LIMIT || self.c_out.len() >= PENDING_LIMIT {
                break Ok(Need::Input);
            }
        };
        self.c_in.drain(..pos);
        if self.retry_armed || self.route_held {
            self.req_left = self.req_left.saturating_sub(pos);
        }
        self.emit_fakes();
        res
    }

    /// Answers, without a server connection, a request made only of Parse
    /// messages for statements already known to parse on this pool and
    /// Close messages for statements, ended by Sync (what PQprepare and
    /// drivers' statement cleanup send). Besides saving a round trip, this
    /// is what keeps a client that prepares synchronously while its other
    /// connections hold every server (pgbench -M prepared, -c > pool_size)
    /// from deadlocking: it never waits for a server just to prepare.
    /// Returns the bytes consumed, or None if the request needs a server.
    fn answer_locally(&mut self, start: usize) -> Result<Option<usize>, ProtocolError> {
        if !self.track_prepared {
            return Ok(None);
        }
        // First pass: check the whole request qualifies.
        let mut pos = start;
        loop {
            let Some((h, body)) = frame::read_message(&self.c_in[pos..], self.max_msg)? else {
                return Ok(None);
            };
            match h.tag {
                b'S' => break,
                b'P' => {
                    let (name, query, types) = decode_parse(body)?;
                    if name.is_empty() || self.stmts.contains(name) {
                        return Ok(None);
                    }
                    // Checked (and refused) on the way to a server.
                    if self.refusal(query).is_some() {
                        return Ok(None);
                    }
                    let def = self.ctx.registry.borrow_mut().intern(query, &types);
                    if !def.validated_for(self.session.pool) {
                        return Ok(None);
                    }
                }
                b'C' => {
                    if body.first() != Some(&b'S') || body.len() < 2 {
                        return Ok(None);
                    }
                }
                _ => return Ok(None),
            }
            pos += h.total_len();
        }
        // Second pass: apply.
        let mut pos = start;
        loop {
            let (h, body) = frame::read_message(&self.c_in[pos..], self.max_msg)?.expect("checked above");
            pos += h.total_len();
            match h.tag {
                b'S' => break,
                b'P' => {
                    let (name, query, types) = decode_parse(body)?;
                    let def = self.ctx.registry.borrow_mut().intern(query, &types);
                    self.stmts.insert(name.into(), def);
                    self.c_out.extend_from_slice(&[b'1', 0, 0, 0, 4]);
                }
                _ => {
                    let mut r = Reader::new(b'C', &body[1..]);
                    let name = r.cstr("statement name")?;
                    self.stmts.remove(name);
                    self.c_out.extend_from_slice(&[b'3', 0, 0, 0, 4]);
                }
            }
        }
        self.ready_for_query(b'I');
        Ok(Some(pos - start))
    }

    /// Handles the client message whose header is at `pos`. Returns the
    /// bytes consumed, or None when more input is needed.
    fn client_message(&mut self, mut h: frame::Header, pos: usize) -> Result<Option<usize>, ProtocolError> {
        let avail = self.c_in.len() - pos;
        let mut whole = avail >= h.total_len();
        let inspect = self.session.role_locked || self.session.read_only;
        // Inspected even while the server is thought to skip to Sync: that
        // guess can be wrong, and rewriting an ignored message is harmless.
        // With several hosts, whole statements are also read for pgwarden's
        // routing settings (larger ones stream on unread).
        if (inspect || self.routed) && matches!(h.tag, b'Q' | b'P' | b'F') {
            if !whole && inspect {
                if h.total_len() > ROLE_INSPECT_MAX {
                    return Err(ProtocolError::TooLarge {
                        tag: h.tag,
                        len: h.total_len(),
                        max: ROLE_INSPECT_MAX,
                    });
                }
                return self.need_whole(h, pos);
            }
            if whole && self.refuse_unsafe(h, pos, inspect)? {
                h = frame::read_header(&self.c_in[pos..], self.max_msg)?.expect("rewritten message is whole");
                whole = true;
            }
        }
        if self.flow.skipping() && h.tag != b'S' {
            // The server ignores everything up to the Sync after an error:
            // relay it untouched, with no bookkeeping (no statement is
            // prepared, named or closed by it).
            if !matches!(h.tag, b'Q' | b'P' | b'B' | b'D' | b'C' | b'E' | b'H' | b'F' | b'd' | b'c' | b'f') {
                return Err(ProtocolError::UnexpectedTag { tag: h.tag });
            }
            return Ok(Some(self.stream(h, pos)));
        }
        match h.tag {
            b'Q' => {
                if !whole && h.total_len() <= SQL_PREPARED_INSPECT_MAX {
                    return self.need_whole(h, pos);
                }
                if !whole {
                    // Too large to inspect: assume the worst.
                    self.server.as_mut().expect("bound").dirty.session = true;
                    if self.flow.push(Expect::Query { swallow: false }) {
                        self.sql_pending.push_back(None);
                    }
                    return Ok(Some(self.stream(h, pos)));
                }
                let text = &self.c_in[pos + HEADER_LEN..pos + h.total_len()];
                let text = text.strip_suffix(&[0]).unwrap_or(text);
                if crate::sql::mentions_reserved_name(text) {
                    return Ok(Some(self.refuse_reserved_query(h)));
                }
                if crate::sql::may_leave_session_state(text) {
                    self.server.as_mut().expect("bound").dirty.session = true;
                }
                let pending = sql_prepared(text).map(|a| {
                    self.prepare_sql_statement_for(&a);
                    let text = &self.c_in[pos + HEADER_LEN..pos + h.total_len() - 1];
                    (a, Rc::from(text))
                });
                if self.flow.push(Expect::Query { swallow: false }) {
                    self.sql_pending.push_back(pending);
                }
                Ok(Some(self.stream(h, pos)))
            }
            b'd' | b'F' => {
                if h.tag == b'F' {
                    // A function called by OID is not inspected: assume it
                    // may leave state (set_config, advisory locks).
                    self.server.as_mut().expect("bound").dirty.session = true;
                    self.flow.push(Expect::FunctionCall);
                }
                Ok(Some(self.stream(h, pos)))
            }
            b'E' | b'S' | b'H' | b'c' | b'f' => {
                if !whole {
                    return self.need_whole(h, pos);
                }
                match h.tag {
                    b'E' => {
                        self.flow.push(Expect::Execute);
                    }
                    b'S' => {
                        self.flow.push(Expect::Sync);
                    }
                    b'c' | b'f' => {
                        self.flow.push(Expect::CopyEnd);
                    }
                    _ => self.flow.note_flush(),
                }
                Ok(Some(self.stream(h, pos)))
            }
            b'P' => self.on_parse(h, pos, whole),
            b'B' => self.on_bind(h, pos),
            b'D' | b'C' => {
                if !whole {
                    return self.need_whole(h, pos);
                }
                self.on_describe_or_close(h, pos)?;
                Ok(Some(h.total_len()))
            }
            t => Err(ProtocolError::UnexpectedTag { tag: t }),
        }
    }

    /// Before a PREPARE, EXECUTE or DEALLOCATE of a name the client prepared
    /// in an earlier transaction (on another server connection, or on this
    /// one before it was reset), re-creates the statement here from the
    /// client's text, so the statement behaves as on a direct connection:
    /// EXECUTE runs it, DEALLOCATE drops it, PREPARE reports 42P05.
    fn prepare_sql_statement_for(&mut self, action: &SqlPrepared) {
        let name = match action {
            SqlPrepared::Prepare(n) | SqlPrepared::Execute(n) | SqlPrepared::Deallocate(n) => n,
            SqlPrepared::DeallocateAll => return,
        };
        let Some(text) = self.sql_stmts.get(name).cloned() else { return };
        let server = self.server.as_mut().expect("bound");
        if server.sql_prepared.contains(name) {
            return;
        }
        server.sql_prepared.insert(name.clone());
        // Whatever happens to the replay, this connection is DISCARDed
        // before another client uses it.
        server.dirty.session = true;
        self.flow.push(Expect::Query { swallow: true });
        let mut w = Writer::new(&mut self.s_out, b'Q');
        w.cstr(&text);
        w.finish();
    }

    /// Applies a simple query's effect on SQL-level prepared statements once
    /// the server confirmed it.
    fn on_sql_prepared_complete(&mut self, tag: &[u8]) {
        let Some(Some((action, text))) = self.sql_pending.front() else { return };
        let server = self.server.as_mut().expect("bound");
        match (action, tag) {
            (SqlPrepared::Prepare(name), b"PREPARE") => {
                server.sql_prepared.insert(name.clone());
                // The client's whole query, replayable as is elsewhere.
                self.sql_stmts.insert(name.clone(), text.clone());
            }
            (SqlPrepared::Deallocate(name), b"DEALLOCATE") => {
                server.sql_prepared.remove(name);
                self.sql_stmts.remove(name);
            }
            (SqlPrepared::DeallocateAll, b"DEALLOCATE ALL") => {
                server.sql_prepared.clear();
                self.sql_stmts.clear();
            }
            _ => {}
        }
    }

    /// Sends, in place of a query naming pgwarden's reserved statement
    /// names, one that makes the server raise 42501: the error arrives in
    /// order and fails the transaction exactly as a refused statement would.
    fn refuse_reserved_query(&mut self, h: frame::Header) -> usize {
        let sql = crate::sql::raise_sql(
            "42501",
            "statement names starting with __pgw_ are reserved by pgwarden; choose another name",
        );
        if self.flow.push(Expect::Query { swallow: false }) {
            self.sql_pending.push_back(None);
        }
        let mut w = Writer::new(&mut self.s_out, b'Q');
        w.cstr(sql.as_bytes());
        w.finish();
        h.total_len()
    }

    /// Why `text` must not run in this session: a role change in a
    /// role-locked session (42501), a write in a read-only one (25006).
    fn refusal(&self, text: &[u8]) -> Option<(&'static str, String)> {
        if self.session.read_only {
            if let Some(what) = crate::sql::may_write(text) {
                if !self.ctx.grammar_clears(Check::Write, text) {
                    return Some((
                        "25006",
                        format!(
                            "statement refused: this session is read-only, and the statement contains {what}"
                        ),
                    ));
                }
            }
        }
        if self.session.role_locked
            && crate::sql::may_change_role(text)
            && !self.ctx.grammar_clears(Check::RoleChange, text)
        {
            return Some(("42501", ROLE_REFUSAL.to_string()));
        }
        None
    }

    /// In a session locked to its token's role, or read-only, replaces a
    /// whole Query, Parse or FunctionCall that must not run with one that
    /// makes the server raise the refusal (in order, failing the transaction
    /// as a refused statement would). A Parse keeps its name: executing it
    /// raises. Returns whether the message at `pos` was rewritten.
    fn refuse_unsafe(&mut self, h: frame::Header, pos: usize, inspect: bool) -> Result<bool, ProtocolError> {
        let body = &self.c_in[pos + HEADER_LEN..pos + h.total_len()];
        let mut out = Vec::new();
        match h.tag {
            b'Q' => {
                let text = body.strip_suffix(&[0]).unwrap_or(body);
                let routing = if self.routed { route_statement(&mut self.session, text) } else { None };
                let refused = routing.or_else(|| if inspect { self.refusal(text) } else { None });
                let Some((code, msg)) = refused else { return Ok(false) };
                let mut w = Writer::new(&mut out, b'Q');
                w.cstr(crate::sql::raise_sql(code, &msg).as_bytes());
                w.finish();
            }
            b'P' => {
                let (name, query, _) = decode_parse(body)?;
                let routing = if self.routed { route_statement(&mut self.session, query) } else { None };
                let refused = routing.or_else(|| if inspect { self.refusal(query) } else { None });
                let Some((code, msg)) = refused else { return Ok(false) };
                let mut w = Writer::new(&mut out, b'P');
                w.cstr(name).cstr(crate::sql::raise_sql(code, &msg).as_bytes()).i16(0);
                w.finish();
            }
            _ if !inspect => return Ok(false),
            _ => {
                // FunctionCall names a function by OID (set_config, nextval
                // have one): not inspectable, so not allowed.
                let sql = crate::sql::raise_sql(
                    if self.session.role_locked { "42501" } else { "25006" },
                    "FunctionCall messages are not allowed in a session locked to its token's role or read-only",
                );
                let mut w = Writer::new(&mut out, b'Q');
                w.cstr(sql.as_bytes());
                w.finish();
            }
        }
        log::info!("shard {}: refused a statement (user \"{}\")", self.ctx.id, self.session.user);
        self.c_in.splice(pos..pos + h.total_len(), out);
        Ok(true)
    }

    /// Makes room for a message that must be read whole.
    fn need_whole(&mut self, h: frame::Header, pos: usize) -> Result<Option<usize>, ProtocolError> {
        let need = pos + h.total_len();
        if self.c_in.capacity() < need {
            self.c_in.reserve(need - self.c_in.len());
        }
        Ok(None)
    }

    /// Forwards the message at `pos` as is, streaming what has not arrived.
    fn stream(&mut self, h: frame::Header, pos: usize) -> usize {
        let avail = self.c_in.len() - pos;
        let n = avail.min(h.total_len());
        self.s_out.extend_from_slice(&self.c_in[pos..pos + n]);
        self.c_skip = h.total_len() - n;
        n
    }

    fn on_parse(
        &mut self,
        h: frame::Header,
        pos: usize,
        whole: bool,
    ) -> Result<Option<usize>, ProtocolError> {
        // The name comes first: an unnamed Parse streams through untouched.
        let body = &self.c_in[pos + HEADER_LEN..self.c_in.len().min(pos + h.total_len())];
        let named = match body.iter().position(|&b| b == 0) {
            Some(0) => false,
            Some(_) => true,
            None if whole => return Err(ProtocolError::Malformed { tag: b'P', what: "statement name" }),
            None => return self.need_whole(h, pos),
        };
        if !named || !self.track_prepared {
            if !whole && h.total_len() <= SQL_PREPARED_INSPECT_MAX {
                return self.need_whole(h, pos);
            }
            let inspect = whole && {
                let body = &self.c_in[pos + HEADER_LEN..pos + h.total_len()];
                let query = body.split(|&b| b == 0).nth(1).unwrap_or(b"");
                !crate::sql::may_leave_session_state(query) && !crate::sql::mentions_reserved_name(query)
            };
            if !inspect {
                self.server.as_mut().expect("bound").dirty.session = true;
            }
            self.flow.push(Expect::Parse { swallow: false, undo: None });
            return Ok(Some(self.stream(h, pos)));
        }
        if !whole {
            return self.need_whole(h, pos);
        }
        let body = &self.c_in[pos + HEADER_LEN..pos + h.total_len()];
        let (name, query, types) = decode_parse(body)?;
        let name: Rc<[u8]> = name.into();
        if self.stmts.contains(&name) {
            // Postgres answers 42P05; let the server say it with our name.
            let def = self.stmts.get(&name).expect("present").clone();
            self.ensure_prepared(&def);
            self.flow.push(Expect::Parse { swallow: false, undo: None });
            def.encode_parse(&mut self.s_out);
            return Ok(Some(h.total_len()));
        }
        let def = self.ctx.registry.borrow_mut().intern(query, &types);
        self.stmts.insert(name.clone(), def.clone());
        let server = self.server.as_mut().expect("bound");
        if server.stmts.touch(def.id) {
            let undo = Box::new(Undo { client_name: Some(name), server_stmt: None, kept_stmt: None });
            self.flow.push(Expect::Fake(Fake::ParseComplete, Some(undo)));
        } else {
            self.add_to_server(&def);
            let undo = Box::new(Undo { client_name: Some(name), server_stmt: Some(def.id), kept_stmt: None });
            self.flow.push(Expect::Parse { swallow: false, undo: Some(undo) });
            def.encode_parse(&mut self.s_out);
        }
        Ok(Some(h.total_len()))
    }

    /// Records `def` as prepared on the bound server, closing the least
    /// recently used statement if the cache is full.
    fn add_to_server(&mut self, def: &StmtDef) {
        let server = self.server.as_mut().expect("bound");
        if let Some(old) = server.stmts.add(def.id) {
            let mut w = Writer::new(&mut self.s_out, b'C');
            w.u8(b'S').cstr(&crate::session::prepared::server_name(old));
            w.finish();
            self.flow.push(Expect::Close { swallow: true, evicted: Some(old) });
        }
    }

    /// Prepares `def` on the bound server if it is not there yet (the
    /// ParseComplete is swallowed).
    fn ensure_prepared(&mut self, def: &Rc<StmtDef>) {
        let server = self.server.as_mut().expect("bound");
        if server.stmts.touch(def.id) {
            return;
        }
        self.add_to_server(def);
        let undo = Box::new(Undo { client_name: None, server_stmt: Some(def.id), kept_stmt: None });
        self.flow.push(Expect::Parse { swallow: true, undo: Some(undo) });
        def.encode_parse(&mut self.s_out);
    }

    fn on_bind(&mut self, h: frame::Header, pos: usize) -> Result<Option<usize>, ProtocolError> {
        let end = self.c_in.len().min(pos + h.total_len());
        let body = &self.c_in[pos + HEADER_LEN..end];
        // Portal name, then statement name: both must be here to decide.
        let Some(p_end) = body.iter().position(|&b| b == 0) else {
            return if end == pos + h.total_len() {
                Err(ProtocolError::Malformed { tag: b'B', what: "portal name" })
            } else {
                self.need_whole_prefix(h, pos)
            };
        };
        let Some(s_len) = body[p_end + 1..].iter().position(|&b| b == 0) else {
            return if end == pos + h.total_len() {
                Err(ProtocolError::Malformed { tag: b'B', what: "statement name" })
            } else {
                self.need_whole_prefix(h, pos)
            };
        };
        let stmt = &body[p_end + 1..p_end + 1 + s_len];
        let def = if s_len > 0 && self.track_prepared { self.stmts.get(stmt).cloned() } else { None };
        let Some(def) = def else {
            // Unnamed, untracked, or unknown (the server answers 26000). A
            // client naming the proxy's own statements only reaches those of
            // its current server connection, which is reset before reuse.
            if crate::sql::mentions_reserved_name(stmt) {
                self.server.as_mut().expect("bound").dirty.session = true;
            }
            self.flow.push(Expect::Bind);
            return Ok(Some(self.stream(h, pos)));
        };
        // The statement must exist on this server before the Bind reaches it.
        self.ensure_prepared(&def);
        if def.session_state {
            self.server.as_mut().expect("bound").dirty.session = true;
        }
        self.flow.push(Expect::Bind);
        // Rewrite the header and names; stream the parameters after them.
        let prefix_len = HEADER_LEN + p_end + 1 + s_len + 1;
        let new_len = h.len as usize - s_len + def.server_name.len();
        self.s_out.push(b'B');
        self.s_out.extend_from_slice(&(new_len as u32).to_be_bytes());
        self.s_out.extend_from_slice(&self.c_in[pos + HEADER_LEN..pos + HEADER_LEN + p_end + 1]);
        self.s_out.extend_from_slice(&def.server_name);
        self.s_out.push(0);
        let rest_total = h.total_len() - prefix_len;
        let rest_avail = (self.c_in.len() - pos - prefix_len).min(rest_total);
        self.s_out.extend_from_slice(&self.c_in[pos + prefix_len..pos + prefix_len + rest_avail]);
        self.c_skip = rest_total - rest_avail;
        Ok(Some(prefix_len + rest_avail))
    }

    /// Waits for a Bind's names, which fit in a bounded prefix.
    fn need_whole_prefix(&mut self, h: frame::Header, pos: usize) -> Result<Option<usize>, ProtocolError> {
        let avail = self.c_in.len() - pos;
        if avail >= 64 * 1024 {
            return Err(ProtocolError::Malformed { tag: h.tag, what: "names longer than 64 KiB" });
        }
        self.c_in.reserve(8 * 1024);
        Ok(None)
    }

    fn on_describe_or_close(&mut self, h: frame::Header, pos: usize) -> Result<(), ProtocolError> {
        let body = &self.c_in[pos + HEADER_LEN..pos + h.total_len()];
        let mut r = Reader::new(h.tag, body);
        let kind = r.u8("kind")?;
        let name = r.cstr("name")?;
        r.finish("trailing bytes")?;
        if kind != b'S' && kind != b'P' {
            return Err(ProtocolError::Malformed { tag: h.tag, what: "kind" });
        }
        let tracked = kind == b'S' && !name.is_empty() && self.track_prepared;
        let def = if tracked { self.stmts.get(name).cloned() } else { None };
        match (h.tag, def) {
            (b'D', Some(def)) => {
                self.ensure_prepared(&def);
                self.flow.push(Expect::DescribeStatement);
                let mut w = Writer::new(&mut self.s_out, b'D');
                w.u8(b'S').cstr(&def.server_name);
                w.finish();
            }
            (b'C', Some(_)) => {
                // The server-side statement stays for other clients; the
                // name goes. Postgres answers CloseComplete even for unknown
                // names, and so do we.
                let name: Vec<u8> = name.to_vec();
                self.stmts.remove(&name);
                self.flow.push(Expect::Fake(Fake::CloseComplete, None));
            }
            (b'C', None) if tracked => {
                self.flow.push(Expect::Fake(Fake::CloseComplete, None));
            }
            (tag, _) => {
                self.flow.push(match (tag, kind) {
                    (b'D', b'S') => Expect::DescribeStatement,
                    (b'D', _) => Expect::DescribePortal,
                    _ => Expect::Close { swallow: false, evicted: None },
                });
                self.s_out.extend_from_slice(&self.c_in[pos..pos + h.total_len()]);
            }
        }
        Ok(())
    }

    /// Writes synthesized responses that are now due.
    fn emit_fakes(&mut self) {
        let out = &mut self.c_out;
        self.flow.take_ready_fakes(|f| {
            let tag = match f {
                Fake::ParseComplete => b'1',
                Fake::CloseComplete => b'3',
            };
            out.extend_from_slice(&[tag, 0, 0, 0, 4]);
        });
    }

    /// Processes buffered server input, then releases the server if the
    /// transaction ended.
    async fn process_server(&mut self) -> Result<(), End> {
        self.server_step().map_err(|e| End::Error(SessionError::server_protocol(e)))?;
        if self.flow.idle() {
            self.answered = true;
        }
        // The routed request is answered: inside a transaction what follows
        // stays on this server; otherwise `awaiting_release` holds it until
        // the server is back in the pool.
        if self.route_held && self.flow.quiet() {
            self.route_held = false;
        }
        if let Some(v) = self.violation.take() {
            return Err(End::Error(v));
        }
        self.apply_undo();
        self.maybe_release().await
    }

    fn server_step(&mut self) -> Result<(), ProtocolError> {
        let mut buf = std::mem::take(&mut self.server.as_mut().expect("bound").buf);
        let mut pos = 0;
        let res = loop {
            if self.s_skip > 0 {
                let n = self.s_skip.min(buf.len() - pos);
                if n == 0 {
                    break Ok(());
                }
                if self.s_skip_forward {
                    self.c_out.extend_from_slice(&buf[pos..pos + n]);
                }
                pos += n;
                self.s_skip -= n;
                continue;
            }
            let Some(h) = frame::read_header(&buf[pos..], self.max_msg)? else { break Ok(()) };
            let whole = buf.len() - pos >= h.total_len();
            let needs_body = matches!(h.tag, b'Z' | b'S' | b'C' | b'E');
            if needs_body && !whole {
                let need = pos + h.total_len();
                if buf.capacity() < need {
                    buf.reserve(need - buf.len());
                }
                break Ok(());
            }
            let body = &buf[pos + HEADER_LEN..(pos + h.total_len()).min(buf.len())];
            if h.tag == b'E'
                && (self.retry_armed || self.idle_between_transactions())
                && PgError::parse(body).severity == "FATAL"
            {
                // Closing, not answering: the request goes elsewhere.
                self.retry_now = true;
                self.retry_why = PgError::parse(body).to_string();
                pos = buf.len();
                break Ok(());
            }
            let status = if h.tag == b'Z' { body.first().copied().unwrap_or(0) } else { 0 };
            let client_query = self.flow.answering_client_query();
            let verdict = self.flow.on_server(h.tag, status);
            for _ in 0..self.flow.take_dropped_client_queries() {
                self.sql_pending.pop_front();
            }
            match h.tag {
                b'S' => self.on_parameter_status(body),
                b'C' => {
                    self.on_command_complete(body);
                    let tag = body.strip_suffix(&[0]).unwrap_or(body);
                    if verdict == Verdict::Forward {
                        if client_query && !self.sql_pending.is_empty() {
                            self.on_sql_prepared_complete(tag);
                        }
                        if tag == b"DISCARD ALL" || tag == b"DEALLOCATE ALL" {
                            // The client's own statements are gone, as on Postgres.
                            self.stmts = ClientStatements::default();
                            if tag == b"DISCARD ALL" {
                                self.sql_stmts.clear();
                            }
                        }
                    }
                }
                b'Z' if verdict == Verdict::Forward && self.flow.ready_ended_client_query() => {
                    self.sql_pending.pop_front();
                }
                b'E' if verdict == Verdict::Swallow => {
                    log::warn!("shard {}: proxy query failed: {}", self.ctx.id, PgError::parse(body))
                }
                _ => {}
            }
            if verdict == Verdict::Unexpected {
                log::warn!(
                    "shard {}: unexpected message {} from server ({:?}); it will not be reused",
                    self.ctx.id,
                    crate::protocol::printable(h.tag),
                    self.flow
                );
            }
            let n = (buf.len() - pos).min(h.total_len());
            let forward = verdict != Verdict::Swallow;
            // Rows may be held while the request could still go elsewhere;
            // anything that ends or changes the answer, a partial message,
            // or too much held, and the answer is the client's.
            if forward
                && self.retry_armed
                && (!matches!(h.tag, b'T' | b'D' | b'1' | b'2' | b't' | b'n')
                    || n < h.total_len()
                    || self.c_out.len() + n - self.retry_mark > RETRY_HOLD_MAX)
            {
                self.disarm_retry();
            }
            if forward {
                self.c_out.extend_from_slice(&buf[pos..pos + n]);
            }
            self.s_skip = h.total_len() - n;
            self.s_skip_forward = forward;
            pos += n;
            self.emit_fakes();
        };
        buf.drain(..pos);
        self.server.as_mut().expect("bound").buf = buf;
        res
    }

    /// A reported setting changed while this client is bound: the client
    /// wants it from now on, and the server no longer has its defaults.
    fn on_parameter_status(&mut self, body: &[u8]) {
        let server = self.server.as_mut().expect("bound");
        if let Some((name, value)) = server.on_parameter_status(body) {
            let inspected = self.session.read_only || self.session.role_locked;
            let tripped = (self.session.role_locked && name == "is_superuser" && value == "on")
                || (inspected && name == "standard_conforming_strings" && value != "on");
            if tripped {
                // Something got past inspection (a function?): end the
                // session and close the server connection.
                log::warn!(
                    "shard {}: session of user \"{}\" got {name} = {value}; closing it",
                    self.ctx.id,
                    self.session.user
                );
                self.flow.mark_broken();
                self.violation = Some(SessionError::Refused {
                    sqlstate: "42501",
                    message: format!(
                        "{name} changed to {value} in a session pgwarden inspects; the connection is closed"
                    ),
                });
                return;
            }
            if self.session.read_only && name == "default_transaction_read_only" && value != "on" {
                // Something (a function?) turned read-only off: this session
                // ends, and the server connection is closed, never reused.
                log::warn!(
                    "shard {}: read-only session of user \"{}\" got default_transaction_read_only = {value}; \
                     closing it",
                    self.ctx.id,
                    self.session.user
                );
                self.flow.mark_broken();
                self.violation = Some(SessionError::Refused {
                    sqlstate: "25006",
                    message: "this session is read-only, and default_transaction_read_only was turned off; \
                              the connection is closed"
                        .into(),
                });
                return;
            }
            if NOT_REPLAYED.contains(&name.as_str()) {
                // Read-only or identity-changing: never replayed with SET;
                // an identity change is reset before the server is reused.
                if name == "is_superuser" || name == "session_authorization" {
                    server.dirty.settings = true;
                }
                return;
            }
            if self.session.params.get(&name) != Some(value.as_str()) {
                self.session.params.set(&name, &value);
            }
            if !server.set_keys.contains(&name) {
                server.set_keys.push(name);
            }
            server.params_digest = self.session.params.digest();
        }
    }

    /// Notes commands that leave session state behind on the server.
    fn on_command_complete(&mut self, body: &[u8]) {
        let tag = body.strip_suffix(&[0]).unwrap_or(body);
        let server = self.server.as_mut().expect("bound");
        let word = tag.split(|&b| b == b' ').next().unwrap_or(b"");
        if tag == b"DISCARD ALL" || tag == b"DEALLOCATE ALL" {
            // The proxy's statements on this server are gone too.
            server.stmts.clear();
            server.sql_prepared.clear();
        }
        match word {
            b"SET" | b"RESET" => server.dirty.settings = true,
            b"PREPARE" | b"DEALLOCATE" | b"LISTEN" | b"UNLISTEN" | b"DISCARD" | b"LOAD" => {
                server.dirty.session = true
            }
            b"DECLARE" => server.dirty.session = true,
            _ => {}
        }
    }

    fn apply_undo(&mut self) {
        if !self.flow.has_undo() {
            return;
        }
        for name in self.flow.take_parsed() {
            if let Some(def) = self.stmts.get(&name) {
                def.mark_validated(self.session.pool);
            }
        }
        for u in self.flow.take_undo() {
            if let Some(name) = u.client_name {
                self.stmts.remove(&name);
            }
            if let (Some(id), Some(s)) = (u.server_stmt, self.server.as_mut()) {
                s.stmts.forget(id);
            }
            if let (Some(id), Some(s)) = (u.kept_stmt, self.server.as_mut()) {
                s.stmts.keep(id);
            }
        }
    }

    /// In transaction mode, hands the server back once the transaction is
    /// over and nothing is in flight.
    async fn maybe_release(&mut self) -> Result<(), End> {
        let Some(server) = self.server.as_ref() else { return Ok(()) };
        if self.flow.broken() {
            return Err(End::Error(SessionError::ServerProtocol(
                "server sent a message out of order; the connection was closed".into(),
            )));
        }
        if self.flow.idle() && self.s_out.is_empty() {
            self.check_expiry()?;
        }
        let releasable = self.mode == PoolMode::Transaction
            && self.flow.idle()
            && self.c_skip == 0
            && self.s_skip == 0
            && self.s_out.is_empty()
            && server.is_home()
            && server.buf.is_empty();
        if releasable {
            self.route_held = false;
            let server = self.server.take().expect("bound");
            log::trace!(
                "shard {}: client pid {} releases server pid {}",
                self.ctx.id,
                self.session.pid,
                server.pid
            );
            self.session.cancel.unbind();
            self.return_server(server);
        }
        Ok(())
    }

    /// With `expire_sessions`, ends the session at a transaction boundary
    /// once its token's `exp` has passed.
    fn check_expiry(&self) -> Result<(), End> {
        match self.session.expires_at {
            Some(exp) if crate::session::jwt::now_secs() >= exp => {
                log::info!(
                    "shard {}: session of user \"{}\" ended: its token expired (expire_sessions)",
                    self.ctx.id,
                    self.session.user
                );
                Err(End::Error(SessionError::Refused {
                    sqlstate: "28000",
                    message: "token expired: the session ends at its token's exp (jwt.expire_sessions); \
                              reconnect with a fresh token"
                        .into(),
                }))
            }
            _ => Ok(()),
        }
    }

    /// Returns a server at a clean boundary: straight to the pool, or via
    /// a cleanup task when the client left session state on it.
    fn return_server(&self, server: Box<ServerConn>) {
        let pool = self.bound();
        if server.dirty == Default::default() {
            self.ctx.release(pool, server);
        } else {
            net::spawn(clean_and_release(self.ctx.clone(), pool, server));
        }
    }

    /// Session over: give the server back if it is at a clean boundary (a
    /// transaction left open is rolled back), otherwise close it.
    pub fn abandon_server(&mut self) {
        let Some(mut server) = self.server.take() else { return };
        self.session.cancel.unbind();
        let pool = self.bound();
        let clean_boundary = self.flow.quiet()
            && !self.flow.broken()
            && self.c_skip == 0
            && self.s_skip == 0
            && self.s_out.is_empty()
            && server.is_home()
            && server.buf.is_empty();
        if !clean_boundary {
            self.ctx.discard(pool, server);
            return;
        }
        if self.mode == PoolMode::Session {
            server.dirty.session = true;
        }
        if self.flow.status() != b'I' {
            net::spawn(rollback_and_release(self.ctx.clone(), pool, server));
        } else {
            self.return_server(server);
        }
    }
}

/// Applies pgwarden's routing statements in `text` to the session: `SET
/// pgwarden.route = 'primary' | 'auto'` pins or unpins it. Returns the
/// refusal for an unknown value (22023), and for a read-only session's
/// attempt to reach the primary (25006).
fn route_statement(session: &mut Session, text: &[u8]) -> Option<(&'static str, String)> {
    // RESET ALL and DISCARD ALL end a pin too.
    let ends_pin = session.pin_primary
        && (crate::sql::contains_ci(text, b"reset") || crate::sql::contains_ci(text, b"discard"));
    if !crate::sql::contains_ci(text, b"pgwarden") && !ends_pin {
        return None;
    }
    let setting = crate::sql::route_setting(text);
    let to_primary = matches!(setting, Some(Ok(true))) || crate::sql::contains_ci(text, b"pgwarden:primary");
    if session.read_only && to_primary {
        return Some((
            "25006",
            "statement refused: this session is read-only and served by replicas; SET pgwarden.route = \
             'primary' and /* pgwarden:primary */ are not allowed"
                .into(),
        ));
    }
    match setting {
        Some(Ok(pin)) => {
            session.pin_primary = pin;
            None
        }
        Some(Err(value)) => Some((
            "22023",
            format!(
                "invalid value for parameter \"pgwarden.route\": \"{value}\"; use SET pgwarden.route = \
                 'primary' (this session's transactions go to the primary) or 'auto' (routed by their SQL)"
            ),
        )),
        None => None,
    }
}

/// A decoded Parse: (statement name, query, parameter types).
type ParseFields<'a> = (&'a [u8], &'a [u8], Vec<u32>);

/// Decodes a whole Parse body with the protocol codec.
fn decode_parse(body: &[u8]) -> Result<ParseFields<'_>, ProtocolError> {
    match FrontendMessage::decode_body(b'P', body)? {
        FrontendMessage::Parse { name, query, param_types } => Ok((name, query, param_types)),
        _ => Err(ProtocolError::Malformed { tag: b'P', what: "message" }),
    }
}

enum Event {
    ClientRead((ReadHalf, std::io::Result<usize>, Vec<u8>)),
    ServerRead((ReadHalf, std::io::Result<usize>, Vec<u8>)),
    ClientWrite((WriteHalf, std::io::Result<()>, Vec<u8>)),
    ServerWrite((WriteHalf, std::io::Result<()>, Vec<u8>)),
    Shutdown,
}

/// Runs `RESET ...` or `DISCARD ALL` before pooling a server a client left
/// session state on; closes it if that fails.
async fn clean_and_release(ctx: Rc<ShardCtx>, pool: usize, mut server: Box<ServerConn>) {
    // RESET ALL leaves `role` and `session_authorization` alone: reset them
    // explicitly so a client's SET ROLE never reaches the next client.
    let sql = if server.dirty.session {
        "DISCARD ALL"
    } else {
        "RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL"
    };
    match server.run_simple(sql).await {
        Ok(Ok(_)) => {
            if server.dirty.session {
                server.stmts.clear();
                server.sql_prepared.clear();
            }
            server.dirty = Default::default();
            server.forget_unreported_settings();
            ctx.release(pool, server);
        }
        Ok(Err(e)) => {
            log::warn!("shard {}: {sql} failed ({e}); closing the server connection", ctx.id);
            ctx.discard(pool, server);
        }
        Err(e) => {
            log::warn!("shard {}: {sql} failed ({e}); closing the server connection", ctx.id);
            ctx.discard(pool, server);
        }
    }
}

/// Rolls back the transaction a departed client left open, then cleans.
async fn rollback_and_release(ctx: Rc<ShardCtx>, pool: usize, mut server: Box<ServerConn>) {
    match server.run_simple("ROLLBACK").await {
        Ok(Ok(_)) => {
            if server.dirty == Default::default() {
                ctx.release(pool, server);
            } else {
                clean_and_release(ctx, pool, server).await;
            }
        }
        _ => ctx.discard(pool, server),
    }
}
