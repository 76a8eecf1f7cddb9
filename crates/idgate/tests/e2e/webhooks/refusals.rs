//! What the webhook endpoint refuses: forged, re-signed with another secret, stale and
//! replayed events (401, each with its problem type), a wrong method, a body over the
//! limit, a source outside the allow list — none of them kept or delivered.

use std::time::Duration;

use super::*;
use crate::assert_eventually;

fn problem_type(r: &Reply) -> String {
    r.json()["type"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn forged_resigned_stale_and_replayed_events_are_refused_and_never_delivered() {
    within(async {
        let pki = Pki::default_pki();
        let dir = tempfile::tempdir().unwrap();
        let sub = Subscriber::start(&pki).await;
        let mut gw = Gateway::start(
            &webhook_config(&pki, dir.path(), &sub.url(), toml::Table::new()),
            &[TRACE_LOG],
        )
        .await;
        let client = provider_client(&pki, gw.port);
        let t = now_secs();

        let genuine = envelope("evt-genuine", "sess-1", 1, t);
        let ok = post_signed(&client, DIDIT_SECRET, &genuine).await.unwrap();
        assert_eq!(ok.status, 200, "{:?}", ok.body);
        let key = ok.json()["event_id"].as_str().unwrap().to_owned();

        // Replayed: the same event, byte for byte, within the window.
        let replay = post_signed(&client, DIDIT_SECRET, &genuine).await.unwrap();
        assert_eq!(replay.status, 401);
        assert_eq!(
            problem_type(&replay),
            "https://idgate.dev/problems/webhook-replayed"
        );
        assert!(replay.header("www-authenticate").is_some());

        // Forged: a genuine signature over another body.
        let signed = didit_webhook::sign(DIDIT_SECRET, &envelope("evt-a", "sess-1", 2, t));
        let tampered = didit_webhook::sign(DIDIT_SECRET, &{
            let mut e = envelope("evt-a", "sess-1", 2, t);
            e["status"] = "Approved".into();
            e
        });
        let mut headers: Vec<(&str, &str)> = signed.headers().to_vec();
        headers.push(("content-type", "application/json"));
        let forged = client
            .send(
                "POST",
                WEBHOOK_PATH,
                &headers,
                std::str::from_utf8(&tampered.body).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(forged.status, 401);
        assert_eq!(
            problem_type(&forged),
            "https://idgate.dev/problems/webhook-signature-invalid"
        );

        // Re-signed with a secret that is not the webhook's.
        let wrong = post_signed(
            &client,
            "not-the-secret",
            &envelope("evt-b", "sess-2", 1, t),
        )
        .await
        .unwrap();
        assert_eq!(wrong.status, 401);
        assert_eq!(
            problem_type(&wrong),
            "https://idgate.dev/problems/webhook-signature-invalid"
        );

        // Stale (and from the future): signed correctly, outside the 300 s tolerance.
        for ts in [t - 600, t + 600] {
            let stale = post_signed(&client, DIDIT_SECRET, &envelope("evt-c", "sess-3", 1, ts))
                .await
                .unwrap();
            assert_eq!(stale.status, 401, "{ts}");
            assert_eq!(
                problem_type(&stale),
                "https://idgate.dev/problems/webhook-stale"
            );
        }

        // No signature at all, and a method that is not POST.
        let bare = client
            .send("POST", WEBHOOK_PATH, &[], "{\"event_id\":\"x\"}")
            .await
            .unwrap();
        assert_eq!(bare.status, 401);
        let get = client.get(WEBHOOK_PATH).await.unwrap();
        assert_eq!(get.status, 405);
        assert_eq!(get.header("allow"), Some("POST"));

        // Only the genuine event reaches the subscriber, once.
        assert_eventually!(!sub.got().is_empty(), "nothing delivered");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let got = sub.got();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].event_id, key);
        assert_eq!(got[0].body["event_id"], "evt-genuine");

        // Each refusal is recorded as any refusal is, through the access log's writer thread
        // and a pipe: waited for.
        let decisions = || -> Vec<String> {
            log_lines(&gw, "idgate::access", "request")
                .iter()
                .filter(|l| l["route"] == "webhook:didit")
                .map(|l| l["decision"].as_str().unwrap_or_default().to_owned())
                .collect()
        };
        for d in [
            "allowed",
            "denied:webhook-replayed",
            "denied:webhook-signature-invalid",
            "denied:webhook-stale",
            "denied:method-not-allowed",
        ] {
            assert_eventually!(
                decisions().iter().any(|x| x == d),
                "{d} in {:?}",
                decisions()
            );
        }
        // The gateway never logs the secret.
        gw.assert_never_logged(&[DIDIT_SECRET]).await;
    })
    .await;
}

#[tokio::test]
async fn a_source_outside_the_allow_list_and_a_body_over_the_limit_are_refused() {
    within(async {
        let pki = Pki::default_pki();
        let dir = tempfile::tempdir().unwrap();
        let sub = Subscriber::start(&pki).await;
        let mut only_elsewhere = toml::Table::new();
        only_elsewhere.insert(
            "source_cidrs".into(),
            toml::Value::Array(vec!["192.0.2.0/24".into()]),
        );
        let gw = Gateway::start(
            &webhook_config(&pki, dir.path(), &sub.url(), only_elsewhere),
            &[],
        )
        .await;
        let client = provider_client(&pki, gw.port);
        let r = post_signed(&client, DIDIT_SECRET, &envelope("e1", "s1", 1, now_secs()))
            .await
            .unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(
            r.json()["type"],
            "https://idgate.dev/problems/forbidden-network"
        );
        drop(gw);

        let dir = tempfile::tempdir().unwrap();
        let mut small = toml::Table::new();
        small.insert("max_body_bytes".into(), 64.into());
        let gw = Gateway::start(&webhook_config(&pki, dir.path(), &sub.url(), small), &[]).await;
        let client = provider_client(&pki, gw.port);
        let r = post_signed(&client, DIDIT_SECRET, &envelope("e1", "s1", 1, now_secs()))
            .await
            .unwrap();
        assert_eq!(r.status, 413);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(sub.got().is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_body_of_huge_whole_floats_is_refused_promptly_under_v2_and_simple() {
    within(async {
        let pki = Pki::default_pki();
        let sub = Subscriber::start(&pki).await;
        // Just under the body limit (1 MiB): 6 bytes a number, each a 309-digit integer in the
        // canonical form, read before any signature can be checked.
        let t = now_secs();
        let numbers = vec!["1e308"; 170_000].join(",");
        let body = format!(
            r#"{{"session_id":"s","status":"Approved","timestamp":{t},"webhook_type":"status.updated","x":[{numbers}]}}"#
        );
        let forged = "0".repeat(64);
        for (scheme, header) in [
            ("didit-v2", "x-signature-v2"),
            ("didit-simple", "x-signature-simple"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut w = toml::Table::new();
            w.insert("scheme".into(), scheme.into());
            let gw = Gateway::start(&webhook_config(&pki, dir.path(), &sub.url(), w), &[]).await;
            let client = provider_client(&pki, gw.port);
            let headers = [
                (header, forged.as_str()),
                ("content-type", "application/json"),
            ];
            let r = within_limit(
                Duration::from_secs(5),
                client.send("POST", WEBHOOK_PATH, &headers, &body),
            )
            .await
            .unwrap();
            assert_eq!(r.status, 401, "{scheme}: {:?}", r.body);
            assert_eq!(
                problem_type(&r),
                "https://idgate.dev/problems/webhook-signature-invalid"
            );
            // A genuine event is taken as before.
            let ok = post_signed(&client, DIDIT_SECRET, &envelope("evt-1", "s-1", 1, t))
                .await
                .unwrap();
            assert_eq!(ok.status, 200, "{scheme}: {:?}", ok.body);
        }
    })
    .await;
}

/// The send and receive queues of the loopback TCP connection from `local` to `remote`, as
/// the kernel reports them.
fn tcp_queues(local: u16, remote: u16) -> Option<(u64, u64)> {
    let table = std::fs::read_to_string("/proc/self/net/tcp").ok()?;
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if port(f.get(1)?)? != local || port(f.get(2)?)? != remote {
            return None;
        }
        let (tx, rx) = f.get(4)?.split_once(':')?;
        Some((
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}

/// A large post is parsed before its signature can be checked; anybody can send one, so its
/// parse must not hold up the worker that serves everything else (the test gateway has one).
#[tokio::test]
async fn a_large_unsigned_post_is_parsed_off_the_worker_that_serves_other_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(async {
        let pki = Pki::default_pki();
        let sub = Subscriber::start(&pki).await;
        let dir = tempfile::tempdir().unwrap();
        let mut w = toml::Table::new();
        w.insert("scheme".into(), "didit-v2".into());
        w.insert("max_body_bytes".into(), (16_i64 << 20).into());
        let gw = Gateway::start(&webhook_config(&pki, dir.path(), &sub.url(), w), &[]).await;
        // Over a million members in one object, each sorted into the canonical form.
        let t = now_secs();
        let members: Vec<String> = (0..1_200_000u32)
            .rev()
            .map(|i| format!(r#""k{i:07}":0"#))
            .collect();
        let body = format!(
            r#"{{"session_id":"s","status":"Approved","timestamp":{t},"webhook_type":"status.updated","x":{{{}}}}}"#,
            members.join(",")
        );
        let head = format!(
            "POST {WEBHOOK_PATH} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\nx-signature-v2: {}\r\ncontent-length: {}\r\n\r\n",
            "0".repeat(64),
            body.len()
        );
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
            .await
            .unwrap();
        let me = tcp.local_addr().unwrap().port();
        let config = tls_client_config(&pki.files.bundle, None, false, rustls::DEFAULT_VERSIONS);
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(
                rustls_pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(body.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        // Once the gateway has read every byte, it parses the body.
        assert_eventually!(
            tcp_queues(me, gw.port).is_some_and(|(tx, _)| tx == 0)
                && tcp_queues(gw.port, me).is_some_and(|(_, rx)| rx == 0),
            "the gateway did not read the post"
        );
        let read = std::time::Instant::now();
        let probe = admin_get(gw.admin_port, "/healthz").await.unwrap();
        let waited = read.elapsed();
        assert_eq!(probe.0, 200);
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0, "the gateway closed without an answer");
            answer.extend_from_slice(&buf[..n]);
        }
        let verified = read.elapsed();
        assert!(answer.starts_with(b"HTTP/1.1 401"), "{}", String::from_utf8_lossy(&answer));
        // On the worker, the probe would wait for the parse: its answer would come about when
        // the post's does.
        assert!(
            waited * 2 < verified,
            "the admin listener answered after {waited:?}, the post after {verified:?}"
        );
    })
    .await;
}
