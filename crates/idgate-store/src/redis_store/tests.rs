//! The Redis backend against real servers: the conformance suites on a standalone server
//! and on a six-node Cluster, and what happens when Redis stalls, goes away, comes back,
//! speaks TLS or wants a password.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant, SystemTime};

use secrecy::SecretString;

use super::testing::{RedisCluster, RedisServer, ServerOptions};
use super::{RedisOptions, RedisStore};
use crate::GcraTake;
use crate::conformance::{self, Expiry};
use crate::types::{from_micros, micros};
use crate::{
    ApiKeyStore, CounterKey, Counters, GcraLimit, Nonce, Nonces, ObjectId, Owner, Ownership,
    StateStore, StoreError,
};

pub(super) fn store(url: &str, prefix: &str) -> RedisStore {
    let mut options = RedisOptions::standalone(url);
    options.prefix = prefix.to_owned();
    // Generous for a loaded test machine; the timeout tests set their own.
    options.timeout = Duration::from_secs(2);
    RedisStore::new(&options).unwrap()
}

/// Every suite, each under its own prefix of one server or cluster.
async fn all_suites(make: impl Fn(&str) -> RedisStore) {
    // The present (Redis expiries follow its clock), in the store's unit.
    let start = from_micros(micros(SystemTime::now()));
    conformance::api_keys(&make("keys:")).await;
    conformance::counters(&make("counters:"), start).await;
    conformance::counters_concurrently(Arc::new(make("concurrent:")), start).await;
    conformance::gcra_many(&make("many:"), start).await;
    conformance::nonces_expiring(Arc::new(make("nonces:")), start, Expiry::ByItself).await;
    conformance::ownership_expiring(&make("owners:"), start, Expiry::ByItself).await;
    conformance::queue(&make("queue:"), start).await;
    conformance::queue_concurrently(Arc::new(make("race:")), start).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standalone_redis_meets_every_contract() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    all_suites(|prefix| store(&server.url(), prefix)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_meets_every_contract() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    all_suites(|prefix| {
        let mut options = RedisOptions::cluster(cluster.urls());
        options.prefix = prefix.to_owned();
        options.timeout = Duration::from_secs(2);
        RedisStore::new(&options).unwrap()
    })
    .await;

    // A stalled Cluster answers Unavailable within the timeout, and is used again after.
    let mut options = RedisOptions::cluster(cluster.urls());
    options.timeout = Duration::from_millis(100);
    let store = RedisStore::new(&options).unwrap();
    let key = CounterKey::new("k").unwrap();
    let window = Duration::from_secs(60);
    eventually(|| store.increment(&key, 1, window, SystemTime::now())).await;
    cluster.pause();
    let began = Instant::now();
    let stalled = store.increment(&key, 1, window, SystemTime::now()).await;
    let took = began.elapsed();
    cluster.resume();
    // Cut by the store's own 100 ms timeout (not by the Cluster client's 1 s response
    // timeout): the bound on the time only has to leave room for a loaded machine.
    assert!(
        matches!(&stalled, Err(StoreError::Unavailable { reason }) if reason == "no answer within 100 ms"),
        "{stalled:?}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let count = eventually(|| store.increment(&key, 1, window, SystemTime::now())).await;
    assert!(count.count >= 2, "{count:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_store_forwards_every_trait_to_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let make = |prefix| StateStore::from(store(&server.url(), prefix));
    let state = make("s:");
    assert_eq!((state.kind(), state.is_shared()), ("redis", true));
    let start = from_micros(micros(SystemTime::now()));
    conformance::api_keys(&make("keys:")).await;
    conformance::counters(&make("counters:"), start).await;
    conformance::gcra_many(&make("many:"), start).await;
    conformance::nonces_expiring(Arc::new(make("nonces:")), start, Expiry::ByItself).await;
    conformance::ownership_expiring(&make("owners:"), start, Expiry::ByItself).await;
    conformance::queue(&make("queue:"), start).await;
}

/// The API key verifier polls `version()` and reads `list()` with `block_on` on a blocking
/// thread of the runtime: a revocation by one client is seen there at the next poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_reader_sees_a_revocation_by_another_client() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (writer, reader) = (store(&server.url(), "k:"), store(&server.url(), "k:"));
    writer
        .insert(&conformance::sample_key("k1", "batch"))
        .await
        .unwrap();
    let read = reader.clone();
    let before = tokio::task::spawn_blocking(move || crate::block_on(read.version()))
        .await
        .unwrap()
        .unwrap();
    writer.revoke("k1", SystemTime::now()).await.unwrap();
    let (after, keys) = tokio::task::spawn_blocking(move || {
        (
            crate::block_on(reader.version()),
            crate::block_on(reader.list()),
        )
    })
    .await
    .unwrap();
    assert_ne!(after.unwrap(), before);
    assert!(keys.unwrap()[0].revoked_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_of_one_redis_share_state() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = (store(&server.url(), "p:"), store(&server.url(), "p:"));
    let now = SystemTime::now();
    let n = Nonce::new("evt").unwrap();
    assert!(
        a.insert_if_absent(&n, Duration::from_secs(60), now)
            .await
            .unwrap()
    );
    assert!(
        !b.insert_if_absent(&n, Duration::from_secs(60), now)
            .await
            .unwrap()
    );
    let v = b.version().await.unwrap();
    a.insert(&conformance::sample_key("k1", "n")).await.unwrap();
    assert_ne!(
        b.version().await.unwrap(),
        v,
        "a write by one is seen by the other"
    );
    let other = store(&server.url(), "other:");
    assert!(
        other
            .insert_if_absent(&n, Duration::from_secs(60), now)
            .await
            .unwrap(),
        "another prefix is another store"
    );
    // Another database, from the URL or from the option, is another store too.
    let db3 = store(&format!("{}/3", server.url()), "p:");
    assert!(
        db3.insert_if_absent(&n, Duration::from_secs(60), now)
            .await
            .unwrap()
    );
    let mut options = RedisOptions::standalone(server.url());
    (options.prefix, options.database) = ("p:".to_owned(), Some(3));
    let also_db3 = RedisStore::new(&options).unwrap();
    assert!(
        !also_db3
            .insert_if_absent(&n, Duration::from_secs(60), now)
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_read_once_costs_no_round_trip_and_an_unknown_object_is_always_asked() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // The calls that must succeed get the generous timeout of `store`; the calls made while
    // Redis is paused go through a short-timeout view sharing its connection and cache.
    let (reader, writer) = (store(&server.url(), "own:"), store(&server.url(), "own:"));
    let paused_reader = reader.with_timeout(Duration::from_millis(200));
    let (session, unknown) = (ObjectId::new("s-1").unwrap(), ObjectId::new("s-2").unwrap());
    let alice = Owner::new("apikey:alice").unwrap();
    let now = SystemTime::now();
    assert_eq!(
        eventually(|| Ownership::get(&reader, &session, now)).await,
        None
    );
    writer
        .put(&session, &alice, Duration::from_secs(3600), now)
        .await
        .unwrap();
    let read = Ownership::get(&reader, &session, now).await.unwrap();
    assert_eq!(
        read.map(|r| r.owner),
        Some(alice.clone()),
        "what was absent is asked again, never remembered"
    );

    server.pause();
    let cached = Ownership::get(&paused_reader, &session, SystemTime::now()).await;
    let asked = Ownership::get(&paused_reader, &unknown, SystemTime::now()).await;
    server.resume();
    assert_eq!(cached.unwrap().map(|r| r.owner), Some(alice));
    assert!(
        matches!(asked, Err(StoreError::Unavailable { .. })),
        "an object never seen goes to Redis: {asked:?}"
    );
    assert!(Ownership::remove(&reader, &session).await.unwrap());
    assert_eq!(
        Ownership::get(&reader, &session, SystemTime::now())
            .await
            .unwrap(),
        None,
        "a removed record is forgotten here too"
    );
}

/// The copy of records read answers their owner only: for anyone else the record is read
/// from Redis, as for an object that does not exist, so the time a refusal takes does not
/// tell someone else's object from no object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_record_answers_its_owner_only_and_anyone_else_waits_for_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // The calls that must succeed get the generous timeout of `store`; the calls made while
    // Redis is paused go through a short-timeout view sharing its connection and cache.
    let store = store(&server.url(), "asked:");
    let paused = store.with_timeout(Duration::from_millis(200));
    let (session, warm) = (
        ObjectId::new("s-1").unwrap(),
        ObjectId::new("warm").unwrap(),
    );
    let (alice, mallory) = (
        Owner::new("apikey:alice").unwrap(),
        Owner::new("apikey:mallory").unwrap(),
    );
    let now = SystemTime::now();
    // Connected and warm, then the record written (and so kept here).
    assert_eq!(
        eventually(|| Ownership::get(&store, &warm, now)).await,
        None
    );
    store
        .put(&session, &alice, Duration::from_secs(3600), now)
        .await
        .unwrap();

    server.pause();
    let own = paused.get_for(&session, &alice, SystemTime::now()).await;
    let foreign = paused.get_for(&session, &mallory, SystemTime::now()).await;
    server.resume();
    assert_eq!(own.unwrap().map(|r| r.owner), Some(alice.clone()));
    assert!(
        matches!(foreign, Err(StoreError::Unavailable { .. })),
        "someone else's object was answered without asking Redis: {foreign:?}"
    );
    // Once Redis answers, the other caller learns the owner, which is not itself.
    let foreign = store
        .get_for(&session, &mallory, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(foreign.map(|r| r.owner), Some(alice));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_answers_unavailable_within_the_timeout_and_recovers() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut options = RedisOptions::standalone(server.url());
    options.timeout = Duration::from_millis(50);
    let store = RedisStore::new(&options).unwrap();
    let key = CounterKey::new("k").unwrap();
    let window = Duration::from_secs(60);
    // Connected and warm (the first call may load the script): retried until one succeeds,
    // as a loaded machine may take longer than the 50 ms for the first ones.
    eventually(|| store.increment(&key, 1, window, SystemTime::now())).await;
    server.pause();
    for _ in 0..3 {
        let began = Instant::now();
        let result = store.increment(&key, 1, window, SystemTime::now()).await;
        let took = began.elapsed();
        assert!(
            matches!(result, Err(StoreError::Unavailable { .. })),
            "{result:?}"
        );
        // Without the timeout the call would wait for the paused server forever; the bound
        // leaves a loaded machine room over the 50 ms.
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }
    server.resume();
    let count = eventually(|| store.increment(&key, 1, window, SystemTime::now())).await;
    assert!(count.count >= 2, "{count:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_down_at_start_and_restarted_is_used_once_it_is_back() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    server.kill();
    let mut options = RedisOptions::standalone(server.url());
    options.timeout = Duration::from_millis(100);
    // Built while Redis is down: no error until it is used.
    let store = RedisStore::new(&options).unwrap();
    let n = Nonce::new("evt").unwrap();
    let window = Duration::from_secs(60);
    let began = Instant::now();
    let down = store.insert_if_absent(&n, window, SystemTime::now()).await;
    assert!(
        matches!(down, Err(StoreError::Unavailable { .. })),
        "{down:?}"
    );
    assert!(began.elapsed() < Duration::from_secs(1));

    server.restart();
    assert!(eventually(|| store.insert_if_absent(&n, window, SystemTime::now())).await);

    // Killed and started again under a connected client: it reconnects by itself (to an
    // empty Redis, which loaded none of the scripts).
    server.restart();
    assert!(eventually(|| store.insert_if_absent(&n, window, SystemTime::now())).await);
    // A call that must answer: more than the 100 ms a loaded machine may need.
    assert!(
        !store
            .with_timeout(Duration::from_secs(2))
            .insert_if_absent(&n, window, SystemTime::now())
            .await
            .unwrap()
    );

    // A pipeline of scripts the fresh server never saw: each check still runs, once.
    server.restart();
    let limit = GcraLimit::per(1, Duration::from_secs(60), 1).unwrap();
    let (a, b) = (CounterKey::new("a").unwrap(), CounterKey::new("b").unwrap());
    let now = SystemTime::now();
    let one = GcraTake::EXACTLY_ONE;
    let checks = [(&a, &limit, one), (&b, &limit, one), (&a, &limit, one)];
    let decisions = eventually(|| async {
        let answers = store.gcra_many(&checks, now).await;
        answers.into_iter().collect::<Result<Vec<_>, _>>()
    })
    .await;
    assert_eq!(
        decisions.iter().map(|d| d.allowed).collect::<Vec<_>>(),
        [true, true, false]
    );
}

/// One frozen master fails the checks of its slots only: the other checks of the same call
/// are decided (and consumed) by the masters that answered, within the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_cluster_master_fails_only_the_checks_of_its_slots() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let mut options = RedisOptions::cluster(cluster.urls());
    options.timeout = Duration::from_millis(300);
    let store = RedisStore::new(&options).unwrap();
    // Two keys whose slots two different masters serve.
    let master = |key: &CounterKey| cluster.master_of(&store.gcra_key(key));
    let a = CounterKey::new("a").unwrap();
    let b = (0..64)
        .map(|i| CounterKey::new(format!("b{i}")).unwrap())
        .find(|b| master(b) != master(&a))
        .unwrap();
    let limit = GcraLimit::per(1, Duration::from_secs(60), 1).unwrap();
    let one = GcraTake::EXACTLY_ONE;
    let checks = [(&a, &limit, one), (&b, &limit, one)];
    // Connected to every master first.
    let both = eventually(|| async {
        let answers = store.gcra_many(&checks, SystemTime::now()).await;
        answers.into_iter().collect::<Result<Vec<_>, _>>()
    })
    .await;
    assert!(both.iter().all(|d| d.allowed));

    let frozen = master(&b);
    cluster.pause_node(frozen);
    let began = Instant::now();
    let answers = store.gcra_many(&checks, SystemTime::now()).await;
    let took = began.elapsed();
    cluster.resume_node(frozen);
    let [a_answer, b_answer] = <[_; 2]>::try_from(answers).unwrap();
    assert!(!a_answer.unwrap().allowed, "a's master answered: refused");
    // Cut by the store's own 300 ms timeout (not by the Cluster client's 1 s response
    // timeout): the bound on the time only has to leave room for a loaded machine.
    assert!(
        matches!(&b_answer, Err(StoreError::Unavailable { reason }) if reason == "no answer within 300 ms"),
        "{b_answer:?}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

/// Checks whose node lost its scripts (a restart, SCRIPT FLUSH) run with the script's text
/// on that node alone: a stalled master elsewhere in the Cluster does not hold them up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_a_node_lost_runs_there_while_another_master_stalls() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let mut options = RedisOptions::cluster(cluster.urls());
    options.timeout = Duration::from_millis(500);
    let store = RedisStore::new(&options).unwrap();
    let a = CounterKey::new("a").unwrap();
    let limit = GcraLimit::per(10, Duration::from_secs(60), 10).unwrap();
    let checks = [(&a, &limit, GcraTake::EXACTLY_ONE)];
    // Connected to every master first.
    eventually(|| async {
        let answers = store.gcra_many(&checks, SystemTime::now()).await;
        answers.into_iter().collect::<Result<Vec<_>, _>>()
    })
    .await;

    for node in 0..cluster.urls().len() {
        assert_eq!(cluster.query(node, "SCRIPT FLUSH"), "+OK\r\n");
    }
    let own = cluster.master_of(&store.gcra_key(&a));
    let stalled = *cluster.masters().iter().find(|&&m| m != own).unwrap();
    cluster.pause_node(stalled);
    let began = Instant::now();
    let answers = store.gcra_many(&checks, SystemTime::now()).await;
    let took = began.elapsed();
    cluster.resume_node(stalled);
    assert!(answers[0].as_ref().is_ok_and(|d| d.allowed), "{answers:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_is_down_answers_unavailable_in_time() {
    let mut options = RedisOptions::cluster(["redis://127.0.0.1:1", "redis://127.0.0.1:2"]);
    options.timeout = Duration::from_millis(100);
    let store = RedisStore::new(&options).unwrap();
    let began = Instant::now();
    let down = store
        .insert_if_absent(
            &Nonce::new("n").unwrap(),
            Duration::from_secs(1),
            SystemTime::now(),
        )
        .await;
    assert!(
        matches!(down, Err(StoreError::Unavailable { .. })),
        "{down:?}"
    );
    assert!(began.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaks_tls_to_a_redis_with_its_own_ca() {
    let Some(server) = RedisServer::start_with(ServerOptions {
        tls: true,
        ..ServerOptions::default()
    }) else {
        return;
    };
    assert!(server.url().starts_with("rediss://"));
    let mut options = RedisOptions::standalone(server.url());
    options.ca_file = Some(server.ca_file());
    options.timeout = Duration::from_secs(2);
    let store = RedisStore::new(&options).unwrap();
    let n = Nonce::new("evt").unwrap();
    assert!(
        store
            .insert_if_absent(&n, Duration::from_secs(60), SystemTime::now())
            .await
            .unwrap()
    );

    // Without the CA the server is not trusted.
    options.ca_file = None;
    let untrusted = RedisStore::new(&options).unwrap();
    let refused = untrusted
        .insert_if_absent(&n, Duration::from_secs(60), SystemTime::now())
        .await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable { .. })),
        "{refused:?}"
    );
}

const PASSWORD: &str = "s3cret-redis-pa55word";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticates_as_an_acl_user_and_never_shows_the_password() {
    let Some(server) = RedisServer::start_with(ServerOptions {
        username: Some("idgate".to_owned()),
        password: Some(PASSWORD.to_owned()),
        ..ServerOptions::default()
    }) else {
        return;
    };
    let mut options = RedisOptions::standalone(server.url());
    options.username = Some("idgate".to_owned());
    options.password = Some(SecretString::from(PASSWORD));
    options.timeout = Duration::from_secs(2);
    assert!(!format!("{options:?}").contains(PASSWORD));
    let store = RedisStore::new(&options).unwrap();
    assert!(!format!("{store:?}").contains(PASSWORD));
    let limit = GcraLimit::per(1, Duration::from_secs(1), 1).unwrap();
    let key = CounterKey::new("k").unwrap();
    assert!(
        store
            .gcra(&key, &limit, GcraTake::EXACTLY_ONE, SystemTime::now())
            .await
            .unwrap()
            .allowed
    );

    // A wrong password fails, and the error does not show the one given.
    let wrong = "not-the-".to_owned() + PASSWORD;
    options.password = Some(SecretString::from(wrong.clone()));
    let refused = RedisStore::new(&options)
        .unwrap()
        .gcra(&key, &limit, GcraTake::EXACTLY_ONE, SystemTime::now())
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::Unavailable { .. }),
        "{refused:?}"
    );
    for shown in [format!("{refused}"), format!("{refused:?}")] {
        assert!(
            !shown.contains(&wrong) && !shown.contains(PASSWORD),
            "{shown}"
        );
    }

    // A password in the URL is refused, without being echoed.
    let in_url = server
        .url()
        .replace("redis://", &format!("redis://idgate:{PASSWORD}@"));
    let err = RedisStore::new(&RedisOptions::standalone(&in_url)).unwrap_err();
    assert!(matches!(err, StoreError::RedisConfig { .. }));
    assert!(!format!("{err} {err:?}").contains(PASSWORD));
    for options in [
        RedisOptions::standalone(&in_url),
        RedisOptions::cluster([in_url.clone(), format!("{in_url}/?x=1")]),
    ] {
        let shown = format!("{options:?}");
        assert!(
            !shown.contains(PASSWORD) && shown.contains("idgate:<redacted>@"),
            "{shown}"
        );
    }
}

/// The users docs/state.md recommends: the gateway's does every state operation and reads
/// the API keys but cannot change them; the one for `idgate keys` writes the keys and
/// touches nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_documented_users_do_their_work_and_no_more() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let users = super::testing::documented_users(PASSWORD);
    let names: Vec<&str> = users.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["idgate", "idgate-keys"]);
    for (name, rules) in &users {
        let reply = server.query(&format!("ACL SETUSER {name} reset {}", rules.join(" ")));
        assert_eq!(reply, "+OK\r\n", "{name}: {reply}");
    }
    let as_user = |user: &str, prefix: &str| {
        let mut options = RedisOptions::standalone(server.url());
        options.username = Some(user.to_owned());
        options.password = Some(SecretString::from(PASSWORD));
        options.prefix = prefix.to_owned();
        options.timeout = Duration::from_secs(2);
        RedisStore::new(&options).unwrap()
    };

    // The keys user manages the keys, under the default prefix.
    let keys = as_user("idgate-keys", "idgate:");
    conformance::api_keys(&keys).await;

    // The gateway's user: every other suite (each under a prefix of its own, which its
    // rules cover as they cover the default one's keys but the key records)...
    let start = from_micros(micros(SystemTime::now()));
    let gw = |p: &str| as_user("idgate", &format!("idgate:{p}"));
    conformance::counters(&gw("counters:"), start).await;
    conformance::counters_concurrently(Arc::new(gw("concurrent:")), start).await;
    conformance::gcra_many(&gw("many:"), start).await;
    conformance::nonces_expiring(Arc::new(gw("nonces:")), start, Expiry::ByItself).await;
    conformance::ownership_expiring(&gw("owners:"), start, Expiry::ByItself).await;
    conformance::queue(&gw("queue:"), start).await;
    conformance::queue_concurrently(Arc::new(gw("race:")), start).await;

    // ...reads the keys, and can neither add nor change one.
    let gateway = as_user("idgate", "idgate:");
    let before = keys.list().await.unwrap();
    assert_eq!(gateway.list().await.unwrap(), before);
    assert_eq!(
        gateway.version().await.unwrap(),
        keys.version().await.unwrap()
    );
    assert!(ApiKeyStore::get(&gateway, "aaaa").await.unwrap().is_some());
    let refused = gateway
        .insert(&conformance::sample_key("eeee", "admin"))
        .await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable { .. })),
        "{refused:?}"
    );
    let refused = gateway.revoke("aaaa", SystemTime::now()).await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable { .. })),
        "{refused:?}"
    );
    assert_eq!(keys.list().await.unwrap(), before, "nothing changed");

    // The keys user touches no other state.
    let refused = keys
        .increment(
            &CounterKey::new("k").unwrap(),
            1,
            Duration::from_secs(60),
            SystemTime::now(),
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable { .. })),
        "{refused:?}"
    );
    let refused = keys
        .insert_if_absent(
            &Nonce::new("n").unwrap(),
            Duration::from_secs(1),
            SystemTime::now(),
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable { .. })),
        "{refused:?}"
    );

    // Outside its prefix the gateway's user is refused.
    let outside = as_user("idgate", "other:");
    let refused = outside
        .insert_if_absent(
            &Nonce::new("n").unwrap(),
            Duration::from_secs(1),
            SystemTime::now(),
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable { .. })),
        "{refused:?}"
    );
}

