//! What can go wrong setting up an issuer and fetching its keys. Each type is the error of
//! one step; their messages go to the operator's log (nothing in them is secret).

use std::fmt;
use std::time::Duration;

use http::Uri;

/// Why a JWK cannot verify signatures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    #[error("not a signing key (use is not \"sig\")")]
    NotForSigning,
    #[error("not a verification key (key_ops lacks \"verify\")")]
    NotForVerifying,
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("{0} is not base64url")]
    NotBase64Url(&'static str),
    #[error("RSA modulus shorter than 2048 bits")]
    RsaModulusTooShort,
    #[error("RSA exponent is zero")]
    RsaExponentZero,
    #[error("unsupported EC curve (only P-256 and P-384; P-521 cannot be verified)")]
    UnsupportedEcCurve,
    #[error("P-256 coordinates must be 32 bytes each")]
    P256CoordinateLength,
    #[error("a P-256 public key is 65 bytes: 0x04, x, y")]
    P256PointLength,
    #[error("P-384 coordinates must be 48 bytes each")]
    P384CoordinateLength,
    #[error("a P-384 public key is 97 bytes: 0x04, x, y")]
    P384PointLength,
    #[error("unsupported OKP curve (only Ed25519)")]
    UnsupportedOkpCurve,
    #[error("an Ed25519 public key is 32 bytes")]
    Ed25519KeyLength,
    #[error("unsupported key type {0:?}")]
    UnsupportedKeyType(String),
    /// The key's `alg` is none the gateway verifies.
    #[error("the key's alg: {0}")]
    UnsupportedAlgorithm(String),
    /// The key's `alg` is one its type or curve cannot verify.
    #[error("the key's alg is {alg}, which {key} cannot verify")]
    AlgorithmNotForKey {
        alg: &'static str,
        key: &'static str,
    },
}

/// A configured key that cannot be used, named by its `kid` or its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key {key}: {source}")]
pub struct KeyError {
    pub key: String,
    pub source: JwkError,
}

/// A document that is not a JWKS. (One whose `keys` hold no usable key is a JWKS: an
/// empty set.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("the JWKS is not a JSON object")]
    NotAnObject,
    #[error("the JWKS has no \"keys\" array")]
    NoKeysArray,
}

/// Why an address may not be fetched keys from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FetchUriError {
    #[error("no host")]
    NoHost,
    #[error("http:// is allowed only to a loopback address; use https://")]
    PlainHttpNotLoopback,
    #[error("the URL must start with https://")]
    NotHttps,
    #[error(
        "an https:// issuer's metadata may not send keys to be fetched over http:// (a loopback address included)"
    )]
    PlainHttpFromHttps,
}

/// Why an issuer's metadata addresses cannot be formed from its `iss`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryUriError {
    #[error("the issuer is not a URL, so its metadata cannot be discovered")]
    NotAUrl,
    #[error("issuer: {0}")]
    Issuer(FetchUriError),
    #[error("the issuer is not an absolute URL")]
    NotAbsolute,
    #[error("an issuer URL has no query")]
    HasQuery,
    #[error("cannot form the metadata URL {0}")]
    MetadataUrl(String),
}

/// Why the HTTPS client for keys and metadata cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    #[error("ca {0}")]
    Ca(#[from] idgate_tls::roots::CaFileError),
    #[error("{0}")]
    Client(#[from] idgate_tls::client::ClientError),
}

/// Why one GET of a document failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Request(#[from] http::Error),
    #[error("{0}")]
    Connection(#[from] idgate_tls::client::RequestError),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("reading the body: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Why the issuer's metadata did not give a `jwks_uri`.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// Every candidate address failed to answer.
    #[error("no issuer metadata found: {}", Joined(.0))]
    NotFound(Vec<(Uri, FetchError)>),
    #[error("{0}: not a JSON object")]
    NotAnObject(Uri),
    #[error("{0}: the metadata names another issuer")]
    OtherIssuer(Uri),
    #[error("{0}: the metadata has no jwks_uri")]
    NoJwksUri(Uri),
    #[error("{0}: jwks_uri is not a URL")]
    JwksUriNotAUrl(Uri),
    #[error("{uri}: jwks_uri: {source}")]
    JwksUri { uri: Uri, source: FetchUriError },
}

/// `uri: error; uri: error`, the attempts of a discovery.
struct Joined<'a>(&'a [(Uri, FetchError)]);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (uri, e)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{uri}: {e}")?;
        }
        Ok(())
    }
}

/// Why a refresh of an issuer's keys failed; the keys it had stay in use.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("{uri}: {source}")]
    Fetch { uri: Uri, source: FetchError },
    #[error("{uri}: {source}")]
    Document { uri: Uri, source: JwksError },
}

/// An issuer whose configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub struct IssuerSetupError {
    /// The issuer's name (a configured issuer) or its `iss` (an issuer with static keys);
    /// empty when the name itself is missing.
    pub issuer: String,
    /// The position of a configured issuer in the list given; `None` for one with static
    /// keys.
    pub position: Option<usize>,
    #[source]
    pub problem: IssuerProblem,
}

impl fmt::Display for IssuerSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.issuer.is_empty() {
            write!(f, "jwt issuer: {}", self.problem)
        } else {
            write!(f, "jwt issuer {}: {}", self.issuer, self.problem)
        }
    }
}

/// What is wrong with an issuer's configuration.
#[derive(Debug, thiserror::Error)]
pub enum IssuerProblem {
    #[error("name is empty")]
    NoName,
    #[error("issuer is empty")]
    NoIssuer,
    #[error(
        "audiences must list at least one non-empty audience: a token for any audience is a token for someone else"
    )]
    NoAudience,
    #[error("algorithms is empty")]
    NoAlgorithm,
    #[error("issuer {0:?} is configured twice")]
    Duplicate(String),
    #[error("jwks_uri: {0}")]
    JwksUri(FetchUriError),
    #[error("{0}")]
    Discovery(DiscoveryUriError),
    #[error("refresh intervals must be more than zero")]
    ZeroRefreshInterval,
    #[error("{0}")]
    HttpClient(Box<HttpClientError>),
    #[error("{0}")]
    Key(KeyError),
    #[error("no signing key")]
    NoSigningKey,
}

impl IssuerProblem {
    /// The key of the issuer's configuration this is about, under the issuer's own:
    /// `audiences`, `jwks_uri`, `ca`; empty for the issuer as a whole.
    pub fn key(&self) -> &'static str {
        match self {
            Self::NoName => "name",
            Self::NoIssuer | Self::Duplicate(_) | Self::Discovery(_) => "issuer",
            Self::NoAudience => "audiences",
            Self::NoAlgorithm => "algorithms",
            Self::JwksUri(_) => "jwks_uri",
            Self::ZeroRefreshInterval => "",
            Self::HttpClient(e) => match **e {
                HttpClientError::Ca(_) => "ca",
                HttpClientError::Client(_) => "",
            },
            Self::Key(_) | Self::NoSigningKey => "",
        }
    }
}
