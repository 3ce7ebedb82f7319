//! The server side of SCRAM-SHA-256: the proxy verifying a client against a
//! stored [`ScramSecret`], without ever learning the password.

use std::fmt;

use super::parse::{self, Attributes, ChannelBinding};
use super::{new_nonce, AuthError, CLIENT_FINAL, CLIENT_FIRST};
use crate::auth::crypto::{self, Key};
use crate::auth::secret::{ScramSecret, SCRAM_DEFAULT_ITERATIONS, SCRAM_DEFAULT_SALT_LEN_BYTES};

/// Verifies one client's SCRAM-SHA-256 login.
///
/// Call order, one exchange per value:
///
/// 1. [`ScramServer::new`] with the user's secret; send AuthenticationSASL
///    listing [`SCRAM_SHA_256`](super::SCRAM_SHA_256).
/// 2. [`client_first`](Self::client_first) with the data of the client's
///    SASLInitialResponse (after checking it names SCRAM-SHA-256); send the
///    result in AuthenticationSASLContinue.
/// 3. [`client_final`](Self::client_final) with the data of its SASLResponse;
///    on success send [`ScramOutcome::server_final`] in
///    AuthenticationSASLFinal, then AuthenticationOk.
///
/// Any error ends the exchange: later calls fail with
/// [`AuthError::OutOfOrder`], as does a call made out of this order.
/// [`AuthError::InvalidProof`] means a wrong password; other errors mean a
/// broken or hostile client.
pub struct ScramServer {
    secret: ScramSecret,
    /// Set by tests to replay a recorded exchange; drawn at random otherwise.
    server_nonce: Option<String>,
    /// A mock exchange for an unknown user: runs to the end, then fails.
    mock: bool,
    state: State,
}

enum State {
    AwaitClientFirst,
    AwaitClientFinal(Pending),
    Done,
}

/// What client-final-message is checked against.
struct Pending {
    channel_binding: ChannelBinding,
    nonce: String,
    client_first_bare: Vec<u8>,
    server_first: Vec<u8>,
}

/// The result of a successful exchange.
pub struct ScramOutcome {
    /// server-final-message (`v=<ServerSignature>`), for
    /// AuthenticationSASLFinal.
    pub server_final: Vec<u8>,
    /// The client's ClientKey, recovered from its proof: with the secret it
    /// logs into PostgreSQL as the same user
    /// ([`ScramCredential::from_client_key`](super::ScramCredential::from_client_key)).
    /// As good as the password for this server: never log it.
    pub client_key: [u8; 32],
}

impl ScramServer {
    /// Starts an exchange against `secret`.
    pub fn new(secret: &ScramSecret) -> ScramServer {
        ScramServer {
            secret: secret.clone(),
            server_nonce: None,
            mock: false,
            state: State::AwaitClientFirst,
        }
    }

    /// Starts an exchange for a user who does not exist, or has no SCRAM
    /// secret, that looks like a real one until it fails with
    /// [`AuthError::InvalidProof`], so a client cannot probe which users
    /// exist (PostgreSQL's mock authentication). The salt is derived from
    /// `mock_key`, a random key drawn once per process, and the user name, so
    /// repeated attempts see the same salt.
    pub fn mock(user: &str, mock_key: &[u8]) -> ScramServer {
        let digest = crypto::hmac_sha256(mock_key, &[user.as_bytes()]);
        let secret = ScramSecret {
            iterations: SCRAM_DEFAULT_ITERATIONS,
            salt: digest[..SCRAM_DEFAULT_SALT_LEN_BYTES].to_vec(),
            stored_key: [0; 32],
            server_key: [0; 32],
        };
        ScramServer { mock: true, ..ScramServer::new(&secret) }
    }

    /// A server whose nonce is fixed, to replay recorded exchanges.
    #[cfg(test)]
    pub(crate) fn with_nonce(secret: &ScramSecret, server_nonce: &str) -> ScramServer {
        ScramServer { server_nonce: Some(server_nonce.to_owned()), ..ScramServer::new(secret) }
    }

    /// Reads client-first-message; returns server-first-message.
    pub fn client_first(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        let State::AwaitClientFirst = self.take_state() else {
            return Err(AuthError::OutOfOrder { step: "client_first" });
        };
        parse::check_len(data, CLIENT_FIRST)?;
        let (channel_binding, client_first_bare) = parse::split_gs2_header(data)?;
        let client_nonce = read_client_first_bare(client_first_bare)?;
        let server_nonce = match self.server_nonce.take() {
            Some(nonce) => nonce,
            None => new_nonce()?,
        };
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first =
            format!("r={nonce},s={},i={}", crypto::b64_encode(&self.secret.salt), self.secret.iterations)
                .into_bytes();
        self.state = State::AwaitClientFinal(Pending {
            channel_binding,
            nonce,
            client_first_bare: client_first_bare.to_vec(),
            server_first: server_first.clone(),
        });
        Ok(server_first)
    }

