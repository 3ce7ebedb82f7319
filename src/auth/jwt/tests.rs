use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::sign::generate_pkcs8;
use super::*;

const NOW: u64 = 1_900_000_000;

fn key(alg: Algorithm) -> &'static SigningKey {
    static RSA: OnceLock<SigningKey> = OnceLock::new();
    static P256: OnceLock<SigningKey> = OnceLock::new();
    static P384: OnceLock<SigningKey> = OnceLock::new();
    static ED: OnceLock<SigningKey> = OnceLock::new();
    let (cell, gen) = match alg {
        Algorithm::ES256 => (&P256, Algorithm::ES256),
        Algorithm::ES384 => (&P384, Algorithm::ES384),
        Algorithm::EdDSA => (&ED, Algorithm::EdDSA),
        _ => (&RSA, Algorithm::RS256),
    };
    cell.get_or_init(|| SigningKey::from_pkcs8(&generate_pkcs8(gen).unwrap()).unwrap())
}

fn claims(extra: Value) -> Map<String, Value> {
    let mut c = json!({"sub": "alice", "exp": NOW + 60, "iat": NOW - 1}).as_object().unwrap().clone();
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.remove(k);
        } else {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn keyset(entries: &[(Algorithm, Option<&str>)]) -> KeySet {
    KeySet::new(entries.iter().map(|(alg, kid)| key(*alg).verifying_key().with_kid(kid.map(str::to_owned)))).0
}

fn token(alg: Algorithm, kid: Option<&str>, extra: Value) -> String {
    key(alg).sign(alg, kid, &claims(extra)).unwrap()
}

fn check(token: &str, keys: &KeySet, policy: &Policy) -> Result<Verified, JwtError> {
    validate(token.as_bytes(), keys, policy, NOW)
}

/// A token with a hand-made header and payload and the signature of `sig_key`
/// over them (or garbage when `None`).
fn raw_token(header: Value, payload: Value, sig: &[u8]) -> String {
    let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap());
    let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap());
    format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(sig))
}

#[test]
fn every_algorithm_verifies_with_its_key() {
    for alg in Algorithm::ALL {
        let keys = keyset(&[(alg, Some("k1"))]);
        let verified = check(&token(alg, Some("k1"), json!({})), &keys, &Policy::default())
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(verified.alg, alg);
        assert_eq!(verified.kid.as_deref(), Some("k1"));
        assert_eq!(verified.claims["sub"], "alice");
        assert_eq!(verified.exp, NOW + 60);
        // Without a kid the key is found by algorithm.
        let keys = keyset(&[(alg, None)]);
        check(&token(alg, None, json!({})), &keys, &Policy::default()).unwrap();
    }
}

#[test]
fn none_and_hmac_are_refused() {
    let keys = keyset(&[(Algorithm::RS256, Some("k1"))]);
    let payload = Value::Object(claims(json!({})));
    let none = raw_token(json!({"alg": "none", "kid": "k1"}), payload.clone(), b"");
    assert_eq!(
        check(&none, &keys, &Policy::default()).unwrap_err(),
        JwtError::AlgorithmNotAllowed("none".into())
    );
    // The classic confusion: HS256 keyed with the RSA public key's PEM.
    let public_pem = key(Algorithm::RS256).public_pem();
    let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&json!({"alg": "HS256", "kid": "k1"})).unwrap());
    let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap());
    let mac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, public_pem.as_bytes());
    let tag = ring::hmac::sign(&mac_key, format!("{h}.{p}").as_bytes());
    let hs = format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
    assert_eq!(
        check(&hs, &keys, &Policy::default()).unwrap_err(),
        JwtError::AlgorithmNotAllowed("HS256".into())
    );
}

#[test]
fn algorithms_outside_the_policy_are_refused() {
    let keys = keyset(&[(Algorithm::RS256, Some("k1"))]);
    let policy = Policy { algorithms: vec![Algorithm::RS256], ..Policy::default() };
    check(&token(Algorithm::RS256, Some("k1"), json!({})), &keys, &policy).unwrap();
    let ps = token(Algorithm::PS256, Some("k1"), json!({}));
    assert_eq!(check(&ps, &keys, &policy).unwrap_err(), JwtError::AlgorithmNotAllowed("PS256".into()));
}

