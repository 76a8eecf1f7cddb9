//! Reading a trail file back: lines (bounded in length, the last one possibly incomplete),
//! each decrypted when it is an envelope, checked against its hash and parsed. Used by the
//! verifier, `idgate audit show` and the writer's look at the previous run's end.

use std::io::BufRead;

use crate::chain::{self, Entry, LineError};
use crate::crypt::{self, EnvelopeError};
use crate::keys::EncryptionKey;

/// The longest line read; a longer one is not an entry the writer could have written.
pub const MAX_LINE: usize = 256 * 1024;

/// Why a line is not an intact entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Envelope(#[from] EnvelopeError),
    #[error("{0}")]
    Line(#[from] LineError),
    #[error("the line is encrypted, and no encryption key was given")]
    NoKey,
}

/// Decrypts a line (without its newline) when it is an envelope, then checks and parses the
/// entry. Returns the entry and its plaintext line.
pub fn decode(line: &[u8], keys: &[EncryptionKey]) -> Result<(Entry, Vec<u8>), ReadError> {
    let plain = if crypt::is_envelope(line) {
        if keys.is_empty() {
            return Err(ReadError::NoKey);
        }
        crypt::open(line, keys)?
    } else {
        line.to_vec()
    };
    let entry = chain::open(&plain)?;
    Ok((entry, plain))
}

/// One line of a file, as read.
#[derive(Debug)]
pub struct Line {
    /// 1-based.
    pub number: u64,
    /// Where the line starts in the file.
    pub offset: u64,
    /// Without its newline.
    pub bytes: Vec<u8>,
    /// Ended by a newline (a file's last line may not be: a torn write, or a cut).
    pub complete: bool,
    /// Longer than [`MAX_LINE`]: `bytes` holds only its beginning, and nothing after it is
    /// read (its end may be gigabytes away, in a file that is mostly a hole).
    pub too_long: bool,
}

/// The lines of a reader, each at most [`MAX_LINE`] bytes kept. They end at the first line
/// longer than that: no entry is, so what follows it is not worth reading to its end.
pub struct Lines<R> {
    reader: R,
    number: u64,
    offset: u64,
    /// An overlong line was returned: nothing more is read.
    stopped: bool,
}

impl<R: BufRead> Lines<R> {
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            number: 0,
            offset: 0,
            stopped: false,
        }
    }

    /// The next line; `None` at the end, and after a line longer than [`MAX_LINE`] (which
    /// comes back without its newline, after at most [`MAX_LINE`] and one buffer's bytes).
    pub fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        if self.stopped {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        let mut too_long = false;
        let mut read = 0u64;
        let complete = loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                break false;
            }
            let (chunk, found) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], true),
                None => (buf, false),
            };
            let room = MAX_LINE.saturating_sub(bytes.len());
            if chunk.len() > room {
                too_long = true;
            }
            bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let used = chunk.len() + usize::from(found);
            read += used as u64;
            self.reader.consume(used);
            if found {
                break true;
            }
            if too_long {
                break false;
            }
        };
        if read == 0 {
            return Ok(None);
        }
        self.stopped = too_long;
        self.number += 1;
        let line = Line {
            number: self.number,
            offset: self.offset,
            bytes,
            complete,
            too_long,
        };
        self.offset += read;
        Ok(Some(line))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lines_report_numbers_offsets_and_an_incomplete_end() {
        let data = b"one\ntwo\n\nthree";
        let mut lines = Lines::new(&data[..]);
        let mut got = Vec::new();
        while let Some(l) = lines.next_line().unwrap() {
            got.push((
                l.number,
                l.offset,
                String::from_utf8(l.bytes).unwrap(),
                l.complete,
            ));
        }
        assert_eq!(
            got,
            [
                (1, 0, "one".to_owned(), true),
                (2, 4, "two".to_owned(), true),
                (3, 8, String::new(), true),
                (4, 9, "three".to_owned(), false),
            ]
        );
    }

    #[test]
    fn an_overlong_line_is_cut_and_marked_and_ends_the_lines() {
        let mut data = b"first\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        data.extend_from_slice(b"\nok\n");
        let mut lines = Lines::new(std::io::BufReader::with_capacity(4096, &data[..]));
        assert_eq!(lines.next_line().unwrap().unwrap().bytes, b"first");
        let long = lines.next_line().unwrap().unwrap();
        assert!(long.too_long);
        assert_eq!(
            (long.number, long.offset, long.bytes.len()),
            (2, 6, MAX_LINE)
        );
        assert!(lines.next_line().unwrap().is_none());
    }
}
