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
    end(v)
}

/// The end's own checks, then the summary.
fn end(v: Verifier) -> Result<Summary, Finding> {
    match v.check_end() {
        Ok(()) => Ok(v.finish()),
        Err(VerifyError::Broken(f)) => Err(*f),
        Err(e) => panic!("{e}"),
    }
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

    // A file before the last cut mid-line: an incomplete line with more of the trail after it.
    let middle = &files[1];
    let kept = lines(middle);
    let mut data = std::fs::read(middle).unwrap();
    data.truncate(kept[..3].concat().len() + 10);
    std::fs::write(middle, &data).unwrap();
    let found = run(&files, &keys, &[]).unwrap_err();
    assert_eq!(
        (found.file.clone(), found.line, found.problem.clone()),
        (name(middle), 4, Problem::Torn)
    );
    write_lines(middle, &kept);
    // The last file cut mid-line: the trail ends open at that line.
    let last = files.last().unwrap();
    let mut data = std::fs::read(last).unwrap();
    let whole = lines(last);
    let cut_at = whole[..3].concat().len() + 10;
    data.truncate(cut_at);
    std::fs::write(last, &data).unwrap();
    let s = run(&files, &keys, &[]).unwrap();
    assert!(
        matches!(&s.end, End::Open { file, line: 4, .. } if *file == name(last)),
        "{:?}",
        s.end
    );
    assert_eq!(s.incomplete_end, Some(10));
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

/// Seals one entry as a line (with its newline) onto `out`; returns its hash.
fn entry(out: &mut Vec<u8>, seq: u64, prev: &Digest, kind: EntryKind, members: &str) -> Digest {
    let hash = crate::chain::seal(out, seq, prev, kind, members.as_bytes());
    out.push(b'\n');
    hash
}

/// The last entry of a file.
fn last_entry(path: &Path) -> crate::chain::Entry {
    let l = lines(path);
    crate::chain::open(l.last().unwrap().strip_suffix(b"\n").unwrap()).unwrap()
}

/// The name a file's opening gives it.
fn opened_as(path: &Path) -> String {
    let first = crate::chain::open(lines(path)[0].strip_suffix(b"\n").unwrap()).unwrap();
    first.value["open"]["file"].as_str().unwrap().to_owned()
}

fn opening(file: &str, reason: &str, previous: Option<&str>) -> String {
    let previous = previous
        .map(|p| format!(",\"previous_file\":\"{p}\""))
        .unwrap_or_default();
    format!("\"open\":{{\"file\":\"{file}\",\"reason\":\"{reason}\",\"time\":1{previous}}}")
}

fn gap(last_seq: u64, last_hash: &Digest) -> String {
    format!(
        "\"gap\":{{\"file\":\"f\",\"last_seq\":{last_seq},\"last_hash\":\"{last_hash}\",\"bytes_discarded\":0,\"reason\":\"r\"}}"
    )
}

fn verify_bytes(files: &[(&str, &[u8])], mut v: Verifier) -> Result<Summary, Finding> {
    for (name, data) in files {
        match v.file(name, *data) {
            Ok(()) => {}
            Err(VerifyError::Broken(f)) => return Err(*f),
            Err(e) => panic!("{e}"),
        }
    }
    end(v)
}

fn plain() -> Verifier {
    Verifier::new(VerifyOptions::default())
}

#[test]
fn sequence_numbers_do_not_wrap() {
    let mut data = Vec::new();
    let head = entry(
        &mut data,
        u64::MAX,
        &Digest::GENESIS,
        EntryKind::Open,
        &opening("a.jsonl", "start", None),
    );
    entry(&mut data, 0, &head, EntryKind::Record, "\"time\":1");
    let found = verify_bytes(&[("wrap", &data)], plain()).unwrap_err();
    assert_eq!(
        (found.line, found.seq, found.problem),
        (2, Some(0), Problem::SeqExhausted)
    );
}

#[test]
fn a_start_right_after_a_rotation_without_a_gap_is_named() {
    let keys = Keys::new();
    let (dir, files) = trail(&keys, None);
    // The newest files removed back to a rotation: what remains ends closed for rotation.
    let kept = &files[..2];
    let s = run(kept, &keys, &[]).unwrap();
    assert!(matches!(s.end, End::Rotated { .. }), "{:?}", s.end);
    // …and a start opens the next file as if nothing were missing.
    let last = last_entry(&kept[1]);
    let mut data = Vec::new();
    entry(
        &mut data,
        last.seq + 1,
        &last.hash,
        EntryKind::Open,
        &opening("audit-new.jsonl", "start", Some(&opened_as(&kept[1]))),
    );
    let restarted = dir.path().join("audit-99999999999999999999-restart.jsonl");
    std::fs::write(&restarted, &data).unwrap();
    let found = run(
        &[kept[0].clone(), kept[1].clone(), restarted.clone()],
        &keys,
        &[],
    )
    .unwrap_err();
    assert_eq!((found.file.clone(), found.line), (name(&restarted), 2));
    assert!(
        matches!(&found.problem, Problem::MissingRotation { file } if *file == name(&kept[1])),
        "{found}"
    );
}

#[test]
fn an_opening_that_names_another_file_before_it_is_named() {
    let keys = Keys::new();
    let (_dir, files) = trail(&keys, None);
    let f = &files[1];
    let mut l = lines(f);
    let first = crate::chain::open(l[0].strip_suffix(b"\n").unwrap()).unwrap();
    let mut line = Vec::new();
    entry(
        &mut line,
        first.seq,
        &first.prev,
        EntryKind::Open,
        &opening(&opened_as(f), "rotate", Some("audit-elsewhere.jsonl")),
    );
    l[0] = line;
    write_lines(f, &l);
    let found = run(&files, &keys, &[]).unwrap_err();
    assert_eq!((found.file.clone(), found.line), (name(f), 1));
    assert_eq!(
        found.problem,
        Problem::WrongPrevious {
            named: "audit-elsewhere.jsonl".into(),
            actual: opened_as(&files[0]),
        }
    );
}

#[test]
fn a_gap_entry_only_follows_a_starts_opening() {
    let mut data = Vec::new();
    let h1 = entry(
        &mut data,
        1,
        &Digest::GENESIS,
        EntryKind::Open,
        &opening("a.jsonl", "start", None),
    );
    let h2 = entry(&mut data, 2, &h1, EntryKind::Gap, &gap(0, &Digest::GENESIS));
    // A second gap, as in a file of a million of them.
    entry(&mut data, 3, &h2, EntryKind::Gap, &gap(0, &Digest::GENESIS));
    let found = verify_bytes(&[("gaps", &data)], plain()).unwrap_err();
    assert_eq!((found.line, found.problem), (3, Problem::GapOutOfPlace));
    // A gap that does not name the entry before the opening.
    let mut data = Vec::new();
    let h1 = entry(
        &mut data,
        1,
        &Digest::GENESIS,
        EntryKind::Open,
        &opening("a.jsonl", "start", None),
    );
    entry(&mut data, 2, &h1, EntryKind::Gap, &gap(7, &Digest::GENESIS));
    let found = verify_bytes(&[("gaps", &data)], plain()).unwrap_err();
    assert_eq!((found.line, found.problem), (2, Problem::GapMismatch));
}

#[test]
fn a_summary_describes_a_bounded_number_of_gaps_and_counts_the_rest() {
    // Forty runs that each stopped without closing their file: a gap after each.
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut data = Vec::new();
    let mut head = entry(
        &mut data,
        1,
        &Digest::GENESIS,
        EntryKind::Open,
        &opening("f0", "start", None),
    );
    files.push(("f0".into(), data));
    let mut seq = 1;
    for i in 1..40 {
        let name = format!("f{i}");
        let previous = format!("f{}", i - 1);
        let mut data = Vec::new();
        let opened = entry(
            &mut data,
            seq + 1,
            &head,
            EntryKind::Open,
            &opening(&name, "start", Some(&previous)),
        );
        head = entry(
            &mut data,
            seq + 2,
            &opened,
            EntryKind::Gap,
            &gap(seq, &head),
        );
        seq += 2;
        files.push((name, data));
    }
    let given: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let s = verify_bytes(&given, plain()).unwrap();
    assert_eq!(s.gap_count, 39);
    assert_eq!(s.gaps.len(), MAX_GAP_NOTES);
    assert_eq!(
        (s.gaps[0].file.as_str(), s.gaps[0].line, s.gaps[0].after),
        ("f1", 2, GapAfter::Unclosed)
    );
}

/// Removes the trail's closing checkpoint and chains records after its last entry, their
/// times (`"time":T`) made from the last checkpoint's time: an unsigned end.
fn unsigned_end(files: &[PathBuf], times: impl Fn(u64) -> Vec<u64>) {
    let f = files.last().unwrap();
    let mut l = lines(f);
    l.pop();
    let before: Vec<Vec<u8>> = files[..files.len() - 1]
        .iter()
        .flat_map(|f| lines(f))
        .chain(l.iter().cloned())
        .collect();
    let checkpoint_ms = before
        .iter()
        .rev()
        .map(|l| crate::chain::open(l.strip_suffix(b"\n").unwrap()).unwrap())
        .find(|e| e.kind == EntryKind::Checkpoint)
        .map(|e| e.value["checkpoint"]["time"].as_u64().unwrap())
        .unwrap();
    let last = crate::chain::open(l.last().unwrap().strip_suffix(b"\n").unwrap()).unwrap();
    let (mut seq, mut prev) = (last.seq, last.hash);
    for t in times(checkpoint_ms) {
        let mut line = Vec::new();
        seq += 1;
        prev = entry(
            &mut line,
            seq,
            &prev,
            EntryKind::Record,
            &format!("\"time\":{t}"),
        );
        l.push(line);
    }
    write_lines(f, &l);
}

fn run_with(files: &[PathBuf], v: Verifier) -> Result<Summary, Finding> {
    let data: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|f| (name(f), std::fs::read(f).unwrap()))
        .collect();
    let given: Vec<(&str, &[u8])> = data
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    verify_bytes(&given, v)
}

