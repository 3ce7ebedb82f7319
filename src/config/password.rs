//! What a configured password is: plaintext, an md5 hash, or a SCRAM-SHA-256
//! secret, recognised as Postgres recognises them in `pg_authid`. Which
//! `auth` methods each can verify is decided here too.

use super::model::AuthMethod;

/// The form a configured password is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordKind {
    Plaintext,
    /// `md5` + 32 lowercase hex digits: md5(password || user name).
    Md5Hash,
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    ScramSecret,
}

/// The prefix Postgres gives SCRAM-SHA-256 secrets.
pub const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

/// Bytes in a SHA-256 digest (StoredKey and ServerKey).
const SHA256_LEN: usize = 32;

impl PasswordKind {
    /// Classifies `password`. `None`: it starts like a SCRAM secret but is
    /// not a well-formed one (the config rejects that rather than take it as
    /// a plaintext password, as Postgres would).
    pub fn of(password: &str) -> Option<Self> {
        if let Some(rest) = password.strip_prefix(SCRAM_PREFIX) {
            return is_scram_body(rest).then_some(Self::ScramSecret);
        }
        let md5 = password.strip_prefix("md5").is_some_and(|hex| {
            hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
        Some(if md5 { Self::Md5Hash } else { Self::Plaintext })
    }

    /// Whether a password in this form lets the pooler verify a client that
    /// logs in with `auth`. SCRAM needs the plaintext or the SCRAM secret; md5
    /// needs the plaintext or the md5 hash; a cleartext password can be
    /// checked against any form.
    pub fn can_verify(self, auth: AuthMethod) -> bool {
        !matches!(
            (auth, self),
            (AuthMethod::ScramSha256, Self::Md5Hash) | (AuthMethod::Md5, Self::ScramSecret)
        )
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Plaintext => "a plaintext password",
            Self::Md5Hash => "an md5 hash",
            Self::ScramSecret => "a SCRAM-SHA-256 secret",
        }
    }
}

/// `<iterations>:<salt>$<StoredKey>:<ServerKey>`, salt and keys in base64.
fn is_scram_body(body: &str) -> bool {
    let Some((params, keys)) = body.split_once('$') else {
        return false;
    };
    let (Some((iterations, salt)), Some((stored, server))) = (params.split_once(':'), keys.split_once(':'))
    else {
        return false;
    };
    let iterations_ok = iterations.parse::<u32>().is_ok_and(|n| n > 0);
    iterations_ok
        && base64_len(salt).is_some_and(|n| n > 0)
        && base64_len(stored) == Some(SHA256_LEN)
        && base64_len(server) == Some(SHA256_LEN)
}

/// The decoded length of padded standard base64, or `None` if `s` is not.
fn base64_len(s: &str) -> Option<usize> {
    if s.len() % 4 != 0 {
        return None;
    }
    let body = s.trim_end_matches('=');
    let padding = s.len() - body.len();
    let alphabet = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
    (padding <= 2 && body.bytes().all(alphabet)).then(|| s.len() / 4 * 3 - padding)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A well-formed SCRAM-SHA-256 secret (its keys are made up).
    pub(in super::super) const SCRAM: &str = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$\
        RMBmbcGx7MNU6vvJWLPhYxoZw4LwgCl4T3KOjUcyIbQ=:\
        1Aq/Ei9u3ZKHSZyT4Y5EZ2vWkMkHRp/3z4GnBvxUjh8=";

    #[test]
    fn classifies_like_postgres() {
        assert_eq!(PasswordKind::of("app-secret"), Some(PasswordKind::Plaintext));
        assert_eq!(PasswordKind::of("md5a3556571e93b0d20722ba62be61e8c2d"), Some(PasswordKind::Md5Hash));
        // Upper-case hex or a wrong length is a plaintext password to Postgres.
        assert_eq!(PasswordKind::of("md5A3556571E93B0D20722BA62BE61E8C2D"), Some(PasswordKind::Plaintext));
        assert_eq!(PasswordKind::of("md5abc"), Some(PasswordKind::Plaintext));
        assert_eq!(PasswordKind::of(SCRAM), Some(PasswordKind::ScramSecret));
    }

    #[test]
    fn malformed_scram_secrets() {
        for bad in [
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$4096:c2FsdA==",
            "SCRAM-SHA-256$0:c2FsdA==$RMBmbcGx7MNU6vvJWLPhYxoZw4LwgCl4T3KOjUcyIbQ=:1Aq/Ei9u3ZKHSZyT4Y5EZ2vWkMkHRp/3z4GnBvxUjh8=",
            "SCRAM-SHA-256$4096:$RMBmbcGx7MNU6vvJWLPhYxoZw4LwgCl4T3KOjUcyIbQ=:1Aq/Ei9u3ZKHSZyT4Y5EZ2vWkMkHRp/3z4GnBvxUjh8=",
            "SCRAM-SHA-256$4096:c2FsdA==$short:1Aq/Ei9u3ZKHSZyT4Y5EZ2vWkMkHRp/3z4GnBvxUjh8=",
            "SCRAM-SHA-256$4096:c2F*dA==$RMBmbcGx7MNU6vvJWLPhYxoZw4LwgCl4T3KOjUcyIbQ=:1Aq/Ei9u3ZKHSZyT4Y5EZ2vWkMkHRp/3z4GnBvxUjh8=",
        ] {
            assert_eq!(PasswordKind::of(bad), None, "{bad}");
        }
    }

    #[test]
    fn which_forms_verify_which_methods() {
        use AuthMethod::*;
        use PasswordKind::*;
        assert!(Plaintext.can_verify(ScramSha256) && Plaintext.can_verify(Md5));
        assert!(ScramSecret.can_verify(ScramSha256) && !ScramSecret.can_verify(Md5));
        assert!(Md5Hash.can_verify(Md5) && !Md5Hash.can_verify(ScramSha256));
        assert!(Md5Hash.can_verify(Plain) && ScramSecret.can_verify(Plain));
    }
}
