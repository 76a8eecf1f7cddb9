//! The gateway's SVID and trust bundles from the SPIFFE Workload API: a test agent (the
//! Workload API server of `idgate-workload-test`, speaking the spec's `workload.proto` on a
//! unix socket) delivers, rotates and withdraws them while the real binary serves.

mod agent_loss;
mod federation;
mod jwt;
mod rotation;
mod start;
mod trust_withdrawn;
mod unreadable;
mod upstream_mtls;

use std::path::{Path, PathBuf};
use std::time::Duration;

use idgate_workload_test::{Svid, TestCa, WorkloadApiServer, X509State};

use crate::support::*;

/// The gateway's SPIFFE ID, as its registration entry would give it.
const GATEWAY_ID: &str = "spiffe://example.org/idgate";
/// A workload of a federated trust domain.
const PARTNER: &str = "spiffe://partner.test/ns/risk/sa/scorer";

/// A test agent on a socket in its own directory, with the CA of `example.org`.
struct Agent {
    dir: tempfile::TempDir,
    server: Option<WorkloadApiServer>,
    ca: TestCa,
}

impl Agent {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = WorkloadApiServer::start(&dir.path().join("agent.sock"))
            .await
            .expect("start the Workload API server");
        Self {
            dir,
            server: Some(server),
            ca: TestCa::new(TD).expect("CA"),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn server(&self) -> &WorkloadApiServer {
        self.server.as_ref().expect("the agent is running")
    }

    /// A new SVID for the gateway, valid for an hour.
    fn gateway_svid(&self) -> Svid {
        self.ca
            .svid(GATEWAY_ID, Duration::from_secs(3600))
            .expect("SVID")
    }

    /// Sends `svid` as the gateway's, with the bundle of `example.org` and of each of
    /// `federated`.
    fn push(&self, svid: &Svid, federated: &[&TestCa]) {
        let mut state = X509State::issued_by(&self.ca, svid.clone());
        for ca in federated {
            state = state.with_federated(ca.trust_domain(), ca.bundle());
        }
        self.server().set_x509(state);
    }

    /// The agent goes away: its streams end and its socket is removed.
    async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// The agent comes back on the same socket.
    async fn restart(&mut self) {
        self.server = Some(
            WorkloadApiServer::start(&self.socket())
                .await
                .expect("restart the Workload API server"),
        );
    }

    /// Writes the bundle of `example.org` for clients that check the gateway's certificate.
    fn bundle_file(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        self.ca.write_bundle_pem(&path).expect("bundle file");
        path
    }
}

/// A caller's SVID from `ca`, written where a client can read it.
fn caller(ca: &TestCa, id: &str, dir: &Path, name: &str) -> CertKey {
    let (cert, key) = ca
        .svid(id, Duration::from_secs(3600))
        .expect("caller SVID")
        .write_pem(dir, name)
        .expect("write caller SVID");
    CertKey { cert, key }
}

/// A client trusting `agent`'s bundle and presenting ONBOARDING's SVID (written to `dir`),
/// for the gateway on `port`.
fn onboarding_client(agent: &Agent, dir: &Path, port: u16) -> Client {
    Client::with_identity(
        &agent.bundle_file("bundle.pem"),
        &caller(&agent.ca, ONBOARDING, dir, "onboarding"),
        port,
        rustls::DEFAULT_VERSIONS,
    )
}

/// A gateway streaming from `agent`, with one route to `upstream` allowing `allow`.
fn config(agent: &Agent, upstream: &TestUpstream, allow: &[&str]) -> GatewayConfig {
    GatewayConfig::new(Path::new("-"), Path::new("-"))
        .workload_api(&agent.endpoint())
        .json_log("info")
        .upstream(UpstreamSpec::new("provider", &upstream.url(false)))
        .route(RouteSpec::new(
            "kyc",
            &["GET"],
            "/v1/kyc",
            "provider",
            allow,
        ))
}

/// The value of the metric line starting with `series` (name and labels), if any.
async fn metric(gw: &Gateway, series: &str) -> Option<f64> {
    let (_, body) = admin_get(gw.admin_port, "/metrics").await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

async fn svid_updates(gw: &Gateway) -> f64 {
    metric(gw, "idgate_workload_api_updates_total{kind=\"svid\"}")
        .await
        .unwrap_or(0.0)
}

async fn bundle_updates(gw: &Gateway) -> f64 {
    metric(
        gw,
        "idgate_workload_api_updates_total{kind=\"x509_bundles\"}",
    )
    .await
    .unwrap_or(0.0)
}

/// The leaf certificate the gateway presents in a new handshake.
async fn presented_leaf(client: &Client) -> Result<Vec<u8>, String> {
    crate::rotation::presented_cert(client)
        .await
        .map(|c| c.to_vec())
}
