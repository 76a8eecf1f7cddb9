//! The JSON-lines sinks: a file (appending, following a rotation by an outside tool) and
//! standard output (read from a child process).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use idgate_config::{BufferLimits, OnFull, SiemSink, SinkKind};
use idgate_siem::Exporter;
use support::{event, read_lines, seq, siem, wait_until};

const WAIT: Duration = Duration::from_secs(10);

fn sink(name: &str, kind: SinkKind) -> SiemSink {
    SiemSink {
        name: name.to_owned(),
        key: "siem.sinks[0]".to_owned(),
        buffer: BufferLimits {
            events: 10_000,
            bytes: 16 << 20,
            on_full: OnFull::DropNewest,
        },
        kind,
    }
}

#[test]
fn a_file_sink_appends_lines_in_order_and_follows_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    std::fs::write(&path, "{\"earlier\":true}\n").unwrap();
    let exporter = Exporter::start(&siem(vec![sink(
        "file",
        SinkKind::File { path: path.clone() },
    )]))
    .unwrap();
    for i in 0..500 {
        exporter.export(event(i).as_bytes());
    }
    assert!(wait_until(WAIT, || read_lines(&path).len() >= 501));
    let lines = read_lines(&path);
    assert_eq!(lines[0], "{\"earlier\":true}", "appended, not truncated");
    assert_eq!(lines[1..], (0..500).map(event).collect::<Vec<_>>()[..]);

    // logrotate's way: rename, and the writer is expected to start a new file.
    let rotated = dir.path().join("audit.jsonl.1");
    std::fs::rename(&path, &rotated).unwrap();
    for i in 500..800 {
        exporter.export(event(i).as_bytes());
    }
    assert!(wait_until(WAIT, || read_lines(&path).len() >= 300));
    assert_eq!(exporter.shutdown(), 0);
    let before: Vec<usize> = read_lines(&rotated)[1..].iter().map(|l| seq(l)).collect();
    let after: Vec<usize> = read_lines(&path).iter().map(|l| seq(l)).collect();
    // Nothing lost, nothing twice, no line split across the two files.
    let all: Vec<usize> = before.iter().chain(&after).copied().collect();
    assert_eq!(all, (0..800).collect::<Vec<_>>());
    assert!(
        after.len() >= 300 - 1,
        "the new file took the events after the rename"
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode & 0o007,
        0,
        "audit lines are not world-readable: {mode:o}"
    );
}

/// Run by [`a_file_sink_created_under_a_strict_umask_is_readable_by_its_group`] in a
/// process of its own, whose umask is 077 (systemd's `UMask=0077`, the shipped unit's): the
/// umask is the whole process's.
#[test]
fn umask_child() {
    let Some(path) = std::env::var_os("IDGATE_SIEM_UMASK_CHILD") else {
        return;
    };
    let exporter = Exporter::start(&siem(vec![sink(
        "file",
        SinkKind::File {
            path: std::path::PathBuf::from(path),
        },
    )]))
    .unwrap();
    exporter.export(event(0).as_bytes());
    assert_eq!(exporter.shutdown(), 0);
}

#[test]
fn a_file_sink_created_under_a_strict_umask_is_readable_by_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let out = Command::new("sh")
        .arg("-c")
        .arg("umask 077 && exec \"$0\" umask_child --exact --nocapture --test-threads=1")
        .arg(std::env::current_exe().unwrap())
        .env("IDGATE_SIEM_UMASK_CHILD", &path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read_lines(&path), vec![event(0)]);
    // The log shipper reads the file as a member of the gateway's group.
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "{mode:o}");

    // A file the operator made stricter keeps its mode when the sink opens it again.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["umask_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("IDGATE_SIEM_UMASK_CHILD", &path)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(read_lines(&path).len(), 2);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
}

#[test]
fn a_file_sink_that_cannot_open_its_file_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("audit.jsonl");
    let err = Exporter::start(&siem(vec![sink("file", SinkKind::File { path })])).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("siem.sinks[0].path: "), "{text}");
    assert!(text.contains("no-such-dir/audit.jsonl"), "{text}");
}

/// Run as a child by the test below (with `IDGATE_SIEM_STDOUT_CHILD` set): exports to
/// standard output and exits. Does nothing in a normal run.
#[test]
fn stdout_child() {
    if std::env::var_os("IDGATE_SIEM_STDOUT_CHILD").is_none() {
        return;
    }
    let exporter = Exporter::start(&siem(vec![sink("stdout", SinkKind::Stdout)])).unwrap();
    for i in 0..200 {
        exporter.export(event(i).as_bytes());
    }
    assert_eq!(exporter.shutdown(), 0);
}

#[test]
fn a_stdout_sink_writes_one_line_per_event_and_flushes_at_shutdown() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["stdout_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("IDGATE_SIEM_STDOUT_CHILD", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    // The test harness prints its own words around ours ("test stdout_child ... " ends
    // without a line break, before the first event).
    let events: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.find("{\"seq\":").map(|at| &l[at..]))
        .collect();
    assert_eq!(events, (0..200).map(event).collect::<Vec<_>>());
}
