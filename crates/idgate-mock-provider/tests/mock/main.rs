//! End-to-end tests of the mock provider over real sockets (port 0), real TLS with a
//! certificate from the dev PKI, and signatures checked by an independent HMAC (Python).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod binary;
mod didit;
mod signed_requests;
mod webhooks;
