//! The few DER shapes public keys come in: SubjectPublicKeyInfo (PEM
//! `PUBLIC KEY`) and PKCS#1 `RSAPublicKey` (PEM `RSA PUBLIC KEY`), plus the
//! writer for SubjectPublicKeyInfo that `pgwarden keygen` needs.
//!
//! A reader, not a parser of everything ASN.1: definite lengths only, every
//! length checked against what is left, nothing read past a bound.

/// Object identifiers (DER contents, without tag and length) we recognise.
pub const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
pub const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
pub const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
pub const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
pub const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_NULL: u8 = 0x05;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

/// A cursor over DER bytes.
pub struct Der<'a> {
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    pub fn new(bytes: &'a [u8]) -> Der<'a> {
        Der { rest: bytes }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next element's tag and contents.
    pub fn any(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.rest.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            // Lengths over 4 bytes, and the indefinite form (n == 0), are not DER
            // a public key needs.
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let mut len = 0usize;
            for &b in &rest[..n] {
                len = (len << 8) | usize::from(b);
            }
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        let (contents, after) = rest.split_at(len);
        self.rest = after;
        Some((tag, contents))
    }

    /// The next element, which must carry `tag`.
    pub fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.any()? {
            (t, contents) if t == tag => Some(contents),
            _ => None,
        }
    }

    pub fn sequence(&mut self) -> Option<Der<'a>> {
        self.expect(TAG_SEQUENCE).map(Der::new)
    }

    /// An unsigned INTEGER's magnitude, without the sign-padding zero byte.
    pub fn unsigned_integer(&mut self) -> Option<&'a [u8]> {
        let bytes = self.expect(TAG_INTEGER)?;
        match bytes {
            [] => None,
            [first, ..] if first & 0x80 != 0 => None, // negative
            [0, rest @ ..] if !rest.is_empty() => Some(rest),
            _ => Some(bytes),
        }
    }
}

/// The algorithm identifier and key bits of a SubjectPublicKeyInfo.
pub struct Spki<'a> {
    pub algorithm: &'a [u8],
    /// The parameters element's tag and contents (a curve OID for EC keys).
    pub parameters: Option<(u8, &'a [u8])>,
    pub key: &'a [u8],
}

pub fn parse_spki(der: &[u8]) -> Option<Spki<'_>> {
    let mut outer = Der::new(der);
    let mut spki = outer.sequence()?;
    if !outer.is_empty() {
        return None;
    }
    let mut alg = spki.sequence()?;
    let algorithm = alg.expect(TAG_OID)?;
    let parameters = if alg.is_empty() { None } else { Some(alg.any()?) };
    if !alg.is_empty() {
        return None;
    }
    let bits = spki.expect(TAG_BIT_STRING)?;
    // The first byte counts unused bits; keys are whole bytes.
    let key = match bits.split_first()? {
        (0, key) => key,
        _ => return None,
    };
    spki.is_empty().then_some(Spki { algorithm, parameters, key })
}

/// Whether a parameters element is the curve `oid`.
pub fn is_curve(parameters: Option<(u8, &[u8])>, oid: &[u8]) -> bool {
    matches!(parameters, Some((TAG_OID, p)) if p == oid)
}

/// RSA parameters must be absent or NULL.
pub fn is_null_or_absent(parameters: Option<(u8, &[u8])>) -> bool {
    matches!(parameters, None | Some((TAG_NULL, [])))
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
pub fn parse_rsa_public_key(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut outer = Der::new(der);
    let mut seq = outer.sequence()?;
    let n = seq.unsigned_integer()?;
    let e = seq.unsigned_integer()?;
    (seq.is_empty() && outer.is_empty()).then_some((n, e))
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn push_element(out: &mut Vec<u8>, tag: u8, contents: &[u8]) {
    out.push(tag);
    push_len(out, contents.len());
    out.extend_from_slice(contents);
}

/// Parameters of an AlgorithmIdentifier, for [`encode_spki`].
pub enum Params<'a> {
    Absent,
    /// RSA keys carry an explicit NULL.
    Null,
    /// EC keys name their curve.
    Curve(&'a [u8]),
}

/// A SubjectPublicKeyInfo for an algorithm OID, its parameters and the key.
pub fn encode_spki(algorithm: &[u8], params: Params<'_>, key: &[u8]) -> Vec<u8> {
    let mut alg = Vec::new();
    push_element(&mut alg, TAG_OID, algorithm);
    match params {
        Params::Absent => {}
        Params::Null => push_element(&mut alg, TAG_NULL, &[]),
        Params::Curve(oid) => push_element(&mut alg, TAG_OID, oid),
    }
    let mut bits = Vec::with_capacity(key.len() + 1);
    bits.push(0);
    bits.extend_from_slice(key);
    let mut body = Vec::new();
    push_element(&mut body, TAG_SEQUENCE, &alg);
    push_element(&mut body, TAG_BIT_STRING, &bits);
    let mut out = Vec::new();
    push_element(&mut out, TAG_SEQUENCE, &body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_round_trips() {
        let key = [4u8; 65];
        let der = encode_spki(OID_EC_PUBLIC_KEY, Params::Curve(OID_P256), &key);
        let spki = parse_spki(&der).unwrap();
        assert_eq!(spki.algorithm, OID_EC_PUBLIC_KEY);
        assert!(is_curve(spki.parameters, OID_P256));
        assert_eq!(spki.key, &key[..]);
    }

    #[test]
    fn long_lengths_round_trip() {
        let key = vec![7u8; 300];
        let der = encode_spki(OID_ED25519, Params::Absent, &key);
        assert_eq!(parse_spki(&der).unwrap().key, &key[..]);
    }

    #[test]
    fn truncated_and_trailing_bytes_are_refused() {
        let der = encode_spki(OID_ED25519, Params::Absent, &[1u8; 32]);
        for cut in 0..der.len() {
            assert!(parse_spki(&der[..cut]).is_none(), "cut at {cut}");
        }
        let mut long = der.clone();
        long.push(0);
        assert!(parse_spki(&long).is_none());
    }

    #[test]
    fn rsa_integers_drop_the_sign_byte_and_refuse_negatives() {
        // SEQUENCE { INTEGER 0x00 0x80 0x01, INTEGER 0x01 0x00 0x01 }
        let der = [0x30, 0x0a, 0x02, 0x03, 0x00, 0x80, 0x01, 0x02, 0x03, 0x01, 0x00, 0x01];
        let (n, e) = parse_rsa_public_key(&der).unwrap();
        assert_eq!(n, &[0x80, 0x01]);
        assert_eq!(e, &[0x01, 0x00, 0x01]);
        let negative = [0x30, 0x06, 0x02, 0x01, 0x80, 0x02, 0x01, 0x03];
        assert!(parse_rsa_public_key(&negative).is_none());
    }
}
