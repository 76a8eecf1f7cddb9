//! The route table: path templates matched by `matchit`, then the method within the path.
//! Built once per configuration snapshot. Matching allocates nothing, except a lower-case
//! copy of a path with capitals when some upstream matches paths without case.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use http::Method;
use http::header::HeaderValue;
use idgate_auth::{AllowEntry, RouteAuth, ScopeRule};
use idgate_config::{RouteConfig, WebhookConfig, fold_template};

use crate::guards::Guards;
use crate::path;

/// What answers a route's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The snapshot's upstream at this index, after authentication and authorization.
    Upstream(usize),
    /// The built-in OAuth2 token endpoint and its discovery documents, which authenticate
    /// their clients themselves.
    TokenEndpoint,
    /// The snapshot's provider webhook at this index, which checks the provider's signature
    /// itself.
    Webhook(usize),
}

/// One route, ready for the pipeline.
#[derive(Debug)]
pub struct Route {
    /// Shared with metrics labels and logs.
    pub name: Arc<str>,
    pub target: Target,
    /// Literal segments are matched without case (the upstream's `case_insensitive_paths`).
    pub case_insensitive: bool,
    pub allow: Vec<AllowEntry>,
    pub auth: RouteAuth,
    pub scopes: ScopeRule,
    /// The checks the route runs on the request and the response, compiled from its
    /// configuration.
    pub guards: Guards,
    /// Address and user-agent rules of the route; `None` when it has none.
    pub network: Option<Box<idgate_config::RouteNetwork>>,
    /// The largest request body the route takes.
    pub max_body_bytes: u64,
    /// The names of the template's parameters, in order.
    params: Box<[Box<str>]>,
    /// The path template, as configured (empty for a built-in target).
    pub template: Arc<str>,
    /// What the route does when the audit queue is full, and whether its path parameters are
    /// personal (the audit trail then records the template).
    pub audit: idgate_config::RouteAudit,
    /// Its fallback, failover and faults; `None` when it has none.
    pub resilience: Option<Box<idgate_config::RouteResilience>>,
    /// Its handles on the request metrics, kept from its first request.
    pub metrics: crate::metrics::Kept,
}

/// A webhook's route, `webhook:NAME`: no caller authentication (the provider's signature is
/// the endpoint's to check), the webhook's source networks, its body limit.
fn webhook_route(i: usize, w: &WebhookConfig) -> Route {
    Route {
        name: format!("webhook:{}", w.name).into(),
        target: Target::Webhook(i),
        case_insensitive: false,
        allow: Vec::new(),
        auth: RouteAuth::default(),
        scopes: ScopeRule::default(),
        guards: Guards::default(),
        network: (!w.source_cidrs.is_empty()).then(|| {
            Box::new(idgate_config::RouteNetwork {
                cidrs: idgate_config::CidrRules {
                    allow: w.source_cidrs.clone(),
                    deny: Vec::new(),
                },
                deny_user_agents: Vec::new(),
            })
        }),
        max_body_bytes: w.max_body_bytes,
        params: Box::default(),
        template: w.path.as_str().into(),
        audit: idgate_config::RouteAudit::default(),
        resilience: None,
        metrics: Default::default(),
    }
}

/// The parameter names of a path template (`{id}`, `{*rest}`; `{{` and `}}` are literal).
fn template_params(template: &str) -> Box<[Box<str>]> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        rest = &rest[open + 1..];
        if let Some(literal) = rest.strip_prefix('{') {
            rest = literal;
            continue;
        }
        let end = rest.find('}').unwrap_or(rest.len());
        names.push(rest[..end].trim_start_matches('*').into());
        rest = rest.get(end + 1..).unwrap_or("");
    }
    names.into_boxed_slice()
}

#[derive(Debug)]
struct PathEntry {
    by_method: Vec<(Method, usize)>,
    /// The `Allow` header for a 405 on this path.
    allow_header: HeaderValue,
    /// In the folded table, when some of the entry's routes go to an upstream that ignores
    /// case: the `Allow` header of those routes alone, for the path under another case.
    case_insensitive_allow: Option<HeaderValue>,
    /// The template of a route on this path whose parameters are personal, if one is: what
    /// the audit trail records of a request on the path that has no route (a 405, a refusal
    /// before routing).
    personal: Option<Arc<str>>,
}

