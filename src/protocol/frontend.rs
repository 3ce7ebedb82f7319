//! Frontend messages: everything a client sends after the startup packet
//! (simple and extended query, COPY, the function-call sub-protocol, the
//! authentication responses), decoded into a borrowed enum and encoded back.
//!
//! Decoding borrows every string and value from the input buffer; only lists
//! (parameter types, format codes, values) are collected into `Vec`s, and a
//! list is never sized from an untrusted count before the bytes behind that
//! count have been seen. Text is `&[u8]`, not `&str`: the client encoding
//! need not be UTF-8, and a proxy must relay it byte for byte.
//!
//! The codec is as strict as the server: a missing field or trailing bytes is
//! [`ProtocolError::Malformed`], an unknown tag [`ProtocolError::UnexpectedTag`].
//!
//! List counts are read as *unsigned* 16-bit integers. The documentation says
//! Int16, but the server (`pq_getmsgint(msg, 2)`) and libpq read them
//! unsigned, and libpq since PostgreSQL 14 sends up to 65535 parameters: a
//! signed reading would refuse valid clients. So these counts cannot be
//! negative.

use std::fmt;

use super::frame::{self, Reader, Writer};
use super::ProtocolError;

/// `kind` of a Describe or Close that targets a prepared statement.
pub const KIND_STATEMENT: u8 = b'S';
/// `kind` of a Describe or Close that targets a portal.
pub const KIND_PORTAL: u8 = b'P';

