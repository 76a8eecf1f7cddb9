//! Object ownership (`owns`, `owner_param`, `list` on a route): which principal created
//! which upstream object, recorded through the state store's [`Ownership`] trait, so that
//! no caller reads, changes, deletes or lists another's objects.
//!
//! - The **owner** is the principal authorization accepted, named as allow lists name it:
//!   a SPIFFE ID, `apikey:NAME`, or for a token `sub:SUBJECT@ISSUER` (its subject,
//!   qualified by its `iss`). A principal matching a `[ownership] share` group owns as the
//!   group, `group:NAME`: the record names the group, so every member reaches what any
//!   member created (and a principal leaving the group loses it).
//! - **Creating** (`owns`): a 2xx JSON answer names the new object; the caller becomes its
//!   owner for the route's retention. An object already owned by another principal (a
//!   provider answering with an existing object) is withheld with the same `404` as below.
//! - **Reading, changing, deleting** (`owner_param`): before anything goes upstream, the
//!   object the path names must have a live record naming the caller; otherwise the
//!   gateway answers `404 not-found` itself, the same answer whether the object is
//!   another's or does not exist. A 2xx `DELETE` removes the record.
//! - **Lists** (`list`): each item's id is looked up; items of others are removed
//!   (`filter`) or the whole answer is refused (`refuse`, `403`).
//! - **Namespaces**: a record is keyed by the route's namespace (`ownership_namespace`, by
//!   default its upstream's name) and the object's id ([`record_key`]), so an id created
//!   through one namespace's routes owns nothing on another's: two kinds of objects, or two
//!   providers, may number their objects alike. Its owner names the namespace too
//!   ([`owner_in`]), so a record kept before there were namespaces answers no one.
//!
//! When the backend fails, or does not answer within the state timeout (`[state] timeout`
//! for Redis, 500 ms for the other backends), `on_state_error` decides: fail closed (the
//! default: ownership is an authorization check) answers `503 state-unavailable`; fail open
//! skips the check.

use std::time::{Duration, SystemTime};

use http::{Method, Response, StatusCode};
use idgate_auth::Principal;
use idgate_config::{JsonPath, ListOwnership, ListRule, OwnershipNamespace, ShareGroup};
use idgate_store::{MAX_KEY_LEN, ObjectId, Owner, Ownership, StoreError};
use serde_json::Value;

use super::json_response;
use crate::body::ProxyBody;
use crate::ctx::RequestCtx;
use crate::guards::OwnershipPolicy;
use crate::limit_state::{StateFailure, bounded};
use crate::problem::Refusal;
use crate::routes::Target;

/// The owner a principal records and is compared as.
pub fn owner_name(principal: Principal<'_>, share: &[ShareGroup]) -> String {
    if let Some(g) = share
        .iter()
        .find(|g| g.principals.iter().any(|e| e.matches(principal)))
    {
        return joined(&["group:", &g.group]);
    }
    match principal {
        // A workload owns the same objects however it proved its SPIFFE ID.
        Principal::Workload(id) => id.as_str().to_owned(),
        Principal::JwtSvid(s) => s.spiffe_id.as_str().to_owned(),
        Principal::ApiKey(k) => joined(&["apikey:", &k.name]),
        Principal::Token(t) => joined(&["sub:", &t.subject, "@", &t.issuer]),
    }
}

/// `pieces` one after the other (without `format!`'s machinery: once a request).
fn joined(pieces: &[&str]) -> String {
    let mut s = String::with_capacity(pieces.iter().map(|p| p.len()).sum());
    for p in pieces {
        s.push_str(p);
    }
    s
}

/// The id an upstream's JSON gives an object: a string as it is, a number as written.
pub fn object_id_of(value: &Value) -> Option<ObjectId> {
    match value {
        Value::String(s) => ObjectId::new(s.as_str()).ok(),
        Value::Number(n) => ObjectId::new(n.to_string()).ok(),
        _ => None,
    }
}

/// The key of the record of `object` in `namespace`: `NAMESPACE:ID`. A namespace holds
/// neither `:` nor `#`, so no two (namespace, id) pairs share a key (see [`scoped`] for an
/// id too long to stand beside its namespace).
pub fn record_key(
    namespace: &OwnershipNamespace,
    object: &ObjectId,
) -> Result<ObjectId, StoreError> {
    ObjectId::new(scoped(namespace, ':', object.as_str()))
}

