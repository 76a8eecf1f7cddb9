//! What an HTTP/1.1 upstream sends back, read strictly: the response head, the framing of
//! its body (RFC 9112 §6.3) and the chunked transfer coding (RFC 9112 §7.1).
//!
//! An upstream is a peer, not a friend. Anything that could frame a body two ways is an
//! error, never a guess: `Transfer-Encoding` together with `Content-Length`, differing
//! `Content-Length` values, a chunk size that overflows. So is a body in a transfer coding
//! other than `chunked`, which the gateway cannot undo. Heads, header counts, chunk
//! extensions and trailers are bounded.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// Room for the headers the gateway adds to an answer (its request id, rate-limit fields)
/// without growing the map, which rehashes it. The server keeps the map, emptied, for the
/// caller's next request on the connection, which gets a few headers added too (the request
/// id, the forwarding and credential headers).
const HEADROOM: usize = 6;

/// The largest response head accepted, interim (1xx) heads included. Offsets into a head
/// fit in a `u16`.
pub const MAX_HEAD_BYTES: usize = 64 * 1024 - 1;
/// The most header fields in one response head.
pub const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (size and extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// All trailer fields of a chunked body together; they are read and dropped.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Why a response cannot be used. Never quotes the upstream's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("malformed response head ({0})")]
    Malformed(&'static str),
    #[error("Content-Length is invalid or given twice with different values")]
    BadContentLength,
    #[error("both Transfer-Encoding and Content-Length")]
    AmbiguousFraming,
    #[error("a body in a transfer coding other than chunked")]
    UnsupportedTransferCoding,
    #[error("protocol switch (101) that was never asked for")]
    UnexpectedUpgrade,
    #[error("malformed chunked body ({0})")]
    BadChunk(&'static str),
}

/// How the body of a response ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to HEAD, 204 or 304.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// A parsed final (non-1xx) response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request once this body is read.
    pub reusable: bool,
}

/// The most interim (1xx) responses before the final one.
const MAX_INTERIM: usize = 8;

/// Reads a response head as its bytes arrive, skipping interim 1xx responses. All heads of
/// one response together stay within [`MAX_HEAD_BYTES`]. A head is parsed as soon as its
/// first bytes are here (most heads arrive whole); one that is not complete then is parsed
/// again only once its end has arrived, so a head sent a byte at a time costs one scan and
/// two parses, not one per byte.
#[derive(Debug, Default)]
pub struct HeadParser {
    /// Bytes of interim heads already taken.
    interim_bytes: usize,
    interim: usize,
    /// How far the buffer has been searched for the end of the head.
    scanned: usize,
    /// The empty lines at the start of the buffer, which httparse skips before a status
    /// line: their line feeds are not the end of a head.
    blank: usize,
}

impl HeadParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a response head at the start of `buf`. Returns `Ok(None)` when more bytes are
    /// needed; on success the head's bytes are taken out of `buf`, which then starts with
    /// the body. Header values share the head's buffer.
    pub fn parse(
        &mut self,
        buf: &mut BytesMut,
        head_request: bool,
    ) -> Result<Option<Head>, ProtocolError> {
        match self.advance(buf, Some(head_request))? {
            Parsed::Final(head) => Ok(Some(head)),
            _ => Ok(None),
        }
    }

    /// Takes the complete interim (1xx) heads at the start of `buf`, as [`Self::parse`]
    /// would, and says whether a complete final head follows them; that head stays in `buf`
    /// for [`Self::parse`]. For an answer that arrives while the request body is still
    /// going out: `100 Continue` or `103 Early Hints` does not end the upload, a final head
    /// does.
    pub fn skip_interim(&mut self, buf: &mut BytesMut) -> Result<bool, ProtocolError> {
        Ok(matches!(self.advance(buf, None)?, Parsed::FinalAhead))
    }

    /// Whether an interim head has been taken.
    pub fn saw_interim(&self) -> bool {
        self.interim > 0
    }

    /// Takes interim heads, then the final head when `take_final` says whether the request
    /// was a HEAD; with `None` the final head is left in `buf`. `Partial` means more bytes
    /// are needed.
    fn advance(
        &mut self,
        buf: &mut BytesMut,
        take_final: Option<bool>,
    ) -> Result<Parsed, ProtocolError> {
        loop {
            let budget = MAX_HEAD_BYTES.saturating_sub(self.interim_bytes);
            // A head's first look: most arrive whole, and httparse finds their end itself.
            // One that has not is scanned for its end from then on, so that a head sent a
            // byte at a time is parsed twice at most, however many reads it takes.
            let parsed = if self.scanned == 0 {
                parse_one(buf, take_final, budget)?
            } else {
                Parsed::Partial
            };
            match parsed {
                Parsed::Partial => {}
                Parsed::Interim(len) => {
                    self.interim_taken(len)?;
                    continue;
                }
                done => return Ok(done),
            }
            // Nothing to parse until the blank line that ends a head is here.
            self.blank = empty_lines(buf, self.blank);
            let from = self.scanned.saturating_sub(2).max(self.blank);
            let Some(end) = head_end(buf, from) else {
                self.scanned = buf.len();
                if self.interim_bytes + buf.len() > MAX_HEAD_BYTES {
                    return Err(ProtocolError::HeadTooLarge);
                }
                return Ok(Parsed::Partial);
            };
            if self.interim_bytes + end > MAX_HEAD_BYTES {
                return Err(ProtocolError::HeadTooLarge);
            }
            match parse_one(buf, take_final, budget)? {
                // The blank line was the end of a head: httparse agrees, or says why not.
                Parsed::Partial => return Err(ProtocolError::Malformed("head")),
                Parsed::Interim(len) => self.interim_taken(len)?,
                done => return Ok(done),
            }
        }
    }

    /// An interim head of `len` bytes was taken out of the buffer: the next starts afresh.
    fn interim_taken(&mut self, len: usize) -> Result<(), ProtocolError> {
        self.interim += 1;
        if self.interim > MAX_INTERIM {
            return Err(ProtocolError::Malformed("too many interim responses"));
        }
        self.interim_bytes += len;
        self.scanned = 0;
        self.blank = 0;
        Ok(())
    }
}

