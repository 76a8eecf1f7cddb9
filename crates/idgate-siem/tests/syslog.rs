//! The syslog sink against a strict in-process collector over real TLS sockets: framing and
//! headers, buffering while the collector is away, reconnection and replay, drops beyond
//! the buffer, TLS refusals, mutual TLS, plaintext only when asked, shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use idgate_siem::Exporter;
use support::{
    Outcome, Pki, Receiver, api_record, connection_record, distinct_in_order, event, free_port,
    siem, syslog_sink, wait_until,
};

const WAIT: Duration = Duration::from_secs(15);

#[test]
fn events_arrive_in_order_as_strict_rfc5424_frames() {
    let pki = Pki::new();
    let rx = Receiver::start(0, Some(pki.server_config("", false)));
    let mut sink = syslog_sink("soc", rx.port, Some(pki.sink_tls(false)), 10_000);
    if let idgate_config::SinkKind::Syslog(s) = &mut sink.kind {
        s.sd_id = Some("idgate@32473".to_owned());
        s.facility = idgate_config::Facility::from_name("audit").unwrap();
    }
    let exporter = Exporter::start(&siem(vec![sink])).unwrap();
    let year_before = time::OffsetDateTime::now_utc().year().to_string();
    for i in 0..300 {
        exporter.export(event(i).as_bytes());
    }
    assert!(
        wait_until(WAIT, || rx.messages().len() >= 300),
        "{:?}",
        exporter.stats("soc")
    );
    assert_eq!(rx.errors(), Vec::<String>::new());
    let messages = rx.messages();
    assert_eq!(rx.seqs(), (0..300).collect::<Vec<_>>());
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m.msg, event(i), "MSG is the event as given, no BOM");
        assert!(!m.bom);
        assert_eq!(m.facility, 13);
        // Denied decisions are notices, the others informational.
        assert_eq!(m.severity, if i.is_multiple_of(3) { 5 } else { 6 });
        assert_eq!(
            (m.hostname.as_str(), m.app_name.as_str(), m.msgid.as_str()),
            ("gw-test", "idgate", "audit")
        );
        assert_eq!(m.procid, std::process::id().to_string());
        let (decision, status) = if i.is_multiple_of(3) {
            Outcome::Denied
        } else {
            Outcome::Allowed
        }
        .decision_and_status();
        assert_eq!(
            m.sd,
            [(
                "idgate@32473".to_owned(),
                vec![
                    ("class_uid".to_owned(), "6003".to_owned()),
                    ("decision".to_owned(), decision.to_owned()),
                    ("status".to_owned(), status.to_string()),
                ]
            )]
        );
    }
    // The timestamp is the export time, in UTC, with microseconds.
    let t = &messages[0].timestamp;
    assert!(
        t.ends_with('Z') && t.len() == "2026-03-01T12:34:56.123456Z".len(),
        "{t}"
    );
    // The export may be on either side of a new year's midnight.
    let year = time::OffsetDateTime::now_utc().year().to_string();
    assert!(t.starts_with(&year) || t.starts_with(&year_before), "{t}");
    // The collector may have read the last frames before the sink counted them sent.
    assert!(
        wait_until(WAIT, || exporter.stats("soc").unwrap().sent >= 300),
        "{:?}",
        exporter.stats("soc")
    );
    let stats = exporter.stats("soc").unwrap();
    assert_eq!((stats.sent, stats.dropped, stats.reconnects), (300, 0, 0));
    assert!(stats.connected);
    assert_eq!(exporter.shutdown(), 0);
}

