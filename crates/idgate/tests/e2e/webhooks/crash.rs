//! The outbox's promise under fire: 1,000 events from 40 sessions, sent as a provider sends
//! them (each retried until answered, a session's events one after another), while the
//! gateway is killed with SIGKILL twice and the subscriber is down for part of the time.
//! Every event arrives, each idempotency key is acted on once by the deduplicating
//! subscriber, each session's events in the order they were sent, none lost.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idgate_store::redis_testing::RedisServer;

use super::*;

const SESSIONS: u64 = 40;
const PER_SESSION: u64 = 25;
const TOTAL: usize = (SESSIONS * PER_SESSION) as usize;

/// Sends one session's events in order; each until the gateway answers 200, or 401 as a
/// replay (it kept the event before a kill cut its answer off).
async fn send_session(
    base: Client,
    port: Arc<AtomicU16>,
    session: u64,
    sent: Arc<AtomicUsize>,
    replays: Arc<AtomicUsize>,
) {
    let mut conn: Option<(u16, Connection)> = None;
    for seq in 0..PER_SESSION {
        let e = envelope(
            &format!("evt-{session}-{seq}"),
            &format!("sess-{session}"),
            seq,
            now_secs(),
        );
        let signed = didit_webhook::sign(DIDIT_SECRET, &e);
        let mut headers: Vec<(&str, &str)> = signed.headers().to_vec();
        headers.push(("content-type", "application/json"));
        let body = String::from_utf8(signed.body.clone()).unwrap();
        loop {
            let now_port = port.load(Ordering::SeqCst);
            if conn.as_ref().is_none_or(|(p, _)| *p != now_port) {
                let client = Client {
                    config: base.config.clone(),
                    port: now_port,
                    h2: false,
                };
                conn = client.connect().await.ok().map(|c| (now_port, c));
            }
            let reply = match &mut conn {
                Some((_, c)) => c.send("POST", WEBHOOK_PATH, &headers, &body).await,
                None => Err("no connection".to_owned()),
            };
            match reply {
                Ok(r) if r.status == 200 => break,
                Ok(r)
                    if r.status == 401
                        && r.json()["type"]
                            .as_str()
                            .unwrap_or("")
                            .ends_with("webhook-replayed") =>
                {
                    replays.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Ok(r) if r.status >= 500 => {}
                Ok(r) => panic!("unexpected answer {}: {:?}", r.status, r.body),
                Err(_) => conn = None,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sent.fetch_add(1, Ordering::SeqCst);
    }
}

async fn wait_for(sent: &AtomicUsize, n: usize) {
    while sent.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The test, with the outbox in `state` (the redb file of `webhook_config` when `None`).
async fn thousand_events(state: Option<toml::Table>) {
    within_limit(Duration::from_secs(150), async {
        let started = Instant::now();
        let pki = Pki::default_pki();
        let dir = tempfile::tempdir().unwrap();
        let mut sub = Subscriber::start(&pki).await;
        // No copies kept after delivery: the test is about the outbox, not the archive.
        let mut extra = toml::Table::new();
        extra.insert("retention".into(), "0s".into());
        let mut config = webhook_config(&pki, dir.path(), &sub.url(), extra);
        if let Some(state) = state {
            config.sections.insert("state".into(), state.into());
        }
        let mut gw = Gateway::start(&config, &[]).await;
        let port = Arc::new(AtomicU16::new(gw.port));
        let sent = Arc::new(AtomicUsize::new(0));
        let replays = Arc::new(AtomicUsize::new(0));
        let base = provider_client(&pki, gw.port);
        let senders: Vec<_> = (0..SESSIONS)
            .map(|s| {
                tokio::spawn(send_session(
                    Client {
                        config: base.config.clone(),
                        port: base.port,
                        h2: false,
                    },
                    port.clone(),
                    s,
                    sent.clone(),
                    replays.clone(),
                ))
            })
            .collect();

        wait_for(&sent, 200).await;
        sub.down();
        wait_for(&sent, 350).await;
        gw.child.kill().unwrap();
        let _ = gw.child.wait();
        gw = Gateway::start(&config, &[]).await;
        port.store(gw.port, Ordering::SeqCst);
        wait_for(&sent, 600).await;
        sub.up().await;
        wait_for(&sent, 750).await;
        gw.child.kill().unwrap();
        let _ = gw.child.wait();
        gw = Gateway::start(&config, &[]).await;
        port.store(gw.port, Ordering::SeqCst);
        for s in senders {
            s.await.unwrap();
        }
        let all_sent = started.elapsed();

        let deadline = Instant::now() + Duration::from_secs(60);
        while sub.processed().len() < TOTAL && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let processed = sub.processed();
        let got = sub.got();
        eprintln!(
            "{TOTAL} events sent in {all_sent:?} ({} answered as replays after a kill); \
             {} deliveries, {} acted on, all in {:?}",
            replays.load(Ordering::SeqCst),
            got.len(),
            processed.len(),
            started.elapsed()
        );

        // None lost: every event acted on, once.
        let events: HashSet<String> = processed
            .iter()
            .map(|d| d.body["event_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(events.len(), TOTAL, "every event delivered");
        assert_eq!(processed.len(), TOTAL, "each idempotency key acted on once");
        // One idempotency key per event, whatever the provider's retries and the kills.
        let mut key_of: HashMap<String, String> = HashMap::new();
        for d in &got {
            let event = d.body["event_id"].as_str().unwrap().to_owned();
            let key = key_of
                .entry(event.clone())
                .or_insert_with(|| d.event_id.clone());
            assert_eq!(*key, d.event_id, "event {event} arrived under two keys");
        }
        // Per session, in the order sent.
        for s in 0..SESSIONS {
            let seqs: Vec<u64> = processed
                .iter()
                .filter(|d| d.body["session_id"] == format!("sess-{s}"))
                .map(|d| d.body["metadata"]["seq"].as_u64().unwrap())
                .collect();
            assert_eq!(seqs, (0..PER_SESSION).collect::<Vec<_>>(), "session {s}");
        }
        assert!(got.iter().all(|d| d.signature_ok && d.peer.is_some()));
        drop(gw);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_events_survive_two_sigkills_and_a_subscriber_outage_in_order_and_once() {
    thousand_events(None).await;
}

/// The same with the outbox in Redis (its Streams queue): the restarted gateway is another
/// consumer, which takes over the dead one's claims once their leases run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_events_survive_two_sigkills_and_a_subscriber_outage_on_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let state = table([
        ("backend", "redis".into()),
        ("url", redis.url().into()),
        // A busy machine runs the gateway, Redis and the test on two cores.
        ("timeout", "500ms".into()),
    ]);
    thousand_events(Some(state)).await;
}
