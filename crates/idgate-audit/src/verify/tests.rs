#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::AuditTrail;
use crate::record::tests::activity;
use crate::writer::tests::{Keys, settings};

/// A sealed trail of three or more files (rotated by size), checkpoints every 5 entries.
fn trail(keys: &Keys, encryption: Option<&EncryptionKey>) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.rotate_bytes = 6000;
    s.checkpoint_every = 5;
    let (t, _) = AuditTrail::start(s, keys.audit_keys(encryption), None).unwrap();
    for round in 0..6 {
        for i in 0..6 {
            let id = format!("rid-{round}-{i}");
            let p = t.try_reserve().unwrap();
            t.api(&activity(&id, "/v1/x"), Some(p));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while t.metrics().depth.get() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // The last file holds records too (a rotation happens only after a batch).
    for i in 0..3 {
        let id = format!("rid-last-{i}");
        let p = t.try_reserve().unwrap();
        t.api(&activity(&id, "/v1/x"), Some(p));
    }
    t.close();
    let files = crate::files::list(dir.path()).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    (dir, files)
}

fn run(files: &[PathBuf], keys: &Keys, decrypt: &[EncryptionKey]) -> Result<Summary, Finding> {
    let mut v = Verifier::new(VerifyOptions {
        keys: vec![keys.public],
        decrypt: decrypt.to_vec(),
    });
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        match v.file(&name, BufReader::new(std::fs::File::open(f).unwrap())) {
            Ok(()) => {}
            Err(VerifyError::Broken(f)) => return Err(*f),
            Err(e) => panic!("{e}"),
        }
    }
    Ok(v.finish())
}

