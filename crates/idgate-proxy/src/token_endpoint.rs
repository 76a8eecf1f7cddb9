//! The built-in OAuth2 token endpoint (RFC 6749 client credentials grant) and its discovery
//! documents:
//!
//! - `POST /oauth2/token` — clients authenticate with their SVID (RFC 8705
//!   `tls_client_auth`) or a client secret (`client_secret_basic` / `client_secret_post`);
//!   tokens are always bound to the connection's client certificate (`cnf.x5t#S256`), so a
//!   token copied elsewhere is useless without the key of that certificate;
//! - `GET /.well-known/jwks.json` and `GET /.well-known/oauth-authorization-server`.
//!
//! A request is answered in two steps, [`TokenEndpoint::prepare`] and
//! [`TokenEndpoint::serve`]: between them the pipeline takes the place of the request's
//! record in the audit queue, so that only a request that will be served (a document, or a
//! token for a client that authenticated) holds one, and a request whose form never comes
//! or whose client fails does not.
//!
//! Errors use the RFC 6749 §5.2 members (`error`, `error_description`) inside an RFC 9457
//! problem document, so OAuth clients and problem-aware clients both understand them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONTENT_TYPE, HeaderValue, PRAGMA, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use idgate_auth::issuer::TokenIssuer;
use idgate_config::TokenEndpointConfig;
use idgate_secrets::{ExposeSecret, SecretError, SecretString};
use idgate_tls::SpiffeId;
use subtle::ConstantTimeEq;

use crate::access_log::Decision;
use crate::conn::ConnInfo;
use crate::problem::ProblemKind;

pub const TOKEN_PATH: &str = "/oauth2/token";
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";

/// Largest token request body read.
const MAX_FORM: usize = 8 * 1024;

struct Client {
    client_id: String,
    spiffe_id: Option<SpiffeId>,
    secret: Option<SecretString>,
    scopes: Vec<String>,
}

/// Why the token endpoint cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TokenEndpointError {
    #[error("{0}")]
    SigningKeyUnreadable(SecretError),
    #[error("{0}")]
    SigningKey(#[from] idgate_auth::issuer::IssuerError),
    #[error("{source}")]
    PreviousSigningKeyUnreadable {
        /// Its place in `previous_signing_keys`.
        position: usize,
        source: SecretError,
    },
    #[error("{source}")]
    PreviousSigningKey {
        position: usize,
        source: idgate_auth::issuer::IssuerError,
    },
    #[error("client {client_id}: {source}")]
    ClientSecret {
        /// The client's place in `[[token_endpoint.clients]]`.
        position: usize,
        client_id: String,
        #[source]
        source: SecretError,
    },
}

impl TokenEndpointError {
    /// The key path of the setting at fault: `token_endpoint.signing_key`.
    pub fn key(&self) -> String {
        match self {
            Self::SigningKeyUnreadable(_) | Self::SigningKey(_) => {
                "token_endpoint.signing_key".to_owned()
            }
            Self::PreviousSigningKeyUnreadable { position, .. }
            | Self::PreviousSigningKey { position, .. } => {
                format!("token_endpoint.previous_signing_keys[{position}]")
            }
            Self::ClientSecret { position, .. } => {
                format!("token_endpoint.clients[{position}].client_secret")
            }
        }
    }
}

/// What the endpoint made of a request before serving anything.
pub enum Prepared<'e> {
    /// Answered at once: refused, with the request's decision.
    Refused(Response<Full<Bytes>>, Decision),
    /// To be served by [`TokenEndpoint::serve`].
    Serve(Serve<'e>),
}

/// What a request is to be served: a discovery document, or an authenticated client's token.
pub struct Serve<'e>(Served<'e>);

enum Served<'e> {
    Document(serde_json::Value),
    Token(Grant<'e>),
}

/// The token an authenticated client may have: its scopes, bound to the thumbprint of the
/// connection's certificate.
struct Grant<'e> {
    client: &'e Client,
    scopes: Vec<String>,
    x5t: String,
}

