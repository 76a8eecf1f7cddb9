//! Floods of connections that are never served, over real sockets: peers that connect and
//! close in a loop write a bounded amount of audit trail and log, every refusal still
//! accounted for; peers that connect and never finish their handshake hold a bounded share
//! of the connections, so that verified callers still get in.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::assert_eventually;
use crate::support::*;

const PATH: &str = "/v1/anything";

/// A signing key pair for a trail, made by `idgate audit keygen`: (private, public).
async fn trail_keys(dir: &Path) -> (PathBuf, PathBuf) {
    let out = dir.join("keys");
    let (code, stdout, err) = idgate_cli_async(vec![
        "audit".into(),
        "keygen".into(),
        "--out".into(),
        out.display().to_string(),
    ])
    .await;
    assert_eq!(code, 0, "{stdout}{err}");
    (out.join("audit-signing.pem"), out.join("audit-signing.pub"))
}

/// `[audit]` writing into `dir` with the keys of [`trail_keys`], and `extra` keys.
fn audit_section(dir: &Path, keys: &(PathBuf, PathBuf), extra: toml::Table) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("dir".into(), dir.display().to_string().into());
    t.insert(
        "signing_key".into(),
        format!("file:{}", keys.0.display()).into(),
    );
    t.insert(
        "public_keys".into(),
        vec![toml::Value::from(keys.1.display().to_string())].into(),
    );
    t.insert("sync_interval".into(), "20ms".into());
    t.extend(extra);
    t
}

/// The sum of every series of the counter `name` (`idgate_…_total`) in `text`.
fn counter_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics(gw: &Gateway) -> String {
    admin_get(gw.admin_port, "/metrics").await.unwrap().1
}

/// Connections the gateway has handled one way or another: failed handshakes, and
/// connections refused before theirs.
async fn handled(gw: &Gateway) -> f64 {
    let text = metrics(gw).await;
    counter_sum(&text, "idgate_tls_handshake_failures_total")
        + counter_sum(&text, "idgate_connections_refused_total")
}

/// Stops the gateway with SIGTERM, off the runtime's threads.
async fn stop(gw: Gateway) -> Gateway {
    tokio::task::spawn_blocking(move || {
        let mut gw = gw;
        gw.signal("TERM");
        let status = gw.wait_exit(Duration::from_secs(30));
        assert!(status.is_some_and(|s| s.success()), "{}", gw.output());
        gw
    })
    .await
    .unwrap()
}

