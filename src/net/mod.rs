//! Sockets and the runtime's I/O, kept in one box so that nothing outside
//! `net` and `shard` names monoio. Everything here is owned-buffer I/O on
//! io_uring: a read or write takes its buffer and socket half by value and
//! hands both back, so a pending operation can stay armed across loop
//! iterations without borrowing the session.

pub mod tls;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, CancelableAsyncReadRent, Splitable};

pub use monoio::io::{CancelHandle, Canceller};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};

/// The read side of a TCP connection.
pub type ReadHalf = monoio::io::OwnedReadHalf<TcpStream>;
/// The write side of a TCP connection.
pub type WriteHalf = monoio::io::OwnedWriteHalf<TcpStream>;

/// Free space a read asks the kernel to fill at least: below this the buffer
/// grows before the read is armed.
pub const MIN_READ_SPACE: usize = 8 * 1024;

/// Listen backlog for every shard's listener.
pub const LISTEN_BACKLOG: i32 = 1024;

/// A shard's listening socket (SO_REUSEPORT: each shard binds its own, the
/// kernel spreads new connections over them).
pub struct Listener(TcpListener);

impl Listener {
    /// Binds `addr` with SO_REUSEPORT and SO_REUSEADDR.
    pub fn bind(addr: SocketAddr) -> io::Result<Listener> {
        let opts = ListenerOpts::new().reuse_port(true).reuse_addr(true).backlog(LISTEN_BACKLOG);
        TcpListener::bind_with_config(addr, &opts).map(Listener)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    /// Accepts one connection, with TCP_NODELAY set, split into halves.
    pub async fn accept(&self) -> io::Result<(ReadHalf, WriteHalf, SocketAddr)> {
        let (stream, peer) = self.0.accept().await?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        Ok((r, w, peer))
    }
}

/// Connects to `host:port` within `timeout`, with TCP_NODELAY and keepalive.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<(ReadHalf, WriteHalf)> {
    let stream = match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out after {} ms", timeout.as_millis()),
            ))
        }
    };
    stream.set_nodelay(true)?;
    let _ = stream.set_tcp_keepalive(Some(Duration::from_secs(60)), Some(Duration::from_secs(10)), Some(5));
    Ok(stream.into_split())
}

/// Resolves `host:port` (blocking DNS; called at start-up and on the rare
/// connect path, never per message).
pub fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host}:{port} did not resolve")))
}

/// Makes at least [`MIN_READ_SPACE`] free after `buf`'s contents; returns
/// the range a read may fill (contents length, capacity).
fn read_space(buf: &mut Vec<u8>) -> (usize, usize) {
    let len = buf.len();
    if buf.capacity() - len < MIN_READ_SPACE {
        buf.reserve(MIN_READ_SPACE);
    }
    (len, buf.capacity())
}

/// Reads once, appending to `buf` after its current contents. `Ok(0)` is
/// end of stream.
pub async fn read_append(half: &mut ReadHalf, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
    let (len, cap) = read_space(&mut buf);
    let (res, slice) = half.read(buf.slice_mut(len..cap)).await;
    (res, slice.into_inner())
}

/// Writes all of `buf`, then hands it back cleared.
pub async fn write_all(half: &mut WriteHalf, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
    let (res, mut buf) = half.write_all(buf).await;
    buf.clear();
    (res.map(|_| ()), buf)
}

/// A read that owns its half and buffer, so it can stay armed in the
/// session's event loop while other events are handled.
pub async fn read_owned(mut half: ReadHalf, buf: Vec<u8>) -> (ReadHalf, io::Result<usize>, Vec<u8>) {
    let (res, buf) = read_append(&mut half, buf).await;
    (half, res, buf)
}

/// A write that owns its half and buffer (see [`read_owned`]).
pub async fn write_owned(mut half: WriteHalf, buf: Vec<u8>) -> (WriteHalf, io::Result<()>, Vec<u8>) {
    let (res, buf) = write_all(&mut half, buf).await;
    (half, res, buf)
}

/// Arms (Some) or disarms (None) a read slot. One function, so that armed
/// and empty slots share a single nameable type and can be stored pinned in
/// a local and replaced in place with `Pin::set`, with no allocation.
#[allow(clippy::manual_map)]
pub fn arm_read(
    x: Option<(ReadHalf, Vec<u8>)>,
) -> Option<impl Future<Output = (ReadHalf, io::Result<usize>, Vec<u8>)>> {
    match x {
        Some((h, b)) => Some(read_owned(h, b)),
        None => None,
    }
}

/// Like [`read_owned`], but the read can be cancelled through `handle`
/// (it then completes with an error, or with data that arrived first), so
/// the half can be taken back from an armed read.
pub async fn read_owned_cancelable(
    mut half: ReadHalf,
    mut buf: Vec<u8>,
    handle: CancelHandle,
) -> (ReadHalf, io::Result<usize>, Vec<u8>) {
    let (len, cap) = read_space(&mut buf);
    let (res, slice) = half.cancelable_read(buf.slice_mut(len..cap), handle).await;
    (half, res, slice.into_inner())
}

/// Arms (Some) or disarms (None) a cancelable read slot (see [`arm_read`]).
#[allow(clippy::manual_map)]
pub fn arm_read_cancelable(
    x: Option<(ReadHalf, Vec<u8>, CancelHandle)>,
) -> Option<impl Future<Output = (ReadHalf, io::Result<usize>, Vec<u8>)>> {
    match x {
        Some((h, b, c)) => Some(read_owned_cancelable(h, b, c)),
        None => None,
    }
}

/// Arms (Some) or disarms (None) a write slot (see [`arm_read`]).
#[allow(clippy::manual_map)]
pub fn arm_write(
    x: Option<(WriteHalf, Vec<u8>)>,
) -> Option<impl Future<Output = (WriteHalf, io::Result<()>, Vec<u8>)>> {
    match x {
        Some((h, b)) => Some(write_owned(h, b)),
        None => None,
    }
}

/// Polls an optional pinned future slot; `Pending` when empty.
pub fn poll_slot<F: Future>(slot: Pin<&mut Option<F>>, cx: &mut Context<'_>) -> Poll<F::Output> {
    match slot.as_pin_mut() {
        Some(f) => f.poll(cx),
        None => Poll::Pending,
    }
}

/// Sleeps on the shard's timer.
pub async fn sleep(d: Duration) {
    monoio::time::sleep(d).await
}

/// Runs `fut` for at most `d`; `None` on timeout.
pub async fn timeout<F: Future>(d: Duration, fut: F) -> Option<F::Output> {
    monoio::time::timeout(d, fut).await.ok()
}

/// Spawns a task on the current shard.
pub fn spawn<F>(fut: F)
where
    F: Future + 'static,
    F::Output: 'static,
{
    drop(monoio::spawn(fut));
}

/// Whether the peer closed (or sent unexpected bytes on) a connection that
/// should be quiet: one non-blocking MSG_PEEK, used on pooled connections
/// that sat idle for a while.
pub fn peer_closed(rd: &ReadHalf) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: the stream lives as long as `rd`; we only read its fd.
    let fd = unsafe { &*rd.0.get() }.as_raw_fd();
    let mut b = [0u8; 1];
    // SAFETY: valid fd and a 1-byte buffer we own.
    let n = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return e.kind() != io::ErrorKind::WouldBlock;
    }
    true
}
