//! Tests against SoftHSM2 tokens. Each runs in a process of its own with a token store of
//! its own: SoftHSM2 reads `SOFTHSM2_CONF` when the module is initialised, and a module
//! stays loaded, with its logins, for the life of the process.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use super::*;
use crate::ExposeSecret;

/// The SoftHSM2 PKCS#11 module (Debian's `softhsm2` package): a symlink to the library.
const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Set in the process a test runs in: its token store.
const STORE: &str = "IDGATE_TEST_SOFTHSM_STORE";
const TOKEN: &str = "idgate";
const USER_PIN: &str = "1234";
const SO_PIN: &str = "5678";
/// The longest a test's process may take.
const LIMIT: Duration = Duration::from_secs(120);
const KEY: &[u8] = b"hmac-key-of-thirty-two-bytes-000";

/// A token store of one test's own, in a temporary directory.
struct Store {
    dir: PathBuf,
}

impl Store {
    /// Initialises the token `idgate` (user PIN [`USER_PIN`]) and writes its PIN file.
    fn init_token(&self) {
        let pin = |p: &str| SecretString::from(p.to_owned());
        init_token(
            Path::new(SOFTHSM_MODULE),
            SlotChoice::ByLabel,
            TOKEN,
            &pin(SO_PIN),
            &pin(USER_PIN),
            false,
        )
        .unwrap();
        self.write_pin(USER_PIN);
    }

    fn pin_file(&self) -> PathBuf {
        self.dir.join("pin")
    }

    /// Replaces the PIN file's content (as a secret manager does: a new file renamed over).
    fn write_pin(&self, pin: &str) {
        let tmp = self.dir.join("pin.new");
        std::fs::write(&tmp, pin).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::rename(&tmp, self.pin_file()).unwrap();
    }

    fn uri_with(&self, object: &str, module_path: &Path) -> Pkcs11Uri {
        Pkcs11Uri {
            token: Some(TOKEN.to_owned()),
            object: object.to_owned(),
            module_path: module_path.to_owned(),
            pin_source: PinSource::File(self.pin_file()),
            wrap_key: DEFAULT_WRAP_KEY.to_owned(),
        }
    }

    fn uri(&self, object: &str) -> Pkcs11Uri {
        self.uri_with(object, Path::new(SOFTHSM_MODULE))
    }

    /// The token's own directory in the store (SoftHSM2 names it after a UUID).
    fn token_dir(&self) -> PathBuf {
        let dirs: Vec<PathBuf> = std::fs::read_dir(self.dir.join("tokens"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        dirs[0].clone()
    }
}

/// Runs `body` (the test `name` of this module) in a process of its own, with a new token
/// store: this process starts it and reads its outcome.
fn in_own_store(name: &str, body: impl FnOnce(&Store)) {
    if let Some(dir) = std::env::var_os(STORE) {
        body(&Store { dir: dir.into() });
        return;
    }
    assert!(
        Path::new(SOFTHSM_MODULE).exists(),
        "SoftHSM2 is not installed: run scripts/setup-test-deps.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tokens")).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}/tokens\n", dir.path().display()),
    )
    .unwrap();
    let test = format!(
        "{}::{name}",
        module_path!().split_once("::").map_or("", |(_, m)| m)
    );
    let out = dir.path().join("out");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env("SOFTHSM2_CONF", &conf)
        .env(STORE, dir.path())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(dir.path().join("err")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let output = std::fs::read_to_string(&out).unwrap_or_default()
        + &std::fs::read_to_string(dir.path().join("err")).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()) && output.contains("1 passed"),
        "{test} (status {status:?}):\n{output}"
    );
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&key, data).as_ref().to_vec()
}

/// Calls `f` until it returns `Some`, for at most `within`.
fn eventually<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn attempts(hsm: &Hsm) -> u64 {
    hsm.login_attempts.load(Ordering::SeqCst)
}

