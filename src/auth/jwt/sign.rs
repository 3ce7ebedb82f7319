//! Signing, for the developer tools (`pgwarden keygen`, `pgwarden token`) and
//! the tests. The proxy itself never signs.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use serde_json::{Map, Value};

use super::der;
use super::keys::{pem_blocks, Algorithm, KeyError, VerifyingKey};

enum Inner {
    Rsa(RsaKeyPair),
    Ecdsa(EcdsaKeyPair, Algorithm),
    Ed25519(Ed25519KeyPair),
}

/// A private key that signs tokens.
pub struct SigningKey {
    inner: Inner,
}

impl SigningKey {
    /// From a PEM `PRIVATE KEY` (PKCS#8: RSA, EC P-256/P-384, Ed25519) or
    /// `RSA PRIVATE KEY` (PKCS#1).
    pub fn from_pem(text: &str) -> Result<SigningKey, KeyError> {
        let blocks = pem_blocks(text)?;
        let (label, der) = blocks.into_iter().next().ok_or_else(|| KeyError("no PEM block found".into()))?;
        match label.as_str() {
            "PRIVATE KEY" => SigningKey::from_pkcs8(&der),
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der)
                .map(|k| SigningKey { inner: Inner::Rsa(k) })
                .map_err(|e| KeyError(format!("RSA PRIVATE KEY: {e}"))),
            other => Err(KeyError(format!(
                "PEM block \"{other}\" is not a supported private key (use PKCS#8 PRIVATE KEY; \
                 convert with `openssl pkcs8 -topk8 -nocrypt`)"
            ))),
        }
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, KeyError> {
        let rng = SystemRandom::new();
        if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            return Ok(SigningKey { inner: Inner::Ed25519(k) });
        }
        if let Ok(k) = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng) {
            return Ok(SigningKey { inner: Inner::Ecdsa(k, Algorithm::ES256) });
        }
        if let Ok(k) = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, der, &rng) {
            return Ok(SigningKey { inner: Inner::Ecdsa(k, Algorithm::ES384) });
        }
        RsaKeyPair::from_pkcs8(der).map(|k| SigningKey { inner: Inner::Rsa(k) }).map_err(|e| {
            KeyError(format!("PKCS#8 key is not RSA (>= 2048 bits), EC P-256/P-384 or Ed25519: {e}"))
        })
    }

    /// The algorithm this key signs with unless told otherwise.
    pub fn default_algorithm(&self) -> Algorithm {
        match &self.inner {
            Inner::Rsa(_) => Algorithm::RS256,
            Inner::Ecdsa(_, alg) => *alg,
            Inner::Ed25519(_) => Algorithm::EdDSA,
        }
    }

    /// The public key as DER SubjectPublicKeyInfo.
    fn spki_der(&self) -> Vec<u8> {
        match &self.inner {
            // ring's public key bytes are the DER RSAPublicKey.
            Inner::Rsa(k) => {
                der::encode_spki(der::OID_RSA_ENCRYPTION, der::Params::Null, k.public().as_ref())
            }
            Inner::Ecdsa(k, alg) => {
                let curve = if *alg == Algorithm::ES384 { der::OID_P384 } else { der::OID_P256 };
                der::encode_spki(der::OID_EC_PUBLIC_KEY, der::Params::Curve(curve), k.public_key().as_ref())
            }
            Inner::Ed25519(k) => {
                der::encode_spki(der::OID_ED25519, der::Params::Absent, k.public_key().as_ref())
            }
        }
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey::from_spki(&self.spki_der()).expect("our own public key parses")
    }

    /// The public key as a PEM `PUBLIC KEY` block.
    pub fn public_pem(&self) -> String {
        pem("PUBLIC KEY", &self.spki_der())
    }

    /// Signs `claims` with `alg` (which must fit the key) and an optional
    /// `kid`: a compact JWS.
    pub fn sign(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        claims: &Map<String, Value>,
    ) -> Result<String, KeyError> {
        let mut header = Map::new();
        header.insert("alg".into(), alg.name().into());
        header.insert("typ".into(), "JWT".into());
        if let Some(kid) = kid {
            header.insert("kid".into(), kid.into());
        }
        let header = serde_json::to_vec(&Value::Object(header)).expect("JSON of a map");
        let payload = serde_json::to_vec(&Value::Object(claims.clone())).expect("JSON of a map");
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(payload));
        let sig = self.sign_bytes(alg, token.as_bytes())?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(token)
    }

    fn sign_bytes(&self, alg: Algorithm, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = SystemRandom::new();
        let mismatch =
            || KeyError(format!("algorithm {alg} does not fit this key ({})", self.default_algorithm()));
        match &self.inner {
            Inner::Rsa(k) => {
                let encoding: &'static dyn signature::RsaEncoding = match alg {
                    Algorithm::RS256 => &signature::RSA_PKCS1_SHA256,
                    Algorithm::RS384 => &signature::RSA_PKCS1_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_SHA256,
                    Algorithm::PS384 => &signature::RSA_PSS_SHA384,
                    Algorithm::PS512 => &signature::RSA_PSS_SHA512,
                    _ => return Err(mismatch()),
                };
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(encoding, &rng, message, &mut sig)
                    .map_err(|_| KeyError("RSA signing failed".into()))?;
                Ok(sig)
            }
            Inner::Ecdsa(k, key_alg) if *key_alg == alg => k
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError("ECDSA signing failed".into())),
            Inner::Ed25519(k) if alg == Algorithm::EdDSA => Ok(k.sign(message).as_ref().to_vec()),
            _ => Err(mismatch()),
        }
    }
}

/// PEM text for `der` under `label`, 64 columns.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A freshly generated private key for `alg`, as PKCS#8 DER.
pub fn generate_pkcs8(alg: Algorithm) -> Result<Vec<u8>, KeyError> {
    let rng = SystemRandom::new();
    let fail = |e: ring::error::Unspecified| KeyError(format!("key generation failed: {e}"));
    match alg {
        Algorithm::EdDSA => {
            // ring writes PKCS#8 v2 (with the public key), which OpenSSL 3.0
            // cannot read; keep the seed and write v1 (RFC 8410), which both read.
            let v2 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(fail)?;
            let seed = v2
                .as_ref()
                .windows(2)
                .position(|w| w == [0x04, 0x20])
                .map(|i| &v2.as_ref()[i + 2..i + 34])
                .ok_or_else(|| KeyError("unexpected Ed25519 PKCS#8 layout".into()))?;
            let mut v1 = vec![
                0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
                0x20,
            ];
            v1.extend_from_slice(seed);
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(&v1)
                .map_err(|e| KeyError(format!("Ed25519 key check failed: {e}")))?;
            Ok(v1)
        }
        Algorithm::ES256 => {
            Ok(EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(fail)?
                .as_ref()
                .to_vec())
        }
        Algorithm::ES384 => {
            Ok(EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
                .map_err(fail)?
                .as_ref()
                .to_vec())
        }
        _ => {
            // ring cannot generate RSA keys; the rsa crate generates, ring signs.
            use rsa::pkcs8::EncodePrivateKey as _;
            let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048)
                .map_err(|e| KeyError(format!("RSA key generation failed: {e}")))?;
            let der = key.to_pkcs8_der().map_err(|e| KeyError(format!("RSA key encoding failed: {e}")))?;
            Ok(der.as_bytes().to_vec())
        }
    }
}