/// The same users in a Cluster while a slot moves between masters: a key of that slot not
/// on the old master yet is answered with ASK, which the client follows with ASKING to the
/// new master, a command the users must be allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_documented_users_follow_a_slot_migration() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let users = super::testing::documented_users(PASSWORD);
    // ACL users are each node's own.
    for node in 0..cluster.urls().len() {
        for (name, rules) in &users {
            let reply = cluster.query(
                node,
                &format!("ACL SETUSER {name} reset {}", rules.join(" ")),
            );
            assert_eq!(reply, "+OK\r\n", "{name} on node {node}: {reply}");
        }
    }
    let as_user = |user: &str| {
        let mut options = RedisOptions::cluster(cluster.urls());
        options.username = Some(user.to_owned());
        options.password = Some(SecretString::from(PASSWORD));
        options.timeout = Duration::from_secs(2);
        RedisStore::new(&options).unwrap()
    };
    let (keys, gateway) = (as_user("idgate-keys"), as_user("idgate"));
    // Connected to the cluster, before any slot moves.
    let warm = CounterKey::new("warm").unwrap();
    let limit = GcraLimit::per(10, Duration::from_secs(60), 10).unwrap();
    let one = GcraTake::EXACTLY_ONE;
    eventually(|| gateway.gcra(&warm, &limit, one, SystemTime::now())).await;
    assert!(eventually(|| keys.list()).await.is_empty());

    // A key record and a GCRA key written, each on its slot's master.
    let counter = CounterKey::new("k").unwrap();
    keys.insert(&conformance::sample_key("aaaa", "admin"))
        .await
        .unwrap();
    assert!(
        gateway
            .gcra(&counter, &limit, one, SystemTime::now())
            .await
            .unwrap()
            .allowed
    );

    // Their slots start moving to another master, and their keys are moved already: the
    // old master answers ASK for them.
    let masters = cluster.masters();
    let moving = [
        vec![keys.key("{keys}:records"), keys.key("{keys}:version")],
        vec![gateway.gcra_key(&counter)],
    ];
    for moved in moving {
        let slot = cluster.query(0, &format!("CLUSTER KEYSLOT {}", moved[0]));
        let slot = slot.trim().trim_start_matches(':');
        let from = cluster.master_of(&moved[0]);
        let to = *masters.iter().find(|&&m| m != from).unwrap();
        let (from_id, to_id) = (cluster.node_id(from), cluster.node_id(to));
        let reply = cluster.query(to, &format!("CLUSTER SETSLOT {slot} IMPORTING {from_id}"));
        assert_eq!(reply, "+OK\r\n", "{reply}");
        let reply = cluster.query(from, &format!("CLUSTER SETSLOT {slot} MIGRATING {to_id}"));
        assert_eq!(reply, "+OK\r\n", "{reply}");
        let to_port = cluster.urls()[to].rsplit(':').next().unwrap().to_owned();
        let reply = cluster.query(
            from,
            &format!(
                "MIGRATE 127.0.0.1 {to_port} \"\" 0 5000 KEYS {}",
                moved.join(" ")
            ),
        );
        assert_eq!(reply, "+OK\r\n", "{reply}");
    }

    // Each user's calls are sent on to the new master, and do their work there.
    keys.insert(&conformance::sample_key("bbbb", "admin"))
        .await
        .unwrap();
    let listed = gateway.list().await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(
        gateway.version().await.unwrap(),
        keys.version().await.unwrap()
    );
    let decision = gateway
        .gcra(&counter, &limit, one, SystemTime::now())
        .await
        .unwrap();
    assert!(decision.allowed);
    let decisions = gateway
        .gcra_many(&[(&counter, &limit, one)], SystemTime::now())
        .await;
    assert!(decisions[0].as_ref().unwrap().allowed, "{decisions:?}");
}

