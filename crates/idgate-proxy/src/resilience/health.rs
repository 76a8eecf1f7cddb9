//! Active health checks: one task per endpoint of an upstream with `[upstreams.health]`,
//! a `GET` of the check path every `interval` through the upstream's hyper client (its
//! roots and `ca`, no credential). `unhealthy_threshold` failed checks in a row take the
//! endpoint out of rotation; `healthy_threshold` passed ones bring it back. The task ends
//! when its endpoint's state is dropped (a reload removed it) or replaced by a new task
//! (a reload changed the check).

use std::sync::{Arc, Weak};

use bytes::Bytes;
use http::Uri;
use http_body_util::{Either, Full};
use idgate_config::HealthConfig;

use super::Resilience;
use super::balance::EndpointState;
use crate::body::UpstreamClient;

/// What one check needs.
pub(crate) struct Check {
    pub(crate) upstream: Arc<str>,
    pub(crate) uri: Uri,
    pub(crate) client: UpstreamClient,
    pub(crate) cfg: HealthConfig,
}

/// Whether one check passes.
async fn check(c: &Check) -> bool {
    let Ok(req) = http::Request::get(c.uri.clone()).body(Either::Right(Full::new(Bytes::new())))
    else {
        return false;
    };
    matches!(
        tokio::time::timeout(c.cfg.timeout, c.client.request(req)).await,
        Ok(Ok(resp)) if resp.status().as_u16() == c.cfg.expected_status
    )
}

/// Checks the endpoint until its state goes.
pub(crate) async fn run(c: Check, state: Weak<EndpointState>, resilience: Weak<Resilience>) {
    let (mut passed, mut failed) = (0u32, 0u32);
    let mut every = tokio::time::interval(c.cfg.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let ok = check(&c).await;
        let (Some(state), Some(resilience)) = (state.upgrade(), resilience.upgrade()) else {
            return;
        };
        // Removed by a reload, but still held by a request in flight: no more checks of an
        // endpoint the configuration no longer has, and no gauge brought back for it.
        if !resilience.is_installed(&c.upstream, &state) {
            return;
        }
        if ok {
            (passed, failed) = (passed.saturating_add(1), 0);
        } else {
            (passed, failed) = (0, failed.saturating_add(1));
        }
        let verdict = if state.healthy() && failed >= c.cfg.unhealthy_threshold {
            Some(false)
        } else if !state.healthy() && passed >= c.cfg.healthy_threshold {
            Some(true)
        } else {
            None
        };
        if let Some(healthy) = verdict
            && state.set_healthy(healthy)
        {
            resilience.health_changed(&c.upstream, &state, healthy);
        }
    }
}
