//! A route's guards: the checks its configuration asks for on the request before it goes
//! upstream, and on the upstream's response before it goes back.
//!
//! Guards are compiled once per route, when the snapshot is built, into a list of plain
//! enum values, so a request pays for the guards its route has and nothing else: a route
//! with none iterates two empty slices. Dispatch is a `match`, never a trait object, so
//! the compiler sees every guard's code at the call site.
//!
//! This module holds what a route is compiled into; what each guard does is in
//! `checks/`, which may read the whole request context (the route table below it may not).

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use idgate_config::RouteMasking;
use idgate_config::{
    JsonPath, ListOwnership, OnStateError, OwnershipNamespace, RouteConfig, ShareGroup,
};

/// The guards of one route, in the order they run.
#[derive(Debug, Default)]
pub struct Guards {
    request: Box<[RequestGuard]>,
    response: Box<[ResponseGuard]>,
}

/// A check on the request, after authorization and before anything goes upstream.
#[derive(Debug, Clone)]
pub enum RequestGuard {
    /// A `GET`, `HEAD`, `OPTIONS` or `DELETE` request carries no body: an upstream that
    /// ignores the body of a GET would read it as the next request on its connection.
    /// Compiled for a route that serves one of those methods without `allow_body`.
    NoBody,
    /// The route's rate limits (`rate_limits`), each decided; first, so that a refused
    /// request costs nothing more.
    RateLimit,
    /// The object the path parameter names must be the caller's (or its group's); any
    /// other, and an unknown one, is `404`. Compiled for `owner_param`.
    OwnedObject {
        param: Arc<str>,
        policy: Arc<OwnershipPolicy>,
    },
    /// The upstream is asked for an uncompressed answer (the caller's `Accept-Encoding`
    /// is dropped), because the gateway reads it. Compiled for `owns` and `list`.
    IdentityEncoding,
    /// The body must be JSON satisfying the route's schema. Compiled for `schema`.
    Schema(Arc<jsonschema::Validator>),
    /// The upstream is asked for the whole answer (the caller's `Range` and `If-Range` are
    /// dropped), because a part of one cannot be masked, and unconditionally (the
    /// conditional headers are dropped), because a `304` or `412` would confirm a guess of
    /// what was masked. Compiled for `masking`.
    WholeAnswer,
}

/// What a route's ownership guards share: which namespace its records are in, how long
/// they live, who shares them, and what happens when the state backend fails.
#[derive(Debug)]
pub struct OwnershipPolicy {
    /// The id space of the route's objects: every record it writes or reads is keyed by
    /// this namespace and the object's id, never by the id alone.
    pub namespace: OwnershipNamespace,
    pub retention: Duration,
    pub share: Arc<[ShareGroup]>,
    /// `on_state_error = "fail_open"`: a failing backend skips the check.
    pub fail_open: bool,
}

/// A check or rewrite on the upstream's response, before it goes back to the caller.
#[derive(Debug, Clone)]
pub enum ResponseGuard {
    /// A 2xx answer created the object its JSON names at `id`: the caller becomes its
    /// owner. Compiled for `owns`.
    RecordOwner {
        id: Arc<JsonPath>,
        policy: Arc<OwnershipPolicy>,
    },
    /// A 2xx answer to a `DELETE` of the object the path parameter names (found the
    /// caller's by `OwnedObject`): its record goes. Compiled for `owner_param` on a route
    /// serving `DELETE`.
    ForgetOwned,
    /// A 2xx list answer is kept to the caller's objects. Compiled for `list`.
    OwnList {
        list: Arc<ListOwnership>,
        policy: Arc<OwnershipPolicy>,
    },
    /// The answer is masked with the caller's profile. Compiled for `masking`; last, so
    /// the guards before it read what the upstream sent.
    Mask(Arc<RouteMasking>),
}

impl Guards {
    /// The guards a route's configuration asks for.
    pub fn compile(rc: &RouteConfig) -> Self {
        let mut request = Vec::new();
        if !rc.rate_limits.is_empty() {
            request.push(RequestGuard::RateLimit);
        }
        if !rc.allow_body && rc.methods.iter().any(idgate_config::body_needs_opt_in) {
            request.push(RequestGuard::NoBody);
        }
        let mut response = Vec::new();
        if let Some(own) = &rc.ownership {
            let policy = Arc::new(OwnershipPolicy {
                namespace: own.namespace.clone(),
                retention: own.retention,
                share: own.share.clone(),
                fail_open: rc.on_state_error == Some(OnStateError::FailOpen),
            });
            if let Some(param) = &own.owner_param {
                request.push(RequestGuard::OwnedObject {
                    param: param.as_str().into(),
                    policy: policy.clone(),
                });
                if rc.methods.contains(&Method::DELETE) {
                    response.push(ResponseGuard::ForgetOwned);
                }
            }
            if own.owns.is_some() || own.list.is_some() {
                request.push(RequestGuard::IdentityEncoding);
            }
            if let Some(id) = &own.owns {
                response.push(ResponseGuard::RecordOwner {
                    id: Arc::new(id.clone()),
                    policy: policy.clone(),
                });
            }
            if let Some(list) = &own.list {
                response.push(ResponseGuard::OwnList {
                    list: Arc::new(list.clone()),
                    policy,
                });
            }
        }
        if let Some(schema) = &rc.schema {
            request.push(RequestGuard::Schema(schema.validator.clone()));
        }
        if let Some(masking) = rc.masking.as_ref().filter(|m| m.masks()) {
            if !request
                .iter()
                .any(|g| matches!(g, RequestGuard::IdentityEncoding))
            {
                request.push(RequestGuard::IdentityEncoding);
            }
            request.push(RequestGuard::WholeAnswer);
            response.push(ResponseGuard::Mask(Arc::new(masking.clone())));
        }
        Self {
            request: request.into_boxed_slice(),
            response: response.into_boxed_slice(),
        }
    }

