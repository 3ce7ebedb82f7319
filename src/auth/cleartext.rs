//! Checking a password sent in clear (AuthenticationCleartextPassword, as a
//! JWT-less static user over TLS would) against any kind of stored secret.

use super::crypto::ct_eq_bytes;
use super::md5::md5_secret_bytes;
use super::Secret;

/// Whether `password` (the PasswordMessage's string, without its NUL) is
/// `user`'s password.
///
/// - Plain: compared in constant time (lengths included).
/// - md5: its md5 secret is computed and compared in constant time.
/// - SCRAM: the password is SASLprepped and salted with the secret's salt
///   and iteration count, and StoredKey compared in constant time. This runs
///   PBKDF2: milliseconds of CPU at 4096 iterations.
pub fn verify_cleartext(secret: &Secret, user: &str, password: &[u8]) -> bool {
    match secret {
        Secret::Plain(expected) => ct_eq_bytes(expected.as_bytes(), password),
        Secret::Md5(stored) => ct_eq_bytes(stored.as_bytes(), md5_secret_bytes(user, password).as_bytes()),
        Secret::Scram(scram) => scram.verifies_password(password),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{md5_secret, ScramSecret};

    #[test]
    fn plain() {
        let secret = Secret::Plain("pencil".into());
        assert!(verify_cleartext(&secret, "user", b"pencil"));
        assert!(!verify_cleartext(&secret, "user", b"pencil2"));
        assert!(!verify_cleartext(&secret, "user", b""));
    }

    #[test]
    fn md5() {
        let secret = Secret::parse(&md5_secret("user", "pencil"));
        assert!(verify_cleartext(&secret, "user", b"pencil"));
        assert!(!verify_cleartext(&secret, "other", b"pencil"));
        assert!(!verify_cleartext(&secret, "user", b"Pencil"));
    }

    #[test]
    fn scram_including_saslprep_and_raw_bytes() {
        let secret = Secret::Scram(ScramSecret::from_password("pen\u{00AD}cil", b"salt", 16).unwrap());
        assert!(verify_cleartext(&secret, "user", b"pencil"));
        assert!(verify_cleartext(&secret, "user", "pen\u{00AD}cil".as_bytes()));
        assert!(!verify_cleartext(&secret, "user", b"pencils"));
        assert!(!verify_cleartext(&secret, "user", &[0xff, 0xfe]));
    }

    #[test]
    fn scram_with_unusable_iteration_count_fails_closed() {
        let mut scram = ScramSecret::from_password("pencil", b"salt", 16).unwrap();
        scram.iterations = 0;
        assert!(!verify_cleartext(&Secret::Scram(scram), "user", b"pencil"));
    }
}
