//! A signing scheme whose HMAC key is kept in a token (SoftHSM2) rotates as one pair with its
//! id: the key version a request is signed with is the one read together with its app token,
//! never a version `idgate hsm rotate` stored after it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::assert_eventually;
use crate::support::*;

const PATH: &str = "/v1/resources/applicants?levelName=basic-kyc";
const BODY: &str = r#"{"externalUserId":"u-1","levelName":"basic-kyc"}"#;
const OLD_TOKEN: &str = "sbx:app-token-old";
const NEW_TOKEN: &str = "sbx:app-token-new";
const OLD_SECRET: &str = "sumsub-secret-old-0123456789abcdef";
const NEW_SECRET: &str = "sumsub-secret-new-0123456789abcdef";

/// Which pair a request the upstream saw went out with: its app token, and the secret its
/// signature verifies with (`None` for neither).
fn pair_of(seen: &Seen) -> (String, Option<&'static str>) {
    let header = |name: &str| {
        seen.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let ts = header("x-app-access-ts");
    let sig = header("x-app-access-sig");
    let signed = format!("{ts}POST{PATH}{BODY}");
    let secret = [OLD_SECRET, NEW_SECRET]
        .into_iter()
        .find(|s| hex_hmac(s, signed.as_bytes()) == sig);
    (header("x-app-token"), secret)
}

fn set_mode(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_with_its_key_in_the_token_never_sends_a_new_key_with_an_old_app_token() {
    within(async {
        let token = Arc::new(SoftHsmToken::new());
        let (code, out, err) = token.hsm(
            &[
                "import-secret",
                "--kind",
                "hmac",
                "--uri",
                &token.uri("sumsub-hmac"),
            ],
            OLD_SECRET,
        );
        assert_eq!(code, 0, "{out}{err}");
        let app_token = token.dir.path().join("app-token");
        write_private(&app_token, OLD_TOKEN.as_bytes());

        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let credential = CredentialSpec {
            scheme: Some("sumsub".into()),
            secret: Some(token.uri("sumsub-hmac")),
            ..CredentialSpec::default()
        }
        .with("app_token", format!("file:{}", app_token.display()))
        .refresh_every("250ms");
        let config = base_config(&pki)
            .upstream(
                UpstreamSpec::new("sumsub", &upstream.url(true))
                    .ca(&pki.files.bundle)
                    .credential(credential),
            )
            .route(RouteSpec::new(
                "applicants",
                &["POST"],
                "/v1/{*rest}",
                "sumsub",
                &[ONBOARDING],
            ));
        let conf = token.conf();
        let gw = Gateway::start(&config, &[("SOFTHSM2_CONF", conf.to_str().unwrap())]).await;

        // Requests go out all through the rotation, some of them in flight across each
        // change of the pair.
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicU32::new(0));
        let mut load = Vec::new();
        for _ in 0..3 {
            let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
            let (stop, failures) = (stop.clone(), failures.clone());
            load.push(tokio::spawn(async move {
                let mut conn = client.connect().await.unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let headers = [("content-type", "application/json")];
                    match conn.send("POST", PATH, &headers, BODY).await {
                        Ok(r) if r.status == 200 => {}
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        assert_eventually!(
            upstream.requests().len() >= 10,
            "no load reached the upstream:\n{}",
            gw.output()
        );

        // The operator holds the app token back (a mode the gateway refuses) while rotating,
        // so that no refresh falls between the two steps: the gateway sees them as one.
        let warned = || {
            gw.output()
                .matches("cannot refresh upstream credential")
                .count()
        };
        let before = warned();
        set_mode(&app_token, 0o644);
        assert_eventually!(warned() > before, "no failed refresh:\n{}", gw.output());

        // The key rotates in the token; the app token has not changed yet, so the pair
        // must not change either while requests keep going out.
        let rotating = token.clone();
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            rotating.hsm(
                &["rotate", "--uri", &rotating.uri("sumsub-hmac")],
                NEW_SECRET,
            )
        })
        .await
        .unwrap();
        assert_eq!(code, 0, "{out}{err}");
        let rotated = upstream.requests().len();
        assert_eventually!(
            upstream.requests().len() >= rotated + 20 && warned() >= before + 3,
            "too few requests after the key's rotation:\n{}",
            gw.output()
        );

        // The new app token arrives: the new pair goes out whole.
        write_private(&app_token, NEW_TOKEN.as_bytes());
        assert_eventually!(
            pair_of(&upstream.last()) == (NEW_TOKEN.to_owned(), Some(NEW_SECRET)),
            "the new pair never went out:\n{}",
            gw.output()
        );
        let switched = upstream.requests().len();
        assert_eventually!(
            upstream.requests().len() >= switched + 10,
            "too few requests after the switch:\n{}",
            gw.output()
        );
        stop.store(true, Ordering::Relaxed);
        for t in load {
            t.await.unwrap();
        }

        let seen = upstream.requests();
        let mut mixed = Vec::new();
        let (mut old, mut new) = (0, 0);
        for s in &seen {
            match pair_of(s) {
                (t, Some(OLD_SECRET)) if t == OLD_TOKEN => old += 1,
                (t, Some(NEW_SECRET)) if t == NEW_TOKEN => new += 1,
                (t, secret) => mixed.push((t, secret)),
            }
        }
        assert!(
            mixed.is_empty(),
            "{} of {} requests went out with a mixed pair, the first: {:?}",
            mixed.len(),
            seen.len(),
            mixed[0]
        );
        assert!(old > 0 && new > 0, "old {old}, new {new}");
        assert_eq!(failures.load(Ordering::Relaxed), 0, "{}", gw.output());
        let out = gw.output();
        assert!(
            !out.contains("sbx:app-token") && !out.contains("sumsub-secret-"),
            "{out}"
        );
    })
    .await;
}
