//! The queue on Redis Streams against real servers, beyond the contract (`tests.rs` runs
//! that on a server and a Cluster): what replicas sharing one Redis see of each other's
//! claims — a claim taken over after its lease, a retry that waits for its time, order keys
//! kept while replicas race — and a restarted Redis that kept everything it acknowledged.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use redis::Value;

use super::RedisStore;
use super::testing::{RedisServer, ServerOptions};
use super::tests::{eventually, store};
use crate::types::{from_micros, micros};
use crate::{MessageState, NewMessage, Queue, QueueName, QueueStats, StoreError};

const SEC: Duration = Duration::from_secs(1);
const MICRO: Duration = Duration::from_micros(1);

/// One replica: a store of its own (its own connection and consumer name) on `url`.
fn replica(url: &str, prefix: &str) -> RedisStore {
    store(url, prefix)
}

/// The present, in the store's unit.
fn now() -> SystemTime {
    from_micros(micros(SystemTime::now()))
}

fn msg(payload: &str, order_key: Option<&str>, max_attempts: u32) -> NewMessage {
    NewMessage {
        payload: payload.as_bytes().to_vec(),
        order_key: order_key.map(str::to_owned),
        max_attempts,
        not_before: None,
    }
}

fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

/// One command straight to Redis, to look at what the scripts left there.
async fn raw(store: &RedisStore, cmd: redis::Cmd) -> Value {
    store
        .call(|mut c| async move { cmd.query_async(&mut c).await })
        .await
        .unwrap()
}

/// The consumers in `queue`'s group.
async fn consumers(store: &RedisStore, queue: &QueueName) -> HashSet<String> {
    let keys = store.queue_keys(queue);
    let mut cmd = redis::cmd("XINFO");
    cmd.arg("CONSUMERS").arg(keys.stream()).arg("idgate");
    let Value::Array(list) = raw(store, cmd).await else {
        panic!("XINFO CONSUMERS answers a list");
    };
    let mut out = HashSet::new();
    for consumer in list {
        // Each consumer is a flat list of names and values, its name first.
        if let Value::Array(fields) = consumer
            && let Some(Value::BulkString(name)) = fields.get(1)
        {
            out.insert(text(name));
        }
    }
    out
}

/// The consumers holding messages of `queue`'s group, with how many each.
async fn holders(store: &RedisStore, queue: &QueueName) -> HashMap<String, u64> {
    let keys = store.queue_keys(queue);
    let mut cmd = redis::cmd("XPENDING");
    cmd.arg(keys.stream()).arg("idgate");
    let Value::Array(summary) = raw(store, cmd).await else {
        panic!("XPENDING answers a list");
    };
    let mut out = HashMap::new();
    if let Some(Value::Array(consumers)) = summary.get(3) {
        for c in consumers {
            let Value::Array(pair) = c else { continue };
            if let [Value::BulkString(name), Value::BulkString(count)] = pair.as_slice() {
                out.insert(text(name), text(count).parse().unwrap());
            }
        }
    }
    out
}

