//! The route table: path templates matched by `matchit`, then the method within the path.
//! Built once per configuration snapshot; matching allocates nothing.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;
use http::header::HeaderValue;
use idgate_auth::{AllowEntry, RouteAuth, ScopeRule};
use idgate_config::RouteConfig;

/// One route, ready for the pipeline.
#[derive(Debug)]
pub struct Route {
    /// Shared with metrics labels and logs.
    pub name: Arc<str>,
    pub upstream: usize,
    pub allow: Vec<AllowEntry>,
    pub auth: RouteAuth,
    pub scopes: ScopeRule,
    /// Whether a `GET`, `HEAD`, `OPTIONS` or `DELETE` request may carry a body.
    pub allow_body: bool,
}

#[derive(Debug)]
struct PathEntry {
    by_method: Vec<(Method, usize)>,
    /// The `Allow` header for a 405 on this path.
    allow_header: HeaderValue,
}

/// Why no route was found.
#[derive(Debug)]
pub enum RouteMiss<'a> {
    NoPath,
    WrongMethod(&'a HeaderValue),
}

#[derive(Debug)]
pub struct RouteTable {
    router: matchit::Router<usize>,
    paths: Vec<PathEntry>,
    routes: Vec<Route>,
}

impl RouteTable {
    /// Builds the table from validated routes (the configuration already refused conflicts).
    pub fn new(configs: &[RouteConfig]) -> Result<Self, String> {
        let mut router = matchit::Router::new();
        let mut paths: Vec<PathEntry> = Vec::new();
        let mut path_index: HashMap<&str, usize> = HashMap::new();
        let mut routes = Vec::with_capacity(configs.len());
        for (i, rc) in configs.iter().enumerate() {
            let p = match path_index.get(rc.path.as_str()) {
                Some(&p) => p,
                None => {
                    router
                        .insert(rc.path.as_str(), paths.len())
                        .map_err(|e| format!("route {}: {e}", rc.name))?;
                    path_index.insert(rc.path.as_str(), paths.len());
                    paths.push(PathEntry {
                        by_method: Vec::new(),
                        allow_header: HeaderValue::from_static(""),
                    });
                    paths.len() - 1
                }
            };
            paths[p]
                .by_method
                .extend(rc.methods.iter().map(|m| (m.clone(), i)));
            routes.push(Route {
                name: rc.name.as_str().into(),
                upstream: rc.upstream,
                allow: rc.allow.clone(),
                auth: rc.auth.clone(),
                scopes: rc.scopes.clone(),
                allow_body: rc.allow_body,
            });
        }
        for entry in &mut paths {
            let list = entry
                .by_method
                .iter()
                .map(|(m, _)| m.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            entry.allow_header = HeaderValue::from_str(&list).map_err(|e| e.to_string())?;
        }
        Ok(Self {
            router,
            paths,
            routes,
        })
    }

    pub fn find(&self, method: &Method, path: &str) -> Result<&Route, RouteMiss<'_>> {
        let m = self.router.at(path).map_err(|_| RouteMiss::NoPath)?;
        let entry = &self.paths[*m.value];
        entry
            .by_method
            .iter()
            .find(|(rm, _)| rm == method)
            .map(|&(_, r)| &self.routes[r])
            .ok_or(RouteMiss::WrongMethod(&entry.allow_header))
    }
}
