//! Rotation of the gateway's SVID and trust bundles while it serves: atomic renames,
//! Kubernetes-style `..data` symlink swaps, bad files, and SIGHUP — all without a restart.
//!
//! The gateway's TLS files are polled only once an hour here, so what is proven is the
//! directory watch (or SIGHUP), not the poll.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::assert_eventually;
use crate::support::*;

const PARTNER: &str = "spiffe://partner.test/ns/risk/sa/scorer";

/// The extensions of a gateway SVID: its SPIFFE ID and the loopback names the tests dial.
const GATEWAY_EXTENSIONS: &str = "subjectAltName = URI:spiffe://example.org/idgate,DNS:localhost,IP:127.0.0.1\n\
     basicConstraints = critical,CA:FALSE\n\
     keyUsage = critical,digitalSignature\n\
     extendedKeyUsage = serverAuth,clientAuth\n";

/// `config` with an upstream and one route, `/v1/kyc`, for these SPIFFE IDs.
fn with_kyc_route(config: GatewayConfig, upstream: &TestUpstream, allow: &[&str]) -> GatewayConfig {
    config
        .upstream(UpstreamSpec::new("provider", &upstream.url(false)))
        .route(RouteSpec::new(
            "kyc",
            &["GET"],
            "/v1/kyc",
            "provider",
            allow,
        ))
}

/// Starts a gateway with this SVID and bundle, polling its files every `poll`.
async fn start(
    svid: (&Path, &Path),
    bundle: &Path,
    poll: &str,
    upstream: &TestUpstream,
) -> Gateway {
    let config = with_kyc_route(
        gateway_config(svid, &[(TD, bundle)], poll),
        upstream,
        &[ONBOARDING],
    );
    Gateway::start(&config, &[]).await
}

/// The first certificate of a PEM file.
fn leaf_der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(path)
        .expect("read cert")
        .next()
        .expect("a certificate")
        .expect("pem")
}

/// The certificate the gateway presents to a new connection.
async fn presented_cert(client: &Client) -> Result<CertificateDer<'static>, String> {
    let tcp = TcpStream::connect(("127.0.0.1", client.port))
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(client.config.clone())
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.clone().into_owned())
        .ok_or_else(|| "no server certificate".to_owned())
}

async fn presents(client: &Client, cert: &Path) -> bool {
    presented_cert(client).await.ok() == Some(leaf_der(cert))
}

/// Whether a new connection's GET succeeds (a refused SVID gives an error or a non-2xx).
async fn accepted(client: &Client) -> bool {
    matches!(client.get("/v1/kyc").await, Ok(r) if r.status == 200)
}

/// Replaces `path` atomically with `contents`: written under a temporary name in the same
/// directory, then renamed over it, as cert-manager, SPIRE helpers and `install` do.
fn replace_atomically(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("rotating");
    std::fs::write(&tmp, contents).expect("write temporary file");
    std::fs::rename(&tmp, path).expect("rename over");
}

/// A new gateway SVID signed by the dev PKI's own CA (its `bundle.pem` and `ca.key`).
fn reissue_gateway_svid(pki: &Pki, name: &str) -> CertKey {
    let out = pki.path().join("reissued");
    std::fs::create_dir_all(&out).expect("mkdir");
    OpenSslCa::existing(&out, &pki.files.bundle, &pki.path().join("ca.key"))
        .issue(name, GATEWAY_EXTENSIONS)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read")
}

/// The process started at the beginning of the test is still the one serving: nothing was
/// restarted to take the change into use.
fn assert_not_restarted(gw: &mut Gateway) {
    assert!(
        gw.child.try_wait().expect("try_wait").is_none(),
        "the gateway exited; output:\n{}",
        gw.output()
    );
}

/// Error texts of the gateway's "new TLS material refused" log lines.
fn material_refusals(gw: &Gateway) -> Vec<String> {
    log_lines(
        gw,
        "idgate_tls::watch",
        "new TLS material refused; the previous material stays in use",
    )
    .into_iter()
    .map(|l| {
        l.get("error")
            .and_then(|e| e.as_str())
            .unwrap_or_default()
            .to_owned()
    })
    .collect()
}

