//! Messages, client and server generated from `proto/workload.proto` by `regenerate.sh`.

/// The `SpiffeWorkloadAPI` service: messages, `spiffe_workload_api_server` (the trait this
/// crate implements) and `spiffe_workload_api_client` (for raw calls a test makes itself).
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    unused_qualifications,
    unreachable_pub,
    missing_docs
)]
#[rustfmt::skip]
pub mod workload;