#[test]
fn the_unsigned_end_must_fit_the_writers_checkpoint_schedule() {
    let keys = Keys::new();
    let with_keys = || {
        Verifier::new(VerifyOptions {
            keys: vec![keys.public],
            decrypt: Vec::new(),
        })
    };
    let opts = || {
        with_keys().with_schedule(Schedule {
            every: 5,
            interval: Duration::from_secs(60),
        })
    };
    // What the writer could have left unsigned fits: the trail is only open.
    let (_dir, files) = trail(&keys, None);
    unsigned_end(&files, |_| Vec::new());
    let s = run_with(&files, opts()).unwrap();
    assert!(
        s.unsigned <= 5 && matches!(s.end, End::Open { .. }),
        "{s:?}"
    );
    let before = s.unsigned;

    // Ten records added after the last checkpoint: past `checkpoint_every`.
    let (_dir, files) = trail(&keys, None);
    unsigned_end(&files, |cp| (0..10).map(|i| cp + i).collect());
    let last = files.last().unwrap();
    let found = run_with(&files, opts()).unwrap_err();
    let first_added = (lines(last).len() - 10) as u64 + 1;
    assert_eq!(found.file, name(last));
    assert_eq!(found.line, first_added + (5 - before));
    assert_eq!(
        found.problem,
        Problem::TailTooLong {
            unsigned: before + 10,
            every: 5
        }
    );
    // Without the schedule, the same trail is only open.
    let s = run(&files, &keys, &[]).unwrap();
    assert!(matches!(s.end, End::Open { .. }), "{:?}", s.end);

    // A record whose time runs past `checkpoint_interval` and the grace after it.
    let by_time = || {
        with_keys().with_schedule(Schedule {
            every: 1000,
            interval: Duration::from_secs(60),
        })
    };
    let past = 60_000 + CHECKPOINT_GRACE.as_millis() as u64;
    let (_dir, files) = trail(&keys, None);
    unsigned_end(&files, |cp| vec![cp + 1, cp + past - 1]);
    run_with(&files, by_time()).unwrap();
    let (_dir, files) = trail(&keys, None);
    unsigned_end(&files, |cp| vec![cp + 1, cp + past + 1, cp + 2]);
    let found = run_with(&files, by_time()).unwrap_err();
    assert_eq!(found.line, lines(files.last().unwrap()).len() as u64 - 1);
    assert!(
        matches!(found.problem, Problem::TailTooLate { interval, .. } if interval == Duration::from_secs(60)),
        "{found}"
    );
    assert!(run(&files, &keys, &[]).is_ok());
}

