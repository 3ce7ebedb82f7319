//! The cryptographic building blocks of SCRAM-SHA-256 (RFC 5802, RFC 7677)
//! over `ring`, plus constant-time comparison and base64.
//!
//! Kept apart so the state machines read as the RFC does
//! (`ClientKey := HMAC(SaltedPassword, "Client Key")`, ...) and so every
//! comparison of secret material goes through [`ct_eq`].

use std::hint::black_box;
use std::num::NonZeroU32;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};

use super::AuthError;

/// Length of a SHA-256 output, and so of every SCRAM-SHA-256 key.
pub(crate) const KEY_LEN: usize = 32;

/// A SCRAM-SHA-256 key, signature or proof.
pub(crate) type Key = [u8; KEY_LEN];

/// `H(data)`: SHA-256.
pub(crate) fn sha256(data: &[u8]) -> Key {
    to_key(digest::digest(&digest::SHA256, data).as_ref())
}

/// `HMAC(key, parts[0] || parts[1] || ...)` with SHA-256. Taking parts lets
/// the AuthMessage be signed without first being concatenated.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Key {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    for part in parts {
        ctx.update(part);
    }
    to_key(ctx.sign().as_ref())
}

/// `Hi(password, salt, i)`: PBKDF2 with HMAC-SHA-256 and a 32-byte output,
/// which is what RFC 5802's `Hi` is. `password` must already be SASLprepped.
pub(crate) fn salted_password(password: &[u8], salt: &[u8], iterations: NonZeroU32) -> Key {
    let mut out = [0u8; KEY_LEN];
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, salt, password, &mut out);
    out
}

/// `ClientKey := HMAC(SaltedPassword, "Client Key")`.
pub(crate) fn client_key(salted_password: &Key) -> Key {
    hmac_sha256(salted_password, &[b"Client Key"])
}

/// `ServerKey := HMAC(SaltedPassword, "Server Key")`.
pub(crate) fn server_key(salted_password: &Key) -> Key {
    hmac_sha256(salted_password, &[b"Server Key"])
}

/// Bytewise XOR of two keys (ClientProof and ClientKey recovery).
pub(crate) fn xor(a: &Key, b: &Key) -> Key {
    let mut out = [0u8; KEY_LEN];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x ^ y;
    }
    out
}

/// Compares two keys in time independent of where they differ.
pub(crate) fn ct_eq(a: &Key, b: &Key) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= black_box(x ^ y);
    }
    black_box(diff) == 0
}

/// Compares byte strings of any length in time independent of their
/// contents and lengths: both are hashed first, so the comparison runs over
/// two fixed-size digests. For passwords and md5 responses.
pub(crate) fn ct_eq_bytes(a: &[u8], b: &[u8]) -> bool {
    ct_eq(&sha256(a), &sha256(b))
}

/// `N` bytes from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut out = [0u8; N];
    SystemRandom::new().fill(&mut out).map_err(|_| AuthError::Random)?;
    Ok(out)
}

/// Standard base64 with padding, as SCRAM and PostgreSQL's secrets use.
pub(crate) fn b64_encode(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// Decodes standard padded base64; `None` if it is not.
pub(crate) fn b64_decode(data: &[u8]) -> Option<Vec<u8>> {
    STANDARD.decode(data).ok()
}

/// Decodes base64 that must hold exactly one key.
pub(crate) fn b64_decode_key(data: &[u8]) -> Option<Key> {
    let bytes = b64_decode(data)?;
    bytes.try_into().ok()
}

fn to_key(bytes: &[u8]) -> Key {
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_tells_equal_from_different() {
        let a = [7u8; KEY_LEN];
        let mut b = a;
        assert!(ct_eq(&a, &b));
        b[KEY_LEN - 1] ^= 1;
        assert!(!ct_eq(&a, &b));
        assert!(ct_eq_bytes(b"abc", b"abc"));
        assert!(!ct_eq_bytes(b"abc", b"abcd"));
        assert!(!ct_eq_bytes(b"", b"a"));
    }

    #[test]
    fn b64_key_needs_exactly_32_bytes() {
        let key = [1u8; KEY_LEN];
        assert_eq!(b64_decode_key(b64_encode(&key).as_bytes()), Some(key));
        assert_eq!(b64_decode_key(b64_encode(&[1u8; 31]).as_bytes()), None);
        assert_eq!(b64_decode_key(b"not base64!"), None);
    }

    #[test]
    fn random_bytes_differ() {
        let a: [u8; 18] = random_bytes().unwrap();
        let b: [u8; 18] = random_bytes().unwrap();
        assert_ne!(a, b);
    }
}
