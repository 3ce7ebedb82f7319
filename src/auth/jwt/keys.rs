//! Verification keys: from PEM files and from JWKS documents, each bound to
//! the algorithm family it can verify. The token's `alg` header only picks
//! among the algorithms a key allows; it never decides what a key is.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::Value;

use super::der;

/// The most keys one key set holds (a JWKS with more is cut, with a warning
/// from the caller).
pub const MAX_KEYS: usize = 64;
/// The longest `kid` we keep or look up, in bytes.
pub const MAX_KID_BYTES: usize = 256;
/// RSA moduli outside this range are refused (ring verifies 2048..=8192).
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;

/// A JWS algorithm we can verify. HMAC algorithms and `none` are not here:
/// a proxy holding only public keys has nothing to check an HMAC against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    pub const ALL: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The public key material, by family.
#[derive(Clone, PartialEq, Eq)]
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed point, 65 bytes.
    P256(Vec<u8>),
    /// Uncompressed point, 97 bytes.
    P384(Vec<u8>),
    Ed25519([u8; 32]),
}

/// One verification key.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    kid: Option<String>,
    /// A JWK's `alg`, which narrows the key to that one algorithm.
    alg: Option<Algorithm>,
    material: Material,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey").field("kid", &self.kid).field("family", &self.family()).finish()
    }
}

