use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::{CounterKey, Counters, MemoryStore};

fn at(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000) + Duration::from_micros(us)
}

/// One replica: its leases, in front of a backend it shares with the others.
struct Replica {
    leases: GcraLeases,
    asked: u64,
}

impl Replica {
    fn new() -> Self {
        Self {
            leases: GcraLeases::default(),
            asked: 0,
        }
    }

    /// One request of `name` against `limit`, as the gateway decides it.
    async fn check(
        &mut self,
        backend: &MemoryStore,
        name: &str,
        limit: &GcraLimit,
        now: SystemTime,
    ) -> GcraDecision {
        let key = self.leases.key(&name, limit);
        let counter = CounterKey::new(name).unwrap();
        match self.leases.decide(key, limit, now, Duration::ZERO) {
            Leased::Decided(d) => d,
            Leased::Renew(d, take) => {
                self.asked += 1;
                let answer = backend.gcra(&counter, limit, take, now).await.unwrap();
                self.leases.refill(key, limit, &answer, now);
                d
            }
            Leased::Ask(take) => {
                self.asked += 1;
                let answer = backend.gcra(&counter, limit, take, now).await.unwrap();
                self.leases.record(key, limit, take, &answer, now)
            }
        }
    }
}

#[test]
fn a_lease_is_ten_milliseconds_of_the_rate_within_an_eighth_of_the_burst() {
    let per_s = |count, burst| GcraLimit::per(count, Duration::from_secs(1), burst).unwrap();
    assert_eq!(
        lease_size(&per_s(20, 20)),
        1,
        "under two per 10 ms: no lease"
    );
    assert_eq!(lease_size(&per_s(150, 150)), 1);
    assert_eq!(lease_size(&per_s(1_000, 1_000)), 10);
    assert_eq!(lease_size(&per_s(500_000, 500_000)), 5_000);
    assert_eq!(lease_size(&per_s(100_000, 16)), 2, "an eighth of the burst");
    assert_eq!(lease_size(&per_s(100_000, 4)), 1);
}

#[tokio::test]
async fn a_lease_answers_the_next_requests_without_the_backend() {
    let backend = MemoryStore::new();
    let mut replica = Replica::new();
    // 1000 a second, 100 at once: leases of 10.
    let limit = GcraLimit::per(1_000, Duration::from_secs(1), 100).unwrap();
    let mut remaining = Vec::new();
    for _ in 0..10 {
        let d = replica.check(&backend, "a", &limit, at(0)).await;
        assert!(d.allowed);
        assert_eq!(d.granted, 1);
        remaining.push(d.remaining);
    }
    // One lease of ten, topped up by eight when two are left (the eighth request).
    assert_eq!(replica.asked, 2);
    // The backend's room and what is held here, together.
    assert_eq!(remaining, (90..=99).rev().collect::<Vec<_>>());
    for _ in 0..6 {
        replica.check(&backend, "a", &limit, at(0)).await;
    }
    assert_eq!(replica.asked, 3, "two left again: topped up");
    // Another key has leases of its own.
    replica.check(&backend, "b", &limit, at(0)).await;
    assert_eq!(replica.asked, 4);
}

#[tokio::test]
async fn a_refusal_is_repeated_until_its_retry_after_then_the_backend_is_asked() {
    let backend = MemoryStore::new();
    let mut replica = Replica::new();
    // 2 a second, 2 at once: no lease, every admission from the backend.
    let limit = GcraLimit::per(2, Duration::from_secs(1), 2).unwrap();
    for _ in 0..2 {
        assert!(replica.check(&backend, "a", &limit, at(0)).await.allowed);
    }
    let refused = replica.check(&backend, "a", &limit, at(0)).await;
    assert!(!refused.allowed);
    assert_eq!(refused.retry_after, Duration::from_millis(500));
    assert_eq!(replica.asked, 3);
    let again = replica.check(&backend, "a", &limit, at(200_000)).await;
    assert!(!again.allowed);
    assert_eq!(
        again.retry_after,
        Duration::from_millis(300),
        "the same end"
    );
    assert_eq!(replica.asked, 3, "answered here");
    assert!(
        replica
            .check(&backend, "a", &limit, at(500_000))
            .await
            .allowed
    );
    assert_eq!(replica.asked, 4);
}

