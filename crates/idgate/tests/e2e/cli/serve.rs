//! `idgate serve` refusing an invalid configuration before it starts.

use std::process::Command;

use crate::support::*;

use super::{LIMIT, SET_ENV, UNSET_ENV, Workspace, route, upstream};

#[test]
fn serve_with_an_invalid_config_exits_2_and_prints_the_problems_without_starting() {
    let ws = Workspace::new();
    let mut invalid_file = ws
        .base()
        .upstream(upstream("provider", &format!("env:{SET_ENV}")))
        .route(route("r", "/r", "no-such-upstream", ONBOARDING));
    invalid_file
        .listener
        .extra
        .insert("tls_min_version".into(), "1.0".into());
    // Valid as a file, but the secret it needs is missing: refused before binding as well.
    let missing_secret = ws
        .base()
        .upstream(upstream("provider", &format!("env:{UNSET_ENV}")))
        .route(route("r", "/r", "provider", ONBOARDING));
    for (name, text, expected) in [
        (
            "invalid.toml",
            invalid_file,
            &["listener.tls_min_version", "routes[0].upstream"][..],
        ),
        ("missing-secret.toml", missing_secret, &[UNSET_ENV][..]),
    ] {
        let config = ws.write_config(name, &text);
        // The gateway writes this file once it has bound its listeners and serves.
        let ready_file = ws.path(&format!("{name}.ready"));
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready_file)
            .env_remove("IDGATE_LOG")
            .env_remove(UNSET_ENV)
            .env(SET_ENV, "provider-key-for-serve");
        let (code, out, err) = run_bounded(&mut cmd, LIMIT);
        let all = format!("{out}{err}");
        assert_eq!(code, 2, "{name}: {all}");
        for e in expected {
            assert!(
                all.contains(e),
                "{name}: the output does not name {e:?}:\n{all}"
            );
        }
        assert!(!all.contains("serving"), "{name}: it started:\n{all}");
        // The listeners bind port 0, so no port number could tell whether they were bound;
        // the ready file would.
        assert!(
            !ready_file.exists(),
            "{name}: the gateway reported its listeners bound"
        );
    }
}
