#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufReader;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;
use crate::record::tests::activity;
use crate::record::{ConnectionEvent, ConnectionOutcome};
use crate::verify::{End, Summary, Verifier, VerifyOptions};
use crate::{PublicKey, generate_signing_key};

pub(crate) struct Keys {
    _dir: tempfile::TempDir,
    signing: idgate_secrets::SecretRef,
    pub(crate) public: PublicKey,
}

impl Keys {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (pem, public) = generate_signing_key().unwrap();
        let path = dir.path().join("signing.pem");
        std::fs::write(&path, pem.as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self {
            _dir: dir,
            signing: idgate_secrets::SecretRef::File(path),
            public,
        }
    }

    pub(crate) fn audit_keys(&self, encryption: Option<&EncryptionKey>) -> AuditKeys {
        AuditKeys {
            signing: SigningKey::load(&self.signing).unwrap(),
            encryption: encryption.cloned(),
            previous: Vec::new(),
            verifying: Vec::new(),
        }
    }
}

pub(crate) fn settings(dir: &Path) -> WriterSettings {
    WriterSettings {
        dir: dir.to_owned(),
        rotate_bytes: 64 << 20,
        rotate_age: Duration::from_secs(3600),
        checkpoint_every: 100,
        checkpoint_interval: Duration::from_secs(60),
        sync_interval: Duration::from_millis(5),
        queue_capacity: 1024,
    }
}

pub(crate) fn verify(dir: &Path, keys: &[PublicKey], decrypt: &[EncryptionKey]) -> Summary {
    let mut v = Verifier::new(VerifyOptions {
        keys: keys.to_vec(),
        decrypt: decrypt.to_vec(),
    });
    for f in files::list(dir).unwrap() {
        let name = f.display().to_string();
        v.file(&name, BufReader::new(File::open(&f).unwrap()))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    v.finish()
}

fn records(trail: &AuditTrail, n: usize) {
    for i in 0..n {
        let id = format!("rid-{i}");
        let permit = trail.try_reserve().expect("a free place");
        trail.api(&activity(&id, "/v1/x"), Some(permit));
    }
}

fn wait_written(trail: &AuditTrail) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while trail.metrics().depth.get() > 0 {
        assert!(Instant::now() < deadline, "the writer did not write");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn records_are_chained_signed_and_sealed_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let mut s = settings(dir.path());
    s.checkpoint_every = 10;
    let (trail, report) = AuditTrail::start(s, keys.audit_keys(None), None).unwrap();
    assert!(report.continues.is_none() && report.gap.is_none());
    records(&trail, 25);
    trail.close();
    let summary = verify(dir.path(), &[keys.public], &[]);
    assert_eq!(summary.records, 25);
    assert_eq!(summary.end, End::Sealed);
    assert_eq!(summary.first_seq, Some(1));
    // Two checkpoints by count (at least) and the closing one.
    assert!(summary.checkpoints >= 3, "{summary:?}");
    assert_eq!(summary.unsigned, 0);
    assert_eq!(trail.metrics().dropped.get(), 0);
}

#[test]
fn a_restart_continues_the_chain_in_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    for run in 0..3 {
        let (trail, report) =
            AuditTrail::start(settings(dir.path()), keys.audit_keys(None), None).unwrap();
        assert_eq!(report.continues.is_some(), run > 0);
        assert!(report.gap.is_none());
        records(&trail, 4);
        trail.close();
    }
    assert_eq!(files::list(dir.path()).unwrap().len(), 3);
    let summary = verify(dir.path(), &[keys.public], &[]);
    assert_eq!((summary.records, summary.files), (12, 3));
    assert_eq!(summary.end, End::Sealed);
    assert!(summary.gaps.is_empty());
}

