//! Network rules: `[network]` (every connection) and a route's `allow_cidrs`, `deny_cidrs`
//! and `deny_user_agents`: which client addresses and user agents may be served.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::context::Ctx;
use crate::raw;

/// Allow and deny lists of networks. Deny wins over allow; an empty allow list allows every
/// address not denied. Addresses and networks are compared canonically: an IPv4-mapped
/// IPv6 address is the IPv4 address it carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrRules {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl CidrRules {
    /// Whether `ip` may be served.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// A user-agent pattern: ASCII, compared without case, where `*` stands for any run of
/// characters; a pattern without `*` matches anywhere in the header (`sqlmap` matches
/// `sqlmap/1.7`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAgentPattern {
    /// Lower-cased pieces between the `*`s.
    parts: Vec<String>,
    anchored_start: bool,
    anchored_end: bool,
}

/// Why a user-agent pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserAgentPatternError {
    #[error("is empty or only '*': it would refuse every caller")]
    Everything,
    #[error("has a character outside visible ASCII and space")]
    NotVisibleAscii,
}

impl UserAgentPattern {
    pub fn new(pattern: &str) -> Result<Self, UserAgentPatternError> {
        if !pattern.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
            return Err(UserAgentPatternError::NotVisibleAscii);
        }
        let lower = pattern.to_ascii_lowercase();
        let parts: Vec<String> = lower
            .split('*')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        if parts.is_empty() {
            return Err(UserAgentPatternError::Everything);
        }
        let globbed = pattern.contains('*');
        Ok(Self {
            parts,
            anchored_start: globbed && !pattern.starts_with('*'),
            anchored_end: globbed && !pattern.ends_with('*'),
        })
    }

    /// Whether the user agent matches. Bytes outside ASCII never match a piece.
    pub fn matches(&self, user_agent: &[u8]) -> bool {
        let ua = user_agent.to_ascii_lowercase();
        let mut at = 0;
        let last = self.parts.len() - 1;
        for (i, part) in self.parts.iter().enumerate() {
            let part = part.as_bytes();
            if i == 0 && self.anchored_start {
                if !ua.starts_with(part) {
                    return false;
                }
                at = part.len();
                continue;
            }
            if i == last && self.anchored_end {
                return ua.len() >= at + part.len() && ua.ends_with(part);
            }
            match ua[at..].windows(part.len()).position(|w| w == part) {
                Some(p) => at += p + part.len(),
                None => return false,
            }
        }
        !(self.anchored_end && at != ua.len())
    }
}

/// `[network]`: rules for every connection and request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Checked at accept, before any TLS, on the client's address (the one a PROXY protocol
    /// header names, when the load balancer sends one).
    pub cidrs: CidrRules,
    /// Requests whose `User-Agent` matches one are refused (403).
    pub deny_user_agents: Vec<UserAgentPattern>,
}

/// Parses a list of networks under `key`; each entry is a CIDR or a single address, with no
/// host bits set past the prefix.
pub(crate) fn cidr_list(cx: &mut Ctx<'_>, key: &str, entries: &[String]) -> Vec<IpNet> {
    cidr_list_indexed(cx, key, entries)
        .into_iter()
        .map(|(_, net)| net)
        .collect()
}

/// [`cidr_list`], each network with the index of its entry.
fn cidr_list_indexed(cx: &mut Ctx<'_>, key: &str, entries: &[String]) -> Vec<(usize, IpNet)> {
    let mut out = Vec::new();
    for (n, entry) in entries.iter().enumerate() {
        let net = match entry.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => match entry.parse::<IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => {
                    cx.err(
                        format!("{key}[{n}]"),
                        format!("\"{entry}\" is not an address or a CIDR like \"10.0.0.0/8\""),
                    );
                    continue;
                }
            },
        };
        if net.addr() != net.network() {
            cx.err(
                format!("{key}[{n}]"),
                format!(
                    "\"{entry}\" has bits set past its prefix length: write \"{}\"",
                    net.trunc()
                ),
            );
            continue;
        }
        out.push((n, canonical(net)));
    }
    out
}

/// Parses the networks under `key` whose peers are believed about another address (the
/// load balancers a PROXY header may come from). A network of every address (`/0`, or
/// `::ffff:0.0.0.0/96`, which is every IPv4 address) is refused: any caller could then name
/// its own source address, which network rules, per-address caps, lockouts, `source_ip`
/// rate limits and the audit trail all take as true.
pub(crate) fn believed_peers(cx: &mut Ctx<'_>, key: &str, entries: &[String]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (n, net) in cidr_list_indexed(cx, key, entries) {
        if net.prefix_len() == 0 {
            cx.err(
                format!("{key}[{n}]"),
                format!(
                    "\"{}\" trusts every address, so any caller could claim any address: list the load balancers' own",
                    entries.get(n).map_or("", String::as_str)
                ),
            );
            continue;
        }
        out.push(net);
    }
    out
}

