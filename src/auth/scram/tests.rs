//! SCRAM tests: RFC 7677's recorded exchange replayed byte for byte on both
//! sides, client against server, and hostile input in every position.

use super::*;
use crate::auth::crypto::{b64_decode, b64_encode};
use crate::auth::ScramSecret;

/// RFC 7677 section 3: user "user", password "pencil".
mod rfc7677 {
    pub const PASSWORD: &str = "pencil";
    pub const USER: &str = "user";
    pub const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    pub const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    pub const SALT_B64: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    pub const ITERATIONS: u32 = 4096;
    pub const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    pub const SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
        s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    pub const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
        p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    pub const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
}

const PASSWORD: &str = "correct horse";
const CLIENT_NONCE: &str = "fixedclientnonce";
const SERVER_NONCE: &str = "fixedservernonce";

fn rfc_secret() -> ScramSecret {
    let salt = b64_decode(rfc7677::SALT_B64.as_bytes()).unwrap();
    ScramSecret::from_password(rfc7677::PASSWORD, &salt, rfc7677::ITERATIONS).unwrap()
}

/// A secret with few iterations, so that hundreds of exchanges stay fast.
fn cheap_secret(password: &str) -> ScramSecret {
    ScramSecret::from_password(password, b"0123456789abcdef", 16).unwrap()
}

fn password(p: &str) -> ScramCredential {
    ScramCredential::Password(p.to_owned())
}

/// Runs a whole exchange, stopping at the first error.
fn exchange(server: &mut ScramServer, client: &mut ScramClient) -> Result<ScramOutcome, AuthError> {
    let client_first = client.client_first();
    let server_first = server.client_first(&client_first)?;
    let client_final = client.server_first(&server_first)?;
    let outcome = server.client_final(&client_final)?;
    client.server_final(&outcome.server_final)?;
    Ok(outcome)
}

/// The four messages of a successful exchange with fixed nonces.
struct Recorded {
    client_first: Vec<u8>,
    server_first: Vec<u8>,
    client_final: Vec<u8>,
    server_final: Vec<u8>,
}

fn record() -> Recorded {
    let mut server = fixed_server();
    let mut client = fixed_client();
    let client_first = client.client_first();
    let server_first = server.client_first(&client_first).unwrap();
    let client_final = client.server_first(&server_first).unwrap();
    let server_final = server.client_final(&client_final).unwrap().server_final;
    client.server_final(&server_final).unwrap();
    Recorded { client_first, server_first, client_final, server_final }
}

fn fixed_server() -> ScramServer {
    ScramServer::with_nonce(&cheap_secret(PASSWORD), SERVER_NONCE)
}

fn fixed_client() -> ScramClient {
    ScramClient::with_nonce(password(PASSWORD), "", CLIENT_NONCE)
}

/// A server that has answered the recorded client-first-message.
fn server_awaiting_final(rec: &Recorded) -> ScramServer {
    let mut server = fixed_server();
    server.client_first(&rec.client_first).unwrap();
    server
}

/// A client that has sent client-first-message.
fn client_awaiting_first() -> ScramClient {
    let mut client = fixed_client();
    client.client_first();
    client
}

