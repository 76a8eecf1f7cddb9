//! Real `redis-server` processes for tests: a standalone server (optionally with TLS or an
//! ACL user) and a six-node Redis Cluster (three masters, three replicas), each on free
//! loopback ports in a temporary directory of its own, killed when dropped.
//!
//! Exposed as `idgate_store::redis_testing` with the features `redis` and `conformance`, so
//! that other crates' end-to-end tests start their Redis the same way.
//!
//! When `redis-server` is not installed, [`RedisServer::start`] and [`RedisCluster::start`]
//! return `None` after a loud message, and the test skips itself; with the environment
//! variable `IDGATE_REQUIRE_REDIS` set (as CI sets it) they panic instead, so that a missing
//! server can never pass for a green run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// The environment variable that turns a missing `redis-server` into a failure.
pub const REQUIRE_ENV: &str = "IDGATE_REQUIRE_REDIS";

/// How long a server may take to answer its first PING.
const START_WAIT: Duration = Duration::from_secs(10);
/// How many ports a start tries when the one it picked was taken meanwhile.
const START_TRIES: usize = 5;

/// Whether `redis-server` can be run here. Panics when it cannot and [`REQUIRE_ENV`] is
/// set; prints why the test is skipped otherwise.
pub fn redis_available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    assert!(
        std::env::var_os(REQUIRE_ENV).is_none(),
        "{REQUIRE_ENV} is set but redis-server cannot be run: install it (apt-get install redis-server)"
    );
    eprintln!(
        "\n!!!!! SKIPPED: redis-server is not installed; this Redis test did not run. \
         Install redis-server, or set {REQUIRE_ENV}=1 to make this a failure. !!!!!\n"
    );
    false
}

/// How a standalone server is set up.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Serve TLS only (a fresh CA and a server certificate for 127.0.0.1 and localhost).
    pub tls: bool,
    /// An ACL user with this name and [`ServerOptions::password`], allowed every command;
    /// the default user is then switched off. Without a username, the password (if any)
    /// is the default user's (`requirepass`).
    pub username: Option<String>,
    pub password: Option<String>,
    /// The ACL user's rules, one word each (`~idgate:*`, `+get`, …); every key and command
    /// when empty.
    pub acl_rules: Vec<String>,
    /// Keep an append-only file, written and fsynced before Redis answers (`appendfsync
    /// always`), so that [`RedisServer::restart`] comes back with every acknowledged write.
    pub aof: bool,
}

/// One `redis-server` process. Killed (and its directory removed) on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    options: ServerOptions,
}

impl RedisServer {
    /// A plain server on a free loopback port; `None` when Redis is not installed (see the
    /// module doc).
    pub fn start() -> Option<Self> {
        Self::start_with(ServerOptions::default())
    }

    pub fn start_with(options: ServerOptions) -> Option<Self> {
        if !redis_available() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        if options.tls {
            write_tls_files(dir.path());
        }
        let mut server = Self {
            child: None,
            port: 0,
            dir,
            options,
        };
        for _ in 0..START_TRIES {
            server.port = free_port(false);
            if server.spawn() {
                return Some(server);
            }
        }
        panic!("redis-server did not start on any of {START_TRIES} ports");
    }

