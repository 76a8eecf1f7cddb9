//! The subscribers the deliverer has looked after, recorded in the state store. One that a
//! reload or a restart removed is no longer in the plan, and nothing else names its queues:
//! its delivered copies and dead letters, sealed but personal data, would stay for good.
//! Each housekeeping round records the plan's subscribers, and purges those recorded but no
//! longer configured at their retention, until both their queues are empty and the records
//! go.
//!
//! The records are the messages of one queue, [`REGISTRY`], which nothing claims: per
//! subscriber, its webhook and name, and the `retry.max_age` and `dead_letter_retention` in
//! force when it was last configured. No personal data. While replicas disagree (a rolling
//! change), each writes the record of its own configuration in place of the other's every
//! round, so the record left is the last one written; should several be left, a removed
//! subscriber's dead letters are kept for the longest they say. A record that does not
//! parse is dropped.
//!
//! Every event written to a subscriber's queue is followed by a record of the subscriber
//! ([`record_written`]), whatever the plan says. That keeps every message in the queues
//! tracked, however the writes and the rounds interleave: a round deletes only records it
//! read, and only once it then found both queues empty; a record written after an event
//! was, if that round read it, read before the queues were counted, and so were counted
//! with the event in them. A request still on the snapshot before a reload (or on a
//! replica not yet changed) may thus write for a subscriber whose records just went: its
//! record comes back with the event. Waiting some rounds before deleting would not do: a
//! write can be late by any time (a slow store). Likewise, a round that keeps one record of
//! a configured subscriber keeps the newest, or writes a new one: never an older record in
//! place of one written after an event.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use idgate_store::{MessageId, NewMessage, Queue, QueueName, QueueStats, StoreError};
use serde::{Deserialize, Serialize};

use super::{Plan, Subscriber, purge_queues};
use crate::outbox;

/// The queue of the records: `webhook.` and one word, where a subscriber's queues have a
/// webhook and a subscriber name.
pub(crate) const REGISTRY: &str = "webhook.subscribers";
/// Records read per call.
const PAGE: usize = 256;
/// The configuration's defaults for `retry.max_age` (24 h) and `dead_letter_retention`
/// (30 days): the dead letters' keep of a record that says neither.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_DEAD_LETTER_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// One subscriber, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    webhook: String,
    subscriber: String,
    #[serde(default)]
    max_age_ms: Option<u64>,
    #[serde(default)]
    dead_letter_retention_ms: Option<u64>,
}

