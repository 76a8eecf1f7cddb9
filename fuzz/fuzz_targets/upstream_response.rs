//! What an HTTP/1.1 upstream sends back, read as the gateway's own client reads it: the
//! response head (interim heads skipped), then the body as that head frames it.
//!
//! The first byte is whether the request was a HEAD (bit 0) and the size of the pieces the
//! answer arrives in after its first one (bits 1 to 7, at least 1); the second is where the
//! first piece ends. The rest is the answer.
//!
//! What must hold, besides never panicking:
//! - the answer reads the same whole and in pieces: the same head (status, fields, framing,
//!   reuse), the same body and the same bytes after it, or the same refusal (a head refused
//!   whole may wait for its end in pieces, and is refused once it comes);
//! - a head is a final one (2xx and up), and the answer to a HEAD has no body;
//! - a chunked body never yields more bytes than it took; once it is done, what is left is
//!   exactly what came after it: its own bytes alone decode to the same data, done, with
//!   nothing left, and without their last byte are neither done nor an error;
//! - interim heads taken while a request body is still going out leave a final head that
//!   is found for the parser, never asked for again.
#![no_main]

use bytes::BytesMut;
use http::{HeaderMap, StatusCode};
use idgate_h1::parse::{Chunk, ChunkedDecoder, Framing, HeadParser, ProtocolError, MAX_HEAD_BYTES};
use libfuzzer_sys::fuzz_target;

/// The answer's bytes as reads deliver them: `data[..first]`, then pieces of `step`.
struct Feed<'a> {
    data: &'a [u8],
    fed: usize,
    first: usize,
    step: usize,
}

impl<'a> Feed<'a> {
    fn new(data: &'a [u8], first: usize, step: usize) -> Self {
        Self {
            data,
            fed: 0,
            first: first.min(data.len()),
            step: step.max(1),
        }
    }

    /// Appends the next read to `buf`; false when everything has arrived.
    fn read(&mut self, buf: &mut BytesMut) -> bool {
        if self.fed == self.data.len() {
            return false;
        }
        let end = if self.fed < self.first {
            self.first
        } else {
            (self.fed + self.step).min(self.data.len())
        };
        buf.extend_from_slice(&self.data[self.fed..end]);
        self.fed = end;
        true
    }

    /// What has not arrived yet.
    fn rest(&self) -> &'a [u8] {
        &self.data[self.fed..]
    }
}

/// An answer as the client read it.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    framing: Framing,
    reusable: bool,
    body: Vec<u8>,
    /// The body ended as its framing says (for `UntilClose`: never, the connection did).
    ended: bool,
    /// The bytes after the body, once it ended.
    after: Vec<u8>,
}

/// Why an answer could not be read.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    Head(ProtocolError),
    Body(ProtocolError),
}

/// Reads an answer arriving as `feed` delivers it. `Ok(None)`: its head never completed.
fn read(mut feed: Feed<'_>, head_request: bool) -> Result<Option<Answer>, Refused> {
    let mut parser = HeadParser::new();
    let mut buf = BytesMut::new();
    let head = loop {
        match parser
            .parse(&mut buf, head_request)
            .map_err(Refused::Head)?
        {
            Some(head) => break head,
            None if feed.read(&mut buf) => {}
            None => return Ok(None),
        }
    };
    assert!(
        head.status.as_u16() >= 200,
        "an interim head was taken for the final one"
    );
    if head_request {
        assert_eq!(head.framing, Framing::Empty);
    }
    let mut body = Vec::new();
    let ended = match head.framing {
        Framing::Empty => true,
        Framing::Length(n) => {
            while (buf.len() as u64) < n && feed.read(&mut buf) {}
            let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
            body.extend_from_slice(&buf.split_to(take));
            body.len() as u64 == n
        }
        Framing::Chunked => {
            let mut dec = ChunkedDecoder::new();
            loop {
                match dec.decode(&mut buf).map_err(Refused::Body)? {
                    Chunk::Data(d) => {
                        assert!(!d.is_empty(), "an empty piece of data");
                        body.extend_from_slice(&d);
                    }
                    Chunk::NeedMore if feed.read(&mut buf) => {}
                    Chunk::NeedMore => break false,
                    Chunk::Done => {
                        assert!(dec.is_done());
                        break true;
                    }
                }
            }
        }
        Framing::UntilClose => {
            while feed.read(&mut buf) {}
            body.extend_from_slice(&buf.split());
            false
        }
    };
    let mut after = Vec::new();
    if ended {
        after.extend_from_slice(&buf);
        after.extend_from_slice(feed.rest());
    }
    Ok(Some(Answer {
        status: head.status,
        headers: head.headers,
        framing: head.framing,
        reusable: head.reusable,
        body,
        ended,
        after,
    }))
}

