//! Just enough of PostgreSQL's frontend protocol to log in over a blocking
//! `TcpStream`: StartupMessage, the Authentication requests, SASL and
//! password responses, then AuthenticationOk up to ReadyForQuery.
//!
//! Independent of the code under test on purpose: it frames bytes and
//! nothing else, so a test drives the auth state machines through it.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// No single test read or write waits longer than this.
const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest backend message we accept during login.
const MAX_MESSAGE_BYTES: usize = 1 << 20;
const PROTOCOL_3_0: i32 = 196_608;

/// An Authentication request from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthRequest {
    Ok,
    Md5 { salt: [u8; 4] },
    Sasl { mechanisms: Vec<String> },
    SaslContinue(Vec<u8>),
    SaslFinal(Vec<u8>),
    Other(i32),
}

/// Why a login did not complete.
#[derive(Debug)]
pub enum WireError {
    Io(io::Error),
    /// The server sent an ErrorResponse.
    Server {
        code: String,
        message: String,
    },
    /// The server sent something we did not expect.
    Unexpected(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "i/o error: {e}"),
            WireError::Server { code, message } => write!(f, "server error {code}: {message}"),
            WireError::Unexpected(what) => write!(f, "unexpected: {what}"),
        }
    }
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        WireError::Io(e)
    }
}

/// A connection during login.
pub struct Conn {
    stream: TcpStream,
}

impl Conn {
    /// Connects and sends the StartupMessage.
    pub fn startup(addr: SocketAddr, user: &str, database: &str) -> Result<Conn, WireError> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut conn = Conn { stream };
        let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
        for (key, value) in [("user", user), ("database", database)] {
            put_cstr(&mut body, key.as_bytes());
            put_cstr(&mut body, value.as_bytes());
        }
        body.push(0);
        conn.send(None, &body)?;
        Ok(conn)
    }

    /// Reads the next Authentication request; an ErrorResponse is an error.
    pub fn read_auth(&mut self) -> Result<AuthRequest, WireError> {
        let (tag, body) = self.read_message()?;
        match tag {
            b'R' => parse_auth(&body),
            b'E' => Err(server_error(&body)),
            other => Err(WireError::Unexpected(format!("message {:?} during auth", char::from(other)))),
        }
    }

    /// SASLInitialResponse.
    pub fn send_sasl_initial(&mut self, mechanism: &str, data: &[u8]) -> Result<(), WireError> {
        let mut body = Vec::new();
        put_cstr(&mut body, mechanism.as_bytes());
        body.extend_from_slice(&len_i32(data.len())?.to_be_bytes());
        body.extend_from_slice(data);
        self.send(Some(b'p'), &body)
    }

    /// SASLResponse.
    pub fn send_sasl_response(&mut self, data: &[u8]) -> Result<(), WireError> {
        self.send(Some(b'p'), data)
    }

    /// PasswordMessage (cleartext or md5 response).
    pub fn send_password(&mut self, password: &[u8]) -> Result<(), WireError> {
        let mut body = Vec::new();
        put_cstr(&mut body, password);
        self.send(Some(b'p'), &body)
    }

    /// After AuthenticationOk: skips ParameterStatus, BackendKeyData and
    /// notices until ReadyForQuery.
    pub fn await_ready(&mut self) -> Result<(), WireError> {
        loop {
            let (tag, body) = self.read_message()?;
            match tag {
                b'Z' => return Ok(()),
                b'S' | b'K' | b'N' => {}
                b'E' => return Err(server_error(&body)),
                other => {
                    return Err(WireError::Unexpected(format!(
                        "message {:?} before ReadyForQuery",
                        char::from(other)
                    )))
                }
            }
        }
    }

    fn send(&mut self, tag: Option<u8>, body: &[u8]) -> Result<(), WireError> {
        let mut message = Vec::with_capacity(body.len() + 5);
        message.extend(tag);
        message.extend_from_slice(&len_i32(body.len() + 4)?.to_be_bytes());
        message.extend_from_slice(body);
        self.stream.write_all(&message)?;
        Ok(())
    }

    fn read_message(&mut self) -> Result<(u8, Vec<u8>), WireError> {
        let mut header = [0u8; 5];
        self.stream.read_exact(&mut header)?;
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let body_len = usize::try_from(len)
            .ok()
            .and_then(|len| len.checked_sub(4))
            .filter(|&len| len <= MAX_MESSAGE_BYTES)
            .ok_or_else(|| WireError::Unexpected(format!("message length {len}")))?;
        let mut body = vec![0u8; body_len];
        self.stream.read_exact(&mut body)?;
        Ok((header[0], body))
    }
}

fn parse_auth(body: &[u8]) -> Result<AuthRequest, WireError> {
    let short = || WireError::Unexpected("short Authentication message".into());
    let code = body.get(..4).ok_or_else(short)?;
    let code = i32::from_be_bytes([code[0], code[1], code[2], code[3]]);
    let rest = &body[4..];
    Ok(match code {
        0 => AuthRequest::Ok,
        5 => AuthRequest::Md5 { salt: rest.try_into().map_err(|_| short())? },
        10 => AuthRequest::Sasl {
            mechanisms: rest
                .split(|&b| b == 0)
                .filter(|name| !name.is_empty())
                .map(|name| String::from_utf8_lossy(name).into_owned())
                .collect(),
        },
        11 => AuthRequest::SaslContinue(rest.to_vec()),
        12 => AuthRequest::SaslFinal(rest.to_vec()),
        other => AuthRequest::Other(other),
    })
}

/// ErrorResponse: its SQLSTATE (`C`) and message (`M`) fields.
fn server_error(body: &[u8]) -> WireError {
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|&b| b == 0).filter(|f| !f.is_empty()) {
        let value = String::from_utf8_lossy(&field[1..]).into_owned();
        match field[0] {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    WireError::Server { code, message }
}

fn put_cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

fn len_i32(len: usize) -> Result<i32, WireError> {
    i32::try_from(len).map_err(|_| WireError::Unexpected("message too long to send".into()))
}
