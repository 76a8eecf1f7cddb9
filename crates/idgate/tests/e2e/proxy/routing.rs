//! Routing and default deny: method and path templates, allow lists, and the 403, 404 and
//! 405 problems.

use crate::support::*;

use super::{DECISION, KYC_BARE, KYCX, REVIEW, Setup, assert_problem};

#[tokio::test]
async fn routes_by_method_and_path_template() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        let c = s.client(Some(ONBOARDING));

        let got = c.get(DECISION).await.unwrap();
        assert_eq!(got.status, 200, "{:?}", got.body);
        assert_eq!(got.header("x-upstream"), Some("test"));
        let seen = s.upstream.last();
        assert_eq!(
            (seen.method.as_str(), seen.path_and_query.as_str()),
            ("GET", DECISION)
        );

        let created = c
            .send(
                "POST",
                "/v2/session/",
                &[("content-type", "application/json")],
                r#"{"a":1}"#,
            )
            .await
            .unwrap();
        assert_eq!(created.status, 200, "{:?}", created.body);
        let seen = s.upstream.last();
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.path_and_query, "/v2/session/");
        assert_eq!(&seen.body[..], br#"{"a":1}"#);
        assert_eq!(s.upstream.requests().len(), 2);
    })
    .await
}

#[tokio::test]
async fn unknown_path_gets_404_problem() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        let c = s.client(Some(ONBOARDING));
        for path in [
            "/",
            "/v3/session/abc/decision",
            "/v3/session/abc/decision/extra",
            "/v3/session/",
            "/v2/session/x/",
            "/nothing/here",
        ] {
            let r = c.get(path).await.unwrap();
            let p = assert_problem(&r, 404, &[]);
            assert_eq!(p["type"], "https://idgate.dev/problems/no-route", "{path}");
        }
        assert!(s.upstream.requests().is_empty());
    })
    .await
}

#[tokio::test]
async fn wrong_method_gets_405_problem_with_allow_header() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        let c = s.client(Some(FRONTEND));

        let r = c.send("DELETE", "/v1/profile/7", &[], "").await.unwrap();
        assert_problem(&r, 405, &[]);
        let allow: Vec<&str> = r
            .header("allow")
            .expect("a 405 carries an Allow header")
            .split(',')
            .map(str::trim)
            .collect();
        assert_eq!(allow, ["GET", "PUT"]);

        let r = c.send("POST", DECISION, &[], "").await.unwrap();
        assert_problem(&r, 405, &[]);
        assert_eq!(r.header("allow"), Some("GET"));

        let r = c.get("/v2/session/").await.unwrap();
        assert_problem(&r, 405, &[]);
        assert_eq!(r.header("allow"), Some("POST"));
        assert!(s.upstream.requests().is_empty());
    })
    .await
}

#[tokio::test]
async fn authenticated_caller_not_on_allow_list_gets_403_problem() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        let r = s.client(Some(FRONTEND)).get(DECISION).await.unwrap();
        let p = assert_problem(&r, 403, &[]);
        assert_eq!(p["type"], "https://idgate.dev/problems/forbidden");

        let r = s
            .client(Some(ONBOARDING))
            .get("/v1/profile/1")
            .await
            .unwrap();
        assert_problem(&r, 403, &[]);
        let r = s
            .client(Some(REVIEW))
            .send("POST", "/v2/session/", &[], "{}")
            .await
            .unwrap();
        assert_problem(&r, 403, &[]);
        assert!(
            s.upstream.requests().is_empty(),
            "a denied request must not reach the upstream"
        );
    })
    .await
}

#[tokio::test]
async fn exact_and_prefix_allow_entries_admit_their_callers() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        // Prefix `spiffe://example.org/ns/kyc/*`.
        for id in [ONBOARDING, REVIEW] {
            let r = s.client(Some(id)).get(DECISION).await.unwrap();
            assert_eq!(r.status, 200, "{id}: {:?}", r.body);
        }
        // Exact entries.
        let r = s.client(Some(FRONTEND)).get("/v1/profile/9").await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        let r = s
            .client(Some(ONBOARDING))
            .send("POST", "/v2/session/", &[], "{}")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(s.upstream.requests().len(), 4);
    })
    .await
}

#[tokio::test]
async fn prefix_allow_entry_matches_whole_segments_only() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        // `.../ns/kycx/...` shares the characters but not the segment; `.../ns/kyc` is the
        // prefix itself with nothing under it.
        for id in [KYCX, KYC_BARE] {
            let r = s.client(Some(id)).get(DECISION).await.unwrap();
            assert_eq!(r.status, 403, "{id} passed `spiffe://example.org/ns/kyc/*`");
            assert_problem(&r, 403, &[]);
        }
        assert!(s.upstream.requests().is_empty());
    })
    .await
}
