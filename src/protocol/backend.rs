//! Backend messages: everything a server sends, decoded into a borrowed enum
//! and encoded back, plus the few messages a proxy synthesizes itself
//! (errors and notices, written straight into the output buffer) and a
//! zero-allocation view of error fields for logging.
//!
//! The rules are those of [`super::frontend`]: strings and values borrow the
//! input, lists are never sized from an untrusted count before the bytes
//! exist, 16-bit list counts are unsigned, and a missing field or trailing
//! bytes is [`ProtocolError::Malformed`]. Text is `&[u8]` because it is in
//! the server encoding, except SASL mechanism names, which are ASCII.
//!
//! BackendKeyData is decoded as protocol 3.0 defines it (a 4-byte key); a
//! proxy that speaks 3.0 to its servers never receives the longer keys of 3.2.

use super::frame::{self, Reader, Writer};
use super::frontend::fields;
use super::ProtocolError;

/// ReadyForQuery status: idle, not in a transaction block.
pub const STATUS_IDLE: u8 = b'I';
/// ReadyForQuery status: inside a transaction block.
pub const STATUS_IN_TRANSACTION: u8 = b'T';
/// ReadyForQuery status: inside a failed transaction block.
pub const STATUS_FAILED: u8 = b'E';

/// The smallest RowDescription field: an empty name (its NUL) and 18 bytes
/// of numbers. Caps the capacity reserved for a claimed column count.
const MIN_FIELD_DESCRIPTION_LEN: usize = 19;

