//! The bodies that cross the gateway: what is sent upstream, what an upstream answers with,
//! and what the gateway answers its caller with.

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use idgate_h1 as h1;
use idgate_h1::limit::Held;
use idgate_tls::client::HttpsClient;

/// The body sent upstream: the caller's body streamed through, or buffered (when a signature
/// scheme needs all of it, or for the gateway's own requests).
pub type UpstreamBody = Either<idgate_h1::CallerBody, Full<Bytes>>;

/// hyper's pooled client, as upstreams use it.
pub type UpstreamClient = HttpsClient<UpstreamBody>;

/// An upstream's response body: from hyper's client (`http2 = true`, `client = "hyper"`;
/// holding its place under the upstream's cap, under the own client's time limits), or from
/// the gateway's own HTTP/1.1 client.
pub type UpstreamResponseBody = Either<h1::Timed<Held<Incoming>>, h1::ResponseBody>;

/// What the gateway answers with: the upstream's body, or one of its own.
pub type ProxyBody = Either<UpstreamResponseBody, Full<Bytes>>;