#[tokio::test]
async fn gateway_svid_replaced_by_atomic_rename_is_served_to_new_handshakes_without_restart() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::http(UpstreamMode::Echo).await;
    let mut gw = start(
        (&pki.files.gateway_cert, &pki.files.gateway_key),
        &pki.files.bundle,
        "1h",
        &upstream,
    )
    .await;
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
    assert!(presents(&client, &pki.files.gateway_cert).await);
    let mut kept_alive = client.connect().await.expect("connect");
    let first = kept_alive.send("GET", "/v1/kyc", &[], "").await.unwrap();
    assert_eq!(first.status, 200);

    let new = reissue_gateway_svid(&pki, "gateway-v2");
    replace_atomically(&pki.files.gateway_key, &read(&new.key));
    replace_atomically(&pki.files.gateway_cert, &read(&new.cert));

    assert_eventually!(
        presents(&client, &new.cert).await,
        "new handshakes still get the old certificate; log:\n{}",
        gw.output()
    );
    assert!(accepted(&client).await);
    // The connection made before the rotation is untouched by it.
    let again = kept_alive.send("GET", "/v1/kyc", &[], "").await.unwrap();
    assert_eq!(again.status, 200);
    assert_not_restarted(&mut gw);
    assert!(
        !log_lines(&gw, "idgate_tls::watch", "TLS material reloaded").is_empty(),
        "{}",
        gw.output()
    );
}

/// A Kubernetes secret volume: `<dir>/gateway.crt -> ..data/gateway.crt`, `..data -> ..v1`.
struct SecretVolume {
    dir: PathBuf,
    version: u32,
}

impl SecretVolume {
    fn new(dir: &Path, svid: &CertKey) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let mut volume = Self {
            dir: dir.to_owned(),
            version: 0,
        };
        volume.write_version(svid);
        std::os::unix::fs::symlink(format!("..v{}", volume.version), dir.join("..data"))
            .expect("..data");
        for name in ["gateway.crt", "gateway.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).expect("symlink");
        }
        volume
    }

    fn write_version(&mut self, svid: &CertKey) {
        self.version += 1;
        let v = self.dir.join(format!("..v{}", self.version));
        std::fs::create_dir(&v).expect("mkdir version");
        std::fs::copy(&svid.cert, v.join("gateway.crt")).expect("copy cert");
        std::fs::copy(&svid.key, v.join("gateway.key")).expect("copy key");
    }

    /// What the kubelet does on an update: write the new version's directory, point a new
    /// `..data_tmp` link at it, rename that over `..data`, then delete the old version.
    fn update(&mut self, svid: &CertKey) {
        let old = self.dir.join(format!("..v{}", self.version));
        self.write_version(svid);
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..v{}", self.version), &tmp).expect("..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        std::fs::remove_dir_all(old).expect("remove old version");
    }

    fn svid(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("gateway.crt"), self.dir.join("gateway.key"))
    }
}

#[tokio::test]
async fn kubernetes_style_data_symlink_swap_is_picked_up_at_every_update() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::http(UpstreamMode::Echo).await;
    let original = CertKey {
        cert: pki.files.gateway_cert.clone(),
        key: pki.files.gateway_key.clone(),
    };
    let mut volume = SecretVolume::new(&pki.path().join("secret"), &original);
    let (cert, key) = volume.svid();
    let mut gw = start((&cert, &key), &pki.files.bundle, "1h", &upstream).await;
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
    assert!(presents(&client, &original.cert).await);

    for n in 2..=3 {
        let new = reissue_gateway_svid(&pki, &format!("gateway-v{n}"));
        volume.update(&new);
        assert_eventually!(
            presents(&client, &new.cert).await,
            "update {n}: the swapped SVID is not served; log:\n{}",
            gw.output()
        );
        assert!(accepted(&client).await);
    }
    assert_not_restarted(&mut gw);
}

#[tokio::test]
async fn svid_linked_from_another_directory_into_a_secret_volume_is_picked_up_at_every_update() {
    // The configuration names `conf/gateway.crt`, a link into a secret volume mounted
    // elsewhere: the `..data` swap happens in a directory that is neither the configured
    // file's nor the one the file resolved to at start-up.
    let pki = Pki::default_pki();
    let upstream = TestUpstream::http(UpstreamMode::Echo).await;
    let original = CertKey {
        cert: pki.files.gateway_cert.clone(),
        key: pki.files.gateway_key.clone(),
    };
    let mut volume = SecretVolume::new(&pki.path().join("mounted"), &original);
    let conf = pki.path().join("conf");
    std::fs::create_dir(&conf).expect("mkdir conf");
    for name in ["gateway.crt", "gateway.key"] {
        std::os::unix::fs::symlink(format!("../mounted/{name}"), conf.join(name)).expect("symlink");
    }
    let (cert, key) = (conf.join("gateway.crt"), conf.join("gateway.key"));
    let mut gw = start((&cert, &key), &pki.files.bundle, "1h", &upstream).await;
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
    assert!(presents(&client, &original.cert).await);

    for n in 2..=3 {
        let new = reissue_gateway_svid(&pki, &format!("gateway-v{n}"));
        volume.update(&new);
        assert_eventually!(
            presents(&client, &new.cert).await,
            "update {n}: the swapped SVID is not served; log:\n{}",
            gw.output()
        );
    }
    assert_not_restarted(&mut gw);
}