#[test]
fn an_anchor_finds_a_trail_cut_back_to_an_earlier_clean_shutdown() {
    let keys = Keys::new();
    let (dir, first_run) = trail(&keys, None);
    // A second run goes on in the same directory, and is removed again.
    let (t, _) = AuditTrail::start(settings(dir.path()), keys.audit_keys(None), None).unwrap();
    for i in 0..3 {
        let id = format!("rid-second-{i}");
        let p = t.try_reserve().unwrap();
        t.api(&activity(&id, "/v1/x"), Some(p));
    }
    t.close();
    let all = crate::files::list(dir.path()).unwrap();
    assert_eq!(all.len(), first_run.len() + 1);
    let second_head = last_entry(all.last().unwrap());
    std::fs::remove_file(all.last().unwrap()).unwrap();

    // From the directory alone, what remains is a whole trail.
    let s = run(&first_run, &keys, &[]).unwrap();
    assert_eq!(s.end, End::Sealed);
    let anchored = |seq, hash| {
        Verifier::new(VerifyOptions {
            keys: vec![keys.public],
            decrypt: Vec::new(),
        })
        .with_expected_head(ExpectHead { seq, hash })
    };
    // Against the head seen elsewhere, it ends too soon.
    let found = run_with(
        &first_run,
        anchored(second_head.seq, Some(second_head.hash)),
    )
    .unwrap_err();
    let last = first_run.last().unwrap();
    assert_eq!(
        (found.file.clone(), found.line),
        (name(last), lines(last).len() as u64 + 1)
    );
    assert_eq!(
        found.problem,
        Problem::HeadMissing {
            expected: second_head.seq,
            last: s.last_seq
        }
    );
    // An anchor inside the trail holds with its hash, and names the entry without it.
    let head = last_entry(&first_run[1]);
    let ok = run_with(&first_run, anchored(head.seq, Some(head.hash))).unwrap();
    assert_eq!(ok.head, s.head);
    run_with(&first_run, anchored(head.seq, None)).unwrap();
    let wrong = Digest::of(b"another trail");
    let found = run_with(&first_run, anchored(head.seq, Some(wrong))).unwrap_err();
    assert_eq!(
        (found.file.clone(), found.line, found.seq),
        (
            name(&first_run[1]),
            lines(&first_run[1]).len() as u64,
            Some(head.seq)
        )
    );
    assert_eq!(found.problem, Problem::HeadMismatch { expected: wrong });
    // Files that begin after the anchor cannot show it.
    let found = run_with(&first_run[1..], anchored(1, None)).unwrap_err();
    assert_eq!(
        (found.file, found.line, found.problem),
        (
            name(&first_run[1]),
            1,
            Problem::AnchorNotGiven { expected: 1 }
        )
    );
}