/// Copies the trail as a crash would leave it: everything written so far, nothing closed.
fn crashed_copy(from: &Path, to: &Path) {
    for f in files::list(from).unwrap() {
        std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
}

#[test]
fn a_start_after_a_crash_sets_the_torn_end_aside_and_records_the_gap() {
    let live = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let (trail, _) = AuditTrail::start(settings(live.path()), keys.audit_keys(None), None).unwrap();
    records(&trail, 7);
    wait_written(&trail);
    let crashed = tempfile::tempdir().unwrap();
    crashed_copy(live.path(), crashed.path());
    trail.close();
    // Before the restart the chain verifies up to its last written entry, and is open.
    let before = verify(crashed.path(), &[keys.public], &[]);
    assert_eq!(before.records, 7);
    assert!(matches!(before.end, End::Open { .. }), "{:?}", before.end);
    // A write torn by the crash.
    let file = &files::list(crashed.path()).unwrap()[0];
    let torn = b"{\"seq\":10,\"prev\":\"ab";
    let mut data = std::fs::read(file).unwrap();
    data.extend_from_slice(torn);
    std::fs::write(file, &data).unwrap();

    let (trail, report) =
        AuditTrail::start(settings(crashed.path()), keys.audit_keys(None), None).unwrap();
    let gap = report.gap.clone().expect("a gap");
    assert_eq!(gap.last_seq, before.last_seq.unwrap());
    assert_eq!(gap.bytes_discarded, torn.len() as u64);
    assert_eq!(std::fs::read(files::discarded_path(file)).unwrap(), torn);
    records(&trail, 2);
    trail.close();
    let after = verify(crashed.path(), &[keys.public], &[]);
    assert_eq!(after.records, 9);
    assert_eq!(after.end, End::Sealed);
    assert_eq!(after.gaps.len(), 1);
    assert_eq!(after.gaps[0].last_seq, gap.last_seq);
    assert_eq!(after.gaps[0].bytes_discarded, torn.len() as u64);
}

#[test]
fn a_crash_with_more_than_4_mib_after_the_last_checkpoint_still_starts() {
    let live = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let (enc, _) = EncryptionKey::generate().unwrap();
    // An encrypted trail of 2 KB records, a checkpoint every 5000 entries: the start's
    // checkpoint is the only one, and more than 4 MiB follows it when the process dies.
    let mut s = settings(live.path());
    s.checkpoint_every = 5000;
    s.checkpoint_interval = Duration::from_secs(3600);
    let (trail, _) = AuditTrail::start(s.clone(), keys.audit_keys(Some(&enc)), None).unwrap();
    let path = "/v1/".to_owned() + &"p".repeat(2000);
    let mut n = 0;
    for batch in 0..4 {
        for i in 0..500 {
            let id = format!("rid-{batch}-{i}");
            trail.api(&activity(&id, &path), Some(trail.try_reserve().unwrap()));
            n += 1;
        }
        wait_written(&trail);
    }
    let crashed = tempfile::tempdir().unwrap();
    crashed_copy(live.path(), crashed.path());
    trail.close();
    let file = &files::list(crashed.path()).unwrap()[0];
    assert!(std::fs::metadata(file).unwrap().len() > 5 << 20);

    s.dir = crashed.path().to_owned();
    let (trail, report) =
        AuditTrail::start(s, keys.audit_keys(Some(&enc)), None).expect("the restart");
    let gap = report.gap.clone().expect("a gap");
    assert_eq!(gap.reason, GapReason::Unclosed);
    // Every record the dead run wrote is continued from, nothing set aside.
    assert_eq!((gap.last_seq, gap.bytes_discarded), (n + 2, 0));
    trail.close();
    let summary = verify(crashed.path(), &[keys.public], std::slice::from_ref(&enc));
    assert_eq!((summary.records, summary.end), (n, End::Sealed));
}

/// A reader that notes the largest read asked of it: the buffer its caller fills.
struct LargestRead<R> {
    inner: R,
    largest: usize,
}

impl<R: std::io::Read> std::io::Read for LargestRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.largest = self.largest.max(buf.len());
        self.inner.read(buf)
    }
}

/// A writer that only counts.
struct Counted(u64);

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether the bytes of `a` from `a_at` on are those of `b`, read a MiB at a time.
fn same_bytes(a: &Path, a_at: u64, b: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut a = File::open(a).unwrap();
    a.seek(SeekFrom::Start(a_at)).unwrap();
    let mut b = File::open(b).unwrap();
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.read(&mut x).unwrap();
        if n == 0 {
            return b.read(&mut y).unwrap() == 0;
        }
        if b.read_exact(&mut y[..n]).is_err() || x[..n] != y[..n] {
            return false;
        }
    }
}

#[test]
fn a_start_sets_aside_a_large_tail_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let signing = keys.audit_keys(None).signing;
    let path = dir.path().join(files::file_name(1, SystemTime::now()));
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    // A run that signed its start, then wrote 32 MiB of records and no checkpoint (its
    // signing key out of reach); the next start allows 10 unsigned entries after one.
    let start = [Line::Open("start", None), Line::Checkpoint(None)];
    let (seq, prev) = write_entries(&path, &signing, 1, Digest::GENESIS, &start);
    let id = "r".repeat(4000);
    let records = |n| -> Vec<Line<'_>> { (0..n).map(|_| Line::Record(&id)).collect() };
    let (mut seq, mut prev) = write_entries(&path, &signing, seq + 1, prev, &records(10));
    let keep = len(&path);
    while len(&path) < 32 << 20 {
        (seq, prev) = write_entries(&path, &signing, seq + 1, prev, &records(256));
    }
    let total = len(&path);
    assert!(total - keep >= 30 << 20);
    let before = tempfile::tempdir().unwrap();
    let copy = before.path().join("before");
    std::fs::copy(&path, &copy).unwrap();

    let mut s = settings(dir.path());
    s.checkpoint_every = 10;
    let (trail, report) = AuditTrail::start(s, keys.audit_keys(None), None).expect("the start");
    let gap = report.gap.clone().expect("a gap");
    assert_eq!(gap.reason, GapReason::Discarded);
    assert_eq!((gap.last_seq, gap.bytes_discarded), (12, total - keep));
    trail.close();
    // The file is cut after the entries the start went on from; its tail is in the side
    // file, byte for byte.
    assert_eq!(len(&path), keep);
    assert!(same_bytes(&copy, keep, &files::discarded_path(&path)));
    let summary = verify(dir.path(), &[keys.public], &[]);
    assert_eq!((summary.records, summary.end), (10, End::Sealed));

    // The tail is moved through a small buffer, never read whole.
    let mut from = File::open(&copy).unwrap();
    std::io::Seek::seek(&mut from, std::io::SeekFrom::Start(keep)).unwrap();
    let mut from = LargestRead {
        inner: from,
        largest: 0,
    };
    let mut to = Counted(0);
    files::copy_exactly(&mut from, &mut to, total - keep).unwrap();
    assert_eq!(to.0, total - keep);
    assert!(from.largest <= 64 << 10, "a read of {} bytes", from.largest);
}

#[test]
fn files_rotate_by_size_and_the_chain_runs_through_them() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let mut s = settings(dir.path());
    s.rotate_bytes = 4096;
    let (trail, _) = AuditTrail::start(s, keys.audit_keys(None), None).unwrap();
    for _ in 0..6 {
        records(&trail, 5);
        wait_written(&trail);
    }
    trail.close();
    let files = files::list(dir.path()).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    let summary = verify(dir.path(), &[keys.public], &[]);
    assert_eq!(summary.records, 30);
    assert_eq!(summary.end, End::Sealed);
    // Verifying all but the last file: closed for rotation, the chain goes on elsewhere.
    let mut v = Verifier::new(VerifyOptions {
        keys: vec![keys.public],
        decrypt: Vec::new(),
    });
    for f in &files[..files.len() - 1] {
        v.file("f", BufReader::new(File::open(f).unwrap())).unwrap();
    }
    assert!(matches!(v.finish().end, End::Rotated { .. }));
}