impl PathEntry {
    fn route(&self, method: &Method) -> Option<usize> {
        self.by_method
            .iter()
            .find(|(m, _)| m == method)
            .map(|&(_, r)| r)
    }
}

/// What a route's path template captured (`{id}`, `{*rest}`), as spans of the canonical
/// path the route was matched on. Up to [`INLINE_PARAMS`] are held without allocating.
#[derive(Debug, Default, Clone)]
pub struct PathParams<'r> {
    inline: [(&'r str, usize, usize); INLINE_PARAMS],
    len: usize,
    more: Vec<(&'r str, usize, usize)>,
}

const INLINE_PARAMS: usize = 4;

impl<'r> PathParams<'r> {
    /// The spans of `captured` (slices of `path`) within `path`.
    fn of<'p>(path: &'p str, captured: impl Iterator<Item = (&'r str, &'p str)>) -> Self {
        let mut params = Self::default();
        for (name, value) in captured {
            let start = (value.as_ptr() as usize).saturating_sub(path.as_ptr() as usize);
            let span = (name, start, start + value.len());
            match params.inline.get_mut(params.len) {
                Some(slot) => *slot = span,
                None => params.more.push(span),
            }
            params.len += 1;
        }
        params
    }

    /// The same spans under the route's own parameter names (a template folded to lower
    /// case names its parameters by position).
    fn named(mut self, names: &'r [Box<str>]) -> Self {
        let spans = self.inline[..self.len.min(INLINE_PARAMS)]
            .iter_mut()
            .chain(&mut self.more);
        for ((name, _, _), own) in spans.zip(names) {
            *name = own;
        }
        self
    }

    /// The value of parameter `name` in `path`, the canonical path the route matched.
    pub fn get<'p>(&self, name: &str, path: &'p str) -> Option<&'p str> {
        self.iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, span)| path.get(span))
    }

    /// Each parameter's name and span.
    pub fn iter(&self) -> impl Iterator<Item = (&'r str, std::ops::Range<usize>)> + '_ {
        self.inline[..self.len.min(INLINE_PARAMS)]
            .iter()
            .chain(&self.more)
            .map(|&(n, start, end)| (n, start..end))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A route found for a request, with what its template captured.
#[derive(Debug)]
pub struct Matched<'r> {
    pub route: &'r Route,
    pub params: PathParams<'r>,
}

/// Why no route was found.
#[derive(Debug)]
pub enum RouteMiss<'a> {
    NoPath,
    WrongMethod(&'a HeaderValue),
}

/// What the audit trail may keep of the path of a request that has no route: one refused
/// before routing (on arrival, or 404 / 405 by routing itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnroutedPath<'r> {
    /// The path itself: no route whose parameters are personal could be meant by it.
    AsSent,
    /// The template of the route with personal parameters that the path matches, whatever
    /// the method.
    Template(&'r str),
    /// Nothing: no template matches the path, but it begins as a personal route's template
    /// does up to its first parameter, so it may well carry what that parameter holds.
    Withheld,
}

/// Why the route table cannot be built from routes the configuration accepted.
#[derive(Debug, thiserror::Error)]
pub enum RouteTableError {
    #[error(
        "\"{path}\" is not in the canonical form requests are routed on, so it would never match: write \"{canonical}\""
    )]
    NotCanonical {
        route: usize,
        path: String,
        canonical: String,
    },
    #[error("\"{path}\" could never match: requests with such a path are refused ({refusal})")]
    NeverMatches {
        route: usize,
        path: String,
        refusal: &'static str,
    },
    #[error("route {name}: {source}")]
    Unroutable {
        route: usize,
        name: String,
        source: matchit::InsertError,
    },
    #[error("\"{path}\" cannot be matched without case (case_insensitive_paths): {source}")]
    CaseClash {
        route: usize,
        path: String,
        source: matchit::InsertError,
    },
    #[error("the methods {0} do not make an Allow header")]
    AllowHeader(String),
    #[error(
        "\"{path}\" is not in the canonical form requests are routed on, so it would never match: write \"{canonical}\""
    )]
    WebhookPath {
        webhook: usize,
        path: String,
        canonical: String,
    },
    #[error("\"{path}\" could never match: requests with such a path are refused ({refusal})")]
    WebhookNeverMatches {
        webhook: usize,
        path: String,
        refusal: &'static str,
    },
}

