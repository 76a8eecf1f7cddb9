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
