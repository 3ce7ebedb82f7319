//! `validate(token, keys, policy, now)`: pure, no I/O, no clock of its own.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};

use super::keys::{Algorithm, KeySet, VerifyingKey, MAX_KID_BYTES};

/// The longest password we try to decode as a token, in bytes (as the
/// password message cap: 64 KiB).
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// A token without `kid` is tried against at most this many keys that allow
/// its algorithm.
const MAX_KEYS_TRIED_WITHOUT_KID: usize = 8;

/// What the configuration asks of a token.
#[derive(Debug, Clone)]
pub struct Policy {
    pub algorithms: Vec<Algorithm>,
    /// Accepted `iss` values; empty: not checked.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; empty: not checked.
    pub audiences: Vec<String>,
    pub leeway_secs: u64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            algorithms: Algorithm::ALL.to_vec(),
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway_secs: 0,
        }
    }
}

/// A token whose signature and time claims checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub iss: Option<String>,
    /// Seconds since the epoch.
    pub exp: u64,
    pub claims: Map<String, Value>,
}

/// Why a token was refused. `Display` is what the client and the log see:
/// it never contains the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    Empty,
    TooLong,
    Malformed(&'static str),
    AlgorithmNotAllowed(String),
    /// The token names a `kid` the key set does not hold.
    UnknownKid(String),
    /// No key without `kid` in the set allows the token's algorithm.
    NoKeyForAlgorithm(Algorithm),
    KeyAlgorithmMismatch {
        kid: String,
        alg: Algorithm,
    },
    BadSignature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    MissingExp,
    BadTimeClaim(&'static str),
    IssuerMismatch,
    AudienceMismatch,
    NoAudience,
    CriticalHeader,
}

impl JwtError {
    /// Whether a fresh key set could change the answer.
    pub fn wants_key_refresh(&self) -> bool {
        matches!(self, JwtError::UnknownKid(_))
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::Empty => f.write_str("empty password: expected a JWT"),
            JwtError::TooLong => write!(f, "token longer than {MAX_TOKEN_BYTES} bytes"),
            JwtError::Malformed(why) => write!(f, "malformed token: {why}"),
            JwtError::AlgorithmNotAllowed(alg) => write!(f, "algorithm {alg:?} is not allowed"),
            JwtError::UnknownKid(kid) => write!(f, "unknown signing key (kid {kid:?})"),
            JwtError::NoKeyForAlgorithm(alg) => write!(f, "unknown signing key (no key for {alg})"),
            JwtError::KeyAlgorithmMismatch { kid, alg } => {
                write!(f, "algorithm {alg} does not match signing key {kid:?}")
            }
            JwtError::BadSignature => f.write_str("signature verification failed"),
            JwtError::Expired => f.write_str("token expired"),
            JwtError::NotYetValid => f.write_str("token not yet valid (nbf)"),
            JwtError::IssuedInFuture => f.write_str("token issued in the future (iat)"),
            JwtError::MissingExp => f.write_str("token has no exp claim"),
            JwtError::BadTimeClaim(claim) => write!(f, "claim {claim:?} must be a number of seconds"),
            JwtError::IssuerMismatch => f.write_str("issuer mismatch"),
            JwtError::AudienceMismatch => f.write_str("audience mismatch"),
            JwtError::NoAudience => f.write_str("audience mismatch: token has no aud"),
            JwtError::CriticalHeader => {
                f.write_str("token has a \"crit\" header this server does not understand")
            }
        }
    }
}

/// The parts of a token's header we act on.
#[derive(Debug)]
pub struct Header {
    pub alg: String,
    pub kid: Option<String>,
}

/// Splits a compact JWS and decodes its header, without checking anything
/// else: enough to log the `kid` of a refused token, and to know whether a key
/// refresh could help.
pub fn peek_header(token: &[u8]) -> Result<Header, JwtError> {
    parse_header(split(token)?.header)
}

/// The three base64url parts of a compact JWS.
struct Parts<'a> {
    header: &'a [u8],
    payload: &'a [u8],
    signature: &'a [u8],
}

fn split(token: &[u8]) -> Result<Parts<'_>, JwtError> {
    if token.is_empty() {
        return Err(JwtError::Empty);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLong);
    }
    let mut parts = token.split(|&b| b == b'.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None) if !header.is_empty() && !payload.is_empty() => {
            Ok(Parts { header, payload, signature })
        }
        _ => Err(JwtError::Malformed("expected three base64url parts separated by dots")),
    }
}

fn decode_json(part: &[u8], what: &'static str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtError::Malformed(what))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed(what)),
    }
}

fn parse_header(part: &[u8]) -> Result<Header, JwtError> {
    let header = decode_json(part, "header is not a base64url JSON object")?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        _ => return Err(JwtError::Malformed("header has no \"alg\" string")),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) if kid.len() <= MAX_KID_BYTES => Some(kid.clone()),
        Some(Value::String(_)) => return Err(JwtError::Malformed("\"kid\" is too long")),
        Some(_) => return Err(JwtError::Malformed("\"kid\" is not a string")),
    };
    // RFC 7515 4.1.11: a recipient must refuse extensions it does not know.
    if header.contains_key("crit") {
        return Err(JwtError::CriticalHeader);
    }
    // jku, x5u, jwk and x5c are ignored on purpose: keys come from the
    // configuration only, never from the token.
    Ok(Header { alg, kid })
}

