//! What the outbox does with events over their lifetime beyond a plain delivery: a claim of
//! large events on Redis that takes longer than a request may, and a dead letter replayed
//! after its maximum age, which gets a full run of attempts again.

use std::time::{Duration, Instant, SystemTime};

use idgate_store::redis_testing::RedisServer;
use idgate_store::{RedisOptions, RedisStore, StateStore};
use idgate_webhooks::outbox::{self, NewEvent, OutboxKeys};

use super::*;
use crate::assert_eventually;

/// Events of a mebibyte each: sixteen of them (what one claim asks for) are an answer Redis
/// takes far longer than the gateway's request timeout to send.
const LARGE: usize = 1 << 20;
const EVENTS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_payloads_exceed_the_request_timeout_still_delivers() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    within(async {
        let pki = Pki::default_pki();
        let dir = tempfile::tempdir().unwrap();
        let sub = Subscriber::start(&pki).await;
        // Events already in the outbox when the gateway starts: its first claim asks for
        // all of them at once.
        let mut options = RedisOptions::standalone(redis.url());
        options.timeout = Duration::from_secs(10);
        let store = StateStore::from(RedisStore::new(&options).unwrap());
        let keys = OutboxKeys::from_keys(&[[0x5a; 32]]).unwrap();
        let now = SystemTime::now();
        for n in 0..EVENTS {
            let mut e = envelope(&format!("evt-{n}"), &format!("sess-{n}"), 0, now_secs());
            e["document"] = "x".repeat(LARGE).into();
            let body = serde_json::to_vec(&e).unwrap();
            let key = outbox::event_key("didit", Some(&format!("evt-{n}")), &body);
            let event = NewEvent {
                webhook: "didit",
                key: &key,
                event_type: Some("status.updated"),
                session: Some(&format!("sess-{n}")),
                body: &body,
            };
            let held = outbox::hold(&store, &keys, event, &["kyc"], now)
                .await
                .unwrap();
            outbox::release(&store, &held, now).await.unwrap();
        }

        let mut config = webhook_config(&pki, dir.path(), &sub.url(), toml::Table::new());
        config.sections.insert(
            "state".into(),
            table([
                ("backend", "redis".into()),
                ("url", redis.url().into()),
                // Ample for a request's small calls on the machine's own Redis, far too short
                // for sixteen mebibytes.
                ("timeout", "20ms".into()),
            ])
            .into(),
        );
        let gw = Gateway::start(&config, &[]).await;
        let deadline = Instant::now() + Duration::from_secs(40);
        while sub.processed().len() < EVENTS && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            sub.processed().len(),
            EVENTS,
            "every event delivered:\n{}",
            gw.output()
        );
        assert!(sub.processed().iter().all(|d| {
            d.signature_ok
                && d.body["document"]
                    .as_str()
                    .is_some_and(|s| s.len() == LARGE)
        }));
    })
    .await;
}

#[tokio::test]
async fn a_replayed_dead_letter_older_than_max_age_is_retried_after_a_5xx() {
    within(async {
        let pki = Pki::default_pki();
        let dir = tempfile::tempdir().unwrap();
        let sub = Subscriber::start(&pki).await;
        let max_age = Duration::from_secs(2);
        let mut retry = toml::Table::new();
        retry.insert("base".into(), "50ms".into());
        retry.insert("max".into(), "200ms".into());
        retry.insert("max_age".into(), "2s".into());
        let mut w = toml::Table::new();
        w.insert("retry".into(), retry.into());
        let gw = Gateway::start(&webhook_config(&pki, dir.path(), &sub.url(), w), &[]).await;
        // Refused for good: a dead letter at once.
        sub.answer(&[410]);
        let client = provider_client(&pki, gw.port);
        let received = Instant::now();
        let r = post_signed(
            &client,
            DIDIT_SECRET,
            &envelope("evt-old", "sess-1", 1, now_secs()),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        let key = r.json()["event_id"].as_str().unwrap().to_owned();
        assert_eventually!(
            gw.output().contains("webhook event is a dead letter"),
            "not buried:\n{}",
            gw.output()
        );
        // Replayed once it is older than its maximum age.
        tokio::time::sleep_until((received + max_age + Duration::from_millis(500)).into()).await;
        let config = gw.config_path.display().to_string();
        let (code, out, err) = idgate_cli(&["webhooks", "list", "--config", &config]);
        assert_eq!(code, 0, "{err}");
        let id = out
            .lines()
            .find(|l| l.starts_with("didit/kyc/"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no dead letter:\n{out}"))
            .to_owned();
        // Its first attempt after the replay meets a 5xx; the next is delivered.
        sub.answer(&[503]);
        let (code, _, err) = idgate_cli(&["webhooks", "replay", &id, "--config", &config]);
        assert_eq!(code, 0, "{err}");
        assert_eventually!(
            sub.processed().len() == 1,
            "not delivered after the replay: {:?}\n{}",
            sub.got(),
            gw.output()
        );
        assert_eq!(sub.processed()[0].event_id, key);
        assert_eq!(sub.got().len(), 3, "410, then 503 and 200 after the replay");
    })
    .await;
}
