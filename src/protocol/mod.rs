//! The PostgreSQL v3 wire protocol as a pure codec: parse over byte slices,
//! encode into buffers. No I/O and no runtime here.
//!
//! - [`frame`]: message headers and bounded field readers/writers.
//! - [`startup`]: the untagged first packet (StartupMessage, SSLRequest,
//!   GSSENCRequest, CancelRequest).
//! - [`frontend`] / [`backend`]: every message each side sends, decoded into
//!   borrowed enums and encoded back.

pub mod backend;
pub mod frame;
pub mod frontend;
pub mod startup;

use thiserror::Error;

/// Protocol version 3.0 as sent in a StartupMessage.
pub const PROTOCOL_3_0: u32 = 196_608;
/// The request codes that share the startup packet's position.
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// Postgres refuses a startup packet longer than this (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_PACKET_LEN: u32 = 10_000;
/// Postgres refuses a password/SASL message longer than this before reading it.
pub const MAX_PASSWORD_MESSAGE_LEN: u32 = 65_536;

/// A violation of the wire protocol by the peer. Whose fault: the peer's.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("invalid message length {len} for message type {}", printable(*.tag))]
    BadLength { tag: u8, len: i32 },
    #[error("message type {} of {len} bytes exceeds the limit of {max} bytes", printable(*.tag))]
    TooLarge { tag: u8, len: usize, max: usize },
    #[error("malformed message type {}: bad {what}", printable(*.tag))]
    Malformed { tag: u8, what: &'static str },
    #[error("unexpected message type {}", printable(*.tag))]
    UnexpectedTag { tag: u8 },
    #[error("unsupported protocol version {major}.{minor}")]
    UnsupportedVersion { major: u16, minor: u16 },
}

/// Renders a tag byte for messages: `'Q'` or `0x00`.
pub fn printable(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}
