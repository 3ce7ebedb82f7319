//! What the configuration holds for a user: a plain password, an md5 secret
//! or a SCRAM-SHA-256 secret, in the formats PostgreSQL stores in
//! `pg_authid.rolpassword`, so a secret can be copied from the server as is.
//!
//! `Debug` never prints secret material: a `Secret` travels inside config
//! snapshots that may be logged whole.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use super::crypto::{self, KEY_LEN};
use super::saslprep::prepare_password;
use super::AuthError;

/// Salt length of secrets we derive ourselves, as PostgreSQL's
/// `SCRAM_DEFAULT_SALT_LEN`.
pub const SCRAM_DEFAULT_SALT_LEN_BYTES: usize = 16;
/// Iteration count of secrets we derive ourselves, as PostgreSQL's default
/// `scram_iterations`.
pub const SCRAM_DEFAULT_ITERATIONS: u32 = 4096;
/// The highest iteration count we accept from a server or a secret. PBKDF2
/// runs on the caller's thread (a data shard): at roughly a microsecond per
/// iteration this bounds one derivation to seconds, not hours.
pub const MAX_SCRAM_ITERATIONS: u32 = 10_000_000;

const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";
const MD5_PREFIX: &str = "md5";
const MD5_HEX_LEN: usize = 32;

/// A user's password as the configuration holds it.
#[derive(Clone)]
pub enum Secret {
    /// The password itself.
    Plain(String),
    /// `"md5"` followed by 32 lowercase hex digits of md5(password || user).
    Md5(String),
    /// A SCRAM-SHA-256 secret.
    Scram(ScramSecret),
}

impl Secret {
    /// Classifies a stored password as PostgreSQL's `get_password_type` does:
    /// a valid SCRAM secret is [`Secret::Scram`], `md5` and 32 lowercase hex
    /// digits is [`Secret::Md5`], anything else is a plain password.
    ///
    /// A string that starts with `SCRAM-SHA-256$` but does not parse is taken
    /// as plain, as PostgreSQL does; config validation should call
    /// [`ScramSecret::parse`] on such strings to report the mistake.
    pub fn parse(s: &str) -> Secret {
        if s.starts_with(SCRAM_PREFIX) {
            if let Ok(scram) = ScramSecret::parse(s) {
                return Secret::Scram(scram);
            }
        }
        if is_md5_secret(s) {
            return Secret::Md5(s.to_owned());
        }
        Secret::Plain(s.to_owned())
    }

    /// The kind of secret, for logs: `plain`, `md5` or `SCRAM-SHA-256`.
    pub fn kind(&self) -> &'static str {
        match self {
            Secret::Plain(_) => "plain",
            Secret::Md5(_) => "md5",
            Secret::Scram(_) => "SCRAM-SHA-256",
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain(_) => f.write_str("Secret::Plain(<redacted>)"),
            Secret::Md5(_) => f.write_str("Secret::Md5(<redacted>)"),
            Secret::Scram(scram) => f.debug_tuple("Secret::Scram").field(scram).finish(),
        }
    }
}

