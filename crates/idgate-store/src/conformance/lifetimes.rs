//! What every [`Queue`] must do for the outbox's housekeeping: a revived dead letter counts
//! its attempts from its revival and is safe from a purge that listed it before; copies
//! that came due are deleted without being read.

use std::time::{Duration, SystemTime};

use crate::{MessageState, NewMessage, Queue, QueueName};

const SEC: Duration = Duration::from_secs(1);

fn msg(payload: &str, max_attempts: u32, not_before: Option<SystemTime>) -> NewMessage {
    NewMessage {
        payload: payload.as_bytes().to_vec(),
        order_key: Some("s1".to_owned()),
        max_attempts,
        not_before,
    }
}

/// A dead letter listed for a purge, then revived: deleting it as a dead letter changes
/// nothing. Once dead again (buried, or its last lease run out) it goes.
pub async fn dead_letter_revived_before_its_purge(store: &impl Queue, start: SystemTime) {
    let q = QueueName::new("outbox:lifetimes-dead").unwrap();
    let lease = 30 * SEC;
    let a = store.push(&q, msg("a", 1, None), start).await.unwrap();
    let first = store.claim(&q, 1, lease, start).await.unwrap();
    store.bury(&q, &first[0].lease, "410").await.unwrap();
    let listed = store.dead_letters(&q, start).await.unwrap();
    assert_eq!(listed.len(), 1);

    // Revived between the purge's list and its delete.
    assert!(store.revive(&q, &a, start + SEC).await.unwrap());
    assert!(
        !store
            .delete_dead(&q, &listed[0].id, start + SEC)
            .await
            .unwrap(),
        "a revived message is not a dead letter"
    );
    let info = store.info(&q, &a, start + SEC).await.unwrap().unwrap();
    assert_eq!(info.state, MessageState::Ready);

    // Leased, waiting or ready: never deleted as a dead letter.
    let again = store.claim(&q, 1, lease, start + SEC).await.unwrap();
    assert!(!store.delete_dead(&q, &a, start + SEC).await.unwrap());
    // Its last lease runs out: dead, and deleted as such.
    assert_eq!(again.len(), 1);
    let later = start + SEC + lease;
    assert!(store.delete_dead(&q, &a, later).await.unwrap());
    assert!(store.info(&q, &a, later).await.unwrap().is_none());
    assert!(!store.delete_dead(&q, &a, later).await.unwrap());
}

/// A revived dead letter's attempts count from its revival, and it shows when that was.
pub async fn revived_attempts_count_from_the_revival(store: &impl Queue, start: SystemTime) {
    let q = QueueName::new("outbox:lifetimes-since").unwrap();
    let lease = 30 * SEC;
    let a = store.push(&q, msg("a", 5, None), start).await.unwrap();
    let first = store.claim(&q, 1, lease, start).await.unwrap();
    assert_eq!(first[0].attempts_since, start, "from the push");
    assert_eq!(first[0].enqueued_at, start);
    store.bury(&q, &first[0].lease, "410").await.unwrap();
    let dead = store.dead_letters(&q, start).await.unwrap();
    assert_eq!(dead[0].attempts_since, start);

    let revived_at = start + 3600 * SEC;
    assert!(store.revive(&q, &a, revived_at).await.unwrap());
    let info = store.info(&q, &a, revived_at).await.unwrap().unwrap();
    assert_eq!((info.enqueued_at, info.attempts_since), (start, revived_at));
    let again = store.claim(&q, 1, lease, revived_at).await.unwrap();
    assert_eq!(again[0].lease.attempt, 1);
    assert_eq!(again[0].enqueued_at, start, "still received then");
    assert_eq!(again[0].attempts_since, revived_at);
    store.ack(&q, &again[0].lease).await.unwrap();
}

/// Copies that came due are deleted, oldest first, up to the count asked for; the others
/// stay.
pub async fn due_copies_purged(store: &impl Queue, start: SystemTime) {
    let q = QueueName::new("outbox:lifetimes-copies").unwrap();
    let copy = |due: SystemTime| NewMessage {
        payload: vec![7; 1000],
        order_key: None,
        max_attempts: u32::MAX,
        not_before: Some(due),
    };
    for _ in 0..3 {
        store.push(&q, copy(start + 10 * SEC), start).await.unwrap();
    }
    let kept = store
        .push(&q, copy(start + 100 * SEC), start)
        .await
        .unwrap();
    let at = start + 10 * SEC;
    assert_eq!(store.purge_due(&q, 2, start).await.unwrap(), 0, "none due");
    assert_eq!(store.purge_due(&q, 2, at).await.unwrap(), 2);
    assert_eq!(store.purge_due(&q, 2, at).await.unwrap(), 1);
    assert_eq!(store.purge_due(&q, 2, at).await.unwrap(), 0);
    let left = store.messages(&q, None, 10, at).await.unwrap();
    assert_eq!(
        left.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        [kept]
    );
}
