//! A CA for this crate's unit tests: a self-signed root that issues SVIDs and other leaves.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

pub(crate) struct Ca(CertifiedIssuer<'static, KeyPair>);

/// A certificate the CA issued, with its key.
pub(crate) struct Leaf {
    pub(crate) der: CertificateDer<'static>,
    pub(crate) pem: String,
    pub(crate) key_pem: String,
}

impl Ca {
    /// A root named `common_name`, valid from a day ago for 30 days.
    pub(crate) fn new(common_name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(30);
        Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    pub(crate) fn root(&self) -> CertificateDer<'static> {
        self.0.der().clone()
    }

    pub(crate) fn pem(&self) -> String {
        self.0.pem()
    }

    /// A leaf for server and client use with these SANs (`dns:` names, else URIs), valid
    /// from `from` to `until` hours from now.
    pub(crate) fn leaf(&self, sans: &[&str], from: i64, until: i64) -> Leaf {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.strip_prefix("dns:") {
                Some(dns) => SanType::DnsName(dns.try_into().unwrap()),
                None => SanType::URI((*s).try_into().unwrap()),
            })
            .collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now + Duration::hours(from);
        params.not_after = now + Duration::hours(until);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        Leaf {
            der: cert.der().clone(),
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A workload SVID for `id`, valid from an hour ago until a day from now.
    pub(crate) fn svid(&self, id: &str) -> Leaf {
        self.leaf(&[id], -1, 24)
    }
}