fn is_md5_secret(s: &str) -> bool {
    s.strip_prefix(MD5_PREFIX).is_some_and(|hex| {
        hex.len() == MD5_HEX_LEN && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// A SCRAM-SHA-256 secret: what a server needs to verify a client without
/// knowing the password (RFC 5802 section 3).
#[derive(Clone)]
pub struct ScramSecret {
    /// PBKDF2 iteration count; 0 or above [`MAX_SCRAM_ITERATIONS`] makes the
    /// secret unusable (verification fails closed).
    pub iterations: u32,
    /// The salt, raw (base64 only in the text form).
    pub salt: Vec<u8>,
    /// `H(ClientKey)`: verifies a client's proof.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`: signs for the server. With a
    /// client's ClientKey it also logs into PostgreSQL (passthrough).
    pub server_key: [u8; 32],
}

impl ScramSecret {
    /// Parses PostgreSQL's format
    /// `SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>`.
    pub fn parse(s: &str) -> Result<ScramSecret, AuthError> {
        let invalid = |what| AuthError::InvalidSecret { what };
        let rest = s.strip_prefix(SCRAM_PREFIX).ok_or(invalid("missing SCRAM-SHA-256$ prefix"))?;
        let (iter_salt, keys) = rest.split_once('$').ok_or(invalid("missing '$'"))?;
        let (iterations, salt) =
            iter_salt.split_once(':').ok_or(invalid("missing ':' after the iteration count"))?;
        let (stored_key, server_key) = keys.split_once(':').ok_or(invalid("missing ':' between the keys"))?;
        Ok(ScramSecret {
            iterations: parse_iterations(iterations)?,
            salt: crypto::b64_decode(salt.as_bytes())
                .filter(|salt| !salt.is_empty())
                .ok_or(invalid("salt is not base64"))?,
            stored_key: crypto::b64_decode_key(stored_key.as_bytes())
                .ok_or(invalid("StoredKey is not 32 bytes of base64"))?,
            server_key: crypto::b64_decode_key(server_key.as_bytes())
                .ok_or(invalid("ServerKey is not 32 bytes of base64"))?,
        })
    }

    /// Derives the secret of `password` (SASLprepped as PostgreSQL does),
    /// exactly as `CREATE ROLE ... PASSWORD` with the same salt and
    /// iteration count would.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Result<ScramSecret, AuthError> {
        let count = checked_iterations(u64::from(iterations))?;
        let salted = crypto::salted_password(&prepare_password(password.as_bytes()), salt, count);
        Ok(ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: crypto::sha256(&crypto::client_key(&salted)),
            server_key: crypto::server_key(&salted),
        })
    }

    /// A secret for a user configured with a plain password, so the SCRAM
    /// server can verify it: a fresh random 16-byte salt and 4096 iterations,
    /// PostgreSQL's defaults. This runs PBKDF2 (milliseconds of CPU): callers
    /// should derive it once per password, not once per login.
    pub fn for_plain(password: &str) -> Result<ScramSecret, AuthError> {
        let salt: [u8; SCRAM_DEFAULT_SALT_LEN_BYTES] = crypto::random_bytes()?;
        ScramSecret::from_password(password, &salt, SCRAM_DEFAULT_ITERATIONS)
    }

    /// Whether `password` is the one this secret was made from: recomputes
    /// StoredKey with the secret's salt and iteration count and compares in
    /// constant time. False for an iteration count we refuse to run.
    pub(crate) fn verifies_password(&self, password: &[u8]) -> bool {
        let Ok(count) = checked_iterations(u64::from(self.iterations)) else {
            return false;
        };
        let salted = crypto::salted_password(&prepare_password(password), &self.salt, count);
        crypto::ct_eq(&crypto::sha256(&crypto::client_key(&salted)), &self.stored_key)
    }
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, the format
/// PostgreSQL stores and [`ScramSecret::parse`] reads. This is the secret
/// itself: write it to config files, never to logs.
impl fmt::Display for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCRAM_PREFIX}{}:{}${}:{}",
            self.iterations,
            crypto::b64_encode(&self.salt),
            crypto::b64_encode(&self.stored_key),
            crypto::b64_encode(&self.server_key),
        )
    }
}

impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .finish_non_exhaustive()
    }
}

impl FromStr for ScramSecret {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ScramSecret::parse(s)
    }
}

/// An iteration count written in decimal digits, in range.
fn parse_iterations(digits: &str) -> Result<u32, AuthError> {
    let value = parse_decimal(digits.as_bytes())
        .ok_or(AuthError::InvalidSecret { what: "iteration count is not a decimal number" })?;
    Ok(checked_iterations(value)?.get())
}

/// Plain decimal digits (no sign, no spaces) that fit a `u64`.
pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Accepts 1..=[`MAX_SCRAM_ITERATIONS`].
pub(crate) fn checked_iterations(value: u64) -> Result<NonZeroU32, AuthError> {
    u32::try_from(value)
        .ok()
        .filter(|&v| v <= MAX_SCRAM_ITERATIONS)
        .and_then(NonZeroU32::new)
        .ok_or(AuthError::IterationsOutOfRange { iterations: value, max: MAX_SCRAM_ITERATIONS })
}

