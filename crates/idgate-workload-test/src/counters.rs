//! What the server has seen: open streams per RPC and calls per RPC, so a test can wait
//! until its client is subscribed instead of sleeping.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// A snapshot of the server's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// `FetchX509SVID` streams open now.
    pub x509_svid_streams: usize,
    /// `FetchX509Bundles` streams open now.
    pub x509_bundle_streams: usize,
    /// `FetchJWTBundles` streams open now.
    pub jwt_bundle_streams: usize,
    /// `FetchX509SVID` calls accepted so far (each reconnection counts).
    pub x509_svid_fetches: u64,
    pub x509_bundle_fetches: u64,
    pub jwt_bundle_fetches: u64,
    pub jwt_svid_fetches: u64,
    pub jwt_validations: u64,
    /// Calls refused with InvalidArgument for lack of the `workload.spiffe.io` header.
    pub refused_without_header: u64,
}

/// A wait for the counters that did not come true in time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("timed out after {timeout:?} waiting for {what}; counters: {counters:?}")]
pub struct WaitTimeout {
    pub what: String,
    pub timeout: Duration,
    pub counters: Counters,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum StreamKind {
    X509Svid,
    X509Bundles,
    JwtBundles,
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::X509Svid => "FetchX509SVID",
            Self::X509Bundles => "FetchX509Bundles",
            Self::JwtBundles => "FetchJWTBundles",
        })
    }
}

impl StreamKind {
    fn open(self, counters: &mut Counters) -> &mut usize {
        match self {
            Self::X509Svid => &mut counters.x509_svid_streams,
            Self::X509Bundles => &mut counters.x509_bundle_streams,
            Self::JwtBundles => &mut counters.jwt_bundle_streams,
        }
    }
}

/// Counts one open stream for as long as it lives.
pub(crate) struct OpenStream {
    counters: Arc<watch::Sender<Counters>>,
    kind: StreamKind,
}

impl OpenStream {
    pub(crate) fn new(counters: &Arc<watch::Sender<Counters>>, kind: StreamKind) -> Self {
        counters.send_modify(|c| *kind.open(c) += 1);
        Self {
            counters: Arc::clone(counters),
            kind,
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let kind = self.kind;
        self.counters
            .send_modify(|c| *kind.open(c) = kind.open(c).saturating_sub(1));
    }
}

/// Waits until `done` holds for the counters, or `timeout` passes.
pub(crate) async fn wait_for(
    counters: &watch::Sender<Counters>,
    what: impl Into<String>,
    timeout: Duration,
    mut done: impl FnMut(&Counters) -> bool,
) -> Result<Counters, WaitTimeout> {
    let mut rx = counters.subscribe();
    match tokio::time::timeout(timeout, rx.wait_for(|c| done(c))).await {
        Ok(Ok(c)) => Ok(*c),
        // The sender lives as long as the server handle the caller borrows, so only the
        // timeout can end the wait; both are reported the same way.
        Ok(Err(_)) | Err(_) => Err(WaitTimeout {
            what: what.into(),
            timeout,
            counters: *counters.borrow(),
        }),
    }
}