/// One message from the client. Strings are borrowed without their NUL.
#[derive(Clone, PartialEq, Eq)]
pub enum FrontendMessage<'a> {
    /// 'Q': a simple-protocol query string (may hold several statements).
    Query(&'a [u8]),
    /// 'P': prepare `query` as statement `name` (empty: the unnamed one).
    /// A type OID of 0 leaves the parameter's type to the server.
    Parse { name: &'a [u8], query: &'a [u8], param_types: Vec<u32> },
    /// 'B': bind `params` to `statement`, creating `portal`.
    Bind {
        portal: &'a [u8],
        statement: &'a [u8],
        param_formats: Vec<i16>,
        params: Vec<Option<&'a [u8]>>,
        result_formats: Vec<i16>,
    },
    /// 'D': describe a statement ([`KIND_STATEMENT`]) or portal ([`KIND_PORTAL`]).
    Describe { kind: u8, name: &'a [u8] },
    /// 'E': run `portal`; `max_rows` 0 means no limit.
    Execute { portal: &'a [u8], max_rows: i32 },
    /// 'S': end of an extended-protocol batch; the server answers ReadyForQuery.
    Sync,
    /// 'H': ask the server to send what it has buffered.
    Flush,
    /// 'C': close a statement ([`KIND_STATEMENT`]) or portal ([`KIND_PORTAL`]).
    Close { kind: u8, name: &'a [u8] },
    /// 'd': COPY payload.
    CopyData(&'a [u8]),
    /// 'c': the client finished sending COPY data.
    CopyDone,
    /// 'f': the client aborts COPY FROM STDIN with this error message.
    CopyFail(&'a [u8]),
    /// 'F': the legacy function-call sub-protocol.
    FunctionCall { oid: u32, arg_formats: Vec<i16>, args: Vec<Option<&'a [u8]>>, result_format: i16 },
    /// 'X': the client is closing the connection.
    Terminate,
    /// 'p': the raw body of a PasswordMessage, SASLInitialResponse,
    /// SASLResponse or GSSResponse. They share one tag, and which one it is
    /// depends on the authentication exchange in progress, so the caller
    /// decodes the body with [`decode_password`] or [`decode_sasl_initial`]
    /// (a SASLResponse or GSS token is the raw body itself).
    /// Its `Debug` output is redacted: the body may be a password or a JWT.
    PasswordMessage(&'a [u8]),
}

impl<'a> FrontendMessage<'a> {
    /// Decodes the message at the start of `buf`, returning it and the number
    /// of bytes it took. `Ok(None)` while the message is incomplete.
    ///
    /// `max_len` bounds the length field (which counts itself and the body):
    /// pass the limit for the connection's state, e.g.
    /// [`super::MAX_PASSWORD_MESSAGE_LEN`] during authentication.
    /// An unknown tag is refused as soon as its first byte arrives, so
    /// garbage (or a TLS record on a plaintext socket) is not buffered up to
    /// `max_len` first.
    pub fn decode(buf: &'a [u8], max_len: u32) -> Result<Option<(Self, usize)>, ProtocolError> {
        if let Some(&tag) = buf.first() {
            if !is_frontend_tag(tag) {
                return Err(ProtocolError::UnexpectedTag { tag });
            }
        }
        let Some((header, body)) = frame::read_message(buf, max_len)? else {
            return Ok(None);
        };
        let msg = Self::decode_body(header.tag, body)?;
        Ok(Some((msg, header.total_len())))
    }

    /// Decodes a body already split off by [`frame::read_message`]; for a
    /// relay that frames every message but decodes only some of them.
    pub fn decode_body(tag: u8, body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(tag, body);
        let msg = match tag {
            b'Q' => Self::Query(r.cstr("query string")?),
            b'P' => Self::Parse {
                name: r.cstr("statement name")?,
                query: r.cstr("query string")?,
                param_types: fields::u32_list(&mut r, "parameter types")?,
            },
            b'B' => decode_bind(&mut r)?,
            b'D' => Self::Describe { kind: read_kind(&mut r, tag)?, name: r.cstr("name")? },
            b'E' => Self::Execute { portal: r.cstr("portal name")?, max_rows: r.i32("row limit")? },
            b'S' => Self::Sync,
            b'H' => Self::Flush,
            b'C' => Self::Close { kind: read_kind(&mut r, tag)?, name: r.cstr("name")? },
            b'd' => Self::CopyData(r.rest()),
            b'c' => Self::CopyDone,
            b'f' => Self::CopyFail(r.cstr("error message")?),
            b'F' => decode_function_call(&mut r)?,
            b'X' => Self::Terminate,
            b'p' => Self::PasswordMessage(r.rest()),
            _ => return Err(ProtocolError::UnexpectedTag { tag }),
        };
        r.finish("body length")?;
        Ok(msg)
    }

    /// Appends the message, header included, to `out`.
    ///
    /// A string field is written up to its first NUL, so a value can never
    /// end a field early and smuggle in another; decoded messages never hold
    /// a NUL there.
    ///
    /// # Panics
    ///
    /// If a list holds more than 65535 entries, which the wire cannot
    /// express. Decoded messages never do.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer::new(out, self.tag());
        self.encode_body(&mut w);
        w.finish();
    }

    fn encode_body(&self, w: &mut Writer<'_>) {
        match self {
            Self::Query(q) | Self::CopyFail(q) => fields::put_cstr(w, q),
            Self::Parse { name, query, param_types } => {
                fields::put_cstr(w, name);
                fields::put_cstr(w, query);
                fields::put_u32_list(w, param_types);
            }
            Self::Bind { portal, statement, param_formats, params, result_formats } => {
                fields::put_cstr(w, portal);
                fields::put_cstr(w, statement);
                fields::put_i16_list(w, param_formats);
                fields::put_value_list(w, params);
                fields::put_i16_list(w, result_formats);
            }
            Self::Describe { kind, name } | Self::Close { kind, name } => {
                w.u8(*kind);
                fields::put_cstr(w, name);
            }
            Self::Execute { portal, max_rows } => {
                fields::put_cstr(w, portal);
                w.i32(*max_rows);
            }
            Self::FunctionCall { oid, arg_formats, args, result_format } => {
                w.u32(*oid);
                fields::put_i16_list(w, arg_formats);
                fields::put_value_list(w, args);
                w.i16(*result_format);
            }
            Self::CopyData(data) | Self::PasswordMessage(data) => {
                w.bytes(data);
            }
            Self::Sync | Self::Flush | Self::CopyDone | Self::Terminate => {}
        }
    }

    /// The message's type byte on the wire.
    pub fn tag(&self) -> u8 {
        match self {
            Self::Query(_) => b'Q',
            Self::Parse { .. } => b'P',
            Self::Bind { .. } => b'B',
            Self::Describe { .. } => b'D',
            Self::Execute { .. } => b'E',
            Self::Sync => b'S',
            Self::Flush => b'H',
            Self::Close { .. } => b'C',
            Self::CopyData(_) => b'd',
            Self::CopyDone => b'c',
            Self::CopyFail(_) => b'f',
            Self::FunctionCall { .. } => b'F',
            Self::Terminate => b'X',
            Self::PasswordMessage(_) => b'p',
        }
    }
}

/// Every tag that [`FrontendMessage::decode_body`] accepts; a test keeps them in step.
const TAGS: &[u8] = b"QPBDESHCdcfFXp";

/// [`TAGS`] as a table, so the check on every message is one load.
const IS_TAG: [bool; 256] = fields::tag_table(TAGS);

/// Whether `tag` starts a message a client may send.
fn is_frontend_tag(tag: u8) -> bool {
    IS_TAG[usize::from(tag)]
}

fn decode_bind<'a>(r: &mut Reader<'a>) -> Result<FrontendMessage<'a>, ProtocolError> {
    Ok(FrontendMessage::Bind {
        portal: r.cstr("portal name")?,
        statement: r.cstr("statement name")?,
        param_formats: fields::i16_list(r, "parameter format codes")?,
        params: fields::value_list(r, "parameter values")?,
        result_formats: fields::i16_list(r, "result format codes")?,
    })
}

fn decode_function_call<'a>(r: &mut Reader<'a>) -> Result<FrontendMessage<'a>, ProtocolError> {
    Ok(FrontendMessage::FunctionCall {
        oid: r.u32("function oid")?,
        arg_formats: fields::i16_list(r, "argument format codes")?,
        args: fields::value_list(r, "arguments")?,
        result_format: r.i16("result format code")?,
    })
}

/// The target kind of Describe and Close: only statement or portal exist.
fn read_kind(r: &mut Reader<'_>, tag: u8) -> Result<u8, ProtocolError> {
    let kind = r.u8("target kind")?;
    match kind {
        KIND_STATEMENT | KIND_PORTAL => Ok(kind),
        _ => Err(ProtocolError::Malformed { tag, what: "target kind" }),
    }
}

/// Reads a cleartext PasswordMessage body: one NUL-terminated string. The
/// password is bytes, not `&str`: Postgres does not require it to be UTF-8.
pub fn decode_password(body: &[u8]) -> Result<&[u8], ProtocolError> {
    let mut r = Reader::new(b'p', body);
    let password = r.cstr("password")?;
    r.finish("body length")?;
    Ok(password)
}

/// Reads a SASLInitialResponse body: the chosen mechanism and the client's
/// first message, `None` when the client sent length -1 (no initial data).
pub fn decode_sasl_initial(body: &[u8]) -> Result<(&str, Option<&[u8]>), ProtocolError> {
    let mut r = Reader::new(b'p', body);
    let mechanism = r.cstr_utf8("SASL mechanism")?;
    let data = r.nullable_bytes("SASL initial response")?;
    r.finish("body length")?;
    Ok((mechanism, data))
}

/// Appends a cleartext PasswordMessage. A NUL ends the password early,
/// as it would on the server.
pub fn encode_password(out: &mut Vec<u8>, password: &[u8]) {
    let mut w = Writer::new(out, b'p');
    fields::put_cstr(&mut w, password);
    w.finish();
}

/// Appends a SASLInitialResponse for `mechanism` with optional first data.
pub fn encode_sasl_initial(out: &mut Vec<u8>, mechanism: &str, data: Option<&[u8]>) {
    let mut w = Writer::new(out, b'p');
    fields::put_cstr(&mut w, mechanism.as_bytes());
    w.nullable_bytes(data);
    w.finish();
}

/// Appends a SASLResponse: the body is the mechanism's data, unframed.
pub fn encode_sasl_response(out: &mut Vec<u8>, data: &[u8]) {
    FrontendMessage::PasswordMessage(data).encode(out);
}

/// Field helpers shared with [`super::backend`]: counted lists and strings.
/// They live here, not in `frame`, only because `frame` is owned separately;
/// they belong there.
pub(super) mod fields {
    use super::super::frame::{Reader, Writer};
    use super::super::ProtocolError;

    /// How many of `count` items, each at least `min_item_len` bytes, fit in
    /// `remaining` bytes: the most capacity worth reserving, so that a forged
    /// count cannot make us allocate before the bytes behind it exist.
    pub fn bounded_capacity(count: usize, remaining: usize, min_item_len: usize) -> usize {
        count.min(remaining / min_item_len.max(1))
    }

    /// An unsigned 16-bit list count (see the module docs for why unsigned).
    pub fn count(r: &mut Reader<'_>, what: &'static str) -> Result<usize, ProtocolError> {
        Ok(usize::from(r.u16(what)?))
    }

    /// A counted list of Int16. The bytes are checked before allocating.
    pub fn i16_list(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<i16>, ProtocolError> {
        let n = count(r, what)?;
        let raw = r.bytes(n * 2, what)?;
        Ok(raw.chunks_exact(2).map(|c| i16::from_be_bytes([c[0], c[1]])).collect())
    }

    /// A counted list of Int32 read as u32 (OIDs). Checked before allocating.
    pub fn u32_list(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<u32>, ProtocolError> {
        let n = count(r, what)?;
        let raw = r.bytes(n * 4, what)?;
        Ok(raw.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// A counted list of length-prefixed values (-1 for NULL). Each takes at
    /// least its 4-byte length, which caps the up-front reservation.
    pub fn value_list<'a>(
        r: &mut Reader<'a>,
        what: &'static str,
    ) -> Result<Vec<Option<&'a [u8]>>, ProtocolError> {
        let n = count(r, what)?;
        let mut values = Vec::with_capacity(bounded_capacity(n, r.remaining(), 4));
        for _ in 0..n {
            values.push(r.nullable_bytes(what)?);
        }
        Ok(values)
    }

    /// Writes a list count.
    ///
    /// # Panics
    ///
    /// If `n` exceeds 65535: writing a truncated count would produce a
    /// message whose count disagrees with its contents.
    pub fn put_count(w: &mut Writer<'_>, n: usize) {
        let n = u16::try_from(n).expect("a protocol list holds at most 65535 entries");
        w.i16(n as i16);
    }

    pub fn put_i16_list(w: &mut Writer<'_>, list: &[i16]) {
        put_count(w, list.len());
        for &v in list {
            w.i16(v);
        }
    }

    pub fn put_u32_list(w: &mut Writer<'_>, list: &[u32]) {
        put_count(w, list.len());
        for &v in list {
            w.u32(v);
        }
    }

    pub fn put_value_list(w: &mut Writer<'_>, list: &[Option<&[u8]>]) {
        put_count(w, list.len());
        for &v in list {
            w.nullable_bytes(v);
        }
    }

    /// Writes `v` up to its first NUL, then the terminator: a string can
    /// never end its field early and inject the fields after it.
    pub fn put_cstr(w: &mut Writer<'_>, v: &[u8]) {
        w.cstr(until_nul(v));
    }

    /// A lookup table with `true` at each byte of `tags`.
    pub const fn tag_table(tags: &[u8]) -> [bool; 256] {
        let mut table = [false; 256];
        let mut i = 0;
        while i < tags.len() {
            table[tags[i] as usize] = true;
            i += 1;
        }
        table
    }

    /// `v` up to (not including) its first NUL byte.
    pub fn until_nul(v: &[u8]) -> &[u8] {
        match v.iter().position(|&b| b == 0) {
            Some(end) => &v[..end],
            None => v,
        }
    }
}

/// Shows bytes as an escaped string (`"select 1"`), not a list of numbers.
struct ShowBytes<'a>(&'a [u8]);

impl fmt::Debug for ShowBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

/// Shows a list of nullable values as escaped strings.
struct ShowValues<'a, 'b>(&'b [Option<&'a [u8]>]);

impl fmt::Debug for ShowValues<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter().map(|v| v.map(ShowBytes))).finish()
    }
}

