//! What an HTTP/1.1 upstream sends back: the response head and the chunked coding never
//! panic, whatever the bytes and however they are split across reads (also while interim
//! heads are taken during an upload); a head that parses has a framing, and the decoder
//! never yields more bytes than it was given.
#![no_main]

use bytes::BytesMut;
use idgate_h1::parse::{Chunk, ChunkedDecoder, Framing, HeadParser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else { return };
    let head_request = split & 1 == 1;
    let step = usize::from(split >> 1).max(1);

    // The head, fed in steps as reads would deliver it.
    let mut parser = HeadParser::new();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let body_start = loop {
        match parser.parse(&mut buf, head_request) {
            Ok(Some(head)) => {
                assert!(head.status.as_u16() >= 200);
                if head_request {
                    assert_eq!(head.framing, Framing::Empty);
                }
                break Some(head.framing);
            }
            Ok(None) if fed < data.len() => {
                let end = (fed + step).min(data.len());
                buf.extend_from_slice(&data[fed..end]);
                fed = end;
            }
            Ok(None) | Err(_) => break None,
        }
    };
    let _ = body_start;

    // The same bytes arriving while a request body is still going out: interim heads are
    // taken as they complete, and a final head that was found is then parsed from the same
    // buffer, never asked for again.
    let mut parser = HeadParser::new();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    loop {
        match parser.skip_interim(&mut buf) {
            Ok(true) => {
                assert!(!matches!(parser.parse(&mut buf, head_request), Ok(None)));
                break;
            }
            Ok(false) if fed < data.len() => {
                let end = (fed + step).min(data.len());
                buf.extend_from_slice(&data[fed..end]);
                fed = end;
            }
            Ok(false) | Err(_) => break,
        }
    }

    // The same bytes as a chunked body.
    let mut dec = ChunkedDecoder::new();
    let mut buf = BytesMut::new();
    let (mut fed, mut out) = (0, 0usize);
    loop {
        match dec.decode(&mut buf) {
            Ok(Chunk::Data(d)) => {
                assert!(!d.is_empty());
                out += d.len();
                assert!(out <= fed);
            }
            Ok(Chunk::NeedMore) if fed < data.len() => {
                let end = (fed + step).min(data.len());
                buf.extend_from_slice(&data[fed..end]);
                fed = end;
            }
            Ok(Chunk::Done) => {
                assert!(dec.is_done());
                break;
            }
            Ok(Chunk::NeedMore) | Err(_) => break,
        }
    }
});
