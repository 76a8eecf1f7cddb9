//! `[admin]`: the listener of health checks and metrics.

use std::net::SocketAddr;

use crate::context::Ctx;
use crate::raw;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    /// Open admin connections at once; more are closed at accept.
    pub max_connections: usize,
    /// The host names, in lower case, that a request's `Host` may name besides an IP
    /// address and `localhost` (`admin.allowed_hosts`): any other is refused, so that a web
    /// page cannot read the listener through a name it points at it (DNS rebinding).
    pub allowed_hosts: Vec<String>,
}

/// Enough for a few scrapers and probes, each of which needs one connection at a time.
const DEFAULT_MAX_CONNECTIONS: usize = 64;

impl Default for AdminConfig {
    /// Loopback only: health and metrics are no business of the network.
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 9901)),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            allowed_hosts: Vec::new(),
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
    let allowed_hosts = a
        .allowed_hosts
        .iter()
        .enumerate()
        .filter_map(|(i, name)| match host_name(name) {
            Ok(name) => Some(name),
            Err(reason) => {
                cx.err(format!("admin.allowed_hosts[{i}]"), reason);
                None
            }
        })
        .collect();
    AdminConfig {
        bind: cx.socket_addr("admin.bind", &a.bind),
        max_connections,
        allowed_hosts,
    }
}

/// The longest DNS name (RFC 1035), and its longest label.
const MAX_NAME_BYTES: usize = 253;
const MAX_LABEL_BYTES: usize = 63;

/// One entry of `admin.allowed_hosts`, in lower case: a DNS name of letters, digits, `-` and
/// `.`, compared with the `Host` a request names (its port left aside). Or why it is not one.
fn host_name(name: &str) -> Result<String, &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.contains("://") {
        return Err("must be a host name, without a scheme");
    }
    if name.contains('*') {
        return Err("must be a host name: wildcards are not supported, list each name");
    }
    if name.contains(['[', ']']) {
        return Err("must be a host name: IP addresses are always answered and need no entry");
    }
    if name.contains(':') {
        return Err("must be a host name, without a port (any port is accepted)");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err("may hold only letters, digits, '-' and '.'");
    }
    if name.len() > MAX_NAME_BYTES {
        return Err("must not be longer than 253 bytes");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("has an empty label (a leading, trailing or doubled '.')");
        }
        if label.len() > MAX_LABEL_BYTES {
            return Err("has a label longer than 63 bytes");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("has a label that starts or ends with '-'");
        }
    }
    Ok(name.to_ascii_lowercase())
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

    #[test]
    fn admin_allowed_hosts_default_to_none_and_are_kept_in_lower_case() {
        let bind = "bind = \"127.0.0.1:9901\"\n";
        assert!(admin(bind).unwrap().allowed_hosts.is_empty());
        let a = admin(&format!(
            "{bind}allowed_hosts = [\"idgate-admin.monitoring.svc\", \"Ops-Box\", \"a.b-c.example\"]"
        ))
        .unwrap();
        assert_eq!(
            a.allowed_hosts,
            ["idgate-admin.monitoring.svc", "ops-box", "a.b-c.example"]
        );
    }

    #[test]
    fn an_admin_allowed_host_that_is_not_a_plain_dns_name_is_refused_with_its_index_and_reason() {
        let bind = "bind = \"127.0.0.1:9901\"\n";
        let long_label = "a".repeat(64);
        let long_name = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62),
        ]
        .join(".");
        assert_eq!(long_name.len(), 254);
        let longest = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(
            admin(&format!("{bind}allowed_hosts = [\"{longest}\"]"))
                .unwrap()
                .allowed_hosts,
            [longest]
        );
        for (entry, reason) in [
            ("", "must not be empty"),
            (
                "http://admin.example",
                "must be a host name, without a scheme",
            ),
            (
                "*.example",
                "must be a host name: wildcards are not supported, list each name",
            ),
            (
                "[::1]",
                "must be a host name: IP addresses are always answered and need no entry",
            ),
            (
                "admin.example:9901",
                "must be a host name, without a port (any port is accepted)",
            ),
            (
                "admin example",
                "may hold only letters, digits, '-' and '.'",
            ),
            ("admin_box", "may hold only letters, digits, '-' and '.'"),
            (
                "admin/metrics",
                "may hold only letters, digits, '-' and '.'",
            ),
            (
                "bücher.example",
                "may hold only letters, digits, '-' and '.'",
            ),
            (&long_name, "must not be longer than 253 bytes"),
            (
                "admin.example.",
                "has an empty label (a leading, trailing or doubled '.')",
            ),
            (
                ".admin.example",
                "has an empty label (a leading, trailing or doubled '.')",
            ),
            (
                "admin..example",
                "has an empty label (a leading, trailing or doubled '.')",
            ),
            (&long_label, "has a label longer than 63 bytes"),
            ("-admin.example", "has a label that starts or ends with '-'"),
            ("admin-.example", "has a label that starts or ends with '-'"),
        ] {
            assert_eq!(
                admin(&format!(
                    "{bind}allowed_hosts = [\"ok.example\", \"localhost\", \"{entry}\"]"
                ))
                .unwrap_err(),
                [format!("admin.allowed_hosts[2]: {reason}")],
                "{entry:?}"
            );
        }
    }
}
