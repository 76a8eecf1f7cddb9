//! Test support: a real PKI on disk, the real `idgate` binary on loopback ports it picks
//! itself (port 0, reported in its ready file), an HTTPS upstream that records what it
//! receives, and an mTLS client speaking HTTP/1.1 or 2. Configurations are built from typed
//! values (see `config.rs`). This module owns the small shared helpers (deadlines, the
//! binary's path, a closed port); the rest live in one file per concern and are re-exported
//! here, so a test needs only `use crate::support::*`.

#![allow(dead_code, unreachable_pub)]

mod client;
mod gateway;
mod load;
mod openssl;
mod pki;
mod process;
mod softhsm;
mod upstream;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use self::client::*;
pub use self::gateway::*;
pub use self::load::*;
pub use self::openssl::*;
pub use self::pki::*;
pub use self::process::*;
pub use self::softhsm::*;
pub use self::upstream::*;
pub use crate::config::*;

/// Retries an assertion until it holds or the time is up, instead of sleeping.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if $cond { break; }
            if std::time::Instant::now() > deadline { panic!($($msg)+); }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }};
}

/// How long an end-to-end test may take before it fails as hung: the test clients
/// themselves have no timeouts.
pub const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Runs `test`, failing it if it takes longer than [`TEST_LIMIT`].
pub async fn within<T>(test: impl Future<Output = T>) -> T {
    within_limit(TEST_LIMIT, test).await
}

/// Runs `test`, failing it if it takes longer than `limit`.
pub async fn within_limit<T>(limit: Duration, test: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, test)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {limit:?}"))
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_idgate")
}

/// A loopback port where nothing listens, held for as long as the value lives: the socket
/// is bound but never listens, so a connection to it is refused and no other socket (another
/// test's port 0, say) can take the port meanwhile.
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl ClosedPort {
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind a port");
        let port = socket.local_addr().expect("bound address").port();
        Self {
            _socket: socket,
            port,
        }
    }

    /// `scheme://127.0.0.1:PORT`.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

/// Writes a file only its owner can read, as secret files must be.
pub fn write_private(path: &Path, contents: &[u8]) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// Lowercase hex HMAC-SHA256, computed independently of the gateway.
pub fn hex_hmac(key: &str, data: &[u8]) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    ring::hmac::sign(&k, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The unprivileged user (uid, gid) a test running as root starts a process as, when what
/// it checks shows only for a process that is not root's.
pub const NOBODY: (u32, u32) = (65534, 65534);

/// Gives `dir` and everything under it to `user` (uid, gid), following no symbolic link.
pub fn chown_tree(dir: &Path, user: (u32, u32)) {
    std::os::unix::fs::lchown(dir, Some(user.0), Some(user.1))
        .unwrap_or_else(|e| panic!("chown {}: {e}", dir.display()));
    if std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            chown_tree(&entry.expect("dir entry").path(), user);
        }
    }
}