impl RouteTableError {
    /// The key path of the setting at fault: `routes[2].path`.
    pub fn key(&self) -> String {
        match self {
            Self::NotCanonical { route, .. }
            | Self::NeverMatches { route, .. }
            | Self::Unroutable { route, .. }
            | Self::CaseClash { route, .. } => format!("routes[{route}].path"),
            Self::AllowHeader(_) => "routes".to_owned(),
            Self::WebhookPath { webhook, .. } | Self::WebhookNeverMatches { webhook, .. } => {
                format!("webhooks[{webhook}].path")
            }
        }
    }
}

/// Path templates in a `matchit` router, each with the routes of its methods.
#[derive(Debug, Default)]
struct Paths {
    router: matchit::Router<usize>,
    entries: Vec<PathEntry>,
    index: HashMap<String, usize>,
}

impl Paths {
    fn add(
        &mut self,
        template: String,
        methods: &[Method],
        route: usize,
    ) -> Result<(), matchit::InsertError> {
        let p = match self.index.get(&template) {
            Some(&p) => p,
            None => {
                let p = self.entries.len();
                self.router.insert(template.as_str(), p)?;
                self.index.insert(template, p);
                self.entries.push(PathEntry {
                    by_method: Vec::new(),
                    allow_header: HeaderValue::from_static(""),
                    case_insensitive_allow: None,
                    personal: None,
                });
                p
            }
        };
        self.entries[p]
            .by_method
            .extend(methods.iter().map(|m| (m.clone(), route)));
        Ok(())
    }

    /// Builds the `Allow` headers and notes each path's personal template; `folded` for the
    /// folded table, whose entries also get the `Allow` header of their case-insensitive
    /// routes.
    fn finish(&mut self, routes: &[Route], folded: bool) -> Result<(), RouteTableError> {
        for entry in &mut self.entries {
            entry.allow_header = allow_header(entry.by_method.iter().map(|(m, _)| m))?;
            entry.personal = entry
                .by_method
                .iter()
                .map(|&(_, r)| &routes[r])
                .find(|r| r.audit.personal_path_params)
                .map(|r| r.template.clone());
            if folded {
                let mut ci = entry
                    .by_method
                    .iter()
                    .filter(|&&(_, r)| routes[r].case_insensitive)
                    .map(|(m, _)| m)
                    .peekable();
                if ci.peek().is_some() {
                    entry.case_insensitive_allow = Some(allow_header(ci)?);
                }
            }
        }
        Ok(())
    }

    fn at<'p>(&self, path: &'p str) -> Option<(&PathEntry, matchit::Params<'_, 'p>)> {
        self.router
            .at(path)
            .ok()
            .map(|m| (&self.entries[*m.value], m.params))
    }
}

/// The `Allow` header listing `methods`.
fn allow_header<'m>(
    methods: impl Iterator<Item = &'m Method>,
) -> Result<HeaderValue, RouteTableError> {
    let list = methods.map(Method::as_str).collect::<Vec<_>>().join(", ");
    HeaderValue::from_str(&list).map_err(|_| RouteTableError::AllowHeader(list))
}

#[derive(Debug)]
pub struct RouteTable {
    exact: Paths,
    /// Every template folded to lower case, when some route's upstream ignores case: looked
    /// up with the path in lower case, it finds what that upstream would take the path for.
    folded: Option<Paths>,
    routes: Vec<Route>,
    /// The built-in token endpoint, when configured: matched before any configured route.
    token_endpoint: Option<Route>,
    /// The webhooks' routes, by their exact paths: matched before any configured route.
    webhooks: HashMap<String, Route>,
    /// The templates of the routes whose parameters are personal, each up to its first
    /// parameter (`/v3/session/`); empty when there are none.
    personal_prefixes: Box<[Box<str>]>,
}

