//! Object ownership: `[ownership]` (the default retention and the sharing groups) and a
//! route's `owns`, `owner_param`, `list`, `list_items`, `list_id`, `ownership_retention`
//! and `ownership_namespace`, resolved here into one [`RouteOwnership`] per route so the
//! gateway compiles it without looking anything up; and `on_state_error`, a route's
//! answer when the state backend fails.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::context::Ctx;
use crate::json_path::JsonPath;
use crate::{AllowEntry, RouteConfig, auth, fold_template};

/// The retention of an ownership record unless a route or `[ownership]` says otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// `[ownership]`.
#[derive(Debug, Clone)]
pub struct OwnershipConfig {
    /// How long a record is kept after its object was created (or last renewed).
    pub retention: Duration,
    /// Groups of principals that own their objects together, in order: a principal
    /// belongs to the first group one of whose entries matches it.
    pub share: Arc<[ShareGroup]>,
}

impl Default for OwnershipConfig {
    fn default() -> Self {
        Self {
            retention: DEFAULT_RETENTION,
            share: Arc::new([]),
        }
    }
}

/// `{ group = "kyc", principals = ["spiffe://td/ns/kyc/*"] }`: every principal matching
/// one of `principals` owns what any of them created; records name the group.
#[derive(Debug, Clone)]
pub struct ShareGroup {
    pub group: String,
    pub principals: Vec<AllowEntry>,
}

/// What a route does about object ownership.
#[derive(Debug, Clone)]
pub struct RouteOwnership {
    /// Where the id of the object a 2xx response created is (`$.session_id`).
    pub owns: Option<JsonPath>,
    /// The path parameter naming the object a request reads, changes or deletes.
    pub owner_param: Option<String>,
    /// How a list response is kept to the caller's own objects.
    pub list: Option<ListOwnership>,
    pub retention: Duration,
    pub share: Arc<[ShareGroup]>,
    /// The id space the route's object ids are in: records are kept per namespace, so an
    /// object one route creates is owned on the routes of its namespace only.
    pub namespace: OwnershipNamespace,
    /// Whether the route names `namespace` itself (`ownership_namespace`) rather than
    /// taking its upstream's name.
    pub namespace_written: bool,
}

/// The longest ownership namespace, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// An id space of objects: a route's `ownership_namespace`, or by default its upstream's
/// name. ASCII letters, digits, `-`, `_` and `.`, at most [`MAX_NAMESPACE_LEN`] bytes: it
/// never holds the `:`, `|` or `#` that separate it from the object's id and the owner in
/// a record, so no two (namespace, id) pairs share a record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnershipNamespace(String);