#[test]
fn the_key_decides_the_family() {
    // kid names an EC key, token claims RS256 (signed with the RSA key).
    let keys = keyset(&[(Algorithm::ES256, Some("ec")), (Algorithm::RS256, Some("rsa"))]);
    let t = key(Algorithm::RS256).sign(Algorithm::RS256, Some("ec"), &claims(json!({}))).unwrap();
    assert_eq!(
        check(&t, &keys, &Policy::default()).unwrap_err(),
        JwtError::KeyAlgorithmMismatch { kid: "ec".into(), alg: Algorithm::RS256 }
    );
    // A JWK's alg narrows an RSA key to one algorithm.
    let jwk = json!({"kty": "RSA", "alg": "RS256", "kid": "r",
        "n": key(Algorithm::RS256).verifying_key().to_jwk("r")["n"], "e": "AQAB"});
    let keys = KeySet::new([VerifyingKey::from_jwk(&jwk).unwrap()]).0;
    check(&token(Algorithm::RS256, Some("r"), json!({})), &keys, &Policy::default()).unwrap();
    assert!(matches!(
        check(&token(Algorithm::PS256, Some("r"), json!({})), &keys, &Policy::default()),
        Err(JwtError::KeyAlgorithmMismatch { .. })
    ));
}

#[test]
fn unknown_kid_asks_for_a_refresh() {
    let keys = keyset(&[(Algorithm::ES256, Some("old"))]);
    let err = check(&token(Algorithm::ES256, Some("new"), json!({})), &keys, &Policy::default()).unwrap_err();
    assert_eq!(err, JwtError::UnknownKid("new".into()));
    assert!(err.wants_key_refresh());
    assert_eq!(err.to_string(), "unknown signing key (kid \"new\")");
    let keys = keyset(&[(Algorithm::RS256, None)]);
    let err = check(&token(Algorithm::EdDSA, None, json!({})), &keys, &Policy::default()).unwrap_err();
    assert_eq!(err, JwtError::NoKeyForAlgorithm(Algorithm::EdDSA));
    // A kid the set does not name still verifies against a key without kid
    // (from a PEM file). A wrong signature is then a bad signature with PEM
    // keys alone, and an unknown key when the set has named keys (a refresh
    // may bring it).
    let keys = keyset(&[(Algorithm::ES256, None)]);
    check(&token(Algorithm::ES256, Some("idp-key"), json!({})), &keys, &Policy::default()).unwrap();
    let other = SigningKey::from_pkcs8(&generate_pkcs8(Algorithm::ES256).unwrap()).unwrap();
    let t = other.sign(Algorithm::ES256, Some("idp-key"), &claims(json!({}))).unwrap();
    assert_eq!(check(&t, &keys, &Policy::default()).unwrap_err(), JwtError::BadSignature);
    let empty = KeySet::default();
    assert_eq!(check(&t, &empty, &Policy::default()).unwrap_err(), JwtError::UnknownKid("idp-key".into()));
    let mixed = keyset(&[(Algorithm::ES256, None), (Algorithm::EdDSA, Some("named"))]);
    assert_eq!(check(&t, &mixed, &Policy::default()).unwrap_err(), JwtError::UnknownKid("idp-key".into()));
}

#[test]
fn tampering_breaks_the_signature() {
    let keys = keyset(&[(Algorithm::EdDSA, Some("k"))]);
    let t = token(Algorithm::EdDSA, Some("k"), json!({}));
    let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
    parts[1] =
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&Value::Object(claims(json!({"sub": "root"})))).unwrap());
    assert_eq!(check(&parts.join("."), &keys, &Policy::default()).unwrap_err(), JwtError::BadSignature);
    // A token signed by another key of the same family.
    let other = SigningKey::from_pkcs8(&generate_pkcs8(Algorithm::EdDSA).unwrap()).unwrap();
    let forged = other.sign(Algorithm::EdDSA, Some("k"), &claims(json!({}))).unwrap();
    assert_eq!(check(&forged, &keys, &Policy::default()).unwrap_err(), JwtError::BadSignature);
}

#[test]
fn keys_named_by_the_token_are_ignored() {
    // jwk/jku/x5u in the header must not bring their own key: a token signed
    // by an attacker's key that names that key is still refused.
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = generate_pkcs8(Algorithm::ES256).unwrap();
    let attacker = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &pkcs8,
        &rng,
    )
    .unwrap();
    let attacker_jwk = SigningKey::from_pkcs8(&pkcs8).unwrap().verifying_key().to_jwk("x");
    let header = json!({"alg": "ES256", "jwk": attacker_jwk,
        "jku": "https://evil.example/jwks", "x5u": "https://evil.example/cert"});
    let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap());
    let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&Value::Object(claims(json!({})))).unwrap());
    let signed = format!("{h}.{p}");
    let sig = attacker.sign(&rng, signed.as_bytes()).unwrap();
    let forged = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
    let keys = keyset(&[(Algorithm::ES256, None)]);
    assert_eq!(check(&forged, &keys, &Policy::default()).unwrap_err(), JwtError::BadSignature);
    // With the attacker's key configured, the same token passes: so the
    // refusal above came from the key source, not from the header members.
    let attacker_keys = KeySet::new([VerifyingKey::from_jwk(&attacker_jwk).unwrap().with_kid(None)]).0;
    check(&forged, &attacker_keys, &Policy::default()).unwrap();
}

