//! `idgate webhooks` against a running gateway's outbox: a dead letter listed, shown (its
//! body only when asked), replayed and delivered; delivered copies purged.

use super::*;
use crate::assert_eventually;

fn cli(gw: &Gateway, args: &[&str]) -> (i32, String, String) {
    let config = gw.config_path.display().to_string();
    let mut all = vec!["webhooks"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--config", &config]);
    idgate_cli(&all)
}

#[tokio::test]
async fn a_dead_letter_is_listed_shown_and_replayed_by_the_cli() {
    within(async {
        let pki = Pki::default_pki();
        let dir = tempfile::tempdir().unwrap();
        let sub = Subscriber::start(&pki).await;
        let gw = Gateway::start(
            &webhook_config(&pki, dir.path(), &sub.url(), toml::Table::new()),
            &[],
        )
        .await;
        // The subscriber refuses the event for good: a dead letter at once.
        sub.answer(&[410]);
        let client = provider_client(&pki, gw.port);
        let mut e = envelope("evt-dead", "sess-9", 1, now_secs());
        e["decision"] = json!({"full_name": "Grace Hopper"});
        let r = post_signed(&client, DIDIT_SECRET, &e).await.unwrap();
        assert_eq!(r.status, 200);
        let key = r.json()["event_id"].as_str().unwrap().to_owned();
        assert_eventually!(
            gw.output().contains("webhook event is a dead letter"),
            "not buried:\n{}",
            gw.output()
        );

        let (code, out, err) = cli(&gw, &["list"]);
        assert_eq!(code, 0, "{err}");
        let summary = out.lines().nth(1).unwrap_or_default().to_owned();
        let cells: Vec<&str> = summary.split_whitespace().collect();
        assert_eq!(cells, ["didit", "kyc", "0", "1", "0"], "{out}");
        let row = out
            .lines()
            .find(|l| l.starts_with("didit/kyc/"))
            .unwrap_or_else(|| panic!("no message row:\n{out}"));
        let id = row.split_whitespace().next().unwrap().to_owned();
        assert!(
            row.contains("dead") && row.contains(&key) && row.contains("410"),
            "{row}"
        );
        assert!(!out.contains("Grace Hopper"), "list never shows a body");

        let (code, out, _) = cli(&gw, &["show", &id]);
        assert_eq!(code, 0);
        assert!(out.contains("not shown"), "{out}");
        assert!(!out.contains("Grace Hopper"));
        let (code, out, err) = cli(&gw, &["show", &id, "--body"]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("Grace Hopper") && out.contains("evt-dead"),
            "{out}"
        );

        // A pending message cannot be replayed; a dead letter can.
        let (code, _, err) = cli(&gw, &["replay", "didit/kyc/999"]);
        assert_ne!(code, 0, "{err}");
        let (code, _, err) = cli(&gw, &["replay", &id]);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("revived"), "{err}");
        assert_eventually!(sub.processed().len() == 1, "got {:?}", sub.got());
        assert_eq!(sub.processed()[0].event_id, key);

        // Delivered: kept for its retention, listed, then purged on request.
        assert_eventually!(
            cli(&gw, &["list", "--json"]).1.contains("\"delivered\":1"),
            "no delivered copy"
        );
        let (code, _, err) = cli(&gw, &["replay", "--dead"]);
        assert_eq!(code, 0);
        assert!(err.contains("revived 0"), "{err}");
        let (code, _, err) = cli(&gw, &["purge", "--older-than", "0s"]);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("purged 1 delivered"), "{err}");
        assert!(cli(&gw, &["list", "--json"]).1.contains("\"delivered\":0"));

        let (code, _, err) = cli(&gw, &["show", "nope"]);
        assert_eq!(code, 2, "{err}");
    })
    .await;
}

#[tokio::test]
async fn idgate_check_names_a_webhook_that_cannot_be_put_into_use_by_its_key() {
    let pki = Pki::default_pki();
    let dir = tempfile::tempdir().unwrap();
    let config = webhook_config(
        &pki,
        dir.path(),
        "https://localhost:1/events",
        toml::Table::new(),
    );
    // Written after webhook_config's own: 20 hex digits are no AES-256 key.
    write_private(&dir.path().join("outbox.key"), "5a".repeat(10).as_bytes());
    let path = dir.path().join("idgate.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    let (code, _, err) = idgate_cli(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("webhooks[0].outbox_key") && err.contains("32 bytes"),
        "{err}"
    );
    assert!(
        !err.contains(&"5a".repeat(16)),
        "the key is never shown: {err}"
    );

    // With a usable key, the same file is valid.
    write_private(&dir.path().join("outbox.key"), "5a".repeat(32).as_bytes());
    let (code, out, err) = idgate_cli(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn the_cli_never_creates_a_missing_state_file() {
    let pki = Pki::default_pki();
    let dir = tempfile::tempdir().unwrap();
    let spec = webhook_config(
        &pki,
        dir.path(),
        "https://127.0.0.1:9/events",
        toml::Table::new(),
    );
    let config = dir.path().join("idgate.toml");
    std::fs::write(&config, spec.to_toml()).unwrap();
    let state = dir.path().join("state.redb");
    let config = config.display().to_string();
    for command in [&["list"][..], &["purge", "--older-than", "1d"]] {
        let mut args = vec!["webhooks"];
        args.extend_from_slice(command);
        args.extend_from_slice(&["--config", &config]);
        let (code, out, err) = idgate_cli(&args);
        assert_eq!(code, 0, "{command:?}: {out}{err}");
        assert!(err.contains("nothing is queued"), "{command:?}: {err}");
        // Made by whoever runs the command (often root), it would be refused to the
        // gateway running as its own user.
        assert!(!state.exists(), "{command:?} created the state file");
    }
}