/// A gateway whose example.org bundle is a file of its own (`trust/bundle.pem`), starting
/// with PKI `a`'s CA; PKI `b` is a second CA of the same trust domain.
struct BundleRotation {
    a: Pki,
    b: Pki,
    bundle: PathBuf,
    _upstream: TestUpstream,
    gw: Gateway,
    /// ONBOARDING's SVID from each CA; both trust `a`'s CA for the gateway's certificate.
    client_a: Client,
    client_b: Client,
}

impl BundleRotation {
    async fn start() -> Self {
        let a = Pki::default_pki();
        let b = Pki::default_pki();
        let bundle = a.path().join("trust").join("bundle.pem");
        std::fs::create_dir(bundle.parent().expect("parent")).expect("mkdir trust");
        std::fs::copy(&a.files.bundle, &bundle).expect("copy bundle");
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let gw = start(
            (&a.files.gateway_cert, &a.files.gateway_key),
            &bundle,
            "1h",
            &upstream,
        )
        .await;
        let client_a = Client::new(&a, Some(ONBOARDING), gw.port, false);
        let (cert_b, key_b) = b.workload(ONBOARDING);
        let client_b = Client {
            config: tls_client_config(
                &a.files.bundle,
                Some((&cert_b, &key_b)),
                false,
                rustls::DEFAULT_VERSIONS,
            ),
            port: gw.port,
            h2: false,
        };
        Self {
            a,
            b,
            bundle,
            _upstream: upstream,
            gw,
            client_a,
            client_b,
        }
    }

    fn set_bundle(&self, cas: &[&Pki]) {
        let pem: Vec<u8> = cas.iter().flat_map(|p| read(&p.files.bundle)).collect();
        replace_atomically(&self.bundle, &pem);
    }
}

#[tokio::test]
async fn trust_bundle_switched_to_a_new_ca_refuses_old_svids_and_accepts_new_ones() {
    let mut t = BundleRotation::start().await;
    assert!(accepted(&t.client_a).await);
    assert!(!accepted(&t.client_b).await);

    t.set_bundle(&[&t.b]);
    assert_eventually!(
        accepted(&t.client_b).await,
        "an SVID of the new CA is still refused; log:\n{}",
        t.gw.output()
    );
    assert!(
        !accepted(&t.client_a).await,
        "an SVID of the removed CA is still accepted"
    );
    assert_not_restarted(&mut t.gw);
}

#[tokio::test]
async fn trust_bundle_with_an_added_ca_accepts_svids_of_both_cas() {
    let mut t = BundleRotation::start().await;
    assert!(!accepted(&t.client_b).await);

    t.set_bundle(&[&t.a, &t.b]);
    assert_eventually!(
        accepted(&t.client_b).await,
        "an SVID of the added CA is still refused; log:\n{}",
        t.gw.output()
    );
    assert!(accepted(&t.client_a).await);
    assert_not_restarted(&mut t.gw);
}