#[test]
fn encrypted_files_hold_no_plaintext_and_verify_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let (enc, _) = EncryptionKey::generate().unwrap();
    let (trail, _) =
        AuditTrail::start(settings(dir.path()), keys.audit_keys(Some(&enc)), None).unwrap();
    records(&trail, 5);
    trail.close();
    let file = std::fs::read_to_string(&files::list(dir.path()).unwrap()[0]).unwrap();
    assert!(
        !file.contains("rid-") && !file.contains("apikey:partner"),
        "{file}"
    );
    let summary = verify(dir.path(), &[keys.public], std::slice::from_ref(&enc));
    assert_eq!((summary.records, summary.end), (5, End::Sealed));
    // A restart with the same key continues; one that changed it reads the end with the old.
    let (new, _) = EncryptionKey::generate().unwrap();
    let mut k = keys.audit_keys(Some(&new));
    k.previous.push(enc.clone());
    let (trail, report) = AuditTrail::start(settings(dir.path()), k, None).unwrap();
    assert!(report.continues.is_some() && report.gap.is_none());
    trail.close();
    let summary = verify(dir.path(), &[keys.public], &[enc.clone(), new.clone()]);
    assert_eq!(summary.end, End::Sealed);
    // Without the key of the last file, a start refuses rather than set the file aside.
    let err =
        AuditTrail::start(settings(dir.path()), keys.audit_keys(Some(&enc)), None).unwrap_err();
    assert!(err.to_string().contains("not configured"), "{err}");
    assert_eq!(files::list(dir.path()).unwrap().len(), 2);
}

/// An exporter that, once told to, holds the writer until it is let go: the stand-in for a
/// slow disk.
struct Held {
    holding: AtomicBool,
    go: Mutex<mpsc::Receiver<()>>,
    lines: Mutex<Vec<Vec<u8>>>,
}

impl Export for Held {
    fn export(&self, line: &[u8]) {
        if self.holding.load(std::sync::atomic::Ordering::Acquire) {
            let _ = self.go.lock().unwrap().recv();
        }
        self.lines.lock().unwrap().push(line.to_vec());
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_refuses_reservations_and_drops_unreserved_records_with_a_trace() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let mut s = settings(dir.path());
    s.queue_capacity = 2;
    let (go, held) = mpsc::channel();
    let held = Arc::new(Held {
        holding: Default::default(),
        go: Mutex::new(held),
        lines: Default::default(),
    });
    let (trail, _) = AuditTrail::start(s, keys.audit_keys(None), Some(held.clone())).unwrap();
    held.holding
        .store(true, std::sync::atomic::Ordering::Release);
    let a = trail.try_reserve().unwrap();
    let b = trail.try_reserve().unwrap();
    assert!(trail.try_reserve().is_none(), "two places only");
    // Both records go to the writer, which is then held by the exporter.
    trail.api(&activity("rid-a", "/v1/a"), Some(a));
    trail.api(&activity("rid-b", "/v1/b"), Some(b));
    let started = Instant::now();
    assert!(trail.reserve(Duration::from_millis(50)).await.is_none());
    assert!(started.elapsed() >= Duration::from_millis(45));
    // Refused connections have a pool of their own: past it they are dropped and counted.
    let refused = ConnectionEvent {
        time: SystemTime::now(),
        remote: "192.0.2.7".parse().unwrap(),
        port: None,
        via: None,
        peer: None,
        outcome: ConnectionOutcome::Refused,
        reason: "network_deny",
        stage: "before TLS",
        detail: None,
    };
    for _ in 0..5 {
        trail.connection(&refused);
    }
    assert!(
        trail.metrics().dropped.get() >= 3,
        "{}",
        trail.metrics().dropped.get()
    );
    // Let the writer go: the places come back.
    drop(go);
    let permit = trail.reserve(Duration::from_secs(5)).await;
    assert!(permit.is_some());
    trail.api(&activity("rid-c", "/v1/c"), permit);
    trail.close();
    let summary = verify(dir.path(), &[keys.public], &[]);
    assert_eq!(summary.end, End::Sealed);
    assert_eq!(summary.dropped, trail.metrics().dropped.get());
    assert_eq!(summary.records, 3 + 5 - summary.dropped);
    // The exporter saw every line, the file's opening included, in chain order.
    let lines = held.lines.lock().unwrap();
    assert_eq!(chain::open(&lines[0]).unwrap().seq, 1);
    let seqs: Vec<u64> = lines.iter().map(|l| chain::open(l).unwrap().seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert_eq!(seqs.last().copied(), summary.last_seq);
}

#[test]
fn an_idle_trail_is_checkpointed_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let mut s = settings(dir.path());
    s.checkpoint_interval = Duration::from_millis(50);
    let (trail, _) = AuditTrail::start(s, keys.audit_keys(None), None).unwrap();
    records(&trail, 1);
    let file = files::list(dir.path()).unwrap()[0].clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&file).unwrap();
        // The start's own checkpoint, and one after the record.
        if text.matches("\"entry\":\"checkpoint\"").count() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no timed checkpoint: {text}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let summary = {
        let mut v = Verifier::new(VerifyOptions {
            keys: vec![keys.public],
            decrypt: Vec::new(),
        });
        v.file("f", BufReader::new(File::open(&file).unwrap()))
            .unwrap();
        v.finish()
    };
    assert_eq!(summary.unsigned, 0);
    assert!(matches!(summary.end, End::Open { .. }));
    trail.close();
}

