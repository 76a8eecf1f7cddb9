//! The behaviour every backend must show, one suite per trait. The in-memory and redb
//! backends run these in their tests; a new backend (Redis) runs the same suites against a
//! fresh database. Each suite starts from an empty store and uses times from `start` on, so
//! a backend whose server keeps its own clock can pass the present.
//!
//! Exposed with the `conformance` feature for backends tested outside this crate.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

mod admin;
mod lifetimes;

pub use lifetimes::{
    dead_letter_revived_before_its_purge, due_copies_purged,
    revived_attempts_count_from_the_revival,
};

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{
    ApiKeyStore, CounterKey, Counters, GcraLimit, GcraTake, KeyState, MessageId, MessageState,
    NackOutcome, NewMessage, Nonce, Nonces, ObjectId, Owner, Ownership, Queue, QueueName,
    QueueStats, StoreError, StoredKey,
};

fn time(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A key record for tests, created at a fixed time.
pub fn sample_key(id: &str, name: &str) -> StoredKey {
    StoredKey {
        id: id.to_owned(),
        name: name.to_owned(),
        hash: [7; 32],
        pepper_id: "0011223344556677".to_owned(),
        scopes: vec!["sessions:create".to_owned()],
        created_at: time(1_800_000_000),
        expires_at: None,
        bound_spiffe: None,
        revoked_at: None,
        replaced_by: None,
        grace_until: None,
        tag: Some([9; 32]),
    }
}

use sample_key as key;

const ONE: GcraTake = GcraTake::EXACTLY_ONE;

/// What every [`ApiKeyStore`] must do. Starts from an empty store.
pub async fn api_keys(store: &impl ApiKeyStore) {
    let v0 = store.version().await.unwrap();
    let mut a = key("aaaa", "onboarding");
    a.bound_spiffe = Some("spiffe://example.org/ns/kyc/sa/onboarding".to_owned());
    a.expires_at = Some(time(1_900_000_000));
    store.insert(&a).await.unwrap();
    assert_ne!(
        store.version().await.unwrap(),
        v0,
        "a write changes the version"
    );
    assert!(matches!(store.insert(&a).await, Err(StoreError::Exists(id)) if id == "aaaa"));
    assert_eq!(store.get("aaaa").await.unwrap(), Some(a.clone()));
    assert_eq!(store.get("nope").await.unwrap(), None);

    let mut b = key("bbbb", "onboarding");
    b.created_at = time(1_800_000_100);
    b.tag = Some([8; 32]);
    let old = store.rotate("aaaa", &b, time(1_800_086_400)).await.unwrap();
    assert_eq!(old.replaced_by.as_deref(), Some("bbbb"));
    assert_eq!(old.tag, a.tag, "a rotation keeps the old record's tag");
    assert_eq!(store.get("bbbb").await.unwrap(), Some(b.clone()));
    assert_eq!(old.grace_until, Some(time(1_800_086_400)));
    assert_eq!(
        old.state(time(1_800_000_200)),
        KeyState::Rotated {
            until: time(1_800_086_400)
        }
    );
    assert_eq!(old.state(time(1_800_086_400)), KeyState::Expired);
    assert!(matches!(
        store.rotate("aaaa", &key("cccc", "x"), time(0)).await,
        Err(StoreError::AlreadyRotated { by, .. }) if by == "bbbb"
    ));
    assert!(
        store.get("cccc").await.unwrap().is_none(),
        "a refused rotation adds nothing"
    );
    assert!(matches!(
        store.rotate("zzzz", &key("cccc", "x"), time(0)).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.rotate("aaaa", &b, time(0)).await,
        Err(StoreError::Exists(_)) | Err(StoreError::AlreadyRotated { .. })
    ));

    let version = store.version().await.unwrap();
    let revoked = store.revoke("bbbb", time(1_800_000_300)).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(time(1_800_000_300)));
    assert_eq!(revoked.tag, b.tag, "a revocation keeps the record's tag");
    assert_ne!(store.version().await.unwrap(), version);
    let again = store.revoke("bbbb", time(1_800_000_999)).await.unwrap();
    assert_eq!(
        again.revoked_at,
        Some(time(1_800_000_300)),
        "first revocation time kept"
    );
    assert_eq!(again.state(time(1_800_000_301)), KeyState::Revoked);
    assert!(matches!(
        store.revoke("nope", time(0)).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.rotate("bbbb", &key("dddd", "x"), time(0)).await,
        Err(StoreError::Revoked(_))
    ));

    let ids: Vec<String> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(ids, ["aaaa", "bbbb"]);
}