/// Checks a compact JWS against `keys` and `policy` at `now` (seconds since
/// the epoch).
pub fn validate(token: &[u8], keys: &KeySet, policy: &Policy, now: u64) -> Result<Verified, JwtError> {
    let Parts { header: header_b64, payload: payload_b64, signature: sig_b64 } = split(token)?;
    let header = parse_header(header_b64)?;
    let alg = Algorithm::from_name(&header.alg)
        .filter(|alg| policy.algorithms.contains(alg))
        .ok_or_else(|| JwtError::AlgorithmNotAllowed(header.alg.chars().take(16).collect()))?;
    let sig =
        URL_SAFE_NO_PAD.decode(sig_b64).map_err(|_| JwtError::Malformed("signature is not base64url"))?;
    let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
    let good = match &header.kid {
        Some(kid) => match keys.by_kid(kid) {
            Some(key) if !key.allows(alg) => {
                return Err(JwtError::KeyAlgorithmMismatch { kid: kid.clone(), alg })
            }
            Some(key) => key.verify(alg, signed, &sig),
            // Keys from PEM files have no kid: a token from an identity
            // provider that names its key still verifies against them. If none
            // does, a key refresh may bring the kid.
            None => {
                let mut anonymous = keys
                    .allowing(alg)
                    .filter(|k| k.kid().is_none())
                    .take(MAX_KEYS_TRIED_WITHOUT_KID)
                    .peekable();
                let tried_some = anonymous.peek().is_some();
                if !anonymous.any(|key| key.verify(alg, signed, &sig)) {
                    // Against PEM keys alone it is simply a bad signature; with
                    // named keys (a JWKS), or none yet, a refresh may bring it.
                    if tried_some && !keys.iter().any(|k| k.kid().is_some()) {
                        return Err(JwtError::BadSignature);
                    }
                    return Err(JwtError::UnknownKid(kid.clone()));
                }
                true
            }
        },
        None => {
            let mut candidates = keys.allowing(alg).take(MAX_KEYS_TRIED_WITHOUT_KID).peekable();
            if candidates.peek().is_none() {
                return Err(JwtError::NoKeyForAlgorithm(alg));
            }
            candidates.any(|key: &VerifyingKey| key.verify(alg, signed, &sig))
        }
    };
    if !good {
        return Err(JwtError::BadSignature);
    }
    let claims = decode_json(payload_b64, "payload is not a base64url JSON object")?;
    let exp = check_times(&claims, policy.leeway_secs, now)?;
    let iss = match claims.get("iss") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    if !policy.issuers.is_empty() && !iss.as_ref().is_some_and(|iss| policy.issuers.contains(iss)) {
        return Err(JwtError::IssuerMismatch);
    }
    if !policy.audiences.is_empty() {
        check_audience(&claims, &policy.audiences)?;
    }
    Ok(Verified { alg, kid: header.kid, iss, exp, claims })
}

/// A NumericDate: a JSON number (integer or not). Strings are refused: a
/// string `nbf` was a real bypass in a widely used library.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                Ok(Some(v))
            } else if let Some(v) = n.as_f64().filter(|v| v.is_finite()) {
                // Fractions and negatives: floor, clamped at 0.
                Ok(Some(if v <= 0.0 { 0 } else { v.min(u64::MAX as f64) as u64 }))
            } else {
                Err(JwtError::BadTimeClaim(name))
            }
        }
        Some(_) => Err(JwtError::BadTimeClaim(name)),
    }
}

fn check_times(claims: &Map<String, Value>, leeway: u64, now: u64) -> Result<u64, JwtError> {
    let exp = numeric_date(claims, "exp")?.ok_or(JwtError::MissingExp)?;
    // RFC 7519 4.1.4: the current time must be before exp.
    if now >= exp.saturating_add(leeway) {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if now.saturating_add(leeway) < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(iat) = numeric_date(claims, "iat")? {
        if now.saturating_add(leeway) < iat {
            return Err(JwtError::IssuedInFuture);
        }
    }
    Ok(exp)
}

fn check_audience(claims: &Map<String, Value>, accepted: &[String]) -> Result<(), JwtError> {
    let matches = |v: &Value| v.as_str().is_some_and(|s| accepted.iter().any(|a| a == s));
    match claims.get("aud") {
        None | Some(Value::Null) => Err(JwtError::NoAudience),
        Some(Value::Array(list)) if list.is_empty() => Err(JwtError::NoAudience),
        Some(Value::Array(list)) if list.iter().any(matches) => Ok(()),
        Some(v @ Value::String(_)) if matches(v) => Ok(()),
        Some(_) => Err(JwtError::AudienceMismatch),
    }
}

/// The value at a dotted claim path (`realm_access.role`); a top-level claim
/// whose name contains dots is found too.
pub fn claim_at<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}