#[tokio::test]
async fn bad_new_svid_files_are_refused_and_the_old_certificate_stays_in_use() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::http(UpstreamMode::Echo).await;
    let (cert, key) = (&pki.files.gateway_cert, &pki.files.gateway_key);
    let gw = start((cert, key), &pki.files.bundle, "1h", &upstream).await;
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
    let old = pki.path().join("old-gateway.crt");
    std::fs::copy(cert, &old).expect("keep a copy");

    // Garbage in place of the certificate.
    replace_atomically(cert, b"-----BEGIN GARBAGE-----\nnot a certificate\n");
    assert_eventually!(
        material_refusals(&gw)
            .iter()
            .any(|e| e.contains(&*cert.to_string_lossy()) && e.contains("bad PEM")),
        "the garbage certificate was not refused with a reason; log:\n{}",
        gw.output()
    );
    assert!(presents(&client, &old).await);
    assert!(accepted(&client).await);

    // Back to the good certificate, then a key that belongs to another certificate.
    replace_atomically(cert, &read(&old));
    let unrelated = reissue_gateway_svid(&pki, "unrelated");
    replace_atomically(key, &read(&unrelated.key));
    assert_eventually!(
        material_refusals(&gw)
            .iter()
            .any(|e| e.contains(&*key.to_string_lossy()) && e.contains("does not fit")),
        "the mismatched key was not refused with a reason; log:\n{}",
        gw.output()
    );
    assert!(presents(&client, &old).await);
    assert!(accepted(&client).await);
    let key_pem = String::from_utf8(read(&unrelated.key)).expect("pem");
    let key_body = key_pem.lines().nth(1).expect("base64 line");
    assert!(!gw.output().contains(key_body), "key material in the log");

    // The watch goes on after a refusal: a good pair is taken into use.
    let new = reissue_gateway_svid(&pki, "gateway-v2");
    replace_atomically(key, &read(&new.key));
    replace_atomically(cert, &read(&new.cert));
    assert_eventually!(
        presents(&client, &new.cert).await,
        "a good SVID after a bad one is not served; log:\n{}",
        gw.output()
    );
}

#[tokio::test]
async fn trust_bundle_file_shared_by_two_trust_domains_is_reloaded_for_both() {
    // One file holding the CAs of example.org and partner.test, configured for both.
    let example = [Pki::default_pki(), Pki::default_pki()];
    let partner = [
        Pki::new("partner.test", &[PARTNER]),
        Pki::new("partner.test", &[PARTNER]),
    ];
    let shared = example[0].path().join("shared-bundle.pem");
    let write_shared = |i: usize| {
        let pem = [
            read(&example[i].files.bundle),
            read(&partner[i].files.bundle),
        ]
        .concat();
        replace_atomically(&shared, &pem);
    };
    write_shared(0);
    let upstream = TestUpstream::http(UpstreamMode::Echo).await;
    let gateway = &example[0].files;
    let config = with_kyc_route(
        gateway_config(
            (&gateway.gateway_cert, &gateway.gateway_key),
            &[("example.org", &shared), ("partner.test", &shared)],
            "1h",
        ),
        &upstream,
        &[ONBOARDING, PARTNER],
    );
    let gw = Gateway::start(&config, &[]).await;
    let port = gw.port;
    let client = |pki: &Pki, id: &str| {
        let (cert, key) = pki.workload(id);
        Client {
            config: tls_client_config(
                &gateway.bundle,
                Some((&cert, &key)),
                false,
                rustls::DEFAULT_VERSIONS,
            ),
            port,
            h2: false,
        }
    };
    assert!(accepted(&client(&example[0], ONBOARDING)).await);
    assert!(accepted(&client(&partner[0], PARTNER)).await);

    write_shared(1);
    assert_eventually!(
        accepted(&client(&example[1], ONBOARDING)).await,
        "example.org's new CA is not trusted; log:\n{}",
        gw.output()
    );
    assert_eventually!(
        accepted(&client(&partner[1], PARTNER)).await,
        "partner.test's new CA is not trusted, though its bundle file changed; log:\n{}",
        gw.output()
    );
    assert!(!accepted(&client(&partner[0], PARTNER)).await);
}

#[tokio::test]
async fn expired_new_gateway_svid_is_refused_and_the_old_one_stays_in_use() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::http(UpstreamMode::Echo).await;
    let (cert, key) = (&pki.files.gateway_cert, &pki.files.gateway_key);
    let gw = start((cert, key), &pki.files.bundle, "1h", &upstream).await;
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
    let old = pki.path().join("old-gateway.crt");
    std::fs::copy(cert, &old).expect("keep a copy");

    let out = pki.path().join("reissued");
    std::fs::create_dir_all(&out).expect("mkdir");
    let expired = OpenSslCa::existing(&out, &pki.files.bundle, &pki.path().join("ca.key"))
        .issue_between(
            "expired-gateway",
            GATEWAY_EXTENSIONS,
            &openssl_time_ago(Duration::from_secs(2 * 86_400)),
            &openssl_time_ago(Duration::from_secs(86_400)),
        );
    replace_atomically(key, &read(&expired.key));
    replace_atomically(cert, &read(&expired.cert));
    assert_eventually!(
        material_refusals(&gw)
            .iter()
            .any(|e| e.contains(&*cert.to_string_lossy()) && e.contains("expired")),
        "the expired certificate was not refused; log:\n{}",
        gw.output()
    );
    assert!(presents(&client, &old).await);
    assert!(accepted(&client).await);
}