impl RouteTable {
    /// Builds the table from validated routes (the configuration already refused conflicts,
    /// and routes on the token endpoint's paths). A template must be in the canonical form
    /// requests are routed on.
    pub fn new(
        configs: &[RouteConfig],
        token_endpoint: bool,
        webhooks: &[WebhookConfig],
    ) -> Result<Self, RouteTableError> {
        let mut exact = Paths::default();
        let mut folded = configs
            .iter()
            .any(|rc| rc.case_insensitive)
            .then(Paths::default);
        let mut routes = Vec::with_capacity(configs.len());
        for (i, rc) in configs.iter().enumerate() {
            match path::canonical_template(&rc.path) {
                Ok(Cow::Borrowed(_)) => {}
                Ok(Cow::Owned(canonical)) => {
                    return Err(RouteTableError::NotCanonical {
                        route: i,
                        path: rc.path.clone(),
                        canonical,
                    });
                }
                Err(e) => {
                    return Err(RouteTableError::NeverMatches {
                        route: i,
                        path: rc.path.clone(),
                        refusal: crate::problem::Refusal::from(e).slug(),
                    });
                }
            }
            exact
                .add(rc.path.clone(), &rc.methods, i)
                .map_err(|source| RouteTableError::Unroutable {
                    route: i,
                    name: rc.name.clone(),
                    source,
                })?;
            if let Some(folded) = &mut folded {
                folded
                    .add(fold_template(&rc.path), &rc.methods, i)
                    .map_err(|source| RouteTableError::CaseClash {
                        route: i,
                        path: rc.path.clone(),
                        source,
                    })?;
            }
            routes.push(Route {
                name: rc.name.as_str().into(),
                target: Target::Upstream(rc.upstream),
                case_insensitive: rc.case_insensitive,
                allow: rc.allow.clone(),
                auth: rc.auth.clone(),
                scopes: rc.scopes.clone(),
                guards: Guards::compile(rc),
                network: (!rc.network.cidrs.is_empty() || !rc.network.deny_user_agents.is_empty())
                    .then(|| Box::new(rc.network.clone())),
                max_body_bytes: rc.max_body_bytes,
                params: template_params(&rc.path),
                template: rc.path.as_str().into(),
                audit: rc.audit,
                resilience: (!rc.resilience.is_empty()).then(|| Box::new(rc.resilience.clone())),
                metrics: Default::default(),
            });
        }
        exact.finish(&routes, false)?;
        if let Some(folded) = &mut folded {
            folded.finish(&routes, true)?;
        }
        let personal_prefixes = routes
            .iter()
            .filter(|r| r.audit.personal_path_params)
            .map(|r| r.template.split('{').next().unwrap_or_default().into())
            .collect();
        let mut webhook_routes = HashMap::with_capacity(webhooks.len());
        for (i, w) in webhooks.iter().enumerate() {
            match path::canonical_template(&w.path) {
                Ok(Cow::Borrowed(_)) => {}
                Ok(Cow::Owned(canonical)) => {
                    return Err(RouteTableError::WebhookPath {
                        webhook: i,
                        path: w.path.clone(),
                        canonical,
                    });
                }
                Err(e) => {
                    return Err(RouteTableError::WebhookNeverMatches {
                        webhook: i,
                        path: w.path.clone(),
                        refusal: crate::problem::Refusal::from(e).slug(),
                    });
                }
            }
            webhook_routes.insert(w.path.clone(), webhook_route(i, w));
        }
        Ok(Self {
            exact,
            folded,
            routes,
            token_endpoint: token_endpoint.then(|| Route {
                name: "oauth2".into(),
                target: Target::TokenEndpoint,
                case_insensitive: false,
                allow: Vec::new(),
                auth: RouteAuth::default(),
                scopes: ScopeRule::default(),
                guards: Guards::default(),
                network: None,
                max_body_bytes: u64::MAX,
                params: Box::default(),
                template: "".into(),
                audit: idgate_config::RouteAudit::default(),
                resilience: None,
                metrics: Default::default(),
            }),
            webhooks: webhook_routes,
            personal_prefixes,
        })
    }