impl OwnershipNamespace {
    /// Refused, with the reason, when empty, too long, or holding another character.
    pub fn new(name: &str) -> Result<Self, &'static str> {
        if name.is_empty() {
            Err("is empty")
        } else if name.len() > MAX_NAMESPACE_LEN {
            Err("is longer than 64 bytes")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            Err("may hold only ASCII letters, digits, '-', '_' and '.'")
        } else {
            Ok(Self(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for OwnershipNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `list = "filter" | "refuse"` with where the items and their ids are.
#[derive(Debug, Clone)]
pub struct ListOwnership {
    pub rule: ListRule,
    /// The array of items in the response (`$.results`; `$` for a bare array).
    pub items: JsonPath,
    /// The id of an item, from the item (`$.session_id`).
    pub id: JsonPath,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListRule {
    /// Items the caller does not own are removed from the array.
    Filter,
    /// A list holding an item the caller does not own is refused whole (403).
    Refuse,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOwnership {
    #[serde(default)]
    retention: Option<String>,
    #[serde(default)]
    share: Vec<RawShare>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawShare {
    group: String,
    principals: Vec<String>,
}

/// The route keys this module reads, as written.
#[derive(Debug, Default)]
pub(crate) struct RawRouteOwnership<'a> {
    pub(crate) owns: Option<&'a str>,
    pub(crate) owner_param: Option<&'a str>,
    pub(crate) list: Option<&'a str>,
    pub(crate) list_items: Option<&'a str>,
    pub(crate) list_id: Option<&'a str>,
    pub(crate) retention: Option<&'a str>,
    pub(crate) namespace: Option<&'a str>,
}

pub(crate) fn section(
    cx: &mut Ctx<'_>,
    raw: RawOwnership,
    issuers: &auth::IssuerNames,
) -> OwnershipConfig {
    let retention = cx.duration("ownership.retention", raw.retention, DEFAULT_RETENTION);
    let mut share = Vec::new();
    for (i, s) in raw.share.into_iter().enumerate() {
        let key = format!("ownership.share[{i}]");
        if s.group.is_empty() || s.group.chars().any(char::is_control) {
            cx.err(format!("{key}.group"), "must be a non-empty name");
        }
        if share.iter().any(|g: &ShareGroup| g.group == s.group) {
            cx.err(
                format!("{key}.group"),
                format!("group \"{}\" is defined twice", s.group),
            );
        }
        if s.principals.is_empty() {
            cx.err(
                format!("{key}.principals"),
                "is empty, so the group has no member",
            );
        }
        let principals = s
            .principals
            .iter()
            .enumerate()
            .filter_map(|(p, text)| {
                auth::allow_entry(cx, format!("{key}.principals[{p}]"), text, issuers)
            })
            .collect();
        share.push(ShareGroup {
            group: s.group,
            principals,
        });
    }
    OwnershipConfig {
        retention,
        share: share.into(),
    }
}

/// A route's ownership; `upstream` is the name of its upstream, `None` when there is no
/// valid one (its own error says why).
pub(crate) fn route(
    cx: &mut Ctx<'_>,
    key: &str,
    raw: RawRouteOwnership<'_>,
    (template, upstream): (&str, Option<&str>),
    global: &OwnershipConfig,
) -> Option<RouteOwnership> {
    let mut path = |name: &str, text: Option<&str>| {
        let text = text?;
        JsonPath::parse(text)
            .map_err(|e| cx.err(format!("{key}.{name}"), format!("\"{text}\": {e}")))
            .ok()
    };
    let owns = path("owns", raw.owns);
    let items = path("list_items", raw.list_items);
    let id = path("list_id", raw.list_id);
    let owner_param = raw.owner_param.map(|p| {
        if !template.contains(&format!("{{{p}}}")) {
            cx.err(
                format!("{key}.owner_param"),
                format!(
                    "\"{p}\" is not a parameter of the path {template} (write it as {{{p}}} there)"
                ),
            );
        }
        p.to_owned()
    });
    let rule = match raw.list {
        None => None,
        Some("filter") => Some(ListRule::Filter),
        Some("refuse") => Some(ListRule::Refuse),
        Some(other) => {
            cx.err(
                format!("{key}.list"),
                format!("\"{other}\": write \"filter\" or \"refuse\""),
            );
            None
        }
    };
    let list = match (rule, id) {
        (Some(rule), Some(id)) => Some(ListOwnership {
            rule,
            items: items.unwrap_or_else(JsonPath::root),
            id,
        }),
        (Some(_), None) => {
            if raw.list_id.is_none() {
                cx.err(
                    format!("{key}.list_id"),
                    "missing: say where an item's id is, like \"$.session_id\"",
                );
            }
            None
        }
        (None, _) => {
            if raw.list.is_none() && (raw.list_items.is_some() || raw.list_id.is_some()) {
                cx.err(
                    format!("{key}.list"),
                    "missing: list_items and list_id take effect with list = \"filter\" or \"refuse\"",
                );
            }
            None
        }
    };
    let any = raw.owns.is_some() || raw.owner_param.is_some() || raw.list.is_some();
    if raw.retention.is_some() && !any {
        cx.err(
            format!("{key}.ownership_retention"),
            "takes effect with owns, owner_param or list, and this route has none",
        );
    }
    let retention = cx.duration(
        &format!("{key}.ownership_retention"),
        raw.retention.map(str::to_owned),
        global.retention,
    );
    let ns_key = format!("{key}.ownership_namespace");
    let namespace = match (raw.namespace, upstream) {
        (Some(_), _) if !any => {
            cx.err(
                ns_key,
                "takes effect with owns, owner_param or list, and this route has none",
            );
            None
        }
        (Some(name), _) => OwnershipNamespace::new(name)
            .map_err(|reason| cx.err(ns_key, format!("\"{name}\" {reason}")))
            .ok(),
        (None, _) if !any => None,
        (None, None) => None,
        (None, Some(upstream)) => OwnershipNamespace::new(upstream)
            .map_err(|reason| {
                cx.err(
                    ns_key,
                    format!(
                        "missing: the records of this route are kept under its upstream's name by default, \
                         and \"{upstream}\" cannot be one (a namespace {reason}); name the namespace, \
                         like \"cases\""
                    ),
                );
            })
            .ok(),
    }?;
    Some(RouteOwnership {
        owns,
        owner_param,
        list,
        retention,
        share: global.share.clone(),
        namespace,
        namespace_written: raw.namespace.is_some(),
    })
}

/// Warnings about namespaces that look mistaken: two routes with `owns` recording into
/// their upstream's namespace from different paths or at different JSON paths (they may
/// create different kinds of objects whose ids can be equal, and then one kind's id would
/// be owned on the other's routes), and a namespace routes read that no route records into
/// (every object they name would be `404`).
pub(crate) fn namespace_warnings(routes: &[RouteConfig]) -> Vec<String> {
    let mut warnings = Vec::new();
    let owning: Vec<(usize, &RouteConfig, &RouteOwnership, &JsonPath)> = routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let own = r.ownership.as_ref()?;
            Some((i, r, own, own.owns.as_ref()?))
        })
        .collect();
    let shape = |r: &RouteConfig| fold_template(r.path.trim_end_matches('/'));
    for (n, &(i, r, own, id)) in owning.iter().enumerate() {
        let other = owning[..n].iter().find(|(_, o, o_own, o_id)| {
            o_own.namespace == own.namespace
                && !(own.namespace_written && o_own.namespace_written)
                && (*o_id != id || shape(o) != shape(r))
        });
        if let Some((j, o, _, o_id)) = other {
            warnings.push(format!(
                "routes[{i}] \"{}\" (owns {id} from {}) and routes[{j}] \"{}\" (owns {o_id} from {}) \
                 record the objects they create in one ownership namespace, \"{}\": if they are \
                 different kinds of objects whose ids can be equal, an object created through one is \
                 owned on the other's owner_param routes as well; give each kind its own \
                 ownership_namespace (or write the same one on both to say they are one kind)",
                r.name, r.path, o.name, o.path, own.namespace,
            ));
        }
    }
    for (i, r) in routes.iter().enumerate() {
        let Some(own) = &r.ownership else { continue };
        if own.owns.is_none()
            && !owning
                .iter()
                .any(|(_, _, o_own, _)| o_own.namespace == own.namespace)
        {
            let outcome = match (&own.owner_param, &own.list) {
                (Some(_), Some(_)) => {
                    "every object it names is answered 404 and every item it lists is taken for another's"
                }
                (Some(_), None) => "every object it names is answered 404",
                (None, _) => "every item it lists is taken for another's",
            };
            warnings.push(format!(
                "routes[{i}] \"{}\" checks ownership in the namespace \"{}\", where no route with \
                 owns records anything: {outcome} (set the ownership_namespace of the route that \
                 creates these objects on this one too)",
                r.name, own.namespace,
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn with_cx<T>(f: impl FnOnce(&mut Ctx<'_>) -> T) -> (T, Vec<String>) {
        let mut cx = Ctx {
            file: Path::new("/etc/idgate/idgate.toml"),
            base: Path::new("/etc/idgate"),
            errors: Vec::new(),
            check_secrets: true,
        };
        let out = f(&mut cx);
        let errors = cx
            .errors
            .into_iter()
            .map(|e| format!("{}: {}", e.key, e.reason))
            .collect();
        (out, errors)
    }

    const TEMPLATE: &str = "/v3/session/{session_id}/decision/";

    #[test]
    fn route_keys_resolve_against_the_global_section() {
        let global = OwnershipConfig::default();
        let (own, errors) = with_cx(|cx| {
            route(
                cx,
                "routes[0]",
                RawRouteOwnership {
                    owner_param: Some("session_id"),
                    list: Some("filter"),
                    list_items: Some("$.results"),
                    list_id: Some("$.session_id"),
                    retention: Some("1h"),
                    ..RawRouteOwnership::default()
                },
                (TEMPLATE, Some("didit")),
                &global,
            )
        });
        assert!(errors.is_empty(), "{errors:?}");
        let own = own.unwrap();
        assert_eq!(own.owner_param.as_deref(), Some("session_id"));
        assert_eq!(own.retention, Duration::from_secs(3600));
        assert_eq!(
            (own.namespace.as_str(), own.namespace_written),
            ("didit", false)
        );
        let list = own.list.unwrap();
        assert_eq!(
            (list.rule, list.items.to_string()),
            (ListRule::Filter, "$.results".into())
        );
        let (none, _) = with_cx(|cx| {
            route(
                cx,
                "r",
                RawRouteOwnership::default(),
                (TEMPLATE, Some("didit")),
                &global,
            )
        });
        assert!(none.is_none());
    }

    #[test]
    fn mistakes_are_named_by_key() {
        let global = OwnershipConfig::default();
        let (_, errors) = with_cx(|cx| {
            route(
                cx,
                "routes[1]",
                RawRouteOwnership {
                    owns: Some("session_id"),
                    owner_param: Some("id"),
                    list: Some("hide"),
                    ..RawRouteOwnership::default()
                },
                (TEMPLATE, Some("didit")),
                &global,
            )
        });
        let keys: Vec<&str> = errors
            .iter()
            .map(|e| e.split(':').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            ["routes[1].owns", "routes[1].owner_param", "routes[1].list"]
        );
        let (_, errors) = with_cx(|cx| {
            route(
                cx,
                "r",
                RawRouteOwnership {
                    list: Some("refuse"),
                    ..RawRouteOwnership::default()
                },
                (TEMPLATE, Some("didit")),
                &global,
            )
        });
        assert!(errors[0].starts_with("r.list_id: missing"), "{errors:?}");
        let (_, errors) = with_cx(|cx| {
            route(
                cx,
                "r",
                RawRouteOwnership {
                    retention: Some("1h"),
                    ..RawRouteOwnership::default()
                },
                (TEMPLATE, Some("didit")),
                &global,
            )
        });
        assert!(errors[0].starts_with("r.ownership_retention"), "{errors:?}");
    }

    fn with_namespace(
        namespace: Option<&str>,
        upstream: Option<&str>,
    ) -> (Option<RouteOwnership>, Vec<String>) {
        with_cx(|cx| {
            route(
                cx,
                "routes[2]",
                RawRouteOwnership {
                    owner_param: Some("session_id"),
                    namespace,
                    ..RawRouteOwnership::default()
                },
                (TEMPLATE, upstream),
                &OwnershipConfig::default(),
            )
        })
    }

    #[test]
    fn a_route_names_its_own_namespace_or_takes_its_upstreams_name() {
        let (own, errors) = with_namespace(Some("cases.v2_EU-1"), Some("in-house"));
        assert!(errors.is_empty(), "{errors:?}");
        let own = own.unwrap();
        assert_eq!(
            (own.namespace.as_str(), own.namespace_written),
            ("cases.v2_EU-1", true)
        );
        let (own, _) = with_namespace(None, Some("in-house"));
        assert_eq!(own.unwrap().namespace.as_str(), "in-house");
        // No valid upstream: its own error says why, and nothing is added here.
        let (own, errors) = with_namespace(None, None);
        assert!(own.is_none() && errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn a_namespace_that_could_blur_a_records_key_is_refused_by_key() {
        let long = "n".repeat(MAX_NAMESPACE_LEN + 1);
        for bad in ["", "cases:1", "a#b", "caf\u{e9}", "two words", "a/b", &long] {
            let (own, errors) = with_namespace(Some(bad), Some("p"));
            assert!(own.is_none(), "{bad:?}");
            assert_eq!(errors.len(), 1, "{bad:?}: {errors:?}");
            assert!(
                errors[0].starts_with(&format!("routes[2].ownership_namespace: \"{bad}\" ")),
                "{errors:?}"
            );
        }
        assert!(OwnershipNamespace::new(&"n".repeat(MAX_NAMESPACE_LEN)).is_ok());
        // An upstream whose name cannot be one: the route must name its namespace.
        let (own, errors) = with_namespace(None, Some("Didit EU"));
        assert!(own.is_none());
        assert!(
            errors[0].starts_with("routes[2].ownership_namespace: missing: ")
                && errors[0].contains("\"Didit EU\""),
            "{errors:?}"
        );
        // Without owns, owner_param or list it would say nothing.
        let (_, errors) = with_cx(|cx| {
            route(
                cx,
                "r",
                RawRouteOwnership {
                    namespace: Some("cases"),
                    ..RawRouteOwnership::default()
                },
                (TEMPLATE, Some("p")),
                &OwnershipConfig::default(),
            )
        });
        assert!(
            errors[0].starts_with("r.ownership_namespace: takes effect with owns"),
            "{errors:?}"
        );
    }

    /// The warnings of a file with upstreams `a` and `b` and `routes`.
    fn warnings(routes: &str) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for (name, mode) in [("c", 0o644), ("k", 0o600), ("ca.pem", 0o644)] {
            let path = dir.path().join(name);
            std::fs::write(&path, "k").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let text = format!(
            "{}[[identity.trust_bundles]]\ntrust_domain = \"example.org\"\nbundle = \"ca.pem\"\n\
             [[upstreams]]\nname = \"b\"\nurl = \"https://b.test\"\n{routes}",
            crate::test_support::BASE.replace("name = \"p\"", "name = \"a\"")
        );
        let config =
            crate::parse(&dir.path().join("idgate.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
        config
            .warnings
            .into_iter()
            .filter(|w| w.contains("namespace"))
            .collect()
    }

    fn owning_route(name: &str, method: &str, path: &str, upstream: &str, extra: &str) -> String {
        format!(
            "[[routes]]\nname = \"{name}\"\nmethods = [\"{method}\"]\npath = \"{path}\"\n\
             upstream = \"{upstream}\"\nallow = [\"spiffe://example.org/ns/kyc/*\"]\n{extra}\n"
        )
    }

    #[test]
    fn two_kinds_of_objects_in_one_upstreams_namespace_are_warned_about() {
        let docs = owning_route("docs", "POST", "/docs", "a", "owns = \"$.id\"");
        let cases = owning_route("cases", "POST", "/cases", "a", "owns = \"$.id\"");
        let case = owning_route(
            "case",
            "GET",
            "/cases/{case_id}",
            "a",
            "owner_param = \"case_id\"",
        );
        let w = warnings(&format!("{docs}{cases}{case}"));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("routes[1] \"cases\" (owns $.id from /cases) and routes[0] \"docs\"")
                && w[0].contains("\"a\""),
            "{w:?}"
        );
        // Each kind in its own namespace, or both said to be one kind: nothing to say.
        let ns = |route: &str, ns: &str| format!("{route}ownership_namespace = \"{ns}\"\n");
        let separate = format!(
            "{}{}{}",
            ns(&docs, "docs"),
            ns(&cases, "cases"),
            ns(&case, "cases")
        );
        assert!(warnings(&separate).is_empty(), "{:?}", warnings(&separate));
        let one_kind = format!("{}{}{}", ns(&docs, "a"), ns(&cases, "a"), case);
        assert!(warnings(&one_kind).is_empty());
        // Two upstreams have two namespaces; two creates of one path and one id path are
        // one kind.
        let other = owning_route("other", "POST", "/cases/", "b", "owns = \"$.id\"");
        let again = owning_route("again", "PUT", "/cases", "a", "owns = \"$.id\"");
        assert!(warnings(&format!("{cases}{other}{again}{case}")).is_empty());
        let at_another_path = owning_route("v2", "PUT", "/cases", "a", "owns = \"$.case.id\"");
        assert_eq!(warnings(&format!("{cases}{at_another_path}")).len(), 1);
    }

    #[test]
    fn a_namespace_read_where_nothing_is_recorded_is_warned_about() {
        let cases = owning_route(
            "cases",
            "POST",
            "/cases",
            "a",
            "owns = \"$.id\"\nownership_namespace = \"cases\"",
        );
        let case = owning_route(
            "case",
            "GET",
            "/cases/{case_id}",
            "a",
            "owner_param = \"case_id\"",
        );
        let w = warnings(&format!("{cases}{case}"));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("routes[1] \"case\" checks ownership in the namespace \"a\"")
                && w[0].contains("404"),
            "{w:?}"
        );
        let case = format!("{case}ownership_namespace = \"cases\"\n");
        assert!(warnings(&format!("{cases}{case}")).is_empty());
    }

    #[test]
    fn share_groups_take_allow_list_entries() {
        let raw: RawOwnership = toml::from_str(
            r#"retention = "2h"
               share = [{ group = "kyc", principals = ["spiffe://td/ns/kyc/*", "apikey:batch"] }]"#,
        )
        .unwrap();
        let (cfg, errors) = with_cx(|cx| section(cx, raw, &Vec::new()));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(cfg.retention, Duration::from_secs(7200));
        assert_eq!(cfg.share[0].principals.len(), 2);
        let raw: RawOwnership =
            toml::from_str(r#"share = [{ group = "", principals = ["nobody"] }]"#).unwrap();
        let (_, errors) = with_cx(|cx| section(cx, raw, &Vec::new()));
        assert_eq!(errors.len(), 2, "{errors:?}");
    }
}
