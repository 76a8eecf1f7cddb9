//! Outside clients against the gateway: `curl` (OpenSSL, HTTP/1.1 and HTTP/2) and Python
//! `requests`, each with and without a workload SVID. They must work with nothing but the
//! PEM files `idgate dev-pki` writes.
//!
//! Both tools are installed by `scripts/setup-test-deps.sh`; a missing one fails the test
//! with that hint rather than skipping it.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::assert_eventually;
use crate::support::*;

const LIMIT: Duration = Duration::from_secs(30);
const PATH: &str = "/v3/session/abc-123/decision/?from=outside";

/// A gateway in front of a recording upstream with one route for the `ns/kyc/*` workloads.
struct Setup {
    pki: Pki,
    upstream: TestUpstream,
    gw: Gateway,
}

impl Setup {
    async fn start() -> Self {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let gw = OneRoute::kyc_decision(&upstream.url(true))
            .start(&pki, &[("TEST_PROVIDER_KEY", "prov-key-outside")])
            .await;
        Self { pki, upstream, gw }
    }

    fn url(&self) -> String {
        self.gw.url(PATH)
    }

    fn bundle(&self) -> PathBuf {
        self.pki.files.bundle.clone()
    }
}

fn require_tool(cmd: &mut Command, what: &str) {
    let (code, out, err) = run_bounded(cmd, LIMIT);
    assert_eq!(
        code, 0,
        "{what} is not usable here ({out}{err}); run scripts/setup-test-deps.sh to install the test dependencies"
    );
}

/// Runs a blocking command off the async runtime (the upstream serves on it).
async fn run_off_runtime(mut cmd: Command) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || run_bounded(&mut cmd, LIMIT))
        .await
        .expect("command task")
}

/// curl printing `<status> <http version>` on the last line, the body before it.
fn curl(args: &[&str]) -> Command {
    require_tool(Command::new("curl").arg("--version"), "curl");
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "-w",
        "\n%{http_code} %{http_version}",
    ])
    .args(args);
    cmd
}

fn status_line(out: &str) -> (&str, &str) {
    let last = out.rsplit_once('\n').map_or(out, |(_, last)| last);
    let mut it = last.split_whitespace();
    (it.next().unwrap_or(""), it.next().unwrap_or(""))
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_with_an_svid_gets_200_over_http1_and_http2() {
    let s = Setup::start().await;
    let (crt, key) = s.pki.workload(ONBOARDING);
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let mut cmd = curl(&[flag]);
        cmd.arg("--cacert")
            .arg(s.bundle())
            .arg("--cert")
            .arg(&crt)
            .arg("--key")
            .arg(&key)
            .arg(s.url());
        let (code, out, err) = run_off_runtime(cmd).await;
        assert_eq!(code, 0, "curl {flag} failed: {err}\n{out}");
        assert_eq!(status_line(&out), ("200", version), "curl {flag}: {out}");
        assert!(
            out.contains("\"upstream\":\"test\""),
            "the upstream's body: {out}"
        );
        let seen = s.upstream.last();
        assert_eq!(seen.path_and_query, PATH);
        assert_eq!(seen.headers.get("x-api-key").unwrap(), "prov-key-outside");
    }
    assert_eq!(s.upstream.requests().len(), 2);
}

