//! `[[routes]]`: which requests go to which upstream, and who may send them.

use std::collections::{BTreeMap, HashMap, HashSet};

use http::Method;
use idgate_tls::TrustDomain;

use crate::context::Ctx;
use crate::masking::{self, RouteMasking};
use crate::ownership::{self, OwnershipConfig, RawRouteOwnership, RouteOwnership};
use crate::schema::{self, RouteSchema};
use crate::{
    AllowEntry, AuthLayer, OnStateError, RouteAuth, ScopeRule, UpstreamConfig, auth, fold_template,
    raw,
};

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub methods: Vec<Method>,
    /// A path template: `/v3/session/{session_id}/decision/`.
    pub path: String,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Literal segments match without case: the upstream's `case_insensitive_paths`.
    pub case_insensitive: bool,
    /// Who may use the route (default deny): SPIFFE IDs and patterns, `apikey:NAME`,
    /// `client:ID`, `sub:SUBJECT`.
    pub allow: Vec<AllowEntry>,
    /// The authentication layers the route requires (default: mutual TLS).
    pub auth: RouteAuth,
    /// The scopes the route requires, per method.
    pub scopes: ScopeRule,
    /// Whether a `GET`, `HEAD`, `OPTIONS` or `DELETE` request may carry a body.
    pub allow_body: bool,
    /// Who may reach the route by address and user agent, checked after routing.
    pub network: RouteNetwork,
    /// The largest request body the route takes (the upstream's `max_body_bytes` unless
    /// the route sets its own).
    pub max_body_bytes: u64,
    /// The names of the `[[rate_limits]]` that apply, each decided on every request.
    pub rate_limits: Vec<String>,
    /// Which objects the route creates, reads or lists, and whose they are.
    pub ownership: Option<RouteOwnership>,
    /// The JSON Schema request bodies must satisfy.
    pub schema: Option<RouteSchema>,
    /// What the route's state checks do when the backend fails; `None`: each check's own
    /// default (rate limits fail open, ownership fails closed).
    pub on_state_error: Option<OnStateError>,
    /// Which masking profile applies to the answers each caller gets.
    pub masking: Option<RouteMasking>,
    /// The route's audit options: its policy when the audit queue is full, and whether its
    /// path parameters are personal data.
    pub audit: crate::RouteAudit,
    /// What the route does when its upstream fails (a cached answer, a secondary
    /// upstream), and the faults it injects in rehearsals.
    pub resilience: crate::RouteResilience,
}

/// A route's `allow_cidrs`, `deny_cidrs` and `deny_user_agents`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteNetwork {
    pub cidrs: crate::CidrRules,
    pub deny_user_agents: Vec<crate::UserAgentPattern>,
}

/// Methods whose requests carry no body unless a route says otherwise: their semantics
/// define none, and an upstream that ignores one leaves its bytes to the next request.
pub fn body_needs_opt_in(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE
    )
}

/// Which authentication layers the configuration provides.
pub(crate) struct Layers {
    pub(crate) api_keys: bool,
    pub(crate) jwt: bool,
    /// Whether there is a `[jwt_svid]` section.
    pub(crate) jwt_svid: bool,
    pub(crate) issuers: auth::IssuerNames,
    /// The names of the configured `[[rate_limits]]`.
    pub(crate) rate_limits: Vec<String>,
    /// `[ownership]`, which routes' ownership keys are resolved against.
    pub(crate) ownership: OwnershipConfig,
    /// The `[masking.profiles]` names routes may apply.
    pub(crate) masking: masking::ProfileNames,
    /// Whether there is an `[audit]` section (routes' `on_audit_full` needs one).
    pub(crate) audit: bool,
    /// Whether there is a `[fallback]` section (routes' cached fallback needs its key).
    pub(crate) fallback: bool,
    /// `[testing] fault_injection = true` (routes' `faults` need it).
    pub(crate) fault_injection: bool,
}

