//! Rotation of the gateway's own SVID: atomic renames, Kubernetes-style `..data` symlink
//! swaps, bad or expired new files refused, and an idle gateway that does not reread its files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::assert_eventually;
use crate::support::*;

use super::{
    GATEWAY_EXTENSIONS, accepted, assert_not_restarted, material_refusals, presents, read,
    reissue_gateway_svid, replace_atomically, start,
};

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
    // Logged once the new material is in use: it may reach the output after the handshake
    // that saw it.
    assert_eventually!(
        !log_lines(&gw, "idgate_tls::watch", "TLS material reloaded").is_empty(),
        "the reload was not logged:\n{}",
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
async fn idle_gateway_does_not_reread_its_tls_files_over_and_over() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::http(UpstreamMode::Echo).await;
    let _gw = start(
        (&pki.files.gateway_cert, &pki.files.gateway_key),
        &pki.files.bundle,
        "1h",
        &upstream,
    )
    .await;
    // Every open of the TLS files is counted, by whichever user the tests run as: inotify
    // needs only the right to read the files, where the gateway's I/O counters in /proc
    // are closed to all but root (the gateway is not dumpable).
    use rustix::fs::inotify;
    let watch = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)
        .expect("inotify");
    let files = [
        &pki.files.gateway_cert,
        &pki.files.gateway_key,
        &pki.files.bundle,
    ];
    for file in files {
        inotify::add_watch(&watch, file, inotify::WatchFlags::OPEN).expect("watch a TLS file");
    }
    // Something happens in the watched directory, as it does on any rotation.
    std::fs::write(pki.path().join("unrelated.txt"), "x").expect("write");
    // The opens of an otherwise idle gateway over a fixed window: it is a rate being
    // measured, so this wait is the measurement itself.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut buf = [std::mem::MaybeUninit::uninit(); 4096];
    let mut events = inotify::Reader::new(&watch, &mut buf);
    let mut opens = 0;
    loop {
        match events.next() {
            Ok(e) if e.events().contains(inotify::ReadFlags::OPEN) => opens += 1,
            Ok(e) => assert!(
                !e.events().contains(inotify::ReadFlags::QUEUE_OVERFLOW),
                "the inotify queue overflowed: the TLS files were opened without end"
            ),
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => panic!("reading inotify events: {e}"),
        }
    }
    // The unrelated event may cost one look at each file; a gateway reloading over and
    // over opens them again and again.
    assert!(
        opens <= files.len(),
        "an idle gateway opened its TLS files {opens} times in 2.5 s: it keeps reloading them"
    );
}