#[test]
fn crit_headers_are_refused() {
    let keys = keyset(&[(Algorithm::EdDSA, None)]);
    let t = raw_token(json!({"alg": "EdDSA", "crit": ["exp"]}), Value::Object(claims(json!({}))), &[0; 64]);
    assert_eq!(check(&t, &keys, &Policy::default()).unwrap_err(), JwtError::CriticalHeader);
}

#[test]
fn time_claims() {
    let keys = keyset(&[(Algorithm::EdDSA, None)]);
    let p = Policy::default();
    let t = |extra| token(Algorithm::EdDSA, None, extra);
    assert_eq!(check(&t(json!({"exp": NOW})), &keys, &p).unwrap_err(), JwtError::Expired);
    assert_eq!(check(&t(json!({"exp": NOW - 100})), &keys, &p).unwrap_err().to_string(), "token expired");
    assert_eq!(check(&t(json!({"exp": null})), &keys, &p).unwrap_err(), JwtError::MissingExp);
    assert_eq!(
        check(&t(json!({"exp": "9999999999"})), &keys, &p).unwrap_err(),
        JwtError::BadTimeClaim("exp")
    );
    assert_eq!(check(&t(json!({"nbf": NOW + 10})), &keys, &p).unwrap_err(), JwtError::NotYetValid);
    // The 9.x bypass: a string nbf must not be skipped.
    assert_eq!(
        check(&t(json!({"nbf": "9999999999"})), &keys, &p).unwrap_err(),
        JwtError::BadTimeClaim("nbf")
    );
    assert_eq!(check(&t(json!({"iat": NOW + 10})), &keys, &p).unwrap_err(), JwtError::IssuedInFuture);
    check(&t(json!({"nbf": NOW, "exp": NOW as f64 + 1.5})), &keys, &p).unwrap();
    // Fractions are floored: exp NOW + 0.5 is already over (fails closed).
    assert_eq!(check(&t(json!({"exp": NOW as f64 + 0.5})), &keys, &p).unwrap_err(), JwtError::Expired);
    // Leeway on both sides.
    let lenient = Policy { leeway_secs: 30, ..Policy::default() };
    check(&t(json!({"exp": NOW - 10})), &keys, &lenient).unwrap();
    check(&t(json!({"nbf": NOW + 10, "iat": NOW + 10})), &keys, &lenient).unwrap();
    assert_eq!(check(&t(json!({"exp": NOW - 30})), &keys, &lenient).unwrap_err(), JwtError::Expired);
}

#[test]
fn issuer_and_audience() {
    let keys = keyset(&[(Algorithm::EdDSA, None)]);
    let t = |extra| token(Algorithm::EdDSA, None, extra);
    let p = Policy {
        issuers: vec!["https://idp".into(), "https://idp2".into()],
        audiences: vec!["pg".into()],
        ..Policy::default()
    };
    let ok = check(&t(json!({"iss": "https://idp2", "aud": "pg"})), &keys, &p).unwrap();
    assert_eq!(ok.iss.as_deref(), Some("https://idp2"));
    check(&t(json!({"iss": "https://idp", "aud": ["other", "pg"]})), &keys, &p).unwrap();
    assert_eq!(
        check(&t(json!({"iss": "https://evil", "aud": "pg"})), &keys, &p).unwrap_err(),
        JwtError::IssuerMismatch
    );
    assert_eq!(check(&t(json!({"aud": "pg"})), &keys, &p).unwrap_err(), JwtError::IssuerMismatch);
    assert_eq!(
        check(&t(json!({"iss": "https://idp", "aud": "web"})), &keys, &p).unwrap_err(),
        JwtError::AudienceMismatch
    );
    assert_eq!(
        check(&t(json!({"iss": "https://idp", "aud": [1]})), &keys, &p).unwrap_err(),
        JwtError::AudienceMismatch
    );
    assert_eq!(check(&t(json!({"iss": "https://idp"})), &keys, &p).unwrap_err(), JwtError::NoAudience);
    assert_eq!(
        check(&t(json!({"iss": "https://idp", "aud": []})), &keys, &p).unwrap_err(),
        JwtError::NoAudience
    );
    // Not configured: not checked.
    check(&t(json!({})), &keys, &Policy::default()).unwrap();
}