pub struct TokenEndpoint {
    /// Shared with the blocking thread that signs each token.
    pub issuer: Arc<TokenIssuer>,
    clients: Vec<Client>,
}

impl std::fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEndpoint")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl TokenEndpoint {
    /// Reads the signing key and client secrets. Blocking.
    pub fn load(cfg: &TokenEndpointConfig) -> Result<Self, TokenEndpointError> {
        let pem = cfg
            .signing_key
            .fetch()
            .map_err(TokenEndpointError::SigningKeyUnreadable)?;
        let mut previous = Vec::with_capacity(cfg.previous_signing_keys.len());
        for (position, r) in cfg.previous_signing_keys.iter().enumerate() {
            let pem =
                r.fetch()
                    .map_err(|source| TokenEndpointError::PreviousSigningKeyUnreadable {
                        position,
                        source,
                    })?;
            previous.push(pem);
        }
        let pems: Vec<&[u8]> = previous.iter().map(|p| p.value.expose_secret()).collect();
        let issuer = TokenIssuer::new(
            cfg.issuer.clone(),
            cfg.audience.clone(),
            cfg.token_ttl,
            pem.value.expose_secret(),
        )?
        .with_previous(&pems)
        .map_err(
            |(position, source)| TokenEndpointError::PreviousSigningKey { position, source },
        )?;
        let mut clients = Vec::new();
        for (position, c) in cfg.clients.iter().enumerate() {
            let secret = match &c.client_secret {
                Some(r) => {
                    Some(
                        r.resolve()
                            .map_err(|source| TokenEndpointError::ClientSecret {
                                position,
                                client_id: c.client_id.clone(),
                                source,
                            })?,
                    )
                }
                None => None,
            };
            clients.push(Client {
                client_id: c.client_id.clone(),
                spiffe_id: c.spiffe_id.clone(),
                secret,
                scopes: c.scopes.clone(),
            });
        }
        Ok(Self {
            issuer: Arc::new(issuer),
            clients,
        })
    }

    /// Whether `path` is one of the endpoint's paths.
    pub fn handles(path: &str) -> bool {
        matches!(path, TOKEN_PATH | JWKS_PATH | METADATA_PATH)
    }

    /// Reads one request to the endpoint's paths, up to what it would serve: a discovery
    /// document, or for `POST /oauth2/token` the token of a client it authenticated
    /// (`gate` is asked about a client before its secret is compared); anything else is
    /// answered here. Nothing is served before [`TokenEndpoint::serve`], so the caller can
    /// make room for the request's record in between.
    pub async fn prepare(
        &self,
        conn: &ConnInfo,
        req: &http::request::Parts,
        body: Incoming,
        request_id: &str,
        gate: &dyn ClientGate,
    ) -> Prepared<'_> {
        let (method, path, headers) = (&req.method, req.uri.path(), &req.headers);
        match (path, method) {
            (JWKS_PATH, &Method::GET | &Method::HEAD) => {
                Prepared::Serve(Serve(Served::Document(self.issuer.jwks())))
            }
            (METADATA_PATH, &Method::GET | &Method::HEAD) => {
                Prepared::Serve(Serve(Served::Document(self.issuer.metadata())))
            }
            (TOKEN_PATH, &Method::POST) => match self.grant(conn, headers, body, gate).await {
                Ok(grant) => Prepared::Serve(Serve(Served::Token(grant))),
                Err(e) => Prepared::Refused(e.response(request_id), e.decision()),
            },
            (TOKEN_PATH, _) => method_not_allowed("use POST", "POST", request_id),
            _ => method_not_allowed("use GET", "GET, HEAD", request_id),
        }
    }

    /// Serves what [`TokenEndpoint::prepare`] found to serve: a discovery document, or a
    /// token signed for its client.
    pub async fn serve(
        &self,
        serve: Serve<'_>,
        request_id: &str,
    ) -> (Response<Full<Bytes>>, Decision) {
        match serve.0 {
            Served::Document(v) => (json_response(StatusCode::OK, &v, true), Decision::Allowed),
            Served::Token(grant) => match self.issue(grant).await {
                Ok(v) => {
                    let mut r = json_response(StatusCode::OK, &v, false);
                    r.headers_mut()
                        .insert(PRAGMA, HeaderValue::from_static("no-cache"));
                    (r, Decision::Allowed)
                }
                Err(e) => (e.response(request_id), e.decision()),
            },
        }
    }

    /// Reads a token request's form and authenticates its client: the token it may have.
    async fn grant(
        &self,
        conn: &ConnInfo,
        headers: &http::HeaderMap,
        body: Incoming,
        gate: &dyn ClientGate,
    ) -> Result<Grant<'_>, OAuthError> {
        let ct = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
        {
            return Err(OAuthError::bad(
                "invalid_request",
                "send application/x-www-form-urlencoded",
            ));
        }
        let collect = Limited::new(body, MAX_FORM).collect();
        let bytes = tokio::time::timeout(Duration::from_secs(10), collect)
            .await
            .map_err(|_| {
                OAuthError::bad("invalid_request", "the request body did not arrive in time")
            })?
            .map_err(|_| {
                OAuthError::bad(
                    "invalid_request",
                    "the request body is too large or unreadable",
                )
            })?
            .to_bytes();
        let form = parse_form(&bytes)
            .ok_or_else(|| OAuthError::bad("invalid_request", "malformed form body"))?;
        let get = |name: &str| -> Result<Option<&str>, OAuthError> {
            let mut it = form.iter().filter(|(k, _)| k == name);
            let first = it.next().map(|(_, v)| v.as_str());
            // RFC 6749 §3.2: parameters must not be repeated.
            if it.next().is_some() {
                return Err(OAuthError::bad(
                    "invalid_request",
                    "a parameter is repeated",
                ));
            }
            Ok(first)
        };
        match get("grant_type")? {
            Some("client_credentials") => {}
            Some(_) => {
                return Err(OAuthError::bad(
                    "unsupported_grant_type",
                    "only client_credentials is supported",
                ));
            }
            None => return Err(OAuthError::bad("invalid_request", "grant_type is missing")),
        }
        // The token is bound to the connection's certificate, so there must be one.
        let Some(x5t) = conn.cert_thumbprint.as_deref() else {
            return Err(OAuthError::bad(
                "invalid_request",
                "a client certificate is required: issued tokens are bound to it (RFC 8705)",
            ));
        };

        let basic = basic_credentials(headers)?;
        let form_id = get("client_id")?;
        let form_secret = get("client_secret")?;
        let client = match (basic, form_secret) {
            (Some(_), Some(_)) => {
                return Err(OAuthError::bad(
                    "invalid_request",
                    "use one client authentication method",
                ));
            }
            (Some((id, secret)), None) => {
                // A locked-out client is refused before its secret is compared.
                if let Some(left) = gate.locked_out(&id).await {
                    return Err(OAuthError::locked_out(left));
                }
                self.by_secret(conn, &id, &secret)?
            }
            (None, Some(secret)) => {
                let id = form_id
                    .ok_or_else(|| OAuthError::bad("invalid_request", "client_id is missing"))?;
                if let Some(left) = gate.locked_out(id).await {
                    return Err(OAuthError::locked_out(left));
                }
                self.by_secret(conn, id, secret)?
            }
            (None, None) => self.by_certificate(conn, form_id)?,
        };

        let scopes = match get("scope")? {
            None => client.scopes.clone(),
            Some(s) => {
                let asked: Vec<String> = s
                    .split(' ')
                    .filter(|x| !x.is_empty())
                    .map(str::to_owned)
                    .collect();
                if let Some(bad) = asked.iter().find(|a| !client.scopes.contains(a)) {
                    let _ = bad;
                    return Err(OAuthError::bad(
                        "invalid_scope",
                        "a requested scope is not granted to this client",
                    ));
                }
                asked
            }
        };
        Ok(Grant {
            client,
            scopes,
            x5t: x5t.to_owned(),
        })
    }

    /// Signs a grant's token.
    async fn issue(&self, grant: Grant<'_>) -> Result<serde_json::Value, OAuthError> {
        let Grant {
            client,
            scopes,
            x5t,
        } = grant;
        // Signing runs on a blocking thread: an RSA signature takes milliseconds (tens of
        // them with an 8192-bit key), which the worker's other connections must not wait on.
        let signed = {
            let (issuer, client_id) = (self.issuer.clone(), client.client_id.clone());
            let scopes = scopes.clone();
            tokio::task::spawn_blocking(move || {
                issuer.issue(&client_id, &scopes, &x5t, SystemTime::now())
            })
            .await
        };
        let (token, expires_in) = match signed {
            Ok(Ok(issued)) => issued,
            Ok(Err(_)) | Err(_) => {
                return Err(OAuthError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "the token could not be signed",
                ));
            }
        };
        tracing::info!(client_id = %client.client_id, scopes = %scopes.join(" "), "access token issued");
        Ok(serde_json::json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "scope": scopes.join(" "),
        }))
    }

    fn by_secret(&self, conn: &ConnInfo, id: &str, secret: &str) -> Result<&Client, OAuthError> {
        let client = self.clients.iter().find(|c| c.client_id == id);
        // Digests of equal length are compared, so neither the secret's length nor whether
        // the client exists shows in the timing.
        let expected = client
            .and_then(|c| c.secret.as_ref())
            .map(|s| s.expose_secret().as_bytes())
            .unwrap_or(b"\0unknown-client\0");
        let digest = |b: &[u8]| ring::digest::digest(&ring::digest::SHA256, b);
        let ok: bool = digest(expected)
            .as_ref()
            .ct_eq(digest(secret.as_bytes()).as_ref())
            .into();
        match client {
            // A client registered with a SPIFFE ID must also present that SVID: the secret
            // alone does not let another workload act as it.
            Some(c)
                if ok
                    && c.secret.is_some()
                    && c.spiffe_id
                        .as_ref()
                        .is_none_or(|id| conn.peer.as_ref() == Some(id)) =>
            {
                Ok(c)
            }
            _ => Err(OAuthError::invalid_client()),
        }
    }

    fn by_certificate(
        &self,
        conn: &ConnInfo,
        form_id: Option<&str>,
    ) -> Result<&Client, OAuthError> {
        let Some(peer) = &conn.peer else {
            return Err(OAuthError::invalid_client());
        };
        // tls_client_auth: the SVID alone authenticates clients registered without a secret;
        // a client that has a secret must present it as well.
        let mut candidates = self
            .clients
            .iter()
            .filter(|c| c.secret.is_none() && c.spiffe_id.as_ref() == Some(peer));
        match form_id {
            Some(id) => candidates
                .find(|c| c.client_id == id)
                .ok_or_else(OAuthError::invalid_client),
            None => {
                let first = candidates.next();
                if candidates.next().is_some() {
                    return Err(OAuthError::bad(
                        "invalid_request",
                        "several clients use this certificate: send client_id",
                    ));
                }
                first.ok_or_else(OAuthError::invalid_client)
            }
        }
    }
}

