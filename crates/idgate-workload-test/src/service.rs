//! The `SpiffeWorkloadAPI` gRPC service: the security header check, the streams that follow
//! the agent's state, JWT-SVID minting and validation.

use std::sync::Arc;

use spiffe::SpiffeId;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::counters::{Counters, OpenStream, StreamKind};
use crate::pb::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use crate::pb::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svidRequest, X509svidResponse,
};
use crate::state::{AgentState, Identity, X509State};
use crate::validate::{to_struct, validate};

/// The state and counters one server shares with its handlers and streams.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) state: watch::Sender<AgentState>,
    pub(crate) counters: Arc<watch::Sender<Counters>>,
}

/// The metadata every Workload API request carries (Workload Endpoint §6).
const SECURITY_HEADER: &str = "workload.spiffe.io";
/// SPIRE's wording, which clients (the spiffe crate among them) recognise.
const NO_IDENTITY: &str = "no identity issued";
/// Messages queued per stream before the stream waits for its client.
const STREAM_BUFFER: usize = 4;

#[derive(Debug, Clone)]
pub(crate) struct WorkloadApi {
    pub(crate) shared: Arc<Shared>,
}

/// What a stream does with the agent's current state.
enum Step<M> {
    Send(M),
    /// Nothing new for this stream (or no identity yet): stay open and silent.
    Wait,
    End(Status),
}

/// Computes a stream's next step; `last` is the generation of what it sent last.
type StepFn<M> = fn(&AgentState, &mut Option<u64>) -> Step<M>;

fn stopped() -> Status {
    Status::unavailable("workload API is shutting down")
}

fn x509_step(state: &AgentState, last: &mut Option<u64>) -> Step<Arc<X509State>> {
    if state.stopping {
        return Step::End(stopped());
    }
    match &state.identity {
        Identity::Pending => Step::Wait,
        Identity::Denied => Step::End(Status::permission_denied(NO_IDENTITY)),
        Identity::Issued(_) if *last == Some(state.x509_generation) => Step::Wait,
        Identity::Issued(x509) => {
            *last = Some(state.x509_generation);
            Step::Send(Arc::clone(x509))
        }
    }
}

fn x509_svid_step(state: &AgentState, last: &mut Option<u64>) -> Step<X509svidResponse> {
    match x509_step(state, last) {
        Step::Send(x509) => Step::Send(x509.svid_response()),
        Step::Wait => Step::Wait,
        Step::End(status) => Step::End(status),
    }
}

fn x509_bundles_step(state: &AgentState, last: &mut Option<u64>) -> Step<X509BundlesResponse> {
    match x509_step(state, last) {
        Step::Send(x509) => Step::Send(x509.bundles_response()),
        Step::Wait => Step::Wait,
        Step::End(status) => Step::End(status),
    }
}

fn jwt_bundles_step(state: &AgentState, last: &mut Option<u64>) -> Step<JwtBundlesResponse> {
    if state.stopping {
        return Step::End(stopped());
    }
    if matches!(state.identity, Identity::Denied) {
        return Step::End(Status::permission_denied(NO_IDENTITY));
    }
    match &state.jwt_bundles {
        Some(_) if *last == Some(state.jwt_generation) => Step::Wait,
        Some(bundles) => {
            *last = Some(state.jwt_generation);
            Step::Send(JwtBundlesResponse {
                bundles: bundles
                    .iter()
                    .map(|(td, jwks)| (td.clone(), jwks.clone()))
                    .collect(),
            })
        }
        None => Step::Wait,
    }
}

impl WorkloadApi {
    /// Refuses a request without exactly one `workload.spiffe.io: true`, as SPIRE does.
    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let mut values = request.metadata().get_all(SECURITY_HEADER).iter();
        match (values.next(), values.next()) {
            (Some(value), None) if value == "true" => Ok(()),
            _ => {
                self.shared
                    .counters
                    .send_modify(|c| c.refused_without_header += 1);
                Err(Status::invalid_argument(
                    "security header missing from request",
                ))
            }
        }
    }

    fn count(&self, bump: impl FnOnce(&mut Counters)) {
        self.shared.counters.send_modify(bump);
    }

    /// Opens a stream: the first response goes out at once (Workload API §4.3), or the
    /// call fails at once when the agent refuses; later changes follow from a task.
    fn open_stream<M: Send + 'static>(
        &self,
        kind: StreamKind,
        step: StepFn<M>,
    ) -> Result<Response<ReceiverStream<Result<M, Status>>>, Status> {
        // Subscribing before reading the state means no change can fall between the two.
        let mut rx = self.shared.state.subscribe();
        let mut last = None;
        let first = step(&rx.borrow_and_update(), &mut last);
        let (tx, out) = mpsc::channel(STREAM_BUFFER);
        match first {
            Step::End(status) => return Err(status),
            Step::Send(message) => {
                // A fresh channel has room for the first message.
                tx.try_send(Ok(message))
                    .map_err(|_| Status::internal("stream buffer full"))?;
            }
            Step::Wait => {}
        }
        let open = OpenStream::new(&self.shared.counters, kind);
        tokio::spawn(follow(rx, tx, last, step, open));
        Ok(Response::new(ReceiverStream::new(out)))
    }
}