#[test]
fn a_large_batch_is_written_before_the_sync_interval_and_its_places_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let mut s = settings(dir.path());
    // Neither the sync interval nor half the queue would make the writer write.
    s.sync_interval = Duration::from_secs(120);
    s.queue_capacity = 1 << 16;
    let (trail, _) = AuditTrail::start(s, keys.audit_keys(None), None).unwrap();
    let mut members = Vec::new();
    activity("rid-0", "/v1/x").write_members(&mut members);
    let n = crate::queue::WRITE_AT / members.len() + 2;
    assert!(n < (1 << 15), "half the queue is not reached");
    // The first record wakes the writer, which then gathers: give it time to park.
    records(&trail, 1);
    std::thread::sleep(Duration::from_millis(50));
    records(&trail, n);
    // The batch that crossed the threshold is written long before the sync interval; the
    // one or two records after the crossing may wait for the next wake-up (here, the close).
    let file = files::list(dir.path()).unwrap()[0].clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&file).unwrap();
        if text.lines().count() >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "written only at the sync interval: {} lines",
            text.lines().count()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    trail.close();
    let summary = verify(dir.path(), &[keys.public], &[]);
    assert_eq!(summary.records as usize, n + 1);
    assert_eq!(summary.end, End::Sealed);
}

/// Every entry of the trail in `dir`, decrypted with `decrypt`.
fn entries(dir: &Path, decrypt: &[EncryptionKey]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for f in files::list(dir).unwrap() {
        let mut lines = crate::reader::Lines::new(BufReader::new(File::open(&f).unwrap()));
        while let Some(line) = lines.next_line().unwrap() {
            assert!(!line.too_long, "{}:{}", f.display(), line.number);
            let (entry, _) = crate::reader::decode(&line.bytes, decrypt).unwrap();
            out.push(entry.value);
        }
    }
    out
}

#[test]
fn a_record_too_large_for_a_line_is_written_in_a_bounded_form_and_the_trail_verifies() {
    let keys = Keys::new();
    let (enc, _) = EncryptionKey::generate().unwrap();
    // Plain: larger than a line. Encrypted: a line as plaintext, but not once base64-encoded.
    for (route_len, encryption) in [(300_000, None), (200_000, Some(&enc))] {
        let dir = tempfile::tempdir().unwrap();
        let (trail, _) =
            AuditTrail::start(settings(dir.path()), keys.audit_keys(encryption), None).unwrap();
        let route = "r".repeat(route_len);
        let mut huge = activity("rid-huge", "/v1/x");
        huge.route = &route;
        trail.api(&huge, trail.try_reserve());
        records(&trail, 1);
        trail.close();
        let decrypt: Vec<EncryptionKey> = encryption.into_iter().cloned().collect();
        let summary = verify(dir.path(), &[keys.public], &decrypt);
        assert_eq!((summary.records, summary.end), (2, End::Sealed));
        let all = entries(dir.path(), &decrypt);
        let cut = all
            .iter()
            .find(|e| e.get("oversized").is_some())
            .expect("the bounded form");
        assert!(cut["oversized"]["bytes"].as_u64().unwrap() > route_len as u64);
        assert_eq!(cut["oversized"]["sha256"].as_str().unwrap().len(), 64);
        assert!(
            cut["oversized"]["head"]
                .as_str()
                .unwrap()
                .starts_with("\"class_uid\":6003")
        );
        // Still found by its time and class.
        assert_eq!(cut["time"], 1_795_452_348_053_u64);
        assert_eq!(cut["class_uid"], 6003);
    }
}

#[test]
fn a_start_signs_the_chain_it_continues_at_once() {
    let live = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let (trail, _) = AuditTrail::start(settings(live.path()), keys.audit_keys(None), None).unwrap();
    // Nothing written yet but the start: it is signed.
    let summary = verify(live.path(), &[keys.public], &[]);
    assert_eq!((summary.checkpoints, summary.unsigned), (1, 0));
    records(&trail, 3);
    wait_written(&trail);
    let crashed = tempfile::tempdir().unwrap();
    crashed_copy(live.path(), crashed.path());
    trail.close();
    // After a crash, the restart signs what the crashed run left unsigned, with its gap.
    let (trail, report) =
        AuditTrail::start(settings(crashed.path()), keys.audit_keys(None), None).unwrap();
    assert!(report.gap.is_some());
    let summary = verify(crashed.path(), &[keys.public], &[]);
    assert_eq!((summary.checkpoints, summary.unsigned), (2, 0));
    assert_eq!(summary.gap_count, 1);
    trail.close();
}

/// An entry to write by hand.
enum Line<'a> {
    Open(&'a str, Option<&'a str>),
    Record(&'a str),
    Checkpoint(Option<Close>),
}

