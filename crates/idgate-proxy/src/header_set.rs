//! A set of header names that a message's headers are stripped of in one pass.
//!
//! Every forwarded request is stripped of the hop-by-hop headers, the caller's credentials
//! and (from a caller that is not a trusted proxy) the forwarding headers, and every answer of
//! the hop-by-hop ones: some thirty names, against a handful of headers. Comparing each header
//! with each name cost more than the rest of the forwarding stage; a set groups its names by
//! length, so that a header is compared only with the few members as long as its name.

use std::sync::{Arc, LazyLock};

use http::header::{self, HeaderMap, HeaderName};

/// Headers that tell an upstream who sent a request and how it arrived. Only a trusted proxy
/// may pass them on; from anyone else they are claims the caller made about itself. Besides
/// the standard ones, the client-address headers of common CDNs and load balancers, which
/// frameworks (and libraries such as `request-ip`) read before `x-forwarded-for`; the
/// headers in which a proxy passes on the original scheme, host, path and TLS (read by
/// Spring, Rack and Werkzeug's proxy fixes); and Envoy's `x-forwarded-client-cert`, which
/// names the client certificate a proxy verified.
pub(crate) static FORWARDING: [HeaderName; 24] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded"),
    HeaderName::from_static("forwarded-for"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("fastly-client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    HeaderName::from_static("x-original-forwarded-for"),
    HeaderName::from_static("x-appengine-user-ip"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("front-end-https"),
    HeaderName::from_static("x-original-host"),
    HeaderName::from_static("x-original-uri"),
    HeaderName::from_static("x-forwarded-client-cert"),
];
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 §7.6.1), plus the proxy ones.
pub(crate) static HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHORIZATION,
    &header::PROXY_AUTHENTICATE,
];

/// What forwarded requests are stripped of, made once per configuration: the hop-by-hop
/// headers, the callers' credentials and the headers that could change what a request means
/// to the upstream, and, from a caller that is not a trusted proxy, the forwarding headers.
#[derive(Debug, Clone)]
pub(crate) struct RequestStrip {
    from_trusted: Arc<HeaderSet>,
    from_others: Arc<HeaderSet>,
}

impl RequestStrip {
    /// With `caller_headers`: the headers that carry a caller's credentials or could rewrite
    /// its request.
    pub(crate) fn new(caller_headers: &[HeaderName]) -> Self {
        let always = || {
            HOP_BY_HOP
                .iter()
                .map(|&n| n.clone())
                .chain(caller_headers.iter().cloned())
        };
        Self {
            from_trusted: Arc::new(HeaderSet::new(always()).and_underscored()),
            from_others: Arc::new(
                HeaderSet::new(always().chain(FORWARDING.iter().cloned())).and_underscored(),
            ),
        }
    }

    /// The set for a request whose forwarding headers go on (`trusted`: it came from a
    /// trusted proxy, to an upstream with `forwarded_for`), or for any other.
    pub(crate) fn for_request(&self, trusted: bool) -> &Arc<HeaderSet> {
        if trusted {
            &self.from_trusted
        } else {
            &self.from_others
        }
    }
}

/// A caller's trailer fields are stripped as its head was.
impl idgate_h1::TrailerFilter for HeaderSet {
    fn filter(&self, trailers: &mut HeaderMap) {
        self.strip(trailers);
    }
}

/// What an upstream's answer is stripped of: the hop-by-hop headers.
pub(crate) static RESPONSE_STRIP: LazyLock<HeaderSet> =
    LazyLock::new(|| HeaderSet::new(HOP_BY_HOP.iter().map(|&n| n.clone())));

/// What an answer a masking profile applies to is stripped of: the headers that describe the
/// upstream's bytes (wrong for masked ones) and `Accept-Ranges`.
pub(crate) static MASKED_STRIP: LazyLock<HeaderSet> = LazyLock::new(|| {
    HeaderSet::new([
        header::ETAG,
        HeaderName::from_static("content-md5"),
        HeaderName::from_static("digest"),
        HeaderName::from_static("content-digest"),
        HeaderName::from_static("repr-digest"),
        header::ACCEPT_RANGES,
    ])
});

/// Header names, grouped by length: a header is compared only with the members as long as
/// its name, and most headers have no member of their length at all.
#[derive(Debug, Clone)]
pub(crate) struct HeaderSet {
    /// Sorted by [`bucket`].
    names: Vec<HeaderName>,
    /// The members of bucket `b` are `names[starts[b]..starts[b + 1]]`.
    starts: [usize; BUCKETS + 1],
    /// Where `Connection` is in `names`, if it is a member.
    connection: Option<usize>,
    /// Every header whose name holds an underscore goes too (see [`HeaderSet::and_underscored`]).
    underscored: bool,
}

/// Names are grouped by length up to this; longer ones share the last group.
const BUCKETS: usize = 64;

fn bucket(name: &str) -> usize {
    name.len().min(BUCKETS - 1)
}

