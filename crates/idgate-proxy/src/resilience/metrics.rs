//! The metrics of upstream resilience, on the gateway's registry: each breaker's state,
//! its changes and its refusals, retries and the retry budget's refusals.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::breaker::BreakerState;
use crate::metrics::RouteLabel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: RouteLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    upstream: RouteLabel,
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    upstream: RouteLabel,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    upstream: RouteLabel,
    endpoint: RouteLabel,
}

#[derive(Debug)]
pub(crate) struct ResilienceMetrics {
    healthy: Family<EndpointLabels, Gauge>,
    state: Family<UpstreamLabel, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
    refused: Family<UpstreamLabel, Counter>,
    retries: Family<RetryLabels, Counter>,
    budget_exhausted: Family<UpstreamLabel, Counter>,
}

fn label(upstream: &Arc<str>) -> UpstreamLabel {
    UpstreamLabel {
        upstream: RouteLabel(upstream.clone()),
    }
}

impl ResilienceMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self {
            healthy: Family::default(),
            state: Family::default(),
            transitions: Family::default(),
            refused: Family::default(),
            retries: Family::default(),
            budget_exhausted: Family::default(),
        };
        registry.register(
            "upstream_breaker_state",
            "Each upstream's circuit breaker: 0 closed, 1 open, 2 half-open",
            m.state.clone(),
        );
        registry.register(
            "upstream_breaker_transitions",
            "Changes of each upstream's circuit breaker, by the state it went to",
            m.transitions.clone(),
        );
        registry.register(
            "upstream_breaker_refusals",
            "Requests refused by an upstream's circuit breaker without touching the upstream",
            m.refused.clone(),
        );
        registry.register(
            "upstream_retries",
            "Retries of requests to each upstream, by what the attempt before met (status, connect, timeout, reset)",
            m.retries.clone(),
        );
        registry.register(
            "upstream_retry_budget_exhausted",
            "Retries not made because the upstream's retry budget was spent",
            m.budget_exhausted.clone(),
        );
        registry.register(
            "upstream_endpoint_healthy",
            "Each upstream endpoint: 1 in rotation, 0 out of it after failing its health checks",
            m.healthy.clone(),
        );
        m
    }

    pub(crate) fn set_healthy(&self, upstream: &Arc<str>, endpoint: &Arc<str>, healthy: bool) {
        self.healthy
            .get_or_create(&EndpointLabels {
                upstream: RouteLabel(upstream.clone()),
                endpoint: RouteLabel(endpoint.clone()),
            })
            .set(i64::from(healthy));
    }

    pub(crate) fn set_state(&self, upstream: &Arc<str>, state: BreakerState) {
        self.state
            .get_or_create(&label(upstream))
            .set(state.gauge());
    }

    pub(crate) fn transition(&self, upstream: &Arc<str>, to: BreakerState) {
        self.transitions
            .get_or_create(&TransitionLabels {
                upstream: RouteLabel(upstream.clone()),
                to: to.as_str(),
            })
            .inc();
    }

    pub(crate) fn refused(&self, upstream: &Arc<str>) {
        self.refused.get_or_create(&label(upstream)).inc();
    }

    pub(crate) fn retried(&self, upstream: &Arc<str>, reason: &'static str) {
        self.retries
            .get_or_create(&RetryLabels {
                upstream: RouteLabel(upstream.clone()),
                reason,
            })
            .inc();
    }

    pub(crate) fn budget_exhausted(&self, upstream: &Arc<str>) {
        self.budget_exhausted.get_or_create(&label(upstream)).inc();
    }

    /// A removed endpoint's health gauge goes (a reload took it, or its upstream, away).
    pub(crate) fn forget_endpoint(&self, upstream: &Arc<str>, endpoint: &Arc<str>) {
        self.healthy.remove(&EndpointLabels {
            upstream: RouteLabel(upstream.clone()),
            endpoint: RouteLabel(endpoint.clone()),
        });
    }

    /// A removed upstream's gauge goes; its counters stay, as counters do.
    pub(crate) fn forget(&self, upstream: &Arc<str>) {
        self.state.remove(&label(upstream));
    }
}