/// Appends `lines` to the file `path` as entries from `seq` on, after `prev`, checkpoints
/// signed with `key`. Returns the last entry's sequence number and hash.
fn write_entries(
    path: &Path,
    key: &SigningKey,
    mut seq: u64,
    mut prev: Digest,
    lines: &[Line<'_>],
) -> (u64, Digest) {
    let mut out = Vec::new();
    let name = path.file_name().unwrap().to_str().unwrap();
    for line in lines {
        let (kind, members) = match line {
            Line::Open(reason, previous) => {
                let mut m = format!(
                    r#""open":{{"file":"{name}","reason":"{reason}","time":1,"time_dt":"x""#
                );
                if let Some(p) = previous {
                    m.push_str(&format!(r#","previous_file":"{p}""#));
                }
                m.push('}');
                (EntryKind::Open, m.into_bytes())
            }
            Line::Record(id) => (
                EntryKind::Record,
                format!(
                    r#""class_uid":6003,"time":{},"api":{{"request":{{"uid":"{id}"}}}}"#,
                    json::millis(SystemTime::now())
                )
                .into_bytes(),
            ),
            Line::Checkpoint(close) => (
                EntryKind::Checkpoint,
                checkpoint::members(key, seq - 1, &prev, json::millis(SystemTime::now()), *close)
                    .unwrap(),
            ),
        };
        prev = chain::seal(&mut out, seq, &prev, kind, &members);
        out.push(b'\n');
        seq = seq.wrapping_add(1);
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(&out).unwrap();
    (seq.wrapping_sub(1), prev)
}

/// The `open.file` of a trail file: its name.
fn name_of(path: &Path) -> String {
    path.file_name().unwrap().to_str().unwrap().to_owned()
}

#[test]
fn a_start_refuses_to_continue_a_trail_at_its_last_sequence_numbers() {
    let keys = Keys::new();
    let signing = keys.audit_keys(None).signing;
    for last in [u64::MAX, u64::MAX - 1] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join(files::file_name(last - 1, SystemTime::now()));
        // A chain someone sealed by hand that far, ending in a checkpoint that holds.
        write_entries(
            &path,
            &signing,
            last - 1,
            Digest::GENESIS,
            &[
                Line::Open("start", None),
                Line::Checkpoint(Some(Close::Shutdown)),
            ],
        );
        let err = AuditTrail::start(settings(dir.path()), keys.audit_keys(None), None).unwrap_err();
        assert!(
            matches!(err, AuditError::SeqExhausted { last_seq } if last_seq == last),
            "{err}"
        );
        assert!(err.to_string().contains("wrap"), "{err}");
        // Refused before anything was written.
        assert_eq!(files::list(dir.path()).unwrap().len(), 1);
    }
}

/// A trail of one run closed at shutdown: its file, and its last entry.
fn closed_run(dir: &Path, keys: &Keys, n: usize) -> (PathBuf, u64, Digest) {
    let (trail, _) = AuditTrail::start(settings(dir), keys.audit_keys(None), None).unwrap();
    records(&trail, n);
    trail.close();
    let summary = verify(dir, &[keys.public], &[]);
    assert_eq!(summary.end, End::Sealed);
    let file = files::list(dir).unwrap().pop().unwrap();
    (file, summary.last_seq.unwrap(), summary.head.unwrap())
}

/// The request ids of the trail's records.
fn request_ids(dir: &Path) -> Vec<String> {
    entries(dir, &[])
        .iter()
        .filter_map(|e| e["api"]["request"]["uid"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_fabricated_run_after_a_clean_shutdown_is_not_signed_by_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let (closed, n, head) = closed_run(dir.path(), &keys, 3);
    // Someone who can write the directory, but holds no signing key, adds a run after the
    // shutdown: a start's opening that follows it, and records made up, all hashed right.
    let planted = dir.path().join(files::file_name(n + 1, SystemTime::now()));
    let signing = keys.audit_keys(None).signing;
    write_entries(
        &planted,
        &signing,
        n + 1,
        head,
        &[
            Line::Open("start", Some(&name_of(&closed))),
            Line::Record("made-up-1"),
            Line::Record("made-up-2"),
        ],
    );
    let planted_len = std::fs::metadata(&planted).unwrap().len();
    let (trail, report) =
        AuditTrail::start(settings(dir.path()), keys.audit_keys(None), None).unwrap();
    records(&trail, 1);
    trail.close();
    // An opening without its checkpoint is a start that never finished its first write (or
    // one someone added): the start went on from the shutdown before it, and set the
    // planted file aside whole.
    let last = report.continues.clone().expect("continues");
    assert_eq!((last.seq, last.signed), (n, Some((n, head))));
    let gap = report.gap.expect("a gap");
    assert_eq!(gap.reason, GapReason::Discarded);
    assert_eq!(gap.bytes_discarded, planted_len);
    let aside = std::fs::read_to_string(files::discarded_path(&planted)).unwrap();
    assert!(
        aside.contains("made-up-1") && aside.contains("made-up-2"),
        "{aside}"
    );
    // The trail the next start signed holds none of it.
    let ids = request_ids(dir.path());
    assert!(ids.iter().all(|id| !id.starts_with("made-up")), "{ids:?}");
    assert_eq!(ids.len(), 4);
    let summary = verify(dir.path(), &[keys.public], &[]);
    assert_eq!(summary.end, End::Sealed);
    // The start's gap says which checkpoint it found, and what it vouched for after it.
    let gap_entry = entries(dir.path(), &[])
        .into_iter()
        .find(|e| e["entry"] == "gap")
        .unwrap();
    assert_eq!(gap_entry["gap"]["signed_seq"], n);
    assert_eq!(gap_entry["gap"]["signed_hash"], head.hex());
    assert_eq!(gap_entry["gap"]["last_seq"], n);
}

#[test]
fn a_start_torn_inside_its_own_first_write_is_set_aside_and_the_trail_verifies() {
    let live = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let (trail, _) = AuditTrail::start(settings(live.path()), keys.audit_keys(None), None).unwrap();
    records(&trail, 3);
    wait_written(&trail);
    let crashed = tempfile::tempdir().unwrap();
    crashed_copy(live.path(), crashed.path());
    trail.close();
    let before = verify(crashed.path(), &[keys.public], &[]);
    // A start after that crash writes its opening, gap and checkpoint in one write; the host
    // goes down again in the middle of its gap line.
    let again = tempfile::tempdir().unwrap();
    let (trail, report) =
        AuditTrail::start(settings(crashed.path()), keys.audit_keys(None), None).unwrap();
    assert!(report.gap.is_some());
    crashed_copy(crashed.path(), again.path());
    trail.close();
    let torn = files::list(again.path()).unwrap().pop().unwrap();
    let data = std::fs::read(&torn).unwrap();
    let gap_line = data.iter().position(|&b| b == b'\n').unwrap() + 1;
    std::fs::write(&torn, &data[..gap_line + 40]).unwrap();
    // The next start goes on from the crashed run's last entry, the torn start set aside.
    let (trail, report) =
        AuditTrail::start(settings(again.path()), keys.audit_keys(None), None).unwrap();
    assert_eq!(report.continues.map(|l| l.seq), before.last_seq);
    let gap = report.gap.expect("a gap");
    assert_eq!(gap.reason, GapReason::Discarded);
    assert_eq!(gap.bytes_discarded, gap_line as u64 + 40);
    assert_eq!(
        std::fs::read(files::discarded_path(&torn)).unwrap(),
        &data[..gap_line + 40]
    );
    records(&trail, 1);
    trail.close();
    let after = verify(again.path(), &[keys.public], &[]);
    assert_eq!(
        (after.end, after.records, after.gaps.len()),
        (End::Sealed, 4, 1)
    );
}

#[test]
fn a_fabricated_run_sealed_by_a_key_the_trail_does_not_list_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let (closed, n, head) = closed_run(dir.path(), &keys, 3);
    // The run of the test above, closed with a checkpoint made with a key of one's own.
    let planted = dir.path().join(files::file_name(n + 1, SystemTime::now()));
    let other = Keys::new().audit_keys(None).signing;
    write_entries(
        &planted,
        &other,
        n + 1,
        head,
        &[
            Line::Open("start", Some(&name_of(&closed))),
            Line::Record("made-up-1"),
            Line::Checkpoint(Some(Close::Shutdown)),
        ],
    );
    let before = std::fs::read(&planted).unwrap();
    let err = AuditTrail::start(settings(dir.path()), keys.audit_keys(None), None).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&name_of(&planted))
            && text.contains(&other.public().kid())
            && text.contains("neither the signing key's nor one of public_keys"),
        "{text}"
    );
    // Nothing signed, nothing set aside: the files are as they were found.
    assert_eq!(std::fs::read(&planted).unwrap(), before);
    assert_eq!(files::list(dir.path()).unwrap().len(), 2);
    assert!(!files::discarded_path(&planted).exists());
}

#[test]
fn after_a_change_of_signing_key_a_start_goes_on_only_when_the_old_key_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (Keys::new(), Keys::new());
    closed_run(dir.path(), &old, 2);
    // The new key alone cannot check the previous run's closing checkpoint.
    let err = AuditTrail::start(settings(dir.path()), new.audit_keys(None), None).unwrap_err();
    assert!(
        err.to_string()
            .contains("list the key that signed it in public_keys"),
        "{err}"
    );
    // With the old public key listed, the chain goes on, with no gap.
    let mut keys = new.audit_keys(None);
    keys.verifying = vec![old.public, new.public];
    let (trail, report) = AuditTrail::start(settings(dir.path()), keys, None).unwrap();
    assert!(report.gap.is_none(), "{:?}", report.gap);
    records(&trail, 1);
    trail.close();
    let summary = verify(dir.path(), &[old.public, new.public], &[]);
    assert_eq!((summary.end, summary.gap_count), (End::Sealed, 0));
}

#[test]
fn an_old_file_copied_under_a_newer_name_stops_the_start_instead_of_forking_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let (first, _, _) = closed_run(dir.path(), &keys, 2);
    closed_run(dir.path(), &keys, 2);
    // The first run's file, whole and genuinely signed, under names that sort last: one the
    // writer could have given, and one it never gives.
    for (name, says) in [
        (
            files::file_name(99, SystemTime::now()),
            "its name says its first entry is 99, but it begins with entry 1",
        ),
        (
            "audit-99999999999999999999-replay.jsonl".to_owned(),
            "not a name the writer gives its files",
        ),
    ] {
        let replayed = dir.path().join(&name);
        std::fs::copy(&first, &replayed).unwrap();
        let before = files::list(dir.path()).unwrap();
        let err = AuditTrail::start(settings(dir.path()), keys.audit_keys(None), None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&name) && text.contains(says), "{text}");
        // Nothing written: no second file numbered from the first run's end.
        assert_eq!(files::list(dir.path()).unwrap(), before);
        std::fs::remove_file(&replayed).unwrap();
    }
}

