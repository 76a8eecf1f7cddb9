//! `[[upstreams]]`: the services routes forward to, their clients and timeouts.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::uri::{Scheme, Uri};

use crate::context::Ctx;
use crate::upstream_resilience::{
    BreakerConfig, HealthConfig, RetryConfig, parse_breaker, parse_health, parse_retry,
};
use crate::{CredentialConfig, credential, raw};

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// Scheme and authority of the upstream, such as `https://verification.didit.me`: the
    /// first of `endpoints`.
    pub origin: Uri,
    /// Every endpoint's scheme and authority (`url` is the one-endpoint form); they share
    /// the scheme and the base path.
    pub endpoints: Vec<Uri>,
    /// `[upstreams.health]`: active health checks of every endpoint; none, none.
    pub health: Option<HealthConfig>,
    /// Path prefix put before every forwarded path (empty or `/v1`, never ending in `/`).
    pub base_path: String,
    pub ca: Option<PathBuf>,
    /// `client_certificate = "svid"`: the gateway presents its own SVID (as it rotates)
    /// when the upstream asks for a client certificate (an in-house service that
    /// authenticates its callers by mutual TLS).
    pub client_svid: bool,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// One attempt's wait for the response head (≤ `request_timeout`, which bounds all
    /// attempts together).
    pub first_byte_timeout: Duration,
    /// A response body's time, from its head to its last byte (a caller reading slowly
    /// included): a body still coming past it is cut off.
    pub response_body_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
    /// Connections open to the upstream at once, in use or idle (`http2 = true`: requests
    /// in flight).
    pub max_connections: usize,
    /// Requests that may wait for a connection when all are busy.
    pub max_pending: usize,
    /// The longest such a wait.
    pub pending_timeout: Duration,
    /// Largest request body buffered for signing (signature schemes need the whole body).
    pub max_body_bytes: u64,
    /// Whether the caller's address is sent in `x-forwarded-for` (default: yes). Turn it off
    /// for outside providers that have no need for internal addresses.
    pub forwarded_for: bool,
    /// `https://` only: offer HTTP/2 by ALPN (one multiplexed connection) instead of the
    /// gateway's own HTTP/1.1 client.
    pub http2: bool,
    /// Which HTTP/1.1 client talks to the upstream.
    pub client: ClientKind,
    /// The upstream reads paths without regard to case (`/Export` is `/export` to it), so
    /// the literal segments of its routes are matched without case too.
    pub case_insensitive_paths: bool,
    pub credential: Option<CredentialConfig>,
    /// `[upstreams.breaker]`: none, no breaker.
    pub breaker: Option<BreakerConfig>,
    /// `[upstreams.retry]`: none, no retries.
    pub retry: Option<RetryConfig>,
}

/// The HTTP/1.1 client of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientKind {
    /// The gateway's own client (strict framing, run in the request's task).
    #[default]
    Native,
    /// hyper's client, as upstreams with `http2 = true` use: the fallback.
    Hyper,
}

impl UpstreamConfig {
    pub fn is_tls(&self) -> bool {
        self.origin.scheme() == Some(&Scheme::HTTPS)
    }
}

