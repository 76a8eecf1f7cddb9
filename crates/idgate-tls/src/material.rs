//! The gateway's TLS material: its own SVID and the trust bundles, loaded from files or
//! streamed from the SPIFFE Workload API ([`crate::workload`]), swapped atomically when they
//! change, and kept as they were when a new file or update is bad.
//!
//! The rustls `ServerConfig` is built once; it reads the current SVID through a certificate
//! resolver and the current bundles through [`SpiffeClientVerifier`], so a rotation reaches
//! new handshakes at once and never touches a connection that is already up.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{ASN1Time, FromDer, X509Certificate};
use zeroize::Zeroizing;

use crate::spiffe::{SpiffeId, TrustDomain};
use crate::svid::{leaf_facts, not_after};
use crate::verifier::{SpiffeClientVerifier, TrustBundles, build_domain_verifier};

/// A problem with one TLS file; names the file and never includes key material.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl MaterialError {
    fn invalid(path: &Path, reason: impl fmt::Display) -> Self {
        Self::Invalid {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// Lowest TLS version the listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// Which files make up the material.
#[derive(Debug, Clone)]
pub struct MaterialSpec {
    pub svid_cert: PathBuf,
    pub svid_key: PathBuf,
    pub bundles: Vec<(TrustDomain, PathBuf)>,
}

impl MaterialSpec {
    /// Every file the material is read from.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        [self.svid_cert.as_path(), self.svid_key.as_path()]
            .into_iter()
            .chain(self.bundles.iter().map(|(_, p)| p.as_path()))
    }
}

/// A file's contents, zeroed when dropped: the SVID's private key is read this way too.
fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, MaterialError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| MaterialError::Read {
            path: path.to_owned(),
            source,
        })
}

/// What is kept of a file to tell whether it changed: its SHA-256, never its contents (one
/// of the files is the private key).
type Seen = [u8; 32];

fn seen_of(bytes: &[u8]) -> Seen {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// Parses a PEM certificate chain (leaf first) and its private key into a signing identity.
pub fn parse_svid(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, MaterialError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| MaterialError::invalid(cert_path, format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(MaterialError::invalid(
            cert_path,
            "no CERTIFICATE block found",
        ));
    }
    refuse_expired(cert_path, &chain[0])?;
    // The error of a key parse never includes the key bytes.
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| {
        MaterialError::invalid(key_path, "no readable PKCS#8, PKCS#1 or SEC1 private key")
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        MaterialError::invalid(
            key_path,
            format!(
                "the key does not fit the certificate {}: {e}",
                cert_path.display()
            ),
        )
    })
}

/// Refuses a leaf certificate that has expired: serving it would fail every handshake, while
/// the certificate in use may still be good. (One not valid *yet* is taken: a few seconds of
/// clock skew between issuer and gateway must not get a fresh SVID refused for good.)
fn refuse_expired(path: &Path, leaf: &CertificateDer<'_>) -> Result<(), MaterialError> {
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|_| {
        MaterialError::invalid(path, "the first certificate is not valid DER X.509")
    })?;
    let not_after = cert.validity().not_after;
    if ASN1Time::now() > not_after {
        return Err(MaterialError::invalid(
            path,
            format!("the certificate expired at {not_after}"),
        ));
    }
    Ok(())
}