#[test]
fn garbage_is_malformed_not_a_panic() {
    let keys = keyset(&[(Algorithm::EdDSA, None)]);
    let p = Policy::default();
    assert_eq!(validate(b"", &keys, &p, NOW).unwrap_err(), JwtError::Empty);
    assert_eq!(validate(&vec![b'a'; MAX_TOKEN_BYTES + 1], &keys, &p, NOW).unwrap_err(), JwtError::TooLong);
    for bad in ["secret", "a.b", "a.b.c.d", ".b.c", "a..c", "!!!.e30.x", "e30.e30.x", "W10.e30.x"] {
        assert!(matches!(validate(bad.as_bytes(), &keys, &p, NOW), Err(JwtError::Malformed(_))), "{bad}");
    }
    let long_kid = raw_token(json!({"alg": "EdDSA", "kid": "k".repeat(300)}), json!({}), b"x");
    assert!(matches!(validate(long_kid.as_bytes(), &keys, &p, NOW), Err(JwtError::Malformed(_))));
}

#[test]
fn messages_never_echo_the_token() {
    let keys = keyset(&[(Algorithm::EdDSA, Some("k"))]);
    let t = token(Algorithm::EdDSA, Some("k"), json!({"exp": 1}));
    let msg = check(&t, &keys, &Policy::default()).unwrap_err().to_string();
    for part in t.split('.') {
        assert!(!msg.contains(part), "{msg}");
    }
}

#[test]
fn pem_and_jwk_round_trip() {
    for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA] {
        let signing = key(alg);
        let from_pem = VerifyingKey::from_pem(&signing.public_pem()).unwrap();
        assert_eq!(from_pem, vec![signing.verifying_key()], "{alg}");
        let jwk = signing.verifying_key().to_jwk("kid-1");
        let back = VerifyingKey::from_jwk(&jwk).unwrap();
        assert_eq!(back.kid(), Some("kid-1"));
        assert_eq!(back.with_kid(None), signing.verifying_key());
    }
}

#[test]
fn pem_errors_are_clear() {
    assert!(VerifyingKey::from_pem("nothing here").unwrap_err().0.contains("no PEM block"));
    let private = sign::pem("PRIVATE KEY", &generate_pkcs8(Algorithm::EdDSA).unwrap());
    assert!(VerifyingKey::from_pem(&private).unwrap_err().0.contains("not a public key"));
    let truncated = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n";
    assert!(VerifyingKey::from_pem(truncated).is_err());
}

#[test]
fn jwks_skips_what_it_cannot_use() {
    let good = key(Algorithm::EdDSA).verifying_key().to_jwk("ed");
    let mut enc = key(Algorithm::RS256).verifying_key().to_jwk("enc");
    enc["use"] = "enc".into();
    let doc = json!({"keys": [good, enc, {"kty": "oct", "k": "c2VjcmV0"}, {"kty": "EC", "crv": "P-521"}]});
    let (keys, skipped) = parse_jwks(&serde_json::to_vec(&doc).unwrap()).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].kid(), Some("ed"));
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    assert!(parse_jwks(b"{}").is_err());
    assert!(parse_jwks(b"not json").is_err());
}

#[test]
fn keyset_caps_and_dedups() {
    let k = key(Algorithm::EdDSA).verifying_key();
    let (set, dropped) = KeySet::new((0..100).map(|i| k.clone().with_kid(Some(format!("k{}", i % 70)))));
    assert_eq!(set.len(), keys::MAX_KEYS);
    assert_eq!(dropped, 100 - keys::MAX_KEYS);
}

#[test]
fn dotted_claims() {
    let c = json!({"sub": "a", "realm_access": {"role": "analyst"}, "x.y": "flat"});
    let c = c.as_object().unwrap();
    assert_eq!(claim_at(c, "realm_access.role"), Some(&json!("analyst")));
    assert_eq!(claim_at(c, "x.y"), Some(&json!("flat")));
    assert_eq!(claim_at(c, "realm_access.missing"), None);
    assert_eq!(claim_at(c, "sub.deeper"), None);
}

proptest! {
    #[test]
    fn validate_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let keys = keyset(&[(Algorithm::EdDSA, Some("k"))]);
        let _ = validate(&bytes, &keys, &Policy::default(), NOW);
        let _ = peek_header(&bytes);
    }

    #[test]
    fn dotted_garbage_never_panics(parts in proptest::collection::vec("[A-Za-z0-9_-]{0,40}", 3)) {
        let keys = keyset(&[(Algorithm::EdDSA, Some("k"))]);
        let _ = validate(parts.join(".").as_bytes(), &keys, &Policy::default(), NOW);
    }
}
