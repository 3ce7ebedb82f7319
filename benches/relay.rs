//! A bare 1:1 TCP relay: no parsing, no pooling, no authentication, one
//! server connection per client. It is the floor any proxy built on the same
//! I/O mechanism can reach on a machine, so `scripts/bench.sh --relay` runs
//! it beside pgwarden and PgBouncer: what pgwarden costs above the relay is
//! its own work; what the relay costs above direct is the mechanism's.
//!
//! Two mechanisms:
//!
//! - `monoio`: what pgwarden's data path is (monoio's io_uring driver with
//!   SINGLE_ISSUER and DEFER_TASKRUN), one task per direction, each a receive
//!   into an owned buffer then a send of it. Every receive is a fresh
//!   submission; when no data is waiting the kernel tries it, arms a poll,
//!   and retries it when data comes.
//! - `multishot`: the io-uring crate directly, one thread, one loop: a
//!   multishot accept, and per socket one multishot receive for the life of
//!   the connection, taking buffers from a registered buffer ring; a send per
//!   received buffer, one send in flight per direction, the buffer returned
//!   to the ring when its send completes. No per-message arming.
//! - `recv` and `pollfirst`: the same loop with a one-shot receive
//!   submitted again after each message (as monoio does), the second with
//!   IORING_RECVSEND_POLL_FIRST (armed as a poll at once, no failed first
//!   attempt). Between them and `multishot` they say which part of the
//!   difference is the failed attempt and which the arming.
//!
//! Not a Criterion benchmark: run with no address (as `cargo bench` and
//! `cargo test` do), it checks itself in both modes against an echo server
//! (bytes through intact both ways, many connections, closes passed on) and
//! exits. `scripts/bench.sh --relay` builds and starts it:
//!
//! ```text
//! relay --mode monoio|multishot|recv|pollfirst --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT
//! ```
//!
//! It prints `relay listening on ADDR` on stderr once it accepts, and runs
//! until killed. It is a measuring tool for request/response traffic such as
//! pgbench's, not a proxy: the io-uring modes do not throttle receives when
//! a peer stops reading (such a peer can hold every ring buffer, and the
//! others then retry on ENOBUFS).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

fn main() {
    let mut mode = String::from("monoio");
    let mut listen: Option<SocketAddr> = None;
    let mut upstream: Option<SocketAddr> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mode" => mode = args.next().unwrap_or_default(),
            "--listen" => listen = args.next().and_then(|a| a.parse().ok()),
            "--upstream" => upstream = args.next().and_then(|a| a.parse().ok()),
            // What `cargo bench` passes.
            "--bench" => {}
            other => {
                eprintln!("relay: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    let (Some(listen), Some(upstream)) = (listen, upstream) else {
        self_check();
        return;
    };
    let result = TcpListener::bind(listen)
        .map_err(|e| format!("bind {listen}: {e}"))
        .and_then(|listener| run(&mode, listener, upstream));
    if let Err(e) = result {
        eprintln!("relay: {e}");
        std::process::exit(1);
    }
}

fn run(mode: &str, listener: TcpListener, upstream: SocketAddr) -> Result<(), String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    match mode {
        "monoio" => monoio_relay::run(listener, addr, upstream),
        "multishot" => uring::run(listener, addr, upstream, uring::Receive::Multishot),
        "recv" => uring::run(listener, addr, upstream, uring::Receive::OneShot),
        "pollfirst" => uring::run(listener, addr, upstream, uring::Receive::PollFirst),
        other => Err(format!("--mode {other:?}: expected monoio, multishot, recv or pollfirst")),
    }
}

