//! Response masking: `[masking.profiles.NAME]` (named profiles of rules, each a JSON path
//! and an action) and a route's `masking` (which profile applies to which callers).
//!
//! Profiles are resolved here into `idgate_mask` profiles and routes into indexes of them,
//! so that the gateway compiles a route without looking a name up. The pseudonym key is a
//! secret reference, read when the configuration is put into use.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use idgate_auth::{AllowEntry, Principal};
use idgate_mask::{Action, MaskPath, MediaRange, PassTypes, Profile, Rule};
use idgate_secrets::SecretRef;
use idgate_tls::TrustDomain;
use serde::Deserialize;

use crate::auth;
use crate::context::Ctx;

/// The profile name a route gives callers that may see everything.
pub(crate) const ALLOW: &str = "allow";

/// The most rules one profile may have: far more than any real answer needs.
const MAX_RULES: usize = 256;

/// The most entries of one profile's `pass_types`.
const MAX_PASS_TYPES: usize = 64;

/// The fewest bytes a pseudonym key in memory may have.
pub const MIN_PSEUDONYM_KEY_BYTES: usize = 32;

/// How often a pseudonym key's source is read again unless the profile says otherwise.
pub(crate) const DEFAULT_KEY_REFRESH: Duration = Duration::from_secs(5);

/// `[masking]`: the named profiles routes refer to.
#[derive(Debug, Clone, Default)]
pub struct MaskingConfig {
    /// In the order of their names.
    pub profiles: Vec<MaskProfileConfig>,
}

/// `[masking.profiles.NAME]`.
#[derive(Debug, Clone)]
pub struct MaskProfileConfig {
    pub name: String,
    pub profile: Profile,
    /// The HMAC key of `pseudonymize` rules; required when one exists.
    pub pseudonym_key: Option<SecretRef>,
    /// How often the key's source is read again for a new version.
    pub refresh_interval: Duration,
    /// What happens to an answer that is not JSON.
    pub non_json: NonJson,
}

/// `non_json` and `pass_types`: what a masked route does with an answer that is not JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NonJson {
    /// An answer of a type `pass_types` names is passed on untouched, streamed (images,
    /// PDFs); any other is refused with `502`, a text rendering of the data above all.
    Pass(PassTypes),
    /// Refused with `502`: only JSON, masked, reaches the caller.
    Block,
}

/// A route's `masking`: the profile of the first entry naming the caller, or the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMasking {
    pub by_caller: Vec<CallerMasking>,
    pub default: ProfileChoice,
}

/// `{ callers = [...], profile = "..." }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerMasking {
    /// As allow lists name principals: SPIFFE IDs and patterns, `apikey:NAME`, `client:ID`,
    /// `sub:SUBJECT`.
    pub callers: Vec<AllowEntry>,
    pub profile: ProfileChoice,
}

/// A profile a route applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileChoice {
    /// `"allow"`: the answer passes as the upstream gave it.
    Allow,
    /// An index into [`MaskingConfig::profiles`].
    Profile(usize),
}

impl RouteMasking {
    /// The profile for the principal authorization accepted (the default without one).
    pub fn choose(&self, principal: Option<Principal<'_>>) -> ProfileChoice {
        principal
            .and_then(|p| {
                self.by_caller
                    .iter()
                    .find(|c| c.callers.iter().any(|e| e.matches(p)))
            })
            .map_or(self.default, |c| c.profile)
    }

