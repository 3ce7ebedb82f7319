//! Message framing: the 5-byte header (tag + length) every v3 message after
//! the startup packet carries, and small readers for the fields inside a body.
//!
//! Everything here works on byte slices and never reads past a checked
//! bound. Incomplete input is `Ok(None)`, never an error.

use super::ProtocolError;

/// Size of a regular message header: one tag byte and a 4-byte length that
/// counts itself but not the tag.
pub const HEADER_LEN: usize = 5;

/// A message header: `tag`, and `len` as on the wire (counts the 4 length
/// bytes and the body, not the tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    pub len: u32,
}

impl Header {
    /// Bytes of the body (after the header).
    #[inline]
    pub fn body_len(&self) -> usize {
        self.len as usize - 4
    }

    /// Bytes of the whole message, header included.
    #[inline]
    pub fn total_len(&self) -> usize {
        self.len as usize + 1
    }
}

/// Reads the header at the start of `buf`.
///
/// `Ok(None)` when fewer than [`HEADER_LEN`] bytes are there. A length below
/// 4 (including negative values read as i32) or above `max_len` is an error:
/// the peer is broken or hostile, and the stream cannot be resynchronised.
#[inline]
pub fn read_header(buf: &[u8], max_len: u32) -> Result<Option<Header>, ProtocolError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if (len as i32) < 4 {
        return Err(ProtocolError::BadLength { tag, len: len as i32 });
    }
    if len > max_len {
        return Err(ProtocolError::TooLarge { tag, len: len as usize, max: max_len as usize });
    }
    Ok(Some(Header { tag, len }))
}

/// Reads a complete message at the start of `buf`: its header and body.
/// `Ok(None)` while the message is incomplete.
#[inline]
pub fn read_message(buf: &[u8], max_len: u32) -> Result<Option<(Header, &[u8])>, ProtocolError> {
    match read_header(buf, max_len)? {
        Some(h) if buf.len() >= h.total_len() => Ok(Some((h, &buf[HEADER_LEN..h.total_len()]))),
        _ => Ok(None),
    }
}

/// A cursor over a message body that reads wire types with bounds checks.
/// Every read past the end is [`ProtocolError::Malformed`] naming `what`.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    tag: u8,
}

impl<'a> Reader<'a> {
    pub fn new(tag: u8, buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0, tag }
    }

    fn malformed(&self, what: &'static str) -> ProtocolError {
        ProtocolError::Malformed { tag: self.tag, what }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let r = &self.buf[self.pos..];
        self.pos = self.buf.len();
        r
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.malformed(what))?;
        self.pos += 1;
        Ok(b)
    }

    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        if self.remaining() < n {
            return Err(self.malformed(what));
        }
        let r = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(r)
    }

    pub fn i16(&mut self, what: &'static str) -> Result<i16, ProtocolError> {
        let b = self.bytes(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        Ok(self.i16(what)? as u16)
    }

    pub fn i32(&mut self, what: &'static str) -> Result<i32, ProtocolError> {
        let b = self.bytes(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        Ok(self.i32(what)? as u32)
    }

    /// A NUL-terminated string, returned without its terminator.
    pub fn cstr(&mut self, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        let rest = &self.buf[self.pos..];
        let end = rest.iter().position(|&b| b == 0).ok_or_else(|| self.malformed(what))?;
        self.pos += end + 1;
        Ok(&rest[..end])
    }

    /// A NUL-terminated string that must be UTF-8.
    pub fn cstr_utf8(&mut self, what: &'static str) -> Result<&'a str, ProtocolError> {
        let b = self.cstr(what)?;
        std::str::from_utf8(b).map_err(|_| self.malformed(what))
    }

    /// A length-prefixed value (Int32 length, -1 for NULL).
    pub fn nullable_bytes(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, ProtocolError> {
        let n = self.i32(what)?;
        if n == -1 {
            return Ok(None);
        }
        if n < 0 {
            return Err(self.malformed(what));
        }
        self.bytes(n as usize, what).map(Some)
    }

    /// Errors unless the whole body was consumed.
    pub fn finish(&self, what: &'static str) -> Result<(), ProtocolError> {
        if self.remaining() != 0 {
            return Err(self.malformed(what));
        }
        Ok(())
    }
}

/// Builds one message into a buffer: writes the tag and a length placeholder,
/// and patches the length when finished. Never allocates beyond `buf`'s growth.
pub struct Writer<'a> {
    buf: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> Writer<'a> {
    /// Starts a message with `tag`.
    pub fn new(buf: &'a mut Vec<u8>, tag: u8) -> Self {
        buf.push(tag);
        let start = buf.len();
        buf.extend_from_slice(&[0, 0, 0, 0]);
        Writer { buf, start }
    }

    /// Starts an untagged message (startup packet, SSLRequest, CancelRequest).
    pub fn untagged(buf: &'a mut Vec<u8>) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&[0, 0, 0, 0]);
        Writer { buf, start }
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn i16(&mut self, v: i16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }
    /// Writes `v` and a NUL terminator.
    pub fn cstr(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self.buf.push(0);
        self
    }
    /// Writes an Int32 length (-1 for None) and the value.
    pub fn nullable_bytes(&mut self, v: Option<&[u8]>) -> &mut Self {
        match v {
            None => self.i32(-1),
            Some(b) => {
                self.i32(b.len() as i32);
                self.bytes(b)
            }
        }
    }

    /// Patches the length field. Call once, after the last field.
    pub fn finish(self) {
        let len = (self.buf.len() - self.start) as u32;
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_incomplete_is_none() {
        assert_eq!(read_header(b"Q\0\0", 100).unwrap(), None);
    }

    #[test]
    fn header_rejects_short_negative_and_oversize() {
        assert!(read_header(b"Q\0\0\0\x03", 100).is_err());
        assert!(read_header(b"Q\xff\xff\xff\xff", 100).is_err());
        assert!(read_header(b"Q\0\0\x01\x00", 100).is_err());
        assert_eq!(read_header(b"Q\0\0\0\x04", 100).unwrap().unwrap().total_len(), 5);
    }

    #[test]
    fn writer_patches_length() {
        let mut b = Vec::new();
        let mut w = Writer::new(&mut b, b'Q');
        w.cstr(b"select 1");
        w.finish();
        let (h, body) = read_message(&b, 1 << 20).unwrap().unwrap();
        assert_eq!(h.tag, b'Q');
        assert_eq!(body, b"select 1\0");
    }

    #[test]
    fn reader_bounds() {
        let mut r = Reader::new(b'X', b"ab");
        assert!(r.cstr("s").is_err());
        assert!(r.i32("n").is_err());
        assert_eq!(r.bytes(2, "b").unwrap(), b"ab");
        assert!(r.u8("x").is_err());
    }
}