pub(crate) fn parse(
    cx: &mut Ctx<'_>,
    i: usize,
    mut u: raw::Upstream,
    warnings: &mut Vec<String>,
) -> Option<UpstreamConfig> {
    let key = format!("upstreams[{i}]");
    let before = cx.errors.len();
    if u.name.is_empty() {
        cx.err(format!("{key}.name"), "must not be empty");
    }
    let urls: Vec<(String, String)> = match (u.url.take(), u.endpoints.take()) {
        (Some(url), None) => vec![(format!("{key}.url"), url)],
        (None, Some(list)) if list.is_empty() => {
            cx.err(format!("{key}.endpoints"), "must name at least one URL");
            Vec::new()
        }
        (None, Some(list)) => list
            .into_iter()
            .enumerate()
            .map(|(j, url)| (format!("{key}.endpoints[{j}]"), url))
            .collect(),
        (Some(_), Some(_)) => {
            cx.err(
                format!("{key}.endpoints"),
                "give either url (one endpoint) or endpoints, not both",
            );
            Vec::new()
        }
        (None, None) => {
            cx.err(format!("{key}.url"), "missing: give url, or endpoints");
            Vec::new()
        }
    };
    let client = match u.client.as_deref() {
        None => None,
        Some("native") => Some(ClientKind::Native),
        Some("hyper") => Some(ClientKind::Hyper),
        Some(other) => {
            cx.err(
                format!("{key}.client"),
                format!("\"{other}\" is not a client: use \"native\" or \"hyper\""),
            );
            None
        }
    };
    let mut endpoints = Vec::new();
    let mut base_path = String::new();
    for (j, (url_key, url)) in urls.iter().enumerate() {
        let Some((origin, path)) = parse_url(cx, url_key, url, &u, client, warnings) else {
            continue;
        };
        if j == 0 {
            base_path = path;
        } else if path != base_path {
            cx.err(
                url_key.clone(),
                "every endpoint must have the same path (the base path) as the first",
            );
        } else if origin.scheme() != endpoints.first().and_then(|o: &Uri| o.scheme()) {
            cx.err(
                url_key.clone(),
                "every endpoint must have the same scheme as the first",
            );
        }
        if endpoints.contains(&origin) {
            cx.err(url_key.clone(), "is named twice");
        }
        endpoints.push(origin);
    }
    let ca =
        u.ca.as_deref()
            .map(|p| cx.existing_file(&format!("{key}.ca"), p));
    let client_svid = match u.client_certificate.as_deref() {
        None => false,
        Some("svid") if origin_is_https(&endpoints) => true,
        Some("svid") => {
            cx.err(
                format!("{key}.client_certificate"),
                "a client certificate is presented over TLS only: use an https:// url",
            );
            false
        }
        Some(other) => {
            cx.err(
                format!("{key}.client_certificate"),
                format!("\"{other}\" is not supported: the only value is \"svid\" (the gateway's own SVID)"),
            );
            false
        }
    };
    let credential = u
        .credential
        .and_then(|c| credential::parse(cx, &key, &u.name, c));
    let pool_max_idle = u.pool_max_idle.map_or(64, |n| n as usize);
    let request_timeout = cx.duration(
        &format!("{key}.request_timeout"),
        u.request_timeout,
        Duration::from_secs(30),
    );
    let first_byte_timeout = match u.first_byte_timeout.take() {
        None => request_timeout,
        set => {
            let d = cx.duration(&format!("{key}.first_byte_timeout"), set, request_timeout);
            if d > request_timeout {
                cx.err(
                    format!("{key}.first_byte_timeout"),
                    "must not be longer than request_timeout",
                );
            }
            d
        }
    };
    let max_connections = match u.max_connections {
        None => 256,
        Some(0) => {
            cx.err(format!("{key}.max_connections"), "must be more than zero");
            1
        }
        Some(n) => n as usize,
    };
    let max_pending = u.max_pending.map_or(max_connections, |n| n as usize);
    // The wait for a connection is bounded by itself (it is no part of an attempt's
    // first_byte_timeout) and by the request's time: one longer could never be reached.
    let pending_timeout = match u.pending_timeout {
        None => request_timeout.min(Duration::from_secs(5)),
        set => {
            let d = cx.duration(
                &format!("{key}.pending_timeout"),
                set,
                Duration::from_secs(5),
            );
            if d > request_timeout {
                cx.err(
                    format!("{key}.pending_timeout"),
                    "must not be longer than request_timeout",
                );
            }
            d
        }
    };
    let health = u.health.take().map(|h| parse_health(cx, &key, h));
    let breaker = u.breaker.map(|b| parse_breaker(cx, &key, b));
    let retry = u.retry.map(|r| parse_retry(cx, &key, r));
    let out = UpstreamConfig {
        connect_timeout: cx.duration(
            &format!("{key}.connect_timeout"),
            u.connect_timeout,
            Duration::from_secs(5),
        ),
        request_timeout,
        first_byte_timeout,
        response_body_timeout: cx.duration(
            &format!("{key}.response_body_timeout"),
            u.response_body_timeout,
            Duration::from_secs(120),
        ),
        max_connections,
        max_pending,
        pending_timeout,
        pool_idle_timeout: cx.duration(
            &format!("{key}.pool_idle_timeout"),
            u.pool_idle_timeout,
            Duration::from_secs(90),
        ),
        name: u.name,
        origin: endpoints.first()?.clone(),
        endpoints,
        base_path,
        ca,
        client_svid,
        pool_max_idle,
        max_body_bytes: match u.max_body_bytes {
            // Every route of the upstream without its own would refuse every body.
            Some(0) => {
                cx.err(format!("{key}.max_body_bytes"), "must be more than zero");
                10 * 1024 * 1024
            }
            n => n.unwrap_or(10 * 1024 * 1024),
        },
        forwarded_for: u.forwarded_for.unwrap_or(true),
        http2: u.http2.unwrap_or(false),
        client: client.unwrap_or_default(),
        case_insensitive_paths: u.case_insensitive_paths.unwrap_or(false),
        credential,
        breaker,
        retry,
        health,
    };
    (cx.errors.len() == before).then_some(out)
}

