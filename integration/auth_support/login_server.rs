//! The server half of PostgreSQL's login, over a blocking `TcpStream`, so a
//! real client (libpq through psql) can log into code under test.
//!
//! It frames bytes only: the test decides how to authenticate. After login
//! it answers every query with EmptyQueryResponse, which is all psql needs
//! to run `-c` and exit 0.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// No single read or write, and no wait for a client, lasts longer.
const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest frontend message accepted.
const MAX_MESSAGE_BYTES: usize = 1 << 16;
const PROTOCOL_3_0: u32 = 196_608;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
/// How often a pending accept is polled.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

/// One client connection, during and after login.
pub struct ServerConn {
    stream: TcpStream,
}

impl ServerConn {
    /// Waits (bounded) for one client and reads its StartupMessage,
    /// refusing SSL and GSS encryption requests. Returns the startup
    /// parameters.
    pub fn accept(listener: &TcpListener) -> io::Result<(ServerConn, HashMap<String, String>)> {
        let stream = accept_with_deadline(listener)?;
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut conn = ServerConn { stream };
        let params = conn.read_startup()?;
        Ok((conn, params))
    }

    /// AuthenticationSASL listing `mechanism`.
    pub fn send_auth_sasl(&mut self, mechanism: &str) -> io::Result<()> {
        let mut body = 10i32.to_be_bytes().to_vec();
        body.extend_from_slice(mechanism.as_bytes());
        body.extend_from_slice(&[0, 0]);
        self.send(b'R', &body)
    }

    /// AuthenticationSASLContinue (11) or AuthenticationSASLFinal (12).
    pub fn send_auth_data(&mut self, code: i32, data: &[u8]) -> io::Result<()> {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(data);
        self.send(b'R', &body)
    }

    /// AuthenticationMD5Password.
    pub fn send_auth_md5(&mut self, salt: [u8; 4]) -> io::Result<()> {
        let mut body = 5i32.to_be_bytes().to_vec();
        body.extend_from_slice(&salt);
        self.send(b'R', &body)
    }

    /// AuthenticationCleartextPassword.
    pub fn send_auth_cleartext(&mut self) -> io::Result<()> {
        self.send(b'R', &3i32.to_be_bytes())
    }

    /// SASLInitialResponse: the mechanism and its data.
    pub fn read_sasl_initial(&mut self) -> io::Result<(String, Vec<u8>)> {
        let body = self.read_tagged(b'p')?;
        let nul = body.iter().position(|&b| b == 0).ok_or_else(|| bad("no mechanism"))?;
        let mechanism = String::from_utf8_lossy(&body[..nul]).into_owned();
        let rest = &body[nul + 1..];
        let len = rest.get(..4).ok_or_else(|| bad("short SASLInitialResponse"))?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        let data = usize::try_from(len).ok().and_then(|len| rest.get(4..4 + len));
        Ok((mechanism, data.ok_or_else(|| bad("bad SASL data length"))?.to_vec()))
    }

    /// SASLResponse data.
    pub fn read_sasl_response(&mut self) -> io::Result<Vec<u8>> {
        self.read_tagged(b'p')
    }

    /// PasswordMessage: the password, without its NUL.
    pub fn read_password(&mut self) -> io::Result<Vec<u8>> {
        let mut body = self.read_tagged(b'p')?;
        if body.pop() != Some(0) {
            return Err(bad("password not NUL-terminated"));
        }
        Ok(body)
    }

    /// AuthenticationOk, the usual parameters, BackendKeyData, then
    /// ReadyForQuery; then EmptyQueryResponse to every query until the
    /// client terminates.
    pub fn accept_login_and_serve(&mut self) -> io::Result<()> {
        self.send(b'R', &0i32.to_be_bytes())?;
        for (key, value) in
            [("server_version", "15.0"), ("client_encoding", "UTF8"), ("DateStyle", "ISO, MDY")]
        {
            self.send(b'S', &[key.as_bytes(), &[0], value.as_bytes(), &[0]].concat())?;
        }
        self.send(b'K', &[1u8, 2, 3, 4, 5, 6, 7, 8])?;
        self.send(b'Z', b"I")?;
        loop {
            let (tag, _) = self.read_message()?;
            match tag {
                b'Q' => {
                    self.send(b'I', &[])?;
                    self.send(b'Z', b"I")?;
                }
                b'X' => return Ok(()),
                other => return Err(bad(&format!("unexpected message {:?}", char::from(other)))),
            }
        }
    }

