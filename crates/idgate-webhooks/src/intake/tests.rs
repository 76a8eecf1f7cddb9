use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, UNIX_EPOCH};

use idgate_config::{RetryPolicy, SubscriberConfig, WebhookConfig, WebhookScheme};
use idgate_secrets::SecretRef;
use idgate_store::{MemoryStore, MessageState, QueueName};

use super::*;
use crate::setup::Webhooks;

fn start() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn webhooks(dir: &std::path::Path) -> Webhooks {
    let file = |name: &str, content: &str| {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        SecretRef::File(p)
    };
    let sub = |name: &str, events: &[&str]| SubscriberConfig {
        name: name.into(),
        url: "https://localhost:1/events".parse().unwrap(),
        secret: file("sub.secret", "subscriber secret of 32 bytes..!"),
        masking: None,
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        ca: None,
    };
    let config = WebhookConfig {
        name: "didit".into(),
        path: "/webhooks/didit".into(),
        scheme: WebhookScheme::Didit,
        v2_form: None,
        allow_sha1: false,
        secrets: vec![file("secret", "didit secret")],
        tolerance: Duration::from_secs(300),
        replay_window: None,
        event_time: None,
        source_cidrs: Vec::new(),
        max_body_bytes: 1 << 20,
        outbox_keys: vec![file("outbox.key", &"ab".repeat(32))],
        retry: RetryPolicy::default(),
        delivery_timeout: Duration::from_secs(5),
        retention: Duration::ZERO,
        dead_letter_retention: Duration::ZERO,
        subscribers: vec![sub("all", &[]), sub("decisions", &["decision"])],
    };
    Webhooks::load(&[config], |_| None).unwrap()
}

fn event<'a>(replay_key: &'a str, event_type: &'a str) -> Event<'a> {
    Event {
        event_id: Some(replay_key),
        session_id: Some("s-1"),
        event_type: Some(event_type),
        replay_key,
    }
}

fn queue(name: &str) -> QueueName {
    QueueName::new(format!("webhook.didit.{name}")).unwrap()
}

#[tokio::test]
async fn a_fresh_event_is_kept_for_the_subscribers_that_want_it_and_a_replay_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let w = webhooks(dir.path());
    let endpoint = &w.endpoints[0];
    assert_eq!(endpoint.secrets(), [b"didit secret".as_slice()]);
    let store = MemoryStore::new();
    let body = br#"{"webhook_type":"status.updated"}"#;
    let got = accept(
        &store,
        endpoint,
        event("e1", "status.updated"),
        body,
        start(),
    )
    .await
    .unwrap();
    let Intake::Accepted { key, subscribers } = got else {
        panic!("{got:?}")
    };
    assert_eq!(subscribers, 1, "only the subscriber of every type");
    assert_eq!(key, outbox::event_key("didit", Some("e1"), body));
    let lease = Duration::from_secs(30);
    let claimed = store
        .claim(&queue("all"), 10, lease, start())
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "released at once");
    assert!(
        store
            .claim(&queue("decisions"), 10, lease, start())
            .await
            .unwrap()
            .is_empty()
    );

    // The same event again, within the window: refused, and nothing more is kept.
    let again = accept(
        &store,
        endpoint,
        event("e1", "status.updated"),
        body,
        start(),
    )
    .await
    .unwrap();
    assert_eq!(again, Intake::Replayed);
    let later = start() + Duration::from_secs(1);
    let all = store
        .messages(&queue("all"), None, 10, later)
        .await
        .unwrap();
    assert_eq!(all.len(), 1, "the replay's copy was discarded: {all:?}");
    assert!(matches!(all[0].state, MessageState::Leased { .. }));

    // Past the window the key is new again.
    assert_eq!(endpoint.replay_window, Duration::from_secs(600));
    let past = start() + endpoint.replay_window + Duration::from_secs(1);
    let fresh = accept(&store, endpoint, event("e1", "decision"), body, past)
        .await
        .unwrap();
    assert!(
        matches!(fresh, Intake::Accepted { subscribers: 2, .. }),
        "{fresh:?}"
    );
}

#[tokio::test]
async fn an_event_the_store_cannot_keep_is_taken_as_new_when_it_comes_again() {
    let dir = tempfile::tempdir().unwrap();
    let w = webhooks(dir.path());
    let endpoint = &w.endpoints[0];
    // Room for two messages: the event's two copies, not the subscribers' records that
    // follow them.
    let store = MemoryStore::with_capacity(100, 2);
    let body = b"{}";
    let failed = accept(&store, endpoint, event("e2", "decision"), body, start()).await;
    assert!(matches!(failed, Err(IntakeError::Outbox(_))), "{failed:?}");
    assert!(
        store
            .messages(&queue("all"), None, 10, start())
            .await
            .unwrap()
            .is_empty(),
        "what was written is discarded"
    );
    // The provider retries; this time there is room.
    let roomy = MemoryStore::with_capacity(100, 10);
    let retried = accept(&roomy, endpoint, event("e2", "decision"), body, start())
        .await
        .unwrap();
    assert!(matches!(retried, Intake::Accepted { .. }));
    // And against the same store, once there is room: no nonce was left behind.
    let one = accept(
        &store,
        endpoint,
        event("e3", "status.updated"),
        body,
        start(),
    )
    .await
    .unwrap();
    assert!(matches!(one, Intake::Accepted { subscribers: 1, .. }));
}

#[tokio::test]
async fn an_event_whose_replay_check_the_store_refused_outright_is_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let w = webhooks(dir.path());
    let endpoint = &w.endpoints[0];
    // Room for the event's copies, none for its nonce: the store refuses that write without
    // making it (as a redb file with too many writes waiting does). Were the copies kept, a
    // replay posted while the store refuses writes would be delivered after its hold.
    let store = MemoryStore::with_capacity(0, 100);
    let failed = accept(&store, endpoint, event("e4", "decision"), b"{}", start()).await;
    assert!(
        matches!(failed, Err(IntakeError::Nonce(StoreError::Full { .. }))),
        "{failed:?}"
    );
    for name in ["all", "decisions"] {
        assert!(
            store
                .messages(&queue(name), None, 10, start())
                .await
                .unwrap()
                .is_empty(),
            "a copy was kept for {name}"
        );
    }
}