/// Hand-written so that a logged PasswordMessage never shows the password
/// or token it carries, and so that text reads as text.
impl fmt::Debug for FrontendMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Query(q) => f.debug_tuple("Query").field(&ShowBytes(q)).finish(),
            Self::Parse { name, query, param_types } => f
                .debug_struct("Parse")
                .field("name", &ShowBytes(name))
                .field("query", &ShowBytes(query))
                .field("param_types", param_types)
                .finish(),
            Self::Bind { portal, statement, param_formats, params, result_formats } => f
                .debug_struct("Bind")
                .field("portal", &ShowBytes(portal))
                .field("statement", &ShowBytes(statement))
                .field("param_formats", param_formats)
                .field("params", &ShowValues(params))
                .field("result_formats", result_formats)
                .finish(),
            Self::Describe { kind, name } => debug_target(f, "Describe", *kind, name),
            Self::Close { kind, name } => debug_target(f, "Close", *kind, name),
            Self::Execute { portal, max_rows } => f
                .debug_struct("Execute")
                .field("portal", &ShowBytes(portal))
                .field("max_rows", max_rows)
                .finish(),
            Self::CopyData(d) => f.debug_tuple("CopyData").field(&ShowBytes(d)).finish(),
            Self::CopyFail(m) => f.debug_tuple("CopyFail").field(&ShowBytes(m)).finish(),
            Self::FunctionCall { oid, arg_formats, args, result_format } => f
                .debug_struct("FunctionCall")
                .field("oid", oid)
                .field("arg_formats", arg_formats)
                .field("args", &ShowValues(args))
                .field("result_format", result_format)
                .finish(),
            Self::PasswordMessage(body) => {
                write!(f, "PasswordMessage(<{} bytes redacted>)", body.len())
            }
            Self::Sync => f.write_str("Sync"),
            Self::Flush => f.write_str("Flush"),
            Self::CopyDone => f.write_str("CopyDone"),
            Self::Terminate => f.write_str("Terminate"),
        }
    }
}