impl HeaderSet {
    /// The set of `names`, each once.
    pub(crate) fn new<N: Into<HeaderName>>(names: impl IntoIterator<Item = N>) -> Self {
        let mut unique: Vec<HeaderName> = Vec::new();
        for name in names {
            let name = name.into();
            if !unique.contains(&name) {
                unique.push(name);
            }
        }
        unique.sort_by_key(|n| bucket(n.as_str()));
        let mut starts = [0; BUCKETS + 1];
        for (b, start) in starts.iter_mut().enumerate() {
            *start = unique.partition_point(|n| bucket(n.as_str()) < b);
        }
        let connection = unique.iter().position(|n| *n == header::CONNECTION);
        Self {
            names: unique,
            starts,
            connection,
            underscored: false,
        }
    }

    /// The same set, and every header whose name holds an underscore. CGI, WSGI, PHP and
    /// Rack read a header as `HTTP_` and its name with `-` made `_`, so `X_Forwarded_For`
    /// reaches such an application as `X-Forwarded-For` would: stripping the dashed name
    /// alone would let a caller set what the upstream takes for its address, its host or a
    /// credential. As nginx (`underscores_in_headers off`), requests go upstream without
    /// them.
    pub(crate) fn and_underscored(mut self) -> Self {
        self.underscored = true;
        self
    }

    /// Where `name` is in `names`.
    fn find(&self, name: &str) -> Option<usize> {
        let b = bucket(name);
        let (from, to) = (self.starts[b], self.starts[b + 1]);
        let group = self.names.get(from..to)?;
        group
            .iter()
            .position(|n| n.as_str() == name)
            .map(|i| from + i)
    }

    /// Removes every value of every header in the set. When the set holds `Connection` and
    /// the message has one, the headers it names go too (RFC 9110 §7.6.1).
    pub(crate) fn strip(&self, headers: &mut HeaderMap) {
        // Which members are present, as bits of their places in `names`: one pass over the
        // message's headers, usually with no removal at all.
        let mut present = 0u64;
        let mut overflow = false;
        let mut underscored = false;
        for key in headers.keys() {
            underscored |= self.underscored && key.as_str().as_bytes().contains(&b'_');
            if let Some(i) = self.find(key.as_str()) {
                match u32::try_from(i).ok().and_then(|i| 1u64.checked_shl(i)) {
                    Some(bit) => present |= bit,
                    None => overflow = true,
                }
            }
        }
        if underscored {
            remove_underscored(headers);
        }
        if present == 0 && !overflow {
            return;
        }
        let has_connection = match self.connection {
            Some(i) if i < 64 && !overflow => present & (1 << i) != 0,
            Some(_) => headers.contains_key(header::CONNECTION),
            None => false,
        };
        if has_connection {
            remove_connection_named(headers);
        }
        if overflow {
            // More members than the bit set holds: each is looked up.
            for name in &self.names {
                headers.remove(name);
            }
            return;
        }
        while present != 0 {
            let i = present.trailing_zeros() as usize;
            present &= present - 1;
            if let Some(name) = self.names.get(i) {
                headers.remove(name);
            }
        }
    }
}

/// Removes every header whose name holds an underscore.
fn remove_underscored(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().as_bytes().contains(&b'_'))
        .cloned()
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// Removes the headers the `Connection` header names (but `keep-alive` and `close`, which
/// are its options, not header names). The value is read as bytes: one that is not all
/// visible ASCII still has its names removed, so that a stray byte cannot shield the
/// header named beside it.
fn remove_connection_named(headers: &mut HeaderMap) {
    let mut connection = headers.get_all(header::CONNECTION).iter();
    match (connection.next(), connection.next()) {
        (None, _) => {}
        // The usual case: one `Connection` header, its value shared, not copied.
        (Some(value), None) => {
            let value = value.clone();
            for name in connection_names(value.as_bytes()) {
                headers.remove(name);
            }
        }
        (Some(_), Some(_)) => {
            let named: Vec<HeaderName> = headers
                .get_all(header::CONNECTION)
                .iter()
                .flat_map(|v| connection_names(v.as_bytes()))
                .collect();
            for name in named {
                headers.remove(name);
            }
        }
    }
}