/// A login refused once (a password rotated on the client before Redis) is tried again, and
/// the store works as soon as Redis takes the new password, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_refused_once_is_tried_again_once_redis_accepts_it() {
    let Some(server) = RedisServer::start_with(ServerOptions {
        password: Some(PASSWORD.to_owned()),
        ..ServerOptions::default()
    }) else {
        return;
    };
    let with_password = |password: &str| {
        let mut options = RedisOptions::standalone(server.url());
        options.password = Some(SecretString::from(password));
        options.timeout = Duration::from_secs(2);
        RedisStore::new(&options).unwrap()
    };
    let new_password = format!("new-{PASSWORD}");
    let (old, new) = (with_password(PASSWORD), with_password(&new_password));
    let n = Nonce::new("evt").unwrap();
    let window = Duration::from_secs(60);
    let refused = new.insert_if_absent(&n, window, SystemTime::now()).await;
    assert!(
        matches!(&refused, Err(StoreError::Unavailable { reason }) if reason.contains("AuthenticationFailed")),
        "{refused:?}"
    );

    // Redis now takes the new password (and the old one no more).
    let changed: String = old
        .call(|mut c| async move {
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("requirepass")
                .arg(&new_password)
                .query_async(&mut c)
                .await
        })
        .await
        .unwrap();
    assert_eq!(changed, "OK");
    assert!(eventually(|| new.insert_if_absent(&n, window, SystemTime::now())).await);
}