fn ck(name: &str) -> CounterKey {
    CounterKey::new(name).unwrap()
}

const SEC: Duration = Duration::from_secs(1);

/// What every [`Counters`] must do.
pub async fn counters(store: &impl Counters, start: SystemTime) {
    let fails = ck("fail:addr=192.0.2.7");
    let window = 60 * SEC;
    assert_eq!(store.get(&fails, start).await.unwrap(), None);
    let first = store.increment(&fails, 1, window, start).await.unwrap();
    assert_eq!((first.count, first.resets_at), (1, start + window));
    let later = start + 10 * SEC;
    let second = store.increment(&fails, 2, window, later).await.unwrap();
    assert_eq!(second.count, 3);
    assert_eq!(
        second.resets_at,
        start + window,
        "the window is fixed at the first increment"
    );
    assert_eq!(store.get(&fails, later).await.unwrap(), Some(second));
    assert_eq!(
        store.get(&fails, start + window).await.unwrap(),
        None,
        "expired at its reset time"
    );
    let fresh = store
        .increment(&fails, 1, window, start + window)
        .await
        .unwrap();
    assert_eq!(
        (fresh.count, fresh.resets_at),
        (1, start + window * 2),
        "an expired window starts again from zero"
    );
    assert!(store.reset(&fails).await.unwrap());
    assert!(!store.reset(&fails).await.unwrap());
    assert_eq!(store.get(&fails, start + window).await.unwrap(), None);

    // A lockout: three failures within the window lock the source for a cool-down.
    let (lock, cooldown) = (ck("lock:addr=192.0.2.8"), 300 * SEC);
    let f = ck("fail:addr=192.0.2.8");
    for n in 1..=3u64 {
        let c = store.increment(&f, 1, window, start).await.unwrap();
        if c.count >= 3 {
            store.increment(&lock, 1, cooldown, start).await.unwrap();
        }
        assert_eq!(c.count, n);
    }
    let locked = store.get(&lock, start + SEC).await.unwrap().unwrap();
    assert_eq!(locked.resets_at, start + cooldown);
    assert_eq!(store.get(&lock, start + cooldown).await.unwrap(), None);
    assert_eq!(
        store.get(&ck("lock:addr=192.0.2.9"), start).await.unwrap(),
        None,
        "another source is not locked"
    );

    // GCRA: 10 a second, bursts of 2; a GCRA key and a window key of one name are apart.
    let limit = GcraLimit::per(10, SEC, 2).unwrap();
    let rl = ck("fail:addr=192.0.2.7");
    let a = store.gcra(&rl, &limit, ONE, start).await.unwrap();
    let b = store.gcra(&rl, &limit, ONE, start).await.unwrap();
    let c = store.gcra(&rl, &limit, ONE, start).await.unwrap();
    assert_eq!((a.allowed, a.remaining), (true, 1));
    assert_eq!((b.allowed, b.remaining), (true, 0));
    assert!(!c.allowed);
    assert_eq!(c.retry_after, Duration::from_millis(100));
    assert_eq!(store.get(&rl, start).await.unwrap(), None);
    let d = store
        .gcra(&rl, &limit, ONE, start + Duration::from_millis(100))
        .await
        .unwrap();
    assert!(d.allowed, "one more after one emission interval");
    let idle = store
        .gcra(&rl, &limit, ONE, start + 10 * SEC)
        .await
        .unwrap();
    assert_eq!((idle.allowed, idle.remaining), (true, 1));

    // Sweeping removes what expired and keeps what lives.
    let keep = ck("keep");
    store
        .increment(&keep, 1, 3600 * SEC, start + 10 * SEC)
        .await
        .unwrap();
    let swept = store.sweep(start + 1000 * SEC).await.unwrap();
    assert!(swept <= 4, "{swept}");
    assert_eq!(store.sweep(start + 1000 * SEC).await.unwrap(), 0);
    assert_eq!(
        store
            .get(&keep, start + 1000 * SEC)
            .await
            .unwrap()
            .map(|c| c.count),
        Some(1)
    );
}