/// Both modes in front of an echo server: 8 connections at once, each
/// sending 1 MiB in uneven pieces and reading every byte back; then a close
/// from the client must reach the server and come back as end of stream.
fn self_check() {
    let echo = TcpListener::bind("127.0.0.1:0").expect("bind echo server");
    let echo_addr = echo.local_addr().expect("echo address");
    std::thread::spawn(move || {
        for stream in echo.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 7000];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    for mode in ["monoio", "multishot", "recv", "pollfirst"] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        std::thread::spawn(move || {
            if let Err(e) = run(mode, listener, echo_addr) {
                panic!("relay {mode}: {e}");
            }
        });
        let clients: Vec<_> = (0..8u8)
            .map(|id| {
                std::thread::spawn(move || {
                    let mut stream = TcpStream::connect(addr).expect("connect to the relay");
                    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
                    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8 ^ id).collect();
                    let mut writer = stream.try_clone().expect("clone");
                    let sent = data.clone();
                    let send = std::thread::spawn(move || {
                        for piece in sent.chunks(3001) {
                            writer.write_all(piece).expect("send through the relay");
                        }
                        writer.shutdown(std::net::Shutdown::Write).expect("half-close");
                    });
                    let mut back = Vec::new();
                    stream.read_to_end(&mut back).expect("read until the relay passes the close on");
                    send.join().expect("sender");
                    assert!(
                        back == data,
                        "{mode}: {} bytes came back for {} sent, or they differ",
                        back.len(),
                        data.len()
                    );
                })
            })
            .collect();
        for client in clients {
            client.join().expect("client");
        }
        eprintln!("relay self-check ({mode}): 8 x 1 MiB echoed intact, closes passed on");
    }
}

mod monoio_relay {
    use super::*;
    use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
    use monoio::net::TcpStream;

    pub fn run(listener: TcpListener, addr: SocketAddr, upstream: SocketAddr) -> Result<(), String> {
        let mut urb = io_uring_06::IoUring::builder();
        urb.setup_single_issuer().setup_defer_taskrun();
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(1024)
            .uring_builder(urb)
            .build()
            .map_err(|e| format!("io_uring runtime: {e}"))?;
        rt.block_on(async move {
            let listener = monoio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
            eprintln!("relay listening on {addr} (monoio)");
            loop {
                let (client, _) = listener.accept().await.map_err(|e| format!("accept: {e}"))?;
                monoio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_r, client_w) = client.into_split();
                    let (server_r, server_w) = server.into_split();
                    let up = monoio::spawn(pipe(client_r, server_w));
                    pipe(server_r, client_w).await;
                    up.await;
                });
            }
        })
    }

    async fn pipe(mut from: impl AsyncReadRent, mut to: impl AsyncWriteRent) {
        let mut buf = Vec::with_capacity(16 * 1024);
        loop {
            let (res, b) = from.read(buf).await;
            buf = b;
            if !matches!(res, Ok(n) if n > 0) {
                break;
            }
            let (res, b) = to.write_all(buf).await;
            buf = b;
            if res.is_err() {
                break;
            }
            buf.clear();
        }
        let _ = to.shutdown().await;
    }
}

mod uring {
    use super::*;
    use io_uring_06::types::{BufRingEntry, Fd};
    use io_uring_06::{cqueue, opcode, squeue, IoUring};
    use std::sync::atomic::{AtomicU16, Ordering};

    /// How a socket's receives are submitted.
    #[derive(Clone, Copy, PartialEq)]
    pub enum Receive {
        /// One multishot receive per socket for its life.
        Multishot,
        /// A one-shot receive per message.
        OneShot,
        /// A one-shot receive per message, armed as a poll first.
        PollFirst,
    }

    /// From linux/io_uring.h (the io-uring crate keeps its constants private).
    const IORING_RECVSEND_POLL_FIRST: u16 = 1;

    const BUF_SIZE: usize = 16 * 1024;
    /// Buffers in the ring (a power of two): 16 MiB in all.
    const BUF_COUNT: u16 = 1024;
    const BGID: u16 = 0;

    const ACCEPT: u64 = 1;
    const CONNECT: u64 = 2;
    const RECV: u64 = 3;
    const SEND: u64 = 4;

    /// user_data: kind in bits 0-2, side in bit 3, connection slot above.
    fn ud(kind: u64, slot: usize, side: usize) -> u64 {
        kind | ((side as u64) << 3) | ((slot as u64) << 4)
    }

    /// The registered ring of provided buffers.
    struct BufRing {
        entries: *mut BufRingEntry,
        tail: u16,
        /// The buffers' memory, leaked: the kernel writes into it for the
        /// life of the process, so Rust never holds a reference to it.
        base: *mut u8,
    }