#[test]
fn a_collector_down_at_start_gets_the_buffered_events_once_it_is_up() {
    let pki = Pki::new();
    let port = free_port();
    let sink = syslog_sink("soc", port, Some(pki.sink_tls(false)), 100);
    let exporter = Exporter::start(&siem(vec![sink])).unwrap();
    for i in 0..150 {
        exporter.export(event(i).as_bytes());
    }
    let stats = exporter.stats("soc").unwrap();
    assert_eq!(
        (stats.buffered_events, stats.dropped, stats.sent),
        (100, 50, 0)
    );
    assert!(!stats.connected);

    let rx = Receiver::start(port, Some(pki.server_config("", false)));
    assert!(wait_until(WAIT, || rx.messages().len() >= 100));
    // The collector may have read the frames before the sink counted them sent.
    assert!(
        wait_until(WAIT, || exporter.stats("soc").unwrap().sent >= 100),
        "{:?}",
        exporter.stats("soc")
    );
    // Time for any frame sent twice to arrive as well, before "once each" is judged.
    std::thread::sleep(Duration::from_millis(200));
    // The buffer kept the oldest 100 (drop newest), and they arrive in order, once each.
    assert_eq!(rx.seqs(), (0..100).collect::<Vec<_>>());
    assert_eq!(rx.errors(), Vec::<String>::new());
    let stats = exporter.stats("soc").unwrap();
    assert_eq!(
        (stats.sent, stats.dropped, stats.buffered_events),
        (100, 50, 0)
    );
    assert_eq!(
        stats.reconnects, 0,
        "the first connection is not a reconnection"
    );
}

#[test]
fn a_collector_killed_mid_stream_gets_every_kept_event_after_it_comes_back() {
    let pki = Pki::new();
    let mut rx = Receiver::start(0, Some(pki.server_config("", false)));
    let sink = syslog_sink("soc", rx.port, Some(pki.sink_tls(false)), 200);
    let exporter = Exporter::start(&siem(vec![sink])).unwrap();
    let total = 1000;
    for i in 0..total {
        if i == 100 {
            assert!(wait_until(WAIT, || rx.messages().len() >= 100));
            rx.kill();
        }
        if i == 150 {
            // The sink has noticed: it is reconnecting, and buffers meanwhile.
            assert!(wait_until(WAIT, || !exporter
                .stats("soc")
                .unwrap()
                .connected));
        }
        exporter.export(event(i).as_bytes());
    }
    let stats = exporter.stats("soc").unwrap();
    assert!(
        stats.dropped > 0,
        "more than the buffer holds was sent: {stats:?}"
    );
    rx.restart();
    assert!(wait_until(WAIT, || exporter
        .stats("soc")
        .unwrap()
        .buffered_events
        == 0));
    let kept = total - exporter.stats("soc").unwrap().dropped as usize;
    assert!(wait_until(WAIT, || distinct_in_order(&rx.seqs()).len() >= kept));
    // Every event the buffer kept arrived (frames the dead collector may have lost were
    // sent again, so some arrive twice), first occurrences in order, the dropped ones
    // being the newest while it was away.
    let distinct = distinct_in_order(&rx.seqs());
    assert_eq!(distinct.len(), kept, "{:?}", exporter.stats("soc"));
    assert_eq!(distinct[..100], (0..100).collect::<Vec<_>>()[..]);
    assert_eq!(
        rx.errors(),
        Vec::<String>::new(),
        "no half frame ever reached a collector"
    );
    // Frames the collector's host had acknowledged before it died are not sent again; the
    // rest of the replay window is (what `resent` counts).
    let stats = exporter.stats("soc").unwrap();
    assert_eq!(stats.reconnects, 1);
    assert_eq!(exporter.shutdown(), 0);
}