/// The decisions of `gcra_many`, every one of which must have come.
async fn every_answer(
    store: &impl Counters,
    checks: &[crate::GcraCheck<'_>],
    now: SystemTime,
) -> Vec<crate::GcraDecision> {
    let answers = store.gcra_many(checks, now).await;
    answers.into_iter().collect::<Result<_, _>>().unwrap()
}

/// What every [`Counters::gcra_many`] must do: the decisions of `gcra` calls one after the
/// other, each limit on its own.
pub async fn gcra_many(store: &impl Counters, start: SystemTime) {
    let tight = GcraLimit::per(1, SEC, 1).unwrap();
    let loose = GcraLimit::per(10, SEC, 5).unwrap();
    let (a, b, c) = (ck("many:a"), ck("many:b"), ck("many:c"));
    assert!(every_answer(store, &[], start).await.is_empty());
    let first = every_answer(store, &[(&a, &tight, ONE), (&b, &loose, ONE)], start).await;
    assert_eq!(
        first
            .iter()
            .map(|d| (d.allowed, d.remaining))
            .collect::<Vec<_>>(),
        [(true, 0), (true, 4)]
    );
    let second = every_answer(store, &[(&a, &tight, ONE), (&b, &loose, ONE)], start).await;
    assert!(!second[0].allowed);
    assert_eq!(second[0].retry_after, SEC);
    assert_eq!(
        (second[1].allowed, second[1].remaining),
        (true, 3),
        "a limit that admits consumes, even when another refuses"
    );
    let twice = every_answer(store, &[(&c, &tight, ONE), (&c, &tight, ONE)], start).await;
    assert_eq!(
        twice.iter().map(|d| d.allowed).collect::<Vec<_>>(),
        [true, false],
        "one key twice: the second check sees the first"
    );
    let single = store.gcra(&b, &loose, ONE, start).await.unwrap();
    assert_eq!((single.allowed, single.remaining), (true, 2));

    // A lease takes what there is room for, at least one: b has two left, then none.
    let d = ck("many:d");
    let leased = every_answer(
        store,
        &[
            (&b, &loose, GcraTake::up_to(4)),
            (&d, &loose, GcraTake::up_to(4)),
        ],
        start,
    )
    .await;
    assert_eq!(
        leased
            .iter()
            .map(|d| (d.allowed, d.granted, d.remaining))
            .collect::<Vec<_>>(),
        [(true, 2, 0), (true, 4, 1)]
    );
    let none_left = store
        .gcra(&b, &loose, GcraTake::up_to(4), start)
        .await
        .unwrap();
    assert_eq!((none_left.allowed, none_left.granted), (false, 0));
    assert_eq!(none_left.retry_after, Duration::from_millis(100));
}

/// Concurrent increments of one key from `tasks` tasks: none is lost, and each caller sees
/// a count of its own.
pub async fn counters_concurrently<S: Counters + 'static>(store: Arc<S>, start: SystemTime) {
    let (tasks, each) = (8u64, 25u64);
    let key = ck("concurrent");
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (store, key) = (store.clone(), key.clone());
        handles.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..each {
                let c = store.increment(&key, 1, 3600 * SEC, start).await.unwrap();
                seen.push(c.count);
            }
            seen
        }));
    }
    let mut all = HashSet::new();
    for h in handles {
        for n in h.await.unwrap() {
            assert!(all.insert(n), "count {n} seen twice");
        }
    }
    assert_eq!(all, (1..=tasks * each).collect::<HashSet<_>>());
    let total = store.get(&key, start).await.unwrap().unwrap().count;
    assert_eq!(total, tasks * each);
}