    impl BufRing {
        fn new(ring: &IoUring) -> Result<BufRing, String> {
            let layout = std::alloc::Layout::from_size_align(
                BUF_COUNT as usize * std::mem::size_of::<BufRingEntry>(),
                4096,
            )
            .map_err(|e| e.to_string())?;
            // SAFETY: the layout has a non-zero size; the memory lives for the
            // process (the relay runs until killed).
            let entries = unsafe { std::alloc::alloc_zeroed(layout) } as *mut BufRingEntry;
            if entries.is_null() {
                return Err("cannot allocate the buffer ring".into());
            }
            // SAFETY: entries is page-aligned, zeroed and BUF_COUNT long.
            unsafe { ring.submitter().register_buf_ring(entries as u64, BUF_COUNT, BGID) }
                .map_err(|e| format!("register_buf_ring (needs Linux 5.19+): {e}"))?;
            let base = Box::leak(vec![0u8; BUF_SIZE * BUF_COUNT as usize].into_boxed_slice()).as_mut_ptr();
            let mut bufs = BufRing { entries, tail: 0, base };
            for bid in 0..BUF_COUNT {
                bufs.push(bid);
            }
            bufs.publish();
            Ok(bufs)
        }

        fn ptr(&self, bid: u16) -> *const u8 {
            // SAFETY: bid < BUF_COUNT, so the offset stays inside the buffers.
            unsafe { self.base.add(bid as usize * BUF_SIZE) }
        }

        /// Gives buffer `bid` back to the kernel (visible after `publish`).
        fn push(&mut self, bid: u16) {
            let index = (self.tail & (BUF_COUNT - 1)) as usize;
            // SAFETY: index < BUF_COUNT; only the kernel reads entries past
            // the published tail, and this one is not yet published.
            let entry = unsafe { &mut *self.entries.add(index) };
            entry.set_addr(self.ptr(bid) as u64);
            entry.set_len(BUF_SIZE as u32);
            entry.set_bid(bid);
            self.tail = self.tail.wrapping_add(1);
        }

        fn publish(&self) {
            // SAFETY: the tail field of the first entry, which the kernel
            // reads with acquire ordering.
            let tail = unsafe { &*(BufRingEntry::tail(self.entries) as *const AtomicU16) };
            tail.store(self.tail, Ordering::Release);
        }
    }

    /// Bytes waiting to be sent: a ring buffer, a start and a length.
    struct Chunk {
        bid: u16,
        start: u32,
        len: u32,
    }

    /// A relayed pair: side 0 is the client, side 1 the server. `out[s]` is
    /// what waits to be sent to side `s`.
    struct Conn {
        fds: [RawFd; 2],
        out: [VecDeque<Chunk>; 2],
        sending: [bool; 2],
        receiving: [bool; 2],
        eof: [bool; 2],
        connecting: bool,
    }

    struct Relay {
        ring: IoUring,
        bufs: BufRing,
        conns: Vec<Option<Conn>>,
        free: Vec<usize>,
        listen_fd: RawFd,
        upstream: libc::sockaddr_in,
        buffers_returned: bool,
        receive: Receive,
    }

