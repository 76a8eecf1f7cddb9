//! `idgate demo`: the whole path in one command, on this machine only. A development PKI,
//! the demo API key in SoftHSM2 (or a 0600 file when SoftHSM2 is missing), the mock provider
//! and the gateway as child processes, one verification round trip as an allowed workload
//! and one attempt by a workload that is not allowed — told step by step — then it keeps
//! running with the `curl` lines to try it by hand, until Ctrl-C.

use anyhow::anyhow;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use idgate_tls::devpki::{self, DevPkiRequest};
use idgate_tls::{SpiffeId, TrustDomain};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const TRUST_DOMAIN: &str = "demo.idgate.test";
const ALLOWED: &str = "spiffe://demo.idgate.test/ns/kyc/sa/onboarding";
const DENIED: &str = "spiffe://demo.idgate.test/ns/marketing/sa/newsletter";
const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const WORKFLOW_ID: &str = idgate_mock_provider::DEFAULT_WORKFLOW_ID;

/// Child processes, killed when the demo ends however it ends.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn step(n: u32, text: &str) {
    println!("\n[{n}] {text}");
}

fn say(text: &str) {
    println!("    {text}");
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    f.write_all(contents)
        .map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// `n` random bytes in hex, for the demo's API key and token PINs: a failing random source
/// stops the demo rather than hand out a key of zeros.
fn random_hex(n: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
        .map_err(|_| anyhow!("the system random source failed"))?;
    Ok(idgate_codec::hex::encode(&buf))
}

pub(crate) fn run(keep_running: bool, port: Option<u16>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(demo(keep_running, port)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\ndemo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(keep_running: bool, port: Option<u16>) -> anyhow::Result<()> {
    let exe = std::env::current_exe().map_err(|e| anyhow!("cannot find the idgate binary: {e}"))?;
    let tmp = tempfile::Builder::new()
        .prefix("idgate-demo-")
        .tempdir()
        .map_err(|e| anyhow!("cannot create a temporary directory: {e}"))?;
    let dir = tmp.path();
    println!(
        "idgate demo — everything happens in {} and on 127.0.0.1 only.",
        dir.display()
    );

    step(
        1,
        "Creating a development PKI (what SPIRE does in production).",
    );
    let pki = devpki::generate(
        &dir.join("pki"),
        &DevPkiRequest {
            trust_domain: TrustDomain::new(TRUST_DOMAIN)?,
            workloads: [ALLOWED, DENIED]
                .iter()
                .map(|id| SpiffeId::new(id).map_err(anyhow::Error::from))
                .collect::<Result<_, _>>()?,
            validity: Duration::from_secs(24 * 3600),
        },
    )?;
    say(&format!(
        "trust domain {TRUST_DOMAIN}, CA bundle {}",
        pki.bundle.display()
    ));
    say(&format!("gateway SVID {}", pki.gateway_id));
    say(&format!("workload SVID {ALLOWED}   (will be allowed)"));
    say(&format!("workload SVID {DENIED}   (will not be allowed)"));

    step(
        2,
        "Storing the provider's API key where only the gateway can use it.",
    );
    let api_key = format!("demo_{}", random_hex(16)?);
    let key_file = dir.join("provider-api-key");
    write_private(&key_file, api_key.as_bytes())?;
    let mut gateway_env: Vec<(&str, String)> = Vec::new();
    let secret_ref = match store_in_softhsm(&exe, dir, &api_key) {
        Ok((uri, conf)) => {
            say(
                "SoftHSM2 found: the key is wrapped (AES-256-GCM) under a non-extractable key in a PKCS#11 token.",
            );
            say(
                "The gateway decrypts it inside the token; the key is not in its configuration or environment.",
            );
            gateway_env.push(("SOFTHSM2_CONF", conf.display().to_string()));
            uri
        }
        Err(why) => {
            say(&format!(
                "SoftHSM2 not used ({why}); keeping the key in a 0600 file instead."
            ));
            say("Install softhsm2 (apt-get install softhsm2) to see the HSM custody.");
            format!("file:{}", key_file.display())
        }
    };

    let mut children = Children(Vec::new());
    step(
        3,
        "Starting the mock identity-verification provider (speaks the Didit v3 API).",
    );
    // Port 0: the system picks a free port, and the mock prints the URL it got.
    let mut provider = Command::new(&exe)
        .arg("mock-provider")
        .args(["--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(&pki.gateway_cert)
        .arg("--tls-key")
        .arg(&pki.gateway_key)
        .arg("--api-key-file")
        .arg(&key_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow!("cannot start the mock provider: {e}"))?;
    let stdout = provider.stdout.take();
    children.0.push(provider);
    let provider_port = mock_port(stdout).await?;
    say(&format!(
        "https://127.0.0.1:{provider_port} — it accepts only requests carrying the API key."
    ));

    step(4, "Starting the gateway.");
    // Without --port, port 0: the gateway reports the ports it got in its ready file.
    let config_path = dir.join("idgate.toml");
    let ready_file = dir.join("ready.json");
    std::fs::write(
        &config_path,
        demo_config(&pki, port.unwrap_or(0), provider_port, &secret_ref),
    )
    .map_err(|e| anyhow!("{}: {e}", config_path.display()))?;
    let log_path = dir.join("idgate.log");
    let log = std::fs::File::create(&log_path)?;
    let gateway = Command::new(&exe)
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .arg("--ready-file")
        .arg(&ready_file)
        .envs(gateway_env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("IDGATE_LOG")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| anyhow!("cannot start the gateway: {e}"))?;
    children.0.push(gateway);
    let bound = wait_ready(&ready_file, &log_path).await?;
    let (port, admin_port) = (bound.listener.port(), bound.admin.port());
    say(&format!(
        "listening on https://localhost:{port} (mutual TLS), config {}",
        config_path.display()
    ));
    say("routes: POST /v3/session/ and GET /v3/session/{id}/decision/, allowed only for");
    say(&format!("        {ALLOWED}"));

    step(5, "Round trip as the allowed workload.");
    let allowed = client_config(&pki.bundle, &pki.workloads[0].1, &pki.workloads[0].2)?;
    let body = format!(r#"{{"workflow_id":"{WORKFLOW_ID}","vendor_data":"demo-user-42"}}"#);
    let (status, json) = request(&allowed, port, "POST", "/v3/session/", &body, &[]).await?;
    say(&format!(
        "POST /v3/session/            → {status}  (the gateway added the API key on the way out)"
    ));
    let session_id = json
        .get("session_id")
        .and_then(|v| v.as_str())
        .ok_or_else(|| anyhow!("the provider did not create a session: {json}"))?
        .to_owned();
    say(&format!(
        "session_id {session_id}, status \"{}\"",
        json.get("status").and_then(|s| s.as_str()).unwrap_or("?")
    ));
    // The person being verified works on the provider's own page, not through the gateway;
    // the mock provider plays them (a route of its own, not Didit's API).
    let step_path = format!("/mock/session/{session_id}/status/");
    for to in ["In Progress", "Approved"] {
        let body = format!(r#"{{"status":"{to}"}}"#);
        let key = [("x-api-key", api_key.as_str())];
        let (status, _) = request(&allowed, provider_port, "POST", &step_path, &body, &key).await?;
        if status != 200 {
            return Err(anyhow!(
                "the mock provider did not move the session to {to}: {status}"
            ));
        }
    }
    say(
        "the person verifies on the provider's page (the mock plays them): In Progress, then Approved",
    );
    let path = format!("/v3/session/{session_id}/decision/");
    let (status, json) = request(&allowed, port, "GET", &path, "", &[]).await?;
    say(&format!("GET  {path} → {status}"));
    say(&format!(
        "decision status \"{}\" with {} ID verification(s)",
        json.get("status").and_then(|s| s.as_str()).unwrap_or("?"),
        json.get("id_verifications")
            .and_then(|v| v.as_array())
            .map_or(0, Vec::len)
    ));

    step(
        6,
        "The same request from a workload that is not on the route's allow list.",
    );
    let denied = client_config(&pki.bundle, &pki.workloads[1].1, &pki.workloads[1].2)?;
    let (status, json) = request(&denied, port, "GET", &path, "", &[]).await?;
    say(&format!("GET  {path} → {status}"));
    say(&format!(
        "problem: {} — {}",
        json.get("title").and_then(|s| s.as_str()).unwrap_or("?"),
        json.get("detail").and_then(|s| s.as_str()).unwrap_or("?")
    ));

    let leaked = std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains(&api_key);
    step(7, "Checking the gateway's log for the API key.");
    say(if leaked {
        "FOUND — this is a bug."
    } else {
        "Not there: the log has the caller, route, status and credential version only."
    });
    if leaked {
        return Err(anyhow!("the API key appeared in the gateway log"));
    }

    if !keep_running {
        println!("\nDone.");
        return Ok(());
    }
    let (ac, ak) = (&pki.workloads[0].1, &pki.workloads[0].2);
    let (dc, dk) = (&pki.workloads[1].1, &pki.workloads[1].2);
    let b = pki.bundle.display();
    println!("\nThe demo keeps running. Try it yourself:");
    println!("\n  # allowed workload: create a session, then fetch its decision");
    println!(
        "  curl --cert {} --key {} --cacert {b} -H 'content-type: application/json' -d '{body}' https://localhost:{port}/v3/session/",
        ac.display(),
        ak.display()
    );
    println!(
        "  curl --cert {} --key {} --cacert {b} https://localhost:{port}{path}",
        ac.display(),
        ak.display()
    );
    println!("\n  # a workload that is not allowed: 403 problem+json");
    println!(
        "  curl --cert {} --key {} --cacert {b} https://localhost:{port}{path}",
        dc.display(),
        dk.display()
    );
    println!("\n  # no client certificate: the TLS handshake is refused");
    println!("  curl --cacert {b} https://localhost:{port}{path}");
    println!("\n  # health and metrics (admin listener, loopback only)");
    println!(
        "  curl http://127.0.0.1:{admin_port}/readyz; curl http://127.0.0.1:{admin_port}/metrics"
    );
    println!("\n  gateway log: {}", log_path.display());
    println!("\nPress Ctrl-C to stop; the temporary directory is removed.");
    let _ = tokio::signal::ctrl_c().await;
    println!("\nStopping.");
    drop(children);
    Ok(())
}

/// Creates a SoftHSM2 token in `dir` and imports the key through `idgate hsm`, returning
/// the `pkcs11:` reference and the SoftHSM2 configuration file.
fn store_in_softhsm(exe: &Path, dir: &Path, api_key: &str) -> anyhow::Result<(String, PathBuf)> {
    if !Path::new(SOFTHSM_MODULE).exists() {
        return Err(anyhow!("{SOFTHSM_MODULE} is missing"));
    }
    let tokens = dir.join("tokens");
    std::fs::create_dir(&tokens)?;
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}\n", tokens.display()),
    )?;
    let pin = random_hex(8)?;
    let so_pin = random_hex(8)?;
    let pin_file = dir.join("hsm-pin");
    write_private(&pin_file, pin.as_bytes())?;
    // The SO PIN goes through stdin; the user PIN through the file the gateway reads.
    let mut init = Command::new(exe)
        .args(["hsm", "init-token", "--module-path", SOFTHSM_MODULE])
        .args(["--label", "idgate-demo", "--pin-file"])
        .arg(&pin_file)
        .env("SOFTHSM2_CONF", &conf)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = init.stdin.take() {
        stdin.write_all(format!("{so_pin}\n").as_bytes())?;
    }
    let out = init.wait_with_output()?;
    if !out.status.success() {
        return Err(anyhow!(
            "could not create a token: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let uri = format!(
        "pkcs11:token=idgate-demo;object=didit-api-key?module-path={SOFTHSM_MODULE}&pin-source=file:{}",
        pin_file.display()
    );
    let mut import = Command::new(exe)
        .args(["hsm", "import-secret", "--uri", &uri])
        .env("SOFTHSM2_CONF", &conf)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = import.stdin.take() {
        stdin.write_all(api_key.as_bytes())?;
    }
    let out = import.wait_with_output()?;
    if !out.status.success() {
        return Err(anyhow!(
            "import failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok((uri, conf))
}

fn demo_config(pki: &devpki::DevPkiFiles, port: u16, provider: u16, secret: &str) -> String {
    format!(
        r#"# Written by `idgate demo`.
workers = 1

[listener]
bind = "127.0.0.1:{port}"
client_auth = "required"

[identity]
svid_cert = "{cert}"
svid_key = "{key}"

[[identity.trust_bundles]]
trust_domain = "{TRUST_DOMAIN}"
bundle = "{bundle}"

[admin]
bind = "127.0.0.1:0"

[log]
format = "text"

[[upstreams]]
name = "didit"
url = "https://127.0.0.1:{provider}"
ca = "{bundle}"
[upstreams.credential]
header = "x-api-key"
secret = "{secret}"

[[routes]]
name = "create-session"
methods = ["POST"]
path = "/v3/session/"
upstream = "didit"
allow = ["{ALLOWED}"]

[[routes]]
name = "session-decision"
methods = ["GET"]
path = "/v3/session/{{session_id}}/decision/"
upstream = "didit"
allow = ["spiffe://{TRUST_DOMAIN}/ns/kyc/*"]
"#,
        cert = pki.gateway_cert.display(),
        key = pki.gateway_key.display(),
        bundle = pki.bundle.display(),
    )
}

/// The port in the mock provider's first line on stdout, `listening on
/// https://127.0.0.1:PORT (didit)`, printed once it is bound. The rest of its stdout is
/// read away so that the mock never writes into a full pipe.
async fn mock_port(stdout: Option<std::process::ChildStdout>) -> anyhow::Result<u16> {
    let stdout = stdout.ok_or_else(|| anyhow!("the mock provider has no stdout"))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = tx.send(reader.read_line(&mut line).map(|_| line));
        let _ = reader.read_to_end(&mut Vec::new());
    });
    let line = match tokio::time::timeout(Duration::from_secs(10), rx).await {
        Ok(Ok(Ok(line))) => line,
        Ok(Ok(Err(e))) => return Err(anyhow!("cannot read the mock provider's output: {e}")),
        Ok(Err(_)) | Err(_) => return Err(anyhow!("the mock provider did not start listening")),
    };
    line.strip_prefix("listening on https://")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse::<SocketAddr>().ok())
        .map(|addr| addr.port())
        .ok_or_else(|| anyhow!("the mock provider did not say where it listens: {line:?}"))
}

/// The addresses in the gateway's ready file.
#[derive(serde::Deserialize)]
struct Bound {
    listener: SocketAddr,
    admin: SocketAddr,
}

/// Waits for the gateway's ready file, written once both listeners are bound and it serves.
async fn wait_ready(ready_file: &Path, log: &Path) -> anyhow::Result<Bound> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read(ready_file) {
            return serde_json::from_slice(&text)
                .map_err(|e| anyhow!("{}: {e}", ready_file.display()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(anyhow!(
        "the gateway did not become ready; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    ))
}

fn client_config(
    bundle: &Path,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(bundle)? {
        roots.add(c?)?;
    }
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let cfg = rustls::ClientConfig::builder_with_provider(idgate_tls::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(cfg))
}

async fn request(
    cfg: &Arc<rustls::ClientConfig>,
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, serde_json::Value)> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("localhost")?;
    let tls = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| anyhow!("TLS: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned())))?;
    let resp = send.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}