#[test]
fn a_collector_whose_certificate_another_ca_signed_is_refused_without_plaintext_fallback() {
    let pki = Pki::new();
    let rx = Receiver::start(0, Some(pki.server_config("other-", false)));
    let sink = syslog_sink("soc", rx.port, Some(pki.sink_tls(false)), 100);
    let exporter = Exporter::start(&siem(vec![sink])).unwrap();
    exporter.export(br#"{"class_uid":6003,"marker":"must-not-leak"}"#);
    assert!(
        wait_until(WAIT, || rx.handshakes_failed() >= 2),
        "it keeps trying, with TLS"
    );
    let stats = exporter.stats("soc").unwrap();
    assert_eq!((stats.sent, stats.buffered_events), (0, 1));
    assert!(!stats.connected);
    assert!(rx.messages().is_empty());
    let raw = rx.raw();
    assert!(!raw.is_empty());
    assert!(
        !raw.windows(13).any(|w| w == b"must-not-leak"),
        "the event never crossed the wire"
    );
}

#[test]
fn mutual_tls_presents_the_client_certificate_and_a_sink_without_one_is_refused() {
    let pki = Pki::new();
    let rx = Receiver::start(0, Some(pki.server_config("", true)));
    let with = syslog_sink("with", rx.port, Some(pki.sink_tls(true)), 100);
    let mut without = syslog_sink("without", rx.port, Some(pki.sink_tls(false)), 100);
    without.key = "siem.sinks[1]".to_owned();
    let exporter = Exporter::start(&siem(vec![with, without])).unwrap();
    for i in 0..10 {
        exporter.export(event(i).as_bytes());
    }
    assert!(wait_until(WAIT, || rx.messages().len() >= 10));
    assert!(wait_until(WAIT, || rx.handshakes_failed() >= 1));
    // The collector may have read the frames before the sink counted them sent.
    assert!(
        wait_until(WAIT, || exporter.stats("with").unwrap().sent >= 10),
        "{:?}",
        exporter.stats("with")
    );
    // Time for any copy the other sink might have got through to arrive as well.
    std::thread::sleep(Duration::from_millis(300));
    // Only the sink with a certificate delivered: exactly one copy of each event.
    assert_eq!(rx.seqs(), (0..10).collect::<Vec<_>>());
    assert_eq!(exporter.stats("with").unwrap().sent, 10);
    // The sink without a certificate never got one event through (the collector would
    // have recorded copies above); it keeps trying.
    assert!(exporter.stats("without").unwrap().reconnects >= 1 || rx.handshakes_failed() >= 1);
}

#[test]
fn plain_tcp_only_when_the_configuration_says_so() {
    let rx = Receiver::start(0, None);
    let sink = syslog_sink("plain", rx.port, None, 100);
    let exporter = Exporter::start(&siem(vec![sink])).unwrap();
    for i in 0..20 {
        exporter.export(event(i).as_bytes());
    }
    assert!(wait_until(WAIT, || rx.messages().len() >= 20));
    assert_eq!(rx.seqs(), (0..20).collect::<Vec<_>>());
    assert_eq!(rx.errors(), Vec::<String>::new());
}

#[test]
fn shutdown_flushes_within_its_bound_and_counts_what_it_could_not_send() {
    let pki = Pki::new();
    let rx = Receiver::start(0, Some(pki.server_config("", false)));
    let sink = syslog_sink("soc", rx.port, Some(pki.sink_tls(false)), 100_000);
    let exporter = Exporter::start(&siem(vec![sink])).unwrap();
    for i in 0..5000 {
        exporter.export(event(i).as_bytes());
    }
    assert_eq!(exporter.shutdown(), 0);
    assert!(wait_until(WAIT, || rx.messages().len() >= 5000));
    assert_eq!(rx.seqs(), (0..5000).collect::<Vec<_>>());

    // Nobody listening: shutdown gives up after shutdown_timeout and says how many.
    let sink = syslog_sink("soc", free_port(), Some(pki.sink_tls(false)), 100);
    let mut config = siem(vec![sink]);
    config.shutdown_timeout = Duration::from_millis(500);
    let exporter = Exporter::start(&config).unwrap();
    for i in 0..30 {
        exporter.export(event(i).as_bytes());
    }
    let started = Instant::now();
    assert_eq!(exporter.shutdown(), 30);
    // Within the configured 500 ms, with room for a loaded machine, and well short of the
    // 5 s the configuration would otherwise give.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn export_never_waits_for_a_stalled_collector() {
    // A collector that accepts and never reads: the sink's writes block, the caller's do not.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let sink = syslog_sink("plain", port, None, 1000);
    let exporter = Exporter::start(&siem(vec![sink])).unwrap();
    let big = format!(r#"{{"class_uid":6003,"pad":"{}"}}"#, "x".repeat(60_000));
    let started = Instant::now();
    for _ in 0..2000 {
        exporter.export(big.as_bytes());
    }
    // An export that waited for the collector would wait forever: the bound only leaves
    // a loaded machine room to copy and check 120 MB of events in an unoptimised build.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let stats = exporter.stats("plain").unwrap();
    assert!(stats.dropped >= 900, "{stats:?}");
    drop(held);
}

#[test]
fn refuses_events_that_would_break_json_lines() {
    let exporter = Exporter::start(&siem(vec![syslog_sink("soc", free_port(), None, 10)])).unwrap();
    exporter.export(b"");
    exporter.export(b"{\"a\":1}\n{\"b\":2}");
    assert_eq!(exporter.metrics().invalid(), 2);
    assert_eq!(exporter.stats("soc").unwrap().buffered_events, 0);
}

#[test]
fn a_bad_client_key_stops_the_start_naming_the_key() {
    let pki = Pki::new();
    std::fs::write(pki.path("client.key"), "not a key").unwrap();
    let sink = syslog_sink("soc", free_port(), Some(pki.sink_tls(true)), 10);
    let err = Exporter::start(&siem(vec![sink])).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("siem.sinks[0].client_key: "), "{text}");
    assert!(text.contains("client.key"), "{text}");
}

/// The syslog severity (RFC 5424 code) of each of `records`, sent over TLS to a collector.
fn syslog_severities(records: &[String]) -> Vec<u8> {
    let pki = Pki::new();
    let rx = Receiver::start(0, Some(pki.server_config("", false)));
    let sink = syslog_sink("soc", rx.port, Some(pki.sink_tls(false)), 100);
    let exporter = Exporter::start(&siem(vec![sink])).unwrap();
    for r in records {
        exporter.export(r.as_bytes());
    }
    assert!(wait_until(WAIT, || rx.messages().len() >= records.len()));
    assert_eq!(exporter.shutdown(), 0);
    let messages = rx.messages();
    assert_eq!(
        messages.iter().map(|m| m.msg.clone()).collect::<Vec<_>>(),
        records,
        "MSG is the record as the trail wrote it"
    );
    messages.iter().map(|m| m.severity).collect()
}

#[test]
fn syslog_severity_of_a_gateway_denied_record_is_notice() {
    let records = [
        api_record(0, Outcome::Allowed),
        api_record(1, Outcome::Denied),
        connection_record(2),
    ];
    // info, then notice for the denied request and for the refused connection.
    assert_eq!(syslog_severities(&records), [6, 5, 5]);
}

#[test]
fn syslog_severity_of_a_gateway_failed_record_is_warning() {
    let records = [
        api_record(0, Outcome::Failed),
        api_record(1, Outcome::Upstream5xx),
    ];
    assert_eq!(syslog_severities(&records), [4, 4]);
}

#[test]
fn a_group_readable_siem_client_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let pki = Pki::new();
    let key = pki.path("client.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let sink = syslog_sink("soc", free_port(), Some(pki.sink_tls(true)), 10);
    let err = Exporter::start(&siem(vec![sink])).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("siem.sinks[0].client_key: "), "{text}");
    assert!(
        text.contains("client.key") && text.contains("mode 640"),
        "{text}"
    );
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    // Private again, it is taken.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let sink = syslog_sink("soc", free_port(), Some(pki.sink_tls(true)), 10);
    Exporter::start(&siem(vec![sink])).unwrap().shutdown();
}

