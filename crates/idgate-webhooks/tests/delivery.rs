//! The deliverer over real sockets: events written to the outbox reach a subscriber that
//! requires the gateway's client certificate, signed, in order per session; failures are
//! retried, refusals and events too old become dead letters, masking applies per
//! subscriber, and retention purges what was kept.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use idgate_config::{NonJson, RetryPolicy, SubscriberConfig, WebhookConfig, WebhookScheme};
use idgate_mask::{Action, MaskPath, PassTypes, Profile, Rule};
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
        event_time: None,
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
        self.send_raw(id, session, &serde_json::to_vec(&body).unwrap())
            .await;
    }

    /// The same with the body's bytes as they are (a provider's body need not be JSON).
    async fn send_raw(&self, id: &str, session: &str, body: &[u8]) {
        let key = outbox::event_key("didit", Some(id), body);
        let event = NewEvent {
            webhook: "didit",
            key: &key,
            event_type: Some("status.updated"),
            session: Some(session),
            body,
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
    // Delivered events are kept for their retention, then purged. The subscriber records
    // its 200 before the deliverer has read it and kept the delivered copy: wait for it.
    let kept = || async {
        s.store
            .stats(&s.sub.delivered, SystemTime::now())
            .await
            .unwrap()
            .waiting
    };
    let deadline = std::time::Instant::now() + WAIT;
    while kept().await < 30 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
        // Long enough that the first attempt (a TLS handshake on a loaded machine) cannot
        // reach it: the event must be retried at least once before it is given up on.
        max_age: Duration::from_secs(2),
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
        non_json: NonJson::Pass(PassTypes::default()),
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

/// Waits until `sub`'s queue holds `n` dead letters (or the wait runs out); they are returned.
async fn dead_letters(s: &Setup, n: usize) -> Vec<idgate_store::MessageInfo> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let letters = s
            .store
            .dead_letters(&s.sub.queue, SystemTime::now())
            .await
            .unwrap();
        if letters.len() >= n || std::time::Instant::now() >= deadline {
            return letters;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_looks_like_json_but_cannot_be_read_never_reaches_a_masked_subscriber() {
    let pki = Pki::new();
    let server = SubscriberServer::start(&pki).await;
    let profile = Profile::new(vec![Rule {
        path: MaskPath::parse("$..full_name").unwrap(),
        action: Action::Redact,
    }]);
    let mask = SubscriberMask {
        profile_name: "kyc-minimal".into(),
        profile,
        key: None,
        // The default: what is not JSON at all passes.
        non_json: NonJson::Pass(PassTypes::default()),
    };
    let s = setup(&pki, &server, quick_retries(), Some(mask)).await;
    let person = r#""decision":{"full_name":"Ada Lovelace"}"#;
    let deep = format!("{}{{{person}}}{}", "[".repeat(200), "]".repeat(200));
    let unreadable: Vec<Vec<u8>> = vec![
        // A lone surrogate escape an applicant typed into any string.
        format!(r#"{{{person},"note":"x\ud800"}}"#).into_bytes(),
        // Nested past serde_json's 128 levels.
        deep.into_bytes(),
        // A byte-order mark, then an object (lenient readers skip the mark).
        [
            b"\xef\xbb\xbf".as_slice(),
            format!("{{{person}}}").as_bytes(),
        ]
        .concat(),
        // Whitespace, an object, then trailing bytes.
        format!(" \n{{{person}}} trailing").into_bytes(),
        // UTF-16 (big-endian): a NUL byte before each character.
        format!("{{{person}}}")
            .bytes()
            .flat_map(|b| [0, b])
            .collect(),
    ];
    for (n, body) in unreadable.iter().enumerate() {
        s.send_raw(&format!("bad{n}"), &format!("s{n}"), body).await;
    }
    // Not JSON at all, and binary media the default pass_types name: it passes.
    s.send_raw("pdf", "pdf", PDF).await;
    assert!(
        eventually(WAIT, || !server.received().is_empty()).await,
        "the PDF event was not delivered"
    );
    let letters = dead_letters(&s, unreadable.len()).await;
    assert_eq!(letters.len(), unreadable.len(), "{letters:?}");
    for letter in &letters {
        assert_eq!(letter.attempts, 1, "refused at once, not retried");
        let reason = letter.last_error.as_deref().unwrap();
        assert!(
            reason.contains("looks like JSON but cannot be read") && reason.contains("kyc-minimal"),
            "{reason}"
        );
        assert!(
            !reason.contains("Ada") && !reason.contains("ud800"),
            "no body content in the reason: {reason}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = server.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].raw, PDF);
}

/// A body whose first bytes are a PDF's.
const PDF: &[u8] = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_event_that_is_not_json_never_reaches_a_masked_subscriber_unmasked() {
    let pki = Pki::new();
    let server = SubscriberServer::start(&pki).await;
    let profile = Profile::new(vec![Rule {
        path: MaskPath::parse("$..full_name").unwrap(),
        action: Action::Redact,
    }]);
    let mask = SubscriberMask {
        profile_name: "kyc-minimal".into(),
        profile,
        key: None,
        // The default: binary media pass, text does not.
        non_json: NonJson::Pass(PassTypes::default()),
    };
    let s = setup(&pki, &server, quick_retries(), Some(mask)).await;
    let texts: [&[u8]; 4] = [
        b"status=Approved&full_name=Ada+Lovelace",
        b"<decision><full_name>Ada Lovelace</full_name></decision>",
        b"status,full_name\nApproved,Ada Lovelace\n",
        b"<!DOCTYPE html><p>Ada Lovelace</p>",
    ];
    for (n, body) in texts.iter().enumerate() {
        s.send_raw(&format!("text{n}"), &format!("t{n}"), body)
            .await;
    }
    s.send_raw("pdf", "pdf", PDF).await;
    let letters = dead_letters(&s, texts.len()).await;
    assert_eq!(letters.len(), texts.len(), "{letters:?}");
    for letter in &letters {
        assert_eq!(letter.attempts, 1, "refused at once, not retried");
        let reason = letter.last_error.as_deref().unwrap();
        assert!(
            reason.contains("not JSON") && reason.contains("pass_types"),
            "{reason}"
        );
        assert!(
            !reason.contains("Ada"),
            "no body content in the reason: {reason}"
        );
    }
    assert!(
        eventually(WAIT, || !server.received().is_empty()).await,
        "the PDF event was not delivered"
    );
    let got = server.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].raw, PDF);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_with_more_values_to_pseudonymize_than_the_bound_is_a_dead_letter_at_once() {
    let pki = Pki::new();
    let server = SubscriberServer::start(&pki).await;
    let profile = Profile::new(vec![Rule {
        path: MaskPath::parse("$..vendor_data").unwrap(),
        action: Action::Pseudonymize,
    }]);
    let mask = SubscriberMask {
        profile_name: "crm".into(),
        profile,
        // The bound is checked before the key is asked for.
        key: None,
        non_json: NonJson::Pass(PassTypes::default()),
    };
    let s = setup(&pki, &server, quick_retries(), Some(mask)).await;
    let items: Vec<String> = (0..=idgate_mask::MAX_PSEUDONYMS)
        .map(|i| format!(r#"{{"vendor_data":"customer-{i}"}}"#))
        .collect();
    let body = format!(r#"{{"sessions":[{}]}}"#, items.join(","));
    s.send_raw("many", "many", body.as_bytes()).await;
    let letters = dead_letters(&s, 1).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].attempts, 1, "refused at once, not retried");
    let reason = letters[0].last_error.as_deref().unwrap();
    assert!(
        reason.contains("distinct values to pseudonymize") && !reason.contains("customer-"),
        "{reason}"
    );
    assert!(server.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sealed_with_a_key_this_replica_lacks_waits_for_it_rather_than_dying() {
    let pki = Pki::new();
    let server = SubscriberServer::start(&pki).await;
    let s = setup(&pki, &server, quick_retries(), None).await;
    // Another replica, already reloaded with the next outbox key, sealed this event.
    let next = [6u8; 32];
    let sealed_by_next = OutboxKeys::from_keys(&[next]).unwrap();
    let body = br#"{"status":"Approved"}"#;
    let key = outbox::event_key("didit", Some("rotating"), body);
    let event = NewEvent {
        webhook: "didit",
        key: &key,
        event_type: Some("status.updated"),
        session: Some("rotating"),
        body,
    };
    let now = SystemTime::now();
    let held = outbox::hold(&s.store, &sealed_by_next, event, &["kyc"], now)
        .await
        .unwrap();
    outbox::release(&s.store, &held, now).await.unwrap();
    s.deliverer.wake();
    // Tried and put back, not buried: the key may come with this replica's reload.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let attempts = s
            .store
            .messages(&s.sub.queue, None, 10, SystemTime::now())
            .await
            .unwrap()
            .first()
            .map_or(0, |m| m.attempts);
        if attempts >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the message was not tried again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dead_letters_now(&s).await.is_empty());
    assert!(server.received().is_empty());
    // This replica reloads with both keys: the event goes out.
    let keys = Arc::new(OutboxKeys::from_keys(&[[5u8; 32], next]).unwrap());
    let config = SubscriberConfig {
        name: "kyc".into(),
        url: server.url().parse().unwrap(),
        secret: SecretRef::File(pki.path("subscriber.secret")),
        masking: None,
        events: Vec::new(),
        ca: Some(pki.path("ca.pem")),
    };
    let sub = Arc::new(Subscriber::load(&webhook(quick_retries()), &config, keys, None).unwrap());
    s.deliverer.set_plan(Arc::new(Plan {
        subscribers: vec![sub],
    }));
    s.deliverer.wake();
    assert!(eventually(WAIT, || server.received().len() == 1).await);
    assert!(dead_letters_now(&s).await.is_empty());
}

async fn dead_letters_now(s: &Setup) -> Vec<idgate_store::MessageInfo> {
    s.store
        .dead_letters(&s.sub.queue, SystemTime::now())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_past_the_clock_makes_dead_letters_and_the_queue_keeps_flowing() {
    let pki = Pki::new();
    let server = SubscriberServer::start(&pki).await;
    let s = setup(&pki, &server, quick_retries(), None).await;
    *server.retry_after.lock().unwrap() = Some("9223372036854775807".to_owned());
    // More refusals than deliveries a subscriber may have in flight (16): a delivery task
    // that panicked used to keep its slot, and then the queue was never claimed again.
    let failing = 20;
    server.answer(&vec![503; failing]);
    for n in 0..failing {
        s.send(
            &format!("e{n}"),
            &format!("s{n}"),
            serde_json::json!({ "n": n }),
        )
        .await;
    }
    let letters = dead_letters(&s, failing).await;
    assert_eq!(letters.len(), failing, "{letters:?}");
    for letter in &letters {
        assert_eq!(letter.attempts, 1, "{letter:?}");
        let reason = letter.last_error.as_deref().unwrap();
        assert!(
            reason.contains("gave up") && reason.contains("503"),
            "{reason}"
        );
    }
    // The subscriber is well again: the queue is still claimed.
    s.send("after", "later", serde_json::json!({ "n": "after" }))
        .await;
    assert!(
        eventually(WAIT, || server
            .received()
            .iter()
            .any(|r| r.status == 200 && r.body["n"] == "after"))
        .await,
        "{:?}",
        server.received()
    );
}
