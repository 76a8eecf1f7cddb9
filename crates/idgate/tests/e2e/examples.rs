//! The configurations in `examples/` are valid as shipped: each is copied into a fresh
//! directory, given the dev PKI and the secrets `examples/README.md` tells a reader to
//! create (same commands, same names, same modes), and `idgate check` must accept it.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::*;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The `idgate dev-pki` arguments of examples/README.md, with `--out` left to the caller.
const DEV_PKI: &[&str] = &[
    "--trust-domain",
    "example.org",
    "--workload",
    "spiffe://example.org/ns/kyc/sa/onboarding",
    "--workload",
    "spiffe://example.org/ns/web/sa/frontend",
];

/// The URI of examples/didit-hsm.toml and examples/README.md.
const HSM_URI: &str = "pkcs11:token=idgate;object=didit-api-key?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:pki/hsm-pin";

/// A secret the setup creates: an environment variable or a 0600 file under `pki/`.
enum Secret {
    Env(&'static str),
    File(&'static str),
    /// A PKCS#8 P-256 private key file, as `openssl genpkey` writes it.
    EcKeyFile(&'static str),
    /// 32 random bytes in hex, as `openssl rand -hex 32` writes them (an AES-256 key).
    HexKeyFile(&'static str),
}

/// Every example with what examples/README.md says it needs.
fn examples() -> Vec<(&'static str, Vec<Secret>)> {
    use Secret::*;
    vec![
        ("quickstart.toml", vec![Env("DIDIT_API_KEY")]),
        ("minimal.toml", vec![Env("DIDIT_API_KEY")]),
        ("ownership.toml", vec![Env("DIDIT_API_KEY")]),
        (
            "kyc-minimal.toml",
            vec![Env("DIDIT_API_KEY"), File("pseudonym-key")],
        ),
        // Its secret lives in a SoftHSM2 token, set up by `hsm_token`.
        ("didit-hsm.toml", vec![]),
        (
            "layered-auth.toml",
            vec![
                Env("DIDIT_API_KEY"),
                File("api-key-pepper"),
                EcKeyFile("token-signing.pem"),
                File("batch-client-secret"),
            ],
        ),
        (
            "sumsub-veriff.toml",
            vec![
                Env("SUMSUB_APP_TOKEN"),
                Env("VERIFF_API_KEY"),
                File("sumsub-secret-key"),
                File("veriff-shared-secret"),
            ],
        ),
        (
            "webhooks.toml",
            vec![
                File("didit-webhook-secret"),
                HexKeyFile("outbox-key"),
                File("kyc-backend-secret"),
                File("crm-secret"),
            ],
        ),
        (
            "other-providers.toml",
            vec![
                Env("ONFIDO_API_TOKEN"),
                Env("PERSONA_API_KEY"),
                Env("AML_CLIENT_SECRET"),
            ],
        ),
    ]
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// A value no one would mistake for another, to look for in the output.
fn marker(name: &str) -> String {
    format!(
        "example-secret-{}",
        name.to_ascii_lowercase().replace(['_', '.'], "-")
    )
}

/// A copy of one example in a fresh directory with the dev PKI in `pki/`.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    env: Vec<(String, String)>,
    markers: Vec<String>,
}

impl Setup {
    fn new(example: &str, secrets: &[Secret]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join(example);
        std::fs::copy(examples_dir().join(example), &config).unwrap();
        // The JSON Schemas routes name, beside the configuration as in examples/.
        let schemas = dir.path().join("schemas");
        std::fs::create_dir(&schemas).unwrap();
        for entry in std::fs::read_dir(examples_dir().join("schemas")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), schemas.join(entry.file_name())).unwrap();
        }
        let pki = dir.path().join("pki");
        let (code, out, err) = run(Command::new(bin())
            .arg("dev-pki")
            .arg("--out")
            .arg(&pki)
            .args(DEV_PKI));
        assert_eq!(code, 0, "idgate dev-pki: {out}{err}");
        let mut env = Vec::new();
        let mut markers = Vec::new();
        for s in secrets {
            match s {
                Secret::Env(name) => {
                    env.push(((*name).to_owned(), marker(name)));
                    markers.push(marker(name));
                }
                Secret::File(name) => {
                    // At least 32 bytes: the API key pepper's minimum.
                    let value = format!("{}-{}", marker(name), "0123456789abcdef".repeat(2));
                    write_private(&pki.join(name), value.as_bytes());
                    markers.push(marker(name));
                }
                Secret::HexKeyFile(name) => {
                    let path = pki.join(name);
                    let (code, out, err) = run(Command::new("openssl")
                        .args(["rand", "-hex", "-out"])
                        .arg(&path)
                        .arg("32"));
                    assert_eq!(code, 0, "openssl rand: {out}{err}");
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                        .unwrap();
                }
                Secret::EcKeyFile(name) => {
                    let path = pki.join(name);
                    let (code, out, err) = run(Command::new("openssl")
                        .args(["genpkey", "-algorithm", "EC", "-pkeyopt"])
                        .arg("ec_paramgen_curve:P-256")
                        .arg("-out")
                        .arg(&path));
                    assert_eq!(code, 0, "openssl genpkey: {out}{err}");
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                        .unwrap();
                }
            }
        }
        Self {
            dir,
            config,
            env,
            markers,
        }
    }

    /// `idgate check --config <copy>`, started from elsewhere: relative paths must be read
    /// from the configuration's own directory.
    fn check(&self, extra_env: &[(&str, &Path)]) -> (i32, String, String) {
        let mut cmd = Command::new(bin());
        cmd.arg("check")
            .arg("--config")
            .arg(&self.config)
            .current_dir(std::env::temp_dir())
            .env_remove("IDGATE_CONFIG")
            .env_remove("IDGATE_LOG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        run(&mut cmd)
    }
}

/// Sets up a SoftHSM2 token as examples/README.md does, from the example's directory, and
/// imports a made-up API key under the example's URI. Returns the SoftHSM2 configuration.
fn hsm_token(dir: &Path) -> PathBuf {
    assert!(
        Path::new(MODULE).exists(),
        "SoftHSM2 is not installed: run scripts/setup-test-deps.sh"
    );
    let tokens = dir.join("pki/tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("pki/softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}\n", tokens.display()),
    )
    .unwrap();
    write_private(&dir.join("pki/hsm-so-pin"), b"5678");
    write_private(&dir.join("pki/hsm-pin"), b"1234");
    let (code, out, err) = run(Command::new(bin())
        .current_dir(dir)
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "hsm",
            "init-token",
            "--module-path",
            MODULE,
            "--label",
            "idgate",
        ])
        .args([
            "--so-pin-file",
            "pki/hsm-so-pin",
            "--pin-file",
            "pki/hsm-pin",
        ]));
    assert_eq!(code, 0, "idgate hsm init-token: {out}{err}");

