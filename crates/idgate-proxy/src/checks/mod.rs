//! What each of a route's guards (see `guards.rs`) does. A guard reads the request's
//! context and either lets it on or returns a [`Refusal`]; like every stage, it never builds
//! a response itself (see `problem.rs`). A guard that needs state shared between replicas
//! reaches it through the `idgate-store` traits.
//!
//! To add a guard: a variant in `guards.rs` and the line of `Guards::compile` that asks for
//! it, its check in a module here, and its arm in [`on_request`] or [`on_response`].

mod no_body;
mod rate_limit;

use http::Response;
use http::request::Parts;

use crate::body::ProxyBody;
use crate::ctx::RequestCtx;
use crate::guards::{RequestGuard, ResponseGuard};
use crate::problem::Refusal;
use crate::upstream::Upstream;

/// Runs one request guard; `upstream` is where the request will go.
pub(crate) async fn on_request(
    guard: RequestGuard,
    ctx: &mut RequestCtx<'_>,
    upstream: &Upstream,
    req: &Parts,
) -> Result<(), Refusal> {
    match guard {
        RequestGuard::NoBody => no_body::check(ctx, upstream.request_timeout, &req.method).await,
        RequestGuard::RateLimit => rate_limit::check(ctx).await,
    }
}

/// Runs one response guard on the upstream's response.
pub(crate) async fn on_response(
    guard: ResponseGuard,
    _ctx: &mut RequestCtx<'_>,
    _resp: &mut Response<ProxyBody>,
) -> Result<(), Refusal> {
    match guard {}
}