#[test]
fn a_refused_pin_is_not_presented_again_until_its_source_changes() {
    in_own_store(
        "a_refused_pin_is_not_presented_again_until_its_source_changes",
        |store| {
            store.init_token();
            const WRONG: &str = "wrong-pin-5e0c1b";
            store.write_pin(WRONG);
            // Two credentials on one token: one handle, one login.
            let a = Hsm::shared(&store.uri("key-a")).unwrap();
            let b = Hsm::shared(&store.uri("key-b")).unwrap();
            assert!(Arc::ptr_eq(&a, &b));
            for hsm in [&a, &b, &a, &b] {
                let err = hsm.hmac_key_version("key-a", 0).unwrap_err();
                assert!(
                    matches!(
                        err,
                        HsmError::PinRefused {
                            code: "CKR_PIN_INCORRECT",
                            ..
                        }
                    ),
                    "{err}"
                );
                assert!(!err.to_string().contains(WRONG), "{err}");
                assert!(!format!("{err:?}").contains(WRONG), "{err:?}");
            }
            // Many calls at once, as at start with many credentials, or under load.
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| assert!(a.hmac_key_version("key-a", 0).is_err()));
                }
            });
            assert_eq!(attempts(&a), 1, "the refused PIN was presented again");

            // Another PIN, wrong too: presented once.
            store.write_pin("another-wrong-pin");
            for _ in 0..3 {
                assert!(a.hmac_key_version("key-a", 0).is_err());
            }
            assert_eq!(attempts(&a), 2);

            // The right one: logged in, and used by every credential on the token.
            store.write_pin(USER_PIN);
            assert_eq!(a.import_hmac_key("key-a", KEY).unwrap(), 1);
            assert_eq!(b.hmac_sha256("key-a", b"x", 32).unwrap().0, hmac(KEY, b"x"));
            assert_eq!(attempts(&a), 3);
        },
    );
}

/// A reload that stops naming a PIN source lets its handle go; one that names it again
/// makes a new handle. The token's refusal of the PIN there outlives the first handle: the
/// new one does not present it again (each presentation counts towards locking the user).
#[test]
fn a_refused_pin_is_not_presented_again_by_a_handle_made_anew_for_its_source() {
    in_own_store(
        "a_refused_pin_is_not_presented_again_by_a_handle_made_anew_for_its_source",
        |store| {
            store.init_token();
            store.write_pin("wrong-pin-77aa01");
            let first = Hsm::shared(&store.uri("key")).unwrap();
            let err = first.hmac_key_version("key", 0).unwrap_err();
            assert!(matches!(err, HsmError::PinRefused { .. }), "{err}");
            assert_eq!(attempts(&first), 1);
            drop(first);
            // Another source named for the token: the first handle, unused, is let go.
            let other_pin = store.dir.join("other-pin");
            std::fs::write(&other_pin, "another-pin").unwrap();
            std::fs::set_permissions(&other_pin, std::fs::Permissions::from_mode(0o600)).unwrap();
            let mut uri = store.uri("key");
            uri.pin_source = PinSource::File(other_pin);
            let other = Hsm::shared(&uri).unwrap();
            // The first source named again: a handle of its own, made anew.
            let again = Hsm::shared(&store.uri("key")).unwrap();
            assert!(!Arc::ptr_eq(&again, &other));
            let err = again.hmac_key_version("key", 0).unwrap_err();
            assert!(
                matches!(
                    err,
                    HsmError::PinRefused {
                        code: "CKR_PIN_INCORRECT",
                        ..
                    }
                ),
                "{err}"
            );
            assert_eq!(attempts(&again), 0, "the refused PIN was presented again");
            // Its source now holds the right PIN: presented, and logged in.
            store.write_pin(USER_PIN);
            assert_eq!(again.import_hmac_key("key", KEY).unwrap(), 1);
            assert_eq!(attempts(&again), 1);
            drop(other);
        },
    );
}

#[test]
fn a_pin_changed_and_reloaded_is_used_once_the_token_returns() {
    in_own_store(
        "a_pin_changed_and_reloaded_is_used_once_the_token_returns",
        |store| {
            store.init_token();
            let hsm = Hsm::shared(&store.uri("key")).unwrap();
            hsm.import_hmac_key("key", KEY).unwrap();
            let before = attempts(&hsm);
            // The PIN is changed in the token, then in its file.
            hsm.with_session(|s| {
                s.set_pin(
                    &SecretString::from(USER_PIN.to_owned()),
                    &SecretString::from("4321".to_owned()),
                )
                .map_err(ck("C_SetPIN"))
            })
            .unwrap();
            store.write_pin("4321");

            // The token goes away, which ends every login, and comes back.
            let token_dir = store.token_dir();
            let away = store.dir.join("token-away");
            std::fs::rename(&token_dir, &away).unwrap();
            let gone = eventually(Duration::from_secs(10), || {
                hsm.hmac_sha256("key", b"x", 32).err()
            })
            .expect("the token's absence was never noticed");
            assert!(gone.token_gone(), "{gone}");
            std::fs::rename(&away, &token_dir).unwrap();
            let mac = eventually(Duration::from_secs(10), || {
                hsm.hmac_sha256("key", b"x", 32).ok()
            })
            .expect("the token was not used again with the PIN now in its file");
            assert_eq!(mac, (hmac(KEY, b"x"), 1));
            assert!(attempts(&hsm) > before, "no new login was made");
        },
    );
}