#[test]
fn an_anchor_is_written_seq_or_seq_and_hash() {
    let hash = Digest::of(b"x");
    assert_eq!(
        "42".parse::<ExpectHead>(),
        Ok(ExpectHead {
            seq: 42,
            hash: None
        })
    );
    assert_eq!(
        format!("42:{}", hash.hex().to_uppercase()).parse::<ExpectHead>(),
        Ok(ExpectHead {
            seq: 42,
            hash: Some(hash)
        })
    );
    for bad in ["", "x", "42:", "42:abc", "-1"] {
        assert!(bad.parse::<ExpectHead>().is_err(), "{bad}");
    }
}

/// A file of an opening (for a rotation: the files before it are not given) and a record,
/// and the first `cut` bytes of the next record: a batch written with one `write`, seen
/// part-way.
fn with_partial_last_line(cut: usize) -> (Vec<u8>, Vec<u8>) {
    let mut whole = Vec::new();
    let open = entry(
        &mut whole,
        1,
        &Digest::GENESIS,
        EntryKind::Open,
        &opening("f1", "rotate", None),
    );
    let r1 = entry(&mut whole, 2, &open, EntryKind::Record, "\"time\":1");
    let mut last = Vec::new();
    entry(&mut last, 3, &r1, EntryKind::Record, "\"time\":2");
    let partial = last[..cut].to_vec();
    (whole, partial)
}