#[test]
fn a_start_refuses_a_last_entry_that_does_not_chain() {
    let live = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let (trail, _) = AuditTrail::start(settings(live.path()), keys.audit_keys(None), None).unwrap();
    records(&trail, 2);
    wait_written(&trail);
    let crashed = tempfile::tempdir().unwrap();
    crashed_copy(live.path(), crashed.path());
    trail.close();
    let before = verify(crashed.path(), &[keys.public], &[]);
    // After the crash, a line hashed right but that does not follow the chain, at a
    // sequence number near the last.
    let file = files::list(crashed.path()).unwrap().pop().unwrap();
    let signing = keys.audit_keys(None).signing;
    write_entries(
        &file,
        &signing,
        u64::MAX - 10,
        Digest::of(b"anything"),
        &[Line::Record("far-away")],
    );
    let (trail, report) =
        AuditTrail::start(settings(crashed.path()), keys.audit_keys(None), None).unwrap();
    let last = report.continues.clone().expect("continues");
    assert_eq!(Some(last.seq), before.last_seq);
    assert_eq!(report.gap.expect("a gap").reason, GapReason::Discarded);
    records(&trail, 2);
    wait_written(&trail);
    assert_eq!(trail.metrics().dropped.get(), 0);
    trail.close();
    let summary = verify(crashed.path(), &[keys.public], &[]);
    assert_eq!((summary.records, summary.end), (4, End::Sealed));
    assert!(
        std::fs::read_to_string(files::discarded_path(&file))
            .unwrap()
            .contains("far-away")
    );
}