#[test]
fn each_store_is_a_consumer_named_after_its_host_process_and_a_random_part() {
    let (a, b) = (super::queue::consumer_name(), super::queue::consumer_name());
    assert_ne!(a, b, "two stores of one process are two consumers");
    let parts: Vec<&str> = a.split('/').collect();
    let [host, pid, random] = parts.as_slice() else {
        panic!("{a}");
    };
    assert!(!host.is_empty() && !host.contains(['(', ')']), "{a}");
    assert_eq!(*pid, std::process::id().to_string());
    assert!(
        random.len() == 16 && random.chars().all(|c| c.is_ascii_hexdigit()),
        "{a}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_takes_over_the_claims_of_one_that_died() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = (replica(&server.url(), "t:"), replica(&server.url(), "t:"));
    assert_ne!(
        a.consumer(),
        b.consumer(),
        "each replica is a consumer of its own"
    );
    let q = QueueName::new("outbox:kyc").unwrap();
    let (t0, lease) = (now(), 30 * SEC);
    let first = a.push(&q, msg("s1-a", Some("s1"), 5), t0).await.unwrap();
    a.push(&q, msg("s1-b", Some("s1"), 5), t0).await.unwrap();
    a.push(&q, msg("free", None, 5), t0).await.unwrap();

    let held = a.claim(&q, 1, lease, t0).await.unwrap();
    assert_eq!(held[0].lease.id, first);
    let a_name = a.consumer().to_owned();
    assert_eq!(holders(&b, &q).await.get(&a_name), Some(&1));
    // The replica dies holding the lease: nobody answers it.
    drop(a);

    let before = b.claim(&q, 10, lease, t0 + lease - MICRO).await.unwrap();
    assert_eq!(
        before.iter().map(|c| text(&c.payload)).collect::<Vec<_>>(),
        ["free"],
        "before the lease ends, the message and its order key wait for the dead replica"
    );
    b.ack(&q, &before[0].lease).await.unwrap();

    let taken = b.claim(&q, 10, lease, t0 + lease).await.unwrap();
    assert_eq!(
        taken.iter().map(|c| text(&c.payload)).collect::<Vec<_>>(),
        ["s1-a"]
    );
    assert_eq!(taken[0].lease.attempt, 2);
    let holding = holders(&b, &q).await;
    assert_eq!(holding.get(b.consumer()), Some(&1), "{holding:?}");
    let present = consumers(&b, &q).await;
    assert!(
        !present.contains(&a_name) && present.contains(b.consumer()),
        "the dead replica left the group with its last claim: {present:?}"
    );
    assert!(matches!(
        b.ack(&q, &held[0].lease).await,
        Err(StoreError::LeaseLost(_))
    ));
    b.ack(&q, &taken[0].lease).await.unwrap();
    let next = b.claim(&q, 10, lease, t0 + lease).await.unwrap();
    assert_eq!(text(&next[0].payload), "s1-b");
    b.ack(&q, &next[0].lease).await.unwrap();

    // Acked entries are deleted from the stream, and no consumer is left holding nothing.
    let keys = &b.queue_keys(&q);
    let mut xlen = redis::cmd("XLEN");
    xlen.arg(keys.stream());
    assert_eq!(raw(&b, xlen).await, Value::Int(0));
    assert!(holders(&b, &q).await.is_empty());
    assert!(
        consumers(&b, &q).await.is_empty(),
        "a consumer stays in the group only while it holds a message"
    );
    assert_eq!(b.stats(&q, t0).await.unwrap(), QueueStats::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_message_waits_for_its_retry_on_every_replica() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = (replica(&server.url(), "r:"), replica(&server.url(), "r:"));
    let q = QueueName::new("outbox:kyc").unwrap();
    let t0 = now();
    let id = a.push(&q, msg("m", Some("s1"), 3), t0).await.unwrap();
    a.push(&q, msg("next", Some("s1"), 3), t0).await.unwrap();
    let first = a.claim(&q, 10, 30 * SEC, t0).await.unwrap();
    assert_eq!(first.len(), 1);
    let retry_at = t0 + 10 * SEC;
    a.nack(&q, &first[0].lease, retry_at, "502 from subscriber")
        .await
        .unwrap();
    for replica in [&a, &b] {
        assert!(
            replica
                .claim(&q, 10, 30 * SEC, retry_at - MICRO)
                .await
                .unwrap()
                .is_empty(),
            "neither the message nor the one behind it before the retry time"
        );
    }
    let info = b.info(&q, &id, t0).await.unwrap().unwrap();
    assert_eq!(info.state, MessageState::Waiting { until: retry_at });
    assert_eq!(info.last_error.as_deref(), Some("502 from subscriber"));
    let again = b.claim(&q, 10, 30 * SEC, retry_at).await.unwrap();
    assert_eq!(
        again.iter().map(|c| text(&c.payload)).collect::<Vec<_>>(),
        ["m"]
    );
    assert_eq!(again[0].lease.attempt, 2);
}

/// Order keys where the oldest message is not the one the queue saw first: a message pushed
/// behind one that waits for its retry, and a dead letter revived behind a younger message
/// of its key. Run against the in-memory backend too, as the reference.
async fn order_keys_after_retries_and_revivals(queue: &impl Queue, t0: SystemTime) {
    let q = QueueName::new("outbox:turns").unwrap();
    let lease = 30 * SEC;
    queue
        .push(&q, msg("first", Some("s1"), 3), t0)
        .await
        .unwrap();
    let first = queue.claim(&q, 10, lease, t0).await.unwrap();
    queue
        .nack(&q, &first[0].lease, t0 + 10 * SEC, "503")
        .await
        .unwrap();
    queue
        .push(&q, msg("second", Some("s1"), 3), t0)
        .await
        .unwrap();
    assert!(
        queue.claim(&q, 10, lease, t0).await.unwrap().is_empty(),
        "a message pushed behind one waiting for its retry waits too"
    );
    let retried = queue.claim(&q, 10, lease, t0 + 10 * SEC).await.unwrap();
    assert_eq!(text(&retried[0].payload), "first");
    queue.ack(&q, &retried[0].lease).await.unwrap();
    let second = queue.claim(&q, 10, lease, t0 + 10 * SEC).await.unwrap();
    assert_eq!(text(&second[0].payload), "second");
    queue.ack(&q, &second[0].lease).await.unwrap();

    // r dies, y (younger, same key) is claimed, r is revived: r goes first once y's lease
    // is over, and y's lease stays good until y is claimed again.
    let r = queue.push(&q, msg("r", Some("s2"), 1), t0).await.unwrap();
    queue.push(&q, msg("y", Some("s2"), 3), t0).await.unwrap();
    let claimed = queue.claim(&q, 10, lease, t0).await.unwrap();
    assert_eq!(
        queue.nack(&q, &claimed[0].lease, t0, "410").await.unwrap(),
        crate::NackOutcome::Dead
    );
    let y = queue.claim(&q, 10, lease, t0).await.unwrap();
    assert_eq!(text(&y[0].payload), "y");
    assert!(queue.revive(&q, &r, t0).await.unwrap());
    assert!(queue.claim(&q, 10, lease, t0).await.unwrap().is_empty());
    let after = t0 + lease;
    let revived = queue.claim(&q, 10, lease, after).await.unwrap();
    assert_eq!(
        revived.iter().map(|c| text(&c.payload)).collect::<Vec<_>>(),
        ["r"],
        "the revived message is the oldest of its key again"
    );
    assert!(queue.claim(&q, 10, lease, after).await.unwrap().is_empty());
    assert_eq!(
        queue.nack(&q, &y[0].lease, after, "late").await.unwrap(),
        crate::NackOutcome::Retry { at: after },
        "y's lease ran out, but nobody claimed y since: its answer still counts"
    );
    queue.ack(&q, &revived[0].lease).await.unwrap();
    let y_again = queue.claim(&q, 10, lease, after).await.unwrap();
    assert_eq!(text(&y_again[0].payload), "y");
    assert_eq!(y_again[0].lease.attempt, 2);
    assert!(matches!(
        queue.ack(&q, &y[0].lease).await,
        Err(StoreError::LeaseLost(_))
    ));
    queue.ack(&q, &y_again[0].lease).await.unwrap();
    assert_eq!(queue.stats(&q, after).await.unwrap(), QueueStats::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_keys_follow_the_oldest_message_through_retries_and_revivals() {
    order_keys_after_retries_and_revivals(&crate::MemoryStore::new(), now()).await;
    let Some(server) = RedisServer::start() else {
        return;
    };
    order_keys_after_retries_and_revivals(&replica(&server.url(), "turns:"), now()).await;
}

/// How many writes the server took since it started (it never saves in tests).
async fn writes(store: &RedisStore) -> u64 {
    let mut cmd = redis::cmd("INFO");
    cmd.arg("persistence");
    let Value::BulkString(info) = raw(store, cmd).await else {
        panic!("INFO answers text");
    };
    text(&info)
        .lines()
        .find_map(|l| l.strip_prefix("rdb_changes_since_last_save:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("INFO persistence counts changes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_with_nothing_to_do_writes_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let queue = replica(&server.url(), "idle:");
    let q = QueueName::new("outbox:idle").unwrap();
    let t0 = now();
    let mut later = msg("later", None, 3);
    later.not_before = Some(t0 + 60 * SEC);
    queue.push(&q, later, t0).await.unwrap();
    queue.push(&q, msg("now", None, 3), t0).await.unwrap();
    let got = queue.claim(&q, 10, 30 * SEC, t0).await.unwrap();
    queue.ack(&q, &got[0].lease).await.unwrap();
    let before = writes(&queue).await;
    for _ in 0..5 {
        assert!(queue.claim(&q, 10, 30 * SEC, t0).await.unwrap().is_empty());
    }
    assert_eq!(
        writes(&queue).await,
        before,
        "idle polls must not fill the append-only file or the replication stream"
    );
    assert_eq!(
        queue
            .claim(&q, 10, 30 * SEC, t0 + 60 * SEC)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(writes(&queue).await > before, "a claim that leases writes");
}

/// What the racing replicas saw.
#[derive(Default)]
struct Seen {
    /// Order keys with a message out.
    out: HashSet<String>,
    /// Per order key, the indexes of its messages in the order they were acked.
    acked: HashMap<String, Vec<u32>>,
    done: usize,
    /// Messages acked through each replica.
    by_replica: [usize; 2],
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_keys_hold_while_replicas_claim_concurrently() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let q = QueueName::new("outbox:ordered").unwrap();
    let (keys, per_key) = (["s1", "s2", "s3", "s4", "s5"], 20u32);
    let t0 = now();
    let pusher = replica(&server.url(), "o:");
    for i in 0..per_key {
        for k in keys {
            pusher
                .push(&q, msg(&format!("{k}:{i}"), Some(k), 10), t0)
                .await
                .unwrap();
        }
    }
    let total = keys.len() * per_key as usize;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let replicas = [
        Arc::new(replica(&server.url(), "o:")),
        Arc::new(replica(&server.url(), "o:")),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let (r, q, seen) = (replicas[worker % 2].clone(), q.clone(), seen.clone());
        tasks.spawn(async move {
            while seen.lock().unwrap().done < total {
                let batch = r.claim(&q, 3, 60 * SEC, t0).await.unwrap();
                if batch.is_empty() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                let parsed: Vec<(String, u32)> = batch
                    .iter()
                    .map(|c| {
                        let p = text(&c.payload);
                        let (k, i) = p.split_once(':').unwrap();
                        (k.to_owned(), i.parse().unwrap())
                    })
                    .collect();
                for (k, _) in &parsed {
                    assert!(
                        seen.lock().unwrap().out.insert(k.clone()),
                        "two messages of {k} out at once"
                    );
                }
                for (c, (k, i)) in batch.iter().zip(parsed) {
                    // Every fourth message fails its first delivery and is retried at once:
                    // it must still come before the next one of its key.
                    let retry = c.lease.attempt == 1 && i % 4 == 1;
                    {
                        let mut seen = seen.lock().unwrap();
                        seen.out.remove(&k);
                        if !retry {
                            seen.acked.entry(k).or_default().push(i);
                            seen.done += 1;
                            seen.by_replica[worker % 2] += 1;
                        }
                    }
                    if retry {
                        r.nack(&q, &c.lease, t0, "503").await.unwrap();
                    } else {
                        r.ack(&q, &c.lease).await.unwrap();
                    }
                }
            }
        });
    }
    let all = tokio::time::timeout(Duration::from_secs(60), tasks.join_all()).await;
    assert!(all.is_ok(), "the replicas did not drain the queue in time");
    let (acked, by_replica) = {
        let mut seen = seen.lock().unwrap();
        (std::mem::take(&mut seen.acked), seen.by_replica)
    };
    assert!(
        by_replica.iter().all(|&n| n > 0),
        "both replicas delivered: {by_replica:?}"
    );
    for k in keys {
        assert_eq!(
            acked[k],
            (0..per_key).collect::<Vec<_>>(),
            "messages of {k} in push order"
        );
    }
    assert_eq!(pusher.stats(&q, t0).await.unwrap(), QueueStats::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_keeps_every_acknowledged_push_and_lease() {
    let Some(mut server) = RedisServer::start_with(ServerOptions {
        aof: true,
        ..ServerOptions::default()
    }) else {
        return;
    };
    let q = QueueName::new("outbox:durable").unwrap();
    let queue = replica(&server.url(), "d:");
    let t0 = now();
    let mut pushed = Vec::new();
    for i in 0..30 {
        let key = (i % 3 == 0).then(|| format!("s{}", i % 2));
        let mut m = msg(&format!("m{i}"), key.as_deref(), 3);
        if i % 7 == 0 {
            m.not_before = Some(t0 + 20 * SEC);
        }
        pushed.push((queue.push(&q, m, t0).await.unwrap(), format!("m{i}")));
    }
    let claimed = queue.claim(&q, 8, 60 * SEC, t0).await.unwrap();
    assert_eq!(claimed.len(), 8);
    let mut acked = HashSet::new();
    for c in &claimed[..3] {
        queue.ack(&q, &c.lease).await.unwrap();
        acked.insert(c.lease.id.clone());
    }
    for c in &claimed[3..5] {
        queue
            .nack(&q, &c.lease, t0 + 10 * SEC, "503")
            .await
            .unwrap();
    }
    let stats = queue.stats(&q, t0).await.unwrap();
    let mut infos = Vec::new();
    for (id, _) in &pushed {
        infos.push(queue.info(&q, id, t0).await.unwrap());
    }

    // Killed (SIGKILL) and started again on its append-only file.
    server.restart();
    assert_eq!(eventually(|| queue.stats(&q, t0)).await, stats);
    for ((id, _), before) in pushed.iter().zip(&infos) {
        assert_eq!(&queue.info(&q, id, t0).await.unwrap(), before, "{id}");
    }
    // A lease given before the restart is still good.
    queue.ack(&q, &claimed[5].lease).await.unwrap();
    acked.insert(claimed[5].lease.id.clone());

    // Everything not acked is still delivered, with its payload.
    // Past the leases still held, so that they are taken over too.
    let later = t0 + 70 * SEC;
    let mut delivered = HashMap::new();
    loop {
        let batch = queue.claim(&q, 10, SEC, later).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for c in batch {
            queue.ack(&q, &c.lease).await.unwrap();
            delivered.insert(c.lease.id.clone(), text(&c.payload));
        }
    }
    let expected: HashMap<_, _> = pushed
        .into_iter()
        .filter(|(id, _)| !acked.contains(id))
        .collect();
    assert_eq!(delivered, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_revived_between_listing_and_purge_is_not_deleted() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = store(&server.url(), "purge:");
    crate::conformance::dead_letter_revived_before_its_purge(&store, now()).await;
    crate::conformance::revived_attempts_count_from_the_revival(&store, now()).await;
}

/// A claim's answer carries the payloads: it stops once they add up to `CLAIM_BYTES`
/// (always with one message at least), and the rest waits for the next claim in order. A
/// purge claims without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_of_large_payloads_stops_at_its_byte_budget() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = store(&server.url(), "bytes:");
    let q = QueueName::new("outbox:large").unwrap();
    let t = now();
    let third = crate::CLAIM_BYTES / 3 + 1;
    let large = |fill: u8, len: usize| NewMessage {
        payload: vec![fill; len],
        order_key: None,
        max_attempts: 5,
        not_before: None,
    };
    for fill in 1..=4u8 {
        store.push(&q, large(fill, third), t).await.unwrap();
    }
    let first = store.claim(&q, 16, 30 * SEC, t).await.unwrap();
    let fills: Vec<u8> = first.iter().map(|c| c.payload[0]).collect();
    assert_eq!(fills, [1, 2, 3], "stops once past the budget");
    let second = store.claim(&q, 16, 30 * SEC, t).await.unwrap();
    assert_eq!(second.iter().map(|c| c.payload[0]).collect::<Vec<_>>(), [4]);

    // One payload above the budget is still handed out, alone.
    let huge = QueueName::new("outbox:huge").unwrap();
    for fill in 5..=6u8 {
        store
            .push(&huge, large(fill, crate::CLAIM_BYTES + 1), t)
            .await
            .unwrap();
    }
    let one = store.claim(&huge, 16, 30 * SEC, t).await.unwrap();
    assert_eq!(one.iter().map(|c| c.payload[0]).collect::<Vec<_>>(), [5]);

    // Purged without being read: every due message at once.
    let copies = QueueName::new("outbox:copies").unwrap();
    for fill in 1..=4u8 {
        store.push(&copies, large(fill, third), t).await.unwrap();
    }
    assert_eq!(store.purge_due(&copies, 16, t).await.unwrap(), 4);
    assert_eq!(
        store.stats(&copies, t).await.unwrap(),
        QueueStats::default()
    );
}
