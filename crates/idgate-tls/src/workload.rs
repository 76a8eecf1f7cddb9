//! The gateway's SVID and trust bundles from the SPIFFE Workload API (a SPIRE agent's
//! socket), instead of files.
//!
//! One task holds a `FetchX509SVID` stream open: every message carries the whole X.509
//! context (the SVIDs, the bundle of the gateway's own trust domain and those of the
//! federated ones), and is taken into [`TlsMaterial`] as it comes — the default SVID for the
//! listener and the client certificates, exactly the trust domains it lists for callers
//! (one whose bundle is empty or cannot be used is not trusted at all: the agent's word is
//! complete, and the CAs it no longer lists must not outlive it). A second task, when
//! JWT-SVIDs are verified with the agent's keys, holds a `FetchJWTBundles` stream open and
//! publishes each bundle set on a watch channel.
//!
//! When the agent cannot be reached the tasks retry with exponential backoff (0.1 s to 5 s,
//! with jitter). What was delivered last stays in force meanwhile: the SVID keeps serving
//! until it expires, and [`WorkloadStatus`] says the agent is gone so that an operator is
//! warned in time.

mod apply;
mod backoff;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod updates_tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ::spiffe::WorkloadApiClient;
use ::spiffe::transport::Endpoint;
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::material::TlsMaterial;
use crate::spiffe::TrustDomain;
use apply::Applier;
use backoff::Backoff;

/// The address of a Workload API: `unix:///path/to/agent.sock` (or `unix:/path`), or
/// `tcp://IP:PORT` with a loopback IP, as the SPIFFE Workload Endpoint specification writes
/// it.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkloadEndpoint {
    text: String,
    parsed: Endpoint,
}

/// Why an address cannot be the gateway's Workload API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointError {
    /// Not a `unix://` URI with an absolute path nor `tcp://IP:PORT`.
    Malformed(String),
    /// A `tcp://` address that is not loopback. The Workload API has no authentication of
    /// its own: over a unix socket the agent's directory decides who may serve it, over TCP
    /// whoever answers at the address hands the gateway its identity and trust bundles.
    NotLoopback,
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(why) => f.write_str(why),
            Self::NotLoopback => f.write_str(
                "the Workload API has no authentication over TCP, so only a loopback \
                 address (127.0.0.0/8, ::1) may be named; prefer the agent's unix socket",
            ),
        }
    }
}

impl std::error::Error for EndpointError {}

impl WorkloadEndpoint {
    /// The environment variable the SPIFFE specification names for the address.
    pub const ENV: &'static str = "SPIFFE_ENDPOINT_SOCKET";

