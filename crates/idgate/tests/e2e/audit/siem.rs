//! The SIEM export fed by the gateway's audit trail: every entry the trail writes reaches
//! the `[siem]` sink as the same JSON, and the sink's counters are on `/metrics`.

use std::collections::HashSet;
use std::time::Duration;

use super::TrailKeys;
use super::gateway::{audit_section, entries, stop};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_audit_entry_reaches_the_siem_sink_as_written() {
    within_limit(Duration::from_secs(60), async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let keys = TrailKeys::new(false);
        let trail = tempfile::tempdir().unwrap();
        let siem_dir = tempfile::tempdir().unwrap();
        let siem_file = siem_dir.path().join("siem.jsonl");
        let mut sink = toml::Table::new();
        sink.insert("name".into(), "soc-file".into());
        sink.insert("kind".into(), "file".into());
        sink.insert("path".into(), siem_file.display().to_string().into());
        let mut siem = toml::Table::new();
        siem.insert("sinks".into(), vec![toml::Value::Table(sink)].into());
        let config = OneRoute::kyc_decision(&upstream.url(true))
            .config(&pki)
            .section("audit", audit_section(&keys, trail.path(), &[]))
            .section("siem", siem);
        let mut gw = Gateway::start(&config, &[("TEST_PROVIDER_KEY", "sk_test_siem")]).await;

        let path = "/v3/session/f3a1c9e2-7b44-4e0a-9d1b-5c2e8a7f6b31/decision/";
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let frontend = Client::new(&pki, Some(FRONTEND), gw.port, false);
        for _ in 0..20 {
            assert_eq!(client.get(path).await.unwrap().status, 200);
            assert_eq!(frontend.get(path).await.unwrap().status, 403);
        }
        // The sink writes in batches: wait until the 40 requests are out.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let metrics = loop {
            let (_, text) = admin_get(gw.admin_port, "/metrics").await.unwrap();
            let sent = text
                .lines()
                .find_map(|l| l.strip_prefix("idgate_siem_events_sent_total{sink=\"soc-file\"} "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            if sent >= 40.0 || std::time::Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            metrics.contains("idgate_siem_events_dropped_total{sink=\"soc-file\"} 0"),
            "{metrics}"
        );
        stop(&mut gw);

        // Every entry of the trail (requests, checkpoints, the closing one) is in the SIEM
        // file, in chain order, as the same JSON.
        let trail_entries = entries(trail.path(), &[]);
        let exported: Vec<serde_json::Value> = std::fs::read_to_string(&siem_file)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(exported, trail_entries);
        let requests: HashSet<&str> = exported
            .iter()
            .filter(|e| e["class_uid"] == 6003)
            .map(|e| e["metadata"]["uid"].as_str().unwrap())
            .collect();
        assert_eq!(requests.len(), 40);
    })
    .await;
}