/// An IPv4-mapped IPv6 network as the IPv4 network it is.
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

pub(crate) fn user_agents(
    cx: &mut Ctx<'_>,
    key: &str,
    patterns: &[String],
) -> Vec<UserAgentPattern> {
    let mut out = Vec::new();
    for (n, p) in patterns.iter().enumerate() {
        match UserAgentPattern::new(p) {
            Ok(pattern) => out.push(pattern),
            Err(e) => cx.err(format!("{key}[{n}]"), format!("\"{p}\" {e}")),
        }
    }
    out
}

pub(crate) fn parse(cx: &mut Ctx<'_>, n: raw::Network) -> NetworkConfig {
    NetworkConfig {
        cidrs: CidrRules {
            allow: cidr_list(cx, "network.allow", &n.allow),
            deny: cidr_list(cx, "network.deny", &n.deny),
        },
        deny_user_agents: user_agents(cx, "network.deny_user_agents", &n.deny_user_agents),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        canonical(s.parse().unwrap())
    }

    #[test]
    fn deny_wins_and_an_empty_allow_list_allows_all() {
        let rules = CidrRules {
            allow: vec![net("10.0.0.0/8"), net("2001:db8::/32")],
            deny: vec![net("10.9.0.0/16"), net("::ffff:192.0.2.0/120")],
        };
        assert!(rules.permits("10.1.2.3".parse().unwrap()));
        assert!(rules.permits("::ffff:10.1.2.3".parse().unwrap()));
        assert!(rules.permits("2001:db8::5".parse().unwrap()));
        assert!(!rules.permits("10.9.2.3".parse().unwrap()));
        assert!(!rules.permits("::ffff:10.9.2.3".parse().unwrap()));
        assert!(!rules.permits("11.0.0.1".parse().unwrap()));
        let deny_only = CidrRules {
            allow: Vec::new(),
            deny: rules.deny.clone(),
        };
        assert!(deny_only.permits("11.0.0.1".parse().unwrap()));
        assert!(!deny_only.permits("192.0.2.9".parse().unwrap()));
        assert!(!deny_only.permits("::ffff:192.0.2.9".parse().unwrap()));
    }

    #[test]
    fn proxy_protocol_from_refuses_prefix_zero() {
        let file = std::path::Path::new("t.toml");
        let from = |list: &str| {
            let extra = format!("[listener.proxy_protocol]\nfrom = {list}\n");
            let text =
                crate::test_support::BASE.replace("[identity]", &format!("{extra}[identity]"));
            crate::test_support::problems(file, &text, |e| {
                e.key.starts_with("listener.proxy_protocol.from")
            })
        };
        assert_eq!(
            from(r#"["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "0.0.0.0/1"]"#),
            Vec::<String>::new()
        );
        let e = from(r#"["10.0.0.0/8", "0.0.0.0/0", "::/0", "::ffff:0.0.0.0/96"]"#);
        for n in 1..=3 {
            assert!(
                e.iter().any(
                    |e| e.starts_with(&format!("listener.proxy_protocol.from[{n}]: "))
                        && e.contains("trusts every address")
                ),
                "{n}: {e:?}"
            );
        }
        assert!(!e.iter().any(|e| e.contains("from[0]")), "{e:?}");
    }

    #[test]
    fn user_agent_patterns_glob_without_case() {
        let p = |s: &str| UserAgentPattern::new(s).unwrap();
        assert!(p("sqlmap").matches(b"Mozilla sqlMap/1.7"));
        assert!(!p("sqlmap").matches(b"curl/8.0"));
        assert!(p("curl/*").matches(b"curl/8.1.2"));
        assert!(!p("curl/*").matches(b"xcurl/8"));
        assert!(p("*bot").matches(b"GoodBot"));
        assert!(!p("*bot").matches(b"bot-x"));
        assert!(p("a*b*c").matches(b"aXbYc"));
        assert!(p("a*b*c").matches(b"abc"));
        assert!(!p("a*b*c").matches(b"acb"));
        assert!(!p("ab*ba").matches(b"aba"));
        assert!(p("*scan*").matches(b"nmap scanner"));
        assert!(!p("x").matches("é".as_bytes()));
        for bad in ["", "*", "**", "tab\there", "é"] {
            assert!(UserAgentPattern::new(bad).is_err(), "{bad}");
        }
    }
}