/// How a backend gets rid of expired entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// `sweep` removes them and counts them (memory, redb).
    Swept,
    /// They vanish by themselves (Redis expiries) and `sweep` returns 0.
    ByItself,
}

fn check_swept(expiry: Expiry, swept: u64, expected: std::ops::RangeInclusive<u64>) {
    match expiry {
        Expiry::Swept => assert!(expected.contains(&swept), "{swept} swept"),
        Expiry::ByItself => assert_eq!(swept, 0, "entries expire by themselves"),
    }
}

/// What every [`Nonces`] must do, concurrency included.
pub async fn nonces<S: Nonces + 'static>(store: Arc<S>, start: SystemTime) {
    nonces_expiring(store, start, Expiry::Swept).await;
}

/// [`nonces`] for a backend whose entries expire as `expiry` says.
pub async fn nonces_expiring<S: Nonces + 'static>(
    store: Arc<S>,
    start: SystemTime,
    expiry: Expiry,
) {
    let n = Nonce::new("didit:evt_0001").unwrap();
    let window = 300 * SEC;
    assert!(store.insert_if_absent(&n, window, start).await.unwrap());
    assert!(
        !store
            .insert_if_absent(&n, window, start + 299 * SEC)
            .await
            .unwrap(),
        "a replay within the window is refused"
    );
    assert!(
        store
            .insert_if_absent(&n, window, start + window)
            .await
            .unwrap(),
        "after the window the nonce is new again"
    );
    let other = Nonce::new("didit:evt_0002").unwrap();
    assert!(store.insert_if_absent(&other, window, start).await.unwrap());
    check_swept(
        expiry,
        store.sweep(start + 2 * window).await.unwrap(),
        1..=u64::MAX,
    );
    assert_eq!(store.sweep(start + 2 * window).await.unwrap(), 0);
    assert!(
        store
            .insert_if_absent(&other, window, start + 2 * window)
            .await
            .unwrap(),
        "an expired nonce is new again"
    );

    let racing = Nonce::new("didit:evt_race").unwrap();
    let mut handles = Vec::new();
    for _ in 0..16 {
        let (store, racing) = (store.clone(), racing.clone());
        handles.push(tokio::spawn(async move {
            store
                .insert_if_absent(&racing, window, start)
                .await
                .unwrap()
        }));
    }
    let mut fresh = 0;
    for h in handles {
        fresh += usize::from(h.await.unwrap());
    }
    assert_eq!(fresh, 1, "exactly one of the racers sees the nonce as new");
}

/// What every [`Ownership`] must do.
pub async fn ownership(store: &impl Ownership, start: SystemTime) {
    ownership_expiring(store, start, Expiry::Swept).await;
}

