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
use monoio::net::{ListenerOpts, TcpListener, TcpStream, UnixStream};

/// The read side of a connection.
pub type ReadHalf = monoio::io::OwnedReadHalf<TcpStream>;
/// The write side of a connection.
pub type WriteHalf = monoio::io::OwnedWriteHalf<TcpStream>;

/// monoio's `TcpStream` is the handle for every stream socket here,
/// Unix-domain ones included: its reads and writes are plain recv/send
/// operations on the descriptor, whatever its family, and one concrete type
/// keeps the relay free of a per-operation dispatch (an enum over TCP and
/// Unix streams cost about 450 instructions per transaction, measured with
/// callgrind). Only TCP connections get TCP calls (nodelay, keepalive,
/// addresses).
fn stream_from_unix(stream: UnixStream) -> io::Result<TcpStream> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let fd = stream.into_raw_fd();
    // SAFETY: `fd` is a connected stream socket we own (just released by
    // `stream`); the new handle takes ownership and closes it when dropped.
    let std_stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    TcpStream::from_std(std_stream)
}

/// Where a server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerAddr {
    Tcp(SocketAddr),
    /// The socket file itself (`DIR/.s.PGSQL.PORT`).
    Unix(std::sync::Arc<std::path::Path>),
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddr::Tcp(a) => a.fmt(f),
            ServerAddr::Unix(p) => p.display().fmt(f),
        }
    }
}

/// The socket file Postgres creates for `port` in directory `dir`.
pub fn unix_socket_path(dir: &str, port: u16) -> std::path::PathBuf {
    std::path::Path::new(dir).join(format!(".s.PGSQL.{port}"))
}

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
    pub async fn accept(&self) -> io::Result<(ReadHalf, WriteHalf, Peer)> {
        let (stream, peer) = self.0.accept().await?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        Ok((r, w, Peer::Tcp(peer)))
    }
}

/// A listening socket a shard accepts clients on.
pub trait Accept {
    fn accept(&self) -> impl Future<Output = io::Result<(ReadHalf, WriteHalf, Peer)>>;
}

impl Accept for Listener {
    fn accept(&self) -> impl Future<Output = io::Result<(ReadHalf, WriteHalf, Peer)>> {
        Listener::accept(self)
    }
}

impl Accept for UnixListener {
    fn accept(&self) -> impl Future<Output = io::Result<(ReadHalf, WriteHalf, Peer)>> {
        UnixListener::accept(self)
    }
}

/// Who connected: a TCP address, or a process on this host over the Unix
/// socket (its pid and uid from SO_PEERCRED, for the logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix { pid: Option<i32>, uid: u32 },
}

impl Peer {
    /// A Unix-socket client never crossed a network.
    pub fn is_local_socket(&self) -> bool {
        matches!(self, Peer::Unix { .. })
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => a.fmt(f),
            Peer::Unix { pid: Some(pid), uid } => write!(f, "unix socket (pid {pid}, uid {uid})"),
            Peer::Unix { pid: None, uid } => write!(f, "unix socket (uid {uid})"),
        }
    }
}

/// The Unix-domain socket clients may use besides TCP (`unix_socket_dir`).
/// SO_REUSEPORT does not apply to AF_UNIX, so there is one socket and every
/// shard accepts on its own handle to it: the kernel gives each connection
/// to one of them. The socket file is removed when this is dropped.
pub struct UnixSocket {
    listener: std::os::unix::net::UnixListener,
    path: std::path::PathBuf,
}

impl UnixSocket {
    /// Binds `path` with mode 0777 (who may log in is decided by
    /// authentication, as for Postgres's own socket). A socket file left by
    /// a process that is gone is replaced; one that still answers is not.
    pub fn bind(path: &std::path::Path) -> io::Result<UnixSocket> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way",
                ));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(io::ErrorKind::AddrInUse, "another process is listening on it"));
            }
            std::fs::remove_file(path)?;
        }
        let listener = std::os::unix::net::UnixListener::bind(path)?;
        let socket = UnixSocket { listener, path: path.to_path_buf() };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))?;
        Ok(socket)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// A handle for one shard (a duplicate of the listening descriptor).
    pub fn handle(&self) -> io::Result<std::os::unix::net::UnixListener> {
        self.listener.try_clone()
    }
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A shard's handle to the [`UnixSocket`], registered with its runtime.
pub struct UnixListener(monoio::net::UnixListener);

impl UnixListener {
    pub fn new(handle: std::os::unix::net::UnixListener) -> io::Result<UnixListener> {
        monoio::net::UnixListener::from_std(handle).map(UnixListener)
    }

    /// Accepts one connection, split into halves.
    pub async fn accept(&self) -> io::Result<(ReadHalf, WriteHalf, Peer)> {
        let (stream, _) = self.0.accept().await?;
        let peer = match stream.peer_cred() {
            Ok(c) => Peer::Unix { pid: c.pid(), uid: c.uid() },
            Err(_) => Peer::Unix { pid: None, uid: u32::MAX },
        };
        let (r, w) = stream_from_unix(stream)?.into_split();
        Ok((r, w, peer))
    }
}

/// Connects to a server within `timeout`: over TCP with TCP_NODELAY and
/// keepalive, or over its Unix-domain socket.
pub async fn connect(addr: &ServerAddr, timeout: Duration) -> io::Result<(ReadHalf, WriteHalf)> {
    let timed_out = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {addr} timed out after {} ms", timeout.as_millis()),
        )
    };
    let stream = match addr {
        ServerAddr::Tcp(a) => {
            let stream = monoio::time::timeout(timeout, TcpStream::connect_addr(*a))
                .await
                .map_err(|_| timed_out())??;
            stream.set_nodelay(true)?;
            let _ = stream.set_tcp_keepalive(
                Some(Duration::from_secs(60)),
                Some(Duration::from_secs(10)),
                Some(5),
            );
            stream
        }
        ServerAddr::Unix(p) => stream_from_unix(
            monoio::time::timeout(timeout, UnixStream::connect(p)).await.map_err(|_| timed_out())??,
        )?,
    };
    Ok(stream.into_split())
}

/// Resolves a configured server: a `host` that starts with `/` is the
/// directory of its Unix-domain socket (as in libpq); anything else is
/// resolved as `host:port` (blocking DNS; called at start-up, never per
/// message).
pub fn resolve(host: &str, port: u16) -> io::Result<ServerAddr> {
    use std::net::ToSocketAddrs;
    if host.starts_with('/') {
        return Ok(ServerAddr::Unix(unix_socket_path(host, port).into()));
    }
    (host, port)
        .to_socket_addrs()?
        .next()
        .map(ServerAddr::Tcp)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_starting_with_a_slash_is_a_socket_directory() {
        let addr = resolve("/var/run/postgresql", 5433).unwrap();
        assert_eq!(addr, ServerAddr::Unix(std::path::Path::new("/var/run/postgresql/.s.PGSQL.5433").into()));
        assert_eq!(addr.to_string(), "/var/run/postgresql/.s.PGSQL.5433");
        let tcp = resolve("127.0.0.1", 5432).unwrap();
        assert_eq!(tcp, ServerAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 5432))));
        assert_eq!(tcp.to_string(), "127.0.0.1:5432");
    }
}
