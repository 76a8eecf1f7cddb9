//! A development PKI: one CA for a trust domain, the gateway's SVID and one SVID per
//! workload, written as PEM files. What a newcomer and the tests use instead of SPIRE.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::spiffe::{SpiffeId, TrustDomain};

#[derive(Debug, thiserror::Error)]
pub enum DevPkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("workload {0} is not in trust domain {1}")]
    ForeignWorkload(SpiffeId, TrustDomain),
    #[error(
        "a validity of {0:?} is out of range: SVIDs live from 1 hour up to {MAX_VALID_HOURS} hours (ten years), and the CA ten times as long"
    )]
    Validity(std::time::Duration),
}

/// The longest validity of an SVID, in hours: ten years (of 365 days), so that the CA's
/// hundred stay well within what a certificate can say (the year 9999).
pub const MAX_VALID_HOURS: u64 = 87_600;

/// [`MAX_VALID_HOURS`] as a duration.
pub const MAX_VALIDITY: std::time::Duration =
    std::time::Duration::from_secs(MAX_VALID_HOURS * 3600);

/// What to generate.
#[derive(Debug, Clone)]
pub struct DevPkiRequest {
    pub trust_domain: TrustDomain,
    pub workloads: Vec<SpiffeId>,
    /// Validity of the leaf SVIDs, at most [`MAX_VALIDITY`] (the CA lives ten times as
    /// long).
    pub validity: std::time::Duration,
}

/// The files written, for a summary to the user.
#[derive(Debug, Clone)]
pub struct DevPkiFiles {
    pub bundle: PathBuf,
    pub ca_key: PathBuf,
    pub gateway_cert: PathBuf,
    pub gateway_key: PathBuf,
    pub gateway_id: SpiffeId,
    pub workloads: Vec<(SpiffeId, PathBuf, PathBuf)>,
}

/// The file stem for a workload: its SPIFFE ID path with `/` turned into `-`
/// (`spiffe://example.org/ns/kyc/sa/onboarding` → `ns-kyc-sa-onboarding`).
pub fn workload_file_stem(id: &SpiffeId) -> String {
    let stem = id.path().trim_start_matches('/').replace('/', "-");
    if stem.is_empty() {
        "workload".to_owned()
    } else {
        stem
    }
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), DevPkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| DevPkiError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    // A file left there (or a link someone placed) is removed, not written through: the new
    // one is created afresh (`O_EXCL`, which follows no link), so it gets this mode.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    opts.mode(if secret { 0o600 } else { 0o644 });
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    // Rename into place, so a watching gateway never reads a half-written file.
    fs::rename(&tmp, path).map_err(io)
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "idgate dev PKI");
    dn.push(DnType::CommonName, cn);
    dn
}

fn leaf_params(
    id: &SpiffeId,
    extra_sans: Vec<SanType>,
    validity: Duration,
) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(id.as_str());
    let mut sans = vec![SanType::URI(id.as_str().try_into()?)];
    sans.extend(extra_sans);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + validity;
    Ok(params)
}

/// Generates the PKI into `out` (created if missing). Keys are written 0600.
pub fn generate(out: &Path, req: &DevPkiRequest) -> Result<DevPkiFiles, DevPkiError> {
    let now = OffsetDateTime::now_utc();
    let out_of_range = || DevPkiError::Validity(req.validity);
    if req.validity > MAX_VALIDITY {
        return Err(out_of_range());
    }
    let validity = Duration::try_from(req.validity).map_err(|_| out_of_range())?;
    let ca_not_after = validity
        .checked_mul(10)
        .and_then(|v| now.checked_add(v))
        .ok_or_else(out_of_range)?;
    for w in &req.workloads {
        if w.trust_domain_name() != req.trust_domain.as_str() {
            return Err(DevPkiError::ForeignWorkload(
                w.clone(),
                req.trust_domain.clone(),
            ));
        }
    }
    fs::create_dir_all(out).map_err(|source| DevPkiError::Io {
        path: out.to_owned(),
        source,
    })?;

    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name(&format!("{} dev CA", req.trust_domain));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // The SPIFFE ID of the trust domain itself, as SPIRE puts on its CAs.
    ca_params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{}", req.trust_domain)
            .as_str()
            .try_into()?,
    )];
    ca_params.not_before = now - Duration::minutes(5);
    ca_params.not_after = ca_not_after;
    let ca_key = KeyPair::generate()?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let files = DevPkiFiles {
        bundle: out.join("bundle.pem"),
        ca_key: out.join("ca.key"),
        gateway_cert: out.join("gateway.crt"),
        gateway_key: out.join("gateway.key"),
        gateway_id: SpiffeId::new(&format!("spiffe://{}/idgate", req.trust_domain))
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?,
        workloads: req
            .workloads
            .iter()
            .map(|id| {
                let stem = workload_file_stem(id);
                (
                    id.clone(),
                    out.join(format!("{stem}.crt")),
                    out.join(format!("{stem}.key")),
                )
            })
            .collect(),
    };

    write_file(&files.bundle, &ca.pem(), false)?;
    write_file(&files.ca_key, &ca_signing_key_pem(&ca), true)?;

    let gw_sans = vec![
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    issue(
        &ca,
        &files.gateway_id,
        gw_sans,
        validity,
        &files.gateway_cert,
        &files.gateway_key,
    )?;
    for (id, crt, key) in &files.workloads {
        issue(&ca, id, Vec::new(), validity, crt, key)?;
    }
    Ok(files)
}

fn ca_signing_key_pem(ca: &CertifiedIssuer<'_, KeyPair>) -> String {
    let issuer: &Issuer<'_, KeyPair> = ca;
    issuer.key().serialize_pem()
}

fn issue(
    ca: &CertifiedIssuer<'_, KeyPair>,
    id: &SpiffeId,
    sans: Vec<SanType>,
    validity: Duration,
    crt_path: &Path,
    key_path: &Path,
) -> Result<(), DevPkiError> {
    let key = KeyPair::generate()?;
    let cert = leaf_params(id, sans, validity)?.signed_by(&key, ca)?;
    write_file(key_path, &key.serialize_pem(), true)?;
    write_file(crt_path, &cert.pem(), false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_validity_out_of_range_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        for validity in [
            MAX_VALIDITY + std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(u64::MAX),
            std::time::Duration::MAX,
        ] {
            let req = DevPkiRequest {
                trust_domain: TrustDomain::new("example.org").unwrap(),
                workloads: Vec::new(),
                validity,
            };
            let err = generate(&out, &req).unwrap_err();
            assert!(
                matches!(err, DevPkiError::Validity(v) if v == validity),
                "{err}"
            );
            assert!(!out.exists());
        }
    }

    #[test]
    fn a_key_is_written_0600_whatever_was_left_at_its_temporary_name() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ca.key");
        // A readable leftover at the temporary name, and a link there to a file elsewhere.
        let tmp = key.with_extension("tmp");
        fs::write(&tmp, "old").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
        write_file(&key, "secret", true).unwrap();
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_to_string(&key).unwrap(), "secret");

        let elsewhere = dir.path().join("elsewhere");
        fs::write(&elsewhere, "untouched").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &tmp).unwrap();
        write_file(&key, "secret 2", true).unwrap();
        assert_eq!(fs::read_to_string(&elsewhere).unwrap(), "untouched");
        assert_eq!(fs::read_to_string(&key).unwrap(), "secret 2");
        let meta = fs::symlink_metadata(&key).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
}
