//! Object ownership: `[ownership]` (the default retention and the sharing groups) and a
//! route's `owns`, `owner_param`, `list`, `list_items`, `list_id` and
//! `ownership_retention`, resolved here into one [`RouteOwnership`] per route so the
//! gateway compiles it without looking anything up; and `on_state_error`, a route's
//! answer when the state backend fails.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::context::Ctx;
use crate::json_path::JsonPath;
use crate::{AllowEntry, auth};

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

pub(crate) fn route(
    cx: &mut Ctx<'_>,
    key: &str,
    raw: RawRouteOwnership<'_>,
    template: &str,
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
    any.then(|| RouteOwnership {
        owns,
        owner_param,
        list,
        retention,
        share: global.share.clone(),
    })
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
                TEMPLATE,
                &global,
            )
        });
        assert!(errors.is_empty(), "{errors:?}");
        let own = own.unwrap();
        assert_eq!(own.owner_param.as_deref(), Some("session_id"));
        assert_eq!(own.retention, Duration::from_secs(3600));
        let list = own.list.unwrap();
        assert_eq!(
            (list.rule, list.items.to_string()),
            (ListRule::Filter, "$.results".into())
        );
        let (none, _) =
            with_cx(|cx| route(cx, "r", RawRouteOwnership::default(), TEMPLATE, &global));
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
                TEMPLATE,
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
                TEMPLATE,
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
                TEMPLATE,
                &global,
            )
        });
        assert!(errors[0].starts_with("r.ownership_retention"), "{errors:?}");
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