/// A failover behind one address: the primary is demoted to a replica of another server,
/// which the address now leads to. The demoted server keeps the store's connection open and
/// answers READONLY on it; the store then connects again and its writes land on the new
/// primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readonly_reply_makes_the_connection_be_made_again() {
    let (Some(old_primary), Some(new_primary)) = (RedisServer::start(), RedisServer::start())
    else {
        return;
    };
    let address = MovingAddress::to(old_primary.port()).await;
    // One store sees READONLY on a single call, the other on a pipeline of checks.
    let (single, pipelined) = (store(&address.url(), "p:"), store(&address.url(), "p:"));
    let key = CounterKey::new("k").unwrap();
    let window = Duration::from_secs(60);
    let limit = GcraLimit::per(10, Duration::from_secs(60), 10).unwrap();
    let checks = [(&key, &limit, GcraTake::EXACTLY_ONE)];
    eventually(|| single.increment(&key, 1, window, SystemTime::now())).await;
    eventually(|| async {
        let answers = pipelined.gcra_many(&checks, SystemTime::now()).await;
        answers.into_iter().collect::<Result<Vec<_>, _>>()
    })
    .await;

    address.move_to(new_primary.port());
    let reply = old_primary.query(&format!("REPLICAOF 127.0.0.1 {}", new_primary.port()));
    assert_eq!(reply, "+OK\r\n", "{reply}");
    // Synced (not loading, which would answer LOADING): from now on it answers READONLY.
    // The primary waits 5 s for more replicas before it sends its data.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !old_primary
        .query("INFO replication")
        .contains("master_link_status:up")
    {
        assert!(Instant::now() < deadline, "the replica did not sync");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let demoted = single.increment(&key, 1, window, SystemTime::now()).await;
    assert!(
        matches!(&demoted, Err(StoreError::Unavailable { reason }) if reason.contains("READONLY")),
        "{demoted:?}"
    );
    let count = eventually(|| single.increment(&key, 1, window, SystemTime::now())).await;
    assert_eq!(
        count.count, 1,
        "a new window, on the new primary: {count:?}"
    );
    let on_new = new_primary.query(&format!("EXISTS {}", single.window_key(&key)));
    assert_eq!(on_new, ":1\r\n", "the write landed on the new primary");

    let demoted = pipelined.gcra_many(&checks, SystemTime::now()).await;
    assert!(
        matches!(&demoted[0], Err(StoreError::Unavailable { reason }) if reason.contains("READONLY")),
        "{demoted:?}"
    );
    // The next call already goes through a new connection, to the new primary.
    let decision = pipelined
        .gcra(&key, &limit, GcraTake::EXACTLY_ONE, SystemTime::now())
        .await
        .unwrap();
    assert!(decision.allowed);
    let on_new = new_primary.query(&format!("EXISTS {}", pipelined.gcra_key(&key)));
    assert_eq!(on_new, ":1\r\n", "the check landed on the new primary");
}

