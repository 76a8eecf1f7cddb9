//! The X.509 profile over a real unix socket, seen by the spiffe crate's client: pushed
//! contexts and rotations, refusals, agent loss and restart.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{WAIT, grpc_code, within};
use idgate_workload_test::pb::workload::X509svidRequest;
use idgate_workload_test::pb::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use idgate_workload_test::{TestCa, WorkloadApiServer, X509Identity, X509State};
use spiffe::transport::GrpcStatusCode;
use spiffe::{TrustDomain, WorkloadApiClient, WorkloadApiError};
use tokio_stream::StreamExt;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

async fn client(server: &WorkloadApiServer) -> WorkloadApiClient {
    within("connect", WorkloadApiClient::connect_to(server.endpoint()))
        .await
        .unwrap()
}

#[tokio::test]
async fn spiffe_client_receives_pushed_context_and_each_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let server = WorkloadApiServer::start(&dir.path().join("agent.sock"))
        .await
        .unwrap();
    let client = client(&server).await;
    let mut contexts = within("open stream", client.stream_x509_contexts())
        .await
        .unwrap();
    // Before any SVID the stream is open but silent, as an agent still minting.
    server.wait_for_x509_streams(1, WAIT).await.unwrap();

    let ca = TestCa::new("example.org").unwrap();
    let other_ca = TestCa::new("other.org").unwrap();
    let gateway = ca.svid("spiffe://example.org/idgate", DAY).unwrap();
    let admin = ca.svid("spiffe://example.org/admin", DAY).unwrap();
    server.set_x509(
        X509State::issued_by(&ca, gateway.clone())
            .with_identity(X509Identity::new(admin, ca.bundle()).with_hint("admin"))
            .with_federated("other.org", other_ca.bundle()),
    );

    let first = within("first context", contexts.next())
        .await
        .unwrap()
        .unwrap();
    let default = first.default_svid().unwrap();
    assert_eq!(
        default.spiffe_id().to_string(),
        "spiffe://example.org/idgate"
    );
    assert_eq!(default.leaf().as_bytes(), gateway.chain[0].as_ref());
    assert_eq!(first.svids().len(), 2);
    assert_eq!(first.svids()[1].hint(), Some("admin"));
    let own = first.bundle_set().get(&td("example.org")).unwrap();
    assert_eq!(own.authorities()[0].as_bytes(), ca.cert().as_ref());
    let federated = first.bundle_set().get(&td("other.org")).unwrap();
    assert_eq!(
        federated.authorities()[0].as_bytes(),
        other_ca.cert().as_ref()
    );

    // An SVID rotation: same CA, new key and certificate; federation dropped (redaction).
    let rotated = ca.svid("spiffe://example.org/idgate", DAY).unwrap();
    server.set_x509(X509State::issued_by(&ca, rotated.clone()));
    let second = within("rotated context", contexts.next())
        .await
        .unwrap()
        .unwrap();
    let default = second.default_svid().unwrap();
    assert_eq!(default.leaf().as_bytes(), rotated.chain[0].as_ref());
    assert_ne!(rotated.chain[0], gateway.chain[0]);
    assert!(second.bundle_set().get(&td("other.org")).is_none());

    // A CA rotation for the same trust domain: the new bundle replaces the old one.
    let new_ca = TestCa::new("example.org").unwrap();
    let reissued = new_ca.svid("spiffe://example.org/idgate", DAY).unwrap();
    server.set_x509(X509State::issued_by(&new_ca, reissued));
    let third = within("CA rotation", contexts.next())
        .await
        .unwrap()
        .unwrap();
    let own = third.bundle_set().get(&td("example.org")).unwrap();
    assert_eq!(own.authorities().len(), 1);
    assert_eq!(own.authorities()[0].as_bytes(), new_ca.cert().as_ref());
    assert_ne!(new_ca.cert(), ca.cert());

    assert_eq!(server.counters().x509_svid_fetches, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn late_subscriber_gets_current_context_at_once_and_every_stream_gets_each_push() {
    let dir = tempfile::tempdir().unwrap();
    let server = WorkloadApiServer::start(&dir.path().join("agent.sock"))
        .await
        .unwrap();
    let ca = TestCa::new("example.org").unwrap();
    let svid = ca.svid("spiffe://example.org/idgate", DAY).unwrap();
    server.set_x509(X509State::issued_by(&ca, svid.clone()));

    let client = client(&server).await;
    let fetched = within("one-shot fetch", client.fetch_x509_svid())
        .await
        .unwrap();
    assert_eq!(fetched.leaf().as_bytes(), svid.chain[0].as_ref());

    let mut a = client.stream_x509_contexts().await.unwrap();
    let mut b = client.stream_x509_contexts().await.unwrap();
    for stream in [&mut a, &mut b] {
        let ctx = within("current context", stream.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            ctx.default_svid().unwrap().leaf().as_bytes(),
            svid.chain[0].as_ref()
        );
    }
    server.wait_for_x509_streams(2, WAIT).await.unwrap();
    let next = ca.svid("spiffe://example.org/idgate", DAY).unwrap();
    server.set_x509(X509State::issued_by(&ca, next.clone()));
    for stream in [&mut a, &mut b] {
        let ctx = within("pushed context", stream.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            ctx.default_svid().unwrap().leaf().as_bytes(),
            next.chain[0].as_ref()
        );
    }

    // A client that goes away no longer counts as subscribed.
    drop(a);
    drop(b);
    server
        .wait_for("streams closed", WAIT, |c| c.x509_svid_streams == 0)
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn x509_bundles_stream_carries_own_and_federated_bundles_and_updates() {
    let dir = tempfile::tempdir().unwrap();
    let server = WorkloadApiServer::start(&dir.path().join("agent.sock"))
        .await
        .unwrap();
    let ca = TestCa::new("example.org").unwrap();
    let partner = TestCa::new("partner.example").unwrap();
    let svid = ca.svid("spiffe://example.org/idgate", DAY).unwrap();
    server.set_x509(
        X509State::issued_by(&ca, svid.clone())
            .with_federated("spiffe://partner.example", partner.bundle()),
    );
    let client = client(&server).await;
    let mut bundles = client.stream_x509_bundles().await.unwrap();
    let set = within("bundles", bundles.next()).await.unwrap().unwrap();
    assert_eq!(set.len(), 2);
    let own = set.get(&td("example.org")).unwrap();
    assert_eq!(own.authorities()[0].as_bytes(), ca.cert().as_ref());
    let fed = set.get(&td("partner.example")).unwrap();
    assert_eq!(fed.authorities()[0].as_bytes(), partner.cert().as_ref());

    server.wait_for_x509_bundle_streams(1, WAIT).await.unwrap();
    let rotated_partner = TestCa::new("partner.example").unwrap();
    server.set_x509(
        X509State::issued_by(&ca, svid).with_federated("partner.example", rotated_partner.bundle()),
    );
    let set = within("updated bundles", bundles.next())
        .await
        .unwrap()
        .unwrap();
    let fed = set.get(&td("partner.example")).unwrap();
    assert_eq!(
        fed.authorities()[0].as_bytes(),
        rotated_partner.cert().as_ref()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn no_identity_is_permission_denied_for_open_and_new_streams() {
    let dir = tempfile::tempdir().unwrap();
    let server = WorkloadApiServer::start(&dir.path().join("agent.sock"))
        .await
        .unwrap();
    let ca = TestCa::new("example.org").unwrap();
    server.set_x509(X509State::issued_by(
        &ca,
        ca.svid("spiffe://example.org/idgate", DAY).unwrap(),
    ));
    let client = client(&server).await;
    let mut contexts = client.stream_x509_contexts().await.unwrap();
    within("first context", contexts.next())
        .await
        .unwrap()
        .unwrap();

    server.set_no_identity();
    let err = within("refusal", contexts.next())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, WorkloadApiError::NoIdentityIssued), "{err:?}");
    assert!(within("end of stream", contexts.next()).await.is_none());

    let err = within("new fetch", client.fetch_x509_context())
        .await
        .unwrap_err();
    assert!(matches!(err, WorkloadApiError::NoIdentityIssued), "{err:?}");
    let err = within("bundles", client.fetch_x509_bundles())
        .await
        .unwrap_err();
    assert!(matches!(err, WorkloadApiError::NoIdentityIssued), "{err:?}");
    server
        .wait_for("no open stream", WAIT, |c| c.x509_svid_streams == 0)
        .await
        .unwrap();

    // An identity issued again is served again.
    server.set_x509(X509State::issued_by(
        &ca,
        ca.svid("spiffe://example.org/idgate", DAY).unwrap(),
    ));
    within("fetch after re-issue", client.fetch_x509_context())
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn request_without_security_header_is_refused_with_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let server = WorkloadApiServer::start(&dir.path().join("agent.sock"))
        .await
        .unwrap();
    let ca = TestCa::new("example.org").unwrap();
    server.set_x509(X509State::issued_by(
        &ca,
        ca.svid("spiffe://example.org/idgate", DAY).unwrap(),
    ));
    let channel = within(
        "raw connect",
        tonic::transport::Endpoint::from_shared(server.endpoint())
            .unwrap()
            .connect(),
    )
    .await
    .unwrap();
    let mut raw = SpiffeWorkloadApiClient::new(channel);

    let status = within("no header", raw.fetch_x509svid(X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let mut wrong = tonic::Request::new(X509svidRequest {});
    wrong
        .metadata_mut()
        .insert("workload.spiffe.io", "false".parse().unwrap());
    let status = within("header false", raw.fetch_x509svid(wrong))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let mut right = tonic::Request::new(X509svidRequest {});
    right
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let mut stream = within("header true", raw.fetch_x509svid(right))
        .await
        .unwrap()
        .into_inner();
    let response = within("message", stream.message()).await.unwrap().unwrap();
    assert_eq!(response.svids[0].spiffe_id, "spiffe://example.org/idgate");

    let counters = server.counters();
    assert_eq!(counters.refused_without_header, 2);
    assert_eq!(counters.x509_svid_fetches, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_open_stream_with_unavailable_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let server = WorkloadApiServer::start(&socket).await.unwrap();
    let ca = TestCa::new("example.org").unwrap();
    server.set_x509(X509State::issued_by(
        &ca,
        ca.svid("spiffe://example.org/idgate", DAY).unwrap(),
    ));
    let client = client(&server).await;
    let mut contexts = client.stream_x509_contexts().await.unwrap();
    within("first context", contexts.next())
        .await
        .unwrap()
        .unwrap();

    within("shutdown", server.shutdown()).await;
    let err = within("stream end", contexts.next())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        grpc_code(&err),
        Some(GrpcStatusCode::Unavailable),
        "{err:?}"
    );
    assert!(!socket.exists());
    // Nobody answers any more.
    assert!(
        within("fetch after loss", client.fetch_x509_context())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn restart_on_the_same_socket_serves_the_same_client_again() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let server = WorkloadApiServer::start(&socket).await.unwrap();
    let ca = TestCa::new("example.org").unwrap();
    server.set_x509(X509State::issued_by(
        &ca,
        ca.svid("spiffe://example.org/idgate", DAY).unwrap(),
    ));
    let client = client(&server).await;
    within("fetch before loss", client.fetch_x509_context())
        .await
        .unwrap();
    within("shutdown", server.shutdown()).await;

    let restarted = WorkloadApiServer::start(&socket).await.unwrap();
    let svid = ca.svid("spiffe://example.org/idgate", DAY).unwrap();
    restarted.set_x509(X509State::issued_by(&ca, svid.clone()));
    // The client's channel reconnects to the new agent on its next call.
    let ctx = within("fetch after restart", async {
        loop {
            match client.fetch_x509_context().await {
                Ok(ctx) => break ctx,
                // The channel redials with a backoff; poll again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert_eq!(
        ctx.default_svid().unwrap().leaf().as_bytes(),
        svid.chain[0].as_ref()
    );
    restarted.shutdown().await;
}

#[tokio::test]
async fn stale_socket_file_is_replaced_and_a_live_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    // A socket file nobody listens on, as a crashed agent leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let server = WorkloadApiServer::start(&socket).await.unwrap();

    let err = WorkloadApiServer::start(&socket).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);

    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"not a socket").unwrap();
    let err = WorkloadApiServer::start(&plain).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&plain).unwrap(), b"not a socket");

    assert_eq!(server.endpoint(), format!("unix://{}", socket.display()));
    server.shutdown().await;
}

#[tokio::test]
async fn svid_chain_with_an_intermediate_reaches_the_client_whole() {
    let dir = tempfile::tempdir().unwrap();
    let server = WorkloadApiServer::start(&dir.path().join("agent.sock"))
        .await
        .unwrap();
    let root = TestCa::new("example.org").unwrap();
    let intermediate = root.intermediate().unwrap();
    let svid = intermediate
        .svid("spiffe://example.org/idgate", DAY)
        .unwrap();
    server.set_x509(X509State::issued_by(&intermediate, svid.clone()));
    let client = client(&server).await;
    let ctx = within("fetch", client.fetch_x509_context()).await.unwrap();
    let default = ctx.default_svid().unwrap();
    let chain: Vec<&[u8]> = default.cert_chain().iter().map(|c| c.as_bytes()).collect();
    assert_eq!(
        chain,
        [svid.chain[0].as_ref(), intermediate.cert().as_ref()]
    );
    let own = ctx.bundle_set().get(&td("example.org")).unwrap();
    assert_eq!(own.authorities()[0].as_bytes(), root.cert().as_ref());
    server.shutdown().await;
}

#[tokio::test]
async fn dropping_the_server_ends_streams_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let server = WorkloadApiServer::start(&socket).await.unwrap();
    let client = client(&server).await;
    // A stream still waiting for its first SVID.
    let mut contexts = client.stream_x509_contexts().await.unwrap();
    server.wait_for_x509_streams(1, WAIT).await.unwrap();
    drop(server);
    assert!(!socket.exists());
    let end = within("stream end", contexts.next()).await;
    let err = end.unwrap().unwrap_err();
    assert_eq!(
        grpc_code(&err),
        Some(GrpcStatusCode::Unavailable),
        "{err:?}"
    );
    // The path is free for the next agent.
    WorkloadApiServer::start(&socket)
        .await
        .unwrap()
        .shutdown()
        .await;
}
