//! PostgreSQL's md5 password authentication (AuthenticationMD5Password).
//!
//! The stored secret is `"md5" + hex(md5(password || user))`; the response to
//! a 4-byte salt is `"md5" + hex(md5(hex(md5(password || user)) || salt))`.
//! Knowing the md5 secret is enough to log in, so it is as sensitive as the
//! password; md5 is kept only for servers and clients that still use it.

use ::md5::{Digest, Md5};

use super::crypto::ct_eq_bytes;
use super::{AuthError, Secret};

/// The length of `"md5"` and 32 hex digits.
const MD5_SECRET_LEN: usize = 35;

/// `"md5" + hex(md5(password || user))`, what PostgreSQL stores for a role
/// whose password was set with `password_encryption = md5`.
pub fn md5_secret(user: &str, password: &str) -> String {
    md5_hex(&[password.as_bytes(), user.as_bytes()])
}

/// The PasswordMessage answering an md5 challenge with `salt`, from a plain
/// password or from the md5 secret (which PostgreSQL also accepts). A SCRAM
/// secret cannot answer: [`AuthError::Md5FromScramSecret`].
pub fn md5_response(user: &str, secret: &Secret, salt: [u8; 4]) -> Result<String, AuthError> {
    let stored = match secret {
        Secret::Plain(password) => md5_secret(user, password),
        Secret::Md5(stored) => stored.clone(),
        Secret::Scram(_) => return Err(AuthError::Md5FromScramSecret),
    };
    Ok(salted_response(&stored, salt))
}

/// Whether `response` (the PasswordMessage's string, without its NUL)
/// answers the md5 challenge `salt` for `user`. Compared in constant time.
/// False for a SCRAM secret, which cannot verify md5.
pub fn md5_verify(secret: &Secret, user: &str, salt: [u8; 4], response: &[u8]) -> bool {
    match md5_response(user, secret, salt) {
        Ok(expected) => ct_eq_bytes(expected.as_bytes(), response),
        Err(_) => false,
    }
}

/// The md5 secret of a password given as bytes (a cleartext PasswordMessage
/// need not be UTF-8).
pub(crate) fn md5_secret_bytes(user: &str, password: &[u8]) -> String {
    md5_hex(&[password, user.as_bytes()])
}

/// `"md5" + hex(md5(stored[3..] || salt))`.
fn salted_response(stored: &str, salt: [u8; 4]) -> String {
    let hex = stored.get(3..MD5_SECRET_LEN).unwrap_or_default();
    md5_hex(&[hex.as_bytes(), &salt])
}

/// `"md5"` followed by the lowercase hex md5 of the concatenated parts.
fn md5_hex(parts: &[&[u8]]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    let mut out = String::with_capacity(MD5_SECRET_LEN);
    out.push_str("md5");
    for byte in hasher.finalize() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ScramSecret;

    /// From PostgreSQL's contrib/passwordcheck tests: password "secret" for
    /// user "regress_user1" (the hex of md5("secretregress_user1")).
    const KNOWN: &str = "md51a44d829a20a23eac686d9f0d258af13";

    #[test]
    fn secret_matches_postgres() {
        assert_eq!(md5_secret("regress_user1", "secret"), KNOWN);
        assert!(matches!(Secret::parse(KNOWN), Secret::Md5(_)));
    }

    #[test]
    fn response_from_password_equals_response_from_secret() {
        let salt = [0x01, 0x02, 0x03, 0xff];
        let plain = Secret::Plain("secret".into());
        let stored = Secret::parse(KNOWN);
        let a = md5_response("regress_user1", &plain, salt).unwrap();
        let b = md5_response("regress_user1", &stored, salt).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), MD5_SECRET_LEN);
        // md5("1a44...af13" || 01 02 03 ff), computed with Python's hashlib.
        assert_eq!(a, "md59eeb77f3d04b502216d9018bdce356d0");
    }

    #[test]
    fn verifies_responses() {
        let salt = *b"salt";
        let stored = Secret::parse(KNOWN);
        let good = md5_response("regress_user1", &stored, salt).unwrap();
        assert!(md5_verify(&stored, "regress_user1", salt, good.as_bytes()));
        assert!(md5_verify(&Secret::Plain("secret".into()), "regress_user1", salt, good.as_bytes()));
        assert!(!md5_verify(&stored, "regress_user1", *b"SALT", good.as_bytes()));
        // An md5 secret embeds its user; a plain password is salted with it.
        let plain = Secret::Plain("secret".into());
        assert!(!md5_verify(&plain, "other", salt, good.as_bytes()));
        assert!(!md5_verify(&stored, "regress_user1", salt, &good.as_bytes()[..34]));
        assert!(!md5_verify(&stored, "regress_user1", salt, b""));
    }

    #[test]
    fn scram_secret_cannot_do_md5() {
        let scram = Secret::Scram(ScramSecret::from_password("secret", b"salt", 1).unwrap());
        assert_eq!(md5_response("u", &scram, [0; 4]), Err(AuthError::Md5FromScramSecret));
        assert!(!md5_verify(&scram, "u", [0; 4], b"md5"));
    }
}