impl VerifyingKey {
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// `RSA`, `EC P-256`, `EC P-384` or `Ed25519`, for messages.
    pub fn family(&self) -> &'static str {
        match self.material {
            Material::Rsa { .. } => "RSA",
            Material::P256(_) => "EC P-256",
            Material::P384(_) => "EC P-384",
            Material::Ed25519(_) => "Ed25519",
        }
    }

    /// Whether this key may verify `alg`.
    pub fn allows(&self, alg: Algorithm) -> bool {
        if self.alg.is_some_and(|only| only != alg) {
            return false;
        }
        use Algorithm::*;
        matches!(
            (&self.material, alg),
            (Material::Rsa { .. }, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (Material::P256(_), ES256)
                | (Material::P384(_), ES384)
                | (Material::Ed25519(_), EdDSA)
        )
    }

    /// Checks `signature` over `message` with `alg`; false when the key does
    /// not allow `alg` or the signature is wrong.
    pub fn verify(&self, alg: Algorithm, message: &[u8], sig: &[u8]) -> bool {
        if !self.allows(alg) {
            return false;
        }
        match &self.material {
            Material::Rsa { n, e } => {
                let params: &signature::RsaParameters = match alg {
                    Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                RsaPublicKeyComponents { n, e }.verify(params, message, sig).is_ok()
            }
            Material::P256(point) => UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(message, sig)
                .is_ok(),
            Material::P384(point) => UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                .verify(message, sig)
                .is_ok(),
            Material::Ed25519(key) => {
                UnparsedPublicKey::new(&signature::ED25519, key).verify(message, sig).is_ok()
            }
        }
    }

    /// Keys from one PEM file: every `PUBLIC KEY` (SubjectPublicKeyInfo) and
    /// `RSA PUBLIC KEY` (PKCS#1) block in it. A private key or certificate in
    /// the file is an error: a public key file should hold public keys.
    pub fn from_pem(text: &str) -> Result<Vec<VerifyingKey>, KeyError> {
        let blocks = pem_blocks(text)?;
        if blocks.is_empty() {
            return Err(KeyError("no PEM block found (expected -----BEGIN PUBLIC KEY-----)".into()));
        }
        blocks
            .into_iter()
            .map(|(label, der)| match label.as_str() {
                "PUBLIC KEY" => VerifyingKey::from_spki(&der),
                "RSA PUBLIC KEY" => {
                    let (n, e) = der::parse_rsa_public_key(&der)
                        .ok_or_else(|| KeyError("RSA PUBLIC KEY block is not a valid RSAPublicKey".into()))?;
                    VerifyingKey::rsa(n, e, None, None)
                }
                other => Err(KeyError(format!(
                    "PEM block \"{other}\" is not a public key (expected PUBLIC KEY or RSA PUBLIC KEY)"
                ))),
            })
            .collect()
    }

    /// A key from DER SubjectPublicKeyInfo.
    pub fn from_spki(der: &[u8]) -> Result<VerifyingKey, KeyError> {
        let spki = der::parse_spki(der).ok_or_else(|| KeyError("not a valid SubjectPublicKeyInfo".into()))?;
        if spki.algorithm == der::OID_RSA_ENCRYPTION && der::is_null_or_absent(spki.parameters) {
            let (n, e) = der::parse_rsa_public_key(spki.key)
                .ok_or_else(|| KeyError("RSA key bits are not a valid RSAPublicKey".into()))?;
            VerifyingKey::rsa(n, e, None, None)
        } else if spki.algorithm == der::OID_EC_PUBLIC_KEY && der::is_curve(spki.parameters, der::OID_P256) {
            VerifyingKey::ec(Material::P256(spki.key.to_vec()), 65, None, None)
        } else if spki.algorithm == der::OID_EC_PUBLIC_KEY && der::is_curve(spki.parameters, der::OID_P384) {
            VerifyingKey::ec(Material::P384(spki.key.to_vec()), 97, None, None)
        } else if spki.algorithm == der::OID_ED25519 && spki.parameters.is_none() {
            let key: [u8; 32] =
                spki.key.try_into().map_err(|_| KeyError("Ed25519 key is not 32 bytes".into()))?;
            Ok(VerifyingKey { kid: None, alg: None, material: Material::Ed25519(key) })
        } else {
            Err(KeyError("unsupported key type (expected RSA, EC P-256, EC P-384 or Ed25519)".into()))
        }
    }

    fn rsa(
        n: &[u8],
        e: &[u8],
        kid: Option<String>,
        alg: Option<Algorithm>,
    ) -> Result<VerifyingKey, KeyError> {
        let n = strip_leading_zeros(n);
        let e = strip_leading_zeros(e);
        let Some(first) = n.first() else {
            return Err(KeyError("RSA modulus is zero".into()));
        };
        let bits = n.len() * 8 - first.leading_zeros() as usize;
        if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
            return Err(KeyError(format!(
                "RSA modulus of {bits} bits is outside {RSA_MIN_BITS}..={RSA_MAX_BITS}"
            )));
        }
        if e.is_empty() || e.len() > 4 || e.last().is_some_and(|b| b & 1 == 0) {
            return Err(KeyError("RSA public exponent is not a small odd number".into()));
        }
        Ok(VerifyingKey { kid, alg, material: Material::Rsa { n: n.to_vec(), e: e.to_vec() } })
    }

    fn ec(
        material: Material,
        len: usize,
        kid: Option<String>,
        alg: Option<Algorithm>,
    ) -> Result<VerifyingKey, KeyError> {
        let point = match &material {
            Material::P256(p) | Material::P384(p) => p,
            _ => unreachable!("ec() takes EC material"),
        };
        if point.len() != len || point[0] != 4 {
            return Err(KeyError(format!("EC point is not an uncompressed {len}-byte point")));
        }
        Ok(VerifyingKey { kid, alg, material })
    }

    /// A key from one JWK (RFC 7517/7518/8037). Keys marked `use` other than
    /// `sig`, or with `key_ops` that do not include `verify`, are refused.
    pub fn from_jwk(jwk: &Value) -> Result<VerifyingKey, KeyError> {
        let obj = jwk.as_object().ok_or_else(|| KeyError("a JWK must be a JSON object".into()))?;
        let field = |name: &str| -> Result<Option<&str>, KeyError> {
            match obj.get(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(KeyError(format!("JWK member \"{name}\" must be a string"))),
            }
        };
        let bytes = |name: &str| -> Result<Vec<u8>, KeyError> {
            let s = field(name)?.ok_or_else(|| KeyError(format!("JWK has no \"{name}\"")))?;
            URL_SAFE_NO_PAD
                .decode(s)
                .map_err(|_| KeyError(format!("JWK member \"{name}\" is not base64url without padding")))
        };
        if let Some(usage) = field("use")? {
            if usage != "sig" {
                return Err(KeyError(format!("JWK \"use\" is \"{usage}\", not \"sig\"")));
            }
        }
        if let Some(ops) = obj.get("key_ops") {
            let verifies = ops.as_array().is_some_and(|ops| ops.iter().any(|op| op == "verify"));
            if !verifies {
                return Err(KeyError("JWK \"key_ops\" does not include \"verify\"".into()));
            }
        }
        let kid = match field("kid")? {
            Some(kid) if kid.len() > MAX_KID_BYTES => {
                return Err(KeyError(format!("JWK \"kid\" is longer than {MAX_KID_BYTES} bytes")))
            }
            kid => kid.map(str::to_owned),
        };
        let alg = match field("alg")? {
            None => None,
            Some(name) => Some(
                Algorithm::from_name(name)
                    .ok_or_else(|| KeyError(format!("JWK \"alg\" {name:?} is not a supported algorithm")))?,
            ),
        };
        let kty = field("kty")?.ok_or_else(|| KeyError("JWK has no \"kty\"".into()))?;
        let key = match kty {
            "RSA" => VerifyingKey::rsa(&bytes("n")?, &bytes("e")?, kid, alg)?,
            "EC" => {
                let (material, len, coord) = match field("crv")? {
                    Some("P-256") => (Material::P256 as fn(Vec<u8>) -> Material, 65, 32),
                    Some("P-384") => (Material::P384 as fn(Vec<u8>) -> Material, 97, 48),
                    other => return Err(KeyError(format!("EC JWK curve {other:?} is not P-256 or P-384"))),
                };
                let (x, y) = (bytes("x")?, bytes("y")?);
                if x.len() != coord || y.len() != coord {
                    return Err(KeyError(format!("EC JWK coordinates must be {coord} bytes each")));
                }
                let mut point = Vec::with_capacity(len);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                VerifyingKey::ec(material(point), len, kid, alg)?
            }
            "OKP" => {
                if field("crv")? != Some("Ed25519") {
                    return Err(KeyError("OKP JWK curve must be Ed25519".into()));
                }
                let x: [u8; 32] = bytes("x")?
                    .try_into()
                    .map_err(|_| KeyError("Ed25519 JWK \"x\" is not 32 bytes".into()))?;
                VerifyingKey { kid, alg, material: Material::Ed25519(x) }
            }
            other => return Err(KeyError(format!("JWK \"kty\" {other:?} is not RSA, EC or OKP"))),
        };
        if let Some(alg) = alg {
            if !key.allows(alg) {
                return Err(KeyError(format!("JWK \"alg\" {alg} does not fit a {} key", key.family())));
            }
        }
        Ok(key)
    }

    /// This key as a JWK object with the given `kid`.
    pub fn to_jwk(&self, kid: &str) -> Value {
        let b64 = |b: &[u8]| Value::String(URL_SAFE_NO_PAD.encode(b));
        let mut obj = serde_json::Map::new();
        obj.insert("kid".into(), Value::String(kid.into()));
        obj.insert("use".into(), Value::String("sig".into()));
        match &self.material {
            Material::Rsa { n, e } => {
                obj.insert("kty".into(), "RSA".into());
                obj.insert("n".into(), b64(n));
                obj.insert("e".into(), b64(e));
            }
            Material::P256(p) | Material::P384(p) => {
                let (crv, coord) = if p.len() == 65 { ("P-256", 32) } else { ("P-384", 48) };
                obj.insert("kty".into(), "EC".into());
                obj.insert("crv".into(), crv.into());
                obj.insert("x".into(), b64(&p[1..1 + coord]));
                obj.insert("y".into(), b64(&p[1 + coord..]));
            }
            Material::Ed25519(x) => {
                obj.insert("kty".into(), "OKP".into());
                obj.insert("crv".into(), "Ed25519".into());
                obj.insert("x".into(), b64(x));
            }
        }
        if let Some(alg) = self.alg {
            obj.insert("alg".into(), alg.name().into());
        }
        Value::Object(obj)
    }

    pub fn with_kid(mut self, kid: Option<String>) -> VerifyingKey {
        self.kid = kid;
        self
    }
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let skip = b.iter().take_while(|&&x| x == 0).count();
    &b[skip..]
}

