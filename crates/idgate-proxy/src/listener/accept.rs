//! The accept loop: each TCP connection is admitted (or closed) before any TLS, by
//! `max_connections`, the `[network]` rules, `max_connections_per_ip`, and then
//! `max_handshakes_per_ip` and `max_handshakes` on its client's address (read from a PROXY
//! protocol header when it comes through a load balancer).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, watch};

use super::limits::{Admission, Handshaking, Slot};
use super::{ListenerShared, proxy_header, serve_connection, shed};
use crate::audit::Refused;
use crate::conn::source_key;

/// Accepts connections until `stop` turns true; each connection is told to finish when it
/// does, and closed at once if the drain gives up on it ([`ListenerShared::cut`]).
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<ListenerShared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            a = listener.accept() => a,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ip = remote.ip().to_canonical();
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            // Over the limit: a few at a time get a quick 503 (never a denied network, nor
            // a balancer's connection, whose client is not known yet); the rest are closed.
            let direct = !shared
                .live
                .load()
                .config
                .proxy_protocol
                .as_ref()
                .is_some_and(|p| p.from_balancer(ip));
            if direct
                && shared.snapshot.load().network.cidrs.permits(ip)
                && let Ok(slot) = shared.shedding.clone().try_acquire_owned()
            {
                shared.refuse(ip, "max_connections_shed", "at accept");
                tokio::spawn(shed::shed(tcp, ip, shared.clone(), slot));
            } else {
                shared.refuse(ip, "max_connections", "at accept");
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let balancer = shared
            .live
            .load()
            .config
            .proxy_protocol
            .as_ref()
            .filter(|p| p.from_balancer(ip))
            .map(|p| p.timeout);
        let Some(timeout) = balancer else {
            // A direct client: its address is known now, and a refused one costs no task.
            let Some((slot, handshaking)) = shared.admit(ip, "at accept") else {
                continue;
            };
            let admission = Admission {
                _permit: permit,
                _slot: slot,
            };
            let shared = shared.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let serve = std::pin::pin!(serve_connection(
                    tcp,
                    remote,
                    None,
                    handshaking,
                    shared.clone(),
                    stop
                ));
                shared.until_cut(serve).await;
                drop(admission);
            });
            continue;
        };
        // Through a load balancer: the client is whoever its PROXY header names, so the
        // rules and the per-address cap wait for the header (and never count the balancer's
        // own address). A balancer that sends none is refused, as it would be by HAProxy's
        // `accept-proxy`.
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let connection = shared.clone();
            let serve =
                std::pin::pin!(through_balancer(tcp, remote, timeout, permit, shared, stop));
            connection.until_cut(serve).await;
        });
    }
}

/// Serves a connection from a load balancer: its PROXY header first, then as a direct one.
async fn through_balancer(
    mut tcp: TcpStream,
    remote: SocketAddr,
    timeout: Duration,
    permit: OwnedSemaphorePermit,
    shared: Arc<ListenerShared>,
    stop: watch::Receiver<bool>,
) {
    let ip = remote.ip().to_canonical();
    let client = match proxy_header::read(&mut tcp, remote, timeout).await {
        Ok(client) => client,
        Err(e) => {
            shared.services.metrics.connection_refused(e.reason());
            shared.refusals.refused(ip, e.reason(), "before TLS");
            shared.audit_refused(Refused {
                remote: ip,
                port: Some(remote.port()),
                via: None,
                peer: None,
                handshake: false,
                reason: e.reason(),
                stage: "before TLS",
                detail: None,
            });
            tracing::debug!(balancer = %ip, error = %e, "PROXY header refused");
            return;
        }
    };
    let Some((slot, handshaking)) = shared.admit(client.ip(), "before TLS") else {
        return;
    };
    let admission = Admission {
        _permit: permit,
        _slot: slot,
    };
    serve_connection(tcp, client, Some(remote), handshaking, shared, stop).await;
    drop(admission);
}

impl ListenerShared {
    /// Counts, logs (throttled) and records in the audit trail a connection refused by
    /// `why`.
    pub(super) fn refuse(&self, ip: IpAddr, why: &'static str, stage: &'static str) {
        self.services.metrics.connection_refused(why);
        self.refusals.refused(ip, why, stage);
        self.audit_refused(Refused {
            remote: ip,
            port: None,
            via: None,
            peer: None,
            handshake: false,
            reason: why,
            stage,
            detail: None,
        });
    }

    /// Records a connection the listener did not serve in the audit trail, if there is
    /// one: on its own, or counted in a summary past `connection_records_per_second`.
    pub(super) fn audit_refused(&self, refused: Refused<'_>) {
        if let Some(trail) = &self.services.audit {
            let per_second = self.snapshot.load().audit.connection_records_per_second;
            self.records
                .record(trail, &self.services.metrics, per_second, refused);
        }
    }

    /// Admits a client address before TLS: `[network]` rules, its place in
    /// `max_connections_per_ip`, then its place among the handshakes in progress (refused
    /// at `stage`). `None`: refused, counted and logged.
    fn admit(&self, ip: IpAddr, stage: &'static str) -> Option<(Slot<IpAddr>, Handshaking)> {
        let ip = ip.to_canonical();
        if !self.snapshot.load().network.cidrs.permits(ip) {
            self.refuse(ip, "network_deny", "before TLS");
            return None;
        }
        let source = source_key(ip);
        let Some(slot) = self.per_ip.acquire(&source) else {
            self.refuse(ip, "max_connections_per_ip", "at accept");
            return None;
        };
        // In force when the connection comes: a reload changes them for the next ones.
        let (per_ip, all) = {
            let live = self.live.load();
            (
                live.config.max_handshakes_per_ip,
                live.config.max_handshakes,
            )
        };
        match self.handshakes.begin(source, per_ip, all) {
            Ok(handshaking) => Some((slot, handshaking)),
            Err(cap) => {
                self.refuse(ip, cap, stage);
                None
            }
        }
    }
}