pub(crate) fn parse(
    cx: &mut Ctx<'_>,
    raw: Vec<(usize, raw::Route)>,
    (upstreams, broken_upstreams): (&[Option<UpstreamConfig>], &HashSet<String>),
    trust_domains: &HashSet<TrustDomain>,
    layers: &Layers,
) -> Vec<RouteConfig> {
    let upstream_index: HashMap<&str, usize> = upstreams
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, u)| (u.name.as_str(), i))
        .collect();
    let case_insensitive_by_upstream: Vec<bool> = upstreams
        .iter()
        .flatten()
        .map(|u| u.case_insensitive_paths)
        .collect();
    let mut upstream_names = HashSet::new();
    for (i, u) in upstreams.iter().enumerate() {
        if let Some(u) = u
            && !upstream_names.insert(u.name.as_str())
        {
            cx.err(
                format!("upstreams[{i}].name"),
                format!("upstream \"{}\" is defined twice", u.name),
            );
        }
    }

    let mut names = HashSet::new();
    // Path template → methods already taken, to find two routes claiming the same request.
    let mut by_path: BTreeMap<String, Vec<(Method, usize)>> = BTreeMap::new();
    let mut router = matchit::Router::new();
    // Template folded for matching without case → (route, template, upstream ignores case).
    let mut folded: HashMap<String, (usize, String, bool)> = HashMap::new();
    let mut out = Vec::new();
    for (i, r) in raw {
        let key = format!("routes[{i}]");
        let before = cx.errors.len();
        if r.name.is_empty() {
            cx.err(format!("{key}.name"), "must not be empty");
        } else if !names.insert(r.name.clone()) {
            cx.err(
                format!("{key}.name"),
                format!("route \"{}\" is defined twice", r.name),
            );
        }
        let mut methods = Vec::new();
        if r.methods.is_empty() {
            cx.err(
                format!("{key}.methods"),
                "list at least one method, like [\"GET\"]",
            );
        }
        for (m, s) in r.methods.iter().enumerate() {
            match Method::from_bytes(s.as_bytes()) {
                // TRACE echoes the request, credentials injected by the gateway included;
                // CONNECT turns the connection into a tunnel no policy applies to.
                Ok(Method::TRACE | Method::CONNECT) => cx.err(
                    format!("{key}.methods[{m}]"),
                    format!("{s} is never forwarded: TRACE would echo the injected credential back, CONNECT would open a tunnel past every check"),
                ),
                Ok(method) if s.bytes().all(|b| b.is_ascii_uppercase()) => methods.push(method),
                _ => cx.err(
                    format!("{key}.methods[{m}]"),
                    format!("\"{s}\" is not an HTTP method (write it in capitals)"),
                ),
            }
        }
        if !r.path.starts_with('/') {
            cx.err(format!("{key}.path"), "must start with '/'");
        } else if r.path.contains('?') || r.path.contains('#') {
            cx.err(
                format!("{key}.path"),
                "must not contain a query or fragment",
            );
        } else if let Some(taken) = by_path.get_mut(&r.path) {
            for m in &methods {
                if let Some((_, other)) = taken.iter().find(|(t, _)| t == m) {
                    cx.err(
                        format!("{key}.methods"),
                        format!("{m} {} is already routed by routes[{other}]", r.path),
                    );
                }
            }
            taken.extend(methods.iter().map(|m| (m.clone(), i)));
        } else if let Err(e) = router.insert(r.path.as_str(), ()) {
            cx.err(
                format!("{key}.path"),
                format!("\"{}\" cannot be routed: {e}", r.path),
            );
        } else {
            by_path.insert(
                r.path.clone(),
                methods.iter().map(|m| (m.clone(), i)).collect(),
            );
        }
        let upstream = match upstream_index.get(r.upstream.as_str()) {
            Some(&u) => Some(u),
            None if broken_upstreams.contains(&r.upstream) => None,
            None => {
                cx.err(
                    format!("{key}.upstream"),
                    format!("no upstream is named \"{}\"", r.upstream),
                );
                None
            }
        };
        let case_insensitive = upstream
            .and_then(|u| upstreams.iter().flatten().nth(u))
            .is_some_and(|u| u.case_insensitive_paths);
        if r.path.starts_with('/') {
            let entry = folded.entry(fold_template(&r.path)).or_insert((
                i,
                r.path.clone(),
                case_insensitive,
            ));
            if entry.1 != r.path && (entry.2 || case_insensitive) {
                cx.err(
                    format!("{key}.path"),
                    format!(
                        "\"{}\" and the path of routes[{}], \"{}\", differ only in case or parameter names, \
                         and one of them goes to an upstream with case_insensitive_paths: no request could be told apart",
                        r.path, entry.0, entry.1
                    ),
                );
            }
            entry.2 |= case_insensitive;
        }
        if r.allow.is_empty() {
            cx.err(
                format!("{key}.allow"),
                "is empty, so no caller could ever use this route",
            );
        }
        let auth = auth::route_auth(cx, &key, r.auth);
        let scopes = auth::route_scopes(cx, &key, r.scopes, &methods);
        let mut allow = Vec::new();
        for (a, s) in r.allow.iter().enumerate() {
            let Some(entry) =
                auth::allow_entry(cx, format!("{key}.allow[{a}]"), s, &layers.issuers)
            else {
                continue;
            };
            let needs = match &entry {
                AllowEntry::Spiffe(p) => {
                    auth::known_trust_domain(cx, format!("{key}.allow[{a}]"), p, trust_domains);
                    None
                }
                AllowEntry::ApiKey(_) => Some(AuthLayer::ApiKey),
                AllowEntry::Client(..) | AllowEntry::Subject(..) => Some(AuthLayer::Jwt),
            };
            if let Some(layer) = needs
                && !auth.uses(layer)
            {
                cx.err(
                    format!("{key}.allow[{a}]"),
                    format!("\"{s}\" can only match through the {layer} layer, which this route's auth does not list"),
                );
            }
            allow.push(entry);
        }
        for layer in [AuthLayer::ApiKey, AuthLayer::Jwt, AuthLayer::JwtSvid] {
            let configured = match layer {
                AuthLayer::ApiKey => layers.api_keys,
                AuthLayer::JwtSvid => layers.jwt_svid,
                _ => layers.jwt,
            };
            if auth.uses(layer) && !configured {
                cx.err(
                    format!("{key}.auth"),
                    match layer {
                        AuthLayer::ApiKey => "uses api_key, but there is no [api_keys] section",
                        AuthLayer::JwtSvid => "uses jwt_svid, but there is no [jwt_svid] section",
                        _ => "uses jwt, but there is no [[jwt_issuers]] or [token_endpoint]",
                    },
                );
            }
        }
        let (rate_limits, on_state_error) = crate::limits::route(
            cx,
            &key,
            (r.rate_limits, r.on_state_error),
            &layers.rate_limits,
        );
        let allow_body = r.allow_body.unwrap_or(false);
        if allow_body && !methods.iter().any(body_needs_opt_in) {
            cx.err(
                format!("{key}.allow_body"),
                "only concerns GET, HEAD, OPTIONS and DELETE, and this route lists none of them",
            );
        }
        if !scopes.is_empty() && !auth.uses(AuthLayer::ApiKey) && !auth.uses(AuthLayer::Jwt) {
            cx.err(
                format!("{key}.scopes"),
                "scopes come from API keys and tokens: add \"api_key\" or \"jwt\" to this route's auth",
            );
        }
        let network = RouteNetwork {
            cidrs: crate::CidrRules {
                allow: crate::network::cidr_list(cx, &format!("{key}.allow_cidrs"), &r.allow_cidrs),
                deny: crate::network::cidr_list(cx, &format!("{key}.deny_cidrs"), &r.deny_cidrs),
            },
            deny_user_agents: crate::network::user_agents(
                cx,
                &format!("{key}.deny_user_agents"),
                &r.deny_user_agents,
            ),
        };
        if r.max_body_bytes == Some(0) {
            cx.err(format!("{key}.max_body_bytes"), "must be more than zero");
        }
        let max_body_bytes = r.max_body_bytes.or_else(|| {
            upstream
                .and_then(|u| upstreams.iter().flatten().nth(u))
                .map(|u| u.max_body_bytes)
        });
        let ownership = ownership::route(
            cx,
            &key,
            RawRouteOwnership {
                owns: r.owns.as_deref(),
                owner_param: r.owner_param.as_deref(),
                list: r.list.as_deref(),
                list_items: r.list_items.as_deref(),
                list_id: r.list_id.as_deref(),
                retention: r.ownership_retention.as_deref(),
                namespace: r.ownership_namespace.as_deref(),
            },
            (&r.path, upstream.map(|_| r.upstream.as_str())),
            &layers.ownership,
        );
        let schema = r
            .schema
            .as_deref()
            .and_then(|file| schema::route_schema(cx, &format!("{key}.schema"), file));
        let masking = masking::route(
            cx,
            &key,
            r.masking,
            &layers.masking,
            (&layers.issuers, trust_domains),
        );
        let audit = crate::audit::route(
            cx,
            &key,
            (r.on_audit_full, r.personal_path_params),
            &r.path,
            layers.audit,
        );
        let resilience = crate::resilience::route(
            cx,
            &key,
            (r.fallback, r.failover, r.faults),
            (&methods, upstream),
            &crate::resilience::Known {
                upstreams: &upstream_index,
                case_insensitive: &case_insensitive_by_upstream,
                broken_upstreams,
                fallback: layers.fallback,
                fault_injection: layers.fault_injection,
            },
        );
        if let Some(upstream) = upstream
            && let Some(max_body_bytes) = max_body_bytes
            && cx.errors.len() == before
        {
            out.push(RouteConfig {
                name: r.name,
                methods,
                path: r.path,
                upstream,
                case_insensitive,
                allow,
                auth,
                scopes,
                allow_body,
                network,
                max_body_bytes,
                rate_limits,
                ownership,
                schema,
                on_state_error,
                masking,
                audit,
                resilience,
            });
        }
    }
    out
}