    pub fn parse(text: &str) -> Result<Self, EndpointError> {
        let parsed = Endpoint::parse(text).map_err(|e| EndpointError::Malformed(e.to_string()))?;
        if let Endpoint::Tcp { host, .. } = &parsed
            && !host.to_canonical().is_loopback()
        {
            return Err(EndpointError::NotLoopback);
        }
        Ok(Self {
            text: text.to_owned(),
            parsed,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the address is a TCP port (on loopback) rather than a unix socket.
    pub fn is_tcp(&self) -> bool {
        matches!(self.parsed, Endpoint::Tcp { .. })
    }
}

impl fmt::Debug for WorkloadEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for WorkloadEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The JWT bundles the agent sent last: per trust domain, its JWKS (`{"keys":[…]}`) as
/// JSON bytes, in the SPIFFE bundle format a bundle file has too.
pub type JwtBundleSet = BTreeMap<TrustDomain, Vec<u8>>;

/// What the Workload API tasks have done, for the gateway's metrics.
#[derive(Debug, Default)]
pub struct WorkloadStatus {
    connected: AtomicBool,
    svid_updates: AtomicU64,
    bundle_updates: AtomicU64,
    jwt_bundle_updates: AtomicU64,
    refused_updates: AtomicU64,
    disconnects: AtomicU64,
    /// Whether the JWT bundles are streamed at all; the two below mean nothing otherwise.
    jwt_stream: bool,
    jwt_connected: AtomicBool,
    jwt_disconnects: AtomicU64,
}

impl WorkloadStatus {
    /// Whether the X.509 stream is open now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// New SVIDs taken into use (the first one included).
    pub fn svid_updates(&self) -> u64 {
        self.svid_updates.load(Ordering::Relaxed)
    }

    /// Changes of the set of trusted X.509 bundles taken into use.
    pub fn bundle_updates(&self) -> u64 {
        self.bundle_updates.load(Ordering::Relaxed)
    }

    /// JWT bundle sets received.
    pub fn jwt_bundle_updates(&self) -> u64 {
        self.jwt_bundle_updates.load(Ordering::Relaxed)
    }

    /// Updates (or parts of them) refused as unusable. A refused SVID leaves the one in use
    /// in force; a trust domain whose bundle is refused is no longer trusted, since each
    /// update is the agent's whole word on what to trust.
    pub fn refused_updates(&self) -> u64 {
        self.refused_updates.load(Ordering::Relaxed)
    }

    /// Counts an update refused by whoever takes it further (the JWT bundles' parser).
    pub fn record_refused(&self) {
        self.refused_updates.fetch_add(1, Ordering::Relaxed);
    }

    /// Times the X.509 stream could not be opened or ended.
    pub fn disconnects(&self) -> u64 {
        self.disconnects.load(Ordering::Relaxed)
    }

    /// Whether the JWT bundles are streamed from the Workload API (for JWT-SVID callers).
    pub fn jwt_stream(&self) -> bool {
        self.jwt_stream
    }

    /// Whether the JWT bundle stream is open now.
    pub fn jwt_connected(&self) -> bool {
        self.jwt_connected.load(Ordering::Relaxed)
    }

    /// Times the JWT bundle stream could not be opened, failed or ended: the JWT bundles
    /// taken last stay in use meanwhile, and a key the agent adds or withdraws is not seen.
    pub fn jwt_disconnects(&self) -> u64 {
        self.jwt_disconnects.load(Ordering::Relaxed)
    }
}

/// The running Workload API client: dropping it does not stop the tasks; `stop` does.
#[derive(Debug, Clone)]
pub struct WorkloadApi {
    status: Arc<WorkloadStatus>,
    jwt_bundles: watch::Receiver<Option<Arc<JwtBundleSet>>>,
}

impl WorkloadApi {
    /// Starts streaming from `endpoint` into `material` (and, with `jwt_bundles`, the JWT
    /// bundles too) until `stop` turns true. Needs a Tokio runtime.
    /// `svid_hint`: present the SVID whose registration entry has this hint, instead of the
    /// default (first) one.
    pub fn spawn(
        endpoint: WorkloadEndpoint,
        svid_hint: Option<String>,
        material: Arc<TlsMaterial>,
        jwt_bundles: bool,
        stop: watch::Receiver<bool>,
    ) -> Self {
        if endpoint.is_tcp() {
            tracing::warn!(
                endpoint = %endpoint,
                "the SPIFFE Workload API is reached over TCP, which has no authentication: \
                 any local process that binds the port while the agent is away can hand the \
                 gateway an identity and trust bundles; prefer the agent's unix socket"
            );
        }
        let status = Arc::new(WorkloadStatus {
            jwt_stream: jwt_bundles,
            ..WorkloadStatus::default()
        });
        let (jwt_tx, jwt_rx) = watch::channel(None);
        tokio::spawn(x509_task(
            endpoint.clone(),
            Applier::new(material, status.clone(), svid_hint),
            status.clone(),
            stop.clone(),
        ));
        if jwt_bundles {
            tokio::spawn(jwt_task(endpoint, jwt_tx, status.clone(), stop));
        }
        Self {
            status,
            jwt_bundles: jwt_rx,
        }
    }

    pub fn status(&self) -> &Arc<WorkloadStatus> {
        &self.status
    }

    /// The JWT bundle sets as they arrive (none before the first).
    pub fn jwt_bundles(&self) -> watch::Receiver<Option<Arc<JwtBundleSet>>> {
        self.jwt_bundles.clone()
    }
}

/// Why a stream ended, for the log: a refusal by the agent says what an operator must fix.
fn describe(e: &::spiffe::WorkloadApiError) -> String {
    use ::spiffe::WorkloadApiError as E;
    match e {
        E::NoIdentityIssued | E::PermissionDenied(_) => format!(
            "{e}: the agent has no registration entry matching the gateway (check its selectors)"
        ),
        _ => e.to_string(),
    }
}

/// Waits `delay`, or less when `stop` turns true; true when the task should end.
async fn pause(delay: std::time::Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = stop.wait_for(|s| *s) => return true,
    }
    *stop.borrow()
}

/// Whether a stream's error is a message of the agent that the client library could not
/// read (a certificate, a bundle, a SPIFFE ID or a field it refuses), rather than the stream
/// failing: the stream goes on, and the next message may be readable.
fn unreadable(e: &::spiffe::WorkloadApiError) -> bool {
    use ::spiffe::WorkloadApiError as E;
    matches!(
        e,
        E::MissingRequiredField { .. }
            | E::InvalidResponseField { .. }
            | E::X509Svid(_)
            | E::X509Bundle(_)
            | E::JwtSvid(_)
            | E::JwtBundle(_)
            | E::SpiffeId(_)
    )
}

/// Connects, opens the stream `open` asks for and hands each message to `take`, until the
/// stream fails or ends (the reason, for the log) or `stop` turns true (`None`). A message
/// that cannot be read goes to `refuse`, and the stream goes on: connecting again would
/// only be sent the same message.
async fn follow<T, S, F>(
    endpoint: &WorkloadEndpoint,
    open: impl FnOnce(WorkloadApiClient) -> F,
    stop: &mut watch::Receiver<bool>,
    mut take: impl FnMut(T),
    mut refuse: impl FnMut(&::spiffe::WorkloadApiError),
) -> Option<String>
where
    F: Future<Output = Result<S, ::spiffe::WorkloadApiError>>,
    S: futures_util::Stream<Item = Result<T, ::spiffe::WorkloadApiError>> + Unpin,
{
    let client = match WorkloadApiClient::connect(endpoint.parsed.clone()).await {
        Ok(client) => client,
        Err(e) => return Some(describe(&e)),
    };
    let mut stream = match open(client).await {
        Ok(stream) => stream,
        Err(e) => return Some(describe(&e)),
    };
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = stop.wait_for(|s| *s) => return None,
        };
        match next {
            Some(Ok(message)) => take(message),
            Some(Err(e)) if unreadable(&e) => refuse(&e),
            Some(Err(e)) => return Some(describe(&e)),
            None => return Some("the agent ended the stream".to_owned()),
        }
    }
}