/// A client that has answered the recorded server-first-message.
fn client_awaiting_final(rec: &Recorded) -> ScramClient {
    let mut client = client_awaiting_first();
    client.server_first(&rec.server_first).unwrap();
    client
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Asserts an error message carries none of the exchange's secrets.
fn assert_no_secrets(err: &AuthError, secrets: &[&str]) {
    let shown = format!("{err} {err:?}");
    for secret in secrets {
        assert!(!shown.contains(secret), "{shown} leaks {secret}");
    }
}

#[test]
fn rfc7677_replays_byte_for_byte() {
    let secret = rfc_secret();
    let mut server = ScramServer::with_nonce(&secret, rfc7677::SERVER_NONCE);
    let mut client =
        ScramClient::with_nonce(password(rfc7677::PASSWORD), rfc7677::USER, rfc7677::CLIENT_NONCE);

    let client_first = client.client_first();
    assert_eq!(client_first, rfc7677::CLIENT_FIRST.as_bytes());
    let server_first = server.client_first(&client_first).unwrap();
    assert_eq!(server_first, rfc7677::SERVER_FIRST.as_bytes());
    let client_final = client.server_first(&server_first).unwrap();
    assert_eq!(client_final, rfc7677::CLIENT_FINAL.as_bytes());
    let outcome = server.client_final(&client_final).unwrap();
    assert_eq!(outcome.server_final, rfc7677::SERVER_FINAL.as_bytes());
    client.server_final(&outcome.server_final).unwrap();

    let salted = crypto::salted_password(
        rfc7677::PASSWORD.as_bytes(),
        &secret.salt,
        std::num::NonZeroU32::new(rfc7677::ITERATIONS).unwrap(),
    );
    assert_eq!(outcome.client_key, crypto::client_key(&salted));
}

#[test]
fn rfc7677_replays_with_recovered_keys() {
    let secret = rfc_secret();
    let mut server = ScramServer::with_nonce(&secret, rfc7677::SERVER_NONCE);
    let outcome = server
        .client_first(rfc7677::CLIENT_FIRST.as_bytes())
        .and_then(|_| server.client_final(rfc7677::CLIENT_FINAL.as_bytes()))
        .unwrap();

    let keys = ScramCredential::from_client_key(&secret, outcome.client_key);
    let mut client = ScramClient::with_nonce(keys, rfc7677::USER, rfc7677::CLIENT_NONCE);
    assert_eq!(client.client_first(), rfc7677::CLIENT_FIRST.as_bytes());
    let client_final = client.server_first(rfc7677::SERVER_FIRST.as_bytes()).unwrap();
    assert_eq!(client_final, rfc7677::CLIENT_FINAL.as_bytes());
    client.server_final(rfc7677::SERVER_FINAL.as_bytes()).unwrap();
}

#[test]
fn client_and_server_agree_with_random_nonces() {
    let secret = cheap_secret(PASSWORD);
    let mut server = ScramServer::new(&secret);
    let mut client = ScramClient::new(password(PASSWORD)).unwrap();
    let first = client.client_first();
    assert!(first.starts_with(b"n,,n=,r="));
    assert_eq!(first.len(), "n,,n=,r=".len() + 24);
    exchange(&mut server, &mut client).unwrap();
}

#[test]
fn recovered_keys_log_into_another_server_with_the_same_secret() {
    let secret = cheap_secret(PASSWORD);
    let outcome =
        exchange(&mut ScramServer::new(&secret), &mut ScramClient::new(password(PASSWORD)).unwrap()).unwrap();
    // The proxy logs into "PostgreSQL" (another server holding the secret).
    let keys = ScramCredential::from_client_key(&secret, outcome.client_key);
    exchange(&mut ScramServer::new(&secret), &mut ScramClient::new(keys).unwrap()).unwrap();
}

#[test]
fn saslprepped_password_matches() {
    let secret = cheap_secret("I\u{00AD}X");
    for typed in ["IX", "I\u{00AD}X", "\u{2168}"] {
        exchange(&mut ScramServer::new(&secret), &mut ScramClient::new(password(typed)).unwrap()).unwrap();
    }
}

#[test]
fn wrong_password_is_invalid_proof() {
    let secret = cheap_secret(PASSWORD);
    let err = exchange(&mut ScramServer::new(&secret), &mut ScramClient::new(password("wrong")).unwrap())
        .unwrap_err();
    assert_eq!(err, AuthError::InvalidProof);
    assert_no_secrets(&err, &[PASSWORD, "wrong"]);
}

#[test]
fn tampered_proof_is_invalid_proof() {
    let rec = record();
    let (head, proof) = split_proof(&rec.client_final);
    for bit in [0, 7, 100, 255] {
        let mut raw = b64_decode(proof).unwrap();
        raw[bit / 8] ^= 1 << (bit % 8);
        let tampered = concat(&[head, b64_encode(&raw).as_bytes()]);
        let err = server_awaiting_final(&rec).client_final(&tampered).unwrap_err();
        assert_eq!(err, AuthError::InvalidProof);
        assert_no_secrets(&err, &[PASSWORD, std::str::from_utf8(proof).unwrap()]);
    }
}

/// Splits client-final-message after `p=`.
fn split_proof(client_final: &[u8]) -> (&[u8], &[u8]) {
    let at = client_final.windows(3).position(|w| w == b",p=").unwrap() + 3;
    client_final.split_at(at)
}

#[test]
fn forged_server_signature_is_refused() {
    let rec = record();
    let forged = format!("v={}", b64_encode(&[0x5a; 32]));
    let err = client_awaiting_final(&rec).server_final(forged.as_bytes()).unwrap_err();
    assert_eq!(err, AuthError::InvalidServerSignature);
}

#[test]
fn server_without_the_password_cannot_pass_the_client_check() {
    // A server holding another password's keys with the same salt accepts
    // nothing: it cannot even verify the proof, let alone sign.
    let rec = record();
    let mut impostor = ScramServer::with_nonce(&cheap_secret("other"), SERVER_NONCE);
    impostor.client_first(&rec.client_first).unwrap();
    assert_eq!(impostor.client_final(&rec.client_final).unwrap_err(), AuthError::InvalidProof);
}

#[test]
fn stale_keys_are_refused_with_a_clear_error() {
    let secret = cheap_secret(PASSWORD);
    let outcome =
        exchange(&mut ScramServer::new(&secret), &mut ScramClient::new(password(PASSWORD)).unwrap()).unwrap();
    let keys = ScramCredential::from_client_key(&secret, outcome.client_key);

    let resalted = ScramSecret::from_password(PASSWORD, b"another salt", 16).unwrap();
    let err =
        exchange(&mut ScramServer::new(&resalted), &mut ScramClient::new(keys.clone()).unwrap()).unwrap_err();
    assert_eq!(err, AuthError::StaleSecret { what: "salt" });
    assert!(err.to_string().contains("pg_authid"), "{err}");

    let more_iterations = ScramSecret::from_password(PASSWORD, &secret.salt, 17).unwrap();
    let err =
        exchange(&mut ScramServer::new(&more_iterations), &mut ScramClient::new(keys).unwrap()).unwrap_err();
    assert_eq!(err, AuthError::StaleSecret { what: "iteration count" });
}

#[test]
fn gs2_flag_y_is_accepted_and_bound() {
    let secret = cheap_secret(PASSWORD);
    let mut server = ScramServer::with_nonce(&secret, SERVER_NONCE);
    let server_first = server.client_first(b"y,,n=,r=abc").unwrap();
    let client_final =
        signed_client_final(&secret, b"n=,r=abc", &server_first, b"c=eSws,r=abcfixedservernonce");
    server.client_final(&client_final).unwrap();

    // "y,," with c=biws does not repeat the header.
    let mut server = ScramServer::with_nonce(&secret, SERVER_NONCE);
    let server_first = server.client_first(b"y,,n=,r=abc").unwrap();
    let client_final =
        signed_client_final(&secret, b"n=,r=abc", &server_first, b"c=biws,r=abcfixedservernonce");
    assert_eq!(server.client_final(&client_final).unwrap_err(), AuthError::ChannelBindingMismatch);
}

/// client-final-message with a correct proof for PASSWORD over any
/// client-final-message-without-proof, built from the RFC's formulas.
fn signed_client_final(
    secret: &ScramSecret,
    client_first_bare: &[u8],
    server_first: &[u8],
    without_proof: &[u8],
) -> Vec<u8> {
    let auth_message = [client_first_bare, b",", server_first, b",", without_proof];
    let salted = crypto::salted_password(
        PASSWORD.as_bytes(),
        &secret.salt,
        std::num::NonZeroU32::new(secret.iterations).unwrap(),
    );
    let client_key = crypto::client_key(&salted);
    let signature = crypto::hmac_sha256(&crypto::sha256(&client_key), &auth_message);
    let proof = b64_encode(&crypto::xor(&client_key, &signature));
    concat(&[without_proof, b",p=", proof.as_bytes()])
}

#[test]
fn channel_binding_authzid_and_mandatory_extensions_are_refused() {
    let cases: [(&[u8], AuthError); 4] = [
        (b"p=tls-server-end-point,,n=,r=abc", AuthError::ChannelBindingUnsupported),
        (b"n,a=admin,n=,r=abc", AuthError::AuthzidUnsupported),
        (b"n,,m=ext,n=,r=abc", AuthError::MandatoryExtension { message: CLIENT_FIRST }),
        (b"n,,n=,r=", AuthError::Malformed { message: CLIENT_FIRST, what: "bad nonce" }),
    ];
    for (message, expected) in cases {
        assert_eq!(fixed_server().client_first(message).unwrap_err(), expected);
    }
    let err = client_awaiting_first().server_first(b"m=ext,r=fixedclientnoncex,s=c2FsdA==,i=16").unwrap_err();
    assert_eq!(err, AuthError::MandatoryExtension { message: SERVER_FIRST });
}

#[test]
fn user_name_and_extensions_in_client_first_are_ignored() {
    let rec = record();
    let mut server = fixed_server();
    let server_first = server.client_first(b"n,,n=someone=2Celse,r=fixedclientnonce,x=ext").unwrap();
    assert_eq!(server_first, rec.server_first);
}

#[test]
fn extensions_before_the_proof_are_signed_and_accepted() {
    let secret = cheap_secret(PASSWORD);
    let mut server = ScramServer::with_nonce(&secret, SERVER_NONCE);
    let server_first = server.client_first(b"n,,n=,r=abc").unwrap();
    let client_final =
        signed_client_final(&secret, b"n=,r=abc", &server_first, b"c=biws,r=abcfixedservernonce,x=ext");
    server.client_final(&client_final).unwrap();
}

#[test]
fn nonces_must_continue_the_exchange() {
    let rec = record();
    let wrong_nonce = String::from_utf8(rec.client_final.clone()).unwrap().replacen(
        "fixedservernonce",
        "fixedservernoncf",
        1,
    );
    assert_eq!(
        server_awaiting_final(&rec).client_final(wrong_nonce.as_bytes()).unwrap_err(),
        AuthError::NonceMismatch { message: CLIENT_FINAL }
    );
    for server_first in [
        "r=otherclientnonceX,s=c2FsdA==,i=16",
        "r=fixedclientnonce,s=c2FsdA==,i=16",
        "r=fixedclientnonc,s=c2FsdA==,i=16",
    ] {
        assert_eq!(
            client_awaiting_first().server_first(server_first.as_bytes()).unwrap_err(),
            AuthError::NonceMismatch { message: SERVER_FIRST },
            "{server_first}"
        );
    }
}

#[test]
fn iteration_counts_out_of_range_are_refused() {
    for (count, iterations) in [("0", 0u64), ("10000001", 10_000_001), ("4294967296", 1 << 32)] {
        let server_first = format!("r=fixedclientnonceX,s=c2FsdA==,i={count}");
        assert_eq!(
            client_awaiting_first().server_first(server_first.as_bytes()).unwrap_err(),
            AuthError::IterationsOutOfRange { iterations, max: MAX_SCRAM_ITERATIONS_FOR_TESTS }
        );
    }
    for count in ["", "-1", "+5", " 5", "5 ", "99999999999999999999999", "0x10"] {
        let server_first = format!("r=fixedclientnonceX,s=c2FsdA==,i={count}");
        assert!(matches!(
            client_awaiting_first().server_first(server_first.as_bytes()),
            Err(AuthError::Malformed { .. })
        ));
    }
}

const MAX_SCRAM_ITERATIONS_FOR_TESTS: u32 = crate::auth::MAX_SCRAM_ITERATIONS;

#[test]
fn server_error_is_reported_by_name_and_sanitized() {
    let rec = record();
    assert_eq!(
        client_awaiting_final(&rec).server_final(b"e=invalid-proof").unwrap_err(),
        AuthError::ServerRefused("invalid-proof".into())
    );
    let long = concat(&[b"e=bad\x1b[2J\n", &[b'x'; 500]]);
    let AuthError::ServerRefused(reason) = client_awaiting_final(&rec).server_final(&long).unwrap_err()
    else {
        panic!("expected ServerRefused");
    };
    assert!(reason.starts_with("bad[2Jx") && reason.len() == 64, "{reason}");
}

#[test]
fn steps_out_of_order_fail() {
    let rec = record();
    let out_of_order = |step| AuthError::OutOfOrder { step };

    let mut server = fixed_server();
    assert_eq!(server.client_final(&rec.client_final).unwrap_err(), out_of_order("client_final"));
    // The failed call ended the exchange.
    assert_eq!(server.client_first(&rec.client_first).unwrap_err(), out_of_order("client_first"));

    let mut server = server_awaiting_final(&rec);
    assert_eq!(server.client_first(&rec.client_first).unwrap_err(), out_of_order("client_first"));

    let mut client = fixed_client();
    assert_eq!(client.server_first(&rec.server_first).unwrap_err(), out_of_order("server_first"));
    let mut client = fixed_client();
    assert_eq!(client.server_final(&rec.server_final).unwrap_err(), out_of_order("server_final"));
    let mut client = client_awaiting_first();
    assert_eq!(client.server_final(&rec.server_final).unwrap_err(), out_of_order("server_final"));
}

#[test]
fn finished_or_failed_exchanges_accept_nothing_more() {
    let rec = record();
    let mut server = server_awaiting_final(&rec);
    server.client_final(&rec.client_final).unwrap();
    assert!(server.client_final(&rec.client_final).is_err());
    assert!(server.client_first(&rec.client_first).is_err());

    let mut client = client_awaiting_final(&rec);
    client.server_final(&rec.server_final).unwrap();
    assert!(client.server_final(&rec.server_final).is_err());
    assert!(client.server_first(&rec.server_first).is_err());

    // After a failure, even the right message is refused: no retry within an
    // exchange.
    let mut server = server_awaiting_final(&rec);
    assert!(server.client_final(b"c=biws").is_err());
    assert!(server.client_final(&rec.client_final).is_err());
    let mut client = client_awaiting_final(&rec);
    assert!(client.server_final(b"v=").is_err());
    assert!(client.server_final(&rec.server_final).is_err());
}

#[test]
fn client_first_rerenders_without_moving_back() {
    let rec = record();
    let mut client = client_awaiting_final(&rec);
    assert_eq!(client.client_first(), rec.client_first);
    client.server_final(&rec.server_final).unwrap();
}

#[test]
fn mock_exchange_looks_real_and_always_fails() {
    let key = [9u8; 32];
    let mut server = ScramServer::mock("ghost", &key);
    let mut client = ScramClient::new(password("anything")).unwrap();
    let server_first = server.client_first(&client.client_first()).unwrap();
    let client_final = client.server_first(&server_first).unwrap();
    assert_eq!(server.client_final(&client_final).unwrap_err(), AuthError::InvalidProof);

    let salt_of = |user: &str| {
        let reply = ScramServer::mock(user, &key).client_first(b"n,,n=,r=abc").unwrap();
        let reply = String::from_utf8(reply).unwrap();
        reply.split(',').nth(1).unwrap().to_owned()
    };
    assert_eq!(salt_of("ghost"), salt_of("ghost"));
    assert_ne!(salt_of("ghost"), salt_of("phantom"));
    assert_eq!(salt_of("ghost").len(), "s=".len() + 24);
}

#[test]
fn oversized_messages_are_refused() {
    let huge = concat(&[b"n,,n=,r=", &[b'a'; MAX_SCRAM_MESSAGE_BYTES]]);
    assert!(matches!(
        fixed_server().client_first(&huge),
        Err(AuthError::Malformed { what: "message too long", .. })
    ));
}

/// Every truncation and single-byte change of each recorded message, and
/// junk: never a panic, and a changed final message never succeeds.
#[test]
fn malformed_messages_in_every_position_fail_without_panic() {
    let rec = record();
    for variant in variants(&rec.client_first) {
        let _ = fixed_server().client_first(&variant);
    }
    for variant in variants(&rec.server_first) {
        let _ = client_awaiting_first().server_first(&variant);
    }
    for variant in variants(&rec.client_final) {
        let result = server_awaiting_final(&rec).client_final(&variant);
        assert!(result.is_err(), "accepted {:?}", String::from_utf8_lossy(&variant));
    }
    for variant in variants(&rec.server_final) {
        let result = client_awaiting_final(&rec).server_final(&variant);
        assert!(result.is_err(), "accepted {:?}", String::from_utf8_lossy(&variant));
    }
}

#[test]
fn junk_input_never_panics() {
    let rec = record();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..2000 {
        let junk = pseudo_random_message(&mut seed);
        let _ = fixed_server().client_first(&junk);
        let _ = server_awaiting_final(&rec).client_final(&junk);
        let _ = client_awaiting_first().server_first(&junk);
        assert!(client_awaiting_final(&rec).server_final(&junk).is_err());
    }
}

/// Proper prefixes, the message with one byte replaced by each of a few
/// troublesome bytes, and the message with junk appended.
fn variants(message: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = (0..message.len()).map(|n| message[..n].to_vec()).collect();
    for at in 0..message.len() {
        for byte in [0x00, b',', b'=', b'x', b' ', 0xff] {
            if message[at] != byte {
                let mut changed = message.to_vec();
                changed[at] = byte;
                out.push(changed);
            }
        }
    }
    for suffix in [&b","[..], b",x=1", b"\0", b"=="] {
        out.push(concat(&[message, suffix]));
    }
    out
}

/// Junk made mostly of SCRAM's own punctuation and attribute names, so it
/// reaches deep into the parsers.
fn pseudo_random_message(seed: &mut u64) -> Vec<u8> {
    const ALPHABET: &[u8] = b"nyparcsivem=,ABCabc019+/=\0\xff";
    let mut next = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    let len = (next() % 64) as usize;
    (0..len).map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize]).collect()
}

#[test]
fn debug_output_redacts_keys() {
    let rec = record();
    let secret = cheap_secret(PASSWORD);
    let outcome = server_awaiting_final(&rec).client_final(&rec.client_final).unwrap();
    let client_key = b64_encode(&outcome.client_key);
    let keys = ScramCredential::from_client_key(&secret, outcome.client_key);
    let shown = format!(
        "{outcome:?} {keys:?} {:?} {:?} {:?}",
        password(PASSWORD),
        client_awaiting_final(&rec),
        server_awaiting_final(&rec),
    );
    for secret_text in [
        PASSWORD.to_owned(),
        client_key,
        b64_encode(&secret.server_key),
        b64_encode(&secret.stored_key),
        format!("{:?}", outcome.client_key),
    ] {
        assert!(!shown.contains(&secret_text), "{shown} leaks {secret_text}");
    }
}