#[test]
fn an_incomplete_line_is_the_open_end_only_at_the_very_end_of_the_trail() {
    // Unsigned entries, so that only the end is looked at (the CLI refuses them for that).
    let (mut data, partial) = with_partial_last_line(20);
    let complete = data.clone();
    data.extend_from_slice(&partial);
    let s = verify_bytes(&[("f1", &data)], plain()).unwrap();
    assert_eq!(
        (s.end.clone(), s.entries, s.incomplete_end),
        (
            End::Open {
                file: "f1".into(),
                line: 3,
                seq: 3
            },
            2,
            Some(20)
        )
    );
    // Any file after it, even an empty one, makes it a break.
    for after in [&b""[..], &complete[..]] {
        let found = verify_bytes(&[("f1", &data), ("f2", after)], plain()).unwrap_err();
        assert_eq!(
            (found.file.as_str(), found.line, found.seq, found.problem),
            ("f1", 3, Some(3), Problem::Torn)
        );
    }
    // A file whose very first line is being written ends the trail open at line 1.
    let s = verify_bytes(&[("f1", &complete), ("f2", &partial)], plain()).unwrap();
    assert_eq!(
        s.end,
        End::Open {
            file: "f2".into(),
            line: 1,
            seq: 3
        }
    );
    // An overlong incomplete line is never the writer's.
    let mut long = complete.clone();
    long.extend(std::iter::repeat_n(b'x', reader::MAX_LINE + 1));
    let found = verify_bytes(&[("f1", &long)], plain()).unwrap_err();
    assert_eq!((found.line, found.problem), (3, Problem::TooLong));
}

#[test]
fn an_incomplete_line_after_a_closing_checkpoint_is_named() {
    let keys = Keys::new();
    let (_dir, files) = trail(&keys, None);
    let last = files.last().unwrap();
    let mut data = std::fs::read(last).unwrap();
    let n = lines(last).len() as u64;
    data.extend_from_slice(b"{\"seq\":");
    std::fs::write(last, &data).unwrap();
    let found = run(&files, &keys, &[]).unwrap_err();
    assert_eq!(
        (found.file, found.line, found.problem),
        (name(last), n + 1, Problem::AfterClose)
    );
}

#[test]
fn a_starts_gap_being_written_leaves_the_trail_open() {
    // A killed run's file (opened for a rotation: the files before it are not given), then
    // a start's opening whose gap entry is being written.
    let mut first = Vec::new();
    let open = entry(
        &mut first,
        1,
        &Digest::GENESIS,
        EntryKind::Open,
        &opening("f1", "rotate", None),
    );
    let r = entry(&mut first, 2, &open, EntryKind::Record, "\"time\":1");
    let mut second = Vec::new();
    let o2 = entry(
        &mut second,
        3,
        &r,
        EntryKind::Open,
        &opening("f2", "start", Some("f1")),
    );
    let complete = second.clone();
    let mut gap_line = Vec::new();
    entry(&mut gap_line, 4, &o2, EntryKind::Gap, &gap(2, &r));
    second.extend_from_slice(&gap_line[..30]);
    let s = verify_bytes(&[("f1", &first), ("f2", &second)], plain()).unwrap();
    assert!(
        matches!(&s.end, End::Open { file, line: 2, seq: 4 } if file == "f2"),
        "{:?}",
        s.end
    );
    // Without the partial line, the gap is missing.
    let found = verify_bytes(&[("f1", &first), ("f2", &complete)], plain()).unwrap_err();
    assert!(
        matches!(found.problem, Problem::MissingGap { .. }),
        "{found}"
    );
}