    /// The request guards, in the order they run.
    pub fn on_request(&self) -> &[RequestGuard] {
        &self.request
    }

    /// The response guards, in the order they run.
    pub fn on_response(&self) -> &[ResponseGuard] {
        &self.response
    }

    /// Whether the route has no guard at all.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idgate_auth::{RouteAuth, ScopeRule};

    fn route(methods: &[Method], allow_body: bool) -> RouteConfig {
        RouteConfig {
            name: "r".to_owned(),
            methods: methods.to_vec(),
            path: "/v1/x".to_owned(),
            upstream: 0,
            case_insensitive: false,
            allow: Vec::new(),
            auth: RouteAuth::default(),
            scopes: ScopeRule::default(),
            allow_body,
            network: Default::default(),
            max_body_bytes: 1 << 20,
            rate_limits: Vec::new(),
            ownership: None,
            schema: None,
            on_state_error: None,
            masking: None,
            audit: Default::default(),
            resilience: Default::default(),
        }
    }

    #[test]
    fn a_route_of_post_alone_compiles_to_no_guard() {
        assert!(Guards::compile(&route(&[Method::POST, Method::PUT], false)).is_empty());
    }

    #[test]
    fn a_route_serving_get_without_allow_body_refuses_bodies() {
        for method in [Method::GET, Method::HEAD, Method::OPTIONS, Method::DELETE] {
            let guards = Guards::compile(&route(&[Method::POST, method], false));
            assert!(matches!(guards.on_request(), [RequestGuard::NoBody]));
            assert!(guards.on_response().is_empty());
        }
    }

    #[test]
    fn ownership_compiles_to_request_and_response_guards() {
        let mut rc = route(&[Method::GET, Method::DELETE], false);
        rc.ownership = Some(idgate_config::RouteOwnership {
            owns: None,
            owner_param: Some("id".to_owned()),
            list: None,
            retention: Duration::from_secs(60),
            share: Arc::new([]),
            namespace: OwnershipNamespace::new("didit").unwrap(),
            namespace_written: false,
        });
        let guards = Guards::compile(&rc);
        assert!(matches!(
            guards.on_request(),
            [RequestGuard::NoBody, RequestGuard::OwnedObject { param, policy }]
                if &**param == "id" && !policy.fail_open && policy.namespace.as_str() == "didit"
        ));
        assert!(matches!(guards.on_response(), [ResponseGuard::ForgetOwned]));

        let mut rc = route(&[Method::POST], false);
        rc.ownership = Some(idgate_config::RouteOwnership {
            owns: Some(JsonPath::parse("$.session_id").unwrap()),
            owner_param: None,
            list: None,
            retention: Duration::from_secs(60),
            share: Arc::new([]),
            namespace: OwnershipNamespace::new("didit").unwrap(),
            namespace_written: false,
        });
        rc.on_state_error = Some(OnStateError::FailOpen);
        let guards = Guards::compile(&rc);
        assert!(matches!(
            guards.on_request(),
            [RequestGuard::IdentityEncoding]
        ));
        assert!(matches!(
            guards.on_response(),
            [ResponseGuard::RecordOwner { policy, .. }] if policy.fail_open
        ));
    }

    #[test]
    fn masking_compiles_to_a_whole_uncompressed_answer_and_its_mask() {
        use idgate_config::{ProfileChoice, RouteMasking};
        let mut rc = route(&[Method::POST], false);
        rc.masking = Some(RouteMasking {
            by_caller: Vec::new(),
            default: ProfileChoice::Profile(0),
        });
        let guards = Guards::compile(&rc);
        assert!(matches!(
            guards.on_request(),
            [RequestGuard::IdentityEncoding, RequestGuard::WholeAnswer]
        ));
        assert!(matches!(guards.on_response(), [ResponseGuard::Mask(_)]));
        // Everyone may see everything: nothing to compile.
        rc.masking = Some(RouteMasking {
            by_caller: Vec::new(),
            default: ProfileChoice::Allow,
        });
        assert!(Guards::compile(&rc).is_empty());
        // Behind ownership, which already asks for identity, and after its own guard.
        rc.masking = Some(RouteMasking {
            by_caller: Vec::new(),
            default: ProfileChoice::Profile(0),
        });
        rc.ownership = Some(idgate_config::RouteOwnership {
            owns: Some(JsonPath::parse("$.session_id").unwrap()),
            owner_param: None,
            list: None,
            retention: Duration::from_secs(60),
            share: Arc::new([]),
            namespace: OwnershipNamespace::new("didit").unwrap(),
            namespace_written: false,
        });
        let guards = Guards::compile(&rc);
        assert!(matches!(
            guards.on_request(),
            [RequestGuard::IdentityEncoding, RequestGuard::WholeAnswer]
        ));
        assert!(matches!(
            guards.on_response(),
            [ResponseGuard::RecordOwner { .. }, ResponseGuard::Mask(_)]
        ));
    }

    #[test]
    fn allow_body_compiles_the_body_guard_away() {
        assert!(Guards::compile(&route(&[Method::GET, Method::DELETE], true)).is_empty());
    }
}