/// A key that could not be loaded, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The PEM blocks of `text`: (label, DER bytes).
pub fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>, KeyError> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut b64 = String::new();
        let mut closed = false;
        for line in lines.by_ref() {
            if line == end {
                closed = true;
                break;
            }
            if line.contains(':') {
                return Err(KeyError(format!(
                    "PEM block \"{label}\" has headers (encrypted keys are not supported)"
                )));
            }
            b64.push_str(line);
        }
        if !closed {
            return Err(KeyError(format!("PEM block \"{label}\" has no END line")));
        }
        let der = STANDARD
            .decode(&b64)
            .map_err(|_| KeyError(format!("PEM block \"{label}\" is not valid base64")))?;
        blocks.push((label.to_owned(), der));
    }
    Ok(blocks)
}

/// Where a key set's keys came from, and what to say when a `kid` is not in
/// it.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Arc<VerifyingKey>>,
    by_kid: HashMap<String, usize>,
}

impl KeySet {
    /// A set of `keys`; later keys with a `kid` already seen are dropped (the
    /// first wins), and at most [`MAX_KEYS`] are kept. Returns the set and
    /// how many keys were dropped.
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> (KeySet, usize) {
        let mut set = KeySet::default();
        let mut dropped = 0;
        for key in keys {
            if set.keys.len() >= MAX_KEYS {
                dropped += 1;
                continue;
            }
            if let Some(kid) = key.kid() {
                if set.by_kid.contains_key(kid) {
                    dropped += 1;
                    continue;
                }
                set.by_kid.insert(kid.to_owned(), set.keys.len());
            }
            set.keys.push(Arc::new(key));
        }
        (set, dropped)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn by_kid(&self, kid: &str) -> Option<&VerifyingKey> {
        self.by_kid.get(kid).map(|&i| &*self.keys[i])
    }

    /// Keys that may verify `alg`, for a token without `kid`.
    pub fn allowing(&self, alg: Algorithm) -> impl Iterator<Item = &VerifyingKey> {
        self.keys.iter().map(|k| &**k).filter(move |k| k.allows(alg))
    }

    pub fn iter(&self) -> impl Iterator<Item = &VerifyingKey> {
        self.keys.iter().map(|k| &**k)
    }
}

/// Parses a JWKS document: the usable keys, and one message per key skipped.
pub fn parse_jwks(body: &[u8]) -> Result<(Vec<VerifyingKey>, Vec<String>), KeyError> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| KeyError(format!("JWKS is not valid JSON: {e}")))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| KeyError("JWKS has no \"keys\" array".into()))?;
    let mut good = Vec::new();
    let mut skipped = Vec::new();
    for (i, jwk) in keys.iter().enumerate() {
        if good.len() >= MAX_KEYS {
            skipped.push(format!("keys[{i}] and after: more than {MAX_KEYS} keys"));
            break;
        }
        match VerifyingKey::from_jwk(jwk) {
            Ok(key) => good.push(key),
            Err(e) => {
                let kid =
                    jwk.get("kid").and_then(Value::as_str).map(|k| k.chars().take(64).collect::<String>());
                skipped.push(format!("keys[{i}] (kid {kid:?}): {e}"));
            }
        }
    }
    Ok((good, skipped))
}
