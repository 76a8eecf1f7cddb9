//! The gateway under test: `idgate serve` as a child process, started from a typed
//! configuration and ready once it writes its ready file; its admin listener and JSON logs.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{ONBOARDING, Pki, bin};
use crate::config::*;

/// The configuration most tests start from (see [`GatewayConfig::for_pki`]): listeners on
/// port 0, the PKI's gateway SVID and bundle, JSON logs at `info`.
pub fn base_config(pki: &Pki) -> GatewayConfig {
    GatewayConfig::for_pki(pki)
}

/// What `idgate serve --ready-file` wrote once it served.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct Ready {
    pub pid: u32,
    pub listener: SocketAddr,
    pub admin: SocketAddr,
}

/// The line a gateway logs at info once it serves.
const SERVING_LINE: &str = "idgate is serving";

/// How long a gateway may take to start before its test fails.
const START_LIMIT: Duration = Duration::from_secs(20);

/// How long a gateway may take to stop on SIGTERM before its test fails.
const STOP_LIMIT: Duration = Duration::from_secs(15);

/// The environment entry that sets the gateway's log filter to `trace`, for the gateway and
/// every library it logs through: what a test that proves a secret is never logged starts
/// the gateway with (see [`Gateway::assert_never_logged`]).
pub const TRACE_LOG: (&str, &str) = ("IDGATE_LOG", "trace");

/// A running `idgate serve` child process with its output captured.
pub struct Gateway {
    pub child: Child,
    /// The port the listener bound (the configuration asks for port 0).
    pub port: u16,
    pub admin_port: u16,
    pub config_path: PathBuf,
    /// Where the gateway reports its addresses (`--ready-file`).
    pub ready_file: PathBuf,
    output: Arc<Mutex<String>>,
    /// The output readers (stdout, stderr) that have not yet reached the end of their pipe.
    readers_open: Arc<AtomicUsize>,
    /// Whether the log level shows the start-up line "idgate is serving".
    says_serving: bool,
    /// The effective log filter (`IDGATE_LOG`, else `[log] level`, else `info`).
    level: String,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// Writes `config` and starts the gateway with `env`, waiting until it reports the
    /// addresses it bound.
    pub async fn start(config: &GatewayConfig, env: &[(&str, &str)]) -> Self {
        let mut gw = Self::spawn(config, env);
        gw.serving().await;
        gw
    }