/// An authentication request ('R'), by its Int32 code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication<'a> {
    /// 0: authentication succeeded.
    Ok,
    /// 2: Kerberos V5 (long unsupported by the server, still in the protocol).
    KerberosV5,
    /// 3: send the password in clear.
    CleartextPassword,
    /// 5: send the MD5 hash of the password salted with `salt`.
    Md5Password { salt: [u8; 4] },
    /// 7: start GSSAPI negotiation.
    Gss,
    /// 8: GSSAPI or SSPI continuation data.
    GssContinue(&'a [u8]),
    /// 9: start SSPI negotiation.
    Sspi,
    /// 10: start SASL with one of these mechanisms, in server preference order.
    Sasl { mechanisms: Vec<&'a str> },
    /// 11: SASL challenge data.
    SaslContinue(&'a [u8]),
    /// 12: SASL outcome data (for SCRAM, the server signature).
    SaslFinal(&'a [u8]),
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription<'a> {
    pub name: &'a [u8],
    /// OID of the source table, or 0 when the column is not a table column.
    pub table_oid: u32,
    /// Attribute number in that table, or 0.
    pub column: i16,
    pub type_oid: u32,
    /// `pg_type.typlen`: negative for variable-width types.
    pub type_size: i16,
    pub type_modifier: i32,
    /// 0 text, 1 binary (always 0 in a Describe of a statement).
    pub format: i16,
}

/// One message from the server. Strings are borrowed without their NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage<'a> {
    /// 'R'
    Authentication(Authentication<'a>),
    /// 'K': what a client needs to send a CancelRequest for this session.
    BackendKeyData { pid: i32, key: i32 },
    /// '2'
    BindComplete,
    /// '3'
    CloseComplete,
    /// 'C': the command tag, e.g. `INSERT 0 1`.
    CommandComplete(&'a [u8]),
    /// 'd'
    CopyData(&'a [u8]),
    /// 'c'
    CopyDone,
    /// 'G': the server is ready for COPY FROM STDIN data.
    /// `format` 0 is text, 1 binary; one format code per column.
    CopyInResponse { format: i8, column_formats: Vec<i16> },
    /// 'H': COPY TO STDOUT data follows.
    CopyOutResponse { format: i8, column_formats: Vec<i16> },
    /// 'W': streaming replication's two-way COPY.
    CopyBothResponse { format: i8, column_formats: Vec<i16> },
    /// 'D': one row; `None` is SQL NULL.
    DataRow(Vec<Option<&'a [u8]>>),
    /// 'I': answer to an empty query string.
    EmptyQueryResponse,
    /// 'E': (field code, value) pairs; see [`ErrorFields`] for a view
    /// that does not allocate.
    ErrorResponse(Vec<(u8, &'a [u8])>),
    /// 'V': the function-call result; `None` is SQL NULL.
    FunctionCallResponse(Option<&'a [u8]>),
    /// 'v': the server supports only minor version `newest_minor` and did
    /// not recognise these `_pq_.` startup options.
    NegotiateProtocolVersion { newest_minor: i32, unrecognized: Vec<&'a [u8]> },
    /// 'n': the statement or portal returns no rows.
    NoData,
    /// 'N': same layout as ErrorResponse.
    NoticeResponse(Vec<(u8, &'a [u8])>),
    /// 'A': a NOTIFY delivered to this session.
    NotificationResponse { pid: i32, channel: &'a [u8], payload: &'a [u8] },
    /// 't': parameter type OIDs of a described statement.
    ParameterDescription(Vec<u32>),
    /// 'S': a reported run-time parameter changed (or its initial value).
    ParameterStatus { name: &'a [u8], value: &'a [u8] },
    /// '1'
    ParseComplete,
    /// 's': Execute stopped at its row limit.
    PortalSuspended,
    /// 'Z': the server is ready for a new query. The status is one of
    /// [`STATUS_IDLE`], [`STATUS_IN_TRANSACTION`], [`STATUS_FAILED`]; the
    /// pooler relies on it to know when a connection may be released, so
    /// any other byte is refused.
    ReadyForQuery(u8),
    /// 'T'
    RowDescription(Vec<FieldDescription<'a>>),
}

impl<'a> BackendMessage<'a> {
    /// Decodes the message at the start of `buf`, returning it and the number
    /// of bytes it took. `Ok(None)` while the message is incomplete.
    /// An unknown tag is refused as soon as its first byte arrives.
    pub fn decode(buf: &'a [u8], max_len: u32) -> Result<Option<(Self, usize)>, ProtocolError> {
        if let Some(&tag) = buf.first() {
            if !is_backend_tag(tag) {
                return Err(ProtocolError::UnexpectedTag { tag });
            }
        }
        let Some((header, body)) = frame::read_message(buf, max_len)? else {
            return Ok(None);
        };
        let msg = Self::decode_body(header.tag, body)?;
        Ok(Some((msg, header.total_len())))
    }

    /// Decodes a body already split off by [`frame::read_message`].
    pub fn decode_body(tag: u8, body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(tag, body);
        let msg = match tag {
            b'R' => Self::Authentication(decode_authentication(&mut r)?),
            b'K' => Self::BackendKeyData { pid: r.i32("process id")?, key: r.i32("secret key")? },
            b'2' => Self::BindComplete,
            b'3' => Self::CloseComplete,
            b'C' => Self::CommandComplete(r.cstr("command tag")?),
            b'd' => Self::CopyData(r.rest()),
            b'c' => Self::CopyDone,
            b'G' | b'H' | b'W' => decode_copy_response(tag, &mut r)?,
            b'D' => Self::DataRow(fields::value_list(&mut r, "column values")?),
            b'I' => Self::EmptyQueryResponse,
            b'E' => Self::ErrorResponse(read_error_fields(&mut r)?),
            b'V' => Self::FunctionCallResponse(r.nullable_bytes("result value")?),
            b'v' => decode_negotiate_protocol_version(&mut r)?,
            b'n' => Self::NoData,
            b'N' => Self::NoticeResponse(read_error_fields(&mut r)?),
            b'A' => Self::NotificationResponse {
                pid: r.i32("process id")?,
                channel: r.cstr("channel name")?,
                payload: r.cstr("payload")?,
            },
            b't' => Self::ParameterDescription(fields::u32_list(&mut r, "parameter types")?),
            b'S' => {
                Self::ParameterStatus { name: r.cstr("parameter name")?, value: r.cstr("parameter value")? }
            }
            b'1' => Self::ParseComplete,
            b's' => Self::PortalSuspended,
            b'Z' => Self::ReadyForQuery(read_status(&mut r)?),
            b'T' => Self::RowDescription(read_row_description(&mut r)?),
            _ => return Err(ProtocolError::UnexpectedTag { tag }),
        };
        r.finish("body length")?;
        Ok(msg)
    }

    /// Appends the message, header included, to `out`.
    ///
    /// As in [`super::frontend::FrontendMessage::encode`], string fields are
    /// cut at their first NUL. Likewise an error field with code 0 and an
    /// empty SASL mechanism name are skipped, since either would end its list
    /// early. Decoded messages never hold any of these.
    ///
    /// # Panics
    ///
    /// If a 16-bit counted list holds more than 65535 entries.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer::new(out, self.tag());
        self.encode_body(&mut w);
        w.finish();
    }

    fn encode_body(&self, w: &mut Writer<'_>) {
        match self {
            Self::Authentication(auth) => encode_authentication(w, auth),
            Self::BackendKeyData { pid, key } => {
                w.i32(*pid).i32(*key);
            }
            Self::CommandComplete(text) => fields::put_cstr(w, text),
            Self::CopyData(data) => {
                w.bytes(data);
            }
            Self::CopyInResponse { format, column_formats }
            | Self::CopyOutResponse { format, column_formats }
            | Self::CopyBothResponse { format, column_formats } => {
                w.u8(*format as u8);
                fields::put_i16_list(w, column_formats);
            }
            Self::DataRow(values) => fields::put_value_list(w, values),
            Self::ErrorResponse(list) | Self::NoticeResponse(list) => put_error_fields(w, list),
            Self::FunctionCallResponse(value) => {
                w.nullable_bytes(*value);
            }
            Self::NegotiateProtocolVersion { newest_minor, unrecognized } => {
                encode_negotiate_protocol_version(w, *newest_minor, unrecognized);
            }
            Self::NotificationResponse { pid, channel, payload } => {
                w.i32(*pid);
                fields::put_cstr(w, channel);
                fields::put_cstr(w, payload);
            }
            Self::ParameterDescription(types) => fields::put_u32_list(w, types),
            Self::ParameterStatus { name, value } => {
                fields::put_cstr(w, name);
                fields::put_cstr(w, value);
            }
            Self::ReadyForQuery(status) => {
                w.u8(*status);
            }
            Self::RowDescription(columns) => encode_row_description(w, columns),
            Self::BindComplete
            | Self::CloseComplete
            | Self::CopyDone
            | Self::EmptyQueryResponse
            | Self::NoData
            | Self::ParseComplete
            | Self::PortalSuspended => {}
        }
    }

    /// The message's type byte on the wire.
    pub fn tag(&self) -> u8 {
        match self {
            Self::Authentication(_) => b'R',
            Self::BackendKeyData { .. } => b'K',
            Self::BindComplete => b'2',
            Self::CloseComplete => b'3',
            Self::CommandComplete(_) => b'C',
            Self::CopyData(_) => b'd',
            Self::CopyDone => b'c',
            Self::CopyInResponse { .. } => b'G',
            Self::CopyOutResponse { .. } => b'H',
            Self::CopyBothResponse { .. } => b'W',
            Self::DataRow(_) => b'D',
            Self::EmptyQueryResponse => b'I',
            Self::ErrorResponse(_) => b'E',
            Self::FunctionCallResponse(_) => b'V',
            Self::NegotiateProtocolVersion { .. } => b'v',
            Self::NoData => b'n',
            Self::NoticeResponse(_) => b'N',
            Self::NotificationResponse { .. } => b'A',
            Self::ParameterDescription(_) => b't',
            Self::ParameterStatus { .. } => b'S',
            Self::ParseComplete => b'1',
            Self::PortalSuspended => b's',
            Self::ReadyForQuery(_) => b'Z',
            Self::RowDescription(_) => b'T',
        }
    }
}

/// Every tag that [`BackendMessage::decode_body`] accepts; a test keeps them in step.
const TAGS: &[u8] = b"RK23CdcGHWDIEVvnNAtS1sZT";

/// [`TAGS`] as a table, so the check on every message is one load.
const IS_TAG: [bool; 256] = fields::tag_table(TAGS);

/// Whether `tag` starts a message a server may send.
fn is_backend_tag(tag: u8) -> bool {
    IS_TAG[usize::from(tag)]
}

fn decode_authentication<'a>(r: &mut Reader<'a>) -> Result<Authentication<'a>, ProtocolError> {
    Ok(match r.i32("authentication request")? {
        0 => Authentication::Ok,
        2 => Authentication::KerberosV5,
        3 => Authentication::CleartextPassword,
        5 => {
            let salt = r.bytes(4, "MD5 salt")?;
            Authentication::Md5Password { salt: [salt[0], salt[1], salt[2], salt[3]] }
        }
        7 => Authentication::Gss,
        8 => Authentication::GssContinue(r.rest()),
        9 => Authentication::Sspi,
        10 => Authentication::Sasl { mechanisms: read_mechanisms(r)? },
        11 => Authentication::SaslContinue(r.rest()),
        12 => Authentication::SaslFinal(r.rest()),
        _ => return Err(ProtocolError::Malformed { tag: b'R', what: "authentication request" }),
    })
}

fn encode_authentication(w: &mut Writer<'_>, auth: &Authentication<'_>) {
    match auth {
        Authentication::Ok => w.i32(0),
        Authentication::KerberosV5 => w.i32(2),
        Authentication::CleartextPassword => w.i32(3),
        Authentication::Md5Password { salt } => w.i32(5).bytes(salt),
        Authentication::Gss => w.i32(7),
        Authentication::GssContinue(data) => w.i32(8).bytes(data),
        Authentication::Sspi => w.i32(9),
        Authentication::Sasl { mechanisms } => {
            w.i32(10);
            // An empty name (or one that a NUL cuts to nothing) would end the list.
            let names = mechanisms.iter().map(|m| fields::until_nul(m.as_bytes()));
            for name in names.filter(|n| !n.is_empty()) {
                w.cstr(name);
            }
            w.u8(0)
        }
        Authentication::SaslContinue(data) => w.i32(11).bytes(data),
        Authentication::SaslFinal(data) => w.i32(12).bytes(data),
    };
}

/// SASL mechanism names, a list ended by an empty name. The list grows as
/// names are read, so its size is bounded by the body.
fn read_mechanisms<'a>(r: &mut Reader<'a>) -> Result<Vec<&'a str>, ProtocolError> {
    let mut names = Vec::new();
    loop {
        let name = r.cstr_utf8("SASL mechanism")?;
        if name.is_empty() {
            return Ok(names);
        }
        names.push(name);
    }
}

fn decode_copy_response<'a>(tag: u8, r: &mut Reader<'a>) -> Result<BackendMessage<'a>, ProtocolError> {
    let format = r.u8("copy format")? as i8;
    let column_formats = fields::i16_list(r, "column format codes")?;
    Ok(match tag {
        b'G' => BackendMessage::CopyInResponse { format, column_formats },
        b'H' => BackendMessage::CopyOutResponse { format, column_formats },
        _ => BackendMessage::CopyBothResponse { format, column_formats },
    })
}

/// The one signed count on the wire (Int32), so the one that can be negative.
fn decode_negotiate_protocol_version<'a>(r: &mut Reader<'a>) -> Result<BackendMessage<'a>, ProtocolError> {
    let newest_minor = r.i32("newest minor version")?;
    let count = usize::try_from(r.i32("option count")?)
        .map_err(|_| ProtocolError::Malformed { tag: b'v', what: "option count" })?;
    let mut unrecognized = Vec::with_capacity(fields::bounded_capacity(count, r.remaining(), 1));
    for _ in 0..count {
        unrecognized.push(r.cstr("option name")?);
    }
    Ok(BackendMessage::NegotiateProtocolVersion { newest_minor, unrecognized })
}

/// # Panics
///
/// If there are more than `i32::MAX` names, which no real list approaches.
fn encode_negotiate_protocol_version(w: &mut Writer<'_>, newest_minor: i32, unrecognized: &[&[u8]]) {
    let count = i32::try_from(unrecognized.len()).expect("option count fits in Int32");
    w.i32(newest_minor).i32(count);
    for name in unrecognized {
        fields::put_cstr(w, name);
    }
}

fn read_status(r: &mut Reader<'_>) -> Result<u8, ProtocolError> {
    match r.u8("transaction status")? {
        status @ (STATUS_IDLE | STATUS_IN_TRANSACTION | STATUS_FAILED) => Ok(status),
        _ => Err(ProtocolError::Malformed { tag: b'Z', what: "transaction status" }),
    }
}

fn read_row_description<'a>(r: &mut Reader<'a>) -> Result<Vec<FieldDescription<'a>>, ProtocolError> {
    let count = fields::count(r, "column count")?;
    let capacity = fields::bounded_capacity(count, r.remaining(), MIN_FIELD_DESCRIPTION_LEN);
    let mut columns = Vec::with_capacity(capacity);
    for _ in 0..count {
        columns.push(FieldDescription {
            name: r.cstr("column name")?,
            table_oid: r.u32("table oid")?,
            column: r.i16("column number")?,
            type_oid: r.u32("type oid")?,
            type_size: r.i16("type size")?,
            type_modifier: r.i32("type modifier")?,
            format: r.i16("format code")?,
        });
    }
    Ok(columns)
}

fn encode_row_description(w: &mut Writer<'_>, columns: &[FieldDescription<'_>]) {
    fields::put_count(w, columns.len());
    for c in columns {
        fields::put_cstr(w, c.name);
        w.u32(c.table_oid).i16(c.column).u32(c.type_oid);
        w.i16(c.type_size).i32(c.type_modifier).i16(c.format);
    }
}

/// The next (code, value) pair of an error or notice body; `None` at the
/// terminating zero code.
fn next_error_field<'a>(r: &mut Reader<'a>) -> Result<Option<(u8, &'a [u8])>, ProtocolError> {
    match r.u8("field code")? {
        0 => Ok(None),
        code => Ok(Some((code, r.cstr("field value")?))),
    }
}

