//! How long a message lives in the outbox whatever its attempts come to: one whose
//! attempts never settle still becomes a dead letter at its maximum age, and only what the
//! store recorded is counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use idgate_store::{Claimed, MemoryStore, MessageState, Queue, StateStore};
use prometheus_client::registry::Registry;

use super::registry::tests::subscriber;
use super::{Deliverer, Subscriber, attempt};
use crate::metrics::DeliveryMetrics;
use crate::outbox::{self, NewEvent};

const MINUTE: Duration = Duration::from_secs(60);

/// A sealed event for `sub`, received at `at` and claimable at once.
async fn event(store: &StateStore, sub: &Subscriber, at: SystemTime) {
    let key = outbox::event_key("didit", Some("evt-1"), b"{}");
    let event = NewEvent {
        webhook: "didit",
        key: &key,
        event_type: Some("status.updated"),
        session: Some("sess-1"),
        body: br#"{"status":"Approved"}"#,
    };
    let held = outbox::hold(store, &sub.keys, event, &[&sub.name], at)
        .await
        .unwrap();
    outbox::release(store, &held, at).await.unwrap();
}

async fn claim(store: &StateStore, sub: &Subscriber, lease: Duration) -> Claimed {
    let mut claimed = store
        .claim(&sub.queue, 1, lease, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    claimed.remove(0)
}

#[tokio::test]
async fn a_message_whose_attempts_never_settle_is_a_dead_letter_after_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::from(MemoryStore::new());
    let sub = subscriber(dir.path(), "kyc");
    // Every attempt dies before it settles, as in a gateway killed mid-attempt: the SVID is
    // asked for just before the event is posted.
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let d = Deliverer::new(
        store.clone(),
        Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            panic!("the attempt dies before it settles");
        }),
        DeliveryMetrics::default(),
    );
    // Received longer ago than the maximum age (a minute), its earlier attempt unanswered:
    // claimed, and its lease left to run out.
    let received = SystemTime::now() - 2 * MINUTE;
    event(&store, &sub, received).await;
    let _lost = claim(&store, &sub, Duration::from_micros(1)).await;
    tokio::time::sleep(Duration::from_millis(2)).await;
    let message = claim(&store, &sub, MINUTE).await;
    assert_eq!(message.lease.attempt, 2);
    let id = message.lease.id.clone();

    let (d2, sub2) = (d.clone(), sub.clone());
    let task = tokio::spawn(async move { attempt::deliver(&d2, &sub2, message).await });
    let _ = task.await;

    let info = store
        .info(&sub.queue, &id, SystemTime::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.state, MessageState::Dead, "{info:?}");
    assert!(
        info.last_error
            .as_deref()
            .is_some_and(|e| e.contains("maximum age")),
        "{info:?}"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 0, "not attempted again");
}

/// A backlog older than its maximum age (an outage of the gateway or its store) is not
/// buried untried: each message is attempted once.
#[tokio::test]
async fn a_message_first_claimed_past_max_age_is_tried_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::from(MemoryStore::new());
    let sub = subscriber(dir.path(), "kyc");
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    // No SVID yet: the attempt is made, and ends as one to retry.
    let d = Deliverer::new(
        store.clone(),
        Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            None
        }),
        DeliveryMetrics::default(),
    );
    event(&store, &sub, SystemTime::now() - 2 * MINUTE).await;
    let message = claim(&store, &sub, MINUTE).await;
    assert_eq!(message.lease.attempt, 1);
    attempt::deliver(&d, &sub, message).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "not attempted");
}

#[tokio::test]
async fn an_outcome_the_store_did_not_record_is_not_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::from(MemoryStore::new());
    let sub = subscriber(dir.path(), "kyc");
    let mut registry = Registry::with_prefix("idgate");
    let metrics = DeliveryMetrics::register(&mut registry);
    // No SVID yet: every attempt is one to retry.
    let d = Deliverer::new(store.clone(), Arc::new(|| None), metrics);
    event(&store, &sub, SystemTime::now()).await;
    // A claim whose lease ran out and was taken over: its nack is refused (LeaseLost).
    let stale = claim(&store, &sub, Duration::from_micros(1)).await;
    tokio::time::sleep(Duration::from_millis(2)).await;
    let current = claim(&store, &sub, MINUTE).await;
    attempt::deliver(&d, &sub, stale).await;
    let text = || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    };
    assert!(!text().contains(r#"outcome="retried""#), "{}", text());

    // The current claim's nack is recorded, and counted.
    attempt::deliver(&d, &sub, current).await;
    let retried =
        r#"idgate_webhook_deliveries_total{webhook="didit",subscriber="kyc",outcome="retried"} 1"#;
    assert!(text().lines().any(|l| l == retried), "{}", text());
}