#[test]
fn schedule_names_an_unsigned_record_without_a_numeric_time() {
    let keys = Keys::new();
    let schedule = || {
        Verifier::new(VerifyOptions {
            keys: vec![keys.public],
            decrypt: Vec::new(),
        })
        .with_schedule(Schedule {
            every: 1000,
            interval: Duration::from_secs(60),
        })
    };
    for time in ["\"1\"", "-1", "1.5", "null", "18446744073709551616"] {
        let (_dir, files) = trail(&keys, None);
        let last = files.last().unwrap();
        // A record with this time after the last checkpoint, then one in time.
        let mut l = lines(last);
        l.pop();
        let before = crate::chain::open(l.last().unwrap().strip_suffix(b"\n").unwrap()).unwrap();
        let mut line = Vec::new();
        let h = entry(
            &mut line,
            before.seq + 1,
            &before.hash,
            EntryKind::Record,
            &format!("\"time\":{time}"),
        );
        l.push(line);
        let mut line = Vec::new();
        entry(
            &mut line,
            before.seq + 2,
            &h,
            EntryKind::Record,
            "\"time\":1",
        );
        l.push(line);
        write_lines(last, &l);
        let found = run_with(&files, schedule()).unwrap_err();
        assert_eq!(
            (found.file.clone(), found.line, found.seq),
            (name(last), l.len() as u64 - 1, Some(before.seq + 1)),
            "time {time}"
        );
        assert_eq!(
            found.problem,
            Problem::TailNoTime {
                interval: Duration::from_secs(60)
            }
        );
        // Without a time bound (only checkpoint_every given), it is not held to one.
        let count_only = Verifier::new(VerifyOptions {
            keys: vec![keys.public],
            decrypt: Vec::new(),
        })
        .with_schedule(Schedule {
            every: 1000,
            interval: Duration::MAX,
        });
        run_with(&files, count_only).unwrap();
    }
    // A record without any time member.
    let (_dir, files) = trail(&keys, None);
    let last = files.last().unwrap();
    let mut l = lines(last);
    l.pop();
    let before = crate::chain::open(l.last().unwrap().strip_suffix(b"\n").unwrap()).unwrap();
    let mut line = Vec::new();
    entry(
        &mut line,
        before.seq + 1,
        &before.hash,
        EntryKind::Record,
        "\"class_uid\":6003",
    );
    l.push(line);
    write_lines(last, &l);
    let found = run_with(&files, schedule()).unwrap_err();
    assert_eq!(found.line, l.len() as u64);
    assert!(
        matches!(found.problem, Problem::TailNoTime { .. }),
        "{found}"
    );
}

#[test]
fn a_start_opening_without_its_checkpoint_is_named() {
    let keys = Keys::new();
    let (_dir, files) = trail(&keys, None);
    // After the clean shutdown, a file someone added: a start's opening that follows it,
    // then records, all hashed right, and no checkpoint.
    let last = files.last().unwrap();
    let end = last_entry(last);
    let mut planted = Vec::new();
    let o = entry(
        &mut planted,
        end.seq + 1,
        &end.hash,
        EntryKind::Open,
        &opening("planted", "start", Some(&opened_as(last))),
    );
    entry(
        &mut planted,
        end.seq + 2,
        &o,
        EntryKind::Record,
        "\"time\":1",
    );
    let dir = last.parent().unwrap();
    let path = dir.join("zz-planted.jsonl");
    std::fs::write(&path, &planted).unwrap();
    let mut all = files.clone();
    all.push(path.clone());
    let found = run(&all, &keys, &[]).unwrap_err();
    assert_eq!(
        (found.file.as_str(), found.line, found.seq, found.problem),
        (
            "zz-planted.jsonl",
            2,
            Some(end.seq + 2),
            Problem::StartUnsigned
        )
    );
    // Its opening alone is what a start that crashed before its checkpoint leaves.
    std::fs::write(&path, &planted[..o_len(&planted)]).unwrap();
    let s = run(&all, &keys, &[]).unwrap();
    assert!(matches!(s.end, End::Open { .. }), "{:?}", s.end);
}

/// The length of the first line of `data`, with its newline.
fn o_len(data: &[u8]) -> usize {
    data.iter().position(|&b| b == b'\n').unwrap() + 1
}

