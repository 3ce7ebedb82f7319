//! A client's life: startup packet, authentication, the welcome (parameter
//! status, cancel key), then the relay loop until the client leaves.
//!
//! - [`flow`], [`prepared`], [`params`], [`cancel`]: pure bookkeeping.
//! - [`server`]: server connections (login, the proxy's own queries).
//! - [`ctx`]: per-shard and shared state.
//! - [`login`]: client startup and authentication.
//! - [`relay`]: the full-duplex relay loop.

pub mod cancel;
pub mod ctx;
pub mod flow;
pub mod jwt;
pub mod login;
pub mod params;
pub mod prepared;
pub mod relay;
pub mod server;

use thiserror::Error;

use crate::protocol::ProtocolError;

/// Why a session ended or a request failed. Each variant says whose fault
/// it is and maps to the SQLSTATE the client receives.
#[derive(Debug, Error)]
pub enum SessionError {
    /// The client broke the protocol (its fault).
    #[error("protocol violation: {0}")]
    ClientProtocol(#[from] ProtocolError),
    /// The client went away (nobody's fault).
    #[error("client disconnected")]
    ClientGone,
    /// Authentication failed (the client's credentials).
    #[error("{0}")]
    AuthFailed(String),
    /// The client asked for something the proxy does not allow or know.
    #[error("{message}")]
    Refused { sqlstate: &'static str, message: String },
    /// No server connection within checkout_timeout_ms (load or config).
    #[error("pool for user \"{user}\" database \"{database}\" is exhausted: no server connection became free within {waited_ms} ms (pool_size {pool_size}); raise pool_size or checkout_timeout_ms, or shorten transactions")]
    PoolExhausted { user: String, database: String, waited_ms: u64, pool_size: u32 },
    /// Postgres could not be reached (the server or network).
    #[error("{0}")]
    ServerUnavailable(String),
    /// Postgres refused the proxy's login or query.
    #[error("server refused: {0}")]
    ServerRefused(server::PgError),
    /// The proxy could not log in to Postgres with the configured credentials.
    #[error("cannot log in to the server: {0}")]
    ServerAuth(String),
    /// Postgres broke the protocol.
    #[error("server protocol violation: {0}")]
    ServerProtocol(String),
    /// The server connection died.
    #[error("server connection lost: {0}")]
    ServerLost(String),
    /// pgwarden is shutting down.
    #[error("pgwarden is shutting down")]
    Shutdown,
}

impl SessionError {
    pub fn server_protocol(e: ProtocolError) -> SessionError {
        SessionError::ServerProtocol(e.to_string())
    }

    /// The SQLSTATE sent to the client.
    pub fn sqlstate(&self) -> &str {
        match self {
            SessionError::ClientProtocol(_) => "08P01",
            SessionError::ClientGone => "08006",
            SessionError::AuthFailed(_) => "28P01",
            SessionError::Refused { sqlstate, .. } => sqlstate,
            SessionError::PoolExhausted { .. } => "53300",
            SessionError::ServerUnavailable(_) => "08006",
            SessionError::ServerRefused(e) => &e.code,
            SessionError::ServerAuth(_) => "08006",
            SessionError::ServerProtocol(_) => "08P01",
            SessionError::ServerLost(_) => "08006",
            SessionError::Shutdown => "57P01",
        }
    }

    /// The message sent to the client: a server's own error text is passed
    /// through as Postgres worded it.
    pub fn client_message(&self) -> String {
        match self {
            SessionError::ServerRefused(e) => e.message.clone(),
            other => other.to_string(),
        }
    }
}