    /// Reads client-final-message and checks the client's proof.
    pub fn client_final(&mut self, data: &[u8]) -> Result<ScramOutcome, AuthError> {
        let State::AwaitClientFinal(pending) = self.take_state() else {
            return Err(AuthError::OutOfOrder { step: "client_final" });
        };
        parse::check_len(data, CLIENT_FINAL)?;
        let (without_proof, proof) = read_client_final(data, &pending)?;
        let auth_message: [&[u8]; 5] =
            [&pending.client_first_bare, b",", &pending.server_first, b",", without_proof];
        let client_key = self.recover_client_key(&proof, &auth_message)?;
        let signature = crypto::hmac_sha256(&self.secret.server_key, &auth_message);
        Ok(ScramOutcome {
            server_final: format!("v={}", crypto::b64_encode(&signature)).into_bytes(),
            client_key,
        })
    }

    /// `ClientKey := ClientProof XOR HMAC(StoredKey, AuthMessage)`, accepted
    /// only if `H(ClientKey) == StoredKey` (compared in constant time).
    fn recover_client_key(&self, proof: &Key, auth_message: &[&[u8]]) -> Result<Key, AuthError> {
        let stored_key = &self.secret.stored_key;
        let client_signature = crypto::hmac_sha256(stored_key, auth_message);
        let client_key = crypto::xor(proof, &client_signature);
        let matches = crypto::ct_eq(&crypto::sha256(&client_key), stored_key);
        if !matches || self.mock {
            return Err(AuthError::InvalidProof);
        }
        Ok(client_key)
    }

    /// Moves the state out, leaving `Done`: an error return ends the exchange.
    fn take_state(&mut self) -> State {
        std::mem::replace(&mut self.state, State::Done)
    }
}

/// client-first-message-bare: `[m=...,]n=<user>,r=<nonce>[,extensions]`.
/// Returns the client nonce. The user name is ignored, as PostgreSQL does:
/// the startup packet named the user.
fn read_client_first_bare(bare: &[u8]) -> Result<&str, AuthError> {
    let mut attrs = Attributes::new(bare, CLIENT_FIRST);
    if attrs.peek() == Some(b'm') {
        return Err(AuthError::MandatoryExtension { message: CLIENT_FIRST });
    }
    attrs.expect(b'n', "missing user name")?;
    let nonce = attrs.expect(b'r', "missing nonce")?;
    let nonce = parse::printable_nonce(nonce).ok_or(attrs.malformed("bad nonce"))?;
    while attrs.peek().is_some() {
        attrs.next_any()?;
    }
    attrs.finish()?;
    Ok(nonce)
}

/// client-final-message: `c=<gs2 header>,r=<nonce>[,extensions],p=<proof>`.
/// Returns client-final-message-without-proof and the proof.
fn read_client_final<'a>(data: &'a [u8], pending: &Pending) -> Result<(&'a [u8], Key), AuthError> {
    let mut attrs = Attributes::new(data, CLIENT_FINAL);
    let binding = attrs.expect(b'c', "missing channel binding")?;
    let binding = crypto::b64_decode(binding).ok_or(attrs.malformed("bad channel binding"))?;
    if binding != pending.channel_binding.gs2_header() {
        return Err(AuthError::ChannelBindingMismatch);
    }
    if attrs.expect(b'r', "missing nonce")? != pending.nonce.as_bytes() {
        return Err(AuthError::NonceMismatch { message: CLIENT_FINAL });
    }
    while attrs.peek().is_some_and(|name| name != b'p') {
        attrs.next_any()?;
    }
    // Everything before ",p=" is signed as client-final-message-without-proof.
    let without_proof = &data[..attrs.consumed().saturating_sub(1)];
    let proof = attrs.expect(b'p', "missing proof")?;
    let proof = crypto::b64_decode_key(proof).ok_or(attrs.malformed("bad proof"))?;
    attrs.finish()?;
    Ok((without_proof, proof))
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::AwaitClientFirst => "await client-first",
            State::AwaitClientFinal(_) => "await client-final",
            State::Done => "done",
        };
        f.debug_struct("ScramServer").field("state", &state).field("mock", &self.mock).finish_non_exhaustive()
    }
}

impl fmt::Debug for ScramOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramOutcome")
            .field("server_final", &String::from_utf8_lossy(&self.server_final))
            .field("client_key", &"<redacted>")
            .finish()
    }
}
