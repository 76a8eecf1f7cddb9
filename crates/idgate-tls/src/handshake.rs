//! Why a client's TLS handshake failed, as one word of a fixed set: what the gateway counts
//! refused handshakes by. The words come from the kind of error alone, never from what the
//! peer sent (its certificate's names, its SPIFFE ID), so they are fit for metric labels.

use std::io;

use rustls::{CertificateError, Error, PeerIncompatible};

use crate::verifier::PeerRefusal;

/// The reason a handshake with a client failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The client presented no certificate, and the listener requires one.
    NoClientCertificate,
    /// The client's chain does not lead to a CA in the bundle of its trust domain (an
    /// unknown issuer, or a signature by another key under a bundle CA's name), or its
    /// trust domain has no bundle.
    UnknownCa,
    /// The leaf is not an acceptable X.509-SVID: no or several SPIFFE IDs, a CA, key usage
    /// or extended key usage unfit for a client, an unreadable certificate.
    BadSvid,
    /// The client's certificate (or one of its chain) has expired.
    Expired,
    /// The client's certificate is not valid yet (clock skew between issuer and gateway).
    NotYetValid,
    /// The client offers only TLS versions the listener does not accept.
    ProtocolVersion,
    /// The client ended the handshake with an alert: mostly because it does not trust the
    /// gateway's certificate (an expired gateway SVID, a bundle the client lacks).
    ClientAlert,
    /// What arrived is not a well-formed TLS handshake: plain HTTP sent to the TLS port, a
    /// scanner, a broken client.
    Malformed,
    /// The connection closed or broke before the handshake finished.
    Closed,
    /// The handshake did not finish within the listener's `handshake_timeout`.
    Timeout,
    /// Anything else (no cipher suite in common, an unsupported signature algorithm, …).
    Other,
}

impl HandshakeFailure {
    /// Every reason, in the order of [`HandshakeFailure::as_str`]'s table.
    pub const ALL: [Self; 11] = [
        Self::NoClientCertificate,
        Self::UnknownCa,
        Self::BadSvid,
        Self::Expired,
        Self::NotYetValid,
        Self::ProtocolVersion,
        Self::ClientAlert,
        Self::Malformed,
        Self::Closed,
        Self::Timeout,
        Self::Other,
    ];

    /// The reason as a metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoClientCertificate => "no_client_certificate",
            Self::UnknownCa => "unknown_ca",
            Self::BadSvid => "bad_svid",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::ProtocolVersion => "protocol_version",
            Self::ClientAlert => "client_alert",
            Self::Malformed => "malformed",
            Self::Closed => "closed",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }

    /// The reason of a failed server-side handshake, from the error the TLS stream returned:
    /// tokio-rustls carries the rustls error inside an `io::Error`; a bare `io::Error` is
    /// the connection failing under the handshake.
    pub fn of(error: &io::Error) -> Self {
        if let Some(e) = error.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
            return Self::of_rustls(e);
        }
        match error.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Self::Closed,
            io::ErrorKind::TimedOut => Self::Timeout,
            _ => Self::Other,
        }
    }

    /// The reason of a rustls error met in a server-side handshake.
    pub fn of_rustls(error: &Error) -> Self {
        match error {
            Error::NoCertificatesPresented => Self::NoClientCertificate,
            Error::InvalidCertificate(e) => Self::of_certificate(e),
            Error::PeerIncompatible(
                PeerIncompatible::SupportedVersionsExtensionRequired
                | PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled
                | PeerIncompatible::ServerDoesNotSupportTls12Or13
                | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig,
            ) => Self::ProtocolVersion,
            Error::AlertReceived(_) => Self::ClientAlert,
            Error::InvalidMessage(_)
            | Error::InappropriateMessage { .. }
            | Error::InappropriateHandshakeMessage { .. }
            | Error::PeerMisbehaved(_)
            | Error::PeerSentOversizedRecord => Self::Malformed,
            _ => Self::Other,
        }
    }

    fn of_certificate(error: &CertificateError) -> Self {
        match error {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => Self::UnknownCa,
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => Self::Expired,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                Self::NotYetValid
            }
            CertificateError::BadEncoding
            | CertificateError::UnhandledCriticalExtension
            | CertificateError::InvalidPurpose
            | CertificateError::InvalidPurposeContext { .. } => Self::BadSvid,
            // The SPIFFE verifier's own refusals (`verifier.rs`).
            CertificateError::Other(other) => match other.0.downcast_ref::<PeerRefusal>() {
                Some(PeerRefusal::NotSvid(_)) => Self::BadSvid,
                Some(PeerRefusal::UnknownTrustDomain(_)) => Self::UnknownCa,
                None => Self::Other,
            },
            _ => Self::Other,
        }
    }
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests;