/// Parses a PEM trust bundle: one or more CA certificates.
pub fn parse_bundle(path: &Path, pem: &[u8]) -> Result<RootCertStore, MaterialError> {
    let mut store = RootCertStore::empty();
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| MaterialError::invalid(path, format!("bad PEM: {e}")))?;
        store
            .add(cert)
            .map_err(|e| MaterialError::invalid(path, format!("unusable CA certificate: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(MaterialError::invalid(path, "no CERTIFICATE block found"));
    }
    Ok(store)
}

/// The last `notAfter` among the certificates of a PEM bundle: until then some CA of the
/// bundle can still vouch for a client. `None` when no certificate's date can be read.
fn bundle_not_after(pem: &[u8]) -> Option<SystemTime> {
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .filter_map(|cert| not_after(&cert))
        .max()
}

/// When the material in use stops being valid, for the gateway's metrics.
#[derive(Debug, Clone, Default)]
pub struct Expiry {
    /// The gateway's own certificate: its SPIFFE ID (when it is an SVID) and its `notAfter`.
    pub svid: Option<(Option<SpiffeId>, SystemTime)>,
    /// Per trust domain, the last `notAfter` among its bundle's CAs.
    pub bundles: Vec<(TrustDomain, SystemTime)>,
}

/// What a reload did, for logs and tests.
#[derive(Debug, Default)]
pub struct ReloadOutcome {
    /// Files whose new content was taken into use.
    pub applied: Vec<PathBuf>,
    /// Files whose new content was refused; the old material stays in use.
    pub refused: Vec<MaterialError>,
}

impl ReloadOutcome {
    pub fn changed(&self) -> bool {
        !self.applied.is_empty() || !self.refused.is_empty()
    }
}

/// The live TLS material. Cheap to share; every method is safe to call concurrently.
pub struct TlsMaterial {
    /// The files it is read from, swapped whole when the configuration names other files
    /// ([`TlsMaterial::take_from`]); none when the material comes from the Workload API.
    spec: ArcSwapOption<MaterialSpec>,
    provider: Arc<CryptoProvider>,
    /// None only until the Workload API delivered the first SVID: no handshake can succeed
    /// before, which is why the listener is not bound until [`TlsMaterial::wait_ready`].
    svid: Arc<ArcSwapOption<CertifiedKey>>,
    bundles: Arc<ArcSwap<TrustBundles>>,
    /// Per trust domain, the last `notAfter` of the bundle in use.
    bundle_expiry: ArcSwap<BTreeMap<TrustDomain, SystemTime>>,
    /// The digest of each file's contents last looked at, so that an unchanged file is not
    /// parsed again and a bad file is reported once, not at every poll.
    seen: Mutex<HashMap<PathBuf, Seen>>,
    /// Whether an SVID is in place.
    ready: tokio::sync::watch::Sender<bool>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Loads every file; any problem is returned (all of them), since there is nothing old to
    /// fall back to at start-up.
    pub fn load(
        spec: MaterialSpec,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, Vec<MaterialError>> {
        let mut errors = Vec::new();
        let mut seen = HashMap::new();
        let mut contents = |p: &Path, errors: &mut Vec<MaterialError>| match read(p) {
            Ok(bytes) => {
                seen.insert(p.to_owned(), seen_of(&bytes));
                Some(bytes)
            }
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let cert = contents(&spec.svid_cert, &mut errors);
        let key = contents(&spec.svid_key, &mut errors);
        let svid = match (cert, key) {
            (Some(c), Some(k)) => parse_svid(&spec.svid_cert, &c, &spec.svid_key, &k, &provider)
                .map_err(|e| errors.push(e))
                .ok(),
            _ => None,
        };
        let mut verifiers = HashMap::new();
        let mut expiry = BTreeMap::new();
        for (td, path) in &spec.bundles {
            let Some(pem) = contents(path, &mut errors) else {
                continue;
            };
            if let Some(t) = bundle_not_after(&pem) {
                expiry.insert(td.clone(), t);
            }
            match parse_bundle(path, &pem).and_then(|store| {
                build_domain_verifier(Arc::new(store), &provider)
                    .map_err(|e| MaterialError::invalid(path, e))
            }) {
                Ok(v) => {
                    verifiers.insert(td.clone(), v);
                }
                Err(e) => errors.push(e),
            }
        }
        match svid {
            Some(svid) if errors.is_empty() => Ok(Self {
                provider,
                svid: Arc::new(ArcSwapOption::from_pointee(svid)),
                bundles: Arc::new(ArcSwap::from_pointee(TrustBundles::from_map(verifiers))),
                bundle_expiry: ArcSwap::from_pointee(expiry),
                seen: Mutex::new(seen),
                spec: ArcSwapOption::from_pointee(spec),
                ready: tokio::sync::watch::Sender::new(true),
            }),
            _ => Err(errors),
        }
    }

    /// Material that has no SVID and trusts no trust domain yet: the Workload API fills it
    /// in ([`TlsMaterial::install_svid`], [`TlsMaterial::install_bundles`]).
    pub fn pending(provider: Arc<CryptoProvider>) -> Self {
        Self {
            spec: ArcSwapOption::empty(),
            provider,
            svid: Arc::new(ArcSwapOption::empty()),
            bundles: Arc::new(ArcSwap::from_pointee(
                TrustBundles::from_map(HashMap::new()),
            )),
            bundle_expiry: ArcSwap::from_pointee(BTreeMap::new()),
            seen: Mutex::new(HashMap::new()),
            ready: tokio::sync::watch::Sender::new(false),
        }
    }

    /// The files the material is read from; none when it comes from the Workload API.
    pub fn spec(&self) -> Option<Arc<MaterialSpec>> {
        self.spec.load_full()
    }

    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// Whether the material has an SVID to present.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Returns once the material has an SVID to present (at once for files).
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        // The sender lives as long as `self`, so the wait only ends when the value is true.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Presents `svid` in every handshake from now on; connections already up keep theirs.
    pub fn install_svid(&self, svid: CertifiedKey) {
        self.svid.store(Some(Arc::new(svid)));
        self.ready.send_replace(true);
    }

    /// Trusts exactly these trust domains from now on, each with its verifier and the last
    /// `notAfter` of its CAs: a trust domain left out is no longer trusted.
    pub(crate) fn install_bundles(
        &self,
        bundles: Vec<(TrustDomain, Arc<dyn ClientCertVerifier>, Option<SystemTime>)>,
    ) {
        let mut map = HashMap::new();
        let mut expiries = BTreeMap::new();
        for (td, verifier, expiry) in bundles {
            if let Some(t) = expiry {
                expiries.insert(td.clone(), t);
            }
            map.insert(td, verifier);
        }
        self.bundles.store(Arc::new(TrustBundles::from_map(map)));
        self.bundle_expiry.store(Arc::new(expiries));
    }

    /// The verifiers in force now, per trust domain.
    #[cfg(test)]
    pub(crate) fn bundles(&self) -> Arc<TrustBundles> {
        self.bundles.load_full()
    }

    /// Serves `other`'s files from now on: its SVID, its trust domains and their bundles
    /// (a trust domain it does not have is no longer trusted), for new handshakes. `other`
    /// was loaded whole, so every file it names is valid; a configuration that names other
    /// files is put into use this way.
    pub fn take_from(&self, other: TlsMaterial) {
        // Under the lock a reload holds: a reload reads either the old files or the new.
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let other_seen = other.seen.into_inner().unwrap_or_default();
        if let Some(svid) = other.svid.load_full() {
            self.svid.store(Some(svid));
            self.ready.send_replace(true);
        }
        self.bundles.store(other.bundles.load_full());
        self.bundle_expiry.store(other.bundle_expiry.load_full());
        self.spec.store(other.spec.load_full());
        *seen = other_seen;
    }

    /// The certificate chain the listener currently presents; none before the Workload API
    /// delivered the first SVID.
    pub fn current_svid(&self) -> Option<Arc<CertifiedKey>> {
        self.svid.load_full()
    }

    /// When the certificate the listener presents and the bundles in use expire. Reads the
    /// material in force now, so it follows every rotation.
    pub fn expiry(&self) -> Expiry {
        let svid = self.svid.load();
        Expiry {
            svid: svid.as_ref().and_then(|svid| svid.cert.first()).and_then(
                |leaf| match leaf_facts(leaf) {
                    (id, Some(not_after)) => Some((id.ok(), not_after)),
                    (_, None) => None,
                },
            ),
            bundles: self
                .bundle_expiry
                .load()
                .iter()
                .map(|(td, t)| (td.clone(), *t))
                .collect(),
        }
    }

    /// Re-reads every file and takes into use each piece whose content changed and parses.
    ///
    /// Blocking file I/O: call it from a blocking thread.
    pub fn reload(&self) -> ReloadOutcome {
        let mut outcome = ReloadOutcome::default();
        let Ok(mut seen) = self.seen.lock() else {
            return outcome;
        };
        let Some(spec) = self.spec.load_full() else {
            return outcome;
        };
        let mut fresh = |p: &Path| -> Option<Zeroizing<Vec<u8>>> {
            match read(p) {
                Ok(bytes) => {
                    let digest = seen_of(&bytes);
                    (seen.insert(p.to_owned(), digest) != Some(digest)).then_some(bytes)
                }
                Err(e) => {
                    // A file that is briefly missing during a swap is not a change of material.
                    tracing::debug!(error = %e, "TLS file not readable, keeping current material");
                    None
                }
            }
        };

        let cert = fresh(&spec.svid_cert);
        let key = fresh(&spec.svid_key);
        if cert.is_some() || key.is_some() {
            // Read both again: one of the two may be unchanged, and they must match.
            match (read(&spec.svid_cert), read(&spec.svid_key)) {
                (Ok(c), Ok(k)) => {
                    match parse_svid(&spec.svid_cert, &c, &spec.svid_key, &k, &self.provider) {
                        Ok(svid) => {
                            self.svid.store(Some(Arc::new(svid)));
                            outcome.applied.push(spec.svid_cert.clone());
                        }
                        Err(e) => outcome.refused.push(e),
                    }
                }
                (Err(e), _) | (_, Err(e)) => outcome.refused.push(e),
            }
        }

        // One file may hold the bundles of several trust domains: read and parse it once,
        // then give every trust domain configured with it the new verifier.
        type Parsed = (Arc<dyn ClientCertVerifier>, Option<SystemTime>);
        let mut by_path: HashMap<&Path, Option<Parsed>> = HashMap::new();
        let mut changed_bundles = Vec::new();
        for (td, path) in &spec.bundles {
            let verifier = by_path.entry(path.as_path()).or_insert_with(|| {
                let pem = fresh(path)?;
                parse_bundle(path, &pem)
                    .and_then(|store| {
                        build_domain_verifier(Arc::new(store), &self.provider)
                            .map_err(|e| MaterialError::invalid(path, e))
                    })
                    .map(|v| (v, bundle_not_after(&pem)))
                    .map_err(|e| outcome.refused.push(e))
                    .ok()
            });
            if let Some((v, expiry)) = verifier {
                changed_bundles.push((td.clone(), path, v.clone(), *expiry));
            }
        }
        if !changed_bundles.is_empty() {
            let mut map = self.bundles.load().map().clone();
            let mut expiries = BTreeMap::clone(&self.bundle_expiry.load());
            for (td, path, v, expiry) in changed_bundles {
                match expiry {
                    Some(t) => expiries.insert(td.clone(), t),
                    None => expiries.remove(&td),
                };
                map.insert(td, v);
                if !outcome.applied.iter().any(|p| p == path) {
                    outcome.applied.push(path.clone());
                }
            }
            self.bundles.store(Arc::new(TrustBundles::from_map(map)));
            self.bundle_expiry.store(Arc::new(expiries));
        }
        outcome
    }

    /// The listener's rustls configuration, reading the live SVID and bundles.
    ///
    /// Session resumption is off: every connection does a full handshake, so every
    /// connection's SVID is checked against the bundles in force at that moment (a resumed
    /// session would carry the identity of an older, possibly revoked or expired, certificate).
    pub fn server_config(
        &self,
        min_version: TlsVersion,
        client_auth_mandatory: bool,
    ) -> Result<ServerConfig, rustls::Error> {
        let versions: &[&'static rustls::SupportedProtocolVersion] = match min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let verifier = SpiffeClientVerifier::new(
            self.bundles.clone(),
            self.provider.clone(),
            client_auth_mandatory,
        );
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(versions)?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(SvidResolver(self.svid.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(config)
    }
}

#[derive(Debug)]
struct SvidResolver(Arc<ArcSwapOption<CertifiedKey>>);

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load_full()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::devpki::{self, DevPkiRequest};

    fn pki(dir: &Path, validity: Duration) -> devpki::DevPkiFiles {
        devpki::generate(
            dir,
            &DevPkiRequest {
                trust_domain: "example.org".parse().unwrap(),
                workloads: Vec::new(),
                validity,
            },
        )
        .unwrap()
    }

    /// The material of `files`: the gateway's SVID, and the bundle for example.org.
    fn load(files: &devpki::DevPkiFiles) -> TlsMaterial {
        TlsMaterial::load(
            MaterialSpec {
                svid_cert: files.gateway_cert.clone(),
                svid_key: files.gateway_key.clone(),
                bundles: vec![("example.org".parse().unwrap(), files.bundle.clone())],
            },
            crate::crypto_provider(),
        )
        .unwrap()
    }

    fn not_after_of(path: &Path) -> SystemTime {
        let pem = std::fs::read(path).unwrap();
        let leaf = CertificateDer::pem_slice_iter(&pem)
            .next()
            .unwrap()
            .unwrap();
        not_after(&leaf).unwrap()
    }

    #[test]
    fn material_remembers_its_files_by_digest_never_the_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let files = pki(dir.path(), Duration::from_secs(3600));
        let material = load(&files);
        // What is kept of each file, the key's included, is the SHA-256 of its contents.
        let check = |material: &TlsMaterial| {
            let seen = material.seen.lock().unwrap();
            assert_eq!(seen.len(), 3, "the certificate, the key and the bundle");
            for (path, kept) in seen.iter() {
                let kept: &[u8] = kept.as_ref();
                let contents = std::fs::read(path).unwrap();
                let digest = ring::digest::digest(&ring::digest::SHA256, &contents);
                assert_eq!(kept, digest.as_ref(), "{}", path.display());
            }
        };
        check(&material);

        // A rotated key is told apart by its digest, and taken into use.
        let next = tempfile::tempdir().unwrap();
        let renewed = pki(next.path(), Duration::from_secs(3600));
        std::fs::copy(&renewed.gateway_cert, &files.gateway_cert).unwrap();
        std::fs::copy(&renewed.gateway_key, &files.gateway_key).unwrap();
        let outcome = material.reload();
        assert!(outcome.refused.is_empty(), "{:?}", outcome.refused);
        assert_eq!(outcome.applied, vec![files.gateway_cert.clone()]);
        check(&material);
        // Nothing changed: nothing applied.
        assert!(material.reload().applied.is_empty());
    }

    #[test]
    fn expiry_names_the_svid_and_follows_each_rotation_of_svid_and_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let files = pki(dir.path(), Duration::from_secs(3600));
        let td: TrustDomain = "example.org".parse().unwrap();
        let material = load(&files);
        let first = material.expiry();
        let (id, svid_until) = first.svid.clone().unwrap();
        assert_eq!(id.unwrap().as_str(), "spiffe://example.org/idgate");
        assert_eq!(svid_until, not_after_of(&files.gateway_cert));
        assert_eq!(
            first.bundles,
            vec![(td.clone(), not_after_of(&files.bundle))]
        );

        // A new SVID and a bundle of two CAs, the new one lasting longer: the SVID's date is
        // the new certificate's, the bundle's the later CA's.
        let next = tempfile::tempdir().unwrap();
        let renewed = pki(next.path(), Duration::from_secs(2 * 86_400));
        let mut both = std::fs::read(&files.bundle).unwrap();
        both.extend(std::fs::read(&renewed.bundle).unwrap());
        std::fs::write(&files.bundle, &both).unwrap();
        std::fs::copy(&renewed.gateway_cert, &files.gateway_cert).unwrap();
        std::fs::copy(&renewed.gateway_key, &files.gateway_key).unwrap();
        let outcome = material.reload();
        assert!(outcome.refused.is_empty(), "{:?}", outcome.refused);
        let second = material.expiry();
        assert_eq!(second.svid.unwrap().1, not_after_of(&renewed.gateway_cert));
        assert_eq!(second.bundles, vec![(td, not_after_of(&renewed.bundle))]);
        assert!(second.bundles[0].1 > first.bundles[0].1);
    }
}
