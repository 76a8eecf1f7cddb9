//! The parser against heads and bodies that frame one way, two ways, or none.

use super::*;

fn head(raw: &str, head_request: bool) -> Result<Option<Head>, ProtocolError> {
    parse_head(&mut BytesMut::from(raw), head_request)
}

fn framing_of(raw: &str) -> Result<(Framing, bool), ProtocolError> {
    head(raw, false).map(|h| {
        let h = h.expect("complete head");
        (h.framing, h.reusable)
    })
}

#[test]
fn content_length_frames_the_body_and_the_rest_stays_in_the_buffer() {
    let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: b\r\n\r\nokNEXT");
    let h = parse_head(&mut buf, false).unwrap().unwrap();
    assert_eq!(h.status, 200);
    assert_eq!((h.framing, h.reusable), (Framing::Length(2), true));
    assert_eq!(h.headers.get("x-a").unwrap(), "b");
    assert_eq!(&buf[..], b"okNEXT");
}

#[test]
fn a_partial_head_asks_for_more_and_an_endless_one_is_refused() {
    assert!(
        head("HTTP/1.1 200 OK\r\ncontent-len", false)
            .unwrap()
            .is_none()
    );
    let long = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
    assert_eq!(head(&long, false).unwrap_err(), ProtocolError::HeadTooLarge);
    let many: String = (0..=MAX_HEADERS).map(|i| format!("x{i}: 1\r\n")).collect();
    assert_eq!(
        head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), false).unwrap_err(),
        ProtocolError::TooManyHeaders
    );
}

