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

use idgate_config::RouteConfig;

/// The guards of one route, in the order they run.
#[derive(Debug, Default)]
pub struct Guards {
    request: Box<[RequestGuard]>,
    response: Box<[ResponseGuard]>,
}

/// A check on the request, after authorization and before anything goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestGuard {
    /// A `GET`, `HEAD`, `OPTIONS` or `DELETE` request carries no body: an upstream that
    /// ignores the body of a GET would read it as the next request on its connection.
    /// Compiled for a route that serves one of those methods without `allow_body`.
    NoBody,
    /// The route's rate limits (`rate_limits`), each decided; first, so that a refused
    /// request costs nothing more.
    RateLimit,
}

/// A check or rewrite on the upstream's response, before it goes back to the caller.
/// No configuration asks for one yet; object ownership and masking belong here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseGuard {}

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
        Self {
            request: request.into_boxed_slice(),
            response: Box::default(),
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
    use http::Method;
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
            on_state_error: Default::default(),
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
            assert_eq!(guards.on_request(), &[RequestGuard::NoBody]);
            assert!(guards.on_response().is_empty());
        }
    }

    #[test]
    fn allow_body_compiles_the_body_guard_away() {
        assert!(Guards::compile(&route(&[Method::GET, Method::DELETE], true)).is_empty());
    }
}