/// Waits until `cond` holds, at most 10 s.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_exhausted_chain_refuses_requests_rather_than_dropping_records() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let signing = keys.audit_keys(None).signing;
    // A chain (sealed and signed by hand) that a start leaves one entry short of the last.
    let path = dir
        .path()
        .join(files::file_name(u64::MAX - 4, SystemTime::now()));
    write_entries(
        &path,
        &signing,
        u64::MAX - 4,
        Digest::GENESIS,
        &[
            Line::Open("start", None),
            Line::Checkpoint(Some(Close::Shutdown)),
        ],
    );
    let (trail, report) =
        AuditTrail::start(settings(dir.path()), keys.audit_keys(None), None).unwrap();
    assert_eq!(report.continues.map(|l| l.seq), Some(u64::MAX - 3));
    // The start's opening and checkpoint, then one record takes the last number.
    records(&trail, 1);
    wait_written(&trail);
    // From then on no request gets a place: it is refused, not served unrecorded.
    wait_for("reservations still succeed", || {
        trail.try_reserve().is_none()
    });
    assert!(trail.reserve(Duration::from_millis(50)).await.is_none());
    assert_eq!(trail.metrics().dropped.get(), 0);
    // The trail says why, for the gateway's probes and its gauge.
    assert_eq!(trail.halted(), Some(Halt::Exhausted));
    assert_eq!(trail.metrics().halted.get(), 1);
    trail.close();
    let ids = request_ids(dir.path());
    assert_eq!(ids, ["rid-0"]);
}

#[test]
fn a_failed_sync_stops_the_writer_and_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let (trail, _) = AuditTrail::start(settings(dir.path()), keys.audit_keys(None), None).unwrap();
    FAILING_SYNCS.lock().unwrap().push(dir.path().to_owned());
    records(&trail, 2);
    // The sync after the write fails: nothing more is written, and no place is given out.
    wait_for("reservations still succeed", || {
        trail.try_reserve().is_none()
    });
    // The trail says why, for the gateway's probes and its gauge.
    assert_eq!(trail.halted(), Some(Halt::SyncFailed));
    assert_eq!(trail.metrics().halted.get(), 1);
    let written = std::fs::read(&files::list(dir.path()).unwrap()[0]).unwrap();
    trail.close();
    assert_eq!(
        std::fs::read(&files::list(dir.path()).unwrap()[0]).unwrap(),
        written,
        "the file was written after its sync failed"
    );
    FAILING_SYNCS.lock().unwrap().clear();
    // The next start sets aside what was written since the last sync, records the gap,
    // and the trail verifies.
    let (trail, report) =
        AuditTrail::start(settings(dir.path()), keys.audit_keys(None), None).unwrap();
    assert_eq!(report.gap.expect("a gap").reason, GapReason::SyncFailed);
    assert_eq!(trail.halted(), None);
    assert_eq!(trail.metrics().halted.get(), 0);
    trail.close();
    let summary = verify(dir.path(), &[keys.public], &[]);
    assert_eq!((summary.end, summary.gap_count), (End::Sealed, 1));
}

/// Records one entry for each of `ids`.
fn records_named(trail: &AuditTrail, ids: &[&str]) {
    for id in ids {
        let permit = trail.try_reserve().expect("a free place");
        trail.api(&activity(id, "/v1/x"), Some(permit));
    }
}

#[test]
fn a_start_after_a_failed_sync_goes_on_only_from_what_was_synced() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let (trail, _) = AuditTrail::start(settings(dir.path()), keys.audit_keys(None), None).unwrap();
    // The start's opening and checkpoint, then three records, synced.
    records_named(&trail, &["synced-0", "synced-1", "synced-2"]);
    wait_for("the records are synced", || trail.last_seq() >= 5);
    let synced = trail.last_seq();
    // The next records are written, but their sync fails: the kernel keeps them readable
    // (here they are even on disk), yet no one may count on them.
    FAILING_SYNCS.lock().unwrap().push(dir.path().to_owned());
    records_named(&trail, &["lost-0", "lost-1"]);
    wait_for("the writer did not halt", || {
        trail.halted() == Some(Halt::SyncFailed)
    });
    trail.close();
    FAILING_SYNCS.lock().unwrap().clear();
    let file = files::list(dir.path()).unwrap().pop().unwrap();
    assert!(String::from_utf8_lossy(&std::fs::read(&file).unwrap()).contains("lost-1"));
    let note = dir.path().join(files::SYNC_FAILED);
    assert!(note.exists(), "the failed sync left no note");
    // A quick restart goes on from the last synced entry, and sets the later ones aside.
    let (trail, report) =
        AuditTrail::start(settings(dir.path()), keys.audit_keys(None), None).unwrap();
    assert_eq!(report.continues.as_ref().map(|l| l.seq), Some(synced));
    let gap = report.gap.expect("a gap");
    assert_eq!(gap.reason, GapReason::SyncFailed);
    assert_eq!((gap.file.as_path(), gap.last_seq), (file.as_path(), synced));
    assert!(gap.bytes_discarded > 0);
    let aside = std::fs::read(files::discarded_path(&file)).unwrap();
    assert!(String::from_utf8_lossy(&aside).contains("lost-0"));
    assert!(!note.exists(), "the note outlived the start's checkpoint");
    records_named(&trail, &["after-0"]);
    trail.close();
    let summary = verify(dir.path(), &[keys.public], &[]);
    assert_eq!((summary.end, summary.gap_count), (End::Sealed, 1));
    assert_eq!(summary.gaps[0].last_seq, synced);
    assert_eq!(
        request_ids(dir.path()),
        ["synced-0", "synced-1", "synced-2", "after-0"]
    );
}