/// Error fields, each at least two bytes, so the list is bounded by the body.
fn read_error_fields<'a>(r: &mut Reader<'a>) -> Result<Vec<(u8, &'a [u8])>, ProtocolError> {
    let mut list = Vec::new();
    while let Some(field) = next_error_field(r)? {
        list.push(field);
    }
    Ok(list)
}

fn put_error_fields(w: &mut Writer<'_>, list: &[(u8, &[u8])]) {
    for &(code, value) in list.iter().filter(|(code, _)| *code != 0) {
        w.u8(code);
        fields::put_cstr(w, value);
    }
    w.u8(0);
}

/// A validated ErrorResponse or NoticeResponse body, read without
/// allocating: for logging what a server said while relaying its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    body: &'a [u8],
}

impl<'a> ErrorFields<'a> {
    /// Checks that `body` is a well-formed list of fields, ended by a zero
    /// code and nothing after it.
    pub fn parse(body: &'a [u8]) -> Result<ErrorFields<'a>, ProtocolError> {
        let mut r = Reader::new(b'E', body);
        while next_error_field(&mut r)?.is_some() {}
        r.finish("body length")?;
        Ok(ErrorFields { body })
    }

    /// The raw value of the first field with `code` (e.g. `b'D'` for detail).
    pub fn field(&self, code: u8) -> Option<&'a [u8]> {
        let mut r = Reader::new(b'E', self.body);
        while let Ok(Some((c, value))) = next_error_field(&mut r) {
            if c == code {
                return Some(value);
            }
        }
        None
    }

