//! The client side of SCRAM-SHA-256: the proxy logging into PostgreSQL,
//! with the password or with keys recovered from a client's own exchange.

use std::fmt;
use std::num::NonZeroU32;

use super::parse::{self, Attributes};
use super::{new_nonce, AuthError, SERVER_FINAL, SERVER_FIRST};
use crate::auth::crypto::{self, Key};
use crate::auth::saslprep::prepare_password;
use crate::auth::secret::{checked_iterations, parse_decimal, ScramSecret};

/// The GS2 header we send: no channel binding, no authorization identity.
const GS2_HEADER: &str = "n,,";
/// `c=` of client-final-message: the GS2 header in base64.
const CHANNEL_BINDING: &str = "biws";
/// The longest `e=` reason from a server we put into an error.
const MAX_SERVER_ERROR_CHARS: usize = 64;

/// What the proxy logs into PostgreSQL with.
#[derive(Clone)]
pub enum ScramCredential {
    /// The user's password (SASLprepped as PostgreSQL does).
    Password(String),
    /// Keys recovered from the client's own SCRAM exchange with the proxy,
    /// for users configured with only a SCRAM secret. They work only if the
    /// server stores the same secret: its salt and iteration count are
    /// checked and a mismatch is [`AuthError::StaleSecret`].
    Keys { client_key: [u8; 32], server_key: [u8; 32], salt: Vec<u8>, iterations: u32 },
}

impl ScramCredential {
    /// The passthrough credential: `client_key` from a successful
    /// [`ScramServer`](super::ScramServer) exchange against `secret`.
    pub fn from_client_key(secret: &ScramSecret, client_key: [u8; 32]) -> ScramCredential {
        ScramCredential::Keys {
            client_key,
            server_key: secret.server_key,
            salt: secret.salt.clone(),
            iterations: secret.iterations,
        }
    }
}

impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScramCredential::Password(_) => f.write_str("ScramCredential::Password(<redacted>)"),
            ScramCredential::Keys { iterations, .. } => f
                .debug_struct("ScramCredential::Keys")
                .field("iterations", iterations)
                .finish_non_exhaustive(),
        }
    }
}

/// Logs into PostgreSQL with SCRAM-SHA-256.
///
/// Call order, one exchange per value:
///
/// 1. [`ScramClient::new`]; on AuthenticationSASL listing
///    [`SCRAM_SHA_256`](super::SCRAM_SHA_256), send SASLInitialResponse
///    naming that mechanism with [`client_first`](Self::client_first) as its
///    data.
/// 2. On AuthenticationSASLContinue, [`server_first`](Self::server_first)
///    with its data; send the result in SASLResponse.
/// 3. On AuthenticationSASLFinal, [`server_final`](Self::server_final) with
///    its data; only if it succeeds is the server the one that holds this
///    user's secret, and AuthenticationOk may be trusted.
///
/// `client_first` only renders its message and may be called again; any
/// other call out of order fails with [`AuthError::OutOfOrder`], and any
/// error ends the exchange.
pub struct ScramClient {
    credential: ScramCredential,
    client_nonce: String,
    /// client-first-message-bare: `n=<user>,r=<nonce>`.
    client_first_bare: String,
    state: State,
}

enum State {
    Initial,
    AwaitServerFirst,
    AwaitServerFinal { server_signature: Key },
    Done,
}

/// The fields of server-first-message.
struct ServerFirst<'a> {
    nonce: &'a str,
    salt: Vec<u8>,
    iterations: NonZeroU32,
}

impl ScramClient {
    /// Starts an exchange with a fresh random nonce. Fails only if the
    /// system's random number generator does.
    pub fn new(credential: ScramCredential) -> Result<ScramClient, AuthError> {
        Ok(ScramClient::with_parts(credential, "", new_nonce()?))
    }

    /// A client with a fixed user name and nonce, to replay recorded
    /// exchanges. `user` is sent as is (no SCRAM escaping).
    #[cfg(test)]
    pub(crate) fn with_nonce(credential: ScramCredential, user: &str, nonce: &str) -> ScramClient {
        ScramClient::with_parts(credential, user, nonce.to_owned())
    }

    fn with_parts(credential: ScramCredential, user: &str, client_nonce: String) -> ScramClient {
        ScramClient {
            client_first_bare: format!("n={user},r={client_nonce}"),
            credential,
            client_nonce,
            state: State::Initial,
        }
    }

    /// client-first-message: `n,,n=,r=<nonce>`. The user name is empty as
    /// libpq sends it: PostgreSQL takes the user from the startup packet.
    pub fn client_first(&mut self) -> Vec<u8> {
        if let State::Initial = self.state {
            self.state = State::AwaitServerFirst;
        }
        format!("{GS2_HEADER}{}", self.client_first_bare).into_bytes()
    }

