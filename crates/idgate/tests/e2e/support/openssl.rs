//! A PKI made with the `openssl` command line, independent of idgate's own dev PKI, so that
//! the verifier is tested against certificates it had no hand in making.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::run;

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertKey {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Runs `openssl` with `args`, panicking with its output when it fails.
pub fn openssl(args: &[&str]) {
    let (code, out, err) = run(Command::new("openssl").args(args));
    assert_eq!(code, 0, "openssl {args:?} failed:\n{out}\n{err}");
}

/// A new EC P-256 private key (SEC1 PEM) at `path`.
pub fn openssl_ec_key(path: &Path) {
    let p = path.to_str().expect("utf-8 path");
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        p,
    ]);
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The time `ago` before now, as `openssl ca -startdate/-enddate` takes it.
pub fn openssl_time_ago(ago: Duration) -> String {
    openssl_time(unix_now() - ago.as_secs())
}

/// The time `later` after now, as `openssl ca -startdate/-enddate` takes it.
pub fn openssl_time_in(later: Duration) -> String {
    openssl_time(unix_now() + later.as_secs())
}

/// A UNIX time as `YYYYMMDDHHMMSSZ`.
fn openssl_time(t: u64) -> String {
    let (days, secs) = ((t / 86_400) as i64, t % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The extensions of a well-formed X.509-SVID for `id` (client and server auth).
pub fn svid_extensions(id: &str) -> String {
    format!(
        "subjectAltName = URI:{id}\n\
         basicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature\n\
         extendedKeyUsage = clientAuth,serverAuth\n"
    )
}

/// A self-signed certificate for a new P-256 key, with subject `CN=<cn>` and the given
/// extension lines, valid from a day ago for thirty days. Files: `<dir>/<name>.crt|.key`.
pub fn openssl_self_signed(dir: &Path, name: &str, cn: &str, extensions: &str) -> CertKey {
    let out = CertKey {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    openssl_ec_key(&out.key);
    let cnf = dir.join(format!("{name}.req.cnf"));
    std::fs::write(
        &cnf,
        format!(
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {cn}\n[ext]\n{extensions}"
        ),
    )
    .expect("write req config");
    let start = openssl_time_ago(Duration::from_secs(86_400));
    let end = openssl_time_in(Duration::from_secs(30 * 86_400));
    let csr = dir.join(format!("{name}.csr"));
    openssl(&[
        "req",
        "-new",
        "-key",
        path_str(&out.key),
        "-config",
        path_str(&cnf),
        "-out",
        path_str(&csr),
    ]);
    // `openssl ca -selfsign` rather than `req -x509`: it sets both dates, as the issued
    // certificates below do.
    sign_with_openssl_ca(
        dir, name, &csr, &out.key, None, &cnf, "ext", &start, &end, &out.cert,
    );
    out
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[allow(clippy::too_many_arguments)]
fn sign_with_openssl_ca(
    dir: &Path,
    name: &str,
    csr: &Path,
    signing_key: &Path,
    issuer_cert: Option<&Path>,
    ext_file: &Path,
    ext_section: &str,
    start: &str,
    end: &str,
    out: &Path,
) {
    // A throwaway `openssl ca` database per certificate: nothing is shared between calls, so
    // the same subject may be issued any number of times.
    let db = dir.join(format!("{name}.index"));
    std::fs::write(&db, "").expect("write ca database");
    let cnf = dir.join(format!("{name}.ca.cnf"));
    std::fs::write(
        &cnf,
        format!(
            "[ca]\ndefault_ca = this\n[this]\ndatabase = {db}\nnew_certs_dir = {dir}\n\
             rand_serial = yes\ndefault_md = sha256\npolicy = any\nunique_subject = no\n\
             email_in_dn = no\n[any]\ncommonName = optional\n",
            db = db.display(),
            dir = dir.display(),
        ),
    )
    .expect("write ca config");
    let mut args = vec![
        "ca",
        "-batch",
        "-notext",
        "-config",
        path_str(&cnf),
        "-keyfile",
        path_str(signing_key),
        "-in",
        path_str(csr),
        "-out",
        path_str(out),
        "-extfile",
        path_str(ext_file),
        "-extensions",
        ext_section,
        "-startdate",
        start,
        "-enddate",
        end,
    ];
    match issuer_cert {
        Some(cert) => args.extend(["-cert", path_str(cert)]),
        None => args.push("-selfsign"),
    }
    openssl(&args);
}

/// A certificate authority made with the `openssl` command line.
#[derive(Debug, Clone)]
pub struct OpenSslCa {
    pub dir: PathBuf,
    pub ca: CertKey,
}

impl OpenSslCa {
    /// A new self-signed P-256 CA for `trust_domain` (its SPIFFE ID as URI SAN, as SPIRE
    /// does), files `<dir>/<name>.crt|.key`.
    pub fn new(dir: &Path, name: &str, trust_domain: &str) -> Self {
        let ca = openssl_self_signed(
            dir,
            name,
            &format!("{trust_domain} CA"),
            &format!(
                "basicConstraints = critical,CA:TRUE\n\
                 keyUsage = critical,keyCertSign,cRLSign\n\
                 subjectKeyIdentifier = hash\n\
                 subjectAltName = URI:spiffe://{trust_domain}\n"
            ),
        );
        Self {
            dir: dir.to_owned(),
            ca,
        }
    }

    /// An existing CA (the dev PKI's `bundle.pem` and `ca.key`, say), issuing into `dir`.
    pub fn existing(dir: &Path, cert: &Path, key: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            ca: CertKey {
                cert: cert.to_owned(),
                key: key.to_owned(),
            },
        }
    }

    /// Issues a certificate for a new P-256 key with the given extension lines, valid from
    /// `not_before` to `not_after` (see [`openssl_time_ago`] and [`openssl_time_in`]).
    pub fn issue_between(
        &self,
        name: &str,
        extensions: &str,
        not_before: &str,
        not_after: &str,
    ) -> CertKey {
        let out = CertKey {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        openssl_ec_key(&out.key);
        let csr = self.dir.join(format!("{name}.csr"));
        openssl(&[
            "req",
            "-new",
            "-key",
            path_str(&out.key),
            "-subj",
            &format!("/CN={name}"),
            "-out",
            path_str(&csr),
        ]);
        let ext = self.dir.join(format!("{name}.ext"));
        std::fs::write(&ext, format!("[ext]\n{extensions}")).expect("write extensions");
        sign_with_openssl_ca(
            &self.dir,
            name,
            &csr,
            &self.ca.key,
            Some(&self.ca.cert),
            &ext,
            "ext",
            not_before,
            not_after,
            &out.cert,
        );
        out
    }

    /// Issues a certificate valid from an hour ago for a day.
    pub fn issue(&self, name: &str, extensions: &str) -> CertKey {
        self.issue_between(
            name,
            extensions,
            &openssl_time_ago(Duration::from_secs(3600)),
            &openssl_time_in(Duration::from_secs(86_400)),
        )
    }
}
