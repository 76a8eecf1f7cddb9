//! The deliverer over real sockets: events written to the outbox reach a subscriber that
//! requires the gateway's client certificate, signed, in order per session; failures are
//! retried, refusals and events too old become dead letters, masking applies per
//! subscriber, and retention purges what was kept.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use idgate_config::{NonJson, RetryPolicy, SubscriberConfig, WebhookConfig, WebhookScheme};
use idgate_mask::{Action, MaskPath, Profile, Rule};
use idgate_secrets::SecretRef;
use idgate_store::{MemoryStore, MessageState, Queue, StateStore};
use idgate_webhooks::delivery::purge;
use idgate_webhooks::outbox::{self, NewEvent, OutboxKeys};
use idgate_webhooks::{Deliverer, DeliveryMetrics, Plan, Subscriber, SubscriberMask};
use support::{Pki, SubscriberServer, eventually};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(10);

fn webhook(retry: RetryPolicy) -> WebhookConfig {
    WebhookConfig {
        name: "didit".into(),
        path: "/webhooks/didit".into(),
        scheme: WebhookScheme::Didit,
        v2_form: None,
        allow_sha1: false,
        secrets: Vec::new(),
        tolerance: Duration::from_secs(300),
        replay_window: None,
        source_cidrs: Vec::new(),
        max_body_bytes: 1 << 20,
        outbox_keys: Vec::new(),
        retry,
        delivery_timeout: Duration::from_secs(2),
        retention: Duration::from_secs(60),
        dead_letter_retention: Duration::from_secs(60),
        subscribers: Vec::new(),
    }
}

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(20),
        max: Duration::from_millis(100),
        max_age: Duration::from_secs(60),
    }
}

struct Setup {
    store: StateStore,
    keys: Arc<OutboxKeys>,
    deliverer: Arc<Deliverer>,
    sub: Arc<Subscriber>,
    _stop: watch::Sender<bool>,
}

async fn setup(
    pki: &Pki,
    server: &SubscriberServer,
    retry: RetryPolicy,
    mask: Option<SubscriberMask>,
) -> Setup {
    let store = StateStore::from(MemoryStore::new());
    let keys = Arc::new(OutboxKeys::from_keys(&[[5u8; 32]]).unwrap());
    let config = SubscriberConfig {
        name: "kyc".into(),
        url: server.url().parse().unwrap(),
        secret: SecretRef::File(pki.path("subscriber.secret")),
        masking: None,
        events: Vec::new(),
        ca: Some(pki.path("ca.pem")),
    };
    let sub = Arc::new(Subscriber::load(&webhook(retry), &config, keys.clone(), mask).unwrap());
    let client_key = pki.client_key();
    let deliverer = Deliverer::new(
        store.clone(),
        Arc::new(move || Some(client_key.clone())),
        DeliveryMetrics::default(),
    );
    deliverer.set_plan(Arc::new(Plan {
        subscribers: vec![sub.clone()],
    }));
    let (stop, stopped) = watch::channel(false);
    deliverer.spawn(stopped);
    Setup {
        store,
        keys,
        deliverer,
        sub,
        _stop: stop,
    }
}