/// A `HEAD` answer has no content, also when the gateway makes it (a problem: the route takes
/// `GET` only, no route has the path): over HTTP/2 a DATA frame after its head is a stream
/// error for the client.
#[tokio::test(flavor = "multi_thread")]
async fn curl_gets_a_head_answer_without_content_over_http1_and_http2() {
    let s = Setup::start().await;
    let (crt, key) = s.pki.workload(ONBOARDING);
    for (url, status) in [(s.url(), "405"), (s.gw.url("/nowhere"), "404")] {
        for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
            let mut cmd = curl(&[flag, "-I"]);
            cmd.arg("--cacert")
                .arg(s.bundle())
                .arg("--cert")
                .arg(&crt)
                .arg("--key")
                .arg(&key)
                .arg(&url);
            let (code, out, err) = run_off_runtime(cmd).await;
            assert_eq!(code, 0, "curl {flag} -I {url}: {err}\n{out}");
            assert_eq!(
                status_line(&out),
                (status, version),
                "curl {flag} -I: {out}"
            );
            assert!(
                out.to_ascii_lowercase()
                    .contains("content-type: application/problem+json"),
                "{out}"
            );
        }
    }
    assert!(s.upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_without_a_client_certificate_is_refused() {
    let s = Setup::start().await;
    for flag in ["--http1.1", "--http2"] {
        let mut cmd = curl(&[flag]);
        cmd.arg("--cacert").arg(s.bundle()).arg(s.url());
        let (code, out, err) = run_off_runtime(cmd).await;
        assert_ne!(
            code, 0,
            "curl {flag} without a certificate succeeded: {out}"
        );
        let (status, _) = status_line(&out);
        assert!(
            !status.starts_with('2'),
            "curl {flag} without a certificate got {status}: {out}{err}"
        );
    }
    assert!(s.upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_with_a_not_allowed_svid_gets_403_problem_json() {
    let s = Setup::start().await;
    let (crt, key) = s.pki.workload(FRONTEND);
    let headers = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = curl(&["--http2", "-D"]);
    cmd.arg(headers.path())
        .arg("--cacert")
        .arg(s.bundle())
        .arg("--cert")
        .arg(&crt)
        .arg("--key")
        .arg(&key)
        .arg(s.url());
    let (code, out, err) = run_off_runtime(cmd).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(status_line(&out).0, "403", "{out}");
    let head = std::fs::read_to_string(headers.path())
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        head.contains("content-type: application/problem+json"),
        "headers:\n{head}"
    );
    let body = out.rsplit_once('\n').map_or("", |(b, _)| b);
    let p: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(p["status"], 403, "{p}");
    for k in ["type", "title", "detail", "request_id"] {
        assert!(p[k].as_str().is_some_and(|v| !v.is_empty()), "{k} in {p}");
    }
    assert!(s.upstream.requests().is_empty());
}

/// A Python `requests` GET; prints `<status>` then the body, or `ERROR <exception>`.
fn python_get(url: &str, bundle: &std::path::Path, cert: Option<(PathBuf, PathBuf)>) -> Command {
    require_tool(
        Command::new("python3").args(["-c", "import requests"]),
        "python3 with the `requests` package",
    );
    const SCRIPT: &str = r#"
import sys, requests
url, ca = sys.argv[1], sys.argv[2]
cert = (sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else None
try:
    r = requests.get(url, cert=cert, verify=ca, timeout=20)
except Exception as e:
    print("ERROR", type(e).__name__, e)
    sys.exit(3)
print(r.status_code)
print(r.headers.get("content-type", ""))
print(r.text)
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", SCRIPT, url]).arg(bundle);
    if let Some((c, k)) = cert {
        cmd.arg(c).arg(k);
    }
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn python_requests_with_an_svid_gets_200() {
    let s = Setup::start().await;
    let cmd = python_get(&s.url(), &s.bundle(), Some(s.pki.workload(ONBOARDING)));
    let (code, out, err) = run_off_runtime(cmd).await;
    assert_eq!(code, 0, "{out}{err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("200"), "{out}");
    assert_eq!(lines.next(), Some("application/json"), "{out}");
    assert!(out.contains("\"upstream\":\"test\""), "{out}");
    assert_eq!(s.upstream.last().path_and_query, PATH);
}

#[tokio::test(flavor = "multi_thread")]
async fn python_requests_without_a_client_certificate_fails() {
    let s = Setup::start().await;
    let cmd = python_get(&s.url(), &s.bundle(), None);
    let (code, out, err) = run_off_runtime(cmd).await;
    assert_eq!(code, 3, "expected a TLS error, got: {out}{err}");
    assert!(out.starts_with("ERROR"), "{out}");
    assert!(s.upstream.requests().is_empty());
}

// ------------------------------------------------------------------ refusals with a body

/// A gateway refusing uploads three ways: `POST /v1/*` allows only ONBOARDING (403 for
/// FRONTEND, 401 without a certificate: client certificates are optional), and
/// `POST /signed/*` signs with veriff and takes at most 1 KiB (413).
struct Uploads {
    pki: Pki,
    upstream: TestUpstream,
    gw: Gateway,
}

impl Uploads {
    async fn start() -> Self {
        let pki = Pki::new(TD, &[ONBOARDING, FRONTEND]);
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let url = upstream.url(true);
        let mut config = OneRoute {
            url: &url,
            methods: &["POST"],
            ..OneRoute::default()
        }
        .config(&pki)
        .upstream(
            UpstreamSpec::new("signed", &url)
                .ca(&pki.files.bundle)
                .with("max_body_bytes", 1024)
                .credential(CredentialSpec::scheme(
                    "veriff",
                    "env:VERIFF_CLIENT",
                    "env:VERIFF_SECRET",
                )),
        )
        .route(RouteSpec::new(
            "signed",
            &["POST"],
            "/signed/{*rest}",
            "signed",
            &[ONBOARDING],
        ));
        config.listener.client_auth = ClientAuth::Optional;
        let gw = Gateway::start(
            &config,
            &[
                ("VERIFF_CLIENT", "veriff-client"),
                ("VERIFF_SECRET", "veriff-secret-0123456789"),
            ],
        )
        .await;
        Self { pki, upstream, gw }
    }

    /// (what, path, client identity, expected status)
    fn refusals(&self) -> [(&'static str, String, Option<&'static str>, u16); 3] {
        [
            (
                "not allowed",
                self.gw.url("/v1/upload"),
                Some(FRONTEND),
                403,
            ),
            ("no certificate", self.gw.url("/v1/upload"), None, 401),
            (
                "too large",
                self.gw.url("/signed/upload"),
                Some(ONBOARDING),
                413,
            ),
        ]
    }
}

/// A body file of `kib` KiB.
fn body_file(kib: usize) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), vec![b'x'; kib * 1024]).unwrap();
    f
}

fn assert_problem(body: &str, status: u16, what: &str) {
    let p: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{what}: not a problem ({e}): {body:?}"));
    assert_eq!(p["status"], status, "{what}: {p}");
    assert!(
        p["type"].as_str().is_some_and(|t| !t.is_empty()),
        "{what}: {p}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_sees_the_problem_when_an_upload_is_refused_over_http1_and_http2() {
    let s = Uploads::start().await;
    // Below curl's 1 MiB `Expect: 100-continue` threshold, so the body is sent at once.
    let body = body_file(1000);
    for (what, url, id, status) in s.refusals() {
        for flag in ["--http1.1", "--http2"] {
            let mut cmd = curl(&[flag, "--data-binary"]);
            cmd.arg(format!("@{}", body.path().display()))
                .args(["-H", "content-type: application/octet-stream"])
                .arg("--cacert")
                .arg(&s.pki.files.bundle);
            if let Some(id) = id {
                let (crt, key) = s.pki.workload(id);
                cmd.arg("--cert").arg(crt).arg("--key").arg(key);
            }
            cmd.arg(&url);
            let (code, out, err) = run_off_runtime(cmd).await;
            assert_eq!(code, 0, "{what}, curl {flag}: {err}\n{out}");
            assert_eq!(
                status_line(&out).0,
                status.to_string(),
                "{what}, {flag}: {out}"
            );
            assert_problem(out.rsplit_once('\n').map_or("", |(b, _)| b), status, what);
        }
    }
    assert!(s.upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn python_requests_sees_the_problem_when_an_upload_is_refused() {
    require_tool(
        Command::new("python3").args(["-c", "import requests"]),
        "python3 with the `requests` package",
    );
    const SCRIPT: &str = r#"
import sys, requests
url, ca, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
cert = (sys.argv[4], sys.argv[5]) if len(sys.argv) > 5 else None
try:
    r = requests.post(url, data=b"x" * size, cert=cert, verify=ca, timeout=20)
except Exception as e:
    print("ERROR", type(e).__name__, e)
    sys.exit(3)
print(r.status_code)
print(r.text)
"#;
    let s = Uploads::start().await;
    // Read away beside the answer (100 KiB, 1000 KiB), and beyond that (8 MiB): `requests`
    // sends the whole body before it reads the answer.
    for kib in [100, 1000, 8 * 1024] {
        for (what, url, id, status) in s.refusals() {
            let mut cmd = Command::new("python3");
            cmd.args(["-c", SCRIPT, &url])
                .arg(&s.pki.files.bundle)
                .arg((kib * 1024).to_string());
            if let Some(id) = id {
                let (crt, key) = s.pki.workload(id);
                cmd.arg(crt).arg(key);
            }
            let (code, out, err) = run_off_runtime(cmd).await;
            assert_eq!(code, 0, "{what}, {kib} KiB: {out}{err}");
            let (first, body) = out.split_once('\n').unwrap_or((&out, ""));
            assert_eq!(first, status.to_string(), "{what}, {kib} KiB: {out}");
            assert_problem(body.trim_end(), status, what);
        }
    }
    assert!(s.upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_over_http1_sees_the_problem_for_an_upload_beyond_what_is_read_away() {
    let s = Uploads::start().await;
    let body = body_file(8 * 1024);
    let (crt, key) = s.pki.workload(FRONTEND);
    // With `Expect: 100-continue` (curl's default above 1 MiB) and without it, so that the
    // body is on its way when the answer comes. Whether the close resets the connection
    // before curl reads the answer is a race: run it a few times.
    for round in 0..10 {
        for expect in ["Expect: 100-continue", "Expect:"] {
            let headers = tempfile::NamedTempFile::new().unwrap();
            let mut cmd = curl(&["--http1.1", "--data-binary"]);
            cmd.arg(format!("@{}", body.path().display()))
                .args(["-H", expect, "-D"])
                .arg(headers.path())
                .arg("--cacert")
                .arg(&s.pki.files.bundle)
                .arg("--cert")
                .arg(&crt)
                .arg("--key")
                .arg(&key)
                .arg(s.gw.url("/v1/upload"));
            let (code, out, err) = run_off_runtime(cmd).await;
            let what = format!("{expect}, round {round}");
            assert_eq!(code, 0, "{what}: {err}\n{out}");
            assert_eq!(status_line(&out).0, "403", "{what}: {out}");
            assert_problem(out.rsplit_once('\n').map_or("", |(b, _)| b), 403, &what);
            let head = std::fs::read_to_string(headers.path())
                .unwrap()
                .to_ascii_lowercase();
            assert!(head.contains("connection: close"), "{what}:\n{head}");
        }
    }
}

/// A refused upload over a raw TLS connection: the head of a POST of `FRONTEND`'s announcing
/// 8 MiB (beyond what is read away, so the answer closes the connection), and 256 KiB of it.
async fn start_refused_upload(
    s: &Uploads,
) -> (
    tokio::io::ReadHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    tokio::io::WriteHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
) {
    use tokio::io::AsyncWriteExt;
    let client = Client::new(&s.pki, Some(FRONTEND), s.gw.port, false);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.gw.port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(client.config)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (answer_side, mut body_side) = tokio::io::split(tls);
    let head = format!(
        "POST /v1/upload HTTP/1.1\r\nhost: localhost\r\n\
         content-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
        8 * 1024 * 1024
    );
    body_side.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..4 {
        body_side.write_all(&[b'x'; 64 * 1024]).await.unwrap();
    }
    (answer_side, body_side)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_still_sending_a_refused_upload_reads_the_answer_before_the_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(async {
        let s = Uploads::start().await;
        let (mut answer_side, mut body_side) = start_refused_upload(&s).await;
        let piece = vec![b'x'; 64 * 1024];
        // The answer and the close come meanwhile, with part of the body unread. The caller,
        // busy uploading, goes on sending slowly and reads the answer only now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sending = tokio::spawn(async move {
            for _ in 0..10 {
                body_side.write_all(&piece).await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<_, std::io::Error>(body_side)
        });
        let mut answer = Vec::new();
        let read = answer_side.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        read.unwrap_or_else(|e| panic!("the answer ended in {e} after {answer:?}"));
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 403"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert_problem(body, 403, "read after the close");
        // Every piece sent while the answer was unread reached a gateway still reading.
        let sent = sending.await.unwrap();
        sent.unwrap_or_else(|e| panic!("the upload was reset before its answer was read: {e}"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_that_never_stops_sending_a_refused_upload_is_closed_after_a_few_seconds() {
    use tokio::io::AsyncWriteExt;
    within(async {
        let s = Uploads::start().await;
        let (_answer_side, mut body_side) = start_refused_upload(&s).await;
        // Never silent and never reading: the lingering close ends at its time bound.
        let piece = vec![b'x'; 16 * 1024];
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            while body_side.write_all(&piece).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(ended.is_ok(), "the connection was still open after 20 s");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_sees_the_problem_when_an_upload_finds_the_upstream_busy() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Delay(Duration::from_secs(4))).await;
    let gw = OneRoute {
        url: &upstream.url(true),
        upstream_extra: toml::toml! {
            max_connections = 1
            max_pending = 0
        },
        methods: &["GET", "POST"],
        ..OneRoute::default()
    }
    .start(&pki, &[])
    .await;
    // One slow request holds the upstream's only connection.
    let holder = Client::new(&pki, Some(ONBOARDING), gw.port, false);
    let held = tokio::spawn(async move { holder.get("/v1/hold").await });
    assert_eventually!(
        upstream.requests().len() == 1,
        "the first request never reached the upstream"
    );
    // The refusal comes after the body was handed on towards the upstream: it is read away
    // all the same, so the client shows the answer.
    let body = body_file(1000);
    let (crt, key) = pki.workload(ONBOARDING);
    for flag in ["--http1.1", "--http2"] {
        let mut cmd = curl(&[flag, "--data-binary"]);
        cmd.arg(format!("@{}", body.path().display()))
            .arg("--cacert")
            .arg(&pki.files.bundle)
            .arg("--cert")
            .arg(&crt)
            .arg("--key")
            .arg(&key)
            .arg(gw.url("/v1/upload"));
        let (code, out, err) = run_off_runtime(cmd).await;
        assert_eq!(code, 0, "curl {flag}: {err}\n{out}");
        assert_eq!(status_line(&out).0, "503", "{flag}: {out}");
        assert_problem(out.rsplit_once('\n').map_or("", |(b, _)| b), 503, flag);
    }
    assert_eq!(held.await.unwrap().unwrap().status, 200);
}