    /// Whether some caller gets a profile other than `allow`.
    pub fn masks(&self) -> bool {
        self.default != ProfileChoice::Allow
            || self
                .by_caller
                .iter()
                .any(|c| c.profile != ProfileChoice::Allow)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMasking {
    #[serde(default)]
    profiles: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    #[serde(default)]
    pseudonym_key: Option<String>,
    #[serde(default)]
    refresh_interval: Option<String>,
    #[serde(default)]
    non_json: Option<String>,
    #[serde(default)]
    pass_types: Option<Vec<String>>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    path: String,
    action: String,
    #[serde(default)]
    keep: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouteMasking {
    default: String,
    #[serde(default)]
    by_caller: Vec<RawCallerMasking>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCallerMasking {
    callers: Vec<String>,
    profile: String,
}

/// The profiles that loaded, and the names of those that did not (their own errors say
/// why, so routes naming them add nothing).
pub(crate) fn section(
    cx: &mut Ctx<'_>,
    raw: RawMasking,
    warnings: &mut Vec<String>,
) -> (MaskingConfig, Vec<String>) {
    let mut profiles = Vec::new();
    let mut broken = Vec::new();
    for (name, value) in raw.profiles {
        let key = format!("masking.profiles.{name}");
        if name == ALLOW {
            cx.err(
                &key,
                "\"allow\" is the name routes use for no masking; pick another",
            );
        } else if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            cx.err(&key, "a profile name is letters, digits, '_' and '-'");
        }
        let Some(p) = cx.section::<RawProfile>(&key, value) else {
            broken.push(name);
            continue;
        };
        match profile(cx, &key, name.clone(), p, warnings) {
            Some(profile) => profiles.push(profile),
            None => broken.push(name),
        }
    }
    (MaskingConfig { profiles }, broken)
}

fn profile(
    cx: &mut Ctx<'_>,
    key: &str,
    name: String,
    p: RawProfile,
    warnings: &mut Vec<String>,
) -> Option<MaskProfileConfig> {
    let before = cx.errors.len();
    if p.rules.is_empty() {
        cx.err(
            format!("{key}.rules"),
            "is empty: a profile that masks nothing is \"allow\" on the route",
        );
    } else if p.rules.len() > MAX_RULES {
        cx.err(
            format!("{key}.rules"),
            format!("has {} rules; at most {MAX_RULES}", p.rules.len()),
        );
    }
    let mut rules = Vec::new();
    for (i, r) in p.rules.into_iter().enumerate() {
        let rkey = format!("{key}.rules[{i}]");
        let path = MaskPath::parse(&r.path)
            .map_err(|e| cx.err(format!("{rkey}.path"), format!("\"{}\": {e}", r.path)))
            .ok();
        let action = match (r.action.as_str(), r.keep) {
            ("mask", Some(keep)) => match usize::try_from(keep) {
                Ok(keep) => Some(Action::Mask { keep }),
                Err(_) => {
                    cx.err(format!("{rkey}.keep"), "must be 0 or more");
                    None
                }
            },
            ("mask", None) => {
                cx.err(
                    format!("{rkey}.keep"),
                    "missing: mask keeps the last `keep` characters, like keep = 4",
                );
                None
            }
            (_, Some(_)) if Action::NAMES.contains(&r.action.as_str()) => {
                cx.err(
                    format!("{rkey}.keep"),
                    format!("only mask takes keep, not {}", r.action),
                );
                None
            }
            ("drop", None) => Some(Action::Drop),
            ("redact", None) => Some(Action::Redact),
            ("truncate_date", None) => Some(Action::TruncateDate),
            ("pseudonymize", None) => Some(Action::Pseudonymize),
            ("allow", None) => Some(Action::Allow),
            ("block", None) => Some(Action::Block),
            (other, _) => {
                cx.err(
                    format!("{rkey}.action"),
                    format!(
                        "\"{other}\" is not an action: write {}",
                        Action::NAMES.join(", ")
                    ),
                );
                None
            }
        };
        if action == Some(Action::Pseudonymize) && p.pseudonym_key.is_none() {
            cx.err(
                format!("{rkey}.action"),
                format!("pseudonymize needs the profile's key: set {key}.pseudonym_key to a secret reference"),
            );
        }
        if let (Some(path), Some(action)) = (path, action) {
            rules.push(Rule { path, action });
        }
    }
    let profile = Profile::new(rules);
    let pseudonym_key = p.pseudonym_key.as_deref().and_then(|s| {
        if !profile.pseudonymizes() && cx.errors.len() == before {
            warnings.push(format!(
                "{key}.pseudonym_key is set, but no rule of the profile pseudonymizes"
            ));
        }
        auth::available(cx, &format!("{key}.pseudonym_key"), s)
    });
    let refresh_interval = cx.duration(
        &format!("{key}.refresh_interval"),
        p.refresh_interval,
        DEFAULT_KEY_REFRESH,
    );
    let non_json = match p.non_json.as_deref() {
        None | Some("pass") => NonJson::Pass(pass_types(cx, key, p.pass_types)),
        Some("block") => {
            if p.pass_types.is_some() {
                cx.err(
                    format!("{key}.pass_types"),
                    "is for non_json = \"pass\": with \"block\" nothing but JSON passes",
                );
            }
            NonJson::Block
        }
        Some(other) => {
            cx.err(
                format!("{key}.non_json"),
                format!("\"{other}\": write \"pass\" or \"block\""),
            );
            NonJson::Block
        }
    };
    (cx.errors.len() == before).then_some(MaskProfileConfig {
        name,
        profile,
        pseudonym_key,
        refresh_interval,
        non_json,
    })
}

/// `pass_types`: the types an answer that is not JSON may have to pass; binary media
/// (`PassTypes::DEFAULT`) when it is not set.
fn pass_types(cx: &mut Ctx<'_>, key: &str, raw: Option<Vec<String>>) -> PassTypes {
    let Some(raw) = raw else {
        return PassTypes::default();
    };
    let at = format!("{key}.pass_types");
    if raw.is_empty() {
        cx.err(
            &at,
            "is empty: write non_json = \"block\" to pass nothing but JSON",
        );
    } else if raw.len() > MAX_PASS_TYPES {
        cx.err(
            &at,
            format!("has {} types; at most {MAX_PASS_TYPES}", raw.len()),
        );
    }
    let ranges = raw
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            MediaRange::parse(s)
                .map_err(|e| cx.err(format!("{at}[{i}]"), format!("\"{s}\": {e}")))
                .ok()
        })
        .collect();
    PassTypes::new(ranges)
}

/// The profile names a route may use: those that loaded, in their order, and those that
/// did not.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProfileNames {
    pub(crate) loaded: Vec<String>,
    pub(crate) broken: Vec<String>,
}