#[test]
fn two_spellings_of_one_module_path_share_one_module() {
    in_own_store(
        "two_spellings_of_one_module_path_share_one_module",
        |store| {
            store.init_token();
            let link = store.dir.join("libsofthsm2.so");
            std::os::unix::fs::symlink(SOFTHSM_MODULE, &link).unwrap();
            let spellings = [
                PathBuf::from(SOFTHSM_MODULE),
                std::fs::canonicalize(SOFTHSM_MODULE).unwrap(),
                PathBuf::from("/usr/lib/softhsm/../softhsm/./libsofthsm2.so"),
                link,
            ];
            let first = module(&spellings[0]).unwrap();
            let token = Hsm::shared(&store.uri_with("key", &spellings[0])).unwrap();
            for path in &spellings[1..] {
                assert!(
                    Arc::ptr_eq(&first, &module(path).unwrap()),
                    "{} loaded a second module",
                    path.display()
                );
                assert!(
                    Arc::ptr_eq(&token, &Hsm::shared(&store.uri_with("key", path)).unwrap()),
                    "{} opened the token a second time",
                    path.display()
                );
            }
            token.import_hmac_key("key", KEY).unwrap();
        },
    );
}

#[test]
fn a_pool_whose_login_was_lost_logs_in_again() {
    in_own_store("a_pool_whose_login_was_lost_logs_in_again", |store| {
        store.init_token();
        let hsm = Hsm::open(&store.uri("key")).unwrap();
        hsm.import_hmac_key("key", KEY).unwrap();
        // Another user of the module logs out, which ends the login of every session.
        let other = Hsm::open(&store.uri("key")).unwrap();
        other
            .with_session(|s| s.logout().map_err(ck("C_Logout")))
            .unwrap();
        let before = attempts(&hsm);
        let (mac, version) = hsm.hmac_sha256("key", b"x", 32).unwrap();
        assert_eq!((mac, version), (hmac(KEY, b"x"), 1));
        assert_eq!(attempts(&hsm), before + 1);
        // The pool is whole again: the next calls need no login.
        for _ in 0..3 {
            hsm.hmac_sha256("key", b"x", 32).unwrap();
        }
        assert_eq!(attempts(&hsm), before + 1);
    });
}

#[test]
fn a_public_or_extractable_key_under_the_label_is_never_signed_with() {
    in_own_store(
        "a_public_or_extractable_key_under_the_label_is_never_signed_with",
        |store| {
            store.init_token();
            let hsm = Hsm::open(&store.uri("key")).unwrap();
            assert_eq!(hsm.import_hmac_key("key", KEY).unwrap(), 1);
            assert_eq!(
                hsm.import_wrapped("value", DEFAULT_WRAP_KEY, b"wrapped-value")
                    .unwrap(),
                1
            );
            const PLANTED: &[u8] = b"a-key-whose-value-someone-knows!";
            // Newer versions under the labels, each lacking one of what the gateway's own
            // objects are: a public object needs no login to be created.
            let id = |v: u32| Attribute::Id(v.to_be_bytes().to_vec());
            let secret_key = |label: &str, key_type: KeyType, v: u32, flaw: &[Attribute]| {
                let mut template = vec![
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(key_type),
                    Attribute::Token(true),
                    Attribute::Label(label.as_bytes().to_vec()),
                    id(v),
                    Attribute::Value(PLANTED.to_vec()),
                    Attribute::Sign(true),
                    Attribute::Verify(true),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                ];
                template.extend_from_slice(flaw);
                template
            };
            let held = [
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
            ];
            let flawed = |flaw: Attribute| {
                let mut attrs: Vec<Attribute> = held
                    .iter()
                    .filter(|a| a.attribute_type() != flaw.attribute_type())
                    .cloned()
                    .collect();
                attrs.push(flaw);
                attrs
            };
            let hmac_key = KeyType::GENERIC_SECRET;
            let planted = [
                secret_key("key", hmac_key, 5, &flawed(Attribute::Private(false))),
                secret_key("key", hmac_key, 6, &flawed(Attribute::Extractable(true))),
                secret_key("key", hmac_key, 7, &flawed(Attribute::Sensitive(false))),
                secret_key("key", KeyType::AES, 8, &held),
                secret_key(
                    DEFAULT_WRAP_KEY,
                    KeyType::AES,
                    9,
                    &flawed(Attribute::Private(false)),
                ),
                secret_key(
                    DEFAULT_WRAP_KEY,
                    KeyType::AES,
                    10,
                    &flawed(Attribute::Extractable(true)),
                ),
                vec![
                    Attribute::Class(ObjectClass::DATA),
                    Attribute::Token(true),
                    Attribute::Private(false),
                    Attribute::Label(b"value".to_vec()),
                    Attribute::Application(b"idgate/11".to_vec()),
                    Attribute::Value(b"IDGW1 not wrapped by the gateway".to_vec()),
                ],
            ];
            hsm.with_session(|s| {
                for template in &planted {
                    s.create_object(template).map_err(ck("C_CreateObject"))?;
                }
                // A key that may not sign.
                let mut no_sign = secret_key("key", hmac_key, 12, &held);
                no_sign.retain(|a| a.attribute_type() != AttributeType::Sign);
                no_sign.push(Attribute::Sign(false));
                s.create_object(&no_sign).map_err(ck("C_CreateObject"))?;
                Ok(())
            })
            .unwrap();
            let listed = hsm.list().unwrap();
            assert!(listed.iter().any(|o| o.label == "key" && o.version == 12));

            assert_eq!(
                hsm.hmac_sha256("key", b"x", 32).unwrap(),
                (hmac(KEY, b"x"), 1)
            );
            assert_eq!(
                hsm.hmac_sha256_at("key", 1, b"x", 32).unwrap(),
                hmac(KEY, b"x")
            );
            for planted in [5, 6, 7, 8, 12] {
                assert!(
                    matches!(
                        hsm.hmac_sha256_at("key", planted, b"x", 0),
                        Err(HsmError::NoVersion { .. })
                    ),
                    "signed with version {planted}"
                );
            }
            assert_eq!(hsm.hmac_key_version("key", 32).unwrap(), 1);
            assert_eq!(hsm.kind_of("key").unwrap(), ObjectKind::HmacKey);
            let (value, version) = hsm.unwrap_value("value", DEFAULT_WRAP_KEY).unwrap();
            assert_eq!((value.expose_secret(), version), (&b"wrapped-value"[..], 1));
            // A label that holds only such a key says what it lacks.
            hsm.with_session(|s| {
                let template =
                    secret_key("planted", hmac_key, 1, &flawed(Attribute::Private(false)));
                s.create_object(&template).map_err(ck("C_CreateObject"))
            })
            .unwrap();
            let err = hsm.hmac_sha256("planted", b"x", 0).unwrap_err();
            assert!(matches!(err, HsmError::WrongKind(..)), "{err}");
            // A new version is numbered above every object under the label.
            assert_eq!(hsm.import_hmac_key("key", KEY).unwrap(), 13);
        },
    );
}

