//! Webhooks added by a reload: the outbox and the replay keys go to the `[state]` backend the
//! process opened at start, whatever the new file names for it.

use super::*;
use crate::assert_eventually;

/// Writes `contents` under a temporary name beside `path`, then renames it over `path`.
fn replace_atomically(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("editing");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn metric(gw: &Gateway, line_start: &str) -> Option<String> {
    let (_, text) = admin_get(gw.admin_port, "/metrics").await.ok()?;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .map(|l| l[line_start.len()..].trim().to_owned())
}

#[tokio::test]
async fn a_reload_adding_webhooks_while_the_running_state_is_memory_is_refused() {
    within(async {
        let pki = Pki::default_pki();
        let dir = tempfile::tempdir().unwrap();
        let sub = Subscriber::start(&pki).await;
        // Started without webhooks, on the in-memory backend (the default).
        let mut running = base_config(&pki);
        running.listener.client_auth = ClientAuth::Optional;
        let mut gw = Gateway::start(&running, &[]).await;
        let client = provider_client(&pki, gw.port);
        let t = now_secs();
        let event = envelope("evt-1", "sess-1", 1, t);
        assert_eq!(
            post_signed(&client, DIDIT_SECRET, &event)
                .await
                .unwrap()
                .status,
            404
        );

        // The file now adds a webhook and a redb [state] for its outbox: valid as a file,
        // but this process keeps the in-memory store it opened until it restarts.
        let added = webhook_config(&pki, dir.path(), &sub.url(), toml::Table::new());
        replace_atomically(&gw.config_path, added.to_toml().as_bytes());
        assert_eventually!(
            metric(&gw, "idgate_config_reloads_total{result=\"refused\"}")
                .await
                .is_some_and(|n| n != "0"),
            "the reload was not refused; output:\n{}",
            gw.output()
        );
        // Counted before its reasons are logged, and the log reaches the output through a
        // writer thread and a pipe: waited for, not assumed written.
        let says_why = || {
            log_lines(
                &gw,
                "idgate_proxy::gateway",
                "configuration reload refused; the running configuration stays",
            )
            .iter()
            .any(|l| {
                let field = |name: &str| l.get(name).and_then(|v| v.as_str()).unwrap_or("");
                field("key") == "webhooks"
                    && field("reason").contains("in-memory backend")
                    && field("reason").contains("restart to change [state]")
            })
        };
        assert_eventually!(
            says_why(),
            "the refusal does not say why; output:\n{}",
            gw.output()
        );

        // The running configuration stays: no webhook endpoint, nothing accepted.
        assert_eq!(
            metric(&gw, "idgate_config_generation ").await.as_deref(),
            Some("1")
        );
        assert_eq!(
            post_signed(&client, DIDIT_SECRET, &event)
                .await
                .unwrap()
                .status,
            404
        );
        assert!(sub.got().is_empty());
        assert!(
            gw.child.try_wait().unwrap().is_none(),
            "the gateway exited; output:\n{}",
            gw.output()
        );
    })
    .await;
}