#[tokio::test]
async fn bad_new_trust_bundle_is_refused_and_the_old_bundle_stays_in_use() {
    let t = BundleRotation::start().await;
    assert!(accepted(&t.client_a).await);
    replace_atomically(&t.bundle, b"this is not PEM at all\n");
    assert_eventually!(
        material_refusals(&t.gw)
            .iter()
            .any(|e| e.contains(&*t.bundle.to_string_lossy())
                && e.contains("no CERTIFICATE block")),
        "the bad bundle was not refused; log:\n{}",
        t.gw.output()
    );
    assert!(accepted(&t.client_a).await);
    assert!(!accepted(&t.client_b).await);

    // The watch goes on after a refusal: a good bundle is taken into use.
    t.set_bundle(&[&t.b]);
    assert_eventually!(
        accepted(&t.client_b).await,
        "a good bundle after a bad one is not used; log:\n{}",
        t.gw.output()
    );
}

#[tokio::test]
async fn idle_gateway_does_not_reread_its_tls_files_over_and_over() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::http(UpstreamMode::Echo).await;
    let gw = start(
        (&pki.files.gateway_cert, &pki.files.gateway_key),
        &pki.files.bundle,
        "1h",
        &upstream,
    )
    .await;
    // Something happens in the watched directory, as it does on any rotation.
    std::fs::write(pki.path().join("unrelated.txt"), "x").expect("write");
    // Let that event be handled, then count the reads of an otherwise idle gateway over a
    // fixed window: it is a rate being measured, so this wait is the measurement itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reads = || {
        let io = std::fs::read_to_string(format!("/proc/{}/io", gw.child.id())).expect("io");
        io.lines()
            .find_map(|l| l.strip_prefix("syscr: "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .expect("syscr")
    };
    let before = reads();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = reads() - before;
    assert!(
        during < 20,
        "an idle gateway made {during} read calls in 2 s: it keeps reloading its TLS files"
    );
}

/// The routes of the SIGHUP tests: `kyc` for the allowed IDs, and `extra` if asked.
fn sighup_config(
    pki: &Pki,
    upstream: &TestUpstream,
    kyc_allow: &[&str],
    extra: bool,
) -> GatewayConfig {
    let config = with_kyc_route(
        gateway_config(
            (&pki.files.gateway_cert, &pki.files.gateway_key),
            &[(TD, &pki.files.bundle)],
            "1h",
        ),
        upstream,
        kyc_allow,
    );
    if extra {
        config.route(RouteSpec::get("extra", "/v1/extra", "provider"))
    } else {
        config
    }
}

async fn get_status(client: &Client, path: &str) -> u16 {
    client
        .get(path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .status
}

#[tokio::test]
async fn sighup_reloads_routes_and_allow_lists_from_the_config_file() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::http(UpstreamMode::Echo).await;
    let config = sighup_config(&pki, &upstream, &[ONBOARDING], false);
    let mut gw = Gateway::start(&config, &[]).await;
    let port = gw.port;
    let onboarding = Client::new(&pki, Some(ONBOARDING), port, false);
    let frontend = Client::new(&pki, Some(FRONTEND), port, false);
    assert_eq!(get_status(&frontend, "/v1/kyc").await, 403);
    assert_eq!(get_status(&onboarding, "/v1/extra").await, 404);

    // The listeners stay on port 0 in the file: the running ones are kept. Besides the
    // routes, two settings that only a restart changes.
    let mut changed = sighup_config(&pki, &upstream, &[ONBOARDING, FRONTEND], true);
    changed.workers = 2;
    changed
        .listener
        .extra
        .insert("idle_timeout".into(), "30s".into());
    replace_atomically(&gw.config_path, changed.to_toml().as_bytes());
    gw.signal("HUP");
    assert_eventually!(
        get_status(&frontend, "/v1/kyc").await == 200,
        "the widened allow list was not taken into use; log:\n{}",
        gw.output()
    );
    assert_eq!(get_status(&onboarding, "/v1/extra").await, 200);
    assert_eq!(get_status(&onboarding, "/v1/kyc").await, 200);
    for (setting, message) in [
        (
            "listener",
            "the new configuration changes `listener`, which takes effect only at restart; the running one stays",
        ),
        (
            "workers",
            "the new configuration changes `workers`, which takes effect only at restart; the running one stays",
        ),
    ] {
        let lines = log_lines(&gw, "idgate_proxy::gateway", message);
        assert!(
            lines.len() == 1 && lines[0].get("setting").and_then(|s| s.as_str()) == Some(setting),
            "no restart warning for {setting}:\n{}",
            gw.output()
        );
    }
    assert!(
        !gw.output().contains("changes `identity`") && !gw.output().contains("changes `admin`"),
        "{}",
        gw.output()
    );
    assert!(
        !log_lines(
            &gw,
            "idgate_proxy::gateway",
            "SIGHUP: reloading TLS material and configuration"
        )
        .is_empty()
    );
    assert_not_restarted(&mut gw);
}

