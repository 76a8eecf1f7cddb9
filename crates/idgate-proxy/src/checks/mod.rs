//! What each of a route's guards (see `guards.rs`) does. A guard reads the request's
//! context and either lets it on or returns a [`Refusal`]; like every stage, it never builds
//! a response itself (see `problem.rs`). A guard that needs state shared between replicas
//! reaches it through the `idgate-store` traits.
//!
//! To add a guard: a variant in `guards.rs` and the line of `Guards::compile` that asks for
//! it, its check in a module here, and its arm in [`on_request`] or [`on_response`].

mod json_response;
mod masking;
mod no_body;
pub mod ownership;
mod rate_limit;
pub(crate) mod schema;

use http::Response;
use http::request::Parts;

use crate::body::ProxyBody;
use crate::ctx::RequestCtx;
use crate::guards::{RequestGuard, ResponseGuard};
use crate::problem::Refusal;
use crate::upstream::Upstream;

/// Runs one request guard; `upstream` is where the request will go.
pub(crate) async fn on_request(
    guard: &RequestGuard,
    ctx: &mut RequestCtx<'_>,
    upstream: &Upstream,
    req: &mut Parts,
) -> Result<(), Refusal> {
    match guard {
        RequestGuard::NoBody => no_body::check(ctx, upstream.request_timeout, &req.method).await,
        RequestGuard::RateLimit => rate_limit::check(ctx).await,
        RequestGuard::OwnedObject { param, policy } => {
            ownership::check_owned(ctx, param, policy, req.uri.path()).await
        }
        RequestGuard::IdentityEncoding => {
            req.headers.remove(http::header::ACCEPT_ENCODING);
            Ok(())
        }
        RequestGuard::Schema(validator) => schema::check(ctx, validator, upstream, req).await,
        RequestGuard::WholeAnswer => {
            for name in [
                http::header::RANGE,
                http::header::IF_RANGE,
                // A `304` or `412` would tell whether a guess of the masked values matches
                // the upstream's answer, whose validator a caller can compute from a
                // candidate text.
                http::header::IF_NONE_MATCH,
                http::header::IF_MATCH,
                http::header::IF_MODIFIED_SINCE,
                http::header::IF_UNMODIFIED_SINCE,
            ] {
                req.headers.remove(name);
            }
            Ok(())
        }
    }
}

/// Runs one response guard on the upstream's response.
pub(crate) async fn on_response(
    guard: &ResponseGuard,
    ctx: &mut RequestCtx<'_>,
    resp: &mut Response<ProxyBody>,
) -> Result<(), Refusal> {
    match guard {
        ResponseGuard::RecordOwner { id, policy } => {
            ownership::record_owner(ctx, id, policy, resp).await
        }
        ResponseGuard::ForgetOwned => ownership::forget_owned(ctx, resp.status()).await,
        ResponseGuard::OwnList { list, policy } => {
            ownership::own_list(ctx, list, policy, resp).await
        }
        ResponseGuard::Mask(masking) => masking::mask(ctx, masking, resp).await,
    }
}