fn debug_target(f: &mut fmt::Formatter<'_>, what: &str, kind: u8, name: &[u8]) -> fmt::Result {
    f.debug_struct(what).field("kind", &(kind as char)).field("name", &ShowBytes(name)).finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: u32 = 1 << 20;

    /// One message of every variant, with awkward values where they matter
    /// (empty names, NULL and empty values, non-UTF-8 text, negative numbers).
    fn samples() -> Vec<FrontendMessage<'static>> {
        use FrontendMessage::*;
        vec![
            Query(b"select 1; select 2"),
            Query(b""),
            Parse { name: b"s1", query: b"select $1::int", param_types: vec![23, 0, u32::MAX] },
            Parse { name: b"", query: b"\xff\xfe latin1", param_types: vec![] },
            Bind {
                portal: b"",
                statement: b"s1",
                param_formats: vec![1],
                params: vec![Some(b"\0\0\0\x2a"), None, Some(b"")],
                result_formats: vec![0, 1, -1],
            },
            Bind {
                portal: b"p",
                statement: b"",
                param_formats: vec![],
                params: vec![],
                result_formats: vec![],
            },
            Describe { kind: KIND_STATEMENT, name: b"s1" },
            Describe { kind: KIND_PORTAL, name: b"" },
            Execute { portal: b"", max_rows: 0 },
            Execute { portal: b"p", max_rows: -5 },
            Sync,
            Flush,
            Close { kind: KIND_PORTAL, name: b"p" },
            Close { kind: KIND_STATEMENT, name: b"" },
            CopyData(b"1\t\0two\n"),
            CopyData(b""),
            CopyDone,
            CopyFail(b"client gave up"),
            FunctionCall {
                oid: 1598,
                arg_formats: vec![1, 0],
                args: vec![None, Some(b"x")],
                result_format: 1,
            },
            Terminate,
            PasswordMessage(b"secret\0"),
            PasswordMessage(b""),
        ]
    }

    fn encoded(msg: &FrontendMessage<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        msg.encode(&mut out);
        out
    }

    fn decode_all(buf: &[u8]) -> Result<Option<(FrontendMessage<'_>, usize)>, ProtocolError> {
        FrontendMessage::decode(buf, MAX)
    }

    /// Frames `body` under `tag` by hand, for bodies the encoder cannot make.
    fn framed(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn malformed(buf: &[u8]) -> &'static str {
        match decode_all(buf) {
            Err(ProtocolError::Malformed { what, .. }) => what,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn every_sample_round_trips_and_consumes_exactly_its_length() {
        for msg in samples() {
            let buf = encoded(&msg);
            assert_eq!(buf[0], msg.tag());
            let (back, used) = decode_all(&buf).unwrap().unwrap();
            assert_eq!(back, msg);
            assert_eq!(used, buf.len(), "{msg:?}");
        }
    }

    #[test]
    fn samples_cover_every_tag() {
        let mut seen: Vec<u8> = samples().iter().map(FrontendMessage::tag).collect();
        seen.sort_unstable();
        seen.dedup();
        let mut want = TAGS.to_vec();
        want.sort_unstable();
        assert_eq!(seen, want);
    }

    #[test]
    fn known_tags_agree_with_the_decoder() {
        for tag in 0..=u8::MAX {
            let unknown =
                matches!(FrontendMessage::decode_body(tag, b""), Err(ProtocolError::UnexpectedTag { .. }));
            assert_eq!(is_frontend_tag(tag), !unknown, "tag {tag}");
            assert_eq!(is_frontend_tag(tag), TAGS.contains(&tag), "tag {tag}");
        }
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        for msg in samples() {
            let buf = encoded(&msg);
            for end in 0..buf.len() {
                assert_eq!(decode_all(&buf[..end]), Ok(None), "{msg:?} cut at {end}");
            }
        }
    }

    #[test]
    fn decodes_one_message_from_a_stream() {
        let mut buf = encoded(&FrontendMessage::Sync);
        let first = buf.len();
        FrontendMessage::Query(b"select 1").encode(&mut buf);
        let (msg, used) = decode_all(&buf).unwrap().unwrap();
        assert_eq!((msg, used), (FrontendMessage::Sync, first));
        let (msg, _) = decode_all(&buf[used..]).unwrap().unwrap();
        assert_eq!(msg, FrontendMessage::Query(b"select 1"));
    }

    #[test]
    fn bad_lengths_are_errors() {
        assert!(matches!(decode_all(b"S\0\0\0\x03"), Err(ProtocolError::BadLength { len: 3, .. })));
        assert!(matches!(decode_all(b"S\0\0\0\0"), Err(ProtocolError::BadLength { len: 0, .. })));
        assert!(matches!(decode_all(b"S\xff\xff\xff\xff"), Err(ProtocolError::BadLength { len: -1, .. })));
        let big = framed(b'd', &[0; 100]);
        assert!(matches!(
            FrontendMessage::decode(&big, 103),
            Err(ProtocolError::TooLarge { len: 104, max: 103, .. })
        ));
        assert!(FrontendMessage::decode(&big, 104).unwrap().is_some());
    }

    #[test]
    fn unknown_tag_is_refused_on_its_first_byte() {
        assert_eq!(decode_all(b"\x16"), Err(ProtocolError::UnexpectedTag { tag: 0x16 }));
        // Backend-only tags are not frontend messages.
        assert_eq!(decode_all(&framed(b'Z', b"I")), Err(ProtocolError::UnexpectedTag { tag: b'Z' }));
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        assert_eq!(malformed(&framed(b'S', b"x")), "body length");
        assert_eq!(malformed(&framed(b'Q', b"select 1\0\0")), "body length");
        assert_eq!(malformed(&framed(b'E', b"\0\0\0\0\0\0")), "body length");
    }

    #[test]
    fn missing_fields_are_malformed() {
        assert_eq!(malformed(&framed(b'Q', b"select 1")), "query string");
        assert_eq!(malformed(&framed(b'P', b"s\0select 1\0")), "parameter types");
        assert_eq!(malformed(&framed(b'P', b"s\0select 1\0\0\x01\0\0")), "parameter types");
        assert_eq!(malformed(&framed(b'E', b"p\0\0\0")), "row limit");
        assert_eq!(malformed(&framed(b'D', b"")), "target kind");
        assert_eq!(malformed(&framed(b'C', b"S")), "name");
        assert_eq!(malformed(&framed(b'F', b"\0\0\x06\x3e\0\0\0\0")), "result format code");
    }

    #[test]
    fn describe_and_close_accept_only_statement_or_portal() {
        assert_eq!(malformed(&framed(b'D', b"X\0")), "target kind");
        assert_eq!(malformed(&framed(b'C', b"s\0")), "target kind");
    }

    #[test]
    fn forged_counts_fail_fast() {
        // 30000 parameters announced, 10 bytes of body.
        let body = b"\0\0\0\0\x75\x30\0\0\0\x01x\0";
        assert_eq!(malformed(&framed(b'B', &body[..])), "parameter values");
        assert_eq!(fields::bounded_capacity(30_000, 10, 4), 2);
        // 65535 format codes announced, none present.
        assert_eq!(malformed(&framed(b'B', b"\0\0\xff\xff")), "parameter format codes");
        assert_eq!(malformed(&framed(b'P', b"\0\0\xff\xff\0\0")), "parameter types");
    }

    #[test]
    fn negative_value_lengths_other_than_null_are_malformed() {
        let body = b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0";
        assert_eq!(malformed(&framed(b'B', &body[..])), "parameter values");
    }

    #[test]
    fn counts_above_i16_max_are_valid() {
        // libpq >= 14 sends up to 65535 parameters; the count is unsigned.
        let params = vec![None; 40_000];
        let msg = FrontendMessage::Bind {
            portal: b"",
            statement: b"",
            param_formats: vec![],
            params,
            result_formats: vec![],
        };
        let buf = encoded(&msg);
        // tag, length, two empty names, no format codes, then the count.
        assert_eq!(&buf[9..11], &40_000u16.to_be_bytes());
        assert_eq!(decode_all(&buf).unwrap().unwrap().0, msg);
    }

    #[test]
    #[should_panic(expected = "at most 65535")]
    fn encoding_an_inexpressible_list_panics_rather_than_lie() {
        let msg = FrontendMessage::Parse { name: b"", query: b"", param_types: vec![0; 65_536] };
        encoded(&msg);
    }

    #[test]
    fn encode_cuts_strings_at_nul_so_fields_cannot_be_injected() {
        let msg = FrontendMessage::Execute { portal: b"p\0\x7f\xff\xff\xff", max_rows: 7 };
        let buf = encoded(&msg);
        let (back, _) = decode_all(&buf).unwrap().unwrap();
        assert_eq!(back, FrontendMessage::Execute { portal: b"p", max_rows: 7 });
    }

    #[test]
    fn password_body_round_trips() {
        let mut buf = Vec::new();
        encode_password(&mut buf, b"hunter2\xff");
        let Some((FrontendMessage::PasswordMessage(body), _)) = decode_all(&buf).unwrap() else {
            panic!("not a password message");
        };
        assert_eq!(decode_password(body), Ok(&b"hunter2\xff"[..]));
        assert!(decode_password(b"no terminator").is_err());
        assert!(decode_password(b"pw\0extra").is_err());
    }

    #[test]
    fn sasl_initial_response_round_trips() {
        for data in [Some(&b"n,,n=,r=abc"[..]), Some(&b""[..]), None] {
            let mut buf = Vec::new();
            encode_sasl_initial(&mut buf, "SCRAM-SHA-256", data);
            let (msg, _) = decode_all(&buf).unwrap().unwrap();
            let FrontendMessage::PasswordMessage(body) = msg else { panic!("{msg:?}") };
            assert_eq!(decode_sasl_initial(body), Ok(("SCRAM-SHA-256", data)));
        }
    }

    #[test]
    fn sasl_initial_response_rejects_bad_bodies() {
        assert!(decode_sasl_initial(b"SCRAM-SHA-256\0\0\0\0\x05abc").is_err());
        assert!(decode_sasl_initial(b"SCRAM-SHA-256\0\xff\xff\xff\xfe").is_err());
        assert!(decode_sasl_initial(b"SCRAM-SHA-256\0\0\0\0\0x").is_err());
        assert!(decode_sasl_initial(b"\xff\0\xff\xff\xff\xff").is_err());
        assert!(decode_sasl_initial(b"SCRAM-SHA-256").is_err());
    }

    #[test]
    fn sasl_response_is_the_raw_body() {
        let mut buf = Vec::new();
        encode_sasl_response(&mut buf, b"c=biws,r=abc,p=xyz");
        let (msg, _) = decode_all(&buf).unwrap().unwrap();
        assert_eq!(msg, FrontendMessage::PasswordMessage(b"c=biws,r=abc,p=xyz"));
    }

    #[test]
    fn debug_redacts_password_and_shows_text() {
        let shown = format!("{:?}", FrontendMessage::PasswordMessage(b"eyJhbGciOi.secret"));
        assert_eq!(shown, "PasswordMessage(<17 bytes redacted>)");
        let shown = format!("{:?}", FrontendMessage::Query(b"select '\xff'"));
        assert_eq!(shown, r#"Query(b"select \'\xff\'")"#);
    }

    /// Owned material from which a message of any variant is built, since a
    /// proptest value cannot borrow from itself.
    #[derive(Debug, Clone)]
    struct Raw {
        texts: (Vec<u8>, Vec<u8>),
        data: Vec<u8>,
        formats: (Vec<i16>, Vec<i16>),
        oids: Vec<u32>,
        values: Vec<Option<Vec<u8>>>,
        int: i32,
        small: i16,
        portal: bool,
    }

    /// Bytes skewed towards 0 (terminators, small counts, NULL-free lengths)
    /// and 0xff (-1 lengths), so random bodies often get deep into a parser.
    fn wire_byte() -> impl Strategy<Value = u8> {
        any::<u8>().prop_map(|b| match b {
            0..=127 => 0,
            128..=159 => 0xff,
            160..=191 => b & 3,
            _ => b,
        })
    }

    /// A string field: any bytes but NUL.
    fn cstring() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(1u8..=255, 0..12)
    }

    fn raw() -> impl Strategy<Value = Raw> {
        use proptest::collection::vec;
        (
            (cstring(), cstring()),
            vec(any::<u8>(), 0..48),
            (vec(any::<i16>(), 0..6), vec(any::<i16>(), 0..6)),
            vec(any::<u32>(), 0..6),
            vec(proptest::option::of(vec(any::<u8>(), 0..12)), 0..6),
            any::<i32>(),
            any::<i16>(),
            any::<bool>(),
        )
            .prop_map(|(texts, data, formats, oids, values, int, small, portal)| Raw {
                texts,
                data,
                formats,
                oids,
                values,
                int,
                small,
                portal,
            })
    }

    const VARIANTS: usize = 14;

    fn build<'a>(variant: usize, raw: &'a Raw, values: &[Option<&'a [u8]>]) -> FrontendMessage<'a> {
        use FrontendMessage::*;
        let (a, b) = (&raw.texts.0[..], &raw.texts.1[..]);
        let kind = if raw.portal { KIND_PORTAL } else { KIND_STATEMENT };
        match variant {
            0 => Query(a),
            1 => Parse { name: a, query: b, param_types: raw.oids.clone() },
            2 => Bind {
                portal: a,
                statement: b,
                param_formats: raw.formats.0.clone(),
                params: values.to_vec(),
                result_formats: raw.formats.1.clone(),
            },
            3 => Describe { kind, name: a },
            4 => Execute { portal: a, max_rows: raw.int },
            5 => Sync,
            6 => Flush,
            7 => Close { kind, name: b },
            8 => CopyData(&raw.data),
            9 => CopyDone,
            10 => CopyFail(a),
            11 => FunctionCall {
                oid: raw.int as u32,
                arg_formats: raw.formats.0.clone(),
                args: values.to_vec(),
                result_format: raw.small,
            },
            12 => Terminate,
            _ => PasswordMessage(&raw.data),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn generated_messages_round_trip(variant in 0..VARIANTS, raw in raw()) {
            let values: Vec<Option<&[u8]>> = raw.values.iter().map(|v| v.as_deref()).collect();
            let msg = build(variant, &raw, &values);
            let buf = encoded(&msg);
            let (back, used) = decode_all(&buf).unwrap().unwrap();
            prop_assert_eq!(back, msg);
            prop_assert_eq!(used, buf.len());
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            buf in proptest::collection::vec(any::<u8>(), 0..256),
            max_len in any::<u32>(),
        ) {
            let _ = FrontendMessage::decode(&buf, max_len);
        }

        /// Well-framed random bodies reach the field parsers; whatever they
        /// accept must encode back to the very same bytes (one wire form).
        #[test]
        fn accepted_input_re_encodes_identically(
            tag in proptest::sample::select(TAGS),
            body in proptest::collection::vec(wire_byte(), 0..96),
        ) {
            let buf = framed(tag, &body);
            if let Ok(Some((msg, used))) = decode_all(&buf) {
                prop_assert_eq!(used, buf.len());
                prop_assert_eq!(encoded(&msg), buf);
            }
        }

        #[test]
        fn auth_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_password(&body);
            let _ = decode_sasl_initial(&body);
        }
    }
}
