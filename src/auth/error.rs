//! The one error type of password authentication.
//!
//! Messages name the step and the field that failed so an operator can tell
//! whose fault it was, and never carry a password, proof, key, salted
//! password or signature: an error may end up in a log or, through the
//! session layer, in an ErrorResponse sent to a client.

use thiserror::Error;

/// Why a password exchange or a secret was refused.
///
/// In a [`ScramServer`](super::ScramServer) exchange the peer is the client;
/// in a [`ScramClient`](super::ScramClient) exchange it is the PostgreSQL
/// server. `message` fields name the SCRAM message concerned
/// (`client-first-message`, `server-final-message`, ...), which tells the two
/// apart.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The peer sent a SCRAM message that does not follow RFC 5802.
    /// Whose fault: the peer's.
    #[error("malformed SCRAM {message}: {what}")]
    Malformed { message: &'static str, what: &'static str },
    /// The client asked for channel binding (`p=`), which we never offer.
    /// Whose fault: the client's.
    #[error("client requested SCRAM channel binding, which is not offered")]
    ChannelBindingUnsupported,
    /// The channel-binding attribute of client-final-message does not repeat
    /// the GS2 header of client-first-message. Whose fault: the client's.
    #[error("SCRAM channel-binding data does not match the GS2 header")]
    ChannelBindingMismatch,
    /// The client sent an authorization identity (`a=`); like PostgreSQL we
    /// take the user from the startup packet only. Whose fault: the client's.
    #[error("SCRAM authorization identity is not supported")]
    AuthzidUnsupported,
    /// The peer requires a SCRAM extension (`m=`) we do not implement.
    /// Whose fault: the peer's.
    #[error("peer requires an unsupported SCRAM extension in {message}")]
    MandatoryExtension { message: &'static str },
    /// A nonce does not continue the exchange: the server's does not start
    /// with ours, or the client's final nonce is not the combined one.
    /// Whose fault: the peer's (or someone replaying messages).
    #[error("SCRAM nonce mismatch in {message}")]
    NonceMismatch { message: &'static str },
    /// The client's proof is wrong: it does not know the password.
    /// Whose fault: the client's.
    #[error("password authentication failed")]
    InvalidProof,
    /// The server's signature is wrong: it does not hold the keys of this
    /// password, so it is not the server we meant to log into.
    /// Whose fault: the server's (or a man in the middle).
    #[error("the server's SCRAM signature is invalid")]
    InvalidServerSignature,
    /// The server ended the exchange with `e=<reason>` (a printable token
    /// from RFC 5802, such as `invalid-proof`). Whose fault: ours or the
    /// configuration's: the server refused our credential.
    #[error("server refused SCRAM authentication: {0}")]
    ServerRefused(String),
    /// An iteration count is zero or above
    /// [`MAX_SCRAM_ITERATIONS`](super::MAX_SCRAM_ITERATIONS).
    /// Whose fault: whoever supplied it (server or configuration).
    #[error("SCRAM iteration count {iterations} is outside 1..={max}")]
    IterationsOutOfRange { iterations: u64, max: u32 },
    /// A keys-only credential meets a server whose secret was built with
    /// another salt or iteration count, so the keys cannot match.
    /// Whose fault: the configuration's: the stored SCRAM secret is stale
    /// (the role's password changed on the server).
    #[error(
        "the server's SCRAM {what} differs from the configured secret's; \
         the configured secret is stale, copy it again from pg_authid"
    )]
    StaleSecret { what: &'static str },
    /// A state-machine step was called before the step it depends on, or
    /// after the exchange ended or failed. Whose fault: ours (a bug in the
    /// caller).
    #[error("SCRAM step {step} called out of order")]
    OutOfOrder { step: &'static str },
    /// A stored SCRAM secret is not in PostgreSQL's
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` format.
    /// Whose fault: the configuration's.
    #[error("invalid SCRAM secret: {what}")]
    InvalidSecret { what: &'static str },
    /// md5 needs the password or its md5 secret; a SCRAM secret cannot
    /// answer an md5 challenge. Whose fault: the configuration's.
    #[error("an md5 response cannot be computed from a SCRAM secret")]
    Md5FromScramSecret,
    /// The operating system's random number generator failed.
    /// Whose fault: the host's.
    #[error("the system random number generator failed")]
    Random,
}