fn lines(path: &Path) -> Vec<Vec<u8>> {
    std::fs::read(path)
        .unwrap()
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    std::fs::write(path, lines.concat()).unwrap();
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn an_intact_trail_verifies_sealed() {
    let keys = Keys::new();
    let (_dir, files) = trail(&keys, None);
    let s = run(&files, &keys, &[]).unwrap();
    assert_eq!((s.records, s.end.clone()), (39, End::Sealed));
    assert_eq!(s.files, files.len());
}

#[test]
fn an_edited_byte_is_named_by_its_line() {
    let keys = Keys::new();
    let (_dir, files) = trail(&keys, None);
    let f = &files[1];
    let mut l = lines(f);
    // The status of the record on line 3: still JSON, still the right shape.
    let text = String::from_utf8(l[2].clone())
        .unwrap()
        .replace("\"code\":200", "\"code\":500");
    l[2] = text.into_bytes();
    write_lines(f, &l);
    let found = run(&files, &keys, &[]).unwrap_err();
    assert_eq!((found.file.as_str(), found.line), (name(f).as_str(), 3));
    assert!(matches!(found.problem, Problem::Read(_)), "{found}");
    assert!(found.to_string().contains("altered"), "{found}");
}

#[test]
fn a_deleted_line_is_named_where_the_chain_skips() {
    let keys = Keys::new();
    let (_dir, files) = trail(&keys, None);
    let f = &files[0];
    let mut l = lines(f);
    let removed = crate::chain::open(l[4].strip_suffix(b"\n").unwrap())
        .unwrap()
        .seq;
    l.remove(4);
    write_lines(f, &l);
    let found = run(&files, &keys, &[]).unwrap_err();
    assert_eq!(found.line, 5);
    assert_eq!(
        found.problem,
        Problem::Seq {
            expected: removed,
            found: removed + 1
        }
    );
}

#[test]
fn swapped_and_inserted_lines_are_out_of_place() {
    let keys = Keys::new();
    let (_dir, files) = trail(&keys, None);
    let f = &files[2];
    let mut l = lines(f);
    l.swap(2, 3);
    write_lines(f, &l);
    let found = run(&files, &keys, &[]).unwrap_err();
    assert_eq!((found.line, &found.file), (3, &name(f)));
    assert!(matches!(found.problem, Problem::Seq { .. }), "{found}");
    // A line copied from another file into this one.
    l.swap(2, 3);
    let stranger = lines(&files[0])[3].clone();
    l.insert(4, stranger);
    write_lines(f, &l);
    let found = run(&files, &keys, &[]).unwrap_err();
    assert_eq!(found.line, 5);
}

#[test]
fn removing_a_files_first_lines_and_cutting_its_end_are_found() {
    let keys = Keys::new();
    let (_dir, files) = trail(&keys, None);
    let original = lines(&files[1]);
    write_lines(&files[1], &original[1..]);
    let found = run(&files, &keys, &[]).unwrap_err();
    assert_eq!((found.line, found.problem.clone()), (1, Problem::NoOpening));
    write_lines(&files[1], &original);

    // Cut mid-line: an incomplete line.
    let last = files.last().unwrap();
    let mut data = std::fs::read(last).unwrap();
    let whole = lines(last);
    let cut_at = whole[..3].concat().len() + 10;
    data.truncate(cut_at);
    std::fs::write(last, &data).unwrap();
    let found = run(&files, &keys, &[]).unwrap_err();
    assert_eq!((found.line, found.problem.clone()), (4, Problem::Torn));
    // Cut at a line's end: the trail is open where it was sealed.
    write_lines(last, &whole[..3]);
    let s = run(&files, &keys, &[]).unwrap();
    assert!(
        matches!(&s.end, End::Open { file, line: 4, .. } if *file == name(last)),
        "{:?}",
        s.end
    );
}

#[test]
fn a_cut_middle_file_is_found_at_the_next_files_opening() {
    let keys = Keys::new();
    let (_dir, files) = trail(&keys, None);
    let l = lines(&files[0]);
    write_lines(&files[0], &l[..l.len() - 2]);
    let found = run(&files, &keys, &[]).unwrap_err();
    assert_eq!((found.file.clone(), found.line), (name(&files[1]), 1));
    assert!(matches!(found.problem, Problem::Seq { .. }), "{found}");
}

#[test]
fn records_rewritten_with_their_hashes_fail_the_next_checkpoint() {
    let keys = Keys::new();
    let (_dir, files) = trail(&keys, None);
    let f = &files[0];
    let l = lines(f);
    // Rewrite line 3 and every hash after it, as someone with the format but not the key.
    let mut out: Vec<Vec<u8>> = l[..2].to_vec();
    let mut prev = crate::chain::open(l[1].strip_suffix(b"\n").unwrap())
        .unwrap()
        .hash;
    let mut checkpoint_line = None;
    for (i, line) in l.iter().enumerate().skip(2) {
        let line = line.strip_suffix(b"\n").unwrap();
        let e = crate::chain::open(line).unwrap();
        let text = String::from_utf8(line.to_vec()).unwrap();
        let start = text
            .find(&format!("\"entry\":\"{}\",", e.kind.as_str()))
            .unwrap()
            + format!("\"entry\":\"{}\",", e.kind.as_str()).len();
        let end = text.rfind(",\"hash\":").unwrap();
        let mut members = text[start..end].to_owned();
        if i == 2 {
            members = members.replace("\"code\":200", "\"code\":201");
        }
        if e.kind == EntryKind::Checkpoint {
            // The checkpoint is made to name the new head; its signature cannot follow.
            members = members.replace(&e.prev.hex(), &prev.hex());
            checkpoint_line.get_or_insert(i as u64 + 1);
        }
        let mut new = Vec::new();
        prev = crate::chain::seal(&mut new, e.seq, &prev, e.kind, members.as_bytes());
        new.push(b'\n');
        out.push(new);
    }
    write_lines(f, &out);
    let found = run(&files, &keys, &[]).unwrap_err();
    assert_eq!(Some(found.line), checkpoint_line);
    assert!(
        matches!(
            found.problem,
            Problem::Checkpoint(CheckpointError::BadSignature(_))
        ),
        "{found}"
    );
}

#[test]
fn encrypted_lines_are_checked_by_their_tag_first() {
    let keys = Keys::new();
    let (enc, _) = EncryptionKey::generate().unwrap();
    let (_dir, files) = trail(&keys, Some(&enc));
    let decrypt = std::slice::from_ref(&enc);
    run(&files, &keys, decrypt).unwrap();
    let f = &files[1];
    let mut l = lines(f);
    let at = l[3].len() - 12;
    l[3][at] = if l[3][at] == b'A' { b'B' } else { b'A' };
    write_lines(f, &l);
    let found = run(&files, &keys, decrypt).unwrap_err();
    assert_eq!(found.line, 4);
    assert!(
        matches!(found.problem, Problem::Read(ReadError::Envelope(_))),
        "{found}"
    );
    let found = run(&files, &keys, &[]).unwrap_err();
    assert_eq!(
        (found.line, found.problem),
        (1, Problem::Read(ReadError::NoKey))
    );
}

#[test]
fn garbage_never_panics_and_is_named() {
    let keys = Keys::new();
    for junk in [
        &b""[..],
        b"\n",
        b"{}\n",
        b"{\"seq\":1}\n",
        b"\xff\xfe\n",
        b"{\"enc\":\"A256GCM\",\"kid\":\"x\",\"salt\":\"\",\"n\":0,\"ct\":\"\"}\n",
    ] {
        let mut v = Verifier::new(VerifyOptions {
            keys: vec![keys.public],
            decrypt: Vec::new(),
        });
        match v.file("junk", junk) {
            Ok(()) => assert!(junk.is_empty()),
            Err(VerifyError::Broken(f)) => assert_eq!(f.line, 1),
            Err(e) => panic!("{e}"),
        }
    }
}