/// Ten times the limit, spread over two replicas, for ten (simulated) seconds: together
/// they admit the limit, within 5%, and ask the backend about once per lease.
#[tokio::test]
async fn two_replicas_at_ten_times_the_limit_admit_it_once_between_them() {
    let backend = MemoryStore::new();
    let mut replicas = [Replica::new(), Replica::new()];
    const RATE: u64 = 2_000;
    let limit = GcraLimit::per(RATE as u32, Duration::from_secs(1), RATE as u32).unwrap();
    let seconds = 10;
    let requests = RATE * 10 * seconds;
    let step = 1_000_000 * seconds / requests;
    let mut admitted = 0u64;
    for i in 0..requests {
        let replica = &mut replicas[(i % 2) as usize];
        if replica
            .check(&backend, "k", &limit, at(i * step))
            .await
            .allowed
        {
            admitted += 1;
        }
    }
    // The limit allows its burst at once and then its rate.
    let allowed = RATE * seconds + RATE;
    let off = (admitted as f64 - allowed as f64).abs() / allowed as f64;
    assert!(
        off < 0.05,
        "{admitted} admitted of {allowed}: {:.1}% off",
        off * 100.0
    );
    assert!(
        admitted <= allowed + 2 * u64::from(lease_size(&limit)),
        "{admitted}"
    );
    let asked: u64 = replicas.iter().map(|r| r.asked).sum();
    println!("{admitted} admitted of {allowed}; {asked} calls for {requests} requests");
    // Per lease span about one lease and a refusal or two, where each request was a call.
    assert!(
        asked < requests / 25,
        "{asked} calls for {requests} requests"
    );
}

/// A caller at half its limit, spread over ten replicas: the rests of leases that end
/// unused never push it over.
#[tokio::test]
async fn a_caller_under_its_limit_is_never_refused_however_many_replicas_share_it() {
    let backend = MemoryStore::new();
    let mut replicas: Vec<Replica> = (0..10).map(|_| Replica::new()).collect();
    let limit = GcraLimit::per(1_000, Duration::from_secs(1), 50).unwrap();
    // 500 a second for five seconds, one replica after the other.
    for i in 0..2_500u64 {
        let replica = &mut replicas[(i % 10) as usize];
        let d = replica.check(&backend, "k", &limit, at(i * 2_000)).await;
        assert!(d.allowed, "request {i} refused");
    }
}

#[tokio::test]
async fn what_is_left_of_a_lease_after_its_life_is_dropped() {
    let backend = MemoryStore::new();
    let mut replica = Replica::new();
    let limit = GcraLimit::per(1_000, Duration::from_secs(1), 1_000).unwrap();
    replica.check(&backend, "a", &limit, at(0)).await;
    replica.check(&backend, "a", &limit, at(500_000)).await;
    assert_eq!(replica.asked, 1, "a lease of ten, not half used");
    replica
        .check(&backend, "a", &limit, at(duration_micros(LEASE_LIFE)))
        .await;
    assert_eq!(replica.asked, 2, "asked again once the lease ended");
    assert_eq!(replica.leases.sweep(at(10_000_000)), 1);
    assert!(replica.leases.is_empty());
}

#[tokio::test]
async fn a_full_table_keeps_deciding_through_the_backend() {
    let backend = MemoryStore::new();
    let mut replica = Replica {
        leases: GcraLeases::with_capacity(1),
        asked: 0,
    };
    let limit = GcraLimit::per(1_000, Duration::from_secs(1), 1_000).unwrap();
    for k in 0..200 {
        let d = replica
            .check(&backend, &format!("k{k}"), &limit, at(0))
            .await;
        assert!(d.allowed);
    }
    assert!(replica.leases.len() <= SHARDS);
    // A key that found no room still gets exact answers.
    let mut admitted = 0;
    for _ in 0..2_000 {
        if replica.check(&backend, "k199", &limit, at(0)).await.allowed {
            admitted += 1;
        }
    }
    assert!(admitted <= 1_000, "{admitted}");
}

#[tokio::test]
async fn a_changed_rate_does_not_reuse_the_old_lease() {
    let backend = MemoryStore::new();
    let mut replica = Replica::new();
    let old = GcraLimit::per(1_000, Duration::from_secs(1), 1_000).unwrap();
    let new = GcraLimit::per(2_000, Duration::from_secs(1), 1_000).unwrap();
    replica.check(&backend, "a", &old, at(0)).await;
    replica.check(&backend, "a", &new, at(0)).await;
    assert_eq!(replica.asked, 2);
}

/// Requests of one key that arrive together while its lease is asked for do not each take
/// a lease: they are decided one at a time until it is there.
#[test]
fn one_request_asks_for_a_key_s_lease_at_a_time() {
    let leases = GcraLeases::default();
    let limit = GcraLimit::per(100_000, Duration::from_secs(1), 100_000).unwrap();
    let key = leases.key(&"k", &limit);
    let decide = |t| leases.decide(key, &limit, at(t), Duration::ZERO);
    assert_eq!(decide(0), Leased::Ask(GcraTake::up_to(1_000)));
    for _ in 0..10 {
        assert_eq!(decide(10), Leased::Ask(GcraTake::EXACTLY_ONE));
    }
    // Only the ask that set the mark clears it: not one of the others.
    leases.abandon(key, GcraTake::EXACTLY_ONE, at(10));
    assert_eq!(decide(15), Leased::Ask(GcraTake::EXACTLY_ONE));
    // The asking request gave up (its backend call failed): the next one asks.
    leases.abandon(key, GcraTake::up_to(1_000), at(0));
    assert_eq!(decide(20), Leased::Ask(GcraTake::up_to(1_000)));
    // One whose request was dropped holds the others back no longer than the ask timeout
    // (the state timeout when longer).
    let later = duration_micros(ASK_TIMEOUT) + 20;
    assert_eq!(decide(later), Leased::Ask(GcraTake::up_to(1_000)));
    assert_eq!(
        leases.decide(key, &limit, at(later + 10), Duration::from_secs(2)),
        Leased::Ask(GcraTake::EXACTLY_ONE)
    );
    let after = later + 2_000_000;
    assert_eq!(decide(after), Leased::Ask(GcraTake::up_to(1_000)));
}

