//! The route table: path templates matched by `matchit`, then the method within the path.
//! Built once per configuration snapshot. Matching allocates nothing, except a lower-case
//! copy of a path with capitals when some upstream matches paths without case.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use http::Method;
use http::header::HeaderValue;
use idgate_auth::{AllowEntry, RouteAuth, ScopeRule};
use idgate_config::{RouteConfig, fold_template};

use crate::path;

/// One route, ready for the pipeline.
#[derive(Debug)]
pub struct Route {
    /// Shared with metrics labels and logs.
    pub name: Arc<str>,
    pub upstream: usize,
    /// Literal segments are matched without case (the upstream's `case_insensitive_paths`).
    pub case_insensitive: bool,
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

impl PathEntry {
    fn route(&self, method: &Method) -> Option<usize> {
        self.by_method
            .iter()
            .find(|(m, _)| m == method)
            .map(|&(_, r)| r)
    }
}

/// Why no route was found.
#[derive(Debug)]
pub enum RouteMiss<'a> {
    NoPath,
    WrongMethod(&'a HeaderValue),
}

/// Path templates in a `matchit` router, each with the routes of its methods.
#[derive(Debug, Default)]
struct Paths {
    router: matchit::Router<usize>,
    entries: Vec<PathEntry>,
    index: HashMap<String, usize>,
}

impl Paths {
    fn add(&mut self, template: String, methods: &[Method], route: usize) -> Result<(), String> {
        let p = match self.index.get(&template) {
            Some(&p) => p,
            None => {
                let p = self.entries.len();
                self.router
                    .insert(template.as_str(), p)
                    .map_err(|e| e.to_string())?;
                self.index.insert(template, p);
                self.entries.push(PathEntry {
                    by_method: Vec::new(),
                    allow_header: HeaderValue::from_static(""),
                });
                p
            }
        };
        self.entries[p]
            .by_method
            .extend(methods.iter().map(|m| (m.clone(), route)));
        Ok(())
    }

    fn finish(&mut self) -> Result<(), String> {
        for entry in &mut self.entries {
            let list = entry
                .by_method
                .iter()
                .map(|(m, _)| m.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            entry.allow_header = HeaderValue::from_str(&list).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn at(&self, path: &str) -> Option<&PathEntry> {
        self.router.at(path).ok().map(|m| &self.entries[*m.value])
    }
}

#[derive(Debug)]
pub struct RouteTable {
    exact: Paths,
    /// Every template folded to lower case, when some route's upstream ignores case: looked
    /// up with the path in lower case, it finds what that upstream would take the path for.
    folded: Option<Paths>,
    routes: Vec<Route>,
}

impl RouteTable {
    /// Builds the table from validated routes (the configuration already refused conflicts).
    /// A template must be in the canonical form requests are routed on.
    pub fn new(configs: &[RouteConfig]) -> Result<Self, String> {
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
                    return Err(format!(
                        "routes[{i}].path: \"{}\" is not in the canonical form requests are routed on, so it would never match: write \"{canonical}\"",
                        rc.path
                    ));
                }
                Err(refusal) => {
                    return Err(format!(
                        "routes[{i}].path: \"{}\" could never match: requests with such a path are refused ({})",
                        rc.path,
                        refusal.slug()
                    ));
                }
            }
            exact
                .add(rc.path.clone(), &rc.methods, i)
                .map_err(|e| format!("route {}: {e}", rc.name))?;
            if let Some(folded) = &mut folded {
                folded
                    .add(fold_template(&rc.path), &rc.methods, i)
                    .map_err(|e| {
                        format!(
                            "routes[{i}].path: \"{}\" cannot be matched without case (case_insensitive_paths): {e}",
                            rc.path
                        )
                    })?;
            }
            routes.push(Route {
                name: rc.name.as_str().into(),
                upstream: rc.upstream,
                case_insensitive: rc.case_insensitive,
                allow: rc.allow.clone(),
                auth: rc.auth.clone(),
                scopes: rc.scopes.clone(),
                allow_body: rc.allow_body,
            });
        }
        exact.finish()?;
        if let Some(folded) = &mut folded {
            folded.finish()?;
        }
        Ok(Self {
            exact,
            folded,
            routes,
        })
    }

    /// The route for a request; `path` is canonical (see [`crate::path`]).
    pub fn find(&self, method: &Method, path: &str) -> Result<&Route, RouteMiss<'_>> {
        // A route whose upstream ignores case takes what that upstream would take for its
        // path: the path in lower case against the templates in lower case. Any other route
        // must match as written.
        let folded = self.folded.as_ref().and_then(|f| {
            let lower = if path.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(path.to_ascii_lowercase())
            } else {
                Cow::Borrowed(path)
            };
            f.at(&lower)
        });
        if let Some(entry) = folded
            && let Some(r) = entry.route(method)
            && self.routes[r].case_insensitive
        {
            return Ok(&self.routes[r]);
        }
        let Some(entry) = self.exact.at(path) else {
            return match folded {
                Some(entry)
                    if entry.route(method).is_none()
                        && entry
                            .by_method
                            .iter()
                            .any(|&(_, r)| self.routes[r].case_insensitive) =>
                {
                    Err(RouteMiss::WrongMethod(&entry.allow_header))
                }
                _ => Err(RouteMiss::NoPath),
            };
        };
        entry
            .route(method)
            .map(|r| &self.routes[r])
            .ok_or(RouteMiss::WrongMethod(&entry.allow_header))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &str, &str, bool)]) -> Result<RouteTable, String> {
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
            })
            .collect();
        RouteTable::new(&configs)
    }

    fn found(t: &RouteTable, method: &str, path: &str) -> String {
        match t.find(&method.parse().unwrap(), path) {
            Ok(r) => r.name.to_string(),
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
    fn templates_not_in_canonical_form_are_refused() {
        let e = table(&[("x", "GET", "/api/%65xport", false)]).unwrap_err();
        assert!(
            e.contains("routes[0].path") && e.contains("/api/export"),
            "{e}"
        );
        let e = table(&[("x", "GET", "/api/../{id}", false)]).unwrap_err();
        assert!(
            e.contains("routes[0].path") && e.contains("never match"),
            "{e}"
        );
    }
}