#[test]
fn a_sync_that_fails_at_shutdown_leaves_its_note_and_the_next_start_goes_on_from_what_was_synced() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    // Records wait for the close: its write is the first since the start's, and its sync fails.
    let mut s = settings(dir.path());
    s.sync_interval = Duration::from_secs(60);
    let (trail, _) = AuditTrail::start(s.clone(), keys.audit_keys(None), None).unwrap();
    let synced = trail.last_seq();
    FAILING_SYNCS.lock().unwrap().push(dir.path().to_owned());
    records_named(&trail, &["lost-0", "lost-1"]);
    trail.close();
    FAILING_SYNCS.lock().unwrap().clear();
    let file = files::list(dir.path()).unwrap().pop().unwrap();
    let written = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
    assert!(written.contains("lost-1"));
    // Nothing was written after the failed sync: no shutdown checkpoint signs those records.
    assert!(!written.contains("\"shutdown\""), "{written}");
    assert!(
        dir.path().join(files::SYNC_FAILED).exists(),
        "the failed sync left no note"
    );
    // The next start sets the unsynced records aside and records the gap, however quickly
    // it comes (before the kernel has dropped the pages it could not write).
    let (trail, report) = AuditTrail::start(s, keys.audit_keys(None), None).unwrap();
    assert_eq!(report.continues.as_ref().map(|l| l.seq), Some(synced));
    assert_eq!(report.gap.expect("a gap").reason, GapReason::SyncFailed);
    records_named(&trail, &["after-0"]);
    trail.close();
    let summary = verify(dir.path(), &[keys.public], &[]);
    assert_eq!((summary.end, summary.gap_count), (End::Sealed, 1));
    assert_eq!(request_ids(dir.path()), ["after-0"]);
}

#[test]
fn a_start_after_the_newest_files_were_removed_back_to_a_rotation_records_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let mut s = settings(dir.path());
    s.rotate_bytes = 4096;
    let (trail, _) = AuditTrail::start(s.clone(), keys.audit_keys(None), None).unwrap();
    for _ in 0..6 {
        records(&trail, 5);
        wait_written(&trail);
    }
    trail.close();
    let all = files::list(dir.path()).unwrap();
    assert!(all.len() >= 3, "{all:?}");
    // The newest file removed: the one before it was closed for rotation.
    std::fs::remove_file(all.last().unwrap()).unwrap();
    let rotated = &all[all.len() - 2];
    let (trail, report) = AuditTrail::start(s, keys.audit_keys(None), None).unwrap();
    let gap = report.gap.clone().expect("a gap");
    assert_eq!(gap.reason, GapReason::SuccessorMissing);
    assert_eq!(&gap.file, rotated);
    records(&trail, 2);
    trail.close();
    let summary = verify(dir.path(), &[keys.public], &[]);
    assert_eq!(summary.end, End::Sealed);
    assert_eq!(summary.gap_count, 1);
    assert_eq!(summary.gaps[0].after, crate::verify::GapAfter::Rotation);
    assert_eq!(summary.gaps[0].last_seq, gap.last_seq);
}

/// Directories whose writer's syncs fail, for a test.
static FAILING_SYNCS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

pub(crate) fn sync_fails(dir: &Path) -> bool {
    FAILING_SYNCS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|d| d == dir)
}

/// The bytes of `file` in the page cache, by `fincore` (util-linux); `None` where it cannot
/// tell: no `fincore`, or a file system other than ext4, XFS or Btrfs (on tmpfs the pages
/// are the storage; an overlay may keep them in the file below).
fn resident_bytes(file: &Path) -> Option<u64> {
    let fs = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(file)
        .output()
        .ok()?;
    let fs = String::from_utf8_lossy(&fs.stdout);
    if !matches!(fs.trim(), "ext2/ext3" | "xfs" | "btrfs") {
        return None;
    }
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(file)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[test]
fn synced_whole_pages_leave_the_page_cache_and_the_last_partial_page_stays() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let (trail, _) = AuditTrail::start(settings(dir.path()), keys.audit_keys(None), None).unwrap();
    records(&trail, 300);
    wait_written(&trail);
    let file = files::list(dir.path()).unwrap()[0].clone();
    let len = std::fs::metadata(&file).unwrap().len();
    assert!(len > 16 * 4096, "{len} bytes");
    let Some(mut resident) = resident_bytes(&file) else {
        eprintln!(
            "skipped: the page cache of {} cannot be read here",
            file.display()
        );
        trail.close();
        return;
    };
    // Synced every 5 ms: the pages written before the last sync are let go of.
    let deadline = Instant::now() + Duration::from_secs(10);
    while resident > 4096 {
        assert!(
            Instant::now() < deadline,
            "{resident} of {len} bytes still cached after the sync"
        );
        std::thread::sleep(Duration::from_millis(10));
        resident = resident_bytes(&file).expect("fincore answered a moment ago");
    }
    trail.close();
    // The trail reads back whole, from the disk.
    let summary = verify(dir.path(), &[keys.public], &[]);
    assert_eq!(summary.records, 300);
    assert_eq!(summary.end, End::Sealed);
}