    /// The severity: the never-translated `V` field when present (servers
    /// since 9.6), otherwise the possibly localized `S`.
    pub fn severity(&self) -> Option<&'a str> {
        self.text(b'V').or_else(|| self.text(b'S'))
    }

    /// The SQLSTATE code (`C`).
    pub fn code(&self) -> Option<&'a str> {
        self.text(b'C')
    }

    /// The primary message (`M`).
    pub fn message(&self) -> Option<&'a str> {
        self.text(b'M')
    }

    /// A field as text; `None` rather than a lossy conversion when it is not
    /// UTF-8, so a log never shows text the server did not send.
    fn text(&self, code: u8) -> Option<&'a str> {
        std::str::from_utf8(self.field(code)?).ok()
    }
}

/// Appends an ErrorResponse with severity (`"ERROR"` or `"FATAL"`), SQLSTATE
/// and message, for errors the proxy raises itself.
pub fn error_response(out: &mut Vec<u8>, severity: &str, sqlstate: &str, message: &str) {
    put_error_like(out, b'E', severity, sqlstate, message, None, None);
}

/// [`error_response`] with an optional detail (`D`) and hint (`H`).
pub fn error_response_detail(
    out: &mut Vec<u8>,
    severity: &str,
    sqlstate: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    put_error_like(out, b'E', severity, sqlstate, message, detail, hint);
}

