//! End-to-end tests: the real `idgate` binary, real TLS, real sockets on loopback.

mod support;

mod cli;
mod clients;
mod examples;
mod hsm;
mod hsm_outage;
mod jwt_interop;
mod keys;
mod oauth2_upstream;
mod proxy;
mod rotation;
mod smoke;
mod spiffe;
mod tokens;
mod vault;