#[tokio::test]
async fn sighup_with_an_invalid_config_file_keeps_the_running_routes_and_says_why() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::http(UpstreamMode::Echo).await;
    let config = sighup_config(&pki, &upstream, &[ONBOARDING], true);
    let mut gw = Gateway::start(&config, &[]).await;
    let port = gw.port;
    let onboarding = Client::new(&pki, Some(ONBOARDING), port, false);
    let frontend = Client::new(&pki, Some(FRONTEND), port, false);

    // A misspelt key, alongside a change that would have widened the allow list.
    let mut invalid = sighup_config(&pki, &upstream, &[ONBOARDING, FRONTEND], false);
    invalid.top_level.insert("frobnicate".into(), true.into());
    replace_atomically(&gw.config_path, invalid.to_toml().as_bytes());
    gw.signal("HUP");
    let refused = || {
        log_lines(
            &gw,
            "idgate_proxy::gateway",
            "configuration reload refused; the running configuration stays",
        )
    };
    assert_eventually!(
        !refused().is_empty(),
        "the invalid configuration was not refused in the log:\n{}",
        gw.output()
    );
    let problem = refused()[0]
        .get("problem")
        .and_then(|p| p.as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(
        problem.contains("frobnicate") && problem.contains(&*gw.config_path.to_string_lossy()),
        "the refusal should name the file and the key: {problem:?}"
    );
    let field = |name: &str| {
        refused()[0]
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(field("file"), gw.config_path.to_string_lossy());
    assert_eq!(field("key"), "frobnicate");
    assert!(
        field("reason").contains("unknown key"),
        "{}",
        field("reason")
    );
    assert_eq!(get_status(&onboarding, "/v1/kyc").await, 200);
    assert_eq!(get_status(&onboarding, "/v1/extra").await, 200);
    assert_eq!(get_status(&frontend, "/v1/kyc").await, 403);
    assert_not_restarted(&mut gw);
}

#[tokio::test]
async fn sighup_with_a_config_that_cannot_be_put_into_use_names_the_key_and_keeps_serving() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::http(UpstreamMode::Echo).await;
    let config = sighup_config(&pki, &upstream, &[ONBOARDING], true);
    let mut gw = Gateway::start(&config, &[]).await;
    let port = gw.port;
    let onboarding = Client::new(&pki, Some(ONBOARDING), port, false);
    let frontend = Client::new(&pki, Some(FRONTEND), port, false);

    // The file validates (the CA file exists), but holds no certificate: only building the
    // upstream's client finds that out.
    let ca = gw.config_path.with_file_name("not-a-ca.pem");
    std::fs::write(&ca, "no certificate in here\n").unwrap();
    let mut unusable = sighup_config(&pki, &upstream, &[ONBOARDING, FRONTEND], false);
    unusable.upstreams[0].ca = Some(ca);
    replace_atomically(&gw.config_path, unusable.to_toml().as_bytes());
    gw.signal("HUP");
    let refused = || {
        log_lines(
            &gw,
            "idgate_proxy::gateway",
            "configuration reload refused; the running configuration stays",
        )
    };
    assert_eventually!(
        !refused().is_empty(),
        "the unusable configuration was not refused in the log:\n{}",
        gw.output()
    );
    let field = |name: &str| {
        refused()[0]
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(field("file"), gw.config_path.to_string_lossy());
    assert_eq!(field("key"), "upstreams[0].ca");
    assert!(
        field("reason").contains("no CERTIFICATE block"),
        "{}",
        field("reason")
    );
    assert_eq!(get_status(&onboarding, "/v1/kyc").await, 200);
    assert_eq!(get_status(&onboarding, "/v1/extra").await, 200);
    assert_eq!(get_status(&frontend, "/v1/kyc").await, 403);
    assert_not_restarted(&mut gw);
}
