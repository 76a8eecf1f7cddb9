//! A SoftHSM2 token store for the PKCS#11 tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{bin, write_private};

/// The SoftHSM2 PKCS#11 module (Debian's `softhsm2` package).
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A SoftHSM2 token store in a temporary directory, with one token labelled `idgate` whose
/// user PIN is in a 0600 file.
pub struct SoftHsmToken {
    pub dir: tempfile::TempDir,
}

impl SoftHsmToken {
    /// A token labelled `idgate` (user PIN 1234, SO PIN 5678), initialised with
    /// `idgate hsm init-token` in a store of its own.
    pub fn new() -> Self {
        let t = Self::empty();
        let (code, out, err) = t.hsm(
            &[
                "init-token",
                "--module-path",
                SOFTHSM_MODULE,
                "--label",
                "idgate",
            ],
            "5678\n1234\n",
        );
        assert_eq!(code, 0, "{out}{err}");
        write_private(&t.dir.path().join("pin"), b"1234");
        t
    }

    /// A SoftHSM2 store of its own (`SOFTHSM2_CONF` and token directory) with no token yet.
    pub fn empty() -> Self {
        assert!(
            Path::new(SOFTHSM_MODULE).exists(),
            "SoftHSM2 is not installed: run scripts/setup-test-deps.sh"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("tokens")).expect("token dir");
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!("directories.tokendir = {}/tokens\n", dir.path().display()),
        )
        .expect("softhsm2.conf");
        Self { dir }
    }

    /// The `SOFTHSM2_CONF` file to give every process that opens the token.
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    /// The `pkcs11:` reference of `object` in this token.
    pub fn uri(&self, object: &str) -> String {
        format!(
            "pkcs11:token=idgate;object={object}?module-path={SOFTHSM_MODULE}&pin-source=file:{}",
            self.dir.path().join("pin").display()
        )
    }

    /// Runs `idgate hsm <args>` with `stdin` as the secret: (exit code, stdout, stderr).
    pub fn hsm(&self, args: &[&str], stdin: &str) -> (i32, String, String) {
        use std::io::Write;
        let mut child = Command::new(bin())
            .arg("hsm")
            .args(args)
            .env("SOFTHSM2_CONF", self.conf())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("idgate hsm");
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin.as_bytes()).expect("stdin");
        }
        let out = child.wait_with_output().expect("idgate hsm output");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `idgate hsm <args> --uri <object's URI>` and insists it succeeds.
    pub fn hsm_ok(&self, args: &[&str], object: &str, stdin: &str) {
        let uri = self.uri(object);
        let mut all = args.to_vec();
        all.extend(["--uri", uri.as_str()]);
        let (code, out, err) = self.hsm(&all, stdin);
        assert_eq!(code, 0, "idgate hsm {args:?}: {out}{err}");
    }

    /// The token's own directory in the store (SoftHSM2 names it after a UUID).
    pub fn token_dir(&self) -> PathBuf {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("tokens"))
            .expect("token store")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        assert_eq!(dirs.len(), 1, "one token directory expected: {dirs:?}");
        dirs.remove(0)
    }
}
