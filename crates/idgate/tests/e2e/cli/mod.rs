//! The `idgate` command line: help, `check` reporting every problem with its file, key path
//! and reason, `dev-pki`, `hsm`, `serve` refusing an invalid configuration before it
//! starts, and the operator's tools reading only the secrets they use.
//!
//! This module holds the workspace and helpers the tests share; each submodule tests one
//! command.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod check;
mod dev_pki;
mod help;
mod hsm;
mod operator_tools;
mod serve;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(30);

/// A directory with a dev PKI in `pki/` and room for configuration files.
struct Workspace {
    dir: tempfile::TempDir,
    pki: DevPkiPaths,
}

struct DevPkiPaths {
    bundle: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Workspace {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = Pki::generate_into(&dir.path().join("pki"), TD, &[ONBOARDING]);
        Self {
            pki: DevPkiPaths {
                bundle: files.bundle,
                cert: files.gateway_cert,
                key: files.gateway_key,
            },
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    /// Writes `config` as `name`.
    fn write_config(&self, name: &str, config: &GatewayConfig) -> PathBuf {
        self.write(name, &config.to_toml())
    }

    /// `[listener]`, `[identity]` and `[admin]` that are valid (both listeners on port 0),
    /// with the bundle for example.org and no `[log]`.
    fn base(&self) -> GatewayConfig {
        GatewayConfig::new(&self.pki.cert, &self.pki.key).trust(TD, &self.pki.bundle)
    }
}

/// An upstream that is never dialled, whose credential is `secret` in `x-api-key`.
fn upstream(name: &str, secret: &str) -> UpstreamSpec {
    UpstreamSpec::new(name, "https://127.0.0.1:9")
        .credential(CredentialSpec::header("x-api-key", secret))
}

/// `GET path` to `upstream`, allowed for `allow`.
fn route(name: &str, path: &str, upstream: &str, allow: &str) -> RouteSpec {
    RouteSpec::new(name, &["GET"], path, upstream, &[allow])
}

/// Never set anywhere, so `env:` of it is a missing secret.
const UNSET_ENV: &str = "IDGATE_E2E_SECRET_THAT_IS_NEVER_SET";
const SET_ENV: &str = "IDGATE_E2E_SECRET";

fn check(ws: &Workspace, config: &Path) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("check")
        .arg("--config")
        .arg(config)
        .current_dir(ws.dir.path())
        .env_remove(UNSET_ENV)
        .env(SET_ENV, "provider-key-for-check");
    run_bounded(&mut cmd, LIMIT)
}

/// The problems in `output` that are missing: each expected (key path, reason fragment)
/// must be on one line that also names the file, as `FILE: KEY: REASON`.
fn missing_problems<'a>(
    output: &str,
    file: &Path,
    expected: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let file = file.display().to_string();
    expected
        .iter()
        .filter(|(key, reason)| {
            !output
                .lines()
                .any(|l| l.contains(&format!("{file}: {key}: ")) && l.contains(reason))
        })
        .copied()
        .collect()
}