/// [`ownership`] for a backend whose entries expire as `expiry` says.
pub async fn ownership_expiring(store: &impl Ownership, start: SystemTime, expiry: Expiry) {
    let session = ObjectId::new("6f1c2a70-0b5e-4c43-9d8f-2a3e1b9c7d11").unwrap();
    let (alice, bob) = (
        Owner::new("spiffe://example.org/ns/kyc/sa/onboarding").unwrap(),
        Owner::new("apikey:batch").unwrap(),
    );
    let retention = 3600 * SEC;
    assert_eq!(store.get(&session, start).await.unwrap(), None);
    let rec = store.put(&session, &alice, retention, start).await.unwrap();
    assert_eq!(
        (rec.owner.clone(), rec.expires_at),
        (alice.clone(), start + retention)
    );
    let taken = store
        .put(&session, &bob, retention, start + SEC)
        .await
        .unwrap();
    assert_eq!(taken, rec, "another owner cannot take a live record over");
    let renewed = store
        .put(&session, &alice, retention, start + 10 * SEC)
        .await
        .unwrap();
    assert_eq!(renewed.expires_at, start + 10 * SEC + retention);
    assert_eq!(
        store.get(&session, start + 20 * SEC).await.unwrap(),
        Some(renewed.clone())
    );
    assert_eq!(
        store.get(&session, renewed.expires_at).await.unwrap(),
        None,
        "gone at the end of its retention"
    );
    let after = store
        .put(&session, &bob, retention, renewed.expires_at)
        .await
        .unwrap();
    assert_eq!(after.owner, bob, "an expired record no longer binds");
    assert!(store.remove(&session).await.unwrap());
    assert!(!store.remove(&session).await.unwrap());
    assert_eq!(store.get(&session, start).await.unwrap(), None);

    let old = ObjectId::new("old").unwrap();
    store.put(&old, &alice, SEC, start).await.unwrap();
    check_swept(expiry, store.sweep(start + 2 * SEC).await.unwrap(), 1..=1);
    assert_eq!(store.get(&old, start + 2 * SEC).await.unwrap(), None);
}

fn msg(payload: &str, order_key: Option<&str>, max_attempts: u32) -> NewMessage {
    NewMessage {
        payload: payload.as_bytes().to_vec(),
        order_key: order_key.map(str::to_owned),
        max_attempts,
        not_before: None,
    }
}

fn payloads(claimed: &[crate::Claimed]) -> Vec<String> {
    claimed
        .iter()
        .map(|c| String::from_utf8_lossy(&c.payload).into_owned())
        .collect()
}