/// Appends a NoticeResponse with severity (`"WARNING"` or `"NOTICE"`),
/// SQLSTATE and message.
pub fn notice_response(out: &mut Vec<u8>, severity: &str, sqlstate: &str, message: &str) {
    put_error_like(out, b'N', severity, sqlstate, message, None, None);
}

/// Writes the fields clients rely on: `S`, and `V` with the same text (the
/// never-translated severity that clients since 9.6 may read instead), `C`,
/// `M`, then detail and hint when given. Values are cut at a NUL, so text
/// that came from elsewhere cannot forge fields.
fn put_error_like(
    out: &mut Vec<u8>,
    tag: u8,
    severity: &str,
    sqlstate: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    debug_assert!(is_sqlstate(sqlstate), "not a SQLSTATE: {sqlstate:?}");
    let mut w = Writer::new(out, tag);
    for (code, value) in [(b'S', severity), (b'V', severity), (b'C', sqlstate), (b'M', message)] {
        put_error_field(&mut w, code, value);
    }
    if let Some(detail) = detail {
        put_error_field(&mut w, b'D', detail);
    }
    if let Some(hint) = hint {
        put_error_field(&mut w, b'H', hint);
    }
    w.u8(0);
    w.finish();
}

fn put_error_field(w: &mut Writer<'_>, code: u8, value: &str) {
    w.u8(code);
    fields::put_cstr(w, value.as_bytes());
}

