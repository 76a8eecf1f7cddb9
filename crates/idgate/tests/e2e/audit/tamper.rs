//! A script-like mutator over a real audit trail, as someone with write access to the files
//! (and knowledge of the format, but not the signing key) would go about it: random
//! single-byte edits, deleted lines, swapped lines, truncation, and a forged checkpoint with
//! every hash after it recomputed. After each, `idgate audit verify` must name the first
//! entry that no longer holds: its file and line.
//!
//! The mutator knows the format from `docs/audit.md`, not from the gateway's code: it
//! computes hashes and signatures itself.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::signature::KeyPair as _;

use crate::support::*;

/// A small deterministic generator (xorshift64*), so a failure names its seed and can be
/// replayed.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub(super) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What `verify` must say about a mutated trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Expect {
    /// Exit 1, naming this file and line.
    Broken(PathBuf, usize),
    /// Exit 3: the trail ends, unsealed, at this file and line.
    Open(PathBuf, usize),
}

/// The lines of a file, each with its newline (the last may lack one).
pub(super) fn lines(path: &Path) -> Vec<Vec<u8>> {
    std::fs::read(path)
        .unwrap()
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    std::fs::write(path, lines.concat()).unwrap();
}

/// The 1-based line holding byte `offset`.
fn line_of(data: &[u8], offset: usize) -> usize {
    data[..offset].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Copies the trail's files into `to`; their new paths, in chain order.
pub(super) fn copy_trail(files: &[PathBuf], to: &Path) -> Vec<PathBuf> {
    files
        .iter()
        .map(|f| {
            let dest = to.join(f.file_name().unwrap());
            std::fs::copy(f, &dest).unwrap();
            dest
        })
        .collect()
}

/// The entry after the last line of file `i`: the next file's first line.
fn after_file(files: &[PathBuf], i: usize, line_count: usize) -> Expect {
    match files.get(i + 1) {
        Some(next) => Expect::Broken(next.clone(), 1),
        None => Expect::Open(files[i].clone(), line_count + 1),
    }
}

/// A random single-byte edit: the line holding the byte is named.
pub(super) fn edit_byte(rng: &mut Rng, files: &[PathBuf]) -> Expect {
    let i = rng.below(files.len());
    let f = &files[i];
    let mut data = std::fs::read(f).unwrap();
    let at = rng.below(data.len());
    data[at] ^= 1 + rng.below(255) as u8;
    std::fs::write(f, &data).unwrap();
    if i + 1 == files.len() && at + 1 == data.len() {
        // The trail's last newline edited away: its last line is incomplete, as a batch
        // being written looks, and the trail ends open there.
        return Expect::Open(f.clone(), line_of(&data, at));
    }
    Expect::Broken(f.clone(), line_of(&data, at))
}

/// A deleted line: the entry that now stands in its place is named (or, past a file's
/// last line, the next file's first; past the trail's, the end is open).
pub(super) fn delete_line(rng: &mut Rng, files: &[PathBuf]) -> Expect {
    let i = rng.below(files.len());
    let mut l = lines(&files[i]);
    let at = rng.below(l.len());
    l.remove(at);
    write_lines(&files[i], &l);
    if at < l.len() {
        Expect::Broken(files[i].clone(), at + 1)
    } else {
        after_file(files, i, l.len())
    }
}

/// Two neighbouring lines swapped: the first of them is named.
pub(super) fn swap_lines(rng: &mut Rng, files: &[PathBuf]) -> Expect {
    let i = rng.below(files.len());
    let mut l = lines(&files[i]);
    let at = rng.below(l.len() - 1);
    l.swap(at, at + 1);
    write_lines(&files[i], &l);
    Expect::Broken(files[i].clone(), at + 1)
}

/// A file cut at a random byte: inside a line, that line is named (incomplete); at a line's
/// start, the entry that should follow.
pub(super) fn truncate(rng: &mut Rng, files: &[PathBuf]) -> Expect {
    let i = rng.below(files.len());
    let mut data = std::fs::read(&files[i]).unwrap();
    let at = 1 + rng.below(data.len() - 1);
    data.truncate(at);
    std::fs::write(&files[i], &data).unwrap();
    if data.ends_with(b"\n") {
        after_file(files, i, line_of(&data, at) - 1)
    } else if i + 1 == files.len() {
        // Cut inside the newest file's last line: where the trail ends, as a batch being
        // written looks.
        Expect::Open(files[i].clone(), line_of(&data, at))
    } else {
        Expect::Broken(files[i].clone(), line_of(&data, at))
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An entry split into its sequence number, kind and members (between `"entry":"…",` and
/// `,"hash":`).
fn parts(line: &str) -> (u64, String, String, String) {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let kind = v["entry"].as_str().unwrap().to_owned();
    let marker = format!("\"entry\":\"{kind}\"");
    let start = line.find(&marker).unwrap() + marker.len();
    let end = line.rfind(",\"hash\":\"").unwrap();
    let members = line[start..end].trim_start_matches(',').to_owned();
    let prev = v["prev"].as_str().unwrap().to_owned();
    (v["seq"].as_u64().unwrap(), kind, members, prev)
}

/// An entry as the format says it is written, with its hash.
pub(super) fn seal(seq: u64, prev: &str, kind: &str, members: &str) -> (String, String) {
    let mut body = format!("{{\"seq\":{seq},\"prev\":\"{prev}\",\"entry\":\"{kind}\"");
    if !members.is_empty() {
        body.push(',');
        body.push_str(members);
    }
    let hash = sha256_hex(body.as_bytes());
    (format!("{body},\"hash\":\"{hash}\"}}\n"), hash)
}

/// A checkpoint re-signed with another key (under the real key's id) and every hash after
/// it recomputed, checkpoints' heads included: the forged checkpoint is named.
pub(super) fn forge_checkpoint(rng: &mut Rng, files: &[PathBuf]) -> Expect {
    let checkpoints: Vec<(usize, usize)> = files
        .iter()
        .enumerate()
        .flat_map(|(i, f)| {
            lines(f)
                .into_iter()
                .enumerate()
                .filter(|(_, l)| {
                    let marker = b"\"entry\":\"checkpoint\"";
                    l.windows(marker.len()).any(|w| w == marker)
                })
                .map(move |(n, _)| (i, n))
                .collect::<Vec<_>>()
        })
        .collect();
    let (fi, li) = checkpoints[rng.below(checkpoints.len())];
    let rng_key = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng_key).unwrap();
    let attacker = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let _ = attacker.public_key();
    let mut prev_hash: Option<String> = None;
    for (i, f) in files.iter().enumerate().skip(fi) {
        let mut l = lines(f);
        let from = if i == fi { li } else { 0 };
        for line in l.iter_mut().skip(from) {
            let text = String::from_utf8(line.clone()).unwrap();
            let (seq, kind, mut members, old_prev) = parts(text.trim_end());
            let prev = prev_hash.clone().unwrap_or_else(|| old_prev.clone());
            if kind == "checkpoint" {
                members = members.replace(&old_prev, &prev);
                if prev_hash.is_none() {
                    // The forgery: the message the format describes, signed by another key.
                    let c: serde_json::Value =
                        serde_json::from_str(&format!("{{{members}}}")).unwrap();
                    let c = &c["checkpoint"];
                    let msg = format!(
                        "idgate-audit-checkpoint-v1\n{}\n{}\n{}\n{}\n",
                        c["head_seq"],
                        prev,
                        c["time"],
                        c["close"].as_str().unwrap_or("-")
                    );
                    let sig = base64::engine::general_purpose::STANDARD
                        .encode(attacker.sign(msg.as_bytes()).as_ref());
                    let old_sig = c["sig"].as_str().unwrap().to_owned();
                    members = members.replace(&old_sig, &sig);
                }
            }
            let (new, hash) = seal(seq, &prev, &kind, &members);
            *line = new.into_bytes();
            prev_hash = Some(hash);
        }
        write_lines(f, &l);
    }
    Expect::Broken(files[fi].clone(), li + 1)
}

/// Runs `idgate audit verify` over `dir` and checks it says what `expect` says.
pub(super) fn check_verify(dir: &Path, public: &Path, expect: &Expect, what: &str) {
    let (code, out, err) = idgate_cli(&[
        "audit",
        "verify",
        "--key",
        public.to_str().unwrap(),
        dir.to_str().unwrap(),
    ]);
    let (want_code, file, line, text) = match expect {
        Expect::Broken(f, l) => (1, f, l, &err),
        Expect::Open(f, l) => (3, f, l, &out),
    };
    let at = format!("{}:{line}:", file.display());
    assert!(
        code == want_code && text.contains(&at),
        "{what}: expected exit {want_code} naming {at}, got exit {code}\nstdout: {out}\nstderr: {err}"
    );
}
