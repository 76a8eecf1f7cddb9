//! How route templates relate to each other: templates that only case tells apart, and
//! literal segments that take requests a `{param}` sibling with another policy would
//! otherwise take.

use std::fmt::Write as _;

use crate::RouteConfig;

/// A template as matched without case: literal text in lower case and parameters renamed by
/// position, so that two templates that differ only in case or in parameter names fold to
/// the same text.
pub fn fold_template(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut chars = template.chars().peekable();
    let mut params = 0;
    while let Some(c) = chars.next() {
        match c {
            '{' | '}' if chars.peek() == Some(&c) => {
                chars.next();
                out.push(c);
                out.push(c);
            }
            '{' => {
                let catch_all = chars.peek() == Some(&'*');
                for c in chars.by_ref() {
                    if c == '}' {
                        break;
                    }
                }
                let _ = write!(out, "{{{}p{params}}}", if catch_all { "*" } else { "" });
                params += 1;
            }
            c => out.push(c.to_ascii_lowercase()),
        }
    }
    out
}

/// One segment of a template, for comparing templates segment by segment.
#[derive(Debug, PartialEq, Eq)]
enum Segment<'a> {
    Literal(&'a str),
    /// `{name}`: any one non-empty segment.
    Param,
    /// `{*name}`: the rest of the path.
    CatchAll,
    /// A parameter with a prefix or suffix (`{name}.pdf`), compared as text.
    Mixed(&'a str),
}

fn segments(template: &str) -> Vec<Segment<'_>> {
    template
        .split('/')
        .map(|s| {
            let unescaped = s.replace("{{", "").replace("}}", "");
            if !unescaped.contains('{') {
                Segment::Literal(s)
            } else if s.starts_with("{*") {
                Segment::CatchAll
            } else if s.starts_with('{') && s.ends_with('}') && unescaped.matches('{').count() == 1
            {
                Segment::Param
            } else {
                Segment::Mixed(s)
            }
        })
        .collect()
}

/// Whether every request `literal` matches would also match `param`, and `literal` has a
/// literal segment where `param` has a parameter: without `literal`, those requests would
/// be `param`'s.
fn shadows(literal: &str, param: &str, ignore_case: bool) -> bool {
    let (a, b) = (segments(literal), segments(param));
    let same = |x: &str, y: &str| {
        if ignore_case {
            x.eq_ignore_ascii_case(y)
        } else {
            x == y
        }
    };
    let mut narrower = false;
    for (i, sa) in a.iter().enumerate() {
        match (sa, b.get(i)) {
            (_, None) => return false,
            (Segment::Literal(x), Some(Segment::Literal(y))) if same(x, y) => {}
            (Segment::Mixed(x), Some(Segment::Mixed(y))) if same(x, y) => {}
            (Segment::Param, Some(Segment::Param)) => {}
            (Segment::Literal(x), Some(Segment::Param)) if !x.is_empty() => narrower = true,
            (_, Some(Segment::CatchAll)) => {
                let rest = &a[i..];
                let non_empty = rest.iter().any(|s| *s != Segment::Literal(""));
                return non_empty
                    && (narrower
                        || rest
                            .iter()
                            .any(|s| matches!(s, Segment::Literal(x) if !x.is_empty())));
            }
            _ => return false,
        }
    }
    narrower && a.len() == b.len()
}

