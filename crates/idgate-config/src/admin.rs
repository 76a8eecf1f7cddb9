//! `[admin]`: the listener of health checks and metrics.

use std::net::SocketAddr;

use crate::context::Ctx;
use crate::raw;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub bind: SocketAddr,
}

impl Default for AdminConfig {
    /// Loopback only: health and metrics are no business of the network.
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 9901)),
        }
    }
}

pub(crate) fn parse(cx: &mut Ctx<'_>, a: raw::Admin) -> AdminConfig {
    AdminConfig {
        bind: cx.socket_addr("admin.bind", &a.bind),
    }
}