pub(crate) fn basic_credentials(
    headers: &http::HeaderMap,
) -> Result<Option<(String, String)>, OAuthError> {
    let Some(v) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| OAuthError::invalid_client())?;
    let Some(rest) = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))
    else {
        return Err(OAuthError::bad(
            "invalid_request",
            "only HTTP Basic client authentication is accepted here",
        ));
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| OAuthError::invalid_client())?;
    let raw = String::from_utf8(raw).map_err(|_| OAuthError::invalid_client())?;
    let (id, secret) = raw.split_once(':').ok_or_else(OAuthError::invalid_client)?;
    // RFC 6749 §2.3.1: both are form-urlencoded before Basic encoding.
    let id = form_decode(id).ok_or_else(OAuthError::invalid_client)?;
    let secret = form_decode(secret).ok_or_else(OAuthError::invalid_client)?;
    Ok(Some((id, secret)))
}

fn form_decode(s: &str) -> Option<String> {
    idgate_codec::percent::decode_form(s)
}

/// Parses `application/x-www-form-urlencoded`.
pub fn parse_form(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    let s = std::str::from_utf8(bytes).ok()?;
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((form_decode(k)?, form_decode(v)?))
        })
        .collect()
}

/// `405` to a method the path does not take.
fn method_not_allowed(
    description: &'static str,
    allow: &'static str,
    request_id: &str,
) -> Prepared<'static> {
    let e = OAuthError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        description,
    );
    let mut r = e.response(request_id);
    r.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    Prepared::Refused(r, e.decision())
}

