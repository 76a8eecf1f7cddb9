//! A development PKI made by idgate's own `devpki`, in a temporary directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use idgate_tls::SpiffeId;
use idgate_tls::devpki::{self, DevPkiFiles, DevPkiRequest};

/// A development PKI in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub files: DevPkiFiles,
}

pub const TD: &str = "example.org";
pub const ONBOARDING: &str = "spiffe://example.org/ns/kyc/sa/onboarding";
pub const FRONTEND: &str = "spiffe://example.org/ns/web/sa/frontend";

impl Pki {
    pub fn new(trust_domain: &str, workloads: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = Self::generate_into(dir.path(), trust_domain, workloads);
        Self { dir, files }
    }

    pub fn generate_into(dir: &Path, trust_domain: &str, workloads: &[&str]) -> DevPkiFiles {
        devpki::generate(
            dir,
            &DevPkiRequest {
                trust_domain: trust_domain.parse().expect("trust domain"),
                workloads: workloads
                    .iter()
                    .map(|w| SpiffeId::new(w).expect("id"))
                    .collect(),
                validity: Duration::from_secs(3600),
            },
        )
        .expect("dev pki")
    }

    /// The default PKI: trust domain example.org, an onboarding and a frontend workload.
    pub fn default_pki() -> Self {
        Self::new(TD, &[ONBOARDING, FRONTEND])
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// (cert, key) of a workload by SPIFFE ID.
    pub fn workload(&self, id: &str) -> (PathBuf, PathBuf) {
        self.files
            .workloads
            .iter()
            .find(|(w, _, _)| w.as_str() == id)
            .map(|(_, c, k)| (c.clone(), k.clone()))
            .expect("workload in PKI")
    }
}