/// A warning for each route whose literal segment shadows a `{param}` sibling that has a
/// different allow list, authentication or scopes for a method both have.
pub(crate) fn shadow_warnings(routes: &[RouteConfig], upstream_names: &[&str]) -> Vec<String> {
    let mut warnings = Vec::new();
    for (i, lit) in routes.iter().enumerate() {
        for (j, par) in routes.iter().enumerate() {
            if i == j || lit.path == par.path {
                continue;
            }
            let methods: Vec<&str> = lit
                .methods
                .iter()
                .filter(|m| par.methods.contains(m))
                .map(|m| m.as_str())
                .collect();
            if methods.is_empty()
                || !shadows(
                    &lit.path,
                    &par.path,
                    lit.case_insensitive || par.case_insensitive,
                )
            {
                continue;
            }
            let differs: Vec<&str> = [
                ("allow list", lit.allow != par.allow),
                ("auth", lit.auth != par.auth),
                ("scopes", lit.scopes != par.scopes),
            ]
            .into_iter()
            .filter_map(|(what, d)| d.then_some(what))
            .collect();
            if differs.is_empty() {
                continue;
            }
            let upstream = upstream_names.get(lit.upstream).copied().unwrap_or("?");
            let methods = methods.join(",");
            warnings.push(format!(
                "routes[{i}] \"{}\" ({methods} {}) shadows routes[{j}] \"{}\" ({methods} {}), whose {} differs: \
                 percent-encoded and case variants of a path are canonicalised before routing, but upstream \
                 \"{upstream}\" must agree that only {} means what routes[{i}] guards; any other spelling it \
                 reads the same way (another case without case_insensitive_paths, a trailing slash, a suffix) \
                 reaches it through routes[{j}]",
                lit.name,
                lit.path,
                par.name,
                par.path,
                differs.join(" and "),
                lit.path,
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_ignores_case_and_parameter_names() {
        assert_eq!(fold_template("/API/Users/{id}"), "/api/users/{p0}");
        assert_eq!(fold_template("/api/users/{ID}"), "/api/users/{p0}");
        assert_eq!(fold_template("/A/{x}.PDF/{*Rest}"), "/a/{p0}.pdf/{*p1}");
        assert_eq!(fold_template("/{{Lit}}"), "/{{lit}}");
    }

    #[test]
    fn a_literal_shadows_a_parameter_in_the_same_place() {
        for (lit, par) in [
            ("/api/users/export", "/api/users/{id}"),
            ("/api/users/export/", "/api/users/{id}/"),
            ("/api/{v}/export", "/api/{v}/{id}"),
            ("/aml/screen", "/aml/{*rest}"),
            ("/aml/{id}/x", "/aml/{*rest}"),
        ] {
            assert!(shadows(lit, par, false), "{lit} over {par}");
        }
        for (lit, par) in [
            ("/api/users/{id}", "/api/users/export"),
            ("/api/users/export", "/api/users/{id}/"),
            ("/api/users/export/x", "/api/users/{id}"),
            ("/api/users/", "/api/users/{id}"),
            ("/api/admin/export", "/api/users/{id}"),
            ("/aml/{id}", "/aml/{*rest}"),
            ("/files/a.pdf", "/files/{name}.pdf"),
        ] {
            assert!(!shadows(lit, par, false), "{lit} over {par}");
        }
        assert!(!shadows("/API/users/export", "/api/users/{id}", false));
        assert!(shadows("/API/users/export", "/api/users/{id}", true));
    }

    fn route_errors(insensitive: bool, paths: &[&str]) -> Vec<String> {
        let mut text = format!(
            "[listener]\nbind = \"127.0.0.1:8443\"\n[identity]\nsvid_cert = \"c\"\nsvid_key = \"k\"\n\
             [[upstreams]]\nname = \"p\"\nurl = \"https://provider.test\"\ncase_insensitive_paths = {insensitive}\n\
             [[upstreams]]\nname = \"q\"\nurl = \"https://other.test\"\n"
        );
        for (i, path) in paths.iter().enumerate() {
            let upstream = if i == 0 { "p" } else { "q" };
            text.push_str(&format!(
                "[[routes]]\nname = \"r{i}\"\nmethods = [\"GET\"]\npath = \"{path}\"\nupstream = \"{upstream}\"\nallow = [\"spiffe://example.org/a\"]\n"
            ));
        }
        match crate::parse(std::path::Path::new("t.toml"), &text) {
            Ok(_) => Vec::new(),
            Err(e) => {
                e.0.into_iter()
                    .filter(|e| e.key.ends_with(".path"))
                    .map(|e| format!("{}: {}", e.key, e.reason))
                    .collect()
            }
        }
    }

    #[test]
    fn templates_told_apart_only_by_case_are_refused_when_an_upstream_ignores_case() {
        let e = route_errors(true, &["/api/users/{id}", "/API/Users/{user}"]);
        assert!(
            e.len() == 1 && e[0].starts_with("routes[1].path: ") && e[0].contains("routes[0]"),
            "{e:?}"
        );
        assert!(route_errors(false, &["/api/users/{id}", "/API/Users/{user}"]).is_empty());
        assert!(route_errors(true, &["/api/users/{id}", "/api/users/export"]).is_empty());
    }
}
