//! The agent rotating the gateway's SVID every second while callers keep calling.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::support::*;

use super::*;

#[tokio::test]
async fn svid_rotations_under_load_fail_no_request_and_each_new_handshake_presents_the_newest() {
    within_limit(Duration::from_secs(90), async {
        let agent = Agent::start().await;
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let mut gw = Gateway::spawn(&config(&agent, &upstream, &[ONBOARDING]), &[]);
        agent.push(&agent.gateway_svid(), &[]);
        gw.serving().await;

        let dir = tempfile::tempdir().unwrap();
        let me = caller(&agent.ca, ONBOARDING, dir.path(), "onboarding");
        let bundle = agent.bundle_file("bundle.pem");
        let client = Client::with_identity(&bundle, &me, gw.port, rustls::DEFAULT_VERSIONS);

        // Load: two callers reusing one connection each, two making a new connection (a new
        // handshake) for every request.
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let mut load = Vec::new();
        for n in 0..4 {
            let (client, stop, ok, failures) =
                (client.clone(), stop.clone(), ok.clone(), failures.clone());
            load.push(tokio::spawn(async move {
                let mut kept = None;
                while !stop.load(Ordering::Relaxed) {
                    let reply = if n % 2 == 0 {
                        if kept.is_none() {
                            kept = client
                                .connect()
                                .await
                                .map_err(|e| failures.lock().unwrap().push(e))
                                .ok();
                        }
                        match kept.as_mut() {
                            Some(c) => c.send("GET", "/v1/kyc", &[], "").await,
                            None => continue,
                        }
                    } else {
                        client.get("/v1/kyc").await
                    };
                    match reply {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures
                            .lock()
                            .unwrap()
                            .push(format!("status {}", r.status)),
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            }));
        }

        for round in 0..6 {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let next = agent.gateway_svid();
            agent.push(&next, &[]);
            let want = f64::from(round + 2);
            crate::assert_eventually!(
                svid_updates(&gw).await >= want,
                "rotation {round} not taken; output:\n{}",
                gw.output()
            );
            // Taken: every handshake from now on presents it.
            for _ in 0..3 {
                assert_eq!(
                    presented_leaf(&client).await.unwrap(),
                    next.chain[0].to_vec(),
                    "rotation {round}: a new handshake presented an older SVID"
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
        for task in load {
            task.await.unwrap();
        }
        let failures = failures.lock().unwrap().clone();
        let ok = ok.load(Ordering::Relaxed);
        assert!(
            failures.is_empty(),
            "{} of {} requests failed: {failures:?}",
            failures.len(),
            ok
        );
        assert!(ok > 100, "too little load to prove anything: {ok} requests");
        assert_eq!(
            metric(&gw, "idgate_workload_api_refused_updates_total").await,
            Some(0.0)
        );
    })
    .await;
}