/// The syslog settings of `sink`, to adjust a test's.
fn syslog_cfg(sink: &mut idgate_config::SiemSink) -> &mut idgate_config::SyslogSinkConfig {
    match &mut sink.kind {
        idgate_config::SinkKind::Syslog(s) => s,
        _ => panic!("not a syslog sink"),
    }
}

#[test]
fn a_collector_that_closes_after_the_handshake_is_retried_with_backoff() {
    // TLS 1.3: the collector judges the client certificate after the client's handshake is
    // done, and then closes; the sink has none to give.
    let pki = Pki::new();
    let rx = Receiver::start(0, Some(pki.server_config("", true)));
    let mut sink = syslog_sink("soc", rx.port, Some(pki.sink_tls(false)), 100);
    let cfg = syslog_cfg(&mut sink);
    cfg.reconnect_min = Duration::from_millis(100);
    cfg.reconnect_max = Duration::from_secs(1);
    let exporter = Exporter::start(&siem(vec![sink])).unwrap();
    for i in 0..10 {
        exporter.export(event(i).as_bytes());
    }
    // Watched for two seconds: waits of 50-100 ms doubling to at most 1 s leave room for
    // at most 7 attempts; a sink that reconnects at once makes hundreds.
    let window = Instant::now() + Duration::from_secs(2);
    let mut ever_connected = false;
    while Instant::now() < window {
        ever_connected |= exporter.stats("soc").unwrap().connected;
        std::thread::sleep(Duration::from_millis(5));
    }
    let attempts = rx.accepted();
    assert!((2..=9).contains(&attempts), "{attempts} attempts in 2 s");
    let stats = exporter.stats("soc").unwrap();
    assert_eq!(
        (stats.sent, stats.resent, stats.buffered_events),
        (0, 0, 10),
        "nothing counted as sent to a collector that refused the sink: {stats:?}"
    );
    assert!(!ever_connected, "a refused connection is not a connection");
    assert!(rx.messages().is_empty());
}

