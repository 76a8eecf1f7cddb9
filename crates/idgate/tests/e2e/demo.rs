//! `idgate demo`: the one-command walk-through works end to end and explains itself.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

#[test]
fn demo_runs_the_round_trip_and_explains_each_step() {
    let (code, out, err) = run_bounded(
        Command::new(bin()).args(["demo", "--no-wait"]),
        Duration::from_secs(90),
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    for expected in [
        "Creating a development PKI",
        "SoftHSM2 found",
        "POST /v3/session/            → 201",
        "/decision/ → 200",
        "decision status \"Approved\" with 1 ID verification(s)",
        "/decision/ → 403",
        "Caller not allowed",
        "Not there",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    // The demo cleans up after itself.
    let dir = out
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().find(|w| w.contains("idgate-demo-")))
        .map(|w| w.trim_end_matches(['.', ','].as_ref()).to_owned())
        .expect("the demo names its directory");
    assert!(
        !std::path::Path::new(&dir).exists(),
        "{dir} was left behind"
    );
}
