//! Password authentication primitives, sans I/O: no sockets, no runtime.
//!
//! The session layer moves the bytes; this module decides. It covers both
//! directions of a proxy: verifying a client that logs into pgwarden, and
//! logging pgwarden into PostgreSQL.
//!
//! - [`Secret`] / [`ScramSecret`]: what the configuration holds for a user,
//!   in PostgreSQL's own `rolpassword` formats ([`secret`]).
//! - [`ScramServer`] / [`ScramClient`]: SCRAM-SHA-256 state machines with a
//!   documented call order, and the passthrough of a client's keys to the
//!   server ([`ScramCredential::Keys`]), and a mock exchange for unknown
//!   users ([`ScramServer::mock`]) ([`scram`]).
//! - [`md5_secret`], [`md5_response`], [`md5_verify`]: legacy md5 ([`md5`]).
//! - [`verify_cleartext`]: a clear password against any secret
//!   ([`cleartext`]).
//!
//! Every comparison of secret material is constant-time, and no error,
//! `Debug` output or log line carries a password, proof, key or secret:
//! these values live in snapshots and sessions that are logged and shown.
//!
//! - [`jwt`]: verification keys from PEM and JWKS, token validation, and
//!   signing for the developer tools.

pub mod cleartext;
mod crypto;
mod error;
pub mod jwt;
pub mod md5;
mod saslprep;
pub mod scram;
pub mod secret;

pub use self::md5::{md5_response, md5_secret, md5_verify};
pub use cleartext::verify_cleartext;
pub use error::AuthError;
pub use scram::{
    ScramClient, ScramCredential, ScramOutcome, ScramServer, MAX_SCRAM_MESSAGE_BYTES, SCRAM_SHA_256,
};
pub use secret::{
    ScramSecret, Secret, MAX_SCRAM_ITERATIONS, SCRAM_DEFAULT_ITERATIONS, SCRAM_DEFAULT_SALT_LEN_BYTES,
};