fn json_response(
    status: StatusCode,
    v: &serde_json::Value,
    cacheable: bool,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static(if cacheable {
            "public, max-age=300"
        } else {
            "no-store"
        }),
    );
    r
}

/// Asked before a client secret is checked, with the client id the request claims: the
/// pipeline answers from the lockout state (`lockout.rs`), which this module does not hold.
pub trait ClientGate: Sync {
    /// How much longer the client is locked out, when it is.
    fn locked_out<'a>(
        &'a self,
        client_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<Duration>> + Send + 'a>>;
}

pub(crate) struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: &'static str,
    /// Set when the client is locked out: the answer is then a `locked-out` problem.
    locked_for: Option<Duration>,
}

impl OAuthError {
    /// Its kind of problem: the error code is its slug and its reason in the record.
    fn kind(&self) -> ProblemKind {
        if self.locked_for.is_some() {
            return ProblemKind::LockedOut;
        }
        ProblemKind::OAuth {
            status: self.status,
            error: self.error,
        }
    }

    /// The request was refused for what it is, or the gateway failed to answer it.
    fn decision(&self) -> Decision {
        self.kind().decision()
    }

    fn new(status: StatusCode, error: &'static str, description: &'static str) -> Self {
        Self {
            status,
            error,
            description,
            locked_for: None,
        }
    }