/// Five characters of digits and upper-case letters.
fn is_sqlstate(s: &str) -> bool {
    s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: u32 = 1 << 20;

    fn field(name: &'static [u8], type_oid: u32) -> FieldDescription<'static> {
        FieldDescription {
            name,
            table_oid: 16_384,
            column: 2,
            type_oid,
            type_size: -1,
            type_modifier: -1,
            format: 0,
        }
    }

    fn auth_samples() -> Vec<Authentication<'static>> {
        use Authentication::*;
        vec![
            Ok,
            KerberosV5,
            CleartextPassword,
            Md5Password { salt: [0, 0xff, 7, 0] },
            Gss,
            GssContinue(b"\x60\x82token"),
            GssContinue(b""),
            Sspi,
            Sasl { mechanisms: vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"] },
            Sasl { mechanisms: vec![] },
            SaslContinue(b"r=abc,s=c2FsdA==,i=4096"),
            SaslFinal(b"v=sig"),
        ]
    }

    /// One message of every variant, with awkward values where they matter.
    fn samples() -> Vec<BackendMessage<'static>> {
        use BackendMessage::*;
        let mut all: Vec<_> = auth_samples().into_iter().map(Authentication).collect();
        all.extend([
            BackendKeyData { pid: 4242, key: -7 },
            BindComplete,
            CloseComplete,
            CommandComplete(b"INSERT 0 1"),
            CopyData(b"a\tb\n\0"),
            CopyDone,
            CopyInResponse { format: 0, column_formats: vec![0, 0] },
            CopyOutResponse { format: 1, column_formats: vec![1] },
            CopyBothResponse { format: 0, column_formats: vec![] },
            DataRow(vec![Some(b"1"), None, Some(b""), Some(b"\xff\0")]),
            DataRow(vec![]),
            EmptyQueryResponse,
            ErrorResponse(vec![(b'S', b"ERROR"), (b'C', b"42P01"), (b'M', b"relation \xe9 missing")]),
            ErrorResponse(vec![]),
            FunctionCallResponse(Some(b"\0\0\0\x01")),
            FunctionCallResponse(None),
            NegotiateProtocolVersion { newest_minor: 0, unrecognized: vec![b"_pq_.x", b""] },
            NoData,
            NoticeResponse(vec![(b'S', b"NOTICE"), (b'M', b"hi")]),
            NotificationResponse { pid: 1, channel: b"jobs", payload: b"" },
            ParameterDescription(vec![23, 25, u32::MAX]),
            ParameterStatus { name: b"client_encoding", value: b"UTF8" },
            ParseComplete,
            PortalSuspended,
            ReadyForQuery(STATUS_IDLE),
            ReadyForQuery(STATUS_IN_TRANSACTION),
            ReadyForQuery(STATUS_FAILED),
            RowDescription(vec![field(b"id", 23), field(b"", 25)]),
            RowDescription(vec![]),
        ]);
        all
    }

    fn encoded(msg: &BackendMessage<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        msg.encode(&mut out);
        out
    }

    fn decode_all(buf: &[u8]) -> Result<Option<(BackendMessage<'_>, usize)>, ProtocolError> {
        BackendMessage::decode(buf, MAX)
    }

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

    /// The body of the single message in `buf`.
    fn body_of(buf: &[u8]) -> &[u8] {
        frame::read_message(buf, MAX).unwrap().unwrap().1
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
    fn samples_cover_every_tag_and_authentication_code() {
        let mut seen: Vec<u8> = samples().iter().map(BackendMessage::tag).collect();
        seen.sort_unstable();
        seen.dedup();
        let mut want = TAGS.to_vec();
        want.sort_unstable();
        assert_eq!(seen, want);
        let mut codes: Vec<i32> = auth_samples()
            .iter()
            .map(|a| {
                let buf = encoded(&BackendMessage::Authentication(a.clone()));
                i32::from_be_bytes(buf[5..9].try_into().unwrap())
            })
            .collect();
        codes.dedup();
        assert_eq!(codes, [0, 2, 3, 5, 7, 8, 9, 10, 11, 12]);
    }

    #[test]
    fn known_tags_agree_with_the_decoder() {
        for tag in 0..=u8::MAX {
            let unknown =
                matches!(BackendMessage::decode_body(tag, b""), Err(ProtocolError::UnexpectedTag { .. }));
            assert_eq!(is_backend_tag(tag), !unknown, "tag {tag}");
            assert_eq!(is_backend_tag(tag), TAGS.contains(&tag), "tag {tag}");
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
        let mut buf = encoded(&BackendMessage::CommandComplete(b"SELECT 1"));
        let first = buf.len();
        BackendMessage::ReadyForQuery(STATUS_IDLE).encode(&mut buf);
        let (_, used) = decode_all(&buf).unwrap().unwrap();
        assert_eq!(used, first);
        let (msg, rest) = decode_all(&buf[used..]).unwrap().unwrap();
        assert_eq!((msg, rest), (BackendMessage::ReadyForQuery(STATUS_IDLE), 6));
    }

    #[test]
    fn bad_lengths_are_errors() {
        assert!(matches!(decode_all(b"Z\0\0\0\x03"), Err(ProtocolError::BadLength { len: 3, .. })));
        assert!(matches!(decode_all(b"Z\xff\xff\xff\xff"), Err(ProtocolError::BadLength { len: -1, .. })));
        assert!(matches!(decode_all(b"D\x80\0\0\0"), Err(ProtocolError::BadLength { len: i32::MIN, .. })));
        let big = framed(b'd', &[0; 100]);
        assert!(matches!(
            BackendMessage::decode(&big, 103),
            Err(ProtocolError::TooLarge { len: 104, max: 103, .. })
        ));
        assert!(BackendMessage::decode(&big, 104).unwrap().is_some());
    }

    #[test]
    fn unknown_tag_is_refused_on_its_first_byte() {
        assert_eq!(decode_all(b"\0"), Err(ProtocolError::UnexpectedTag { tag: 0 }));
        assert_eq!(decode_all(&framed(b'Q', b"x\0")), Err(ProtocolError::UnexpectedTag { tag: b'Q' }));
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        assert_eq!(malformed(&framed(b'1', b"x")), "body length");
        assert_eq!(malformed(&framed(b'Z', b"II")), "body length");
        assert_eq!(malformed(&framed(b'R', b"\0\0\0\0\0")), "body length");
        assert_eq!(malformed(&framed(b'K', b"\0\0\0\x01\0\0\0\x02\0")), "body length");
        assert_eq!(malformed(&framed(b'E', b"SERROR\0\0M")), "body length");
        assert_eq!(malformed(&framed(b'R', b"\0\0\0\x0aSCRAM\0\0x")), "body length");
    }

    #[test]
    fn missing_fields_are_malformed() {
        assert_eq!(malformed(&framed(b'Z', b"")), "transaction status");
        assert_eq!(malformed(&framed(b'K', b"\0\0\0\x01")), "secret key");
        assert_eq!(malformed(&framed(b'R', b"\0\0\0\x05abc")), "MD5 salt");
        assert_eq!(malformed(&framed(b'R', b"\0\0\0\x0aSCRAM\0")), "SASL mechanism");
        assert_eq!(malformed(&framed(b'E', b"SERROR\0")), "field code");
        assert_eq!(malformed(&framed(b'E', b"SERROR")), "field value");
        assert_eq!(malformed(&framed(b'A', b"\0\0\0\x01chan\0")), "payload");
        assert_eq!(malformed(&framed(b'T', b"\0\x01id\0\0\0")), "table oid");
        assert_eq!(malformed(&framed(b'V', b"\0\0\0\x05ab")), "result value");
        assert_eq!(malformed(&framed(b'G', b"")), "copy format");
    }

    #[test]
    fn ready_for_query_status_is_validated() {
        assert_eq!(malformed(&framed(b'Z', b"X")), "transaction status");
        assert_eq!(malformed(&framed(b'Z', b"i")), "transaction status");
    }

    #[test]
    fn unknown_authentication_codes_are_malformed() {
        for code in [1i32, 4, 6, 13, -1] {
            let body = code.to_be_bytes();
            assert_eq!(malformed(&framed(b'R', &body)), "authentication request", "code {code}");
        }
    }

    #[test]
    fn sasl_mechanisms_must_be_utf8() {
        assert_eq!(malformed(&framed(b'R', b"\0\0\0\x0a\xff\0\0")), "SASL mechanism");
    }

    #[test]
    fn negative_and_forged_counts_are_malformed() {
        let negative = b"\0\0\0\0\xff\xff\xff\xff";
        assert_eq!(malformed(&framed(b'v', negative)), "option count");
        assert_eq!(malformed(&framed(b'v', b"\0\0\0\0\x7f\xff\xff\xff")), "option name");
        assert_eq!(malformed(&framed(b'D', b"\x75\x30\0\0\0\x01x")), "column values");
        assert_eq!(malformed(&framed(b'T', b"\xff\xff")), "column name");
        assert_eq!(malformed(&framed(b't', b"\xff\xff\0\0\0\0")), "parameter types");
        assert_eq!(malformed(&framed(b'H', b"\0\xff\xff")), "column format codes");
        assert_eq!(malformed(&framed(b'D', b"\0\x01\xff\xff\xff\xfe")), "column values");
    }

    #[test]
    fn parameter_description_counts_are_unsigned() {
        let types = vec![25; 40_000];
        let msg = BackendMessage::ParameterDescription(types);
        assert_eq!(decode_all(&encoded(&msg)).unwrap().unwrap().0, msg);
    }

    #[test]
    fn encode_cannot_inject_fields() {
        let msg = BackendMessage::ErrorResponse(vec![(b'M', b"a\0Cxxxxx"), (0, b"z"), (b'D', b"d")]);
        let buf = encoded(&msg);
        let want = BackendMessage::ErrorResponse(vec![(b'M', b"a"), (b'D', b"d")]);
        assert_eq!(decode_all(&buf).unwrap().unwrap().0, want);

        let auth = Authentication::Sasl { mechanisms: vec!["", "SCRAM-SHA-256", "\0X", "X\0Y"] };
        let buf = encoded(&BackendMessage::Authentication(auth));
        let want = Authentication::Sasl { mechanisms: vec!["SCRAM-SHA-256", "X"] };
        assert_eq!(decode_all(&buf).unwrap().unwrap().0, BackendMessage::Authentication(want));
    }

    #[test]
    fn error_response_writes_severity_twice_code_and_message() {
        let mut buf = Vec::new();
        error_response(&mut buf, "FATAL", "28000", "token expired");
        let (msg, used) = decode_all(&buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        let want: Vec<(u8, &[u8])> =
            vec![(b'S', b"FATAL"), (b'V', b"FATAL"), (b'C', b"28000"), (b'M', b"token expired")];
        assert_eq!(msg, BackendMessage::ErrorResponse(want));
    }

    #[test]
    fn error_response_detail_adds_only_what_is_given() {
        let mut buf = Vec::new();
        error_response_detail(&mut buf, "ERROR", "25006", "read-only", Some("role r"), None);
        let Some((BackendMessage::ErrorResponse(list), _)) = decode_all(&buf).unwrap() else {
            panic!("not an error response");
        };
        let codes: Vec<u8> = list.iter().map(|f| f.0).collect();
        assert_eq!(codes, b"SVCMD");
        assert_eq!(list[4].1, b"role r");

        buf.clear();
        error_response_detail(&mut buf, "ERROR", "25006", "m", Some("d"), Some("h"));
        let fields = ErrorFields::parse(body_of(&buf)).unwrap();
        assert_eq!((fields.field(b'D'), fields.field(b'H')), (Some(&b"d"[..]), Some(&b"h"[..])));
    }

    #[test]
    fn notice_response_uses_its_own_tag() {
        let mut buf = Vec::new();
        notice_response(&mut buf, "WARNING", "01000", "pool is full");
        assert_eq!(buf[0], b'N');
        let fields = ErrorFields::parse(body_of(&buf)).unwrap();
        assert_eq!(fields.severity(), Some("WARNING"));
        assert_eq!(fields.message(), Some("pool is full"));
    }

    #[test]
    fn synthesized_errors_cut_values_at_nul() {
        let mut buf = Vec::new();
        error_response(&mut buf, "ERROR", "42501", "denied\0Ssmuggled");
        let fields = ErrorFields::parse(body_of(&buf)).unwrap();
        assert_eq!(fields.message(), Some("denied"));
        assert_eq!(fields.field(b'S'), Some(&b"ERROR"[..]));
    }

    #[test]
    fn error_fields_view() {
        let body = b"SFEHLER\0VERROR\0C42P01\0Mbad \xff\0\0";
        let fields = ErrorFields::parse(body).unwrap();
        assert_eq!(fields.severity(), Some("ERROR"));
        assert_eq!(fields.code(), Some("42P01"));
        assert_eq!(fields.message(), None, "not UTF-8: no lossy text");
        assert_eq!(fields.field(b'M'), Some(&b"bad \xff"[..]));
        assert_eq!(fields.field(b'D'), None);

        let old_server = ErrorFields::parse(b"SERROR\0\0").unwrap();
        assert_eq!(old_server.severity(), Some("ERROR"));
        assert_eq!(old_server.code(), None);
    }

    #[test]
    fn error_fields_rejects_bad_bodies() {
        for body in [&b""[..], b"SERROR\0", b"SERROR", b"\0x", b"S"] {
            assert!(ErrorFields::parse(body).is_err(), "{body:?}");
        }
        assert!(ErrorFields::parse(b"\0").is_ok());
    }

    /// A RowDescription field's name, table oid, column, type oid, size, modifier, format.
    type RawColumn = (Vec<u8>, u32, i16, u32, i16, i32, i16);

    /// Owned material from which a message of any variant is built.
    #[derive(Debug, Clone)]
    struct Raw {
        texts: (Vec<u8>, Vec<u8>),
        data: Vec<u8>,
        ints: (i32, i32),
        formats: Vec<i16>,
        oids: Vec<u32>,
        values: Vec<Option<Vec<u8>>>,
        mechanisms: Vec<String>,
        error_fields: Vec<(u8, Vec<u8>)>,
        columns: Vec<RawColumn>,
        small: (u8, [u8; 4]),
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
        let column =
            (cstring(), any::<u32>(), any::<i16>(), any::<u32>(), any::<i16>(), any::<i32>(), any::<i16>());
        (
            (cstring(), cstring()),
            vec(any::<u8>(), 0..48),
            any::<(i32, i32)>(),
            vec(any::<i16>(), 0..6),
            vec(any::<u32>(), 0..6),
            vec(proptest::option::of(vec(any::<u8>(), 0..12)), 0..6),
            vec("[A-Z0-9-]{1,20}", 0..4),
            vec((1u8..=255, cstring()), 0..6),
            vec(column, 0..4),
            any::<(u8, [u8; 4])>(),
        )
            .prop_map(
                |(texts, data, ints, formats, oids, values, mechanisms, error_fields, columns, small)| Raw {
                    texts,
                    data,
                    ints,
                    formats,
                    oids,
                    values,
                    mechanisms,
                    error_fields,
                    columns,
                    small,
                },
            )
    }

    const VARIANTS: usize = 33;

    fn build_authentication(variant: usize, raw: &Raw) -> Authentication<'_> {
        use Authentication::*;
        match variant {
            0 => Ok,
            1 => KerberosV5,
            2 => CleartextPassword,
            3 => Md5Password { salt: raw.small.1 },
            4 => Gss,
            5 => GssContinue(&raw.data),
            6 => Sspi,
            7 => Sasl { mechanisms: raw.mechanisms.iter().map(String::as_str).collect() },
            8 => SaslContinue(&raw.data),
            _ => SaslFinal(&raw.data),
        }
    }

    fn build<'a>(variant: usize, raw: &'a Raw, values: &[Option<&'a [u8]>]) -> BackendMessage<'a> {
        use BackendMessage::*;
        let (a, b) = (&raw.texts.0[..], &raw.texts.1[..]);
        let (format, column_formats) = (raw.small.0 as i8, raw.formats.clone());
        let error_fields = || raw.error_fields.iter().map(|(c, v)| (*c, &v[..])).collect();
        let statuses = [STATUS_IDLE, STATUS_IN_TRANSACTION, STATUS_FAILED];
        match variant {
            0..=9 => Authentication(build_authentication(variant, raw)),
            10 => BackendKeyData { pid: raw.ints.0, key: raw.ints.1 },
            11 => BindComplete,
            12 => CloseComplete,
            13 => CommandComplete(a),
            14 => CopyData(&raw.data),
            15 => CopyDone,
            16 => CopyInResponse { format, column_formats },
            17 => CopyOutResponse { format, column_formats },
            18 => CopyBothResponse { format, column_formats },
            19 => DataRow(values.to_vec()),
            20 => EmptyQueryResponse,
            21 => ErrorResponse(error_fields()),
            22 => FunctionCallResponse(values.first().copied().flatten()),
            23 => NegotiateProtocolVersion { newest_minor: raw.ints.0, unrecognized: vec![a, b] },
            24 => NoData,
            25 => NoticeResponse(error_fields()),
            26 => NotificationResponse { pid: raw.ints.1, channel: a, payload: b },
            27 => ParameterDescription(raw.oids.clone()),
            28 => ParameterStatus { name: a, value: b },
            29 => ParseComplete,
            30 => PortalSuspended,
            31 => ReadyForQuery(statuses[usize::from(raw.small.0) % 3]),
            _ => RowDescription(raw.columns.iter().map(to_field).collect()),
        }
    }

    fn to_field(c: &RawColumn) -> FieldDescription<'_> {
        FieldDescription {
            name: &c.0,
            table_oid: c.1,
            column: c.2,
            type_oid: c.3,
            type_size: c.4,
            type_modifier: c.5,
            format: c.6,
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
            let _ = BackendMessage::decode(&buf, max_len);
            let _ = ErrorFields::parse(&buf);
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

        /// Authentication bodies start with a valid code more often this way.
        #[test]
        fn authentication_bodies_re_encode_identically(
            code in 0i32..14,
            rest in proptest::collection::vec(any::<u8>(), 0..24),
        ) {
            let mut body = code.to_be_bytes().to_vec();
            body.extend_from_slice(&rest);
            let buf = framed(b'R', &body);
            if let Ok(Some((msg, _))) = decode_all(&buf) {
                prop_assert_eq!(encoded(&msg), buf);
            }
        }
    }
}
