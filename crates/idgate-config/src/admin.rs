//! `[admin]`: the listener of health checks and metrics.

use std::net::SocketAddr;

use crate::context::Ctx;
use crate::raw;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    /// Open admin connections at once; more are closed at accept.
    pub max_connections: usize,
}

/// Enough for a few scrapers and probes, each of which needs one connection at a time.
const DEFAULT_MAX_CONNECTIONS: usize = 64;

impl Default for AdminConfig {
    /// Loopback only: health and metrics are no business of the network.
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 9901)),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

pub(crate) fn parse(cx: &mut Ctx<'_>, a: raw::Admin) -> AdminConfig {
    let max_connections = match a.max_connections {
        None => DEFAULT_MAX_CONNECTIONS,
        Some(n @ 1..=10_000) => n as usize,
        Some(_) => {
            cx.err("admin.max_connections", "must be between 1 and 10000");
            DEFAULT_MAX_CONNECTIONS
        }
    };
    AdminConfig {
        bind: cx.socket_addr("admin.bind", &a.bind),
        max_connections,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn admin(text: &str) -> Result<AdminConfig, Vec<String>> {
        let raw: raw::Admin = toml::from_str(text).unwrap();
        let mut cx = Ctx {
            file: Path::new("idgate.toml"),
            base: Path::new("/etc/idgate"),
            errors: Vec::new(),
            check_secrets: false,
        };
        let a = parse(&mut cx, raw);
        cx.finish(a)
    }

    #[test]
    fn the_admin_connection_cap_has_a_default_and_a_range() {
        let bind = "bind = \"127.0.0.1:9901\"\n";
        assert_eq!(admin(bind).unwrap(), AdminConfig::default());
        assert_eq!(
            admin(&format!("{bind}max_connections = 4"))
                .unwrap()
                .max_connections,
            4
        );
        for n in [0, 10_001] {
            assert_eq!(
                admin(&format!("{bind}max_connections = {n}")).unwrap_err(),
                ["admin.max_connections: must be between 1 and 10000"]
            );
        }
    }
}