/// The trail in `dir`, verified with `public`; its records of connections (OCSF class 4001).
async fn connection_records(dir: &Path, public: &Path) -> Vec<serde_json::Value> {
    let dir = dir.display().to_string();
    let (code, out, err) = idgate_cli_async(vec![
        "audit".into(),
        "verify".into(),
        "--key".into(),
        public.display().to_string(),
        dir.clone(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = idgate_cli_async(vec!["audit".into(), "show".into(), dir]).await;
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["class_uid"] == 4001)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_failed_handshakes_writes_a_bounded_number_of_audit_records_and_counts_the_rest()
{
    within_limit(Duration::from_secs(120), async {
        const ATTEMPTS: usize = 3000;
        const RATE: u64 = 5;
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let dir = tempfile::tempdir().unwrap();
        let keys = trail_keys(dir.path()).await;
        let trail = dir.path().join("trail");
        let config = OneRoute {
            url: &upstream.url(false),
            ..OneRoute::default()
        }
        .config(&pki)
        .section(
            "audit",
            audit_section(
                &trail,
                &keys,
                toml::toml! { connection_records_per_second = 5 },
            ),
        );
        // Before the gateway exists: its bucket of records cannot have filled for longer.
        let started = Instant::now();
        let gw = Gateway::start(&config, &[]).await;

        // Connect and close, as fast as loopback allows: each is a handshake that fails
        // (the peer closed), or a connection refused before it by a cap on handshakes.
        for _ in 0..ATTEMPTS {
            drop(TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap());
        }
        assert_eventually!(
            handled(&gw).await == ATTEMPTS as f64,
            "the gateway handled {} of {ATTEMPTS} connections",
            handled(&gw).await
        );
        let flooded_for = started.elapsed();
        let text = metrics(&gw).await;
        let summarized = counter_sum(&text, "idgate_audit_connection_records_summarized_total");
        // The log says a burst of them, then one a second (each line with how many it held
        // back since the one before).
        let lines = log_lines(&gw, "idgate::tls", "TLS handshake refused");
        let seconds = flooded_for.as_secs() + 1;
        assert!(
            (lines.len() as u64) <= 20 + seconds,
            "{} log lines in {flooded_for:?}",
            lines.len()
        );

        let gw = stop(gw).await;
        let records = connection_records(&trail, &keys.1).await;
        let (summaries, singles): (Vec<_>, Vec<_>) =
            records.iter().partition(|r| r.get("count").is_some());
        // Within the rate, each refusal has its own record: a second's worth at once, then
        // five a second.
        assert!(
            (singles.len() as u64) <= RATE + RATE * seconds,
            "{} records of their own in {flooded_for:?}",
            singles.len()
        );
        // The rest are counted, one summary per kind and second, with no address.
        let counted: u64 = summaries.iter().map(|s| s["count"].as_u64().unwrap()).sum();
        assert_eq!(
            singles.len() as u64 + counted,
            ATTEMPTS as u64,
            "every refusal is recorded or counted"
        );
        assert_eq!(counted as f64, summarized);
        assert!(!summaries.is_empty());
        // At most one summary a second for each kind (failed handshakes, refusals by the
        // cap on handshakes from one address, …), and one more written by the drain.
        assert!(
            (summaries.len() as u64) <= 4 * (seconds + 2),
            "{} summaries in {flooded_for:?}",
            summaries.len()
        );
        for s in &summaries {
            assert_eq!(s["unmapped"]["summary"], true, "{s}");
            assert!(s["count"].as_u64().unwrap() > 0, "{s}");
            assert!(s.get("src_endpoint").is_none(), "{s}");
            assert!(s["start_time"].as_u64() <= s["end_time"].as_u64(), "{s}");
        }
        drop(gw);
    })
    .await;
}

/// A TCP connection to the gateway from the loopback address `from` that sends nothing.
async fn silent_from(from: &str, port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap()
}

/// Whether the gateway has closed `tcp` (it sends nothing before a handshake).
async fn closed(tcp: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_millis(20), tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// How many of `conns` the gateway has closed.
async fn closed_of(conns: &mut [(TcpStream, bool)]) -> usize {
    for (tcp, seen) in conns.iter_mut() {
        if !*seen {
            *seen = closed(tcp).await;
        }
    }
    conns.iter().filter(|(_, seen)| *seen).count()
}

async fn refused(gw: &Gateway, reason: &str) -> f64 {
    let text = metrics(gw).await;
    counter_sum(
        &text,
        &format!("idgate_connections_refused_total{{reason=\"{reason}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_their_handshake_leave_room_for_verified_callers() {
    within_limit(Duration::from_secs(90), async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let dir = tempfile::tempdir().unwrap();
        let keys = trail_keys(dir.path()).await;
        let trail = dir.path().join("trail");
        let config = OneRoute {
            url: &upstream.url(false),
            listener_extra: toml::toml! {
                max_connections = 12
                max_handshakes = 8
                max_handshakes_per_ip = 3
                handshake_timeout = "60s"
            },
            ..OneRoute::default()
        }
        .config(&pki)
        .section("audit", audit_section(&trail, &keys, toml::Table::new()));
        let gw = Gateway::start(&config, &[]).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);

        // Two addresses, six connections each that never start their handshake: three of
        // each are held until handshake_timeout, the others closed at accept. Without the
        // cap, all twelve would hold every connection the gateway has.
        let mut silent = Vec::new();
        for from in ["127.0.0.2", "127.0.0.3"] {
            for _ in 0..6 {
                silent.push((silent_from(from, gw.port).await, false));
            }
        }
        assert_eventually!(
            closed_of(&mut silent).await == 6,
            "{} of the silent connections closed, {} refused",
            closed_of(&mut silent).await,
            refused(&gw, "max_handshakes_per_ip").await
        );
        assert_eq!(refused(&gw, "max_handshakes_per_ip").await, 6.0);
        // A verified caller gets in, and stays.
        let mut kept = client.connect().await.unwrap();
        assert_eq!(kept.send("GET", PATH, &[], "").await.unwrap().status, 200);
        assert_eq!(client.get(PATH).await.unwrap().status, 200);

        // Two more addresses, three each: within their own cap, but past the cap on all
        // handshakes (eight): two more are held, four closed at accept.
        let mut more = Vec::new();
        for from in ["127.0.0.4", "127.0.0.5"] {
            for _ in 0..3 {
                more.push((silent_from(from, gw.port).await, false));
            }
        }
        assert_eventually!(
            closed_of(&mut more).await == 4,
            "{} of the later silent connections closed",
            closed_of(&mut more).await
        );
        assert_eq!(refused(&gw, "max_handshakes").await, 4.0);
        assert_eq!(
            closed_of(&mut silent).await,
            6,
            "a held handshake ended early"
        );
        // The connection past its handshake is served all along.
        assert_eq!(kept.send("GET", PATH, &[], "").await.unwrap().status, 200);
        // A handshake that ends gives its place back: a verified caller takes it.
        let gone = silent.iter().position(|(_, seen)| !*seen).unwrap();
        drop(silent.remove(gone));
        assert_eventually!(
            client.get(PATH).await.is_ok_and(|r| r.status == 200),
            "no verified caller got in after a handshake ended"
        );

        // Each refusal by a cap on handshakes has its record (the verified caller's tries
        // while every place was taken among them).
        let per_ip = refused(&gw, "max_handshakes_per_ip").await;
        let all = refused(&gw, "max_handshakes").await;
        assert_eq!(per_ip, 6.0);
        drop((silent, more, kept));
        let gw = stop(gw).await;
        let records = connection_records(&trail, &keys.1).await;
        let by_reason = |reason: &str| {
            records
                .iter()
                .filter(|r| r["status_detail"] == reason)
                .inspect(|r| assert_eq!(r["unmapped"]["stage"], "at accept", "{r}"))
                .count() as f64
        };
        assert_eq!(by_reason("max_handshakes_per_ip"), per_ip, "{records:?}");
        assert_eq!(by_reason("max_handshakes"), all, "{records:?}");
        drop(gw);
    })
    .await;
}
