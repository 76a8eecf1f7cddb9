//! What every [`Queue`] must do beyond delivery: burying a message at once, reading one
//! without claiming it, removing one, and listing a queue page by page.

use std::time::{Duration, SystemTime};

use crate::{MessageState, NewMessage, Queue, QueueName, StoreError};

const SEC: Duration = Duration::from_secs(1);

fn msg(payload: &str, order_key: Option<&str>) -> NewMessage {
    NewMessage {
        payload: payload.as_bytes().to_vec(),
        order_key: order_key.map(str::to_owned),
        max_attempts: 10,
        not_before: None,
    }
}

pub(super) async fn queue_admin(store: &impl Queue, start: SystemTime) {
    let q = QueueName::new("outbox:admin").unwrap();
    let lease = 30 * SEC;
    let a = store.push(&q, msg("a", Some("s1")), start).await.unwrap();
    let b = store.push(&q, msg("b", Some("s1")), start).await.unwrap();
    let c = store.push(&q, msg("c", None), start).await.unwrap();

    // Read without claiming: bookkeeping and payload, the message stays ready.
    let (info, payload) = store.peek(&q, &a, start).await.unwrap().unwrap();
    assert_eq!(
        (info.id.clone(), payload.as_slice()),
        (a.clone(), &b"a"[..])
    );
    assert_eq!(info.state, MessageState::Ready);
    assert_eq!(info.order_key.as_deref(), Some("s1"));
    assert_eq!(info.attempts, 0);
    assert!(
        store
            .peek(&q, &crate::MessageId::parse("999").unwrap(), start)
            .await
            .unwrap()
            .is_none()
    );

    // Bury: a dead letter at once with attempts left, and its key no longer held up.
    let claimed = store.claim(&q, 10, lease, start).await.unwrap();
    assert_eq!(claimed.len(), 2, "a and c");
    store
        .bury(&q, &claimed[0].lease, "410 from subscriber")
        .await
        .unwrap();
    assert!(matches!(
        store.bury(&q, &claimed[0].lease, "again").await,
        Err(StoreError::LeaseLost(_))
    ));
    let info = store.info(&q, &a, start).await.unwrap().unwrap();
    assert_eq!(info.state, MessageState::Dead);
    assert_eq!(info.last_error.as_deref(), Some("410 from subscriber"));
    assert_eq!(store.dead_letters(&q, start).await.unwrap().len(), 1);
    let next = store.claim(&q, 10, lease, start).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].payload, b"b");

    // A message pushed for later can be released at once, and only then.
    let mut held = msg("held", Some("s3"));
    held.not_before = Some(start + 60 * SEC);
    let h = store.push(&q, held, start).await.unwrap();
    assert!(!store.release(&q, &b, start).await.unwrap(), "b is leased");
    assert!(store.claim(&q, 10, lease, start).await.unwrap().is_empty());
    assert!(store.release(&q, &h, start).await.unwrap());
    assert!(
        !store.release(&q, &h, start).await.unwrap(),
        "ready already"
    );
    let released = store.claim(&q, 10, lease, start).await.unwrap();
    assert_eq!(released[0].payload, b"held");
    store.ack(&q, &released[0].lease).await.unwrap();

    // Listing pages through every state, oldest first.
    let all = store.messages(&q, None, 10, start).await.unwrap();
    let states: Vec<_> = all.iter().map(|m| (m.id.clone(), m.state)).collect();
    assert_eq!(
        states,
        [
            (a.clone(), MessageState::Dead),
            (
                b.clone(),
                MessageState::Leased {
                    until: start + lease
                }
            ),
            (
                c.clone(),
                MessageState::Leased {
                    until: start + lease
                }
            ),
        ]
    );
    let page = store.messages(&q, Some(&a), 1, start).await.unwrap();
    assert_eq!(
        page.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        std::slice::from_ref(&b)
    );
    assert!(
        store
            .messages(&q, Some(&c), 10, start)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.messages(&q, None, 0, start).await.unwrap().is_empty());

    // Removal: never a leased message; a dead letter or a ready one goes with its payload.
    assert!(
        !store.delete_message(&q, &b, start).await.unwrap(),
        "b is leased"
    );
    assert!(store.delete_message(&q, &a, start).await.unwrap());
    assert!(!store.delete_message(&q, &a, start).await.unwrap());
    assert!(store.peek(&q, &a, start).await.unwrap().is_none());
    assert!(store.dead_letters(&q, start).await.unwrap().is_empty());
    // Once its lease has run out, b can be removed too.
    assert!(store.delete_message(&q, &b, start + lease).await.unwrap());
    let left = store.messages(&q, None, 10, start + lease).await.unwrap();
    assert_eq!(left.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), [c]);
}
