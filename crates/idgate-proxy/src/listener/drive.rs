//! How a served connection ends: its client closing, its certificate expiring, idleness
//! (HTTP/2), `max_connection_age`, or shutdown, each with its grace.

use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::first_bytes::until;
use super::woken::WokenOnly;
use crate::send_timeout::Activity;

/// What ends a connection besides its client.
pub(super) struct Ends {
    /// With no request in progress for this long (HTTP/2 keep-alive pings do not count),
    /// the connection is told to go away: HTTP/1.1 closes at once unless a request's head
    /// has just come in (a head trickled in over this long does not count), HTTP/2 sends
    /// GOAWAY. One whose client has sent nothing at all (not even its preface) is closed.
    pub(super) idle: Option<(Arc<Activity>, Duration)>,
    /// HTTP/1.1 whose hyper started after the caller's first bytes: set once a request has
    /// begun, and the connection is closed if none has by then.
    pub(super) first_request: Option<(Arc<AtomicBool>, tokio::time::Instant)>,
    /// The client certificate's expiry: the connection is closed then, in-flight or not.
    pub(super) expires_at: Option<tokio::time::Instant>,
    /// `max_connection_age`: the connection finishes its in-flight requests and closes.
    pub(super) retire_at: Option<tokio::time::Instant>,
    /// Shutdown: like retirement.
    pub(super) stop: watch::Receiver<bool>,
    /// How long a retired or idle connection may take to finish what it has in flight.
    pub(super) grace: Duration,
    pub(super) remote: std::net::SocketAddr,
}

/// The least time a retired connection gets to finish its in-flight requests.
pub(super) const MIN_GRACE: Duration = Duration::from_secs(30);

/// The grace of an idle connection on which no request ever began: time to deliver the
/// notice that it is going away (an HTTP/2 GOAWAY), no more.
const NO_REQUEST_GRACE: Duration = Duration::from_secs(2);

/// Runs a connection to its end. A connection speaks for its certificate only while the
/// certificate is valid: a keep-alive or HTTP/2 connection is closed when its client SVID
/// expires. At `max_connection_age` or shutdown it is shut down gracefully: HTTP/1.1 closes
/// after the response in flight, HTTP/2 sends GOAWAY and finishes its open streams.
pub(super) async fn drive<C, E>(
    mut connection: Pin<Box<C>>,
    graceful: impl Fn(Pin<&mut C>),
    ends: Ends,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let Ends {
        expires_at,
        retire_at,
        idle,
        first_request,
        stop,
        grace,
        remote,
    } = ends;
    // Armed when the connection is told to finish: a client that keeps a response stalled
    // (an HTTP/2 window it never opens) must not hold the connection past it.
    let grace_end = tokio::time::sleep(Duration::from_secs(30 * 24 * 3600));
    let mut grace_end = pin!(grace_end);
    let idle_check = async {
        match &idle {
            // One timer at a time, set for when the connection will have been idle long
            // enough as things stand, and looked at again then: requests coming and going
            // in between move no timer.
            Some((activity, limit)) => loop {
                match activity.idle_at(*limit) {
                    Some(at) if at <= tokio::time::Instant::now() => return,
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => tokio::time::sleep(*limit).await,
                }
            },
            None => std::future::pending().await,
        }
    };
    // What may end the connection is polled only when it wakes the task itself, not on each
    // of the connection's own wake-ups (see `WokenOnly`).
    let idle_check = pin!(idle_check);
    let mut idle_check = pin!(WokenOnly::new(idle_check));
    let expiry = pin!(until(expires_at));
    let mut expiry = pin!(WokenOnly::new(expiry));
    let retire = pin!(until(retire_at));
    let mut retire = pin!(WokenOnly::new(retire));
    let mut first_request_due = first_request.is_some();
    let first_request = async {
        match &first_request {
            Some((seen, by)) => {
                tokio::time::sleep_until(*by).await;
                seen.load(Ordering::Relaxed)
            }
            None => std::future::pending().await,
        }
    };
    let first_request = pin!(first_request);
    let mut first_request = pin!(WokenOnly::new(first_request));
    // A connection that arrives during shutdown is told to finish before it is first polled.
    let mut winding_down = false;
    if *stop.borrow() {
        graceful(connection.as_mut());
        winding_down = true;
    }
    let stopped = pin!(stopped(stop));
    let mut stopped = pin!(WokenOnly::new(stopped));
    loop {
        tokio::select! {
            // The connection first: it is what every wake-up is almost always for.
            biased;
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(remote = %remote.ip(), error = %e, "connection ended with an error");
                }
                return;
            }
            seen = &mut first_request, if first_request_due => {
                if !seen {
                    tracing::debug!(remote = %remote.ip(), "no request head within idle_timeout of the handshake: closed");
                    return;
                }
                first_request_due = false;
            }
            () = &mut expiry => {
                tracing::info!(target: "idgate::tls", remote = %remote.ip(), "client certificate expired: connection closed");
                return;
            }
            () = &mut idle_check, if !winding_down => {
                // Nothing to finish, and a client that has not sent its preface would not
                // hear the GOAWAY: the grace would only hold its place. One that has sent a
                // byte may have a request on its way, and is told to go away.
                if idle.as_ref().is_some_and(|(activity, _)| activity.silent()) {
                    tracing::debug!(remote = %remote.ip(), "nothing from the client within idle_timeout of the handshake: closed");
                    return;
                }
                tracing::debug!(remote = %remote.ip(), "connection idle for idle_timeout: going away");
                graceful(connection.as_mut());
                winding_down = true;
                // No request ever began: there is nothing to finish, only the notice to
                // deliver. A client that stopped inside its HTTP/2 preface, or inside a
                // header block it never ends, has no stream for the grace to wait for.
                let grace = match &idle {
                    Some((activity, _)) if activity.never_began() => grace.min(NO_REQUEST_GRACE),
                    _ => grace,
                };
                grace_end.as_mut().reset(tokio::time::Instant::now() + grace);
            }
            () = &mut retire, if !winding_down => {
                tracing::debug!(remote = %remote.ip(), "max_connection_age reached: closing after in-flight requests");
                graceful(connection.as_mut());
                winding_down = true;
                grace_end.as_mut().reset(tokio::time::Instant::now() + grace);
            }
            () = &mut grace_end, if winding_down => {
                tracing::info!(remote = %remote.ip(), "connection did not finish within its grace period: closed");
                return;
            }
            () = &mut stopped, if !winding_down => {
                graceful(connection.as_mut());
                winding_down = true;
            }
        }
    }
}