#[test]
fn interim_responses_are_skipped_and_101_is_refused() {
    let (f, _) = framing_of(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(f, Framing::Length(0));
    assert_eq!(
        head(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
            false
        )
        .unwrap_err(),
        ProtocolError::UnexpectedUpgrade
    );
}

#[test]
fn framing_follows_rfc_9112() {
    let ok = |raw: &str| framing_of(raw).unwrap();
    assert_eq!(
        ok("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
        (Framing::Chunked, true)
    );
    assert_eq!(ok("HTTP/1.1 200 OK\r\n\r\n"), (Framing::UntilClose, false));
    assert_eq!(
        ok("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"),
        (Framing::Empty, false)
    );
    assert_eq!(
        ok("HTTP/1.1 304 Not Modified\r\n\r\n"),
        (Framing::Empty, true)
    );
    assert_eq!(
        ok("HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\n"),
        (Framing::Length(3), false)
    );
    assert_eq!(
        ok("HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\n"),
        (Framing::Length(3), false)
    );
    assert_eq!(
        ok("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\ncontent-length: 7\r\n\r\n"),
        (Framing::Length(7), true)
    );
    let h = head("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true)
        .unwrap()
        .unwrap();
    assert_eq!(h.framing, Framing::Empty);
}

#[test]
fn interim_heads_during_an_upload_are_taken_and_a_final_head_is_left_for_the_parser() {
    let mut parser = HeadParser::new();
    let mut buf = BytesMut::from("HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 100 Con");
    assert!(!parser.skip_interim(&mut buf).unwrap());
    assert!(parser.saw_interim());
    assert_eq!(&buf[..], b"HTTP/1.1 100 Con");
    buf.extend_from_slice(b"tinue\r\n\r\n");
    assert!(!parser.skip_interim(&mut buf).unwrap());
    assert!(buf.is_empty());
    buf.extend_from_slice(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n");
    assert!(parser.skip_interim(&mut buf).unwrap());
    assert!(
        parser.skip_interim(&mut buf).unwrap(),
        "the final head stays"
    );
    let h = parser.parse(&mut buf, false).unwrap().unwrap();
    assert_eq!((h.status.as_u16(), h.framing), (401, Framing::Length(0)));

    // The interim limits hold across both calls.
    let mut parser = HeadParser::new();
    let mut buf = BytesMut::from("HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_INTERIM).as_str());
    assert!(!parser.skip_interim(&mut buf).unwrap());
    buf.extend_from_slice(b"HTTP/1.1 103 Early Hints\r\n\r\n");
    assert!(parser.skip_interim(&mut buf).is_err());
    let mut buf = BytesMut::from("HTTP/1.1 101 Switching Protocols\r\n\r\n");
    assert_eq!(
        HeadParser::new().skip_interim(&mut buf),
        Err(ProtocolError::UnexpectedUpgrade)
    );
}

#[test]
fn a_no_content_answer_that_announces_a_body_leaves_its_connection_unusable() {
    for raw in [
        "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
        "HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n",
    ] {
        assert_eq!(framing_of(raw), Ok((Framing::Empty, false)), "{raw}");
    }
    assert_eq!(
        framing_of("HTTP/1.1 204 No Content\r\n\r\n"),
        Ok((Framing::Empty, true))
    );
    assert_eq!(
        framing_of("HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n"),
        Ok((Framing::Empty, false)),
        "a 304 may give the length of the answer it stands for, but its connection is not \
         worth the doubt"
    );
    assert_eq!(
        framing_of("HTTP/1.1 304 Not Modified\r\ncontent-length: 0\r\n\r\n"),
        Ok((Framing::Empty, true))
    );
    // The answer to a HEAD, likewise.
    let head_answer = |raw: &str| head(raw, true).map(|h| h.map(|h| (h.framing, h.reusable)));
    assert_eq!(
        head_answer("HTTP/1.1 200 OK\r\ncontent-length: 512\r\n\r\n"),
        Ok(Some((Framing::Empty, false)))
    );
    assert_eq!(
        head_answer("HTTP/1.1 200 OK\r\n\r\n"),
        Ok(Some((Framing::Empty, true)))
    );
    assert_eq!(
        framing_of("HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n"),
        Ok((Framing::Empty, false)),
        "a 304 with a transfer coding may be followed by a body"
    );
}

#[test]
fn a_connection_header_that_cannot_be_read_counts_as_close() {
    for raw in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\xff\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: \xff, close\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\nconnection: \x80\r\n\r\n",
    ] {
        let h = parse_head(&mut BytesMut::from(raw), false).unwrap().unwrap();
        assert_eq!(
            (h.framing, h.reusable),
            (Framing::Length(2), false),
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(
        framing_of("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n"),
        Ok((Framing::Length(2), true))
    );
}

#[test]
fn a_body_in_a_transfer_coding_other_than_chunked_is_refused() {
    for raw in [
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: deflate\r\ntransfer-encoding: chunked\r\n\r\n",
    ] {
        assert_eq!(
            framing_of(raw),
            Err(ProtocolError::UnsupportedTransferCoding),
            "{raw}"
        );
    }
    // Without a body there is nothing to decode: the answer to a HEAD passes (and, as it
    // announces a body, its connection is not used again).
    let h = head(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
        true,
    )
    .unwrap()
    .unwrap();
    assert_eq!((h.framing, h.reusable), (Framing::Empty, false));
}

#[test]
fn a_repeated_content_length_is_passed_on_as_one_value() {
    for raw in [
        "HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 7\r\ncontent-length: 7\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 7,7\r\ncontent-length: 7\r\n\r\n",
    ] {
        let h = head(raw, false).unwrap().unwrap();
        assert_eq!(h.framing, Framing::Length(7), "{raw}");
        let values: Vec<_> = h.headers.get_all(CONTENT_LENGTH).iter().collect();
        assert_eq!(values, ["7"], "{raw}");
    }
    let h = head("HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n", false)
        .unwrap()
        .unwrap();
    assert_eq!(h.headers.get(CONTENT_LENGTH).unwrap(), "7");
}

#[test]
fn a_head_arriving_a_byte_at_a_time_is_parsed_once_it_is_whole() {
    let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let mut parser = HeadParser::new();
    let mut buf = BytesMut::new();
    let mut head = None;
    for &b in raw {
        buf.extend_from_slice(&[b]);
        if let Some(h) = parser.parse(&mut buf, false).unwrap() {
            head = Some(h);
            break;
        }
    }
    let head = head.expect("a head");
    assert_eq!(
        (head.status.as_u16(), head.framing),
        (200, Framing::Length(2))
    );
    // Bare line feeds are left to httparse, which accepts them.
    let h = head_of("HTTP/1.1 204 No Content\n\n");
    assert_eq!(h.status, 204);
}

fn head_of(raw: &str) -> Head {
    head(raw, false).unwrap().unwrap()
}

#[test]
fn interim_heads_count_against_one_budget() {
    let many = "HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_INTERIM + 1);
    assert!(head(&format!("{many}HTTP/1.1 200 OK\r\n\r\n"), false).is_err());
    let hint = format!(
        "HTTP/1.1 103 Early Hints\r\nlink: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let raw = format!("{}HTTP/1.1 200 OK\r\n\r\n", hint.repeat(4));
    assert_eq!(head(&raw, false).unwrap_err(), ProtocolError::HeadTooLarge);
}

#[test]
fn a_final_head_within_the_limit_alone_is_refused_when_the_interim_ones_used_the_budget() {
    let hint = format!(
        "HTTP/1.1 103 Early Hints\r\nlink: {}\r\n\r\n",
        "a".repeat(MAX_HEAD_BYTES / 2)
    );
    let fin = format!(
        "HTTP/1.1 200 OK\r\nx: {}\r\ncontent-length: 0\r\n\r\n",
        "b".repeat(MAX_HEAD_BYTES / 2)
    );
    let raw = format!("{hint}{fin}");
    // Whole, and in pieces of every kind of boundary: the same answer.
    assert_eq!(head(&raw, false).unwrap_err(), ProtocolError::HeadTooLarge);
    for step in [1000, 4096, hint.len()] {
        let mut parser = HeadParser::new();
        let mut buf = BytesMut::new();
        let mut outcome = Ok(None);
        for piece in raw.as_bytes().chunks(step) {
            buf.extend_from_slice(piece);
            outcome = parser.parse(&mut buf, false);
            if !matches!(outcome, Ok(None)) {
                break;
            }
        }
        assert_eq!(
            outcome.unwrap_err(),
            ProtocolError::HeadTooLarge,
            "step {step}"
        );
    }
    // Each alone is within it.
    assert_eq!(head_of(&fin).status, 200);
}

#[test]
fn a_head_split_anywhere_parses_as_it_does_whole() {
    let raw = b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nx-a: b\r\ncontent-length: 2\r\n\r\nok";
    for cut in 1..raw.len() {
        let mut parser = HeadParser::new();
        let mut buf = BytesMut::from(&raw[..cut]);
        let first = parser.parse(&mut buf, false).unwrap();
        buf.extend_from_slice(&raw[cut..]);
        let head = match first {
            Some(h) => h,
            None => parser
                .parse(&mut buf, false)
                .unwrap()
                .expect("a whole head"),
        };
        assert_eq!(
            (head.status.as_u16(), head.framing),
            (200, Framing::Length(2)),
            "cut {cut}"
        );
        assert_eq!(head.headers.get("x-a").unwrap(), "b", "cut {cut}");
        assert_eq!(&buf[..], b"ok", "cut {cut}");
    }
}

#[test]
fn a_head_after_blank_lines_parses_the_same_whole_or_in_pieces() {
    // httparse skips empty lines before a status line; their line feeds must not be taken
    // for the end of a head that has not all arrived yet.
    for blank in ["\r\n", "\r\n\r\n", "\n\n", "\n\r\n\r\n\n"] {
        let raw = format!("{blank}HTTP/1.1 200 OK\r\nx-a: b\r\ncontent-length: 2\r\n\r\nok");
        let whole = head_of(&raw);
        assert_eq!(whole.status, 200, "{blank:?}");
        let raw = raw.as_bytes();
        for cut in 1..raw.len() {
            let mut parser = HeadParser::new();
            let mut buf = BytesMut::from(&raw[..cut]);
            let first = parser.parse(&mut buf, false).unwrap();
            buf.extend_from_slice(&raw[cut..]);
            let head = match first {
                Some(h) => h,
                None => parser
                    .parse(&mut buf, false)
                    .unwrap_or_else(|e| panic!("{blank:?} cut {cut}: {e}"))
                    .expect("a whole head"),
            };
            assert_eq!(
                (head.status, head.framing, head.headers.get("x-a")),
                (whole.status, whole.framing, whole.headers.get("x-a")),
                "{blank:?} cut {cut}"
            );
            assert_eq!(&buf[..], b"ok", "{blank:?} cut {cut}");
        }
    }
    // A byte at a time, after an interim head followed by blank lines too.
    let raw = b"HTTP/1.1 100 Continue\r\n\r\n\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
    let mut parser = HeadParser::new();
    let mut buf = BytesMut::new();
    let mut last = None;
    for &b in raw {
        buf.extend_from_slice(&[b]);
        if let Some(h) = parser.parse(&mut buf, false).unwrap() {
            last = Some(h);
        }
    }
    assert_eq!(last.expect("a head").status, 204);
    // Blank lines count against the head's budget like any other byte of it.
    let raw = format!(
        "{}HTTP/1.1 200 OK\r\n\r\n",
        "\r\n".repeat(MAX_HEAD_BYTES / 2)
    );
    assert_eq!(head(&raw, false).unwrap_err(), ProtocolError::HeadTooLarge);
    let mut parser = HeadParser::new();
    let mut buf = BytesMut::new();
    let mut outcome = Ok(None);
    for piece in raw.as_bytes().chunks(1000) {
        buf.extend_from_slice(piece);
        outcome = parser.parse(&mut buf, false);
        if !matches!(outcome, Ok(None)) {
            break;
        }
    }
    assert_eq!(outcome.unwrap_err(), ProtocolError::HeadTooLarge);
}

#[test]
fn ambiguous_framing_is_an_error() {
    for raw in [
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 0x3\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: \r\ncontent-length: 5\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: ,\r\n\r\n",
        "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        "HTTP/1.1 200 OK\r\nx: a\r\n folded\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/2 200 OK\r\n\r\n",
    ] {
        assert!(framing_of(raw).is_err(), "{raw:?}");
    }
}

/// Feeds `input` to a decoder `step` bytes at a time. `Ok(None)` means the decoder asked for
/// more after the last byte: it took everything so far as a valid start of a body.
fn decode_all(input: &[u8], step: usize) -> Result<Option<(Vec<u8>, BytesMut)>, ProtocolError> {
    let mut dec = ChunkedDecoder::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    loop {
        match dec.decode(&mut buf)? {
            Chunk::Data(d) => out.extend_from_slice(&d),
            Chunk::Done => return Ok(Some((out, buf))),
            Chunk::NeedMore if fed < input.len() => {
                let end = (fed + step).min(input.len());
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
            }
            Chunk::NeedMore => return Ok(None),
        }
    }
}

#[test]
fn chunked_bodies_decode_whatever_the_read_boundaries() {
    let body = b"4\r\nWiki\r\n6 ;name=\"v\"\r\npedia \r\nE \r\nin \r\n\r\nchunks.\r\n0\r\nx-t: 1\r\n\r\nNEXT";
    for step in [1, 2, 3, 7, body.len()] {
        let (out, rest) = decode_all(body, step).unwrap().unwrap();
        assert_eq!(out, b"Wikipedia in \r\n\r\nchunks.", "step {step}");
        assert!(b"NEXT".starts_with(&rest), "step {step}");
    }
}

#[test]
fn a_chunk_size_of_sixteen_hex_digits_is_read_whole() {
    let (out, rest) = decode_all(b"0000000000000004\r\nWiki\r\n0\r\n\r\n", 1)
        .unwrap()
        .unwrap();
    assert_eq!((&out[..], &rest[..]), (&b"Wiki"[..], &b""[..]));
}

#[test]
fn malformed_chunked_bodies_are_errors() {
    use ProtocolError::BadChunk;
    // Each case fails at a byte the decoder can see is wrong, one byte at a time: a decoder
    // that asked for more input instead would have accepted the line so far.
    for (bad, why) in [
        (&b"x\r\n"[..], "chunk size"),
        (b"\r\n", "chunk size"),
        (b"4\nWiki\r\n0\r\n\r\n", "chunk size"),
        (b"4\r\nWikiX\r\n0\r\n\r\n", "line ending"),
        (b"11111111111111111\r\n", "chunk size too large"),
        // Read modulo 2^64 this size would be 5, and `hello` a whole chunk.
        (
            b"10000000000000005\r\nhello\r\n0\r\n\r\n",
            "chunk size too large",
        ),
        (b"0\r\nbad\x00trailer\r\n\r\n", "trailer field"),
        (b"-1\r\n", "chunk size"),
        (b"4 5\r\nWiki\r\n0\r\n\r\n", "chunk size"),
        (b"4 x\r\nWiki\r\n0\r\n\r\n", "chunk size"),
    ] {
        assert_eq!(decode_all(bad, 1), Err(BadChunk(why)), "{bad:?}");
    }
    let long_ext = format!("1;{}\r\na\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_LINE + 1));
    assert_eq!(
        decode_all(long_ext.as_bytes(), 64),
        Err(BadChunk("chunk extension too long"))
    );
}