async fn x509_task(
    endpoint: WorkloadEndpoint,
    mut applier: Applier,
    status: Arc<WorkloadStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::default();
    loop {
        if *stop.borrow() {
            return;
        }
        let open = |c: WorkloadApiClient| async move { c.stream_x509_contexts().await };
        let take = |context| {
            applier.apply(&context);
            status.connected.store(true, Ordering::Relaxed);
            backoff.reset();
        };
        // The message is the agent's whole word, and none of it can be read: nothing in it is
        // taken, neither an SVID nor any trust domain's bundle. What is in force stays, a
        // trust domain the message would have withdrawn included, until a message that can
        // be read arrives (as Envoy keeps the last good configuration of an update it
        // refuses); the SVID in use serves until it expires.
        let refuse = |e: &::spiffe::WorkloadApiError| {
            status.connected.store(true, Ordering::Relaxed);
            status.refused_updates.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                endpoint = %endpoint,
                error = %e,
                "the SPIFFE Workload API sent an update that cannot be read; it is refused \
                 whole: the SVID and the trust bundles in force stay until a readable update \
                 arrives (a trust domain it withdraws stays trusted meanwhile)"
            );
        };
        let Some(ended) = follow(&endpoint, open, &mut stop, take, refuse).await else {
            return;
        };
        status.disconnects.fetch_add(1, Ordering::Relaxed);
        let was_connected = status.connected.swap(false, Ordering::Relaxed);
        let delay = backoff.next_delay();
        match applier.svid_expiry() {
            Some(until) => tracing::warn!(
                endpoint = %endpoint,
                reason = %ended,
                retry_in = ?delay,
                svid_valid_until = %until,
                "SPIFFE Workload API unreachable: the current SVID keeps serving until it expires"
            ),
            None if was_connected || backoff.attempts() <= 1 || backoff.attempts() % 10 == 0 => {
                tracing::warn!(
                    endpoint = %endpoint,
                    reason = %ended,
                    retry_in = ?delay,
                    "SPIFFE Workload API unreachable: no SVID yet, not ready"
                )
            }
            None => {
                tracing::debug!(endpoint = %endpoint, reason = %ended, "SPIFFE Workload API unreachable")
            }
        }
        if pause(delay, &mut stop).await {
            return;
        }
    }
}

async fn jwt_task(
    endpoint: WorkloadEndpoint,
    out: watch::Sender<Option<Arc<JwtBundleSet>>>,
    status: Arc<WorkloadStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::default();
    loop {
        if *stop.borrow() {
            return;
        }
        let open = |c: WorkloadApiClient| async move { c.stream_jwt_bundles().await };
        let take = |set| {
            status.jwt_connected.store(true, Ordering::Relaxed);
            match apply::jwt_bundle_set(&set) {
                Ok(bundles) => {
                    status.jwt_bundle_updates.fetch_add(1, Ordering::Relaxed);
                    out.send_replace(Some(Arc::new(bundles)));
                    backoff.reset();
                }
                Err(e) => {
                    status.refused_updates.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "JWT bundles from the Workload API refused; the previous ones stay");
                }
            }
        };
        let refuse = |e: &::spiffe::WorkloadApiError| {
            status.jwt_connected.store(true, Ordering::Relaxed);
            status.refused_updates.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                endpoint = %endpoint,
                error = %e,
                "JWT bundles from the Workload API cannot be read; the previous ones stay"
            );
        };
        let Some(ended) = follow(&endpoint, open, &mut stop, take, refuse).await else {
            return;
        };
        status.jwt_disconnects.fetch_add(1, Ordering::Relaxed);
        status.jwt_connected.store(false, Ordering::Relaxed);
        let delay = backoff.next_delay();
        tracing::warn!(
            endpoint = %endpoint,
            reason = %ended,
            retry_in = ?delay,
            "SPIFFE Workload API JWT bundle stream unavailable: the last JWT bundles stay in use"
        );
        if pause(delay, &mut stop).await {
            return;
        }
    }
}
