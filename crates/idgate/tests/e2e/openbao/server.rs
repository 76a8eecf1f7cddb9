//! A running OpenBao dev server with its own TLS certificate and audit log, and a check that
//! the audit log records what the tests rely on.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

const ROOT_TOKEN: &str = "idgate-test-root";

/// A running `bao server -dev`, killed on drop.
pub(crate) struct OpenBao {
    child: Child,
    dir: tempfile::TempDir,
    /// `https://127.0.0.1:PORT`
    pub(crate) addr: String,
    /// The dev server's own CA, for the gateway's `[vault] ca`.
    pub(crate) ca: PathBuf,
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that is free, and whose next port is free too (the dev server's cluster listener).
///
/// The one port the tests pick before a server binds it: the OpenBao dev server takes its
/// cluster listener at the next port up, so it cannot be given port 0, and it names the
/// address it bound nowhere a test could read before it answers. A port taken between this
/// check and the server's bind fails that start, and [`OpenBao::start`] tries again.
fn free_port_pair() -> u16 {
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port")
    };
    loop {
        let port = free_port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

impl OpenBao {
    /// Starts a dev server and waits until it answers. Blocking (a few hundred ms).
    pub(crate) fn start() -> Self {
        assert!(
            Command::new("bao")
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "OpenBao is not installed (`bao`): run scripts/setup-test-deps.sh"
        );
        // A port taken between the check and the server's bind fails the start: try again.
        for _ in 0..3 {
            if let Some(bao) = Self::try_start() {
                return bao;
            }
        }
        panic!("the OpenBao dev server did not start");
    }

    fn try_start() -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port_pair();
        let tls = dir.path().join("tls");
        std::fs::create_dir(&tls).expect("tls dir");
        // Audit devices are declared in configuration only (OpenBao refuses them over the API).
        let audit = dir.path().join("audit.hcl");
        std::fs::write(
            &audit,
            format!(
                "audit \"file\" \"file\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
                dir.path().join("audit.log").display()
            ),
        )
        .expect("audit.hcl");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("server.log");
        let child = Command::new("bao")
            .args(["server", "-dev", "-dev-tls"])
            .arg(format!("-dev-tls-cert-dir={}", tls.display()))
            .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg(format!("-config={}", audit.display()))
            // The dev server stores its root token in $HOME: keep that in the temp dir.
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn bao server");
        let mut bao = Self {
            child,
            addr: format!("https://127.0.0.1:{port}"),
            ca: tls.join("vault-ca.pem"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if bao.child.try_wait().ok().flatten().is_some() {
                return None;
            }
            if bao.ca.exists() && bao.try_api("GET", "/v1/sys/health", None, None, None).0 == 200 {
                return Some(bao);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the OpenBao dev server did not answer within 20 s:\n{}",
            bao.server_log()
        );
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// One HTTP API call (with curl): (status, JSON body or null).
    fn try_api(
        &self,
        method: &str,
        path: &str,
        namespace: Option<&str>,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&self.ca)
            .args(["-X", method, "-w", "\n%{http_code}"]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("X-Vault-Token: {t}")]);
        }
        if let Some(ns) = namespace {
            cmd.args(["-H", &format!("X-Vault-Namespace: {ns}")]);
        }
        if let Some(b) = body {
            cmd.args(["-H", "content-type: application/json", "-d", &b.to_string()]);
        }
        let (_, out, _) = run(cmd.arg(format!("{}{path}", self.addr)));
        let (body, status) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
        (
            status.parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }

    /// A call with the root token that must succeed: its JSON answer.
    pub(crate) fn api(
        &self,
        method: &str,
        path: &str,
        namespace: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let (status, answer) =
            self.try_api(method, path, namespace, Some(ROOT_TOKEN), body.as_ref());
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        answer
    }

    /// Writes a new version of a KV v2 secret at the dev server's `secret/` mount (or the
    /// namespace's); returns its version.
    pub(crate) fn kv_put(&self, namespace: Option<&str>, path: &str, data: Value) -> u64 {
        let answer = self.api(
            "POST",
            &format!("/v1/secret/data/{path}"),
            namespace,
            Some(json!({ "data": data })),
        );
        answer["data"]["version"].as_u64().expect("KV version")
    }

    /// A policy that may read every secret under `secret/idgate/`.
    fn read_policy(&self, namespace: Option<&str>) {
        self.api(
            "PUT",
            "/v1/sys/policies/acl/idgate",
            namespace,
            Some(json!({"policy": "path \"secret/data/idgate/*\" { capabilities = [\"read\"] }"})),
        );
    }

    /// A token with the read policy (`ttl` zero: the server's default).
    pub(crate) fn token(&self, namespace: Option<&str>, ttl: Duration) -> String {
        self.read_policy(namespace);
        let mut body = json!({"policies": ["idgate"], "renewable": true});
        if !ttl.is_zero() {
            body["ttl"] = json!(format!("{}s", ttl.as_secs()));
        }
        let answer = self.api("POST", "/v1/auth/token/create", namespace, Some(body));
        answer["auth"]["client_token"]
            .as_str()
            .expect("client_token")
            .to_owned()
    }

    /// Enables AppRole with a role whose tokens live at most `max_ttl`: (role_id, secret_id).
    pub(crate) fn approle(&self, max_ttl: Duration) -> (String, String) {
        self.read_policy(None);
        self.api(
            "POST",
            "/v1/sys/auth/approle",
            None,
            Some(json!({"type": "approle"})),
        );
        self.api(
            "POST",
            "/v1/auth/approle/role/idgate",
            None,
            Some(json!({
                "token_policies": ["idgate"],
                "token_max_ttl": format!("{}s", max_ttl.as_secs()),
            })),
        );
        let role = self.api("GET", "/v1/auth/approle/role/idgate/role-id", None, None);
        let secret = self.api(
            "POST",
            "/v1/auth/approle/role/idgate/secret-id",
            None,
            Some(json!({})),
        );
        (
            role["data"]["role_id"]
                .as_str()
                .expect("role_id")
                .to_owned(),
            secret["data"]["secret_id"]
                .as_str()
                .expect("secret_id")
                .to_owned(),
        )
    }

    /// The audit log's responses to requests on `path` (relative to its namespace).
    fn answers(&self, path: &str) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["type"] == "response" && e["request"]["path"] == path)
            .collect()
    }

    /// Successful answers to requests on `path` (reads and writes alike).
    pub(crate) fn granted(&self, path: &str) -> usize {
        self.answers(path)
            .iter()
            .filter(|e| e.get("error").is_none_or(Value::is_null))
            .count()
    }

    /// Requests on `path` refused because of the token (unknown, expired or revoked).
    pub(crate) fn denied(&self, path: &str) -> usize {
        self.answers(path)
            .iter()
            .filter(|e| {
                e["error"]
                    .as_str()
                    .is_some_and(|s| s.contains("permission denied"))
            })
            .count()
    }
}

/// The audit log is what the tests above rely on to see refusals: make sure it records them.
#[test]
fn openbao_audit_log_records_refused_and_granted_reads() {
    let bao = OpenBao::start();
    bao.kv_put(None, "idgate/x", json!({"k": "v"}));
    let (status, _) = bao.try_api("GET", "/v1/secret/data/idgate/x", None, Some("nope"), None);
    assert_eq!(status, 403);
    let token = bao.token(None, Duration::ZERO);
    let (status, answer) = bao.try_api("GET", "/v1/secret/data/idgate/x", None, Some(&token), None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(bao.denied("secret/data/idgate/x"), 1);
    // The write, then the read.
    assert_eq!(bao.granted("secret/data/idgate/x"), 2);
}
