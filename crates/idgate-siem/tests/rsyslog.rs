//! The syslog sink against a real collector: rsyslog (imtcp with TLS through GnuTLS) on
//! loopback, writing each message's parsed RFC 5424 fields to a file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use idgate_siem::Exporter;
use support::rsyslog::Rsyslog;
use support::{Pki, distinct_in_order, event, siem, syslog_sink, wait_until};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn rsyslog_parses_every_header_field_and_receives_events_in_order() {
    let pki = Pki::new();
    let Some(rs) = Rsyslog::start(&pki, "", false) else {
        return;
    };
    let exporter = Exporter::start(&siem(vec![syslog_sink(
        "soc",
        rs.port,
        Some(pki.sink_tls(false)),
        10_000,
    )]))
    .unwrap();
    for i in 0..500 {
        exporter.export(event(i).as_bytes());
    }
    assert!(
        wait_until(WAIT, || rs.messages().len() >= 500),
        "{:?}",
        exporter.stats("soc")
    );
    let messages = rs.messages();
    assert_eq!(rs.seqs(), (0..500).collect::<Vec<_>>());
    let pid = std::process::id().to_string();
    for (i, m) in messages.iter().enumerate() {
        // local0 (16): notice (5) for a denial, info (6) otherwise.
        assert_eq!(
            m.pri,
            if i.is_multiple_of(3) {
                16 * 8 + 5
            } else {
                16 * 8 + 6
            }
        );
        assert_eq!(
            (m.hostname.as_str(), m.app_name.as_str(), m.procid.as_str()),
            ("gw-test", "idgate", pid.as_str())
        );
        assert_eq!(
            (m.msgid.as_str(), m.structured_data.as_str()),
            ("audit", "-")
        );
        assert!(
            m.timestamp.ends_with('Z') || m.timestamp.ends_with("+00:00"),
            "{}",
            m.timestamp
        );
        assert_eq!(
            m.timestamp.len(),
            "2026-03-01T12:34:56.123456Z".len(),
            "{}",
            m.timestamp
        );
        assert_eq!(m.msg, event(i));
    }
    assert_eq!(exporter.shutdown(), 0);
}

#[test]
fn rsyslog_down_at_start_then_up_receives_the_buffered_events() {
    let pki = Pki::new();
    let Some(mut rs) = Rsyslog::start(&pki, "", false) else {
        return;
    };
    rs.kill();
    let exporter = Exporter::start(&siem(vec![syslog_sink(
        "soc",
        rs.port,
        Some(pki.sink_tls(false)),
        1000,
    )]))
    .unwrap();
    for i in 0..300 {
        exporter.export(event(i).as_bytes());
    }
    assert_eq!(exporter.stats("soc").unwrap().buffered_events, 300);
    rs.restart();
    assert!(wait_until(WAIT, || rs.messages().len() >= 300));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rs.seqs(), (0..300).collect::<Vec<_>>());
}

#[test]
fn rsyslog_killed_mid_stream_then_restarted_loses_nothing_the_buffer_kept() {
    let pki = Pki::new();
    let Some(mut rs) = Rsyslog::start(&pki, "", false) else {
        return;
    };
    let exporter = Exporter::start(&siem(vec![syslog_sink(
        "soc",
        rs.port,
        Some(pki.sink_tls(false)),
        300,
    )]))
    .unwrap();
    // The stream is under way before rsyslog dies: the sink is connected (a new connection
    // is watched for a moment before the first write, for a collector that refuses it).
    assert!(wait_until(WAIT, || exporter
        .stats("soc")
        .unwrap()
        .connected));
    let total = 2000;
    for i in 0..total {
        if i == 200 {
            // SIGKILL while events are still coming: its kernel resets the connection,
            // and the frames of the replay window go again to the next rsyslog.
            rs.kill();
        }
        exporter.export(event(i).as_bytes());
        if i < 200 && i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(wait_until(WAIT, || !exporter
        .stats("soc")
        .unwrap()
        .connected));
    let dropped = exporter.stats("soc").unwrap().dropped as usize;
    assert!(dropped > 0, "{:?}", exporter.stats("soc"));
    rs.restart();
    let kept = total - dropped;
    assert!(
        wait_until(WAIT, || distinct_in_order(&rs.seqs()).len() >= kept),
        "{} of {kept}: {:?}",
        distinct_in_order(&rs.seqs()).len(),
        exporter.stats("soc")
    );
    let distinct = distinct_in_order(&rs.seqs());
    assert_eq!(distinct.len(), kept);
    assert_eq!(distinct[..200], (0..200).collect::<Vec<_>>()[..]);
    let stats = exporter.stats("soc").unwrap();
    assert!(stats.reconnects >= 1, "{stats:?}");
}

#[test]
fn rsyslog_with_a_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let Some(rs) = Rsyslog::start(&pki, "other-", false) else {
        return;
    };
    let exporter = Exporter::start(&siem(vec![syslog_sink(
        "soc",
        rs.port,
        Some(pki.sink_tls(false)),
        100,
    )]))
    .unwrap();
    for i in 0..5 {
        exporter.export(event(i).as_bytes());
    }
    std::thread::sleep(Duration::from_secs(1));
    let stats = exporter.stats("soc").unwrap();
    assert_eq!((stats.sent, stats.buffered_events), (0, 5));
    assert!(!stats.connected);
    assert!(rs.messages().is_empty());
}

#[test]
fn rsyslog_requiring_client_certificates_takes_the_gateways_and_no_other() {
    let pki = Pki::new();
    let Some(rs) = Rsyslog::start(&pki, "", true) else {
        return;
    };
    let with = syslog_sink("with", rs.port, Some(pki.sink_tls(true)), 100);
    let mut without = syslog_sink("without", rs.port, Some(pki.sink_tls(false)), 100);
    without.key = "siem.sinks[1]".to_owned();
    let exporter = Exporter::start(&siem(vec![with, without])).unwrap();
    for i in 0..50 {
        exporter.export(event(i).as_bytes());
    }
    assert!(wait_until(WAIT, || rs.messages().len() >= 50));
    // rsyslog may have written the events before the sink counted them sent.
    assert!(
        wait_until(WAIT, || exporter.stats("with").unwrap().sent >= 50),
        "{:?}",
        exporter.stats("with")
    );
    std::thread::sleep(Duration::from_secs(1));
    // One copy of each: the sink without a certificate got nothing through.
    assert_eq!(rs.seqs(), (0..50).collect::<Vec<_>>());
    assert_eq!(exporter.stats("with").unwrap().sent, 50);
}
