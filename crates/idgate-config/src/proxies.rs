//! `listener.trusted_proxies`: the addresses whose forwarding headers are believed.

use std::net::IpAddr;

use ipnet::IpNet;

/// Why an entry of `listener.trusted_proxies` was refused; each names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustedProxyError {
    #[error("\"{0}\" is not an address or a CIDR like \"10.0.0.0/8\"")]
    NotANetwork(String),
    #[error("\"{entry}\" has bits set past its prefix length: write \"{network}\"")]
    HostBitsSet { entry: String, network: IpNet },
    #[error("\"{0}\" trusts every address, so any caller could claim any address")]
    Everything(String),
}

/// Networks of proxies in front of the gateway. A connection from one of them may carry
/// `x-forwarded-for` and the other forwarding headers on to the upstream; from anywhere else
/// they are the caller's own claims and are replaced or removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Whether `ip` is in one of the networks. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
    /// what a dual-stack socket reports for IPv4 peers) is matched as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses one entry: a CIDR (`10.0.0.0/8`, `fd00::/8`) or a single address. The result is
    /// canonical: an IPv4-mapped network becomes the IPv4 network it is.
    pub(crate) fn parse_entry(s: &str) -> Result<IpNet, TrustedProxyError> {
        let net = match s.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => s
                .parse::<IpAddr>()
                .map(IpNet::from)
                .map_err(|_| TrustedProxyError::NotANetwork(s.to_owned()))?,
        };
        if net.addr() != net.network() {
            return Err(TrustedProxyError::HostBitsSet {
                entry: s.to_owned(),
                network: net.trunc(),
            });
        }
        let net = match net {
            IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
                Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                    .map(IpNet::V4)
                    .unwrap_or(net),
                None => net,
            },
            other => other,
        };
        // Looked at in the canonical form: `::ffff:0.0.0.0/96` is every IPv4 address.
        if net.prefix_len() == 0 {
            return Err(TrustedProxyError::Everything(s.to_owned()));
        }
        Ok(net)
    }

    pub(crate) fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            entries
                .iter()
                .map(|e| TrustedProxies::parse_entry(e).unwrap())
                .collect(),
        )
    }

    #[test]
    fn every_address_is_refused_in_any_spelling() {
        for entry in ["0.0.0.0/0", "::/0", "::ffff:0.0.0.0/96"] {
            assert!(
                matches!(
                    TrustedProxies::parse_entry(entry),
                    Err(TrustedProxyError::Everything(_))
                ),
                "{entry} was accepted"
            );
        }
    }

    #[test]
    fn ipv4_mapped_addresses_and_networks_match_as_ipv4() {
        let t = trusted(&["10.0.0.0/8", "::ffff:192.0.2.0/120", "2001:db8::/32"]);
        for ip in [
            "10.1.2.3",
            "::ffff:10.1.2.3",
            "192.0.2.77",
            "::ffff:192.0.2.77",
            "2001:db8::1",
        ] {
            assert!(t.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "11.0.0.1",
            "::ffff:11.0.0.1",
            "192.0.3.1",
            "2001:db9::1",
            "::1",
        ] {
            assert!(!t.contains(ip.parse().unwrap()), "{ip}");
        }
        assert_eq!(
            TrustedProxies::parse_entry("::ffff:192.0.2.0/120").unwrap(),
            "192.0.2.0/24".parse::<IpNet>().unwrap()
        );
    }

    #[test]
    fn a_single_address_is_a_host_network() {
        let t = trusted(&["203.0.113.9", "::1"]);
        assert!(t.contains("203.0.113.9".parse().unwrap()));
        assert!(!t.contains("203.0.113.10".parse().unwrap()));
        assert!(t.contains("::1".parse().unwrap()));
    }

    #[test]
    fn host_bits_everything_and_garbage_are_refused() {
        for bad in [
            "10.0.0.1/8",
            "0.0.0.0/0",
            "::/0",
            "10.0.0.0/33",
            "proxy.local",
            "",
        ] {
            assert!(TrustedProxies::parse_entry(bad).is_err(), "{bad}");
        }
    }
}
