//! JWT access tokens from a real OAuth 2.0 server of the ecosystem: an Authlib
//! authorization server (`fixtures/authlib_server.py`, Flask integration, client credentials
//! grant, RFC 9068 tokens signed RS256, PS256, ES256 and EdDSA) on loopback. Tokens are
//! fetched with a real HTTP client and verified by `idgate_auth::jwt::JwtVerifier`, which
//! finds the JWKS through the server's discovery document; then the same tokens, tampered
//! with and forged in the ways attackers do, are refused.
//!
//! Authlib and Flask are installed by `scripts/setup-test-deps.sh`; missing, they fail the
//! test with that hint rather than skip it.
//!
//! This module holds the Authlib server and the helpers the tests share; each submodule tests
//! one concern.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gateway;
mod verifier;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use idgate_auth::AuthFailure;
use idgate_auth::jwt::{IssuerConfig, JwtVerifier};
use serde_json::Value;

use crate::support::*;

/// The authlib server takes a while to start.
const LIMIT: Duration = Duration::from_secs(90);

async fn within<T>(test: impl Future<Output = T>) -> T {
    within_limit(LIMIT, test).await
}
const AUDIENCE: &str = "idgate";
const SCOPES: &str = "sessions:read sessions:write";

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/fixtures/authlib_server.py")
}

/// The Authlib server as a child process; killed on drop (and it exits by itself when its
/// stdin closes, should the test process die first).
struct AuthlibIdp {
    child: Child,
    _stdin: ChildStdin,
    issuer: String,
}

impl Drop for AuthlibIdp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AuthlibIdp {
    fn start() -> Self {
        let (code, out, err) = run_bounded(
            Command::new("python3").args(["-c", "import authlib, flask"]),
            Duration::from_secs(30),
        );
        assert_eq!(
            code, 0,
            "python3 with Authlib and Flask is not usable here ({out}{err}); run scripts/setup-test-deps.sh to install the test dependencies"
        );
        let mut child = Command::new("python3")
            .arg(fixture())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the Authlib server");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        // Keep draining stderr (the request log), so the server never blocks on a full pipe.
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log2.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let issuer = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(Ok(line))) if line.starts_with("READY ") => line["READY ".len()..].to_owned(),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the Authlib server did not start ({other:?}):\n{}",
                    log.lock().unwrap()
                );
            }
        };
        Self {
            child,
            _stdin: stdin,
            issuer,
        }
    }

    fn port(&self) -> u16 {
        self.issuer.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// A client credentials grant with HTTP Basic client authentication: the access token.
    async fn token(&self, client_id: &str, scope: &str) -> String {
        let basic = STANDARD.encode(format!("{client_id}:{client_id}-secret"));
        let form = format!(
            "grant_type=client_credentials&scope={}",
            scope.replace(' ', "+").replace(':', "%3A")
        );
        let (status, body) = http1(
            self.port(),
            http::Request::post("/oauth/token")
                .header("host", format!("127.0.0.1:{}", self.port()))
                .header("authorization", format!("Basic {basic}"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(form)))
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "token endpoint: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["token_type"]
                .as_str()
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("bearer")
        );
        v["access_token"].as_str().expect("access_token").to_owned()
    }

    async fn get(&self, path: &str) -> String {
        let (status, body) = http1(
            self.port(),
            http::Request::get(path)
                .header("host", format!("127.0.0.1:{}", self.port()))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// A verifier for this issuer, its keys found through discovery.
    fn verifier(&self) -> JwtVerifier {
        JwtVerifier::new(
            vec![IssuerConfig::new(
                "authlib",
                &self.issuer,
                vec![AUDIENCE.into()],
            )],
            vec![],
        )
        .expect("verifier")
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port`: (status, body).
async fn http1(port: u16, req: http::Request<Full<Bytes>>) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let resp = send.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn decode_json(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// The refusal reason, or a panic if the token was accepted.
async fn refusal(v: &JwtVerifier, token: &str, now: SystemTime) -> &'static str {
    match v.verify(token, now).await {
        Err(AuthFailure::InvalidToken(why)) => why,
        Err(other) => panic!("unexpected failure {other:?}"),
        Ok(id) => panic!("a forged or unfit token was accepted: {id:?}"),
    }
}