    /// The built-in target serving `path`, whatever the method (it answers a wrong one).
    pub fn built_in(&self, path: &str) -> Option<&Route> {
        if !self.webhooks.is_empty()
            && let Some(route) = self.webhooks.get(path)
        {
            return Some(route);
        }
        self.token_endpoint
            .as_ref()
            .filter(|_| crate::token_endpoint::TokenEndpoint::handles(path))
    }

    /// What the audit trail may record of `path` (canonical) for a request without a route.
    /// Costs nothing when no route's parameters are personal; else a lookup whatever the
    /// method (with a lower-case copy of a path with capitals when some upstream ignores
    /// case), and on a miss a comparison with each personal template's start.
    pub fn unrouted_path(&self, path: &str) -> UnroutedPath<'_> {
        if self.personal_prefixes.is_empty() {
            return UnroutedPath::AsSent;
        }
        let exact = self.exact.at(path).map(|(entry, _)| entry);
        // A folded template decides a request only when a route on it ignores case (see
        // `find`).
        let folded = self.folded.as_ref().and_then(|f| {
            f.at(&lower_case(path))
                .map(|(entry, _)| entry)
                .filter(|entry| entry.case_insensitive_allow.is_some())
        });
        let mut matched = exact.into_iter().chain(folded).peekable();
        if matched.peek().is_none() {
            // Matched by no template: a near miss of a personal one (a missing trailing
            // slash, one segment too many) still holds its parameter.
            let near = self.personal_prefixes.iter().any(|prefix| {
                path.as_bytes()
                    .get(..prefix.len())
                    .is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
            });
            return if near {
                UnroutedPath::Withheld
            } else {
                UnroutedPath::AsSent
            };
        }
        match matched.find_map(|entry| entry.personal.as_deref()) {
            Some(template) => UnroutedPath::Template(template),
            None => UnroutedPath::AsSent,
        }
    }

    /// The route for a request; `path` is canonical (see [`crate::path`]).
    pub fn find(&self, method: &Method, path: &str) -> Result<Matched<'_>, RouteMiss<'_>> {
        // A route whose upstream ignores case takes what that upstream would take for its
        // path: the path in lower case against the templates in lower case. Any other route
        // must match as written.
        let folded = self.folded.as_ref().and_then(|f| {
            let lower = lower_case(path);
            // Folding keeps every byte where it is: the spans hold for the path as sent.
            f.at(&lower)
                .map(|(entry, params)| (entry, PathParams::of(&lower, params.iter())))
        });
        if let Some((entry, params)) = folded
            && let Some(case_insensitive_allow) = &entry.case_insensitive_allow
        {
            // The path, read without case, is this template's, and an upstream that reads
            // paths so has routes on it (the configuration refuses another template folding
            // to the same one): the request is decided here. A method the template does not
            // take is a 405 in every case, never a `{param}` sibling's request, since that
            // sibling's upstream would read the literal path.
            let route = entry.route(method);
            if let Some(r) = route
                && self.routes[r].case_insensitive
            {
                let route = &self.routes[r];
                return Ok(Matched {
                    route,
                    params: params.named(&route.params),
                });
            }
            let as_written = self
                .exact
                .at(path)
                .filter(|(exact, _)| exact.by_method.iter().any(|m| entry.by_method.contains(m)));
            return match (route, as_written) {
                // A route of a case-sensitive upstream on the same template matches only as
                // written.
                (Some(r), Some((exact, params))) if exact.route(method) == Some(r) => Ok(Matched {
                    route: &self.routes[r],
                    params: PathParams::of(path, params.iter()),
                }),
                (_, Some(_)) => Err(RouteMiss::WrongMethod(&entry.allow_header)),
                (_, None) => Err(RouteMiss::WrongMethod(case_insensitive_allow)),
            };
        }
        match self.exact.at(path) {
            Some((entry, params)) => match entry.route(method) {
                Some(r) => Ok(Matched {
                    route: &self.routes[r],
                    params: PathParams::of(path, params.iter()),
                }),
                None => Err(RouteMiss::WrongMethod(&entry.allow_header)),
            },
            None => Err(RouteMiss::NoPath),
        }
    }
}