/// A replica that was refused while it still held part of a lease uses that part first:
/// the backend counted it already.
#[tokio::test]
async fn what_is_held_is_used_before_a_refusal_that_came_meanwhile() {
    let backend = MemoryStore::new();
    let leases = GcraLeases::default();
    // 1000 a second, 100 at once: leases of 10, t = 1 ms.
    let limit = GcraLimit::per(1_000, Duration::from_secs(1), 100).unwrap();
    let key = leases.key(&"k", &limit);
    let counter = CounterKey::new("k").unwrap();
    // Another replica leaves room for exactly 10.
    let other = backend
        .gcra(&counter, &limit, GcraTake::exactly(90), at(0))
        .await
        .unwrap();
    assert!(other.allowed);
    let Leased::Ask(take) = leases.decide(key, &limit, at(0), Duration::ZERO) else {
        panic!("the first request asks");
    };
    let answer = backend.gcra(&counter, &limit, take, at(0)).await.unwrap();
    assert_eq!(answer.granted, 10);
    leases.record(key, &limit, take, &answer, at(0));
    // A request asking alone is refused: the room is all held here.
    let refused = backend
        .gcra(&counter, &limit, GcraTake::EXACTLY_ONE, at(0))
        .await
        .unwrap();
    assert!(!refused.allowed);
    leases.record(key, &limit, GcraTake::EXACTLY_ONE, &refused, at(0));
    // The nine held are still admitted.
    let mut admitted = 0;
    for _ in 0..9 {
        match leases.decide(key, &limit, at(0), Duration::ZERO) {
            Leased::Decided(d) | Leased::Renew(d, _) if d.allowed => admitted += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(admitted, 9);
}

/// A renewal tops the lease up to one lease: a replica never holds more than that.
#[test]
fn a_renewal_tops_the_lease_up_to_one_lease() {
    let leases = GcraLeases::default();
    let limit = GcraLimit::per(1_000, Duration::from_secs(1), 1_000).unwrap();
    let key = leases.key(&"k", &limit);
    let take = GcraTake::up_to(10);
    assert_eq!(
        leases.decide(key, &limit, at(0), Duration::ZERO),
        Leased::Ask(take)
    );
    let grant = |granted| GcraDecision {
        allowed: true,
        granted,
        remaining: 900,
        retry_after: Duration::ZERO,
        reset_after: Duration::from_millis(100),
    };
    leases.record(key, &limit, take, &grant(10), at(0));
    // Nine held; the seventh request leaves two and asks for eight more.
    for _ in 0..6 {
        assert!(matches!(
            leases.decide(key, &limit, at(1), Duration::ZERO),
            Leased::Decided(_)
        ));
    }
    let Leased::Renew(_, renew) = leases.decide(key, &limit, at(1), Duration::ZERO) else {
        panic!("three quarters used: renewed");
    };
    assert_eq!(renew, GcraTake::up_to(8));
}

/// A long refusal (a daily limit) is answered here for at most a lease's life, then asked
/// about again, with the backend's own `Retry-After` every time.
#[tokio::test]
async fn a_long_refusal_is_kept_for_a_lease_s_life_then_asked_about_again() {
    let backend = MemoryStore::new();
    let mut replica = Replica::new();
    let limit = GcraLimit::per(1, Duration::from_secs(86_400), 1).unwrap();
    assert!(replica.check(&backend, "a", &limit, at(0)).await.allowed);
    let refused = replica.check(&backend, "a", &limit, at(1)).await;
    assert!(!refused.allowed);
    assert!(refused.retry_after > Duration::from_secs(86_000));
    replica.check(&backend, "a", &limit, at(500_000)).await;
    assert_eq!(replica.asked, 2, "kept");
    let later = replica
        .check(&backend, "a", &limit, at(duration_micros(LEASE_LIFE) + 1))
        .await;
    assert!(!later.allowed);
    assert_eq!(replica.asked, 3, "asked again");
    assert!(later.retry_after < refused.retry_after);
}
