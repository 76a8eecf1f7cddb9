//! The server handle a test drives: start on a unix socket, set what the agent issues
//! (every open stream gets each change at once), watch the counters, shut down.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;

use crate::counters::{Counters, WaitTimeout, wait_for};
use crate::jwt::JwtAuthority;
use crate::pb::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use crate::service::{Shared, WorkloadApi};
use crate::state::{AgentState, Identity, X509State, trust_domain_key};

/// How long shutdown waits for connections to drain before cutting them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A SPIFFE Workload API server on a unix socket, standing in for a SPIRE agent.
///
/// Until [`set_x509`](Self::set_x509) or [`set_no_identity`](Self::set_no_identity),
/// `FetchX509SVID` and `FetchX509Bundles` streams stay open without a message, as SPIRE's
/// do for a registered workload whose SVIDs are still being minted; `FetchJWTSVID` answers
/// Unavailable. `FetchJWTBundles` streams wait likewise until
/// [`set_jwt_bundles`](Self::set_jwt_bundles).
///
/// Dropping the handle without [`shutdown`](Self::shutdown) stops serving and removes the
/// socket too, without waiting for open streams to drain.
#[derive(Debug)]
pub struct WorkloadApiServer {
    shared: Arc<Shared>,
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl WorkloadApiServer {
    /// Binds `socket` (a stale socket file nobody listens on is replaced) and serves.
    pub async fn start(socket: &Path) -> io::Result<Self> {
        let socket = std::path::absolute(socket)?;
        remove_stale_socket(&socket)?;
        let listener = UnixListener::bind(&socket)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", socket.display())))?;
        let shared = Arc::new(Shared {
            state: watch::Sender::new(AgentState::default()),
            counters: Arc::new(watch::Sender::new(Counters::default())),
        });
        let service = SpiffeWorkloadApiServer::new(WorkloadApi {
            shared: Arc::clone(&shared),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder().serve_with_incoming_shutdown(
                service,
                UnixListenerStream::new(listener),
                async {
                    // A dropped sender stops the server as a sent signal does.
                    let _ = stopped.await;
                },
            ),
        );
        Ok(Self {
            shared,
            socket,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The endpoint for clients: `unix:///absolute/path`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The socket's absolute path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Issues `x509` to the workload: every open X.509 stream gets it now, new ones first.
    pub fn set_x509(&self, x509: X509State) {
        self.shared.state.send_modify(|s| {
            s.identity = Identity::Issued(Arc::new(x509));
            s.x509_generation += 1;
        });
    }

    /// The agent no longer has an identity for the caller (no registration entry): every
    /// open stream ends with PermissionDenied ("no identity issued"), and new calls get it,
    /// until the next [`set_x509`](Self::set_x509).
    pub fn set_no_identity(&self) {
        self.shared.state.send_modify(|s| {
            s.identity = Identity::Denied;
            s.x509_generation += 1;
        });
    }

    /// Sets the JWT bundles (trust domain `example.org` or `spiffe://example.org` → JWKS
    /// JSON) and pushes them to every open `FetchJWTBundles` stream. They are also what
    /// `ValidateJWTSVID` validates with.
    pub fn set_jwt_bundles(&self, bundles: BTreeMap<String, Vec<u8>>) {
        let bundles = bundles
            .into_iter()
            .map(|(td, jwks)| (trust_domain_key(&td), jwks))
            .collect();
        self.shared.state.send_modify(|s| {
            s.jwt_bundles = Some(Arc::new(bundles));
            s.jwt_generation += 1;
        });
    }

    /// Makes `authority` mint the JWT-SVIDs of its trust domain's identities in
    /// `FetchJWTSVID` (replacing the previous authority of that trust domain). Its JWKS is
    /// not published by this: call [`set_jwt_bundles`](Self::set_jwt_bundles) for that.
    pub fn set_jwt_authority(&self, authority: JwtAuthority) {
        let key = trust_domain_key(authority.trust_domain());
        // No stream shows authorities, so open streams are not woken.
        self.shared.state.send_if_modified(|s| {
            s.jwt_authorities.insert(key, Arc::new(authority));
            false
        });
    }

    /// The lifetime of JWT-SVIDs minted from now on (five minutes unless set).
    pub fn set_jwt_svid_ttl(&self, ttl: Duration) {
        self.shared.state.send_if_modified(|s| {
            s.jwt_svid_ttl = ttl;
            false
        });
    }

    /// The counters now.
    pub fn counters(&self) -> Counters {
        *self.shared.counters.borrow()
    }

    /// Waits until at least `n` `FetchX509SVID` streams are open.
    pub async fn wait_for_x509_streams(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Counters, WaitTimeout> {
        self.wait_for(format!("{n} open FetchX509SVID streams"), timeout, |c| {
            c.x509_svid_streams >= n
        })
        .await
    }

    /// Waits until at least `n` `FetchX509Bundles` streams are open.
    pub async fn wait_for_x509_bundle_streams(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Counters, WaitTimeout> {
        self.wait_for(format!("{n} open FetchX509Bundles streams"), timeout, |c| {
            c.x509_bundle_streams >= n
        })
        .await
    }

    /// Waits until at least `n` `FetchJWTBundles` streams are open.
    pub async fn wait_for_jwt_bundle_streams(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Counters, WaitTimeout> {
        self.wait_for(format!("{n} open FetchJWTBundles streams"), timeout, |c| {
            c.jwt_bundle_streams >= n
        })
        .await
    }

    /// Waits until `done` holds for the counters (e.g. a client has reconnected:
    /// `|c| c.x509_svid_fetches >= 2`).
    pub async fn wait_for(
        &self,
        what: impl Into<String>,
        timeout: Duration,
        done: impl FnMut(&Counters) -> bool,
    ) -> Result<Counters, WaitTimeout> {
        wait_for(&self.shared.counters, what, timeout, done).await
    }

    /// Agent loss: open streams end with Unavailable, the server stops accepting and
    /// serving (connections get up to five seconds to drain) and the socket file is
    /// removed, so [`start`](Self::start) on the same path can follow (agent restart).
    pub async fn shutdown(mut self) {
        self.shared.state.send_modify(|s| s.stopping = true);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(DRAIN_TIMEOUT, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
        remove_socket(&self.socket);
    }
}

impl Drop for WorkloadApiServer {
    fn drop(&mut self) {
        if self.task.is_none() {
            return;
        }
        self.shared.state.send_modify(|s| s.stopping = true);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        remove_socket(&self.socket);
    }
}

fn remove_socket(path: &Path) {
    // Already gone is fine; anything else leaves a file the next start replaces.
    let _ = std::fs::remove_file(path);
}

/// A socket file left by a server that is gone (a crashed test) is replaced; a live one or
/// a file of another kind is an error, never silently deleted.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{}: a server is listening on this socket", path.display()),
                )),
                Err(_) => std::fs::remove_file(path),
            }
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{}: exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