    let mut import = Command::new(bin())
        .args(["hsm", "import-secret", "--uri", HSM_URI])
        .current_dir(dir)
        .env("SOFTHSM2_CONF", &conf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = import.stdin.take().unwrap();
        stdin
            .write_all(format!("{}\n", marker("didit-hsm")).as_bytes())
            .unwrap();
    }
    let out = import.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "idgate hsm import-secret: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    conf
}

fn assert_valid(example: &str, setup: &Setup, (code, out, err): (i32, String, String)) {
    assert_eq!(
        code, 0,
        "idgate check refused examples/{example}:\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        out.contains(&format!("{example}: valid (")),
        "examples/{example}: {out}"
    );
    for m in &setup.markers {
        assert!(
            !out.contains(m) && !err.contains(m),
            "examples/{example}: a secret value was printed:\n{out}{err}"
        );
    }
}

#[test]
fn every_example_config_passes_check_with_the_documented_setup() {
    for (example, secrets) in examples() {
        let setup = Setup::new(example, &secrets);
        let result = if example == "didit-hsm.toml" {
            let conf = hsm_token(setup.dir.path());
            setup.check(&[("SOFTHSM2_CONF", conf.as_path())])
        } else {
            setup.check(&[])
        };
        assert_valid(example, &setup, result);
    }
}

#[test]
fn every_example_in_the_directory_is_covered_and_documented() {
    let listed: Vec<&str> = examples().iter().map(|(e, _)| *e).collect();
    let readme = std::fs::read_to_string(examples_dir().join("README.md")).unwrap();
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".toml") {
            assert!(
                listed.contains(&name.as_str()),
                "examples/{name} is not checked by this test: add it to examples()"
            );
            assert!(
                readme.contains(&format!("]({name})")),
                "examples/README.md does not list {name}"
            );
        }
    }
    // The setup here is the setup the README gives a reader.
    let dev_pki = format!("idgate dev-pki --out examples/pki {}", DEV_PKI.join(" "));
    assert!(
        readme.contains(&dev_pki),
        "examples/README.md no longer says `{dev_pki}`"
    );
    assert!(
        readme.contains(HSM_URI),
        "examples/README.md lacks {HSM_URI}"
    );
    for (example, secrets) in examples() {
        for s in secrets {
            let name = match s {
                Secret::Env(n) => n.to_owned(),
                Secret::File(n) | Secret::EcKeyFile(n) | Secret::HexKeyFile(n) => {
                    format!("examples/pki/{n}")
                }
            };
            assert!(
                readme.contains(&name),
                "examples/README.md does not say how to provide {name} for {example}"
            );
        }
    }
}

#[test]
fn an_example_without_its_secrets_is_refused_naming_the_key() {
    let setup = Setup::new("minimal.toml", &[]);
    let (code, out, err) = {
        let mut cmd = Command::new(bin());
        cmd.arg("check")
            .arg("--config")
            .arg(&setup.config)
            .env_remove("DIDIT_API_KEY")
            .env_remove("IDGATE_LOG");
        run(&mut cmd)
    };
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("DIDIT_API_KEY"), "{err}");
}
