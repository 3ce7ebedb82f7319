//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, as two
//! sans-I/O state machines: [`ScramServer`] for the proxy verifying a client,
//! [`ScramClient`] for the proxy logging into PostgreSQL.
//!
//! The caller moves the bytes: it unwraps SASLInitialResponse/SASLResponse
//! and wraps the results into AuthenticationSASLContinue/Final (or the other
//! way round on the client side). The machines only see the SCRAM messages,
//! which keeps them testable by replaying recorded exchanges.
//!
//! PostgreSQL specifics followed here: the user name comes from the startup
//! packet, so clients send an empty `n=` and the server ignores it; nonces
//! are 18 random bytes in base64; there is no authorization identity.
//! Channel binding (SCRAM-SHA-256-PLUS) is not offered.
//!
//! Passthrough: a successful [`ScramServer`] exchange yields the client's
//! ClientKey. With the secret's ServerKey, salt and iteration count that is
//! enough to log into PostgreSQL as the same user
//! ([`ScramCredential::Keys`]) when the configuration holds only a SCRAM
//! secret, as PgBouncer does. It needs the configured secret to be the one
//! the server stores (same salt and iteration count).

mod client;
mod parse;
mod server;
#[cfg(test)]
mod tests;

pub use client::{ScramClient, ScramCredential};
pub use server::{ScramOutcome, ScramServer};

use super::crypto;
use super::AuthError;

/// The SASL mechanism name, as listed in AuthenticationSASL and sent in
/// SASLInitialResponse.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// The longest SCRAM message we read. PostgreSQL's own messages are around
/// a hundred bytes; this leaves room for long nonces and extensions while
/// bounding what a peer can make us parse.
pub const MAX_SCRAM_MESSAGE_BYTES: usize = 4096;

/// Random bytes in a nonce, as PostgreSQL's `SCRAM_RAW_NONCE_LEN`.
const NONCE_RAW_LEN_BYTES: usize = 18;

/// Message names used in errors.
const CLIENT_FIRST: &str = "client-first-message";
const SERVER_FIRST: &str = "server-first-message";
const CLIENT_FINAL: &str = "client-final-message";
const SERVER_FINAL: &str = "server-final-message";

/// A fresh nonce: 18 random bytes in base64 (24 printable characters).
fn new_nonce() -> Result<String, AuthError> {
    let raw: [u8; NONCE_RAW_LEN_BYTES] = crypto::random_bytes()?;
    Ok(crypto::b64_encode(&raw))
}