/// Resolves when `stop` is raised, or its sender dropped (the gateway is going away then too).
///
/// Every wake-up of a connection's task polls this, mostly for another reason: the task's
/// waker is left with the watch once, and the watch (whose poll takes its lock) is asked
/// again only when its version has moved, which costs one atomic load to see.
pub(super) async fn stopped(mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        let peek = stop.clone();
        let mut changed = pin!(stop.changed());
        let mut registered = false;
        let changed = std::future::poll_fn(|cx| {
            if registered && matches!(peek.has_changed(), Ok(false)) {
                return std::task::Poll::Pending;
            }
            registered = true;
            changed.as_mut().poll(cx)
        })
        .await;
        if changed.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn a_retired_connection_that_never_finishes_is_closed_after_its_grace() {
        let (_stop_tx, stop) = watch::channel(false);
        let told = Arc::new(AtomicBool::new(false));
        let told2 = told.clone();
        // A connection that ignores being told to finish, as a client stalling a response
        // would make it.
        let stuck = std::future::pending::<Result<(), Infallible>>();
        // Before the retirement's deadline is set: time spent between the two (a test
        // thread preempted on a loaded machine) must not count against the lower bound.
        let started = Instant::now();
        let ends = Ends {
            idle: None,
            first_request: None,
            expires_at: None,
            retire_at: Some(tokio::time::Instant::now() + Duration::from_millis(20)),
            stop,
            grace: Duration::from_millis(100),
            remote: "127.0.0.1:1".parse().unwrap(),
        };
        tokio::time::timeout(
            Duration::from_secs(10),
            drive(
                Box::pin(stuck),
                move |_| told2.store(true, Ordering::SeqCst),
                ends,
            ),
        )
        .await
        .expect("the connection outlived its grace");
        assert!(
            told.load(Ordering::SeqCst),
            "it was not told to finish first"
        );
        assert!(started.elapsed() >= Duration::from_millis(120));
    }

    #[tokio::test]
    async fn a_connection_hears_the_stop_signal_raised_or_its_sender_dropped_and_nothing_else() {
        let short = Duration::from_millis(20);
        let (tx, rx) = watch::channel(false);
        let mut heard = pin!(stopped(rx));
        assert!(tokio::time::timeout(short, &mut heard).await.is_err());
        // A version that moved without raising the signal is not a stop.
        tx.send(false).unwrap();
        assert!(tokio::time::timeout(short, &mut heard).await.is_err());
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), &mut heard)
            .await
            .expect("the raised signal was not heard");

        let (tx, rx) = watch::channel(false);
        let mut heard = pin!(stopped(rx));
        assert!(tokio::time::timeout(short, &mut heard).await.is_err());
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), &mut heard)
            .await
            .expect("the dropped sender was not heard");

        // Raised before the connection began.
        let (_tx, rx) = watch::channel(true);
        tokio::time::timeout(Duration::from_secs(5), stopped(rx))
            .await
            .expect("a signal raised before was not heard");
    }
}