/// The owner a record of `namespace` names: `NAMESPACE|OWNER`. Records kept before there
/// were namespaces were keyed by the id alone and name the owner alone (`spiffe://…`,
/// `apikey:…`, `sub:…`, `group:…`, whose first character outside a namespace's is `:`), so
/// such a record, even one whose id reads `NAMESPACE:ID`, never names any caller now.
pub fn owner_in(namespace: &OwnershipNamespace, owner: &Owner) -> Result<Owner, StoreError> {
    Owner::new(scoped(namespace, '|', owner.as_str()))
}

/// `NAMESPACE`, `separator`, `value`; or, when that would be longer than the store's key
/// limit, `NAMESPACE#` and the SHA-256 of `value` in hex: every value the store takes
/// alone is still taken (and one it refuses alone is refused before it comes here).
fn scoped(namespace: &OwnershipNamespace, separator: char, value: &str) -> String {
    let ns = namespace.as_str();
    let len = ns.len() + separator.len_utf8() + value.len();
    if len <= MAX_KEY_LEN {
        // Pieces pushed, not `format!`: this runs twice a request on an owned route.
        let mut key = String::with_capacity(len);
        key.push_str(ns);
        key.push(separator);
        key.push_str(value);
        return key;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
    let mut key = String::with_capacity(ns.len() + 1 + 64);
    key.push_str(ns);
    key.push('#');
    for b in digest.as_ref() {
        key.push(char::from(HEX[usize::from(b >> 4)]));
        key.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    key
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The ids of a list answer's items, in order (`None` for an item without one), or `None`
/// when the answer has no array where `list.items` says. Untrusted input: never panics.
pub fn list_ids(doc: &Value, list: &ListOwnership) -> Option<Vec<Option<ObjectId>>> {
    let items = list.items.select(doc)?.as_array()?;
    Some(
        items
            .iter()
            .map(|item| list.id.select(item).and_then(object_id_of))
            .collect(),
    )
}

/// The caller, as the records of the route's namespace name their owner.
fn caller(ctx: &RequestCtx<'_>, policy: &OwnershipPolicy) -> Result<Owner, Refusal> {
    let principal = ctx.principal().ok_or_else(|| Refusal::Internal {
        reason: "an ownership check before authorization".to_owned(),
    })?;
    Owner::new(owner_name(principal, &policy.share))
        .and_then(|owner| owner_in(&policy.namespace, &owner))
        .map_err(|e| Refusal::Internal {
            reason: format!("the principal cannot be an owner: {e}"),
        })
}

/// A failing backend: refused when the route fails closed; `Ok` (go on unchecked) when it
/// fails open. Counted and logged either way.
fn state_failed(
    ctx: &RequestCtx<'_>,
    policy: &OwnershipPolicy,
    e: StateFailure,
) -> Result<(), Refusal> {
    count_failure(ctx, &e);
    on_state_error(ctx.request_id(), policy, e)
}

/// Counts a failed ownership call in `idgate_state_errors_total{operation="ownership"}`,
/// with the throttled log line of every state backend failure.
fn count_failure(ctx: &RequestCtx<'_>, e: &StateFailure) {
    let s = ctx.services;
    s.state_errors
        .failed(&s.limit_metrics, "ownership", s.state.kind(), e);
}

/// The backend answered a write: if it was failing, its recovery is logged. Only writes
/// say so: a read may be answered from the Redis store's cache of owners while Redis is
/// still away.
fn count_success(ctx: &RequestCtx<'_>) {
    ctx.services
        .state_errors
        .succeeded(ctx.services.state.kind());
}

fn on_state_error(
    request_id: &str,
    policy: &OwnershipPolicy,
    e: StateFailure,
) -> Result<(), Refusal> {
    let reason = format!("ownership record unavailable: {e}");
    if policy.fail_open {
        tracing::warn!(request_id, reason, "state error, failing open");
        Ok(())
    } else {
        Err(Refusal::StateUnavailable { reason })
    }
}

/// How long an upstream's answer may take to arrive: its request timeout.
pub(super) fn timeout(ctx: &RequestCtx<'_>) -> Duration {
    match ctx.route.map(|r| r.target) {
        Some(Target::Upstream(i)) => ctx
            .snapshot
            .upstreams
            .get(i)
            .map_or(Duration::from_secs(30), |u| u.request_timeout),
        _ => Duration::from_secs(30),
    }
}

/// `owner_param`: the object the path names must be the caller's.
pub(super) async fn check_owned(
    ctx: &mut RequestCtx<'_>,
    param: &str,
    policy: &OwnershipPolicy,
    path: &str,
) -> Result<(), Refusal> {
    let owner = caller(ctx, policy)?;
    // The path's canonical form keeps reserved characters escaped; the upstream's JSON
    // named the object unescaped.
    let id = ctx
        .params
        .get(param, path)
        .and_then(idgate_codec::percent::decode)
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| ObjectId::new(s).ok())
        .and_then(|id| record_key(&policy.namespace, &id).ok())
        .ok_or(Refusal::ObjectNotFound)?;
    let state = &ctx.services.state;
    let record = bounded(
        ctx.snapshot.limits.timeout,
        state.get_for(&id, &owner, SystemTime::now()),
    );
    match record.await {
        Ok(Some(record)) if record.owner == owner => {
            ctx.owned_object = Some(id);
            Ok(())
        }
        Ok(_) => Err(Refusal::ObjectNotFound),
        Err(e) => state_failed(ctx, policy, e),
    }
}

/// `owns`: a 2xx answer created an object; the caller becomes its owner.
pub(super) async fn record_owner(
    ctx: &mut RequestCtx<'_>,
    id_path: &JsonPath,
    policy: &OwnershipPolicy,
    resp: &mut Response<ProxyBody>,
) -> Result<(), Refusal> {
    if !resp.status().is_success() || ctx.method == Method::HEAD {
        return Ok(());
    }
    let owner = caller(ctx, policy)?;
    let (bytes, doc) = json_response::read(resp, timeout(ctx)).await?;
    let id =
        id_path
            .select(&doc)
            .and_then(object_id_of)
            .ok_or_else(|| Refusal::UnreadableResponse {
                reason: format!("the upstream's answer has no object id at {id_path}"),
            })?;
    let id = record_key(&policy.namespace, &id).map_err(|e| Refusal::Internal {
        reason: format!("an ownership record cannot be keyed: {e}"),
    })?;
    json_response::replace_body(resp, bytes);
    let put = ctx
        .services
        .state
        .put(&id, &owner, policy.retention, SystemTime::now());
    let put = bounded(ctx.snapshot.limits.timeout, put).await;
    if put.is_ok() {
        count_success(ctx);
    }
    match put {
        Ok(record) if record.owner == owner => Ok(()),
        Ok(_) => {
            tracing::warn!(
                request_id = ctx.request_id(),
                "the upstream answered with an object another principal owns; withheld"
            );
            Err(Refusal::ObjectNotFound)
        }
        Err(e) => state_failed(ctx, policy, e),
    }
}

/// A 2xx `DELETE` of an owned object: its record goes with it. The object is gone upstream
/// whatever happens here, so a failing backend is only logged (the record expires).
pub(super) async fn forget_owned(
    ctx: &mut RequestCtx<'_>,
    status: StatusCode,
) -> Result<(), Refusal> {
    if ctx.method != Method::DELETE || !status.is_success() {
        return Ok(());
    }
    let Some(id) = ctx.owned_object.take() else {
        return Ok(());
    };
    match bounded(ctx.snapshot.limits.timeout, ctx.services.state.remove(&id)).await {
        Ok(_) => count_success(ctx),
        Err(e) => {
            count_failure(ctx, &e);
            tracing::warn!(request_id = ctx.request_id(), error = %e, "ownership record not removed");
        }
    }
    Ok(())
}

/// `list`: a 2xx list answer keeps the caller's items only, or is refused.
pub(super) async fn own_list(
    ctx: &mut RequestCtx<'_>,
    list: &ListOwnership,
    policy: &OwnershipPolicy,
    resp: &mut Response<ProxyBody>,
) -> Result<(), Refusal> {
    if !resp.status().is_success() {
        return Ok(());
    }
    if ctx.method == Method::HEAD {
        // No body to check; its length would tell how long the whole list is.
        resp.headers_mut().remove(http::header::CONTENT_LENGTH);
        return Ok(());
    }
    let owner = caller(ctx, policy)?;
    let (bytes, mut doc) = json_response::read(resp, timeout(ctx)).await?;
    let ids = list_ids(&doc, list).ok_or_else(|| Refusal::UnreadableResponse {
        reason: format!("the upstream's answer has no array at {}", list.items),
    })?;
    let keys = ids
        .into_iter()
        .map(|id| id.and_then(|id| record_key(&policy.namespace, &id).ok()));
    let lookups = owned_items(
        &ctx.services.state,
        keys,
        &owner,
        SystemTime::now(),
        ctx.snapshot.limits.timeout,
    );
    let keep = match lookups.await {
        Ok(keep) => keep,
        Err(e) => {
            // Failing open, the answer goes back as the upstream gave it.
            state_failed(ctx, policy, e)?;
            json_response::replace_body(resp, bytes);
            return Ok(());
        }
    };
    match list.rule {
        ListRule::Refuse if keep.contains(&false) => Err(Refusal::ForeignObjects),
        ListRule::Refuse => {
            json_response::replace_body(resp, bytes);
            Ok(())
        }
        ListRule::Filter if !keep.contains(&false) => {
            json_response::replace_body(resp, bytes);
            Ok(())
        }
        ListRule::Filter => {
            if let Some(Value::Array(items)) = list.items.select_mut(&mut doc) {
                let mut flags = keep.iter();
                items.retain(|_| flags.next().copied().unwrap_or(false));
            }
            let filtered = serde_json::to_vec(&doc).map_err(|e| Refusal::Internal {
                reason: format!("a filtered list could not be written: {e}"),
            })?;
            json_response::replace_body(resp, filtered.into());
            Ok(())
        }
    }
}

/// How many of a list's items are looked up at once: a Redis connection carries them in the
/// same round trips, and a list of hundreds takes a few round trips' time, not hundreds.
pub(crate) const LIST_LOOKUPS_AT_ONCE: usize = 32;

/// Whether each of a list's records (`None`: an item without a usable id) names `owner`.
/// The lookups go [`LIST_LOOKUPS_AT_ONCE`] at a time and all of them within `timeout`, the
/// time one state call may take: however long the list, a slow or silent backend holds the
/// answer that long at most, and then the route's `on_state_error` decides.
async fn owned_items<S: Ownership>(
    state: &S,
    keys: impl Iterator<Item = Option<ObjectId>>,
    owner: &Owner,
    now: SystemTime,
    timeout: Duration,
) -> Result<Vec<bool>, StateFailure> {
    use futures_util::{StreamExt as _, TryStreamExt as _};
    let lookups = keys.map(|key| async move {
        match key {
            None => Ok(false),
            Some(key) => Ok(state
                .get_for(&key, owner, now)
                .await?
                .is_some_and(|r| r.owner == *owner)),
        }
    });
    let all = futures_util::stream::iter(lookups)
        .buffered(LIST_LOOKUPS_AT_ONCE)
        .try_collect::<Vec<bool>>();
    bounded(timeout, all).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use idgate_auth::{AllowEntry, ApiKeyIdentity, TokenIdentity};
    use idgate_tls::SpiffeId;
    use serde_json::json;

    /// A store whose reads take `delay` each (or never end), counting how many run at once.
    struct Slow {
        inner: idgate_store::MemoryStore,
        delay: Option<Duration>,
        running: std::sync::atomic::AtomicUsize,
        peak: std::sync::atomic::AtomicUsize,
    }

    impl Slow {
        fn new(delay: Option<Duration>) -> Self {
            Self {
                inner: idgate_store::MemoryStore::new(),
                delay,
                running: Default::default(),
                peak: Default::default(),
            }
        }
    }

    impl Ownership for Slow {
        fn put(
            &self,
            object: &ObjectId,
            owner: &Owner,
            retention: Duration,
            now: SystemTime,
        ) -> impl Future<Output = Result<idgate_store::OwnerRecord, StoreError>> + Send {
            self.inner.put(object, owner, retention, now)
        }

        async fn get(
            &self,
            object: &ObjectId,
            now: SystemTime,
        ) -> Result<Option<idgate_store::OwnerRecord>, StoreError> {
            use std::sync::atomic::Ordering::SeqCst;
            let running = self.running.fetch_add(1, SeqCst) + 1;
            self.peak.fetch_max(running, SeqCst);
            match self.delay {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
            self.running.fetch_sub(1, SeqCst);
            self.inner.get(object, now).await
        }

        fn remove(
            &self,
            object: &ObjectId,
        ) -> impl Future<Output = Result<bool, StoreError>> + Send {
            self.inner.remove(object)
        }

        fn sweep(&self, now: SystemTime) -> impl Future<Output = Result<u64, StoreError>> + Send {
            self.inner.sweep(now)
        }
    }

    fn list_of(n: usize) -> Vec<Option<ObjectId>> {
        (0..n)
            .map(|i| (i % 7 != 6).then(|| ObjectId::new(format!("cases:{i}")).unwrap()))
            .collect()
    }

    #[tokio::test]
    async fn a_long_list_is_looked_up_many_items_at_a_time_within_one_state_timeout() {
        let store = Slow::new(Some(Duration::from_millis(20)));
        let (alice, bob) = (
            Owner::new("apikey:alice").unwrap(),
            Owner::new("apikey:bob").unwrap(),
        );
        let now = SystemTime::now();
        let ids = list_of(200);
        for (i, id) in ids.iter().enumerate() {
            if let Some(id) = id {
                let owner = if i % 2 == 0 { &alice } else { &bob };
                store
                    .put(id, owner, Duration::from_secs(60), now)
                    .await
                    .unwrap();
            }
        }
        // One at a time, 172 reads of 20 ms take 3.4 s: past the state timeout.
        let keep = owned_items(
            &store,
            ids.clone().into_iter(),
            &alice,
            now,
            Duration::from_secs(2),
        )
        .await
        .expect("the whole list within one state timeout");
        let expected: Vec<bool> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| id.is_some() && i % 2 == 0)
            .collect();
        assert_eq!(keep, expected, "each item's answer in the list's order");
        let peak = store.peak.load(std::sync::atomic::Ordering::SeqCst);
        // Items without an id hold their place in the window too.
        assert!(
            (LIST_LOOKUPS_AT_ONCE / 2..=LIST_LOOKUPS_AT_ONCE).contains(&peak),
            "{peak} reads at once"
        );
    }

    #[tokio::test]
    async fn a_backend_that_never_answers_holds_a_list_for_one_state_timeout() {
        let store = Slow::new(None);
        let alice = Owner::new("apikey:alice").unwrap();
        let timeout = Duration::from_millis(100);
        let started = std::time::Instant::now();
        let got = owned_items(
            &store,
            list_of(500).into_iter(),
            &alice,
            SystemTime::now(),
            timeout,
        )
        .await;
        assert!(
            matches!(got, Err(StateFailure::Timeout(t)) if t == timeout),
            "{got:?}"
        );
        // Item by item, each bounded on its own, this list took 43 s.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn owners_are_named_as_allow_lists_name_principals() {
        let id = SpiffeId::new("spiffe://td/ns/kyc/sa/a").unwrap();
        assert_eq!(
            owner_name(Principal::Workload(&id), &[]),
            "spiffe://td/ns/kyc/sa/a"
        );
        let key = ApiKeyIdentity {
            id: "k1".to_owned(),
            name: "batch".to_owned(),
            scopes: Vec::new(),
            workload: None,
        };
        assert_eq!(owner_name(Principal::ApiKey(&key), &[]), "apikey:batch");
        let token = TokenIdentity {
            issuer: "https://iss".to_owned(),
            subject: "u1".to_owned(),
            client_id: Some("c".to_owned()),
            scopes: Vec::new(),
            workload: None,
        };
        assert_eq!(
            owner_name(Principal::Token(&token), &[]),
            "sub:u1@https://iss"
        );
        let share = [ShareGroup {
            group: "kyc".to_owned(),
            principals: vec![AllowEntry::parse("spiffe://td/ns/kyc/*").unwrap()],
        }];
        assert_eq!(owner_name(Principal::Workload(&id), &share), "group:kyc");
        let other = SpiffeId::new("spiffe://td/ns/web/sa/b").unwrap();
        assert_eq!(
            owner_name(Principal::Workload(&other), &share),
            "spiffe://td/ns/web/sa/b"
        );
    }

    #[test]
    fn a_failing_store_refuses_unless_the_route_fails_open() {
        let policy = |fail_open| OwnershipPolicy {
            namespace: OwnershipNamespace::new("didit").unwrap(),
            retention: Duration::from_secs(60),
            share: std::sync::Arc::new([]),
            fail_open,
        };
        let failure = || StateFailure::Store(StoreError::ReadOnly);
        let refused = on_state_error("r", &policy(false), failure()).unwrap_err();
        assert_eq!(
            refused.kind(),
            crate::problem::ProblemKind::StateUnavailable
        );
        assert_eq!(refused.kind().status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(on_state_error("r", &policy(true), failure()).is_ok());
        let slow = StateFailure::Timeout(Duration::from_millis(500));
        assert!(on_state_error("r", &policy(false), slow).is_err());
    }

    #[test]
    fn one_id_in_two_namespaces_is_two_records() {
        let ns = |n| OwnershipNamespace::new(n).unwrap();
        let id = ObjectId::new("1").unwrap();
        let docs = record_key(&ns("docs"), &id).unwrap();
        let cases = record_key(&ns("cases"), &id).unwrap();
        assert_eq!((docs.as_str(), cases.as_str()), ("docs:1", "cases:1"));
        // An id holding the separator stays inside its namespace.
        let tricky = record_key(&ns("a"), &ObjectId::new("b:c").unwrap()).unwrap();
        assert_eq!(tricky.as_str(), "a:b:c");
        assert_ne!(
            tricky,
            record_key(&ns("a.b"), &ObjectId::new("c").unwrap()).unwrap()
        );
    }

    #[test]
    fn an_id_at_the_stores_key_limit_is_still_keyed_within_its_namespace() {
        let ns = |n| OwnershipNamespace::new(n).unwrap();
        let longest_ns = "n".repeat(idgate_config::MAX_NAMESPACE_LEN);
        // The longest plain key: the namespace, ':' and the id fill the store's limit.
        let fits = ObjectId::new("x".repeat(MAX_KEY_LEN - 5)).unwrap();
        let plain = record_key(&ns("docs"), &fits).unwrap();
        assert_eq!(plain.as_str().len(), MAX_KEY_LEN);
        assert!(plain.as_str().starts_with("docs:x"));
        // Past it, the id's digest stands for it: the longest id the store takes alone is
        // taken beside the longest namespace, and still told apart from its neighbours.
        let longest = ObjectId::new("x".repeat(MAX_KEY_LEN)).unwrap();
        let hashed = record_key(&ns(&longest_ns), &longest).unwrap();
        assert_eq!(hashed.as_str().len(), longest_ns.len() + 1 + 64);
        assert!(hashed.as_str().starts_with(&format!("{longest_ns}#")));
        let neighbour = ObjectId::new(format!("{}y", "x".repeat(MAX_KEY_LEN - 1))).unwrap();
        assert_ne!(hashed, record_key(&ns(&longest_ns), &neighbour).unwrap());
        assert_ne!(
            record_key(&ns("docs"), &longest).unwrap(),
            record_key(&ns("cases"), &longest).unwrap()
        );
        let one_more = record_key(
            &ns("docs"),
            &ObjectId::new("x".repeat(MAX_KEY_LEN - 4)).unwrap(),
        );
        assert!(one_more.unwrap().as_str().starts_with("docs#"));
    }

    #[test]
    fn a_record_kept_before_namespaces_names_no_caller_of_any_namespace() {
        let ns = |n| OwnershipNamespace::new(n).unwrap();
        // The owners records named alone, and namespaces that read like their beginnings.
        for legacy in [
            "spiffe://example.org/ns/web/sa/portal",
            "apikey:batch",
            "sub:u1@https://iss",
            "group:kyc",
        ] {
            let owner = Owner::new(legacy).unwrap();
            for n in ["didit", "spiffe", "apikey", "sub", "group", "cases"] {
                let now = owner_in(&ns(n), &owner).unwrap();
                assert_eq!(now.as_str(), format!("{n}|{legacy}"));
                assert_ne!(now.as_str(), legacy);
            }
        }
        // The longest owner the store takes alone is taken beside the longest namespace.
        let longest = Owner::new("o".repeat(MAX_KEY_LEN)).unwrap();
        let long_ns = ns(&"n".repeat(idgate_config::MAX_NAMESPACE_LEN));
        let hashed = owner_in(&long_ns, &longest).unwrap();
        assert!(hashed.as_str().starts_with(&format!("{long_ns}#")));
    }

    #[test]
    fn list_ids_reads_each_item_or_nothing() {
        let list = ListOwnership {
            rule: ListRule::Filter,
            items: JsonPath::parse("$.results").unwrap(),
            id: JsonPath::parse("$.session_id").unwrap(),
        };
        let doc = json!({"results": [{"session_id": "a"}, {"x": 1}, {"session_id": 7}, 3]});
        let ids: Vec<Option<String>> = list_ids(&doc, &list)
            .unwrap()
            .into_iter()
            .map(|i| i.map(|i| i.as_str().to_owned()))
            .collect();
        assert_eq!(ids, [Some("a".into()), None, Some("7".into()), None]);
        assert!(list_ids(&json!({"results": {}}), &list).is_none());
        assert!(list_ids(&json!([]), &list).is_none());
    }
}