    /// Waits until the gateway reports the addresses it bound (see [`Gateway::spawn`]) and,
    /// when its level shows it, until the line "idgate is serving" is in its output: the log
    /// goes out through a writer thread, so the ready file can come before the lines logged
    /// ahead of it, and a test asserting on a start-up line would race.
    pub async fn serving(&mut self) {
        let ready = self.wait_ready().await;
        self.port = ready.listener.port();
        self.admin_port = ready.admin.port();
        if self.says_serving {
            let deadline = Instant::now() + START_LIMIT;
            while !self.output().contains(SERVING_LINE) {
                assert!(
                    Instant::now() < deadline,
                    "idgate wrote its ready file but not {SERVING_LINE:?} within {START_LIMIT:?}; \
                     output:\n{}",
                    self.output()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// [`Gateway::start`] as the user `user` (uid, gid), which owns the gateway's own
    /// directory (the configuration, the ready file); the files the configuration names
    /// must be readable to it. Only root can start a process as another user.
    pub async fn start_as(config: &GatewayConfig, env: &[(&str, &str)], user: (u32, u32)) -> Self {
        let mut gw = Self::spawn_with(config, env, Some(user));
        gw.serving().await;
        gw
    }

    /// Writes `config` and starts the gateway with `env` without waiting for it to serve;
    /// `port` and `admin_port` are 0 until [`Gateway::serving`].
    pub fn spawn(config: &GatewayConfig, env: &[(&str, &str)]) -> Self {
        Self::spawn_with(config, env, None)
    }

    fn spawn_with(config: &GatewayConfig, env: &[(&str, &str)], user: Option<(u32, u32)>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("idgate.toml");
        let ready_file = dir.path().join("ready.json");
        std::fs::write(&config_path, config.to_toml()).expect("write config");
        let mut cmd = Command::new(bin());
        if let Some((uid, gid)) = user {
            use std::os::unix::process::CommandExt;
            for path in [dir.path(), &config_path] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
            }
            cmd.uid(uid).gid(gid);
        }
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--ready-file")
            .arg(&ready_file);
        cmd.env_remove("IDGATE_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        // The effective level: IDGATE_LOG when it is one (a misspelt one is ignored), else
        // `[log] level`, else info.
        let level = env
            .iter()
            .find(|(k, _)| *k == "IDGATE_LOG")
            .map(|(_, v)| *v)
            .or(config.log.as_ref().and_then(|l| l.level.as_deref()))
            .unwrap_or("info");
        let says_serving = !["warn", "error", "off"]
            .iter()
            .any(|quiet| level.trim().starts_with(quiet));
        let mut child = cmd.spawn().expect("spawn idgate");
        let output = Arc::new(Mutex::new(String::new()));
        let readers_open = Arc::new(AtomicUsize::new(0));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = output.clone();
            let open = readers_open.clone();
            open.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = out.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
        Self {
            child,
            port: 0,
            admin_port: 0,
            config_path,
            ready_file,
            output,
            readers_open,
            says_serving,
            level: level.trim().to_owned(),
            _dir: dir,
        }
    }

    /// Waits for the ready file (written whole, by a rename), failing with the gateway's
    /// output if it exits first or takes longer than [`START_LIMIT`].
    async fn wait_ready(&mut self) -> Ready {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Ok(text) = std::fs::read(&self.ready_file) {
                let ready: Ready = serde_json::from_slice(&text).unwrap_or_else(|e| {
                    panic!(
                        "the ready file is not the expected JSON ({e}): {}",
                        String::from_utf8_lossy(&text)
                    )
                });
                assert_eq!(
                    ready.pid,
                    self.child.id(),
                    "the ready file names another process"
                );
                return ready;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.wait_output_closed(Duration::from_secs(5));
                panic!(
                    "idgate exited during start-up ({status}); output:\n{}",
                    self.output()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "idgate did not report ready within {START_LIMIT:?}; output:\n{}",
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits up to `timeout` for the gateway to exit and then for its output to be read to
    /// the end: the process's exit does not mean its last lines have left the pipes, and a
    /// test asserting on them would race. `None` if the gateway is still running then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let status = super::wait_for_exit(&mut self.child, timeout)?;
        self.wait_output_closed(Duration::from_secs(5));
        Some(status)
    }

    /// Waits up to `timeout` until both output readers have reached the end of their pipe
    /// (`idgate serve` starts no child that could hold them open).
    fn wait_output_closed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.readers_open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the gateway and fails if any of `secrets` is anywhere in what it wrote, naming
    /// the line. Stopping first is what makes the search whole: the log leaves through
    /// writer threads, and only once the process has exited and both pipes are read to the
    /// end is every line in [`Gateway::output`]. The gateway must have been started with
    /// [`TRACE_LOG`], since a secret kept out of the `info` lines can still be in a `debug` or
    /// `trace` one.
    pub async fn assert_never_logged(&mut self, secrets: &[&str]) {
        assert_eq!(
            self.level, TRACE_LOG.1,
            "start the gateway with TRACE_LOG to search its log for secrets"
        );
        assert!(secrets.iter().all(|s| !s.is_empty()), "an empty secret");
        self.stop().await;
        let out = self.output();
        assert!(
            out.contains("\"level\":\"TRACE\"") || out.contains(" TRACE "),
            "the gateway wrote no trace line; output:\n{out}"
        );
        for (i, secret) in secrets.iter().enumerate() {
            if let Some(line) = out.lines().find(|l| l.contains(secret)) {
                panic!(
                    "secret #{i} is in the gateway's output, on the line:\n{}",
                    line.replace(secret, &format!("<secret #{i}>"))
                );
            }
        }
    }

    /// Sends SIGTERM and waits, without blocking the test's runtime (whose upstreams and
    /// clients the gateway may still be talking to as it drains), for the gateway to exit
    /// and its output to be read to the end; fails if that takes longer than [`STOP_LIMIT`].
    pub async fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + STOP_LIMIT;
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not stop within {STOP_LIMIT:?} of SIGTERM; output:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        while self.readers_open.load(Ordering::SeqCst) > 0 {
            assert!(
                Instant::now() < deadline,
                "the gateway exited ({status}) but its output pipes stayed open"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        status
    }

    /// Everything the gateway wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Sends the signal `sig` (`HUP`, `TERM`, `KILL`, `INT`; another name goes through the
    /// `kill` command). The common ones are sent by a system call, with no process started
    /// between the caller's last step and the signal: a `kill` process slowed down by a busy
    /// machine would stretch the time between a file written and the SIGHUP that follows it,
    /// or between the moment a test notes and the SIGTERM it measures from.
    pub fn signal(&self, sig: &str) {
        use rustix::process::{Pid, Signal, kill_process};
        let known = match sig {
            "HUP" => Some(Signal::HUP),
            "TERM" => Some(Signal::TERM),
            "KILL" => Some(Signal::KILL),
            "INT" => Some(Signal::INT),
            _ => None,
        };
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(Pid::from_raw)
            .expect("the child's pid");
        if let Some(signal) = known {
            kill_process(pid, signal).unwrap_or_else(|e| panic!("kill -{sig}: {e}"));
            return;
        }
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }
}

/// A plain HTTP/1.1 GET to the admin listener: (status, body).
pub async fn admin_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Parses the gateway's JSON log lines.
pub fn json_lines(output: &str) -> Vec<HashMap<String, serde_json::Value>> {
    output
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A gateway with one upstream and one route to it, the shape most end-to-end tests need.
/// `Default`: no credential, and `GET /v1/{*rest}` allowed for [`ONBOARDING`].
pub struct OneRoute<'a> {
    /// The upstream's URL; an `https://` one is trusted through the PKI's bundle.
    pub url: &'a str,
    /// More keys for the `[[upstreams]]` table (`request_timeout = "1s"`).
    pub upstream_extra: toml::Table,
    pub credential: Option<CredentialSpec>,
    pub methods: &'a [&'a str],
    pub path: &'a str,
    pub allow: &'a [&'a str],
    /// More keys for `[listener]`.
    pub listener_extra: toml::Table,
}

impl Default for OneRoute<'_> {
    fn default() -> Self {
        Self {
            url: "",
            upstream_extra: toml::Table::new(),
            credential: None,
            methods: &["GET"],
            path: "/v1/{*rest}",
            allow: &[ONBOARDING],
            listener_extra: toml::Table::new(),
        }
    }
}

impl<'a> OneRoute<'a> {
    /// `GET /v3/session/{session_id}/decision/` on `url` for every `ns/kyc/*` workload, with
    /// the provider key from the environment variable `TEST_PROVIDER_KEY` in `x-api-key`.
    pub fn kyc_decision(url: &'a str) -> Self {
        Self {
            url,
            credential: Some(CredentialSpec::header("x-api-key", "env:TEST_PROVIDER_KEY")),
            path: "/v3/session/{session_id}/decision/",
            allow: &["spiffe://example.org/ns/kyc/*"],
            ..Self::default()
        }
    }

    /// The configuration: the upstream `provider` and the route `route` to it.
    pub fn config(&self, pki: &Pki) -> GatewayConfig {
        let mut config = base_config(pki);
        config.listener.extra.extend(self.listener_extra.clone());
        let mut upstream = UpstreamSpec::new("provider", self.url);
        if self.url.starts_with("https://") {
            upstream = upstream.ca(&pki.files.bundle);
        }
        upstream.extra = self.upstream_extra.clone();
        upstream.credential = self.credential.clone();
        config.upstream(upstream).route(RouteSpec::new(
            "route",
            self.methods,
            self.path,
            "provider",
            self.allow,
        ))
    }

    /// Starts the gateway with `env`.
    pub async fn start(&self, pki: &Pki, env: &[(&str, &str)]) -> Gateway {
        Gateway::start(&self.config(pki), env).await
    }
}

/// A gateway configuration from its identity: the gateway's SVID, one bundle per trust
/// domain and how often the files are polled; JSON logs at `info`, no upstream, no route.
pub fn gateway_config(
    svid: (&Path, &Path),
    bundles: &[(&str, &Path)],
    poll_interval: &str,
) -> GatewayConfig {
    bundles.iter().fold(
        GatewayConfig::new(svid.0, svid.1)
            .poll_interval(poll_interval)
            .json_log("info"),
        |config, (trust_domain, bundle)| config.trust(trust_domain, bundle),
    )
}

/// The gateway's JSON log lines of `target` whose message is `message`.
pub fn log_lines(
    gw: &Gateway,
    target: &str,
    message: &str,
) -> Vec<HashMap<String, serde_json::Value>> {
    json_lines(&gw.output())
        .into_iter()
        .filter(|l| {
            l.get("target").and_then(|t| t.as_str()) == Some(target)
                && l.get("message").and_then(|m| m.as_str()) == Some(message)
        })
        .collect()
}