#[test]
fn a_runs_unsigned_end_is_held_to_the_schedule_when_a_later_start_signs_it() {
    let keys = Keys::new();
    let signing = keys.audit_keys(None).signing;
    let checkpoint = |out: &mut Vec<u8>, seq: u64, prev: &Digest| {
        let m = crate::checkpoint::members(&signing, seq - 1, prev, 1, None).unwrap();
        entry(
            out,
            seq,
            prev,
            EntryKind::Checkpoint,
            std::str::from_utf8(&m).unwrap(),
        )
    };
    // A run signed at its start, then seven entries, and killed: two more than the writer
    // leaves unsigned with checkpoint_every 5.
    let mut f1 = Vec::new();
    let mut prev = entry(
        &mut f1,
        1,
        &Digest::GENESIS,
        EntryKind::Open,
        &opening("f1", "start", None),
    );
    prev = checkpoint(&mut f1, 2, &prev);
    for seq in 3..=9 {
        prev = entry(&mut f1, seq, &prev, EntryKind::Record, "\"time\":1");
    }
    // The next start records the gap and signs them all.
    let mut f2 = Vec::new();
    let o = entry(
        &mut f2,
        10,
        &prev,
        EntryKind::Open,
        &opening("f2", "start", Some("f1")),
    );
    let g = entry(&mut f2, 11, &o, EntryKind::Gap, &gap(9, &prev));
    checkpoint(&mut f2, 12, &g);
    let files: [(&str, &[u8]); 2] = [("f1", &f1), ("f2", &f2)];
    let with_keys = || {
        Verifier::new(VerifyOptions {
            keys: vec![keys.public],
            decrypt: Vec::new(),
        })
    };
    // Without the schedule it verifies, and the gap says what only the start signed.
    let s = verify_bytes(&files, with_keys()).unwrap();
    assert_eq!(s.gaps[0].unsigned, Some((3, 9)));
    // With it, the first entry past checkpoint_every in that run is named.
    let schedule = Schedule {
        every: 5,
        interval: Duration::MAX,
    };
    let found = verify_bytes(&files, with_keys().with_schedule(schedule)).unwrap_err();
    assert_eq!(
        (found.file.as_str(), found.line, found.seq, found.problem),
        (
            "f1",
            8,
            Some(8),
            Problem::TailTooLong {
                unsigned: 7,
                every: 5
            }
        )
    );
}

#[test]
fn a_start_whose_checkpoint_failed_under_the_previous_writer_is_reported_not_broken() {
    let keys = Keys::new();
    let signing = keys.audit_keys(None).signing;
    let checkpoint = |out: &mut Vec<u8>, seq: u64, prev: &Digest, close| {
        let m = crate::checkpoint::members(&signing, seq - 1, prev, 1, close).unwrap();
        entry(
            out,
            seq,
            prev,
            EntryKind::Checkpoint,
            std::str::from_utf8(&m).unwrap(),
        )
    };
    // A run signed at its start, closed at shutdown.
    let mut f1 = Vec::new();
    let mut prev = entry(
        &mut f1,
        1,
        &Digest::GENESIS,
        EntryKind::Open,
        &opening("f1", "start", None),
    );
    prev = checkpoint(&mut f1, 2, &prev, None);
    prev = entry(&mut f1, 3, &prev, EntryKind::Record, "\"time\":1");
    prev = checkpoint(&mut f1, 4, &prev, Some(Close::Shutdown));
    // The next run could not sign at its start (an HSM that refused) and went on, as the
    // gateway once did: its records follow the opening, and its scheduled checkpoint signs
    // them; it closes at shutdown.
    let mut f2 = Vec::new();
    let o = entry(
        &mut f2,
        5,
        &prev,
        EntryKind::Open,
        &opening("f2", "start", Some("f1")),
    );
    let mut p2 = o;
    for seq in 6..=8 {
        p2 = entry(&mut f2, seq, &p2, EntryKind::Record, "\"time\":1");
    }
    p2 = checkpoint(&mut f2, 9, &p2, None);
    p2 = entry(&mut f2, 10, &p2, EntryKind::Record, "\"time\":1");
    checkpoint(&mut f2, 11, &p2, Some(Close::Shutdown));
    let with_keys = || {
        Verifier::new(VerifyOptions {
            keys: vec![keys.public],
            decrypt: Vec::new(),
        })
    };
    let schedule = Schedule {
        every: 5,
        interval: Duration::MAX,
    };
    let files: [(&str, &[u8]); 2] = [("f1", &f1), ("f2", &f2)];
    let s = verify_bytes(&files, with_keys().with_schedule(schedule)).unwrap();
    assert_eq!((s.end, s.records), (End::Sealed, 5));
    assert_eq!(s.warning_count, 1);
    let w = &s.warnings[0];
    assert_eq!(
        (w.at.file.as_str(), w.at.line, w.at.seq, w.signed_by),
        ("f2", 2, Some(6), 9)
    );
    assert!(
        w.to_string().contains("checkpoint 9 of the same run"),
        "{w}"
    );

    // Without a checkpoint of its own run, signed only by the next start's, it is broken:
    // whoever can write the directory can write such a run.
    let unsigned = &f2[..f2.len() - lines_from(&f2, 3)];
    let mut f3 = Vec::new();
    let last = crate::chain::open(
        unsigned
            .split(|&b| b == b'\n')
            .rfind(|l| !l.is_empty())
            .unwrap(),
    )
    .unwrap();
    let o = entry(
        &mut f3,
        9,
        &last.hash,
        EntryKind::Open,
        &opening("f3", "start", Some("f2")),
    );
    let g = entry(&mut f3, 10, &o, EntryKind::Gap, &gap(8, &last.hash));
    checkpoint(&mut f3, 11, &g, Some(Close::Shutdown));
    let files: [(&str, &[u8]); 3] = [("f1", &f1), ("f2", unsigned), ("f3", &f3)];
    let found = verify_bytes(&files, with_keys()).unwrap_err();
    assert_eq!(
        (found.file.as_str(), found.line, found.seq, found.problem),
        ("f2", 2, Some(6), Problem::StartUnsigned)
    );
    // Nor at the trail's end.
    let found = verify_bytes(&files[..2], with_keys()).unwrap_err();
    assert_eq!((found.line, found.problem), (2, Problem::StartUnsigned));
}

