//! The untagged first packet of a connection: StartupMessage, SSLRequest,
//! GSSENCRequest or CancelRequest. All four share one layout (Int32 length,
//! Int32 code) and Postgres caps it at [`MAX_STARTUP_PACKET_LEN`] bytes; the
//! cap is checked on the length field, before the body is read.

use super::frame::{Reader, Writer};
use super::{
    ProtocolError, CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, MAX_STARTUP_PACKET_LEN, SSL_REQUEST_CODE,
};

/// A decoded first packet. Parameter names and values borrow the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket<'a> {
    /// A StartupMessage: protocol version and `name=value` parameters
    /// (user, database, options, application_name, ...).
    Startup {
        major: u16,
        minor: u16,
        params: Vec<(&'a str, &'a str)>,
    },
    SslRequest,
    GssEncRequest,
    /// A CancelRequest carrying the BackendKeyData the client was given.
    Cancel {
        pid: i32,
        key: i32,
    },
}

/// Decodes the first packet at the start of `buf`.
///
/// `Ok(None)` until the whole packet is there. A length under 8 or over
/// [`MAX_STARTUP_PACKET_LEN`] is an error as soon as the length is readable.
pub fn decode(buf: &[u8]) -> Result<Option<(StartupPacket<'_>, usize)>, ProtocolError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(ProtocolError::BadLength { tag: 0, len });
    }
    if len as u32 > MAX_STARTUP_PACKET_LEN {
        return Err(ProtocolError::TooLarge {
            tag: 0,
            len: len as usize,
            max: MAX_STARTUP_PACKET_LEN as usize,
        });
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let mut r = Reader::new(0, &buf[4..len]);
    let code = r.u32("request code")?;
    let packet = match code {
        SSL_REQUEST_CODE => StartupPacket::SslRequest,
        GSSENC_REQUEST_CODE => StartupPacket::GssEncRequest,
        CANCEL_REQUEST_CODE => {
            let pid = r.i32("cancel process id")?;
            let key = r.i32("cancel key")?;
            StartupPacket::Cancel { pid, key }
        }
        _ => decode_startup_params(code, &mut r)?,
    };
    if !matches!(packet, StartupPacket::Startup { .. }) {
        r.finish("request length")?;
    }
    Ok(Some((packet, len)))
}

fn decode_startup_params<'a>(code: u32, r: &mut Reader<'a>) -> Result<StartupPacket<'a>, ProtocolError> {
    let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
    if major != 3 {
        return Err(ProtocolError::UnsupportedVersion { major, minor });
    }
    let mut params = Vec::new();
    loop {
        let name = r.cstr_utf8("parameter name")?;
        if name.is_empty() {
            break;
        }
        let value = r.cstr_utf8("parameter value")?;
        params.push((name, value));
    }
    r.finish("startup packet terminator")?;
    Ok(StartupPacket::Startup { major, minor, params })
}

/// Encodes a StartupMessage for protocol 3.0 with `params`.
pub fn encode_startup(out: &mut Vec<u8>, params: &[(&str, &str)]) {
    let mut w = Writer::untagged(out);
    w.u32(super::PROTOCOL_3_0);
    for (k, v) in params {
        w.cstr(k.as_bytes()).cstr(v.as_bytes());
    }
    w.u8(0);
    w.finish();
}

/// Encodes an SSLRequest.
pub fn encode_ssl_request(out: &mut Vec<u8>) {
    let mut w = Writer::untagged(out);
    w.u32(SSL_REQUEST_CODE);
    w.finish();
}

/// Encodes a CancelRequest.
pub fn encode_cancel(out: &mut Vec<u8>, pid: i32, key: i32) {
    let mut w = Writer::untagged(out);
    w.u32(CANCEL_REQUEST_CODE).i32(pid).i32(key);
    w.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_round_trips_and_prefixes_are_incomplete() {
        let mut b = Vec::new();
        encode_startup(&mut b, &[("user", "app"), ("database", "db")]);
        let (p, n) = decode(&b).unwrap().unwrap();
        assert_eq!(n, b.len());
        assert_eq!(
            p,
            StartupPacket::Startup { major: 3, minor: 0, params: vec![("user", "app"), ("database", "db")] }
        );
        for i in 0..b.len() {
            assert_eq!(decode(&b[..i]).unwrap(), None, "prefix {i}");
        }
    }

    #[test]
    fn requests_round_trip() {
        let mut b = Vec::new();
        encode_ssl_request(&mut b);
        assert_eq!(decode(&b).unwrap().unwrap().0, StartupPacket::SslRequest);
        b.clear();
        encode_cancel(&mut b, 7, -9);
        assert_eq!(decode(&b).unwrap().unwrap().0, StartupPacket::Cancel { pid: 7, key: -9 });
    }

    #[test]
    fn oversize_and_short_lengths_fail_before_the_body() {
        assert!(decode(&10_001i32.to_be_bytes()).is_err());
        assert!(decode(&(-1i32).to_be_bytes()).is_err());
        assert!(decode(&4i32.to_be_bytes()).is_err());
    }

    #[test]
    fn protocol_2_is_refused_and_garbage_never_panics() {
        let mut b = Vec::new();
        let mut w = Writer::untagged(&mut b);
        w.u32(2 << 16).u8(0);
        w.finish();
        assert!(matches!(decode(&b), Err(ProtocolError::UnsupportedVersion { major: 2, .. })));
        let mut x: u32 = 1;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let len = (x % 64) as usize;
            let mut g: Vec<u8> = (0..len).map(|i| (x >> (i % 24)) as u8).collect();
            if g.len() >= 4 {
                g[..4].copy_from_slice(&(len as i32).to_be_bytes());
            }
            let _ = decode(&g);
        }
    }
}