fn millis(d: Duration) -> Option<u64> {
    Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Record {
    fn of(sub: &Subscriber) -> Self {
        Self::new(
            &sub.webhook,
            &sub.name,
            sub.retry.max_age,
            sub.dead_letter_retention,
        )
    }

    fn new(
        webhook: &str,
        subscriber: &str,
        max_age: Duration,
        dead_letter_retention: Duration,
    ) -> Self {
        Self {
            webhook: webhook.to_owned(),
            subscriber: subscriber.to_owned(),
            max_age_ms: millis(max_age),
            dead_letter_retention_ms: millis(dead_letter_retention),
        }
    }

    /// Adds this record to the registry.
    async fn push(
        &self,
        store: &impl Queue,
        registry: &QueueName,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        // (Names and numbers always serialize.)
        let Ok(payload) = serde_json::to_vec(self) else {
            return Ok(());
        };
        let message = NewMessage {
            payload,
            order_key: None,
            max_attempts: u32::MAX,
            not_before: None,
        };
        store.push(registry, message, now).await.map(|_| ())
    }

    fn names(&self) -> (String, String) {
        (self.webhook.clone(), self.subscriber.clone())
    }

    /// Names as the configuration allows them, so that the queues they name are a
    /// subscriber's and no other.
    fn is_valid(&self) -> bool {
        let name = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        name(&self.webhook) && name(&self.subscriber)
    }

    /// How long a dead letter is kept after its event was received.
    fn keep(&self) -> Duration {
        let or = |ms: Option<u64>, default| ms.map_or(default, Duration::from_millis);
        or(self.max_age_ms, DEFAULT_MAX_AGE).saturating_add(or(
            self.dead_letter_retention_ms,
            DEFAULT_DEAD_LETTER_RETENTION,
        ))
    }
}

/// What housekeeping remembers between rounds.
#[derive(Debug, Default)]
pub(crate) struct Looking {
    /// Removed subscribers whose waiting events were reported (once each).
    reported: HashSet<(String, String)>,
    /// The last round could not read or write the records (said once, until it can).
    pub(crate) failing: bool,
}

/// Every record: its id, and what it says when it can be read.
async fn read(
    store: &impl Queue,
    registry: &QueueName,
    now: SystemTime,
) -> Result<Vec<(MessageId, Option<Record>)>, StoreError> {
    let mut records = Vec::new();
    let mut after = None;
    loop {
        let page = store.messages(registry, after.as_ref(), PAGE, now).await?;
        for info in &page {
            // Gone meanwhile (another replica dropped it): nothing to read.
            if let Some((_, payload)) = store.peek(registry, &info.id, now).await? {
                records.push((info.id.clone(), serde_json::from_slice(&payload).ok()));
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.id.clone()),
            _ => return Ok(records),
        }
    }
}

/// Records the plan's subscribers, and purges the queues of those recorded that it no longer
/// has. An error about one removed subscriber is logged and the others are still looked at.
pub(crate) async fn look_after(
    store: &impl Queue,
    plan: &Plan,
    looking: &mut Looking,
    now: SystemTime,
) -> Result<(), StoreError> {
    let registry = QueueName::new(REGISTRY)?;
    let mut recorded: BTreeMap<(String, String), Vec<(MessageId, Record)>> = BTreeMap::new();
    for (id, record) in read(store, &registry, now).await? {
        match record {
            Some(r) if r.is_valid() => recorded.entry(r.names()).or_default().push((id, r)),
            _ => {
                store.delete_message(&registry, &id, now).await?;
            }
        }
    }
    for sub in &plan.subscribers {
        let ours = Record::of(sub);
        let records = recorded.remove(&ours.names()).unwrap_or_default();
        // One record, saying what is configured now: the newest, when it does; else a new
        // one, written before the others go (see the module documentation).
        let kept = records
            .last()
            .filter(|(_, r)| *r == ours)
            .map(|_| records.len() - 1);
        if kept.is_none() {
            ours.push(store, &registry, now).await?;
        }
        for (i, (id, _)) in records.iter().enumerate() {
            if Some(i) != kept {
                store.delete_message(&registry, id, now).await?;
            }
        }
    }
    for ((webhook, subscriber), records) in recorded {
        if let Err(e) = purge_removed(
            store,
            &registry,
            (&webhook, &subscriber),
            &records,
            looking,
            now,
        )
        .await
        {
            tracing::warn!(webhook, subscriber, error = %e, "cannot purge the outbox of a webhook subscriber no longer configured; trying again later");
        }
    }
    Ok(())
}

/// Records `subscribers` of `webhook` again, with the `max_age` and `dead_letter_retention`
/// of the configuration that just wrote an event to each one's queue: called after the
/// write, so that the event is tracked even if its subscriber was removed meanwhile (see the
/// module documentation). A configured subscriber's extra records go at the next round.
pub(crate) async fn record_written(
    store: &impl Queue,
    webhook: &str,
    subscribers: &[&str],
    (max_age, dead_letter_retention): (Duration, Duration),
    now: SystemTime,
) -> Result<(), StoreError> {
    let registry = QueueName::new(REGISTRY)?;
    for subscriber in subscribers {
        Record::new(webhook, subscriber, max_age, dead_letter_retention)
            .push(store, &registry, now)
            .await?;
    }
    Ok(())
}

/// Purges what outlived its retention in the queues of a subscriber no longer configured:
/// delivered copies when they come due (each was kept for the retention of its day), dead
/// letters after the longest keep its records say. The records go once both queues are
/// empty; events still waiting for it stay (and keep them).
async fn purge_removed(
    store: &impl Queue,
    registry: &QueueName,
    (webhook, subscriber): (&str, &str),
    records: &[(MessageId, Record)],
    looking: &mut Looking,
    now: SystemTime,
) -> Result<(), StoreError> {
    let queue = outbox::queue(webhook, subscriber)?;
    let delivered = outbox::delivered_queue(webhook, subscriber)?;
    let keep = records
        .iter()
        .map(|(_, r)| r.keep())
        .max()
        .unwrap_or(DEFAULT_MAX_AGE.saturating_add(DEFAULT_DEAD_LETTER_RETENTION));
    let purged = purge_queues(store, &queue, &delivered, keep, now).await?;
    if purged > 0 {
        tracing::info!(
            webhook,
            subscriber,
            purged,
            "purged the delivered copies and dead letters whose retention ended, of a webhook subscriber no longer configured"
        );
    }
    let (events, copies) = (
        store.stats(&queue, now).await?,
        store.stats(&delivered, now).await?,
    );
    let waiting = events.ready + events.waiting + events.leased;
    let names = (webhook.to_owned(), subscriber.to_owned());
    if events == QueueStats::default() && copies == QueueStats::default() {
        for (id, _) in records {
            store.delete_message(registry, id, now).await?;
        }
        looking.reported.remove(&names);
        tracing::info!(
            webhook,
            subscriber,
            "the outbox of a webhook subscriber no longer configured is empty"
        );
    } else if waiting > 0 && looking.reported.insert(names) {
        tracing::warn!(
            webhook,
            subscriber,
            events = waiting,
            "webhook events wait for a subscriber that is no longer configured: they are delivered once it is configured again, and never purged"
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(super) mod tests {
    use std::sync::Arc;

    use idgate_config::{RetryPolicy, SubscriberConfig, WebhookConfig, WebhookScheme};
    use idgate_secrets::SecretRef;
    use idgate_store::{MemoryStore, StateStore};

    use super::*;
    use crate::delivery::Deliverer;
    use crate::intake::{self, Event, Intake};
    use crate::metrics::DeliveryMetrics;
    use crate::outbox::OutboxKeys;
    use crate::setup::Webhooks;

    const MINUTE: Duration = Duration::from_secs(60);

    /// A file only its owner reads, under `dir`.
    fn private_file(dir: &std::path::Path, name: &str, content: &str) -> SecretRef {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        SecretRef::File(path)
    }

    /// Webhook `didit` with `subscribers`: copies kept a minute, dead letters a minute past
    /// a maximum age of a minute.
    pub(in crate::delivery) fn webhook(
        dir: &std::path::Path,
        subscribers: &[&str],
    ) -> WebhookConfig {
        let secret = private_file(
            dir,
            "subscriber.secret",
            "subscriber-hmac-secret-for-the-tests",
        );
        WebhookConfig {
            name: "didit".into(),
            path: "/webhooks/didit".into(),
            scheme: WebhookScheme::Didit,
            v2_form: None,
            allow_sha1: false,
            secrets: vec![private_file(dir, "didit.secret", "didit secret")],
            tolerance: Duration::from_secs(300),
            replay_window: None,
            event_time: None,
            source_cidrs: Vec::new(),
            max_body_bytes: 1 << 20,
            outbox_keys: vec![private_file(dir, "outbox.key", &"05".repeat(32))],
            retry: RetryPolicy {
                base: Duration::from_millis(20),
                max: Duration::from_millis(100),
                max_age: MINUTE,
            },
            delivery_timeout: Duration::from_secs(2),
            retention: MINUTE,
            dead_letter_retention: MINUTE,
            subscribers: subscribers
                .iter()
                .map(|name| SubscriberConfig {
                    name: (*name).into(),
                    url: "https://kyc.internal/events".parse().unwrap(),
                    secret: secret.clone(),
                    masking: None,
                    events: Vec::new(),
                    ca: None,
                })
                .collect(),
        }
    }

    /// Subscriber `name` of [`webhook`] `didit`.
    pub(in crate::delivery) fn subscriber(dir: &std::path::Path, name: &str) -> Arc<Subscriber> {
        let webhook = webhook(dir, &[name]);
        let keys = Arc::new(OutboxKeys::from_keys(&[[5u8; 32]]).unwrap());
        Arc::new(Subscriber::load(&webhook, &webhook.subscribers[0], keys, None).unwrap())
    }

    fn deliverer(store: &StateStore, subscribers: Vec<Arc<Subscriber>>) -> Arc<Deliverer> {
        let d = Deliverer::new(store.clone(), Arc::new(|| None), DeliveryMetrics::default());
        d.set_plan(Arc::new(Plan { subscribers }));
        d
    }

    /// A delivered copy kept for the subscriber's retention, as a delivery keeps it.
    async fn delivered_copy(store: &StateStore, sub: &Subscriber, now: SystemTime) {
        let copy = NewMessage {
            payload: b"sealed".to_vec(),
            order_key: None,
            max_attempts: u32::MAX,
            not_before: Some(now + sub.retention),
        };
        store.push(&sub.delivered, copy, now).await.unwrap();
    }

    /// An event the subscriber refused: a dead letter, received at `now`.
    async fn dead_letter(store: &StateStore, sub: &Subscriber, now: SystemTime) {
        let event = NewMessage {
            payload: b"sealed".to_vec(),
            order_key: Some("sess-1".into()),
            max_attempts: 5,
            not_before: None,
        };
        store.push(&sub.queue, event, now).await.unwrap();
        let claimed = store.claim(&sub.queue, 1, MINUTE, now).await.unwrap();
        store
            .bury(&sub.queue, &claimed[0].lease, "refused")
            .await
            .unwrap();
    }

    async fn records(store: &StateStore, now: SystemTime) -> usize {
        let registry = QueueName::new(REGISTRY).unwrap();
        store
            .messages(&registry, None, PAGE, now)
            .await
            .unwrap()
            .len()
    }

    #[tokio::test]
    async fn a_removed_subscribers_delivered_copies_are_purged_at_their_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::from(MemoryStore::new());
        let (kyc, audit) = (
            subscriber(dir.path(), "kyc"),
            subscriber(dir.path(), "audit"),
        );
        let d = deliverer(&store, vec![kyc.clone(), audit.clone()]);
        let mut looking = Looking::default();
        let t0 = SystemTime::now();
        d.housekeeping_round(&mut looking, t0).await;
        assert_eq!(records(&store, t0).await, 2, "each subscriber is recorded");
        for sub in [&kyc, &audit] {
            delivered_copy(&store, sub, t0).await;
        }
        dead_letter(&store, &kyc, t0).await;

        // A reload removes `kyc`: its copy goes when its retention ends, as `audit`'s does.
        d.set_plan(Arc::new(Plan {
            subscribers: vec![audit.clone()],
        }));
        let copies = |sub: Arc<Subscriber>, at: SystemTime| {
            let store = store.clone();
            async move { store.stats(&sub.delivered, at).await.unwrap().waiting }
        };
        let t = t0 + MINUTE / 2;
        d.housekeeping_round(&mut looking, t).await;
        assert_eq!(copies(kyc.clone(), t).await, 1, "kept for its retention");
        let t = t0 + MINUTE + Duration::from_secs(1);
        d.housekeeping_round(&mut looking, t).await;
        assert_eq!(
            store.stats(&kyc.delivered, t).await.unwrap(),
            QueueStats::default(),
            "the removed subscriber's copy outlived its retention"
        );
        assert_eq!(copies(audit.clone(), t).await, 0);
        // Its dead letter stays for the maximum age and the dead-letter retention.
        assert_eq!(store.dead_letters(&kyc.queue, t).await.unwrap().len(), 1);
        assert_eq!(records(&store, t).await, 2);

        let t = t0 + 2 * MINUTE + Duration::from_secs(1);
        d.housekeeping_round(&mut looking, t).await;
        assert!(store.dead_letters(&kyc.queue, t).await.unwrap().is_empty());
        // Both its queues empty: its record goes, `audit`'s stays.
        assert_eq!(records(&store, t).await, 1);
    }

    #[tokio::test]
    async fn a_subscriber_removed_by_a_restart_is_purged_and_its_waiting_events_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::from(MemoryStore::new());
        let kyc = subscriber(dir.path(), "kyc");
        let t0 = SystemTime::now();
        deliverer(&store, vec![kyc.clone()])
            .housekeeping_round(&mut Looking::default(), t0)
            .await;
        delivered_copy(&store, &kyc, t0).await;
        let waiting = NewMessage {
            payload: b"sealed".to_vec(),
            order_key: Some("sess-2".into()),
            max_attempts: 5,
            not_before: None,
        };
        store.push(&kyc.queue, waiting, t0).await.unwrap();

        // The next process runs without webhooks, on the same store.
        let next = deliverer(&store, Vec::new());
        let mut looking = Looking::default();
        let t = t0 + MINUTE + Duration::from_secs(1);
        next.housekeeping_round(&mut looking, t).await;
        assert_eq!(
            store.stats(&kyc.delivered, t).await.unwrap(),
            QueueStats::default()
        );
        // The event still to be delivered is never purged, and keeps the record.
        assert_eq!(store.stats(&kyc.queue, t).await.unwrap().ready, 1);
        assert_eq!(records(&store, t).await, 1);
        assert!(
            looking
                .reported
                .contains(&("didit".to_owned(), "kyc".to_owned()))
        );
    }

    #[tokio::test]
    async fn a_record_is_kept_once_and_follows_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::from(MemoryStore::new());
        let kyc = subscriber(dir.path(), "kyc");
        let registry = QueueName::new(REGISTRY).unwrap();
        let t0 = SystemTime::now();
        // A record another replica wrote with another retention, one that does not parse,
        // and the same subscriber recorded twice.
        let other = Record {
            dead_letter_retention_ms: Some(1),
            ..Record::of(&kyc)
        };
        for payload in [
            serde_json::to_vec(&other).unwrap(),
            b"not a record".to_vec(),
            serde_json::to_vec(&Record::of(&kyc)).unwrap(),
            serde_json::to_vec(&Record::of(&kyc)).unwrap(),
        ] {
            let message = NewMessage {
                payload,
                order_key: None,
                max_attempts: u32::MAX,
                not_before: None,
            };
            store.push(&registry, message, t0).await.unwrap();
        }
        let newest = read(&store, &registry, t0).await.unwrap().pop().unwrap().0;
        let d = deliverer(&store, vec![kyc.clone()]);
        d.housekeeping_round(&mut Looking::default(), t0).await;
        let left = read(&store, &registry, t0).await.unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(
            left[0],
            (newest, Some(Record::of(&kyc))),
            "the newest stays"
        );
        assert_eq!(Record::of(&kyc).keep(), 2 * MINUTE);
        // A record that says no retention: the configuration's defaults.
        let bare: Record =
            serde_json::from_str(r#"{"webhook":"didit","subscriber":"kyc"}"#).unwrap();
        assert_eq!(bare.keep(), Duration::from_secs(31 * 24 * 3600));
    }

    #[tokio::test]
    async fn an_event_written_after_a_removed_subscribers_record_went_is_recorded_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::from(MemoryStore::new());
        let mut config = webhook(dir.path(), &["kyc"]);
        config.retention = Duration::ZERO;
        let before = Webhooks::load(&[config], |_| None).unwrap();
        let kyc = before.plan.subscribers[0].clone();
        let d = deliverer(&store, before.plan.subscribers.clone());
        let mut looking = Looking::default();
        let t0 = SystemTime::now();
        d.housekeeping_round(&mut looking, t0).await;
        assert_eq!(records(&store, t0).await, 1);

        // A reload removes `kyc`, whose queues are empty: the next round deletes its record.
        d.set_plan(Arc::new(Plan::default()));
        d.housekeeping_round(&mut looking, t0).await;
        assert_eq!(records(&store, t0).await, 0);

        // A request still on the snapshot before the reload writes an event for `kyc`.
        let event = Event {
            event_id: Some("evt-late"),
            session_id: Some("sess-late"),
            event_type: Some("status.updated"),
            replay_key: "evt-late",
        };
        let got = intake::accept(&store, &before.endpoints[0], event, b"{}", t0)
            .await
            .unwrap();
        assert!(
            matches!(got, Intake::Accepted { subscribers: 1, .. }),
            "{got:?}"
        );

        // Its subscriber is recorded again with it: found by the next round, reported, and
        // the event kept to be delivered if `kyc` is configured again.
        assert_eq!(records(&store, t0).await, 1, "the event is not tracked");
        let t = t0 + MINUTE;
        d.housekeeping_round(&mut looking, t).await;
        assert_eq!(store.stats(&kyc.queue, t).await.unwrap().ready, 1);
        assert_eq!(records(&store, t).await, 1);
        assert!(
            looking
                .reported
                .contains(&("didit".to_owned(), "kyc".to_owned()))
        );
        let registry = QueueName::new(REGISTRY).unwrap();
        let left = read(&store, &registry, t).await.unwrap();
        assert_eq!(left[0].1, Some(Record::of(&kyc)));
    }
}