    pub fn run(
        listener: TcpListener,
        addr: SocketAddr,
        upstream: SocketAddr,
        receive: Receive,
    ) -> Result<(), String> {
        let SocketAddr::V4(up) = upstream else { return Err("--upstream: IPv4 only".into()) };
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(4096)
            .map_err(|e| format!("io_uring_setup: {e}"))?;
        let bufs = BufRing::new(&ring)?;
        let upstream = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: up.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*up.ip()).to_be() },
            sin_zero: [0; 8],
        };
        let mut relay = Relay {
            ring,
            bufs,
            conns: Vec::new(),
            free: Vec::new(),
            listen_fd: listener.as_raw_fd(),
            upstream,
            buffers_returned: false,
            receive,
        };
        relay.arm_accept();
        let name = match receive {
            Receive::Multishot => "multishot",
            Receive::OneShot => "recv",
            Receive::PollFirst => "pollfirst",
        };
        eprintln!("relay listening on {addr} ({name})");
        let mut events: Vec<(u64, i32, u32)> = Vec::with_capacity(256);
        loop {
            match relay.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(format!("io_uring_enter: {e}")),
            }
            events.clear();
            events.extend(relay.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
            for &(user_data, result, flags) in &events {
                relay.complete(user_data, result, flags);
            }
            if relay.buffers_returned {
                relay.bufs.publish();
                relay.buffers_returned = false;
            }
        }
    }

    impl Relay {
        fn push(&mut self, entry: squeue::Entry) {
            // SAFETY: every buffer and address an entry points to outlives
            // its operation (ring buffers and `upstream` live for the
            // process; a connection's fds close only when nothing is in
            // flight on them).
            while unsafe { self.ring.submission().push(&entry) }.is_err() {
                let _ = self.ring.submit();
            }
        }

        fn arm_accept(&mut self) {
            let entry = opcode::AcceptMulti::new(Fd(self.listen_fd)).build().user_data(ud(ACCEPT, 0, 0));
            self.push(entry);
        }

        fn arm_recv(&mut self, slot: usize, side: usize, fd: RawFd) {
            let entry = match self.receive {
                Receive::Multishot => opcode::RecvMulti::new(Fd(fd), BGID).build(),
                Receive::OneShot | Receive::PollFirst => {
                    let entry = opcode::Recv::new(Fd(fd), std::ptr::null_mut(), BUF_SIZE as u32)
                        .buf_group(BGID)
                        .build()
                        .flags(squeue::Flags::BUFFER_SELECT);
                    if self.receive == Receive::PollFirst {
                        with_ioprio(entry, IORING_RECVSEND_POLL_FIRST)
                    } else {
                        entry
                    }
                }
            };
            self.push(entry.user_data(ud(RECV, slot, side)));
        }

        fn send_next(&mut self, slot: usize, side: usize) {
            let conn = self.conns[slot].as_mut().expect("live slot");
            let Some(chunk) = conn.out[side].front() else { return };
            conn.sending[side] = true;
            let fd = conn.fds[side];
            // SAFETY: start + len lies inside buffer `bid`.
            let ptr = unsafe { self.bufs.ptr(chunk.bid).add(chunk.start as usize) };
            let entry = opcode::Send::new(Fd(fd), ptr, chunk.len).build().user_data(ud(SEND, slot, side));
            self.push(entry);
        }

        fn complete(&mut self, user_data: u64, result: i32, flags: u32) {
            let kind = user_data & 7;
            let side = ((user_data >> 3) & 1) as usize;
            let slot = (user_data >> 4) as usize;
            match kind {
                ACCEPT => {
                    if result >= 0 {
                        self.accepted(result);
                    }
                    if !cqueue::more(flags) {
                        self.arm_accept();
                    }
                }
                CONNECT => self.connected(slot, result),
                RECV => self.received(slot, side, result, flags),
                SEND => self.sent(slot, side, result),
                _ => {}
            }
        }

        fn accepted(&mut self, client: RawFd) {
            nodelay(client);
            // SAFETY: plain socket(2).
            let server = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            if server < 0 {
                // SAFETY: client is ours.
                unsafe { libc::close(client) };
                return;
            }
            nodelay(server);
            let conn = Conn {
                fds: [client, server],
                out: [VecDeque::new(), VecDeque::new()],
                sending: [false; 2],
                receiving: [false; 2],
                eof: [false; 2],
                connecting: true,
            };
            let slot = match self.free.pop() {
                Some(slot) => {
                    self.conns[slot] = Some(conn);
                    slot
                }
                None => {
                    self.conns.push(Some(conn));
                    self.conns.len() - 1
                }
            };
            let addr = &self.upstream as *const libc::sockaddr_in as *const libc::sockaddr;
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let entry = opcode::Connect::new(Fd(server), addr, len).build().user_data(ud(CONNECT, slot, 1));
            self.push(entry);
        }

        fn connected(&mut self, slot: usize, result: i32) {
            let conn = self.conns[slot].as_mut().expect("live slot");
            conn.connecting = false;
            if result < 0 {
                self.finish_if_idle(slot);
                return;
            }
            conn.receiving = [true, true];
            let fds = conn.fds;
            self.arm_recv(slot, 0, fds[0]);
            self.arm_recv(slot, 1, fds[1]);
        }

        fn received(&mut self, slot: usize, side: usize, result: i32, flags: u32) {
            let more = cqueue::more(flags);
            let peer = 1 - side;
            if result <= 0 {
                // A completion without data may still have taken a buffer.
                if let Some(bid) = cqueue::buffer_select(flags) {
                    self.bufs.push(bid);
                    self.buffers_returned = true;
                }
            }
            if result > 0 {
                let bid = cqueue::buffer_select(flags).expect("a multishot receive names its buffer");
                let conn = self.conns[slot].as_mut().expect("live slot");
                conn.out[peer].push_back(Chunk { bid, start: 0, len: result as u32 });
                if !conn.sending[peer] {
                    self.send_next(slot, peer);
                }
                if !more {
                    let fd = self.conns[slot].as_ref().expect("live slot").fds[side];
                    self.arm_recv(slot, side, fd);
                }
                return;
            }
            if result == -libc::ENOBUFS && !more {
                // Out of ring buffers for a moment: ask again.
                let fd = self.conns[slot].as_ref().expect("live slot").fds[side];
                self.arm_recv(slot, side, fd);
                return;
            }
            let conn = self.conns[slot].as_mut().expect("live slot");
            if !more {
                conn.receiving[side] = false;
            }
            conn.eof[side] = true;
            if result < 0 {
                // A reset or error: stop both directions.
                // SAFETY: both fds are ours and open.
                unsafe {
                    libc::shutdown(conn.fds[0], libc::SHUT_RDWR);
                    libc::shutdown(conn.fds[1], libc::SHUT_RDWR);
                }
            } else if conn.out[peer].is_empty() && !conn.sending[peer] {
                // End of stream: pass it on once what came before is sent.
                // SAFETY: the fd is ours and open.
                unsafe { libc::shutdown(conn.fds[peer], libc::SHUT_WR) };
            }
            self.finish_if_idle(slot);
        }

        fn sent(&mut self, slot: usize, side: usize, result: i32) {
            let conn = self.conns[slot].as_mut().expect("live slot");
            conn.sending[side] = false;
            if result <= 0 {
                for chunk in conn.out[side].drain(..) {
                    self.bufs.push(chunk.bid);
                }
                self.buffers_returned = true;
                // SAFETY: both fds are ours and open.
                unsafe {
                    libc::shutdown(conn.fds[0], libc::SHUT_RDWR);
                    libc::shutdown(conn.fds[1], libc::SHUT_RDWR);
                }
                self.finish_if_idle(slot);
                return;
            }
            let chunk = conn.out[side].front_mut().expect("a send has its chunk");
            chunk.start += result as u32;
            chunk.len -= result as u32;
            if chunk.len == 0 {
                let bid = chunk.bid;
                conn.out[side].pop_front();
                self.bufs.push(bid);
                self.buffers_returned = true;
            }
            if !conn.out[side].is_empty() {
                self.send_next(slot, side);
                return;
            }
            if conn.eof[1 - side] {
                // SAFETY: the fd is ours and open.
                unsafe { libc::shutdown(conn.fds[side], libc::SHUT_WR) };
            }
            self.finish_if_idle(slot);
        }

        /// Closes a pair once nothing is in flight on either socket.
        fn finish_if_idle(&mut self, slot: usize) {
            let conn = self.conns[slot].as_ref().expect("live slot");
            let busy = conn.connecting || conn.receiving.iter().chain(&conn.sending).any(|&b| b);
            if busy {
                return;
            }
            let conn = self.conns[slot].take().expect("live slot");
            for queue in conn.out {
                for chunk in queue {
                    self.bufs.push(chunk.bid);
                    self.buffers_returned = true;
                }
            }
            // SAFETY: nothing is in flight on them any more.
            unsafe {
                libc::close(conn.fds[0]);
                libc::close(conn.fds[1]);
            }
            self.free.push(slot);
        }
    }

    /// Sets an entry's `ioprio` field (the send/receive flags), which the
    /// io-uring crate's `Recv` builder does not expose.
    fn with_ioprio(entry: squeue::Entry, ioprio: u16) -> squeue::Entry {
        const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);
        // SAFETY: Entry is #[repr(C)] over io_uring_sqe, 64 bytes: opcode
        // (u8), flags (u8), then ioprio (u16) at offset 2.
        let mut raw: [u8; 64] = unsafe { std::mem::transmute(entry) };
        raw[2..4].copy_from_slice(&ioprio.to_ne_bytes());
        // SAFETY: the same bytes with one field changed.
        unsafe { std::mem::transmute(raw) }
    }

    fn nodelay(fd: RawFd) {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a valid int option.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}
