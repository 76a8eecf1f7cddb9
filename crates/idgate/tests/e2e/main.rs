//! End-to-end tests: the real `idgate` binary, real TLS, real sockets on loopback.

// A failed unwrap in a test is a test failure with its location: what a test should do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod config;
mod support;

mod audit;
mod audit_places;
mod body_budget;
mod cli;
mod clients;
mod credential_pairs;
mod demo;
mod examples;
mod fallback;
mod faults;
mod hostile_upstream;
mod hsm;
mod hsm_outage;
mod incidents;
mod jwt_interop;
mod jwt_svid;
mod keys;
mod layers;
mod limits;
mod masking;
mod masking_answers;
mod masking_representations;
mod metrics;
mod network;
mod oauth2_upstream;
mod openbao;
mod ownership;
mod ownership_namespaces;
mod ownership_upstream;
mod paths;
mod principals;
mod proxy;
mod rate_limits;
mod ready;
mod replicas;
mod request_limits;
mod resilience_endpoints;
mod resilience_upstream;
mod rotation;
mod schema_validation;
mod slow_clients;
mod smoke;
mod spiffe;
mod tokens;
mod upstream_connect;
mod upstream_h1;
mod vault;
mod veriff_mock;
mod webhooks;
mod workload_api;