/// A route's `masking`: a profile name, or `{ default = "...", by_caller = [...] }`.
pub(crate) fn route(
    cx: &mut Ctx<'_>,
    key: &str,
    raw: Option<toml::Value>,
    names: &ProfileNames,
    (issuers, trust_domains): (&auth::IssuerNames, &HashSet<TrustDomain>),
) -> Option<RouteMasking> {
    let profiles = &names.loaded;
    let key = format!("{key}.masking");
    let raw = match raw? {
        toml::Value::String(default) => RawRouteMasking {
            default,
            by_caller: Vec::new(),
        },
        v @ toml::Value::Table(_) => cx.section::<RawRouteMasking>(&key, v)?,
        _ => {
            cx.err(
                &key,
                "write a profile name, or { default = \"…\", by_caller = [{ callers = […], profile = \"…\" }] }",
            );
            return None;
        }
    };
    let before = cx.errors.len();
    let choice = |cx: &mut Ctx<'_>, at: String, name: &str| -> ProfileChoice {
        // A profile with errors of its own has failed the configuration already.
        if name == ALLOW || names.broken.iter().any(|b| b == name) {
            return ProfileChoice::Allow;
        }
        match profiles.iter().position(|p| p == name) {
            Some(i) => ProfileChoice::Profile(i),
            None => {
                let known = if profiles.is_empty() {
                    "there is no [masking.profiles.…] section".to_owned()
                } else {
                    format!("profiles: {}", profiles.join(", "))
                };
                cx.err(
                    at,
                    format!(
                        "no masking profile is named \"{name}\" ({known}; or \"allow\" for none)"
                    ),
                );
                ProfileChoice::Allow
            }
        }
    };
    let default = choice(cx, format!("{key}.default"), &raw.default);
    let mut by_caller = Vec::new();
    for (i, c) in raw.by_caller.into_iter().enumerate() {
        let ckey = format!("{key}.by_caller[{i}]");
        if c.callers.is_empty() {
            cx.err(
                format!("{ckey}.callers"),
                "is empty, so the entry applies to no caller",
            );
        }
        let mut callers = Vec::new();
        for (n, s) in c.callers.iter().enumerate() {
            let at = format!("{ckey}.callers[{n}]");
            let Some(entry) = auth::allow_entry(cx, at.clone(), s, issuers) else {
                continue;
            };
            // An entry no caller can match leaves the callers it meant with the default
            // profile (often "allow"), silently.
            if let AllowEntry::Spiffe(p) = &entry {
                auth::known_trust_domain(cx, at, p, trust_domains);
            }
            callers.push(entry);
        }
        let profile = choice(cx, format!("{ckey}.profile"), &c.profile);
        by_caller.push(CallerMasking { callers, profile });
    }
    (cx.errors.len() == before).then_some(RouteMasking { by_caller, default })
}

#[cfg(test)]
#[path = "masking_tests.rs"]
mod tests;