    /// Starts the process on `self.port`; `false` when it exited at once (port taken).
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        let aof: &[&str] = if self.options.aof {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        cmd.current_dir(self.dir.path())
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(aof)
            .args(["--dir", &self.dir.path().display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.options.tls {
            let d = self.dir.path();
            cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                .args([
                    "--tls-cert-file",
                    &d.join("server.crt").display().to_string(),
                ])
                .args([
                    "--tls-key-file",
                    &d.join("server.key").display().to_string(),
                ])
                .args([
                    "--tls-ca-cert-file",
                    &d.join("ca.crt").display().to_string(),
                ])
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.args(["--port", &self.port.to_string()]);
        }
        match (&self.options.username, &self.options.password) {
            (Some(user), Some(password)) => {
                // Each word of an ACL rule is an argument of its own.
                cmd.args(["--user", user, "on", &format!(">{password}")]);
                if self.options.acl_rules.is_empty() {
                    cmd.args(["~*", "&*", "+@all"]);
                } else {
                    cmd.args(&self.options.acl_rules);
                }
                cmd.args(["--user", "default", "off"]);
            }
            (None, Some(password)) => {
                cmd.args(["--requirepass", password]);
            }
            _ => {}
        }
        let child = self.child.insert(cmd.spawn().expect("redis-server starts"));
        let auth = self.options.password.is_some();
        if wait_ready(child, self.port, self.options.tls, auth) {
            return true;
        }
        self.kill();
        false
    }

    /// `redis://127.0.0.1:PORT` (or `rediss://` with TLS), without credentials.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// One inline command (a server without TLS or password): the reply as RESP text,
    /// empty when there was none.
    pub fn query(&self, line: &str) -> String {
        command(self.port, &format!("{line}\r\n"))
    }

    /// The CA that signed a TLS server's certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing is answered, as
    /// with a Redis that stalls.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the server; its port stays reserved for [`RedisServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused process dies of SIGKILL too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port: empty, or with what its append-only file
    /// holds when [`ServerOptions::aof`] is on.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server did not start again on {}",
            self.port
        );
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the server runs").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A paused server must be woken for a clean exit; SIGKILL works either way.
        self.kill();
    }
}

/// A Redis Cluster of six nodes (three masters with one replica each). Killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts the six nodes, joins them with `redis-cli --cluster create`, and waits until
    /// every node reports the cluster ok. `None` when Redis is not installed.
    pub fn start() -> Option<Self> {
        if !redis_available() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = Self {
            nodes: Vec::new(),
            ports: Vec::new(),
            _dir: dir,
        };
        for i in 0..6 {
            let node_dir = cluster._dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let (child, port) = start_node(&node_dir);
            cluster.nodes.push(child);
            cluster.ports.push(port);
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_until_ok();
        Some(cluster)
    }

    fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for &port in &self.ports {
            loop {
                let info = command(port, "CLUSTER INFO\r\n");
                if info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not become ok: {info}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Freezes every node (SIGSTOP), as with a Cluster that stalls.
    pub fn pause(&self) {
        self.signal_all("-STOP");
    }

    /// Lets every node go on (SIGCONT).
    pub fn resume(&self) {
        self.signal_all("-CONT");
    }

    /// The node (an index into [`RedisCluster::urls`]) that is the master of `key`'s hash
    /// slot (`key` as Redis hashes it: a `{tag}` in it counts alone).
    pub fn master_of(&self, key: &str) -> usize {
        let slot: u16 = command(self.ports[0], &format!("CLUSTER KEYSLOT {key}\r\n"))
            .trim()
            .trim_start_matches(':')
            .parse()
            .unwrap();
        let out = Command::new("redis-cli")
            .args(["-p", &self.ports[0].to_string(), "CLUSTER", "NODES"])
            .output()
            .expect("redis-cli runs");
        let nodes = String::from_utf8_lossy(&out.stdout);
        // `id ip:port@bus flags master ping pong epoch state slot…`, a slot as `N` or `A-B`.
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let mut ends = range.splitn(2, '-').map(|n| n.parse::<u16>().ok());
                match (ends.next().flatten(), ends.next()) {
                    (Some(a), Some(Some(b))) => (a..=b).contains(&slot),
                    (Some(a), None) => a == slot,
                    _ => false,
                }
            });
            if serves {
                let port: u16 = fields[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .unwrap();
                return self.ports.iter().position(|p| *p == port).unwrap();
            }
        }
        panic!("no master serves slot {slot}:\n{nodes}");
    }

    /// Freezes one node (SIGSTOP): its connections stay open and it answers nothing. Resume
    /// it within the cluster's node timeout (2 s), or its replica takes over.
    pub fn pause_node(&self, node: usize) {
        signal(&self.nodes[node], "-STOP");
    }

    /// Lets a paused node go on (SIGCONT).
    pub fn resume_node(&self, node: usize) {
        signal(&self.nodes[node], "-CONT");
    }

    fn signal_all(&self, signal: &str) {
        for node in &self.nodes {
            self::signal(node, signal);
        }
    }

    /// One inline command to one node (an index into [`RedisCluster::urls`]), as its default
    /// user: the reply as RESP text, empty when there was none.
    pub fn query(&self, node: usize, line: &str) -> String {
        command(self.ports[node], &format!("{line}\r\n"))
    }

    /// The node's id in the cluster (`CLUSTER MYID`).
    pub fn node_id(&self, node: usize) -> String {
        let reply = self.query(node, "CLUSTER MYID");
        // A bulk string: `$40\r\nID\r\n`.
        reply.lines().nth(1).unwrap_or_default().trim().to_owned()
    }

    /// The nodes (indexes into [`RedisCluster::urls`]) that are masters now.
    pub fn masters(&self) -> Vec<usize> {
        (0..self.ports.len())
            .filter(|&node| self.query(node, "ROLE").starts_with("*3\r\n$6\r\nmaster"))
            .collect()
    }

    /// `redis://127.0.0.1:PORT` for every node: the seed list for a Cluster client.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(node: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &node.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal} {}", node.id());
}