/// `path` in ASCII lower case, copied only when it has a capital: what the folded table
/// of case-insensitive routes is matched against.
fn lower_case(path: &str) -> Cow<'_, str> {
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(path.to_ascii_lowercase())
    } else {
        Cow::Borrowed(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &str, &str, bool)]) -> Result<RouteTable, RouteTableError> {
        table_with(routes, &[])
    }

    /// [`table`], the routes named in `personal` with personal path parameters.
    fn table_with(
        routes: &[(&str, &str, &str, bool)],
        personal: &[&str],
    ) -> Result<RouteTable, RouteTableError> {
        let configs: Vec<RouteConfig> = routes
            .iter()
            .map(|&(name, method, path, case_insensitive)| RouteConfig {
                name: name.to_owned(),
                methods: vec![method.parse().unwrap()],
                path: path.to_owned(),
                upstream: 0,
                case_insensitive,
                allow: Vec::new(),
                auth: RouteAuth::default(),
                scopes: ScopeRule::default(),
                allow_body: false,
                network: Default::default(),
                max_body_bytes: 1 << 20,
                rate_limits: Vec::new(),
                ownership: None,
                schema: None,
                on_state_error: None,
                masking: None,
                audit: idgate_config::RouteAudit {
                    personal_path_params: personal.contains(&name),
                    ..Default::default()
                },
                resilience: Default::default(),
            })
            .collect();
        RouteTable::new(&configs, false, &[])
    }

    fn found(t: &RouteTable, method: &str, path: &str) -> String {
        match t.find(&method.parse().unwrap(), path) {
            Ok(m) => m.route.name.to_string(),
            Err(RouteMiss::NoPath) => "404".to_owned(),
            Err(RouteMiss::WrongMethod(allow)) => format!("405 {}", allow.to_str().unwrap()),
        }
    }

    #[test]
    fn literal_segments_match_without_case_for_upstreams_that_ignore_it() {
        let t = table(&[
            ("read", "GET", "/api/users/{id}", true),
            ("export", "GET", "/api/users/export", true),
        ])
        .unwrap();
        for p in [
            "/api/users/export",
            "/api/users/EXPORT",
            "/API/Users/Export",
        ] {
            assert_eq!(found(&t, "GET", p), "export", "{p}");
        }
        assert_eq!(found(&t, "GET", "/api/users/Alice"), "read");
        assert_eq!(found(&t, "POST", "/api/USERS/export"), "405 GET");
    }

    #[test]
    fn routes_of_case_sensitive_upstreams_match_only_as_written() {
        let sensitive = table(&[
            ("read", "GET", "/api/users/{id}", false),
            ("export", "GET", "/api/users/export", false),
        ])
        .unwrap();
        assert_eq!(found(&sensitive, "GET", "/api/users/EXPORT"), "read");
        assert_eq!(found(&sensitive, "GET", "/API/users/1"), "404");

        // Mixed: the literal's upstream is case-sensitive, the parameter's is not.
        let mixed = table(&[
            ("read", "GET", "/api/users/{id}", true),
            ("export", "GET", "/api/users/export", false),
            ("other", "GET", "/other/Thing", false),
        ])
        .unwrap();
        assert_eq!(found(&mixed, "GET", "/api/users/export"), "export");
        assert_eq!(found(&mixed, "GET", "/api/users/EXPORT"), "read");
        assert_eq!(found(&mixed, "GET", "/API/USERS/1"), "read");
        assert_eq!(found(&mixed, "GET", "/other/Thing"), "other");
        assert_eq!(found(&mixed, "GET", "/other/thing"), "404");
    }

    #[test]
    fn a_method_the_literal_route_lacks_is_405_in_every_case_on_an_upstream_that_ignores_case() {
        let t = table(&[
            ("applicant-read", "GET", "/v1/applicants/{id}", true),
            ("applicant-export", "POST", "/v1/applicants/export", true),
        ])
        .unwrap();
        for p in [
            "/v1/applicants/export",
            "/v1/applicants/EXPORT",
            "/v1/applicants/Export",
            "/V1/APPLICANTS/eXPORT",
        ] {
            assert_eq!(found(&t, "GET", p), "405 POST", "{p}");
            assert_eq!(found(&t, "POST", p), "applicant-export", "{p}");
        }
        assert_eq!(found(&t, "GET", "/v1/applicants/Alice"), "applicant-read");
        assert_eq!(found(&t, "GET", "/V1/applicants/Alice"), "applicant-read");

        // One template with routes to upstreams of both kinds: the case-sensitive route
        // matches only as written, the other methods in every case.
        let mixed = table(&[
            ("read", "GET", "/x/{id}", true),
            ("export", "POST", "/x/export", true),
            ("export-get", "GET", "/x/export", false),
        ])
        .unwrap();
        assert_eq!(found(&mixed, "GET", "/x/export"), "export-get");
        assert_eq!(found(&mixed, "GET", "/x/EXPORT"), "405 POST");
        assert_eq!(found(&mixed, "POST", "/x/EXPORT"), "export");
        assert_eq!(found(&mixed, "PUT", "/x/export"), "405 POST, GET");
        assert_eq!(found(&mixed, "PUT", "/X/export"), "405 POST");
        assert_eq!(found(&mixed, "GET", "/x/Alice"), "read");
    }

    #[test]
    fn templates_not_in_canonical_form_are_refused() {
        let e = table(&[("x", "GET", "/api/%65xport", false)]).unwrap_err();
        let e = format!("{}: {e}", e.key());
        assert!(
            e.contains("routes[0].path") && e.contains("/api/export"),
            "{e}"
        );
        let e = table(&[("x", "GET", "/api/../{id}", false)]).unwrap_err();
        let e = format!("{}: {e}", e.key());
        assert!(
            e.contains("routes[0].path") && e.contains("never match"),
            "{e}"
        );
    }

    #[test]
    fn path_parameters_are_spans_of_the_path_as_sent() {
        let t = table(&[
            ("read", "GET", "/api/users/{id}/docs/{*rest}", true),
            ("many", "GET", "/{a}/{b}/{c}/{d}/{e}/{f}", false),
        ])
        .unwrap();
        let path = "/API/users/Alice/docs/a/B";
        let m = t.find(&Method::GET, path).unwrap();
        assert_eq!(m.params.get("id", path), Some("Alice"));
        assert_eq!(m.params.get("rest", path), Some("a/B"));
        assert_eq!(m.params.get("nope", path), None);
        let path = "/1/2/3/4/5/6";
        let m = t.find(&Method::GET, path).unwrap();
        assert_eq!(m.params.len(), 6);
        let values: Vec<&str> = m.params.iter().map(|(_, s)| &path[s]).collect();
        assert_eq!(values, ["1", "2", "3", "4", "5", "6"]);
        assert_eq!(m.params.get("f", path), Some("6"));
    }

    #[test]
    fn a_path_without_a_route_is_kept_from_the_trail_where_a_personal_route_could_be_meant() {
        let decision = "/v3/session/{session_id}/decision/";
        let t = table_with(
            &[
                ("decision", "GET", decision, false),
                ("sessions", "POST", "/v3/session/", false),
                ("status", "GET", "/status/{id}", false),
                ("applicant", "GET", "/v1/applicants/{id}", true),
            ],
            &["decision", "applicant"],
        )
        .unwrap();
        let path = |p| t.unrouted_path(p);
        // A template of a personal route, whatever the method that missed it.
        assert_eq!(
            path("/v3/session/s-1/decision/"),
            UnroutedPath::Template(decision)
        );
        assert_eq!(
            path("/V1/Applicants/Alice"),
            UnroutedPath::Template("/v1/applicants/{id}")
        );
        // Near misses of a personal template.
        for p in [
            "/v3/session/s-1/decision",
            "/v3/session/s-1/decision/more",
            "/V3/SESSION/s-1/",
            "/v1/applicants/Alice/x",
        ] {
            assert_eq!(path(p), UnroutedPath::Withheld, "{p}");
        }
        // Templates of other routes, and paths no personal route begins like.
        for p in ["/v3/session/", "/status/1", "/nowhere", "/v3/sessions"] {
            assert_eq!(path(p), UnroutedPath::AsSent, "{p}");
        }
        // Without a personal route, nothing is looked up.
        let plain = table(&[("decision", "GET", decision, false)]).unwrap();
        assert_eq!(
            plain.unrouted_path("/v3/session/s-1/decision"),
            UnroutedPath::AsSent
        );
    }
}