/// Decodes `bytes` as a chunked body all at once: the data, and whether it was done.
fn decode_all(bytes: &[u8]) -> Result<(Vec<u8>, bool, usize), ProtocolError> {
    let mut dec = ChunkedDecoder::new();
    let mut buf = BytesMut::from(bytes);
    let mut data = Vec::new();
    loop {
        match dec.decode(&mut buf)? {
            Chunk::Data(d) => data.extend_from_slice(&d),
            Chunk::NeedMore => return Ok((data, false, buf.len())),
            Chunk::Done => return Ok((data, true, buf.len())),
        }
    }
}

/// A chunked body that ended took exactly its own bytes, and needed nothing after them.
fn chunked_body_took_its_own_bytes(data: &[u8], head_request: bool, answer: &Answer) {
    let mut parsed = BytesMut::from(data);
    let Ok(Some(_)) = HeadParser::new().parse(&mut parsed, head_request) else {
        panic!("the head parsed once")
    };
    let start = data.len() - parsed.len();
    let end = data.len() - answer.after.len();
    let own = &data[start..end];
    assert!(answer.body.len() <= own.len(), "more data than bytes");
    let (body, done, left) = decode_all(own).expect("its own bytes decode");
    assert_eq!((&body, done, left), (&answer.body, true, 0));
    if let Some((_, short)) = own.split_last() {
        let (_, done, _) = decode_all(short).expect("a body cut short is not an error");
        assert!(!done, "done before its last byte");
    }
}

fuzz_target!(|input: &[u8]| {
    let [flags, first, data @ ..] = input else {
        return;
    };
    let head_request = *flags & 1 == 1;
    let step = usize::from(flags >> 1).max(1);
    let first = usize::from(*first);

    let whole = read(Feed::new(data, data.len(), data.len()), head_request);
    let pieces = read(Feed::new(data, first, step), head_request);
    let same_refusal = |w: &Refused, p: &Refused| {
        // Past the head's limit, pieces stop at the limit, where the whole head may show a
        // fault further on first: both are refusals.
        if data.len() + 4 <= MAX_HEAD_BYTES {
            assert_eq!(w, p, "the same refusal whole and in pieces");
        }
    };
    match (&whole, &pieces) {
        (Ok(w), Ok(p)) => assert_eq!(w, p, "the same answer whole and in pieces"),
        (Err(w), Err(p)) => same_refusal(w, p),
        // In pieces, a head that was not whole at its first look is parsed again only once
        // its end is here: one refused whole waits for its end, and is refused when it comes.
        (Err(w @ Refused::Head(_)), Ok(None)) => {
            let mut ended = data.to_vec();
            ended.extend_from_slice(b"\r\n\r\n");
            match read(Feed::new(&ended, first, step), head_request) {
                Err(p) => same_refusal(w, &p),
                Ok(p) => panic!("whole: {whole:?}, in pieces once ended: {p:?}"),
            }
        }
        _ => panic!("whole: {whole:?}, in pieces: {pieces:?}"),
    }

    if let Ok(Some(answer)) = &whole {
        if answer.framing == Framing::Chunked && answer.ended {
            chunked_body_took_its_own_bytes(data, head_request, answer);
        }
    }

    // The same bytes arriving while a request body is still going out: interim heads are
    // taken as they complete, and a final head that was found is then parsed from the same
    // buffer, never asked for again.
    let mut parser = HeadParser::new();
    let mut buf = BytesMut::new();
    let mut feed = Feed::new(data, first, step);
    loop {
        match parser.skip_interim(&mut buf) {
            Ok(true) => {
                assert!(!matches!(parser.parse(&mut buf, head_request), Ok(None)));
                break;
            }
            Ok(false) if feed.read(&mut buf) => {}
            Ok(false) | Err(_) => break,
        }
    }
});
