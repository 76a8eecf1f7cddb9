//! End-to-end tests: the real `idgate` binary, real TLS, real sockets on loopback.

mod support;

mod cli;
mod clients;
mod hsm;
mod hsm_outage;
mod proxy;
mod rotation;
mod smoke;
mod spiffe;
mod tokens;
