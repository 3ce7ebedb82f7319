//! Reading SCRAM messages: the GS2 header and `name=value,...` attribute
//! lists (RFC 5802 section 7), over bytes.
//!
//! Every read is bounds-checked and every failure is an
//! [`AuthError::Malformed`] naming the message and the field, so a hostile
//! peer gets an error, never a panic.

use super::{AuthError, MAX_SCRAM_MESSAGE_BYTES};

/// The channel-binding flag a client sent in its GS2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChannelBinding {
    /// `n`: the client does not support channel binding.
    NotSupported,
    /// `y`: the client supports it but thinks the server does not. Since we
    /// never offer SCRAM-SHA-256-PLUS that is the truth, not a downgrade.
    NotOffered,
}

impl ChannelBinding {
    /// The GS2 header this flag stands for; client-final's `c=` must repeat
    /// it, base64-encoded.
    pub(super) fn gs2_header(self) -> &'static [u8] {
        match self {
            ChannelBinding::NotSupported => b"n,,",
            ChannelBinding::NotOffered => b"y,,",
        }
    }
}

/// Refuses a message longer than [`MAX_SCRAM_MESSAGE_BYTES`].
pub(super) fn check_len(data: &[u8], message: &'static str) -> Result<(), AuthError> {
    if data.len() > MAX_SCRAM_MESSAGE_BYTES {
        return Err(AuthError::Malformed { message, what: "message too long" });
    }
    Ok(())
}

/// Splits client-first-message into its GS2 flag and client-first-message-bare.
pub(super) fn split_gs2_header(data: &[u8]) -> Result<(ChannelBinding, &[u8]), AuthError> {
    let malformed = |what| AuthError::Malformed { message: super::CLIENT_FIRST, what };
    let flag = match data.first() {
        Some(b'n') => ChannelBinding::NotSupported,
        Some(b'y') => ChannelBinding::NotOffered,
        Some(b'p') => return Err(AuthError::ChannelBindingUnsupported),
        _ => return Err(malformed("bad channel-binding flag")),
    };
    if data.get(1) != Some(&b',') {
        return Err(malformed("bad channel-binding flag"));
    }
    match data.get(2) {
        Some(b',') => Ok((flag, &data[3..])),
        Some(b'a') => Err(AuthError::AuthzidUnsupported),
        _ => Err(malformed("bad authorization identity")),
    }
}

/// A nonce is printable ASCII other than `,` (RFC 5802 `printable`), and
/// not empty.
pub(super) fn printable_nonce(value: &[u8]) -> Option<&str> {
    if value.is_empty() || !value.iter().all(|&b| (0x21..=0x7e).contains(&b) && b != b',') {
        return None;
    }
    std::str::from_utf8(value).ok()
}

/// A cursor over `name=value` attributes separated by commas.
pub(super) struct Attributes<'a> {
    data: &'a [u8],
    /// What is left to read; `None` once the last attribute was read.
    /// `Some(b"")` after a trailing comma, which the next read refuses.
    rest: Option<&'a [u8]>,
    message: &'static str,
}

impl<'a> Attributes<'a> {
    pub(super) fn new(data: &'a [u8], message: &'static str) -> Self {
        Attributes { data, rest: Some(data), message }
    }

    /// The name of the next attribute, if any.
    pub(super) fn peek(&self) -> Option<u8> {
        self.rest.and_then(|rest| rest.first().copied())
    }

    /// How many bytes of the message were read, separators included.
    pub(super) fn consumed(&self) -> usize {
        self.data.len() - self.rest.map_or(0, <[u8]>::len)
    }

    /// Reads the next attribute, which must be called `name`; `what` names
    /// it in the error otherwise.
    pub(super) fn expect(&mut self, name: u8, what: &'static str) -> Result<&'a [u8], AuthError> {
        match self.next_any() {
            Ok((found, value)) if found == name => Ok(value),
            _ => Err(self.malformed(what)),
        }
    }

    /// Reads the next attribute, whatever its name (extensions).
    pub(super) fn next_any(&mut self) -> Result<(u8, &'a [u8]), AuthError> {
        let rest = self.rest.ok_or(self.malformed("missing attribute"))?;
        let (name, tail) = match rest {
            [name, b'=', tail @ ..] if name.is_ascii_alphabetic() => (*name, tail),
            _ => return Err(self.malformed("bad attribute")),
        };
        match tail.iter().position(|&b| b == b',') {
            Some(comma) => {
                self.rest = Some(&tail[comma + 1..]);
                Ok((name, &tail[..comma]))
            }
            None => {
                self.rest = None;
                Ok((name, tail))
            }
        }
    }

    /// Succeeds only if every attribute was read.
    pub(super) fn finish(&self) -> Result<(), AuthError> {
        match self.rest {
            None => Ok(()),
            Some(_) => Err(self.malformed("unexpected data at end")),
        }
    }

    pub(super) fn malformed(&self, what: &'static str) -> AuthError {
        AuthError::Malformed { message: self.message, what }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_attributes_and_tracks_position() {
        let mut attrs = Attributes::new(b"r=abc,s=,x=1", "test");
        assert_eq!(attrs.peek(), Some(b'r'));
        assert_eq!(attrs.expect(b'r', "r").unwrap(), b"abc");
        assert_eq!(attrs.consumed(), 6);
        assert_eq!(attrs.expect(b's', "s").unwrap(), b"");
        assert!(attrs.finish().is_err());
        assert_eq!(attrs.next_any().unwrap(), (b'x', &b"1"[..]));
        assert_eq!(attrs.consumed(), 12);
        assert!(attrs.finish().is_ok());
        assert!(attrs.next_any().is_err());
    }

    #[test]
    fn refuses_bad_attributes() {
        for bad in [&b""[..], b"r", b"=x", b"1=x", b"rr=x", b",r=x"] {
            assert!(Attributes::new(bad, "test").next_any().is_err(), "{bad:?}");
        }
        let mut trailing = Attributes::new(b"r=x,", "test");
        assert!(trailing.next_any().is_ok());
        assert!(trailing.finish().is_err());
        assert!(trailing.next_any().is_err());
    }

    #[test]
    fn splits_gs2_header() {
        let (flag, bare) = split_gs2_header(b"n,,n=,r=x").unwrap();
        assert_eq!((flag, bare), (ChannelBinding::NotSupported, &b"n=,r=x"[..]));
        let (flag, _) = split_gs2_header(b"y,,n=,r=x").unwrap();
        assert_eq!(flag, ChannelBinding::NotOffered);
        assert_eq!(
            split_gs2_header(b"p=tls-server-end-point,,n=,r=x"),
            Err(AuthError::ChannelBindingUnsupported)
        );
        assert_eq!(split_gs2_header(b"n,a=bob,n=,r=x"), Err(AuthError::AuthzidUnsupported));
        for bad in [&b""[..], b"n", b"n,", b"x,,n=,r=x", b"nn,,", b"n,x,"] {
            assert!(split_gs2_header(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nonce_must_be_printable() {
        assert_eq!(printable_nonce(b"abc~!"), Some("abc~!"));
        for bad in [&b""[..], b"a b", b"a\x7f", b"\xc3\xa9", b"a,b"] {
            assert_eq!(printable_nonce(bad), None, "{bad:?}");
        }
    }
}
