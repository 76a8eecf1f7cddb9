//! Shared by the integration tests: time bounds and error classification.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::Duration;

use spiffe::WorkloadApiError;
use spiffe::transport::{GrpcStatusCode, TransportError};

/// The bound on every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(WAIT, f).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {WAIT:?}: {what}"),
    }
}

/// The gRPC status code of a Workload API error, if it carries one.
pub fn grpc_code(err: &WorkloadApiError) -> Option<GrpcStatusCode> {
    match err {
        WorkloadApiError::Transport(TransportError::Status(status)) => Some(status.code()),
        _ => None,
    }
}