    /// Reads server-first-message; returns client-final-message with our
    /// proof. With a password this runs PBKDF2 (milliseconds of CPU per
    /// 4096 iterations); with keys it does not.
    pub fn server_first(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        let State::AwaitServerFirst = self.take_state() else {
            return Err(AuthError::OutOfOrder { step: "server_first" });
        };
        parse::check_len(data, SERVER_FIRST)?;
        let first = read_server_first(data, &self.client_nonce)?;
        let (client_key, server_key) = self.keys_for(&first)?;
        let without_proof = format!("c={CHANNEL_BINDING},r={}", first.nonce);
        let auth_message: [&[u8]; 5] =
            [self.client_first_bare.as_bytes(), b",", data, b",", without_proof.as_bytes()];
        let stored_key = crypto::sha256(&client_key);
        let proof = crypto::xor(&client_key, &crypto::hmac_sha256(&stored_key, &auth_message));
        let server_signature = crypto::hmac_sha256(&server_key, &auth_message);
        self.state = State::AwaitServerFinal { server_signature };
        Ok(format!("{without_proof},p={}", crypto::b64_encode(&proof)).into_bytes())
    }

    /// Reads server-final-message and checks the server's signature in
    /// constant time. An `e=` error from the server is
    /// [`AuthError::ServerRefused`] naming it.
    pub fn server_final(&mut self, data: &[u8]) -> Result<(), AuthError> {
        let State::AwaitServerFinal { server_signature } = self.take_state() else {
            return Err(AuthError::OutOfOrder { step: "server_final" });
        };
        parse::check_len(data, SERVER_FINAL)?;
        let mut attrs = Attributes::new(data, SERVER_FINAL);
        if attrs.peek() == Some(b'e') {
            let reason = attrs.expect(b'e', "bad error")?;
            return Err(AuthError::ServerRefused(printable_reason(reason)));
        }
        let signature = attrs.expect(b'v', "missing verifier")?;
        let signature = crypto::b64_decode_key(signature).ok_or(attrs.malformed("bad verifier"))?;
        attrs.finish()?;
        if !crypto::ct_eq(&signature, &server_signature) {
            return Err(AuthError::InvalidServerSignature);
        }
        Ok(())
    }

    /// ClientKey and ServerKey for this server's salt and iteration count.
    fn keys_for(&self, first: &ServerFirst<'_>) -> Result<(Key, Key), AuthError> {
        match &self.credential {
            ScramCredential::Password(password) => {
                let prepared = prepare_password(password.as_bytes());
                let salted = crypto::salted_password(&prepared, &first.salt, first.iterations);
                Ok((crypto::client_key(&salted), crypto::server_key(&salted)))
            }
            ScramCredential::Keys { client_key, server_key, salt, iterations } => {
                if *salt != first.salt {
                    return Err(AuthError::StaleSecret { what: "salt" });
                }
                if *iterations != first.iterations.get() {
                    return Err(AuthError::StaleSecret { what: "iteration count" });
                }
                Ok((*client_key, *server_key))
            }
        }
    }

    /// Moves the state out, leaving `Done`: an error return ends the exchange.
    fn take_state(&mut self) -> State {
        std::mem::replace(&mut self.state, State::Done)
    }
}

/// server-first-message: `r=<nonce>,s=<salt>,i=<iterations>`. Like libpq we
/// accept no extension and nothing after the iteration count.
fn read_server_first<'a>(data: &'a [u8], client_nonce: &str) -> Result<ServerFirst<'a>, AuthError> {
    let mut attrs = Attributes::new(data, SERVER_FIRST);
    if attrs.peek() == Some(b'm') {
        return Err(AuthError::MandatoryExtension { message: SERVER_FIRST });
    }
    let nonce = attrs.expect(b'r', "missing nonce")?;
    let nonce = parse::printable_nonce(nonce).ok_or(attrs.malformed("bad nonce"))?;
    // The server must extend our nonce, not merely repeat it.
    if nonce.len() <= client_nonce.len() || !nonce.starts_with(client_nonce) {
        return Err(AuthError::NonceMismatch { message: SERVER_FIRST });
    }
    let salt = attrs.expect(b's', "missing salt")?;
    let salt = crypto::b64_decode(salt).filter(|salt| !salt.is_empty()).ok_or(attrs.malformed("bad salt"))?;
    let iterations = attrs.expect(b'i', "missing iteration count")?;
    let iterations = parse_decimal(iterations).ok_or(attrs.malformed("bad iteration count"))?;
    let iterations = checked_iterations(iterations)?;
    attrs.finish()?;
    Ok(ServerFirst { nonce, salt, iterations })
}

/// The server's `e=` reason, kept to printable ASCII and a bounded length so
/// that an error message cannot carry control characters into a log.
fn printable_reason(reason: &[u8]) -> String {
    reason
        .iter()
        .filter(|b| b.is_ascii_graphic())
        .take(MAX_SERVER_ERROR_CHARS)
        .map(|&b| char::from(b))
        .collect()
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Initial => "initial",
            State::AwaitServerFirst => "await server-first",
            State::AwaitServerFinal { .. } => "await server-final",
            State::Done => "done",
        };
        f.debug_struct("ScramClient").field("state", &state).finish_non_exhaustive()
    }
}