/// Pushes each change of the agent's state to one stream until the client goes away, the
/// agent refuses the caller, or the server stops.
async fn follow<M>(
    mut rx: watch::Receiver<AgentState>,
    tx: mpsc::Sender<Result<M, Status>>,
    mut last: Option<u64>,
    step: StepFn<M>,
    _open: OpenStream,
) {
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    // The server handle is gone without a shutdown: the agent is lost.
                    let _ = tx.send(Err(stopped())).await;
                    return;
                }
            }
            () = tx.closed() => return,
        }
        let next = step(&rx.borrow_and_update(), &mut last);
        match next {
            Step::Send(message) => {
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            Step::Wait => {}
            Step::End(status) => {
                // The client may already be gone; then nobody needs the status.
                let _ = tx.send(Err(status)).await;
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = ReceiverStream<Result<X509svidResponse, Status>>;
    type FetchX509BundlesStream = ReceiverStream<Result<X509BundlesResponse, Status>>;
    type FetchJWTBundlesStream = ReceiverStream<Result<JwtBundlesResponse, Status>>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        self.admit(&request)?;
        self.count(|c| c.x509_svid_fetches += 1);
        self.open_stream(StreamKind::X509Svid, x509_svid_step)
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        self.admit(&request)?;
        self.count(|c| c.x509_bundle_fetches += 1);
        self.open_stream(StreamKind::X509Bundles, x509_bundles_step)
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.admit(&request)?;
        self.count(|c| c.jwt_bundle_fetches += 1);
        self.open_stream(StreamKind::JwtBundles, jwt_bundles_step)
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        self.admit(&request)?;
        self.count(|c| c.jwt_svid_fetches += 1);
        let request = request.into_inner();
        if request.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let (x509, authorities, ttl) = {
            let state = self.shared.state.borrow();
            if state.stopping {
                return Err(stopped());
            }
            let x509 = match &state.identity {
                Identity::Pending => return Err(Status::unavailable("no SVID issued yet")),
                Identity::Denied => return Err(Status::permission_denied(NO_IDENTITY)),
                Identity::Issued(x509) => Arc::clone(x509),
            };
            (x509, state.jwt_authorities.clone(), state.jwt_svid_ttl)
        };
        let wanted: Vec<_> = x509
            .identities
            .iter()
            .filter(|i| request.spiffe_id.is_empty() || i.spiffe_id == request.spiffe_id)
            .collect();
        if wanted.is_empty() {
            return Err(Status::permission_denied(format!(
                "{NO_IDENTITY} for the requested SPIFFE ID"
            )));
        }
        let audiences: Vec<&str> = request.audience.iter().map(String::as_str).collect();
        let mut svids = Vec::new();
        for identity in wanted {
            let Some(authority) = SpiffeId::new(&identity.spiffe_id)
                .ok()
                .and_then(|id| authorities.get(&id.trust_domain().id_string()))
            else {
                continue;
            };
            let token = authority
                .mint(&identity.spiffe_id, &audiences, ttl)
                .map_err(|e| Status::internal(format!("minting the JWT-SVID failed: {e}")))?;
            svids.push(Jwtsvid {
                spiffe_id: identity.spiffe_id.clone(),
                svid: token,
                hint: identity.hint.clone(),
            });
        }
        if svids.is_empty() {
            return Err(Status::unavailable(
                "no JWT-SVID authority for the workload's trust domain",
            ));
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        self.admit(&request)?;
        self.count(|c| c.jwt_validations += 1);
        let request = request.into_inner();
        if request.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if request.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let bundles = {
            let state = self.shared.state.borrow();
            if state.stopping {
                return Err(stopped());
            }
            if matches!(state.identity, Identity::Denied) {
                return Err(Status::permission_denied(NO_IDENTITY));
            }
            state.jwt_bundles.clone().unwrap_or_default()
        };
        // Like SPIRE, a token that does not validate is an invalid argument.
        let validated = validate(&request.svid, &request.audience, &bundles)
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: validated.spiffe_id,
            claims: Some(to_struct(validated.claims)),
        }))
    }
}