/// Where the empty lines (CRLF or LF) at the start of `buf` end, going on from `from`, a
/// point known to follow only empty lines. A CR not yet followed by its LF is not counted.
fn empty_lines(buf: &[u8], from: usize) -> usize {
    let mut i = from;
    loop {
        match buf.get(i..) {
            Some([b'\n', ..]) => i += 1,
            Some([b'\r', b'\n', ..]) => i += 2,
            _ => return i,
        }
    }
}

/// Where the first blank line after `from` ends: LF then CRLF, or LF LF (which httparse
/// then judges).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        let lf = buf.get(i..)?.iter().position(|&b| b == b'\n')? + i;
        match buf.get(lf + 1..lf + 3) {
            Some([b'\n', _]) => return Some(lf + 2),
            Some(b"\r\n") => return Some(lf + 3),
            None if buf.get(lf + 1) == Some(&b'\n') => return Some(lf + 2),
            _ => {}
        }
        i = lf + 1;
    }
    None
}

/// Parses a response head at the start of `buf` in one go (a convenience over
/// [`HeadParser`] for bytes that are all here).
pub fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, ProtocolError> {
    HeadParser::new().parse(buf, head_request)
}

enum Parsed {
    Partial,
    /// A 1xx head of this many bytes, taken out of the buffer.
    Interim(usize),
    Final(Head),
    /// A complete final head, left in the buffer.
    FinalAhead,
}