/// A TCP address standing for a name or a virtual address that moves in a failover: each
/// connection made to it goes to the port it leads to at that moment; connections made
/// before stay where they went.
struct MovingAddress {
    port: u16,
    to: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl MovingAddress {
    async fn to(port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let own = listener.local_addr().unwrap().port();
        let to = Arc::new(AtomicU16::new(port));
        let target = to.clone();
        let task = tokio::spawn(async move {
            // Dropped with the task, closing every forwarded connection.
            let mut forwarded = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let port = target.load(Ordering::SeqCst);
                forwarded.spawn(async move {
                    let to = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await;
                    if let Ok(mut outbound) = to {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self {
            port: own,
            to,
            task,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Leads the connections made from now on to `port`.
    fn move_to(&self, port: u16) {
        self.to.store(port, Ordering::SeqCst);
    }
}

impl Drop for MovingAddress {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requirepass_protects_the_default_user() {
    let Some(server) = RedisServer::start_with(ServerOptions {
        password: Some(PASSWORD.to_owned()),
        ..ServerOptions::default()
    }) else {
        return;
    };
    let n = Nonce::new("evt").unwrap();
    let anonymous = store(&server.url(), "p:");
    assert!(matches!(
        anonymous
            .insert_if_absent(&n, Duration::from_secs(60), SystemTime::now())
            .await,
        Err(StoreError::Unavailable { .. })
    ));
    let mut options = RedisOptions::standalone(server.url());
    options.password = Some(SecretString::from(PASSWORD));
    options.timeout = Duration::from_secs(2);
    let store = RedisStore::new(&options).unwrap();
    assert!(
        store
            .insert_if_absent(&n, Duration::from_secs(60), SystemTime::now())
            .await
            .unwrap()
    );
}

#[test]
fn outside_a_runtime_it_says_so_instead_of_panicking() {
    let err = RedisStore::new(&RedisOptions::standalone("redis://127.0.0.1:1")).unwrap_err();
    assert!(matches!(err, StoreError::RedisConfig { .. }), "{err:?}");
}

/// A Cluster client takes TLS or not from its first seed alone and would use a CA with
/// `redis://` seeds for nothing, logging in in clear: a CA file asks for TLS to every node.
#[tokio::test]
async fn a_ca_file_with_plain_cluster_seeds_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, "").unwrap();
    for seeds in [
        vec!["redis://127.0.0.1:1", "redis://127.0.0.1:2"],
        vec!["rediss://127.0.0.1:1", "redis://127.0.0.1:2"],
    ] {
        let mut options = RedisOptions::cluster(seeds);
        options.ca_file = Some(ca.clone());
        let refused = RedisStore::new(&options);
        assert!(
            matches!(&refused, Err(StoreError::RedisConfig { reason }) if reason.contains("rediss://")),
            "{refused:?}"
        );
    }
    let mut options = RedisOptions::standalone("redis://127.0.0.1:1");
    options.ca_file = Some(ca);
    let refused = RedisStore::new(&options);
    assert!(
        matches!(&refused, Err(StoreError::RedisConfig { reason }) if reason.contains("rediss://")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn refuses_options_that_cannot_work() {
    let mut options = RedisOptions::standalone("redis://127.0.0.1:1");
    options.prefix = "idgate{x}:".to_owned();
    assert!(matches!(
        RedisStore::new(&options),
        Err(StoreError::RedisConfig { .. })
    ));
    assert!(matches!(
        RedisStore::new(&RedisOptions::standalone("http://example.org")),
        Err(StoreError::RedisConfig { .. })
    ));
    let mut cluster = RedisOptions::cluster(["redis://127.0.0.1:1"]);
    cluster.database = Some(2);
    assert!(matches!(
        RedisStore::new(&cluster),
        Err(StoreError::RedisConfig { .. })
    ));
}

/// Retries `f` for up to ten seconds until it succeeds.
pub(super) async fn eventually<T, F: Future<Output = Result<T, StoreError>>>(
    f: impl Fn() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(Instant::now() < deadline, "still failing: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