/// The bytes of the last `n` lines of `data`.
fn lines_from(data: &[u8], n: usize) -> usize {
    let l: Vec<&[u8]> = data.split_inclusive(|&b| b == b'\n').collect();
    l[l.len() - n..].iter().map(|l| l.len()).sum()
}

/// `line` (without its newline) with `from` replaced by `to`, sealed again with its hash.
fn reseal(line: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = std::str::from_utf8(line).unwrap();
    let body = text[..text.len() - 75].replace(from, to);
    format!(
        "{body},\"hash\":\"{}\"}}",
        Digest::of(body.as_bytes()).hex()
    )
    .into_bytes()
}

#[test]
fn findings_text_from_the_trail_cannot_carry_control_characters() {
    let keys = Keys::new();
    let (_dir, files) = trail(&keys, None);
    // The closing checkpoint, its key id made to rewrite the terminal's line.
    let last = files.last().unwrap();
    let mut l = lines(last);
    let closing = l.pop().unwrap();
    let kid = crate::chain::open(closing.strip_suffix(b"\n").unwrap())
        .unwrap()
        .value["checkpoint"]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let evil = "\\r\\u001b[2K\\u009bverified: all good \u{202e}";
    let mut forged = reseal(closing.strip_suffix(b"\n").unwrap(), &kid, evil);
    forged.push(b'\n');
    l.push(forged.clone());
    write_lines(last, &l);
    let found = run(&files, &keys, &[]).unwrap_err();
    assert!(
        matches!(&found.problem, Problem::Checkpoint(CheckpointError::UnknownKey(k)) if k.contains('\u{1b}')),
        "{found:?}"
    );
    let said = found.to_string();
    assert!(
        !said.chars().any(|c| c.is_control() || c == '\u{202e}'),
        "{said:?}"
    );
    assert!(
        said.contains("\\u{000d}\\u{001b}[2K\\u{009b}verified"),
        "{said}"
    );
    // The same entry printed as JSON: the same members, with nothing a terminal acts on.
    let line = forged.strip_suffix(b"\n").unwrap();
    let shown = printable_json(line);
    let text = std::str::from_utf8(&shown).unwrap();
    assert!(!text.chars().any(acts_on_a_terminal), "{text:?}");
    let again: serde_json::Value = serde_json::from_str(text).unwrap();
    let before: serde_json::Value = serde_json::from_slice(line).unwrap();
    assert_eq!(again, before);
    // Whitespace a terminal acts on, between members, becomes a space.
    let cr = b"{\"a\":1,\r\"b\":\"\xc2\x9b\"}";
    assert_eq!(&*printable_json(cr), br#"{"a":1, "b":"\u009b"}"#);
}

#[test]
fn verify_stops_at_an_overlong_line_without_reading_to_its_end() {
    let keys = Keys::new();
    let (dir, files) = trail(&keys, None);
    // A file that is mostly a hole: a line of 8 GiB of zero bytes, never ended.
    let path = dir.path().join("audit-99999999999999999999-hole.jsonl");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(8 << 30).unwrap();
    let mut all = files.clone();
    all.push(path);
    let started = std::time::Instant::now();
    let found = run(&all, &keys, &[]).unwrap_err();
    assert_eq!((found.line, found.problem), (1, Problem::TooLong));
    // Reading 8 GiB of zeros takes seconds at best; a bounded read, milliseconds.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