/// The header names in a `Connection` value, its options left out. A member that is not a
/// header name (no header can be called that) is skipped, and so is a `Content-*` name: those
/// describe the representation end to end and are never hop-by-hop, and the gateway's
/// guards judge a body by them (a `Content-Type` taken away after a check, or before the
/// masking of an answer, would let a body pass as something it is not).
fn connection_names(value: &[u8]) -> impl Iterator<Item = HeaderName> + '_ {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|name| {
            !name.eq_ignore_ascii_case(b"keep-alive")
                && !name.eq_ignore_ascii_case(b"close")
                && !name
                    .get(..8)
                    .is_some_and(|p| p.eq_ignore_ascii_case(b"content-"))
        })
        .filter_map(|name| HeaderName::from_bytes(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// The names left, sorted: a removal may move the headers after it.
    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn every_value_of_every_member_is_removed_and_nothing_else() {
        let set = HeaderSet::new([header::CONNECTION, header::TE, header::UPGRADE]);
        let mut h = HeaderMap::new();
        for name in [header::TE, header::UPGRADE] {
            h.append(name.clone(), HeaderValue::from_static("a"));
            h.append(name, HeaderValue::from_static("b"));
        }
        h.append("x-kept", HeaderValue::from_static("1"));
        h.append("x-kept", HeaderValue::from_static("2"));
        // `tx` has a member's length (`te`) but is not one.
        h.append("tx", HeaderValue::from_static("1"));
        set.strip(&mut h);
        assert_eq!(names(&h), ["tx", "x-kept"]);
        assert_eq!(h.get_all("x-kept").iter().count(), 2);
    }

    #[test]
    fn the_headers_connection_names_go_only_when_the_set_holds_it_and_it_is_there() {
        let set = HeaderSet::new([header::CONNECTION]);
        let message = || {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONNECTION,
                HeaderValue::from_static("keep-alive, X-Secret-Hop , close"),
            );
            h.insert("x-secret-hop", HeaderValue::from_static("1"));
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            h
        };
        let mut h = message();
        set.strip(&mut h);
        assert_eq!(names(&h), ["keep-alive"]);
        let mut h = message();
        HeaderSet::new([header::TE]).strip(&mut h);
        assert_eq!(names(&h), ["connection", "keep-alive", "x-secret-hop"]);

        // Two `Connection` headers: the names of both.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("x-a"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-b"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("1"));
        h.insert("x-c", HeaderValue::from_static("1"));
        set.strip(&mut h);
        assert_eq!(names(&h), ["x-c"]);
    }

    #[test]
    fn a_byte_that_is_not_ascii_does_not_shield_the_headers_connection_names() {
        let set = HeaderSet::new([header::CONNECTION]);
        for (one, two) in [
            (&b"x-secret-hop, \xff"[..], None),
            (b"\x80, x-secret-hop", None),
            (b"x-a", Some(&b"x-secret-hop,\xfe"[..])),
        ] {
            let mut h = HeaderMap::new();
            h.append(header::CONNECTION, HeaderValue::from_bytes(one).unwrap());
            if let Some(two) = two {
                h.append(header::CONNECTION, HeaderValue::from_bytes(two).unwrap());
            }
            h.insert("x-secret-hop", HeaderValue::from_static("1"));
            h.insert("x-kept", HeaderValue::from_static("1"));
            set.strip(&mut h);
            assert_eq!(names(&h), ["x-kept"], "{one:?} {two:?}");
        }
    }

    #[test]
    fn connection_cannot_take_away_what_describes_the_body() {
        let set = HeaderSet::new([header::CONNECTION]);
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Content-Type, content-encoding, CONTENT-LENGTH, x-hop"),
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        set.strip(&mut h);
        assert_eq!(
            names(&h),
            ["content-encoding", "content-length", "content-type"]
        );
    }

    #[test]
    fn a_set_larger_than_the_bit_set_still_removes_each_member() {
        let many: Vec<HeaderName> = (0..70)
            .map(|i| HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap())
            .collect();
        let set = HeaderSet::new(many);
        let mut h = HeaderMap::new();
        h.append("x-h69", HeaderValue::from_static("1"));
        h.append("x-h3", HeaderValue::from_static("1"));
        h.append("x-kept", HeaderValue::from_static("1"));
        set.strip(&mut h);
        assert_eq!(names(&h), ["x-kept"]);
    }

    #[test]
    fn long_names_share_the_last_length_group_and_are_still_told_apart() {
        let long = "x-".to_owned() + &"a".repeat(200);
        let longer = "x-".to_owned() + &"a".repeat(201);
        let set = HeaderSet::new([HeaderName::from_bytes(long.as_bytes()).unwrap()]);
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_bytes(longer.as_bytes()).unwrap(),
            HeaderValue::from_static("1"),
        );
        h.insert(
            HeaderName::from_bytes(long.as_bytes()).unwrap(),
            HeaderValue::from_static("1"),
        );
        set.strip(&mut h);
        assert_eq!(names(&h), [longer.as_str()]);
    }

    #[test]
    fn a_masked_answer_loses_what_describes_the_upstreams_bytes_and_keeps_the_rest() {
        let mut h = HeaderMap::new();
        for name in [
            "etag",
            "content-md5",
            "digest",
            "content-digest",
            "repr-digest",
            "accept-ranges",
            "content-type",
            "cache-control",
        ] {
            h.append(HeaderName::from_static(name), HeaderValue::from_static("x"));
        }
        MASKED_STRIP.strip(&mut h);
        assert_eq!(names(&h), ["cache-control", "content-type"]);
    }
}