#[test]
fn a_refused_reload_leaves_the_running_tokens_pin_source_as_it_was() {
    in_own_store(
        "a_refused_reload_leaves_the_running_tokens_pin_source_as_it_was",
        |store| {
            store.init_token();
            let running = Hsm::shared(&store.uri("key")).unwrap();
            running.import_hmac_key("key", KEY).unwrap();
            // A configuration that names another PIN file for the token is loaded (as a
            // reload does before it is refused) and never used.
            let other_pin = store.dir.join("other-pin");
            std::fs::write(&other_pin, "wrong-pin-7d21").unwrap();
            std::fs::set_permissions(&other_pin, std::fs::Permissions::from_mode(0o600)).unwrap();
            let mut refused = store.uri("key");
            refused.pin_source = PinSource::File(other_pin);
            let unused = Hsm::shared(&refused).unwrap();
            // The running handle loses its login and logs in again: from its own file.
            let other = Hsm::open(&store.uri("key")).unwrap();
            other
                .with_session(|s| s.logout().map_err(ck("C_Logout")))
                .unwrap();
            let before = attempts(&running);
            assert_eq!(
                running.hmac_sha256("key", b"x", 32).unwrap(),
                (hmac(KEY, b"x"), 1)
            );
            assert_eq!(attempts(&running), before + 1);
            assert!(!Arc::ptr_eq(&running, &unused));
            let let_go = Arc::downgrade(&unused);
            drop(unused);
            // The same reference still gets the running handle; the unused one is let go.
            assert!(Arc::ptr_eq(
                &running,
                &Hsm::shared(&store.uri("key")).unwrap()
            ));
            assert!(let_go.upgrade().is_none(), "an unused handle was kept");
        },
    );
}

#[test]
fn replacing_the_module_file_keeps_one_module_per_loaded_library() {
    in_own_store(
        "replacing_the_module_file_keeps_one_module_per_loaded_library",
        |store| {
            let library = std::fs::canonicalize(SOFTHSM_MODULE).unwrap();
            let path = store.dir.join("libmodule.so");
            std::fs::copy(&library, &path).unwrap();
            let first = module(&path).unwrap();
            // A package upgrade: a new file renamed over the old one (another inode).
            let upgrade = store.dir.join("libmodule.so.new");
            std::fs::copy(&library, &upgrade).unwrap();
            std::fs::rename(&upgrade, &path).unwrap();
            assert!(
                Arc::ptr_eq(&first, &module(&path).unwrap()),
                "the replaced file loaded a second module"
            );
            // While the file is briefly missing, the loaded library is still used.
            std::fs::remove_file(&path).unwrap();
            assert!(Arc::ptr_eq(&first, &module(&path).unwrap()));
        },
    );
}