#[test]
fn an_idle_close_by_the_collector_does_not_resend_old_frames() {
    let pki = Pki::new();
    let rx = Receiver::with_idle_close(
        0,
        Some(pki.server_config("", false)),
        Some(Duration::from_secs(1)),
    );
    let sink = syslog_sink("soc", rx.port, Some(pki.sink_tls(false)), 100);
    let exporter = Exporter::start(&siem(vec![sink])).unwrap();
    for i in 0..10 {
        exporter.export(event(i).as_bytes());
    }
    assert!(wait_until(WAIT, || rx.messages().len() >= 10));
    // Three idle closes, each followed by a new connection.
    assert!(
        wait_until(WAIT, || rx.accepted() >= 4
            && exporter.stats("soc").unwrap().connected),
        "{:?}",
        exporter.stats("soc")
    );
    assert_eq!(rx.seqs(), (0..10).collect::<Vec<_>>(), "each event once");
    let stats = exporter.stats("soc").unwrap();
    assert_eq!((stats.sent, stats.resent, stats.dropped), (10, 0, 0));
    assert!(stats.reconnects >= 3, "{stats:?}");
    assert_eq!(exporter.shutdown(), 0);
}

#[test]
fn shutdown_with_a_stalled_collector_counts_the_batch_in_flight() {
    // A collector that accepts and never reads: the sink's write blocks (for much longer
    // than shutdown waits) with a batch in hand.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let mut sink = syslog_sink("plain", port, None, 1000);
    syslog_cfg(&mut sink).write_timeout = Duration::from_secs(60);
    let mut config = siem(vec![sink]);
    config.shutdown_timeout = Duration::from_millis(500);
    let exporter = Exporter::start(&config).unwrap();
    let big = format!(r#"{{"class_uid":6003,"pad":"{}"}}"#, "x".repeat(60_000));
    let exported = 300;
    for _ in 0..exported {
        exporter.export(big.as_bytes());
    }
    // The sink holds a batch: neither sent nor buffered.
    assert!(wait_until(WAIT, || {
        let s = exporter.stats("plain").unwrap();
        s.sent + s.buffered_events < exported
    }));
    let started = Instant::now();
    let left = exporter.metrics().clone();
    let unwritten = exporter.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let stats = left.stats("plain");
    // Every event is accounted for once: written to the socket, or reported unwritten.
    assert_eq!(stats.dropped, unwritten);
    assert_eq!(stats.sent + unwritten, exported, "{stats:?}");
    drop(held);
}

#[test]
fn shutdown_counts_as_dropped_what_the_collector_never_acknowledged() {
    // A collector that takes the connection and never reads, with a receive window of a few
    // KiB: every frame fits in the sink's send buffer and is written, but its host can
    // acknowledge only what its window holds.
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener.set_recv_buffer_size(4096).unwrap();
    listener
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    listener.listen(8).unwrap();
    let port = listener.local_addr().unwrap().as_socket().unwrap().port();
    let listener: std::net::TcpListener = listener.into();
    let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let mut config = siem(vec![syslog_sink("plain", port, None, 1000)]);
    config.shutdown_timeout = Duration::from_millis(500);
    let exporter = Exporter::start(&config).unwrap();
    let event = format!(r#"{{"class_uid":6003,"pad":"{}"}}"#, "x".repeat(2000));
    let exported = 50;
    for _ in 0..exported {
        exporter.export(event.as_bytes());
    }
    // All of it handed to the socket, nothing left in the sink's buffer.
    assert!(wait_until(WAIT, || {
        let s = exporter.stats("plain").unwrap();
        s.sent >= exported && s.buffered_events == 0
    }));
    let metrics = exporter.metrics().clone();
    let unwritten = exporter.shutdown();
    // A shutdown that stopped at an empty buffer would report nothing lost, though most of
    // the 100 KB never reached the collector's host.
    assert!(unwritten > 0, "{:?}", metrics.stats("plain"));
    assert_eq!(metrics.stats("plain").dropped, unwritten);
    drop(held);
}

/// Run by [`a_syslog_sink_with_ca_trusts_only_that_ca`] in a process of its own whose
/// platform roots (`SSL_CERT_FILE`) are the other CA: the platform's roots are read once
/// per process.
#[test]
fn trust_child() {
    let Some(dir) = std::env::var_os("IDGATE_SIEM_TRUST_CHILD") else {
        return;
    };
    let pki = Pki {
        dir: tempfile::TempDir::new_in(&dir).unwrap(),
    };
    // The other CA's certificates, in this child's own PKI directory.
    let from = std::path::Path::new(&dir);
    for name in ["other-server.pem", "other-server.key", "ca.pem"] {
        std::fs::copy(from.join(name), pki.path(name)).unwrap();
    }
    let server = {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let chain = vec![CertificateDer::from_pem_file(pki.path("other-server.pem")).unwrap()];
        let key = PrivateKeyDer::from_pem_file(pki.path("other-server.key")).unwrap();
        std::sync::Arc::new(
            rustls::ServerConfig::builder_with_provider(idgate_tls::crypto_provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        )
    };
    let rx = Receiver::start(0, Some(server));
    // With `ca`, only that CA: the collector's certificate from the platform's CA is refused.
    let mut tls = pki.sink_tls(false);
    let only_ca = syslog_sink("only-ca", rx.port, Some(tls.clone()), 100);
    // Without `ca`, the platform's roots: the same collector is trusted (the environment
    // did make the other CA this process's platform root).
    tls.ca = None;
    let mut platform = syslog_sink("platform", rx.port, Some(tls), 100);
    platform.key = "siem.sinks[1]".to_owned();
    let exporter = Exporter::start(&siem(vec![only_ca, platform])).unwrap();
    exporter.export(event(0).as_bytes());
    assert!(wait_until(WAIT, || !rx.messages().is_empty()
        && rx.handshakes_failed() >= 2));
    let only_ca = exporter.stats("only-ca").unwrap();
    assert_eq!(
        (only_ca.sent, only_ca.buffered_events),
        (0, 1),
        "{only_ca:?}"
    );
    assert_eq!(rx.seqs(), [0], "one copy, from the sink without `ca`");
}

#[test]
fn a_syslog_sink_with_ca_trusts_only_that_ca() {
    let pki = Pki::new();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["trust_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("IDGATE_SIEM_TRUST_CHILD", pki.dir.path())
        .env("SSL_CERT_FILE", pki.path("other-ca.pem"))
        .env_remove("SSL_CERT_DIR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "the child ran: {stdout}");
}