// The public types spell keys as `[u8; 32]`; they must stay SHA-256 sized.
const _: () = assert!(KEY_LEN == 32);

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's user "user", password "pencil".
    const RFC_SECRET: &str = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\
        WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

    #[test]
    fn parses_and_prints_postgres_format() {
        let secret = ScramSecret::parse(RFC_SECRET).unwrap();
        assert_eq!(secret.iterations, 4096);
        assert_eq!(secret.salt.len(), 16);
        assert_eq!(secret.to_string(), RFC_SECRET);
        assert_eq!(RFC_SECRET.parse::<ScramSecret>().unwrap().to_string(), RFC_SECRET);
    }

    #[test]
    fn from_password_matches_rfc_7677() {
        let reference = ScramSecret::parse(RFC_SECRET).unwrap();
        let derived = ScramSecret::from_password("pencil", &reference.salt, 4096).unwrap();
        assert_eq!(derived.to_string(), RFC_SECRET);
        assert!(derived.verifies_password(b"pencil"));
        assert!(!derived.verifies_password(b"pencil "));
    }

    #[test]
    fn for_plain_uses_fresh_salt_and_defaults() {
        let a = ScramSecret::for_plain("pw").unwrap();
        let b = ScramSecret::for_plain("pw").unwrap();
        assert_eq!(a.iterations, SCRAM_DEFAULT_ITERATIONS);
        assert_eq!(a.salt.len(), SCRAM_DEFAULT_SALT_LEN_BYTES);
        assert_ne!(a.salt, b.salt);
        assert!(a.verifies_password(b"pw") && b.verifies_password(b"pw"));
    }

    #[test]
    fn rejects_malformed_secrets() {
        let key = crypto::b64_encode(&[0u8; 32]);
        let bad = [
            String::new(),
            "SCRAM-SHA-256$".to_owned(),
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}"),
            format!("SCRAM-SHA-256$4096c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$0:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$-1:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$ 4096:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$99999999999999999999999:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$4096:${key}:{key}"),
            format!("SCRAM-SHA-256$4096:c2Fsd!==${key}:{key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}:c2FsdA=="),
            format!("SCRAM-SHA-256$4096:c2FsdA==$c2FsdA==:{key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}:{key}$"),
            format!("SCRAM-SHA-1$4096:c2FsdA==${key}:{key}"),
        ];
        for s in &bad {
            assert!(ScramSecret::parse(s).is_err(), "accepted {s:?}");
            assert!(matches!(Secret::parse(s), Secret::Plain(_)), "{s:?}");
        }
    }

    #[test]
    fn classifies_secrets() {
        assert!(matches!(Secret::parse(RFC_SECRET), Secret::Scram(_)));
        let md5 = "md5".to_owned() + &"a1".repeat(16);
        assert!(matches!(Secret::parse(&md5), Secret::Md5(_)));
        assert!(matches!(Secret::parse(&md5.to_uppercase()), Secret::Plain(_)));
        assert!(matches!(Secret::parse(&md5[..34]), Secret::Plain(_)));
        assert!(matches!(Secret::parse(&(md5.clone() + "0")), Secret::Plain(_)));
        assert!(matches!(Secret::parse("pencil"), Secret::Plain(_)));
        assert_eq!(Secret::parse("pencil").kind(), "plain");
    }

    #[test]
    fn debug_redacts() {
        let md5 = "md5".to_owned() + &"a1".repeat(16);
        let scram = ScramSecret::parse(RFC_SECRET).unwrap();
        for secret in [Secret::Plain("hunter2".into()), Secret::Md5(md5.clone())] {
            let shown = format!("{secret:?}");
            assert!(shown.contains("redacted"), "{shown}");
            assert!(!shown.contains("hunter2") && !shown.contains(&md5[3..]));
        }
        let shown = format!("{:?}", Secret::Scram(scram.clone()));
        for part in [
            crypto::b64_encode(&scram.salt),
            crypto::b64_encode(&scram.stored_key),
            crypto::b64_encode(&scram.server_key),
        ] {
            assert!(!shown.contains(&part), "{shown}");
        }
    }
}
