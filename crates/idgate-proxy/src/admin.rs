//! The admin listener (loopback by default): `/healthz` says the process is alive,
//! `/readyz` says it is ready for traffic (listener bound, material loaded, the SVID not
//! expired, not draining),
//! `/metrics` serves Prometheus metrics, `/incidents` and `/incidents/{id}` the incidents
//! (JSON) when `[incidents]` is configured. Anything else gets a problem from the one mapping
//! (`problem.rs`).
//! Never served on the public listener.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::problem::ProblemKind;

fn json(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn json_bytes(body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The shared parts the admin listener answers from.
#[derive(Debug, Clone)]
pub(crate) struct AdminState {
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) incidents: Option<Arc<idgate_incidents::IncidentService>>,
    /// The gateway's TLS material: an SVID that has expired (the SPIRE agent gone for
    /// longer than its lifetime, say) fails every handshake, so the gateway is not ready.
    pub(crate) material: Arc<idgate_tls::TlsMaterial>,
}

impl AdminState {
    fn svid_valid(&self) -> bool {
        self.material
            .expiry()
            .svid
            .is_some_and(|(_, until)| until > std::time::SystemTime::now())
    }
}

fn route(req: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    let (ready, metrics) = (&*state.ready, &*state.metrics);
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = ProblemKind::MethodNotAllowed.response(None, None);
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#),
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(metrics.encode())));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        "/readyz" if ready.load(Ordering::Acquire) && state.svid_valid() => {
            json(StatusCode::OK, r#"{"status":"ready"}"#)
        }
        "/readyz" => json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"not ready"}"#),
        path => match (&state.incidents, path.strip_prefix("/incidents")) {
            (Some(incidents), Some("" | "/")) => json_bytes(incidents.list_json()),
            (Some(incidents), Some(id)) => {
                match id.strip_prefix('/').and_then(|id| incidents.get_json(id)) {
                    Some(body) => json_bytes(body),
                    None => ProblemKind::NoRoute.response(None, None),
                }
            }
            _ => ProblemKind::NoRoute.response(None, None),
        },
    }
}

pub(crate) async fn serve_admin(
    listener: TcpListener,
    state: AdminState,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.changed() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let resp = route(&req, &state);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
