//! Developer tools in the binary: `pgwarden keygen` and `pgwarden token`, so
//! a JWT setup can be tried without an identity provider.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::auth::jwt::sign::{generate_pkcs8, pem};
use crate::auth::jwt::{Algorithm, SigningKey};

/// What `keygen` wrote.
#[derive(Debug)]
pub struct Keygen {
    pub kid: String,
    pub private_key: PathBuf,
    pub public_key: PathBuf,
    pub jwks: PathBuf,
}

/// A stable `kid` for a key: the first 16 hex digits of SHA-256 over its
/// public PEM.
fn kid_for(key: &SigningKey) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.public_pem().as_bytes());
    digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `private.pem` (mode 0600), `public.pem` and `jwks.json` for a new
/// key of `alg` into `dir` (created if missing). Refuses to overwrite an
/// existing private key.
pub fn keygen(alg: Algorithm, dir: &Path) -> Result<Keygen, String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let private_key = dir.join("private.pem");
    let public_key = dir.join("public.pem");
    let jwks = dir.join("jwks.json");
    let der = generate_pkcs8(alg).map_err(|e| e.to_string())?;
    let key = SigningKey::from_pkcs8(&der).map_err(|e| e.to_string())?;
    let kid = kid_for(&key);
    let mut jwk = key.verifying_key().to_jwk(&kid);
    jwk["alg"] = alg.name().into();
    let doc = serde_json::json!({ "keys": [jwk] });
    let mut file =
        fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&private_key).map_err(|e| {
            format!("cannot create {}: {e} (remove it to make a new key)", private_key.display())
        })?;
    file.write_all(pem("PRIVATE KEY", &der).as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", private_key.display()))?;
    fs::write(&public_key, key.public_pem())
        .map_err(|e| format!("cannot write {}: {e}", public_key.display()))?;
    let body = serde_json::to_string_pretty(&doc).expect("JSON of a map") + "\n";
    fs::write(&jwks, body).map_err(|e| format!("cannot write {}: {e}", jwks.display()))?;
    Ok(Keygen { kid, private_key, public_key, jwks })
}

/// The options of `pgwarden token`.
#[derive(Debug, Default)]
pub struct TokenRequest {
    pub key: PathBuf,
    pub sub: String,
    pub ttl_secs: u64,
    pub aud: Vec<String>,
    pub iss: Option<String>,
    pub kid: Option<String>,
    pub alg: Option<Algorithm>,
    /// `key=value`; the value is JSON when it parses as JSON, else a string.
    pub claims: Vec<String>,
}

/// Parses `90`, `90s`, `15m`, `1h`, `2d` as seconds.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid duration {s:?} (examples: 90, 90s, 15m, 1h, 2d)");
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// Signs a token as `req` asks, with `iat` and `exp` from now. When no
/// `kid` is given, the key's `keygen` kid is used.
pub fn token(req: &TokenRequest) -> Result<String, String> {
    let text = fs::read_to_string(&req.key).map_err(|e| format!("cannot read {}: {e}", req.key.display()))?;
    let key = SigningKey::from_pem(&text).map_err(|e| format!("{}: {e}", req.key.display()))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
    let mut claims = Map::new();
    claims.insert("sub".into(), req.sub.clone().into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), now.saturating_add(req.ttl_secs).into());
    match req.aud.as_slice() {
        [] => {}
        [one] => {
            claims.insert("aud".into(), one.clone().into());
        }
        many => {
            claims.insert("aud".into(), many.iter().cloned().map(Value::String).collect::<Vec<_>>().into());
        }
    }
    if let Some(iss) = &req.iss {
        claims.insert("iss".into(), iss.clone().into());
    }
    for kv in &req.claims {
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("--claim {kv:?}: expected key=value"))?;
        if k.is_empty() {
            return Err(format!("--claim {kv:?}: empty claim name"));
        }
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
        claims.insert(k.to_owned(), value);
    }
    let alg = req.alg.unwrap_or_else(|| key.default_algorithm());
    let kid = req.kid.clone().unwrap_or_else(|| kid_for(&key));
    key.sign(alg, Some(&kid), &claims).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt::{validate, KeySet, Policy, VerifyingKey};

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("90").unwrap(), 90);
        assert_eq!(parse_duration_secs("15m").unwrap(), 900);
        assert_eq!(parse_duration_secs("1h").unwrap(), 3600);
        assert_eq!(parse_duration_secs("2d").unwrap(), 172_800);
        assert!(parse_duration_secs("1w").is_err());
        assert!(parse_duration_secs("h").is_err());
        assert!(parse_duration_secs("").is_err());
    }

    #[test]
    fn keygen_then_token_validates_against_pem_and_jwks() {
        for alg in [Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256] {
            let dir = tempfile::tempdir().unwrap();
            let out = keygen(alg, dir.path()).unwrap();
            assert!(keygen(alg, dir.path()).is_err(), "must not overwrite a private key");
            let mode = fs::metadata(&out.private_key).unwrap().permissions();
            assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
            let req = TokenRequest {
                key: out.private_key.clone(),
                sub: "alice".into(),
                ttl_secs: 60,
                aud: vec!["pg".into()],
                claims: vec!["scope=read write".into(), "level=3".into()],
                ..TokenRequest::default()
            };
            let t = token(&req).unwrap();
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
            let policy = Policy { audiences: vec!["pg".into()], ..Policy::default() };
            let pem_keys = VerifyingKey::from_pem(&fs::read_to_string(&out.public_key).unwrap()).unwrap();
            let v = validate(t.as_bytes(), &KeySet::new(pem_keys).0, &policy, now).unwrap();
            assert_eq!(v.kid.as_deref(), Some(out.kid.as_str()));
            assert_eq!(v.claims["scope"], "read write");
            assert_eq!(v.claims["level"], 3);
            let (jwks, skipped) = crate::auth::jwt::parse_jwks(&fs::read(&out.jwks).unwrap()).unwrap();
            assert!(skipped.is_empty());
            let v = validate(t.as_bytes(), &KeySet::new(jwks).0, &policy, now).unwrap();
            assert_eq!(v.alg, alg);
        }
    }
}