    /// ErrorResponse with severity FATAL.
    pub fn send_error(&mut self, sqlstate: &str, message: &str) -> io::Result<()> {
        let mut body = Vec::new();
        for (field, value) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', sqlstate), (b'M', message)] {
            body.push(field);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        self.send(b'E', &body)
    }

    fn read_startup(&mut self) -> io::Result<HashMap<String, String>> {
        loop {
            let body = self.read_untagged()?;
            let code = body.get(..4).ok_or_else(|| bad("short startup packet"))?;
            match u32::from_be_bytes([code[0], code[1], code[2], code[3]]) {
                SSL_REQUEST | GSSENC_REQUEST => self.stream.write_all(b"N")?,
                PROTOCOL_3_0 => return Ok(parse_params(&body[4..])),
                other => return Err(bad(&format!("unsupported protocol {other}"))),
            }
        }
    }

    fn read_untagged(&mut self) -> io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        self.read_body(i32::from_be_bytes(len))
    }

    fn read_tagged(&mut self, expected: u8) -> io::Result<Vec<u8>> {
        let (tag, body) = self.read_message()?;
        if tag != expected {
            return Err(bad(&format!("expected {:?}, got {:?}", char::from(expected), char::from(tag))));
        }
        Ok(body)
    }

    fn read_message(&mut self) -> io::Result<(u8, Vec<u8>)> {
        let mut header = [0u8; 5];
        self.stream.read_exact(&mut header)?;
        let body = self.read_body(i32::from_be_bytes([header[1], header[2], header[3], header[4]]))?;
        Ok((header[0], body))
    }

    fn read_body(&mut self, len: i32) -> io::Result<Vec<u8>> {
        let body_len = usize::try_from(len)
            .ok()
            .and_then(|len| len.checked_sub(4))
            .filter(|&len| len <= MAX_MESSAGE_BYTES)
            .ok_or_else(|| bad(&format!("message length {len}")))?;
        let mut body = vec![0u8; body_len];
        self.stream.read_exact(&mut body)?;
        Ok(body)
    }

    fn send(&mut self, tag: u8, body: &[u8]) -> io::Result<()> {
        let len = i32::try_from(body.len() + 4).map_err(|_| bad("message too long"))?;
        let mut message = vec![tag];
        message.extend_from_slice(&len.to_be_bytes());
        message.extend_from_slice(body);
        self.stream.write_all(&message)
    }
}

fn accept_with_deadline(listener: &TcpListener) -> io::Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => return Ok(stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(ACCEPT_POLL);
            }
            Err(e) => return Err(e),
        }
    }
}

/// `key\0value\0...\0`: pairs up to the empty key that ends the list.
fn parse_params(body: &[u8]) -> HashMap<String, String> {
    let mut fields = body.split(|&b| b == 0).map(|f| String::from_utf8_lossy(f).into_owned());
    let mut params = HashMap::new();
    while let (Some(key), Some(value)) = (fields.next(), fields.next()) {
        if key.is_empty() {
            break;
        }
        params.insert(key, value);
    }
    params
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Runs `psql -c 'select 1'` against `addr` as `user`, the password in
/// PGPASSWORD (never on the command line), without TLS or GSS so the login
/// is the plain one this module serves.
pub fn psql_client(
    addr: std::net::SocketAddr,
    user: &str,
    password: &str,
) -> io::Result<std::process::Output> {
    let conninfo = format!(
        "host={} port={} user={user} dbname=postgres sslmode=disable gssencmode=disable connect_timeout=10",
        addr.ip(),
        addr.port()
    );
    std::process::Command::new(super::pg::pg_bin().join("psql"))
        .args(["-X", "-w", "-c", "select 1", "-d", &conninfo])
        .env("PGPASSWORD", password)
        .env_remove("PGPASSFILE")
        .env_remove("PGSERVICE")
        .stdin(std::process::Stdio::null())
        .output()
}