/// Parses the head at the start of `buf`; a final one is taken only with `take_final`
/// (whether the request was a HEAD). A head longer than `budget` bytes is refused.
fn parse_one(
    buf: &mut BytesMut,
    take_final: Option<bool>,
    budget: usize,
) -> Result<Parsed, ProtocolError> {
    // (name start, name end, value start, value end) within the head.
    let mut spans = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
    let (len, code, minor, count) = {
        let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut headers,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(httparse::Error::TooManyHeaders) => return Err(ProtocolError::TooManyHeaders),
            Err(e) => return Err(ProtocolError::Malformed(malformed(e))),
        };
        if len > budget {
            return Err(ProtocolError::HeadTooLarge);
        }
        let code = resp.code.ok_or(ProtocolError::Malformed("status"))?;
        let minor = resp.version.ok_or(ProtocolError::Malformed("version"))?;
        let base = buf.as_ptr() as usize;
        let count = resp.headers.len();
        for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
            // Within the head, which is shorter than 64 KiB.
            let offset = |s: &[u8]| u16::try_from(s.as_ptr() as usize - base).unwrap_or(0);
            let (n, v) = (offset(h.name.as_bytes()), offset(h.value));
            // Lengths are bounded by the head too.
            *span = (n, n + h.name.len() as u16, v, v + h.value.len() as u16);
        }
        (len, code, minor, count)
    };
    if (100..200).contains(&code) {
        if code == 101 {
            return Err(ProtocolError::UnexpectedUpgrade);
        }
        // 100 Continue, 103 Early Hints: informational only, the final head follows.
        buf.advance(len);
        return Ok(Parsed::Interim(len));
    }
    let status = StatusCode::from_u16(code).map_err(|_| ProtocolError::Malformed("status"))?;
    let Some(head_request) = take_final else {
        return Ok(Parsed::FinalAhead);
    };
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count + HEADROOM);
    for &(ns, ne, vs, ve) in &spans[..count] {
        let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
        let name = HeaderName::from_bytes(&head[ns..ne])
            .map_err(|_| ProtocolError::Malformed("header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| ProtocolError::Malformed("header value"))?;
        headers.append(name, value);
    }
    let (framing, reusable, length) = framing(&headers, status, minor, head_request)?;
    if let Some(n) = length {
        // `Content-Length: 5, 5` or the field twice: one value, as the caller will see it
        // (RFC 9110 §8.6 lets a recipient replace them; strict clients refuse the list).
        headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(Parsed::Final(Head {
        status,
        headers,
        framing,
        reusable,
    }))
}

fn malformed(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "header name",
        httparse::Error::HeaderValue => "header value",
        httparse::Error::NewLine => "line ending",
        httparse::Error::Status => "status",
        httparse::Error::Token => "token",
        httparse::Error::Version => "version",
        httparse::Error::TooManyHeaders => "too many headers",
    }
}

/// RFC 9112 §6.3, strictly: how the body ends, whether the connection may be reused after
/// it, and the length to write as the one `Content-Length` when the upstream repeated it.
fn framing(
    headers: &HeaderMap,
    status: StatusCode,
    minor: u8,
    head_request: bool,
) -> Result<(Framing, bool, Option<u64>), ProtocolError> {
    let mut reusable = minor == 1 && !asks_to_close(headers);
    let mut chunked = false;
    let mut has_te = false;
    let mut other_coding = false;
    for value in headers.get_all(TRANSFER_ENCODING) {
        // Present at all, even empty, it says the length is not Content-Length's.
        has_te = true;
        let value = value
            .to_str()
            .map_err(|_| ProtocolError::Malformed("transfer-encoding"))?;
        let mut codings = 0;
        for coding in value.split(',').map(str::trim) {
            if coding.is_empty() {
                continue;
            }
            if chunked {
                // `chunked` must be the last coding; anything after it is a framing trick.
                return Err(ProtocolError::Malformed("transfer-encoding after chunked"));
            }
            codings += 1;
            chunked = coding.eq_ignore_ascii_case("chunked");
            other_coding |= !chunked;
        }
        if codings == 0 {
            return Err(ProtocolError::Malformed("empty transfer-encoding"));
        }
    }
    let mut length: Option<u64> = None;
    let mut repeated = false;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n = parse_length(part.trim_ascii()).ok_or(ProtocolError::BadContentLength)?;
            if let Some(l) = length {
                if l != n {
                    return Err(ProtocolError::BadContentLength);
                }
                repeated = true;
            }
            length = Some(n);
        }
    }
    let normalize = length.filter(|_| repeated);
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        // An answer without a body that announces one may be followed by one anyway, from
        // an upstream that gets the rule wrong: its bytes could arrive after the connection
        // went back to the pool, and be read as the next request's answer. A 204 must not
        // announce one (RFC 9110 §8.6); a 304 and an answer to HEAD may give the length or
        // the coding the full answer would have had (RFC 9110 §8.6, RFC 9112 §6.1), but
        // they are rare enough here that their connection is not worth the doubt.
        let announces_body = has_te || length.is_some_and(|n| n > 0);
        if announces_body {
            reusable = false;
        }
        return Ok((Framing::Empty, reusable, normalize));
    }
    if has_te {
        if length.is_some() {
            return Err(ProtocolError::AmbiguousFraming);
        }
        if minor == 0 {
            return Err(ProtocolError::Malformed("transfer-encoding in HTTP/1.0"));
        }
        if other_coding {
            // The gateway decodes `chunked` and frames the answer anew, dropping
            // `Transfer-Encoding` as hop-by-hop: a `gzip` coding would reach the caller as
            // bytes it is not told how to read. Refused, as nginx refuses it.
            return Err(ProtocolError::UnsupportedTransferCoding);
        }
        return Ok((Framing::Chunked, reusable, None));
    }
    match length {
        Some(n) => Ok((Framing::Length(n), reusable, normalize)),
        None => Ok((Framing::UntilClose, false, None)),
    }
}

fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// Whether `Connection` names `close`. A value that is not visible ASCII counts as naming
/// it: what cannot be read cannot prove the connection stays open.
fn asks_to_close(headers: &HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str().map_or(true, |v| {
            v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))
        })
    })
}

/// What the chunked decoder produced from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    Data(Bytes),
    /// The buffer holds no complete piece; read more.
    NeedMore,
    /// The last chunk and the trailers are read; the buffer starts after the body.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    /// Whitespace after the size: only `;` (an extension) or the line end may follow.
    SizeSpace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// A streaming decoder of the chunked transfer coding. Trailer fields are read and dropped.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u8,
    line: usize,
    trailers: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self {
            state: State::Size,
            size: 0,
            digits: 0,
            line: 0,
            trailers: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes framing from `buf` and returns the next piece of data, if any.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Chunk, ProtocolError> {
        use ProtocolError::BadChunk;
        loop {
            if self.state == State::Done {
                return Ok(Chunk::Done);
            }
            if self.state == State::Data {
                if buf.is_empty() {
                    return Ok(Chunk::NeedMore);
                }
                let n = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                return Ok(Chunk::Data(buf.split_to(n).freeze()));
            }
            let Some(&b) = buf.first() else {
                return Ok(Chunk::NeedMore);
            };
            buf.advance(1);
            self.state = match (self.state, b) {
                (State::Size, _) if b.is_ascii_hexdigit() => {
                    if self.digits == 16 {
                        return Err(BadChunk("chunk size too large"));
                    }
                    self.digits += 1;
                    self.size =
                        (self.size << 4) | u64::from(idgate_codec::hex::digit(b).unwrap_or(0));
                    self.line += 1;
                    State::Size
                }
                (State::Size | State::SizeSpace, b';') if self.digits > 0 => {
                    self.line += 1;
                    State::Extension
                }
                (State::Size | State::SizeSpace, b' ' | b'\t') if self.digits > 0 => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(BadChunk("chunk size line too long"));
                    }
                    State::SizeSpace
                }
                (State::Size | State::SizeSpace, b'\r') if self.digits > 0 => State::SizeLf,
                (State::Size | State::SizeSpace, _) => return Err(BadChunk("chunk size")),
                (State::Extension, b'\r') => State::SizeLf,
                (State::Extension, b'\t' | b' '..=b'~' | 0x80..=0xff) => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(BadChunk("chunk extension too long"));
                    }
                    State::Extension
                }
                (State::Extension, _) => return Err(BadChunk("chunk extension")),
                (State::SizeLf, b'\n') => {
                    self.line = 0;
                    self.digits = 0;
                    if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    }
                }
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataLf, b'\n') => State::Size,
                (State::SizeLf | State::DataCr | State::DataLf, _) => {
                    return Err(BadChunk("line ending"));
                }
                (State::TrailerStart, b'\r') => State::EndLf,
                (State::TrailerLine, b'\r') => State::TrailerLf,
                (State::TrailerStart | State::TrailerLine, b'\t' | b' '..=b'~' | 0x80..=0xff) => {
                    self.trailers += 1;
                    if self.trailers > MAX_TRAILER_BYTES {
                        return Err(BadChunk("trailers too large"));
                    }
                    State::TrailerLine
                }
                (State::TrailerStart | State::TrailerLine, _) => {
                    return Err(BadChunk("trailer field"));
                }
                (State::TrailerLf, b'\n') => State::TrailerStart,
                (State::EndLf, b'\n') => State::Done,
                (State::TrailerLf | State::EndLf, _) => return Err(BadChunk("line ending")),
                // Handled above, before a byte is taken.
                (State::Data | State::Done, _) => State::Done,
            };
        }
    }
}

#[cfg(test)]
mod tests;