fn origin_is_https(endpoints: &[Uri]) -> bool {
    endpoints
        .first()
        .is_none_or(|u| u.scheme_str() == Some("https"))
}

/// One endpoint's URL: its origin (scheme and authority) and its base path.
fn parse_url(
    cx: &mut Ctx<'_>,
    url_key: &str,
    url: &str,
    u: &raw::Upstream,
    client: Option<ClientKind>,
    warnings: &mut Vec<String>,
) -> Option<(Uri, String)> {
    let key = url_key.rsplit_once('.').map_or(url_key, |(k, _)| k);
    let uri: Option<Uri> = match url.parse::<Uri>() {
        Ok(uri) => Some(uri),
        Err(_) => {
            // Not echoed: a password may have been pasted into it.
            cx.err(url_key, "is not a URL: write https://HOST[:PORT][/PATH]");
            None
        }
    };
    let mut origin = None;
    let mut base_path = String::new();
    if let Some(uri) = uri {
        let scheme_ok = matches!(uri.scheme_str(), Some("https" | "http"));
        if !scheme_ok {
            cx.err(
                url_key.to_owned(),
                "must start with https:// (or http:// for in-cluster services)",
            );
        } else if uri.host().is_none() {
            cx.err(url_key.to_owned(), "has no host");
        } else if uri.query().is_some() || url.contains('#') {
            cx.err(url_key.to_owned(), "must not have a query or fragment");
        } else if url.contains('@') {
            cx.err(
                url_key.to_owned(),
                "must not carry user info; use [upstreams.credential]",
            );
        } else if u.http2 == Some(true) && client == Some(ClientKind::Native) {
            cx.err(
                format!("{key}.client"),
                "http2 = true uses hyper's client: leave client out, or set it to \"hyper\"",
            );
        } else if u.http2 == Some(true) && uri.scheme_str() == Some("http") {
            cx.err(
                format!("{key}.http2"),
                "HTTP/2 is offered over TLS only: use an https:// url, or leave http2 out",
            );
        } else {
            base_path = uri.path().trim_end_matches('/').to_owned();
            if uri.scheme_str() == Some("http") {
                let loopback = uri
                    .host()
                    .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
                    .is_some_and(|h| {
                        h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
                    });
                if !loopback {
                    warnings.push(format!(
                        "upstream {}: {} is plain http://; traffic to it, including the injected credential, is not encrypted",
                        u.name, url
                    ));
                }
            }
            let mut parts = http::uri::Parts::default();
            parts.scheme = uri.scheme().cloned();
            parts.authority = uri.authority().cloned();
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            origin = Uri::from_parts(parts).ok();
        }
    }
    Some((origin?, base_path))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::test_support::problems;

    #[test]
    fn a_malformed_url_with_user_info_is_refused_without_echoing_it() {
        // A password pasted into each URL, with characters no URL may hold.
        let text = r#"
[listener]
bind = "127.0.0.1:8443"
[identity]
svid_cert = "c"
svid_key = "k"
[[upstreams]]
name = "p"
url = "https://svc:p^ss w0rd@provider.test"
[[webhooks]]
name = "didit"
path = "/webhooks/didit"
scheme = "didit"
secret = "file:key"
outbox_key = "file:key"
[[webhooks.subscribers]]
name = "kyc-backend"
url = "https://kyc:p^ss w0rd@kyc.internal:9443/events"
secret = "file:key"
[vault]
address = "https://vault:p^ss w0rd@vault.internal:8200"
token = "env:VAULT_TOKEN"
"#;
        let all = problems(Path::new("/etc/idgate/idgate.toml"), text, |_| true);
        for (key, reason) in [
            (
                "upstreams[0].url",
                "is not a URL: write https://HOST[:PORT][/PATH]",
            ),
            (
                "webhooks[0].subscribers[0].url",
                "is not a URL: write https://HOST[:PORT]/PATH",
            ),
            (
                "vault.address",
                "is not a URL: write Vault's address, like https://vault.internal:8200",
            ),
        ] {
            assert!(all.contains(&format!("{key}: {reason}")), "{key}: {all:#?}");
        }
        assert!(
            !all.iter().any(|p| p.contains("p^ss") || p.contains("w0rd")),
            "{all:#?}"
        );
    }

    #[test]
    fn an_upstream_max_body_bytes_of_zero_is_refused_like_a_route_s() {
        // BASE's upstream, `p`, is the last table: the key lands in it.
        let all = crate::test_support::added_problems(
            Path::new("/etc/idgate/idgate.toml"),
            crate::test_support::BASE,
            "max_body_bytes = 0\n",
        );
        assert_eq!(
            all,
            ["upstreams[0].max_body_bytes: must be more than zero"],
            "{all:#?}"
        );
    }
}