/// What every [`Queue`] must do.
pub async fn queue(store: &impl Queue, start: SystemTime) {
    let q = QueueName::new("outbox:kyc-backend").unwrap();
    let other = QueueName::new("outbox:other").unwrap();
    let lease = 30 * SEC;
    let a = store
        .push(&q, msg("a", Some("s1"), 3), start)
        .await
        .unwrap();
    let b = store
        .push(&q, msg("b", Some("s1"), 3), start)
        .await
        .unwrap();
    let c = store
        .push(&q, msg("c", Some("s2"), 3), start)
        .await
        .unwrap();
    let mut later = msg("d", None, 3);
    later.not_before = Some(start + 60 * SEC);
    store.push(&q, later, start).await.unwrap();
    store.push(&other, msg("x", None, 1), start).await.unwrap();
    assert!(a < b && b < c, "ids grow in push order");

    // Per order key one at a time: a, c (b waits behind a; d is not due yet).
    let first = store.claim(&q, 10, lease, start).await.unwrap();
    assert_eq!(payloads(&first), ["a", "c"]);
    assert_eq!(first[0].lease.attempt, 1);
    assert_eq!(first[0].lease.until, start + lease);
    assert_eq!(
        store.stats(&q, start).await.unwrap(),
        QueueStats {
            ready: 1,
            waiting: 1,
            leased: 2,
            dead: 0
        }
    );
    assert!(store.claim(&q, 10, lease, start).await.unwrap().is_empty());

    // a fails and is retried later; b stays behind it.
    let retry_at = start + 5 * SEC;
    assert_eq!(
        store
            .nack(&q, &first[0].lease, retry_at, "503 from subscriber")
            .await
            .unwrap(),
        NackOutcome::Retry { at: retry_at }
    );
    assert!(
        store
            .claim(&q, 10, lease, start + SEC)
            .await
            .unwrap()
            .is_empty()
    );
    store.ack(&q, &first[1].lease).await.unwrap();
    assert!(matches!(
        store.ack(&q, &first[1].lease).await,
        Err(StoreError::LeaseLost(_))
    ));
    let info = store.info(&q, &a, start + SEC).await.unwrap().unwrap();
    assert_eq!(info.state, MessageState::Waiting { until: retry_at });
    assert_eq!(info.last_error.as_deref(), Some("503 from subscriber"));
    assert_eq!(
        store.info(&q, &c, start).await.unwrap(),
        None,
        "acked is gone"
    );

    // A lease that runs out makes the message claimable again; the old lease is stale.
    let second = store.claim(&q, 1, lease, retry_at).await.unwrap();
    assert_eq!(payloads(&second), ["a"]);
    assert_eq!(second[0].lease.attempt, 2);
    let expired = retry_at + lease;
    let third = store.claim(&q, 1, lease, expired).await.unwrap();
    assert_eq!(payloads(&third), ["a"]);
    assert_eq!(third[0].lease.attempt, 3);
    assert!(matches!(
        store.nack(&q, &second[0].lease, expired, "late").await,
        Err(StoreError::LeaseLost(_))
    ));

    // The third attempt was the last: a nack makes it a dead letter, and b is free.
    assert_eq!(
        store
            .nack(&q, &third[0].lease, expired, "timeout")
            .await
            .unwrap(),
        NackOutcome::Dead
    );
    let dead = store.dead_letters(&q, expired).await.unwrap();
    assert_eq!(
        dead.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        std::slice::from_ref(&a)
    );
    assert_eq!(dead[0].attempts, 3);
    let fourth = store.claim(&q, 10, lease, expired).await.unwrap();
    assert_eq!(
        payloads(&fourth),
        ["b"],
        "a dead letter does not hold its key up"
    );

    // A message whose last lease runs out goes to the dead letters when next seen.
    let x = store.claim(&other, 10, lease, start).await.unwrap();
    assert_eq!(payloads(&x), ["x"]);
    assert!(
        store
            .claim(&other, 10, lease, start + lease)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.stats(&other, start + lease).await.unwrap().dead, 1);

    // Reviving a dead letter starts its attempts over.
    assert!(store.revive(&q, &a, expired).await.unwrap());
    assert!(!store.revive(&q, &a, expired).await.unwrap());
    assert!(
        !store
            .revive(&q, &MessageId::parse("999").unwrap(), expired)
            .await
            .unwrap()
    );
    let revived = store.claim(&q, 10, lease, start + 60 * SEC).await.unwrap();
    assert_eq!(
        payloads(&revived),
        ["d"],
        "a waits behind b, which is leased"
    );
    store.ack(&q, &fourth[0].lease).await.unwrap();
    let last = store.claim(&q, 10, lease, start + 60 * SEC).await.unwrap();
    assert_eq!(payloads(&last), ["a"]);
    assert_eq!(last[0].lease.attempt, 1);

    admin::queue_admin(store, start).await;
    dead_letter_revived_before_its_purge(store, start).await;
    revived_attempts_count_from_the_revival(store, start).await;
    due_copies_purged(store, start).await;
}

/// Claimers racing on one queue never get the same message twice.
pub async fn queue_concurrently<S: Queue + 'static>(store: Arc<S>, start: SystemTime) {
    let q = QueueName::new("race").unwrap();
    let total = 60;
    for i in 0..total {
        store
            .push(&q, msg(&i.to_string(), None, 1), start)
            .await
            .unwrap();
    }
    let mut handles = Vec::new();
    for _ in 0..6 {
        let (store, q) = (store.clone(), q.clone());
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = store.claim(&q, 3, 60 * SEC, start).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                for c in batch {
                    store.ack(&q, &c.lease).await.unwrap();
                    got.push(String::from_utf8(c.payload).unwrap());
                }
            }
        }));
    }
    let mut seen = HashSet::new();
    for h in handles {
        for p in h.await.unwrap() {
            assert!(seen.insert(p.clone()), "message {p} delivered twice");
        }
    }
    assert_eq!(seen.len(), total);
    assert_eq!(store.stats(&q, start).await.unwrap(), QueueStats::default());
}