    /// The client is locked out after failed authentications, for `left` more.
    fn locked_out(left: Duration) -> Self {
        Self {
            locked_for: Some(left),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "locked_out",
                "too many failed authentications of this client; retry after the time in Retry-After",
            )
        }
    }

    fn bad(error: &'static str, description: &'static str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, description)
    }

    /// RFC 6749 §5.2: 401, with the challenge of the HTTP authentication scheme the
    /// endpoint takes (HTTP Basic) whatever way the client tried: RFC 9110 §15.5.2 wants one
    /// with every 401. The description never says whether the id or the secret was wrong.
    fn invalid_client() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        )
    }

    /// Both languages at once: the RFC 6749 members inside a problem document.
    fn response(&self, request_id: &str) -> Response<Full<Bytes>> {
        let mut r = self
            .kind()
            .response(Some(self.description), Some(request_id));
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"idgate\""),
            );
        }
        if let Some(left) = self.locked_for {
            r.headers_mut()
                .insert(RETRY_AFTER, crate::problem::retry_after_value(left));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_parsing_decodes_and_keeps_repeats() {
        let f = parse_form(b"grant_type=client_credentials&scope=a+b%3Ac&scope=x").unwrap();
        assert_eq!(f[0], ("grant_type".into(), "client_credentials".into()));
        assert_eq!(f[1], ("scope".into(), "a b:c".into()));
        assert_eq!(f.len(), 3);
        assert!(parse_form(b"a=%zz").is_none());
        assert!(parse_form(&[0xff, b'=', b'1']).is_none());
    }
}
