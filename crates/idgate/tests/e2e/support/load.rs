//! Paced load: several connections, each sending one request per interval for a while, with
//! the answers counted. What a test asserts is how many were admitted and refused (against
//! a rate limit, say), never how fast the machine was.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Client;

/// What a paced load got back.
#[derive(Debug, Clone, Copy)]
pub struct LoadCount {
    pub admitted: u64,
    pub refused: u64,
    /// From the first request to the last answer.
    pub elapsed: Duration,
}

/// One sender per client, each on its own connection sending `GET path` every `every` for
/// `run_for` (a sender that falls behind sends at once). 200 counts as admitted, 429 as
/// refused; any other status fails the test.
pub async fn paced_load(
    clients: Vec<Client>,
    path: &str,
    every: Duration,
    run_for: Duration,
) -> LoadCount {
    let admitted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut senders = Vec::new();
    for client in clients {
        let (admitted, refused, path) = (admitted.clone(), refused.clone(), path.to_owned());
        senders.push(tokio::spawn(async move {
            let mut conn = client.connect().await.unwrap();
            let mut next = Instant::now();
            while start.elapsed() < run_for {
                let reply = conn.send("GET", &path, &[], "").await.unwrap();
                match reply.status {
                    200 => admitted.fetch_add(1, Ordering::Relaxed),
                    429 => refused.fetch_add(1, Ordering::Relaxed),
                    other => panic!("status {other}: {:?}", reply.body),
                };
                next += every;
                tokio::time::sleep_until(next.into()).await;
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    LoadCount {
        admitted: admitted.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    }
}
