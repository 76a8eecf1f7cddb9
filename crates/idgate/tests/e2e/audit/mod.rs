//! The audit trail end to end: `idgate audit verify` and `show` over real trails, the
//! tamper mutator, the gateway's trail (`gateway.rs`), and what `--config` reads
//! (`config.rs`).

mod config;
mod drain;
mod gateway;
mod siem;
mod tamper;

use std::path::{Path, PathBuf};
use std::time::Duration;

use idgate_audit::{AuditKeys, AuditTrail, SigningKey, WriterSettings};
use idgate_secrets::SecretRef;

use crate::support::*;
use tamper::{Expect, Rng, check_verify, copy_trail};

/// Keys made by `idgate audit keygen`, in a directory of their own.
struct TrailKeys {
    dir: tempfile::TempDir,
}

impl TrailKeys {
    fn new(encryption: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("keys");
        let mut args = vec!["audit", "keygen", "--out", out.to_str().unwrap()];
        if encryption {
            args.push("--encryption");
        }
        let (code, stdout, err) = idgate_cli(&args);
        assert_eq!(code, 0, "{stdout}{err}");
        assert!(stdout.contains("key id"), "{stdout}");
        Self { dir }
    }

    fn signing(&self) -> PathBuf {
        self.dir.path().join("keys/audit-signing.pem")
    }

    fn public(&self) -> PathBuf {
        self.dir.path().join("keys/audit-signing.pub")
    }

    fn encryption(&self) -> PathBuf {
        self.dir.path().join("keys/audit-encryption.key")
    }
}

/// Entries sealed by hand, as the format describes them, their checkpoints signed with the
/// trail's key: a trail no writer of this version would write.
struct HandSealed {
    key: SigningKey,
    seq: u64,
    prev: String,
    out: String,
}

impl HandSealed {
    /// Entries from `seq` on, after the entry whose hash is `prev`.
    fn new(keys: &TrailKeys, seq: u64, prev: &str) -> Self {
        Self {
            key: SigningKey::load(&SecretRef::File(keys.signing())).unwrap(),
            seq,
            prev: prev.to_owned(),
            out: String::new(),
        }
    }

    fn push(&mut self, kind: &str, members: &str) {
        let (line, hash) = tamper::seal(self.seq, &self.prev, kind, members);
        self.out.push_str(&line);
        (self.seq, self.prev) = (self.seq.wrapping_add(1), hash);
    }