impl Setup {
    /// Writes an event for the subscriber and releases it, as the endpoint does.
    async fn send(&self, id: &str, session: &str, body: serde_json::Value) {
        let body = serde_json::to_vec(&body).unwrap();
        let key = outbox::event_key("didit", Some(id), &body);
        let event = NewEvent {
            webhook: "didit",
            key: &key,
            event_type: Some("status.updated"),
            session: Some(session),
            body: &body,
        };
        let now = SystemTime::now();
        let held = outbox::hold(&self.store, &self.keys, event, &["kyc"], now)
            .await
            .unwrap();
        outbox::release(&self.store, &held, now).await.unwrap();
        self.deliverer.wake();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_subscriber_signed_over_mutual_tls_in_session_order() {
    let pki = Pki::new();
    let server = SubscriberServer::start(&pki).await;
    let s = setup(&pki, &server, quick_retries(), None).await;
    // The subscriber fails now and then: ordering must hold through the retries.
    server.answer(&[503, 200, 500, 200, 200, 502]);
    for n in 0..30 {
        let session = format!("s{}", n % 3);
        s.send(
            &format!("e{n}"),
            &session,
            serde_json::json!({"session_id": session, "seq": n}),
        )
        .await;
    }
    assert!(
        eventually(WAIT, || server
            .received()
            .iter()
            .filter(|r| r.status == 200)
            .count()
            == 30)
        .await,
        "{:?}",
        server.received()
    );
    let got = server.received();
    assert!(
        got.iter().all(|r| r.signature_ok),
        "every delivery is signed"
    );
    let delivered: Vec<_> = got.iter().filter(|r| r.status == 200).collect();
    let mut ids: Vec<_> = delivered.iter().map(|r| r.event_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 30, "each event once");
    for session in ["s0", "s1", "s2"] {
        let seqs: Vec<i64> = delivered
            .iter()
            .filter(|r| r.body["session_id"] == session)
            .map(|r| r.body["seq"].as_i64().unwrap())
            .collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "session {session} in order");
    }
    // Delivered events are kept for their retention, then purged.
    let now = SystemTime::now();
    assert_eq!(
        s.store.stats(&s.sub.delivered, now).await.unwrap().waiting,
        30
    );
    assert_eq!(
        purge(&s.store, &s.sub, now + Duration::from_secs(61))
            .await
            .unwrap(),
        30
    );
    assert_eq!(
        s.store
            .stats(&s.sub.delivered, now + Duration::from_secs(61))
            .await
            .unwrap(),
        Default::default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_makes_a_dead_letter_at_once_and_an_old_event_one_after_its_retries() {
    let pki = Pki::new();
    let server = SubscriberServer::start(&pki).await;
    let retry = RetryPolicy {
        base: Duration::from_millis(20),
        max: Duration::from_millis(50),
        max_age: Duration::from_millis(600),
    };
    let s = setup(&pki, &server, retry, None).await;
    server.answer(&[422]);
    s.send("refused", "s1", serde_json::json!({"n": 1})).await;
    let dead = || async {
        s.store
            .dead_letters(&s.sub.queue, SystemTime::now())
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while dead().await.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let letters = dead().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 1, "not retried");
    assert!(
        letters[0].last_error.as_deref().unwrap().contains("422"),
        "{letters:?}"
    );

    // Always 503: retried until the maximum age, then a dead letter.
    server.answer(&[503; 200]);
    s.send("failing", "s2", serde_json::json!({"n": 2})).await;
    while dead().await.len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let letters = dead().await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(letters[1].attempts > 1);
    assert!(
        letters[1]
            .last_error
            .as_deref()
            .unwrap()
            .contains("gave up after"),
        "{letters:?}"
    );
    // A revived dead letter is delivered once the subscriber takes it.
    server.statuses.lock().unwrap().clear();
    assert!(
        s.store
            .revive(&s.sub.queue, &letters[0].id, SystemTime::now())
            .await
            .unwrap()
    );
    s.deliverer.wake();
    assert!(
        eventually(WAIT, || server.received().iter().any(|r| r.status == 200)).await,
        "{:?}",
        server.received()
    );
    let info = s
        .store
        .info(&s.sub.queue, &letters[1].id, SystemTime::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.state, MessageState::Dead, "the other stays dead");
    // The subscriber's 200 is seen before the deliverer keeps the delivered copy.
    let kept = || async {
        s.store
            .stats(&s.sub.delivered, SystemTime::now())
            .await
            .unwrap()
            .waiting
    };
    let deadline = std::time::Instant::now() + WAIT;
    while kept().await == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(kept().await, 1, "the delivered copy was not kept");

    // Past the event's maximum age and the dead-letter retention, the dead letter is purged
    // (with the delivered copy, whose retention ended too).
    let later = SystemTime::now() + Duration::from_secs(61);
    assert_eq!(purge(&s.store, &s.sub, later).await.unwrap(), 2);
    assert!(
        s.store
            .dead_letters(&s.sub.queue, later)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_events_through_its_masking_profile() {
    let pki = Pki::new();
    let server = SubscriberServer::start(&pki).await;
    let profile = Profile::new(vec![Rule {
        path: MaskPath::parse("$.decision.full_name").unwrap(),
        action: Action::Redact,
    }]);
    let mask = SubscriberMask {
        profile_name: "kyc-minimal".into(),
        profile,
        key: None,
        non_json: NonJson::Pass,
    };
    let s = setup(&pki, &server, quick_retries(), Some(mask)).await;
    s.send(
        "masked",
        "s1",
        serde_json::json!({"status": "Approved", "decision": {"full_name": "Ada Lovelace"}}),
    )
    .await;
    assert!(eventually(WAIT, || !server.received().is_empty()).await);
    let got = &server.received()[0];
    assert!(got.signature_ok, "the masked body is what is signed");
    assert_eq!(got.body["status"], "Approved");
    assert_ne!(got.body["decision"]["full_name"], "Ada Lovelace");
}