/// A loopback port nobody listens on (and, for a cluster node, its bus port too), as the
/// system hands them out: it does not give a recently used port again soon, so parallel
/// test processes do not collide. A port taken between this probe and the server's bind
/// makes the server exit at once, and the caller tries another.
fn free_port(with_bus: bool) -> u16 {
    for _ in 0..100 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        if !with_bus {
            return port;
        }
        if let Some(bus) = port.checked_add(10_000)
            && TcpListener::bind((Ipv4Addr::LOCALHOST, bus)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port for redis-server");
}

/// Whether the process exited (for instance because its port was taken).
fn exited(child: &mut Child) -> bool {
    child.try_wait().ok().flatten().is_some()
}

/// One Cluster node in `dir`, on a port whose bus port (+10000) is free too.
fn start_node(dir: &Path) -> (Child, u16) {
    for _ in 0..START_TRIES {
        let port = free_port(true);
        let mut child = Command::new("redis-server")
            .current_dir(dir)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "2000"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &dir.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        if wait_ready(&mut child, port, false, false) {
            return (child, port);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("a cluster node did not start on any of {START_TRIES} ports");
}

/// Waits until the server answers PING (behind a password: asks for one; with TLS: accepts
/// connections). `false` when the process exited first.
fn wait_ready(child: &mut Child, port: u16, tls: bool, auth: bool) -> bool {
    let deadline = Instant::now() + START_WAIT;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if exited(child) {
            return false;
        }
        let ready = if tls {
            TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
        } else {
            let reply = command(port, "PING\r\n");
            reply.starts_with("+PONG") || (auth && reply.starts_with("-NOAUTH"))
        };
        if ready {
            // Another process on the port would answer too: make sure ours still runs.
            return !exited(child);
        }
        assert!(
            Instant::now() < deadline,
            "redis-server on {port} did not become ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One inline command over a fresh connection; the reply as text, empty on failure.
fn command(port: u16, line: &str) -> String {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(line.as_bytes()).is_err() {
        return String::new();
    }
    let mut buf = vec![0u8; 8192];
    let mut out = Vec::new();
    // Replies here are short; read what arrives within the timeout.
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.ends_with(b"\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A CA and a server certificate for 127.0.0.1 and localhost, in `dir`.
fn write_tls_files(dir: &Path) {
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().unwrap()),
        SanType::IpAddress(Ipv4Addr::LOCALHOST.into()),
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

/// The ACL users docs/state.md recommends, as its code block under "Hardening the Redis
/// users" writes them: each `user NAME …` with its continuation lines, `>PASSWORD` made
/// `>password`.
pub fn documented_users(password: &str) -> Vec<(String, Vec<String>)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/state.md"))
        .expect("docs/state.md holds the Redis users block");
    let section = doc
        .split("### Hardening the Redis users")
        .nth(1)
        .expect("docs/state.md holds the Redis users block");
    let block = section
        .split("```")
        .nth(1)
        .expect("docs/state.md holds the Redis users block");
    let mut users: Vec<(String, Vec<String>)> = Vec::new();
    for line in block.lines() {
        let mut words = line.split_whitespace().map(|w| match w {
            ">PASSWORD" => format!(">{password}"),
            w => w.to_owned(),
        });
        if line.starts_with("user ") {
            words.next();
            let name = words.next().unwrap();
            users.push((name, words.collect()));
        } else if line.starts_with(char::is_whitespace) && !line.trim().is_empty() {
            users.last_mut().unwrap().1.extend(words);
        }
    }
    users
}