    /// A start's opening of the file `name`, after `previous`.
    fn open(&mut self, name: &str, previous: Option<&str>) {
        let previous = previous
            .map(|p| format!(r#","previous_file":"{p}""#))
            .unwrap_or_default();
        self.push(
            "open",
            &format!(
                r#""open":{{"file":"{name}","reason":"start","time":1,"time_dt":"x"{previous}}}"#
            ),
        );
    }

    fn record(&mut self, id: &str) {
        self.push(
            "record",
            &format!(r#""class_uid":6003,"time":1,"api":{{"request":{{"uid":"{id}"}}}}"#),
        );
    }

    /// A checkpoint over the entry before it, closing its file with `close` when given.
    fn checkpoint(&mut self, close: Option<&str>) {
        use base64::Engine as _;
        let head_seq = self.seq - 1;
        let head = self.prev.clone();
        let message = format!(
            "idgate-audit-checkpoint-v1\n{head_seq}\n{head}\n1\n{}\n",
            close.unwrap_or("-")
        );
        let (sig, public) = self.key.sign(message.as_bytes()).unwrap();
        let close = close
            .map(|c| format!(r#","close":"{c}""#))
            .unwrap_or_default();
        self.push(
            "checkpoint",
            &format!(
                r#""checkpoint":{{"head_seq":{head_seq},"head":"{head}","time":1,"time_dt":"x"{close},"alg":"Ed25519","kid":"{}","sig":"{}"}}"#,
                public.kid(),
                base64::engine::general_purpose::STANDARD.encode(sig)
            ),
        );
    }

    /// The lines sealed since the last call.
    fn take(&mut self) -> String {
        std::mem::take(&mut self.out)
    }
}

#[test]
fn verify_reports_a_start_an_earlier_gateway_could_not_sign_and_a_later_checkpoint_of_its_run_did()
{
    let keys = TrailKeys::new(false);
    let dir = tempfile::tempdir().unwrap();
    let t = std::time::SystemTime::now();
    let (f1, f2) = (
        idgate_audit::files::file_name(1, t),
        idgate_audit::files::file_name(5, t),
    );
    let mut hand = HandSealed::new(&keys, 1, &"0".repeat(64));
    hand.open(&f1, None);
    hand.checkpoint(None);
    hand.record("r-1");
    hand.checkpoint(Some("shutdown"));
    std::fs::write(dir.path().join(&f1), hand.take()).unwrap();
    // The next run went on without its start's checkpoint; its scheduled one signs it.
    hand.open(&f2, Some(&f1));
    hand.record("r-2");
    hand.record("r-3");
    hand.checkpoint(None);
    hand.record("r-4");
    hand.checkpoint(Some("shutdown"));
    std::fs::write(dir.path().join(&f2), hand.take()).unwrap();
    let public = keys.public();
    let args = ["audit", "verify", "--key", public.to_str().unwrap()];
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = idgate_cli(&[&args[..], &[d]].concat());
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "warning: {}:2: entry 6: a start's opening",
            dir.path().join(&f2).display()
        )) && out.contains("checkpoint 8 of the same run signs it")
            && out.contains("sealed"),
        "{out}"
    );

    // Without that checkpoint, nothing of its own run signs it: broken.
    let text = std::fs::read_to_string(dir.path().join(&f2)).unwrap();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    std::fs::write(dir.path().join(&f2), lines[..3].concat()).unwrap();
    let (code, out, err) = idgate_cli(&[&args[..], &["--allow-open", d]].concat());
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(":2: entry 6: a start's opening is followed by this entry"),
        "{err}"
    );
}

/// A sealed trail of several files written by the trail's own writer: rotated by size,
/// checkpoints every 7 entries, 60 records.
fn written_trail(keys: &TrailKeys, dir: &Path) -> Vec<PathBuf> {
    written_trail_with(keys, dir, None)
}

/// [`written_trail`], encrypted with `encryption` when given.
fn written_trail_with(
    keys: &TrailKeys,
    dir: &Path,
    encryption: Option<idgate_audit::EncryptionKey>,
) -> Vec<PathBuf> {
    let settings = WriterSettings {
        dir: dir.to_owned(),
        rotate_bytes: 8 * 1024,
        rotate_age: Duration::from_secs(3600),
        checkpoint_every: 7,
        checkpoint_interval: Duration::from_secs(60),
        sync_interval: Duration::from_millis(2),
        queue_capacity: 64,
    };
    let signing = SigningKey::load(&SecretRef::File(keys.signing())).unwrap();
    let (trail, _) = AuditTrail::start(
        settings,
        AuditKeys {
            signing,
            encryption,
            previous: Vec::new(),
            verifying: Vec::new(),
        },
        None,
    )
    .unwrap();
    for batch in 0..6 {
        for i in 0..10 {
            let id = format!("req-{batch}-{i}");
            let activity = idgate_audit::ApiActivity {
                time: std::time::SystemTime::now(),
                request_id: &id,
                uid: None,
                peer: Some(ONBOARDING),
                caller: Some(ONBOARDING),
                auth_layers: idgate_audit::AuthLayers {
                    mtls: true,
                    ..Default::default()
                },
                remote: "127.0.0.1:40000".parse().unwrap(),
                method: "GET",
                version: "HTTP/1.1",
                route: "decision",
                path: Some("/v3/session/{session_id}/decision/"),
                template: Some("/v3/session/{session_id}/decision/"),
                status: 200,
                upstream: Some("provider"),
                upstream_status: Some(200),
                upstream_latency: None,
                credential: None,
                decision: idgate_audit::Decision::Allowed,
                latency: Duration::from_micros(900),
                bytes_in: None,
                bytes_out: Some(100),
            };
            let permit = trail.try_reserve().unwrap();
            trail.api(&activity, Some(permit));
        }
        // Let each batch be written on its own, so that files rotate in between.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while trail.metrics().depth.get() > 0 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    trail.close();
    let files = idgate_audit::files::list(dir).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    files
}

/// Runs every kind of mutation `rounds` times over copies of the trail in `files`.
fn mutate_and_verify(files: &[PathBuf], public: &Path, rounds: u64) {
    type Mutation = fn(&mut Rng, &[PathBuf]) -> Expect;
    let kinds: [(&str, Mutation); 5] = [
        ("single-byte edit", tamper::edit_byte),
        ("deleted line", tamper::delete_line),
        ("swapped lines", tamper::swap_lines),
        ("truncation", tamper::truncate),
        ("forged checkpoint", tamper::forge_checkpoint),
    ];
    for (name, mutate) in kinds {
        for round in 0..rounds {
            let seed = 0x5eed_0000 + round * 7919 + name.len() as u64;
            let mut rng = Rng::new(seed);
            let copy = tempfile::tempdir().unwrap();
            let copied = copy_trail(files, copy.path());
            let expect = mutate(&mut rng, &copied);
            check_verify(
                copy.path(),
                public,
                &expect,
                &format!("{name}, seed {seed:#x}"),
            );
        }
    }
}

#[test]
fn verify_names_the_first_bad_entry_after_each_kind_of_tampering() {
    let keys = TrailKeys::new(false);
    let dir = tempfile::tempdir().unwrap();
    let files = written_trail(&keys, dir.path());
    // The pristine trail verifies, sealed.
    let (code, out, err) = idgate_cli(&[
        "audit",
        "verify",
        "--key",
        keys.public().to_str().unwrap(),
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("60 records") && out.contains("sealed"),
        "{out}"
    );
    mutate_and_verify(&files, &keys.public(), 20);
}

#[test]
fn verify_needs_the_right_key_and_explains_usage_problems() {
    let keys = TrailKeys::new(false);
    let other = TrailKeys::new(false);
    let dir = tempfile::tempdir().unwrap();
    written_trail(&keys, dir.path());
    let d = dir.path().to_str().unwrap();
    let (code, _, err) = idgate_cli(&[
        "audit",
        "verify",
        "--key",
        other.public().to_str().unwrap(),
        d,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not among the keys given"), "{err}");
    let (code, _, err) = idgate_cli(&["audit", "verify", d]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = idgate_cli(&[
        "audit",
        "verify",
        "--key",
        keys.public().to_str().unwrap(),
        "/nonexistent/trail",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/trail"), "{err}");
    // One file of the middle: verified, and open (the chain goes on elsewhere).
    let files = idgate_audit::files::list(dir.path()).unwrap();
    let (code, out, _) = idgate_cli(&[
        "audit",
        "verify",
        "--key",
        keys.public().to_str().unwrap(),
        files[1].to_str().unwrap(),
    ]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("closed for rotation"), "{out}");
    let (code, _, _) = idgate_cli(&[
        "audit",
        "verify",
        "--allow-open",
        "--key",
        keys.public().to_str().unwrap(),
        files[1].to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
}

#[test]
fn show_filters_records_and_prints_a_table() {
    let keys = TrailKeys::new(false);
    let dir = tempfile::tempdir().unwrap();
    written_trail(&keys, dir.path());
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = idgate_cli(&["audit", "show", d]);
    assert_eq!(code, 0, "{err}");
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 60);
    assert!(records.iter().all(|r| r["entry"] == "record"));
    let (_, out, _) = idgate_cli(&["audit", "show", "--status", "4xx", d]);
    assert_eq!(out.lines().count(), 0);
    let (_, out, _) = idgate_cli(&[
        "audit", "show", "--caller", ONBOARDING, "--route", "decision", d,
    ]);
    assert_eq!(out.lines().count(), 60);
    let (_, out, _) = idgate_cli(&["audit", "show", "--since", "2999-01-01", d]);
    assert_eq!(out.lines().count(), 0);
    let (code, out, _) = idgate_cli(&["audit", "show", "--all", "--format", "table", d]);
    assert_eq!(code, 0);
    assert!(out.starts_with("TIME"), "{out}");
    assert!(
        out.contains("checkpoint") && out.contains("req-5-9"),
        "{out}"
    );
    let (code, _, err) = idgate_cli(&["audit", "show", "--since", "yesterday", d]);
    assert_eq!(code, 2);
    assert!(err.contains("--since"), "{err}");
}

/// A trail of one file written by hand, as anyone who can write the directory could: an
/// opening (for a rotation, as if the files before it had been removed: a start's would be
/// named for want of its checkpoint) and `records` records, chained, and no checkpoint.
fn fabricated_trail(dir: &Path, records: u64) -> PathBuf {
    let file = dir.join("audit-00000000000000000001-20261123T164548Z.jsonl");
    let (mut text, mut prev) = tamper::seal(
        1,
        &"0".repeat(64),
        "open",
        r#""open":{"file":"audit-00000000000000000001-20261123T164548Z.jsonl","reason":"rotate","time":1795452348053}"#,
    );
    for seq in 2..=records + 1 {
        let (line, hash) = tamper::seal(
            seq,
            &prev,
            "record",
            r#""class_uid":6003,"time":1795452348053,"status_code":"200""#,
        );
        text.push_str(&line);
        prev = hash;
    }
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn allow_open_never_accepts_a_trail_no_checkpoint_signs() {
    let keys = TrailKeys::new(false);
    let dir = tempfile::tempdir().unwrap();
    let file = fabricated_trail(dir.path(), 4998);
    let public = keys.public();
    let (d, k) = (dir.path().to_str().unwrap(), public.to_str().unwrap());
    let (code, out, err) = idgate_cli(&["audit", "verify", "--allow-open", "--key", k, d]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("4999 entries") && out.contains("unsigned: no checkpoint signs"),
        "{out}"
    );
    // Held to the writer's schedule, the 1001st unsigned entry is named.
    let (code, out, err) = idgate_cli(&[
        "audit",
        "verify",
        "--allow-open",
        "--checkpoint-every",
        "1000",
        "--key",
        k,
        d,
    ]);
    assert_eq!(code, 1, "{out}{err}");
    let at = format!("{}:1001: entry 1001:", file.display());
    assert!(
        err.contains(&at) && err.contains("checkpoint_every (1000)"),
        "{err}"
    );
}

#[test]
fn allow_open_never_accepts_a_trail_with_no_entries() {
    let keys = TrailKeys::new(false);
    let public = keys.public();
    let k = public.to_str().unwrap();
    // One empty file, and a directory of them.
    let dir = tempfile::tempdir().unwrap();
    let one = dir
        .path()
        .join("audit-00000000000000000001-20261123T164548Z.jsonl");
    std::fs::write(&one, "").unwrap();
    let (code, out, err) = idgate_cli(&[
        "audit",
        "verify",
        "--allow-open",
        "--key",
        k,
        one.to_str().unwrap(),
    ]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("unsigned: the files hold no entry"), "{out}");
    for seq in [20, 400] {
        let f = dir
            .path()
            .join(format!("audit-{seq:020}-20261123T164548Z.jsonl"));
        std::fs::write(f, "").unwrap();
    }
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = idgate_cli(&["audit", "verify", "--allow-open", "--key", k, d]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("3 files, 0 entries"), "{out}");
    // Held to a schedule, and anchored to nothing, it is still not accepted.
    let (code, out, err) = idgate_cli(&[
        "audit",
        "verify",
        "--allow-open",
        "--checkpoint-every",
        "10",
        "--checkpoint-interval",
        "10s",
        "--key",
        k,
        d,
    ]);
    assert_eq!(code, 3, "{out}{err}");
}

/// Cuts the closing checkpoint off the newest file and leaves its first `keep` bytes: a
/// batch written with one `write`, as a reader of the live trail can see it part-way.
fn leave_a_partial_last_line(file: &Path, keep: usize) -> usize {
    let mut lines = tamper::lines(file);
    let last = lines.pop().unwrap();
    let whole = lines.len();
    lines.push(last[..keep].to_vec());
    std::fs::write(file, lines.concat()).unwrap();
    whole + 1
}

#[test]
fn allow_open_treats_a_partial_last_line_of_the_last_file_as_open() {
    let keys = TrailKeys::new(false);
    let dir = tempfile::tempdir().unwrap();
    let files = written_trail(&keys, dir.path());
    let public = keys.public();
    let (d, k) = (dir.path().to_str().unwrap(), public.to_str().unwrap());
    let last = files.last().unwrap();
    let line = leave_a_partial_last_line(last, 40);
    let at = format!("open: {}:{line}:", last.display());
    let (code, out, err) = idgate_cli(&["audit", "verify", "--allow-open", "--key", k, d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&at) && out.contains("the line is incomplete (40 bytes"),
        "{out}"
    );
    // Without --allow-open, an end that is not closed.
    let (code, out, err) = idgate_cli(&["audit", "verify", "--key", k, d]);
    assert_eq!(code, 3, "{out}{err}");
    // Held to the writer's schedule, as a live trail is verified.
    let (code, out, err) = idgate_cli(&[
        "audit",
        "verify",
        "--allow-open",
        "--checkpoint-every",
        "7",
        "--checkpoint-interval",
        "60s",
        "--key",
        k,
        d,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    // `show` leaves that line out with a note, and nothing is wrong.
    let (code, out, err) = idgate_cli(&["audit", "show", d]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("{}:{line}:", last.display()))
            && err.contains("still being written")
            && !err.contains("skipped"),
        "{err}"
    );
    assert_eq!(out.lines().count(), 60, "{out}");

    // The same in a file that more of the trail follows: broken there.
    let middle = &files[1];
    let line = leave_a_partial_last_line(middle, 40);
    let (code, _, err) = idgate_cli(&["audit", "show", d]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("warning: {}:{line}: skipped", middle.display())),
        "{err}"
    );
    let (code, out, err) = idgate_cli(&["audit", "verify", "--allow-open", "--key", k, d]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("{}:{line}:", middle.display()))
            && err.contains("the line is incomplete"),
        "{err}"
    );
    // And the newest file given alone after it.
    let (code, _, err) = idgate_cli(&[
        "audit",
        "verify",
        "--allow-open",
        "--key",
        k,
        middle.to_str().unwrap(),
        last.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn verify_with_the_config_holds_the_unsigned_end_to_its_checkpoint_schedule() {
    let pki = Pki::default_pki();
    let keys = TrailKeys::new(false);
    let trail = tempfile::tempdir().unwrap();
    let files = written_trail(&keys, trail.path());
    // The closing checkpoint cut off, and records added after the last checkpoint: more
    // than the configuration's checkpoint_every (50) allows.
    let last = files.last().unwrap();
    let mut lines = tamper::lines(last);
    lines.pop();
    let text = String::from_utf8(lines.last().unwrap().clone()).unwrap();
    let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    let (mut seq, mut prev) = (
        v["seq"].as_u64().unwrap(),
        v["hash"].as_str().unwrap().to_owned(),
    );
    let kept = lines.len();
    // In time: the last checkpoint's, so that only their number is past the schedule.
    let checkpoint_time = files[..files.len() - 1]
        .iter()
        .flat_map(|f| tamper::lines(f))
        .chain(lines.iter().cloned())
        .rev()
        .map(|l| serde_json::from_slice::<serde_json::Value>(&l).unwrap())
        .find_map(|e| e["checkpoint"]["time"].as_u64())
        .unwrap();
    let record = format!(r#""class_uid":6003,"time":{checkpoint_time}"#);
    for _ in 0..60 {
        seq += 1;
        let (line, hash) = tamper::seal(seq, &prev, "record", &record);
        lines.push(line.into_bytes());
        prev = hash;
    }
    std::fs::write(last, lines.concat()).unwrap();
    let config = OneRoute::kyc_decision("https://127.0.0.1:9")
        .config(&pki)
        .section("audit", gateway::audit_section(&keys, trail.path(), &[]));
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("idgate.toml");
    std::fs::write(&conf, config.to_toml()).unwrap();
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["audit", "verify", "--allow-open", "--config"])
        .arg(&conf)
        .env("TEST_PROVIDER_KEY", "unused");
    let (code, out, err) = run_bounded(&mut cmd, Duration::from_secs(30));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("{}:", last.display())) && err.contains("checkpoint_every (50)"),
        "{err}"
    );
    // The unsigned entries before the added ones are within the schedule: the first named
    // is past line `kept`.
    let line: usize = err
        .split(&format!("{}:", last.display()))
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(line > kept && line <= kept + 51, "{line} {err}");
    // Without a schedule, the same trail is only open, and says it was not checked.
    let (code, out, _) = idgate_cli(&[
        "audit",
        "verify",
        "--allow-open",
        "--key",
        keys.public().to_str().unwrap(),
        trail.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("unchecked:"), "{out}");
}

#[test]
fn verify_expect_head_finds_a_trail_cut_back_to_an_earlier_shutdown() {
    let keys = TrailKeys::new(false);
    let dir = tempfile::tempdir().unwrap();
    let first_run = written_trail(&keys, dir.path());
    // A second run goes on in the same directory.
    let settings = WriterSettings {
        dir: dir.path().to_owned(),
        rotate_bytes: 64 << 20,
        rotate_age: Duration::from_secs(3600),
        checkpoint_every: 7,
        checkpoint_interval: Duration::from_secs(60),
        sync_interval: Duration::from_millis(2),
        queue_capacity: 64,
    };
    let signing = SigningKey::load(&SecretRef::File(keys.signing())).unwrap();
    let keys_for = |signing| AuditKeys {
        signing,
        encryption: None,
        previous: Vec::new(),
        verifying: Vec::new(),
    };
    let (trail, _) = AuditTrail::start(settings, keys_for(signing), None).unwrap();
    trail.close();
    let public = keys.public();
    let (d, k) = (dir.path().to_str().unwrap(), public.to_str().unwrap());
    // The head a SIEM would have received: the second run's closing checkpoint.
    let (code, out, err) = idgate_cli(&["audit", "verify", "--key", k, d]);
    assert_eq!(code, 0, "{out}{err}");
    let anchor = out
        .lines()
        .find_map(|l| l.split("--expect-head ").nth(1))
        .map(|a| a.trim_end_matches(')').to_owned())
        .unwrap_or_else(|| panic!("no anchor: {out}"));
    let (code, out, err) =
        idgate_cli(&["audit", "verify", "--expect-head", &anchor, "--key", k, d]);
    assert_eq!(code, 0, "{out}{err}");

    // Someone removes the second run's file: from the directory alone, the trail is whole.
    let all = idgate_audit::files::list(dir.path()).unwrap();
    assert_eq!(all.len(), first_run.len() + 1);
    std::fs::remove_file(all.last().unwrap()).unwrap();
    let (code, out, err) = idgate_cli(&["audit", "verify", "--key", k, d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("sealed"), "{out}");
    // Against the anchor, it ends too soon.
    let (code, out, err) =
        idgate_cli(&["audit", "verify", "--expect-head", &anchor, "--key", k, d]);
    assert_eq!(code, 1, "{out}{err}");
    let seq = anchor.split(':').next().unwrap();
    assert!(
        err.contains(&format!("before entry {seq}")) && err.contains("--expect-head"),
        "{err}"
    );
    // An anchor whose hash the trail does not have names its entry.
    let wrong = format!("3:{}", "ab".repeat(32));
    let (code, _, err) = idgate_cli(&["audit", "verify", "--expect-head", &wrong, "--key", k, d]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}:3: entry 3: its hash is not",
            first_run[0].display()
        )),
        "{err}"
    );
    let (code, _, err) = idgate_cli(&["audit", "verify", "--expect-head", "x:y", "--key", k, d]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn verify_reports_the_files_missing_after_a_rotation_as_a_gap() {
    let keys = TrailKeys::new(false);
    let dir = tempfile::tempdir().unwrap();
    let files = written_trail(&keys, dir.path());
    // The newest file removed, back to one closed for rotation, and the gateway restarted.
    std::fs::remove_file(files.last().unwrap()).unwrap();
    let settings = WriterSettings {
        dir: dir.path().to_owned(),
        rotate_bytes: 64 << 20,
        rotate_age: Duration::from_secs(3600),
        checkpoint_every: 7,
        checkpoint_interval: Duration::from_secs(60),
        sync_interval: Duration::from_millis(2),
        queue_capacity: 64,
    };
    let signing = SigningKey::load(&SecretRef::File(keys.signing())).unwrap();
    let (trail, report) = AuditTrail::start(
        settings,
        AuditKeys {
            signing,
            encryption: None,
            previous: Vec::new(),
            verifying: Vec::new(),
        },
        None,
    )
    .unwrap();
    assert!(report.gap.is_some());
    trail.close();
    let (code, out, err) = idgate_cli(&[
        "audit",
        "verify",
        "--key",
        keys.public().to_str().unwrap(),
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("gap: ") && out.contains("closed for rotation") && out.contains("is missing"),
        "{out}"
    );
}

/// Whether `s` holds a character a terminal would act on rather than show.
fn acts_on_a_terminal(s: &str) -> bool {
    s.chars().any(|c| {
        c.is_control() && c != '\n'
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    })
}

#[test]
fn verify_and_show_print_no_control_characters_from_the_trail() {
    let keys = TrailKeys::new(false);
    let dir = tempfile::tempdir().unwrap();
    let files = written_trail(&keys, dir.path());
    // The closing checkpoint's key id, made to erase the line and print a success, sealed
    // again with its hash: a failed verification that would look like a good one.
    let last = files.last().unwrap();
    let data = std::fs::read_to_string(last).unwrap();
    let (before, closing) = data.trim_end_matches('\n').rsplit_once('\n').unwrap();
    let kid = serde_json::from_str::<serde_json::Value>(closing).unwrap()["checkpoint"]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = closing[..closing.len() - 75]
        .replace(&kid, "\\r\\u001b[2Kverified: 3 files \u{202e}\u{9b}");
    let hash = idgate_audit::Digest::of(body.as_bytes()).hex();
    std::fs::write(last, format!("{before}\n{body},\"hash\":\"{hash}\"}}\n")).unwrap();
    let (d, k) = (dir.path().to_str().unwrap(), keys.public());
    let (code, out, err) = idgate_cli(&["audit", "verify", "--key", k.to_str().unwrap(), d]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        !acts_on_a_terminal(&out) && !acts_on_a_terminal(&err),
        "{err:?}"
    );
    assert!(err.contains("\\u{001b}[2Kverified"), "{err}");
    // `show` prints the entry as JSON that means the same, and nothing a terminal acts on.
    let (code, out, err) = idgate_cli(&["audit", "show", "--all", d]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !acts_on_a_terminal(&out) && !acts_on_a_terminal(&err),
        "{out:?}"
    );
    let shown: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert!(
        shown["checkpoint"]["kid"]
            .as_str()
            .unwrap()
            .starts_with("\r\u{1b}[2Kverified"),
        "{shown}"
    );
}
