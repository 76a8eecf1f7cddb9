//! PKCS#11 custody (RFC 7512 URIs, SoftHSM2 in tests) in two modes:
//!
//! - **wrapped value**: the API key is stored as a data object, AES-256-GCM encrypted under a
//!   non-extractable token key; decryption happens inside the token and the plaintext lives
//!   only in zeroizing memory in the gateway;
//! - **never leaves the HSM**: an HMAC-SHA256 key stored as a non-extractable, sensitive
//!   generic secret; every signature is computed by the token (`CKM_SHA256_HMAC`).
//!
//! Objects carry a version (`CKA_ID`, 4 bytes big endian, for keys; `CKA_APPLICATION`
//! `idgate/N` for data objects, which have no `CKA_ID`); rotation adds a new
//! version under the same label and the newest one is used. Every call here blocks: callers
//! run them on blocking threads. Sessions are pooled and logged in once per token.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use secrecy::{SecretBox, SecretString};
use zeroize::Zeroizing;

use crate::SecretRefError;

/// The label of the AES key that wraps stored values, unless the URI names another
/// (`wrap-key=` query attribute).
pub const DEFAULT_WRAP_KEY: &str = "idgate-wrap-key";
const WRAP_MAGIC: &[u8] = b"IDGW1";
const GCM_IV_LEN: usize = 12;

/// Where the token PIN comes from (`pin-source=file:/run/idgate/pin` or `env:NAME`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PinSource {
    File(PathBuf),
    Env(String),
}

/// A parsed `pkcs11:` URI (RFC 7512) naming one object in one token.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Pkcs11Uri {
    pub token: Option<String>,
    pub object: String,
    pub module_path: PathBuf,
    pub pin_source: PinSource,
    pub wrap_key: String,
}

fn pct_decode(s: &str) -> Result<String, SecretRefError> {
    let bytes = idgate_codec::percent::decode(s)
        .ok_or(SecretRefError::BadPkcs11Uri("bad percent-encoding"))?;
    String::from_utf8(bytes).map_err(|_| SecretRefError::BadPkcs11Uri("attribute is not UTF-8"))
}

impl Pkcs11Uri {
    /// Parses the part after `pkcs11:`. A relative `pin-source=file:` path is resolved against
    /// `base_dir`; `module-path` is used as written (give the module's absolute path).
    pub fn parse(rest: &str, base_dir: &Path) -> Result<Self, SecretRefError> {
        Self::parse_inner(rest, base_dir, true)
    }

    /// Like [`Pkcs11Uri::parse`], for commands that address the whole token: `object=` may be
    /// left out (it is then empty).
    pub fn parse_token(rest: &str, base_dir: &Path) -> Result<Self, SecretRefError> {
        Self::parse_inner(rest, base_dir, false)
    }

    fn parse_inner(rest: &str, base_dir: &Path, need_object: bool) -> Result<Self, SecretRefError> {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut token = None;
        let mut object = None;
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (k, v) = attr.split_once('=').ok_or(SecretRefError::BadPkcs11Uri(
                "path attributes are name=value",
            ))?;
            let v = pct_decode(v)?;
            match k {
                "token" => token = Some(v),
                "object" => object = Some(v),
                // Accepted by RFC 7512 and harmless; the object label and token are what we use.
                "type"
                | "id"
                | "manufacturer"
                | "model"
                | "serial"
                | "library-manufacturer"
                | "library-description"
                | "library-version"
                | "slot-description"
                | "slot-manufacturer"
                | "slot-id" => {}
                _ => return Err(SecretRefError::BadPkcs11Uri("unknown path attribute")),
            }
        }
        let mut module_path = None;
        let mut pin_source = None;
        let mut wrap_key = DEFAULT_WRAP_KEY.to_owned();
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            let (k, v) = attr.split_once('=').ok_or(SecretRefError::BadPkcs11Uri(
                "query attributes are name=value",
            ))?;
            let v = pct_decode(v)?;
            match k {
                "module-path" => module_path = Some(PathBuf::from(v)),
                "pin-source" => {
                    pin_source = Some(if let Some(p) = v.strip_prefix("file:") {
                        PinSource::File(base_dir.join(p))
                    } else if let Some(n) = v.strip_prefix("env:") {
                        PinSource::Env(n.to_owned())
                    } else {
                        return Err(SecretRefError::BadPkcs11Uri(
                            "pin-source must be file:PATH or env:NAME",
                        ));
                    })
                }
                "pin-value" => {
                    return Err(SecretRefError::BadPkcs11Uri(
                        "pin-value puts the PIN in the configuration; use pin-source=file:PATH or env:NAME",
                    ));
                }
                "wrap-key" => wrap_key = v,
                "module-name" => {
                    return Err(SecretRefError::BadPkcs11Uri(
                        "use module-path with the module's full path",
                    ));
                }
                _ => return Err(SecretRefError::BadPkcs11Uri("unknown query attribute")),
            }
        }
        Ok(Self {
            token,
            object: match object {
                Some(o) if !o.is_empty() => o,
                _ if !need_object => String::new(),
                _ => {
                    return Err(SecretRefError::BadPkcs11Uri(
                        "object= (the label) is required",
                    ));
                }
            },
            module_path: module_path
                .ok_or(SecretRefError::BadPkcs11Uri("module-path= is required"))?,
            pin_source: pin_source
                .ok_or(SecretRefError::BadPkcs11Uri("pin-source= is required"))?,
            wrap_key,
        })
    }
}

impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only; the PIN's source is a place, not a value.
        write!(f, "pkcs11:")?;
        if let Some(t) = &self.token {
            write!(f, "token={t};")?;
        }
        write!(f, "object={}", self.object)
    }
}

/// Why a token operation failed. Carries PKCS#11 return codes and labels, never values.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    #[error("cannot load PKCS#11 module {path}: {reason}")]
    Module { path: PathBuf, reason: String },
    #[error("no token labelled \"{0}\" is present")]
    NoToken(String),
    #[error("cannot read the token PIN: {0}")]
    Pin(String),
    #[error("no object labelled \"{0}\" in the token")]
    NoObject(String),
    #[error("object \"{0}\" is not of the expected kind: {1}")]
    WrongKind(String, &'static str),
    #[error("stored value of \"{0}\" is malformed or was not wrapped for this label")]
    BadWrapped(String),
    #[error("slot {slot} already holds the initialised token \"{label}\"")]
    TokenExists { slot: u64, label: String },
    #[error("no slot with id {0} has a token in it")]
    NoSlot(u64),
    #[error("no slot holds an uninitialised token to initialise (name one with its slot id)")]
    NoFreeSlot,
    #[error(
        "the Security Officer PIN is not this token's (initialising a token again needs its current SO PIN)"
    )]
    SoPinIncorrect,
    #[error("a token label is 1 to 32 bytes long")]
    BadLabel,
    #[error("\"{0}\" is at the largest version (4294967295); store it under a new label")]
    VersionsExhausted(String),
    #[error("PKCS#11 {op}: {error}")]
    Token {
        op: &'static str,
        error: String,
        gone: bool,
    },
}

impl HsmError {
    /// The token is absent or its session died: worth retrying once it returns.
    pub fn token_gone(&self) -> bool {
        matches!(self, Self::NoToken(_) | Self::Token { gone: true, .. })
    }
}

fn ck(op: &'static str) -> impl Fn(CkError) -> HsmError {
    move |e| {
        let gone = matches!(
            e,
            CkError::Pkcs11(
                RvError::DeviceRemoved
                    | RvError::DeviceError
                    | RvError::TokenNotPresent
                    | RvError::SessionHandleInvalid
                    | RvError::SessionClosed
                    | RvError::SlotIdInvalid
                    | RvError::TokenNotRecognized
                    | RvError::CryptokiNotInitialized,
                _
            )
        );
        HsmError::Token {
            op,
            error: e.to_string(),
            gone,
        }
    }
}

/// How often a module may be re-initialised to look for a token that went away.
const REINIT_EVERY: Duration = Duration::from_secs(1);

/// A loaded PKCS#11 module. Every call into it holds `gate` for reading; re-initialising it
/// holds `gate` for writing, so that no call and no session is in use meanwhile.
///
/// Re-initialising (`C_Finalize` + `C_Initialize`) is how a token that disappeared is found
/// again: some modules, SoftHSM2 among them, mark a token whose storage vanished as broken
/// for good and only look at their storage again when initialised.
struct Module {
    ctx: Pkcs11,
    path: PathBuf,
    gate: RwLock<ModuleState>,
}

struct ModuleState {
    /// Bumped at each re-initialisation: sessions of an older generation are invalid.
    generation: u64,
    last_reinit: Option<Instant>,
}

fn init_args() -> CInitializeArgs {
    CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)
}

impl Module {
    fn read(&self) -> Result<RwLockReadGuard<'_, ModuleState>, HsmError> {
        self.gate
            .read()
            .map_err(|_| HsmError::Pin("module lock poisoned".into()))
    }

    /// Re-initialises the module unless that happened less than [`REINIT_EVERY`] ago.
    /// Returns whether the module is newer than generation `seen`, so a retry may help.
    fn reinitialize(&self, seen: u64) -> bool {
        let Ok(mut st) = self.gate.write() else {
            return false;
        };
        if st.generation != seen {
            return true;
        }
        if st.last_reinit.is_some_and(|t| t.elapsed() < REINIT_EVERY) {
            return false;
        }
        st.last_reinit = Some(Instant::now());
        // Not initialised (an earlier attempt failed) is fine here.
        let _ = self.ctx.clone().finalize();
        match self.ctx.initialize(init_args()) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => {
                tracing::warn!(module = %self.path.display(), error = %e, "cannot initialise the PKCS#11 module again; retrying later");
            }
        }
        st.generation += 1;
        true
    }
}

/// One loaded module per path for the whole process: `C_Initialize` must run once.
fn module(path: &Path) -> Result<Arc<Module>, HsmError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();
    let modules = MODULES.get_or_init(Default::default);
    let mut modules = modules
        .lock()
        .map_err(|_| HsmError::Pin("module table poisoned".into()))?;
    if let Some(m) = modules.get(path) {
        return Ok(m.clone());
    }
    let err = |reason: String| HsmError::Module {
        path: path.to_owned(),
        reason,
    };
    let ctx = Pkcs11::new(path).map_err(|e| err(e.to_string()))?;
    ctx.initialize(init_args())
        .or_else(|e| match e {
            CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _) => Ok(()),
            e => Err(e),
        })
        .map_err(|e| err(e.to_string()))?;
    let module = Arc::new(Module {
        ctx,
        path: path.to_owned(),
        gate: RwLock::new(ModuleState {
            generation: 0,
            last_reinit: None,
        }),
    });
    modules.insert(path.to_owned(), module.clone());
    Ok(module)
}

fn read_pin(source: &PinSource) -> Result<SecretString, HsmError> {
    match source {
        PinSource::Env(name) => std::env::var(name)
            .map(SecretString::from)
            .map_err(|_| HsmError::Pin(format!("environment variable {name} is not set"))),
        PinSource::File(path) => {
            let r = crate::SecretRef::File(path.clone())
                .resolve()
                .map_err(|e| HsmError::Pin(e.to_string()))?;
            Ok(r)
        }
    }
}

/// A logged-in view of one token, with a pool of sessions.
pub struct Hsm {
    module: Arc<Module>,
    token_label: Option<String>,
    pin: SecretString,
    state: Mutex<HsmState>,
    /// The token was found missing and has not been used successfully since (for logs).
    gone: AtomicBool,
}

#[derive(Default)]
struct HsmState {
    slot: Option<Slot>,
    idle: Vec<Session>,
    /// The module generation `slot` and `idle` belong to.
    generation: u64,
}

impl fmt::Debug for Hsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hsm")
            .field("token", &self.token_label)
            .finish_non_exhaustive()
    }
}

/// Information about one stored object, for `idgate hsm list`. Never a value.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub label: String,
    pub kind: &'static str,
    pub version: u32,
    pub extractable: Option<bool>,
    pub sensitive: Option<bool>,
}

/// The version that follows `newest` for `label`. Versions never wrap: a version 0 after the
/// largest would sort below every other, and the token would keep serving the old value.
fn next_version(label: &str, newest: u32) -> Result<u32, HsmError> {
    newest
        .checked_add(1)
        .ok_or_else(|| HsmError::VersionsExhausted(label.to_owned()))
}

fn version_of(id: &[u8]) -> u32 {
    <[u8; 4]>::try_from(id).map_or(0, u32::from_be_bytes)
}

/// Data objects have no `CKA_ID`; their version is kept in `CKA_APPLICATION` as `idgate/N`.
fn data_version(application: &[u8]) -> u32 {
    application
        .strip_prefix(b"idgate/")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Reads an object's version: `CKA_ID` for keys, `CKA_APPLICATION` for data objects.
fn object_version(session: &Session, h: ObjectHandle, class: ObjectClass) -> Result<u32, HsmError> {
    let ty = if class == ObjectClass::DATA {
        AttributeType::Application
    } else {
        AttributeType::Id
    };
    let attrs = session
        .get_attributes(h, &[ty])
        .map_err(ck("C_GetAttributeValue"))?;
    Ok(attrs
        .iter()
        .find_map(|a| match a {
            Attribute::Id(id) => Some(version_of(id)),
            Attribute::Application(app) => Some(data_version(app)),
            _ => None,
        })
        .unwrap_or(0))
}

/// What kind of object a label names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    WrappedValue,
    HmacKey,
}

impl Hsm {
    /// The process-wide handle of the token `uri` names, opened on first use, so that every
    /// credential on one token shares its session pool and login.
    pub fn shared(uri: &Pkcs11Uri) -> Result<Arc<Self>, HsmError> {
        type Key = (PathBuf, Option<String>);
        static TOKENS: OnceLock<Mutex<HashMap<Key, Arc<Hsm>>>> = OnceLock::new();
        let tokens = TOKENS.get_or_init(Default::default);
        let key = (uri.module_path.clone(), uri.token.clone());
        if let Some(h) = tokens.lock().ok().and_then(|t| t.get(&key).cloned()) {
            return Ok(h);
        }
        let hsm = Self::open(uri)?;
        if let Ok(mut t) = tokens.lock() {
            t.insert(key, hsm.clone());
        }
        Ok(hsm)
    }

    /// Whether `label` names a wrapped value or an HMAC key (the newest of either).
    pub fn kind_of(&self, label: &str) -> Result<ObjectKind, HsmError> {
        self.with_session(|s| {
            if Self::newest(s, label, ObjectClass::SECRET_KEY).is_ok() {
                Ok(ObjectKind::HmacKey)
            } else {
                Self::newest(s, label, ObjectClass::DATA).map(|_| ObjectKind::WrappedValue)
            }
        })
    }

    /// Opens the token that `uri` names; the PIN is read now and kept in zeroizing memory.
    pub fn open(uri: &Pkcs11Uri) -> Result<Arc<Self>, HsmError> {
        let module = module(&uri.module_path)?;
        let pin = read_pin(&uri.pin_source)?;
        Ok(Arc::new(Self {
            module,
            token_label: uri.token.clone(),
            pin,
            state: Mutex::new(HsmState::default()),
            gone: AtomicBool::new(false),
        }))
    }

    fn label(&self) -> String {
        self.token_label.clone().unwrap_or_else(|| "(any)".into())
    }

    fn find_slot(&self) -> Result<Slot, HsmError> {
        let ctx = &self.module.ctx;
        let slots = ctx.get_slots_with_token().map_err(ck("C_GetSlotList"))?;
        for slot in slots {
            let Ok(info) = ctx.get_token_info(slot) else {
                continue;
            };
            // A free slot (SoftHSM2 always offers one) holds no keys.
            if !info.token_initialized() {
                continue;
            }
            match &self.token_label {
                Some(label) if info.label().trim_end() != label => continue,
                _ => return Ok(slot),
            }
        }
        Err(HsmError::NoToken(self.label()))
    }

    /// Whether the token is still in `slot`: after an error that does not say so itself
    /// (a module may report a vanished token's objects as simply not found).
    fn present_in(&self, slot: Slot) -> bool {
        self.module
            .ctx
            .get_token_info(slot)
            .is_ok_and(|info| match &self.token_label {
                Some(label) => info.label().trim_end() == label,
                None => info.token_initialized(),
            })
    }

    /// Runs `f` on a pooled, logged-in read-write session.
    ///
    /// When the token is gone, the pool is emptied and the slot forgotten; the next calls
    /// look for the token again, re-initialising the module at most once a second, so the
    /// gateway recovers by itself when the token returns. Both changes are logged once.
    pub fn with_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let mut gate = self.module.read()?;
        let (session, slot) = match self.checkout(gate.generation) {
            Ok(s) => s,
            Err(e) if e.token_gone() => {
                let seen = gate.generation;
                drop(gate);
                if !self.module.reinitialize(seen) {
                    return Err(self.note_gone(e));
                }
                gate = self.module.read()?;
                match self.checkout(gate.generation) {
                    Ok(s) => s,
                    Err(e) => return Err(self.note_gone(e)),
                }
            }
            Err(e) => return Err(e),
        };
        let result = match f(&session) {
            Err(e) if !e.token_gone() && !self.present_in(slot) => {
                tracing::debug!(error = %e, "PKCS#11 call failed and the token is no longer present");
                Err(HsmError::NoToken(self.label()))
            }
            r => r,
        };
        if matches!(&result, Err(e) if e.token_gone()) {
            drop(session);
            if let Ok(mut st) = self.state.lock() {
                st.idle.clear();
                st.slot = None;
            }
            return result.map_err(|e| self.note_gone(e));
        }
        if let Ok(mut st) = self.state.lock()
            && st.generation == gate.generation
            && st.idle.len() < 16
        {
            st.idle.push(session);
        }
        self.note_back();
        drop(gate);
        result
    }

    fn note_gone(&self, e: HsmError) -> HsmError {
        if e.token_gone() && !self.gone.swap(true, Ordering::Relaxed) {
            tracing::warn!(token = %self.label(), error = %e, "PKCS#11 token is unavailable: credentials kept in it fail until it returns");
        }
        e
    }

    fn note_back(&self) {
        if self.gone.swap(false, Ordering::Relaxed) {
            tracing::info!(token = %self.label(), "PKCS#11 token is available again");
        }
    }

    /// A pooled session of module generation `generation`, or a new one; with its slot.
    fn checkout(&self, generation: u64) -> Result<(Session, Slot), HsmError> {
        let (pooled, slot) = {
            let mut st = self
                .state
                .lock()
                .map_err(|_| HsmError::Pin("session pool poisoned".into()))?;
            if st.generation != generation {
                // These handles died with the previous initialisation, and the module may
                // hand the same numbers to new sessions: closing them now could close
                // someone else's. Forgetting them leaks nothing the module still holds.
                for stale in st.idle.drain(..) {
                    std::mem::forget(stale);
                }
                st.slot = None;
                st.generation = generation;
            }
            let slot = match st.slot {
                Some(s) => s,
                None => {
                    let s = self.find_slot()?;
                    st.slot = Some(s);
                    s
                }
            };
            (st.idle.pop(), slot)
        };
        match pooled {
            Some(s) => Ok((s, slot)),
            None => Ok((self.new_session(slot)?, slot)),
        }
    }

    fn new_session(&self, slot: Slot) -> Result<Session, HsmError> {
        let session = self
            .module
            .ctx
            .open_rw_session(slot)
            .map_err(ck("C_OpenSession"))?;
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(e) => Err(ck("C_Login")(e)),
        }
    }

    /// The newest version of the object with this label and class: (handle, version).
    fn newest(
        session: &Session,
        label: &str,
        class: ObjectClass,
    ) -> Result<(ObjectHandle, u32), HsmError> {
        let handles = session
            .find_objects(&[
                Attribute::Class(class),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(ck("C_FindObjects"))?;
        let mut best = None;
        for h in handles {
            let v = object_version(session, h, class)?;
            if best.is_none_or(|(_, bv)| v > bv) {
                best = Some((h, v));
            }
        }
        best.ok_or_else(|| HsmError::NoObject(label.to_owned()))
    }
    /// HMAC-SHA256 computed inside the token with the newest key of this label.
    pub fn hmac_sha256(&self, label: &str, data: &[u8]) -> Result<(Vec<u8>, u32), HsmError> {
        self.with_session(|s| {
            let (key, version) = Self::newest(s, label, ObjectClass::SECRET_KEY)?;
            let mac = s
                .sign(&Mechanism::Sha256Hmac, key, data)
                .map_err(ck("C_Sign"))?;
            Ok((mac, version))
        })
    }

    /// Decrypts the newest wrapped value of this label inside the token.
    pub fn unwrap_value(
        &self,
        label: &str,
        wrap_key: &str,
    ) -> Result<(SecretBox<[u8]>, u32), HsmError> {
        self.with_session(|s| {
            let (obj, version) = Self::newest(s, label, ObjectClass::DATA)?;
            let attrs = s
                .get_attributes(obj, &[AttributeType::Value])
                .map_err(ck("C_GetAttributeValue"))?;
            let blob = attrs
                .into_iter()
                .find_map(|a| {
                    if let Attribute::Value(v) = a {
                        Some(v)
                    } else {
                        None
                    }
                })
                .ok_or_else(|| HsmError::BadWrapped(label.to_owned()))?;
            let rest = blob
                .strip_prefix(WRAP_MAGIC)
                .filter(|r| r.len() > GCM_IV_LEN + 16)
                .ok_or_else(|| HsmError::BadWrapped(label.to_owned()))?;
            let (iv, ct) = rest.split_at(GCM_IV_LEN);
            let mut iv = iv.to_vec();
            let aad = wrap_aad(label, version);
            let (key, _) = Self::newest(s, wrap_key, ObjectClass::SECRET_KEY)?;
            let params = GcmParams::new(&mut iv, &aad, 128.into()).map_err(ck("GcmParams"))?;
            let plain = Zeroizing::new(
                s.decrypt(&Mechanism::AesGcm(params), key, ct)
                    .map_err(|_| HsmError::BadWrapped(label.to_owned()))?,
            );
            Ok((SecretBox::new(plain.as_slice().into()), version))
        })
    }

    /// Stores `value` wrapped under the token's AES key (created non-extractable if missing),
    /// as the next version of `label`. Returns the version.
    pub fn import_wrapped(
        &self,
        label: &str,
        wrap_key: &str,
        value: &[u8],
    ) -> Result<u32, HsmError> {
        self.with_session(|s| {
            let key = match Self::newest(s, wrap_key, ObjectClass::SECRET_KEY) {
                Ok((k, _)) => k,
                Err(HsmError::NoObject(_)) => s
                    .generate_key(
                        &Mechanism::AesKeyGen,
                        &[
                            Attribute::Token(true),
                            Attribute::Private(true),
                            Attribute::Sensitive(true),
                            Attribute::Extractable(false),
                            Attribute::Encrypt(true),
                            Attribute::Decrypt(true),
                            Attribute::ValueLen(32.into()),
                            Attribute::Label(wrap_key.as_bytes().to_vec()),
                            Attribute::Id(1u32.to_be_bytes().to_vec()),
                        ],
                    )
                    .map_err(ck("C_GenerateKey"))?,
                Err(e) => return Err(e),
            };
            let version = match Self::newest(s, label, ObjectClass::DATA) {
                Ok((_, v)) => next_version(label, v)?,
                Err(HsmError::NoObject(_)) => 1,
                Err(e) => return Err(e),
            };
            let mut iv = s
                .generate_random_vec(GCM_IV_LEN as u32)
                .map_err(ck("C_GenerateRandom"))?;
            let aad = wrap_aad(label, version);
            let mut blob = WRAP_MAGIC.to_vec();
            blob.extend_from_slice(&iv);
            let params = GcmParams::new(&mut iv, &aad, 128.into()).map_err(ck("GcmParams"))?;
            let ct = s
                .encrypt(&Mechanism::AesGcm(params), key, value)
                .map_err(ck("C_Encrypt"))?;
            blob.extend_from_slice(&ct);
            s.create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Application(format!("idgate/{version}").into_bytes()),
                Attribute::Value(blob),
            ])
            .map_err(ck("C_CreateObject"))?;
            Ok(version)
        })
    }

    /// Stores an HMAC key as a sensitive, non-extractable generic secret, as the next version
    /// of `label`. Returns the version.
    pub fn import_hmac_key(&self, label: &str, key: &[u8]) -> Result<u32, HsmError> {
        self.with_session(|s| {
            let version = match Self::newest(s, label, ObjectClass::SECRET_KEY) {
                Ok((_, v)) => next_version(label, v)?,
                Err(HsmError::NoObject(_)) => 1,
                Err(e) => return Err(e),
            };
            s.create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Verify(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(version.to_be_bytes().to_vec()),
                Attribute::Value(key.to_vec()),
            ])
            .map_err(ck("C_CreateObject"))?;
            Ok(version)
        })
    }

    /// Deletes every version of `label` older than `keep_from`.
    pub fn prune(&self, label: &str, keep_from: u32) -> Result<usize, HsmError> {
        self.with_session(|s| {
            let mut n = 0;
            for class in [ObjectClass::DATA, ObjectClass::SECRET_KEY] {
                let handles = s
                    .find_objects(&[
                        Attribute::Class(class),
                        Attribute::Label(label.as_bytes().to_vec()),
                    ])
                    .map_err(ck("C_FindObjects"))?;
                for h in handles {
                    let v = object_version(s, h, class)?;
                    if v < keep_from {
                        s.destroy_object(h).map_err(ck("C_DestroyObject"))?;
                        n += 1;
                    }
                }
            }
            Ok(n)
        })
    }

    /// Labels, kinds, versions and protection flags of the token's objects — never values.
    pub fn list(&self) -> Result<Vec<ObjectInfo>, HsmError> {
        self.with_session(|s| {
            let mut out = Vec::new();
            for h in s.find_objects(&[]).map_err(ck("C_FindObjects"))? {
                let attrs = s
                    .get_attributes(
                        h,
                        &[
                            AttributeType::Class,
                            AttributeType::Label,
                            AttributeType::Id,
                            AttributeType::Application,
                        ],
                    )
                    .map_err(ck("C_GetAttributeValue"))?;
                let mut info = ObjectInfo {
                    label: String::new(),
                    kind: "other",
                    version: 0,
                    extractable: None,
                    sensitive: None,
                };
                for a in attrs {
                    match a {
                        Attribute::Label(l) => {
                            info.label = String::from_utf8_lossy(&l).into_owned()
                        }
                        Attribute::Id(id) => info.version = version_of(&id),
                        Attribute::Application(app) => info.version = data_version(&app),
                        Attribute::Class(c) if c == ObjectClass::DATA => {
                            info.kind = "wrapped-value"
                        }
                        Attribute::Class(c) if c == ObjectClass::SECRET_KEY => {
                            info.kind = "secret-key"
                        }
                        _ => {}
                    }
                }
                if info.kind == "secret-key" {
                    let flags = s
                        .get_attributes(
                            h,
                            &[
                                AttributeType::Extractable,
                                AttributeType::Sensitive,
                                AttributeType::KeyType,
                            ],
                        )
                        .map_err(ck("C_GetAttributeValue"))?;
                    for a in flags {
                        match a {
                            Attribute::Extractable(b) => info.extractable = Some(b),
                            Attribute::Sensitive(b) => info.sensitive = Some(b),
                            Attribute::KeyType(k) if k == KeyType::AES => {
                                info.kind = "aes-wrap-key"
                            }
                            Attribute::KeyType(k) if k == KeyType::GENERIC_SECRET => {
                                info.kind = "hmac-key"
                            }
                            _ => {}
                        }
                    }
                }
                out.push(info);
            }
            out.sort_by(|a, b| (a.label.as_str(), a.version).cmp(&(b.label.as_str(), b.version)));
            Ok(out)
        })
    }

    /// The flags of the newest secret key with this label: (extractable, sensitive).
    pub fn key_flags(&self, label: &str) -> Result<(bool, bool), HsmError> {
        self.with_session(|s| {
            let (h, _) = Self::newest(s, label, ObjectClass::SECRET_KEY)?;
            let attrs = s
                .get_attributes(h, &[AttributeType::Extractable, AttributeType::Sensitive])
                .map_err(ck("C_GetAttributeValue"))?;
            let mut flags = (true, false);
            for a in attrs {
                match a {
                    Attribute::Extractable(b) => flags.0 = b,
                    Attribute::Sensitive(b) => flags.1 = b,
                    _ => {}
                }
            }
            Ok(flags)
        })
    }
}

/// Which slot [`init_token`] initialises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotChoice {
    /// The slot with this id.
    Id(u64),
    /// The slot already holding a token with the label (if any), else the first slot with an
    /// uninitialised token (SoftHSM2 always offers one).
    ByLabel,
}

/// What [`init_token`] did.
#[derive(Debug, Clone)]
pub struct InitializedToken {
    /// The slot the token was initialised in.
    pub slot: u64,
    /// The slot the module shows it in now (SoftHSM2 moves a new token to a slot of its own).
    pub slot_now: Option<u64>,
    /// The label of the token that was erased (with `force`).
    pub replaced: Option<String>,
}

/// Initialises a token: `C_InitToken` with the Security Officer PIN and `label`, then, as the
/// SO, `C_InitPIN` with the user PIN. A slot that already holds an initialised token is
/// refused unless `force`, since initialising erases every object in it.
///
/// Blocking; meant for `idgate hsm init-token`.
pub fn init_token(
    module_path: &Path,
    choice: SlotChoice,
    label: &str,
    so_pin: &SecretString,
    user_pin: &SecretString,
    force: bool,
) -> Result<InitializedToken, HsmError> {
    if label.is_empty() || label.len() > 32 {
        return Err(HsmError::BadLabel);
    }
    let ctx = module(module_path)?;
    let ctx = &ctx.ctx;
    let slots = ctx.get_slots_with_token().map_err(ck("C_GetSlotList"))?;
    let mut chosen = None;
    let mut free = None;
    for slot in slots {
        let info = ctx.get_token_info(slot).map_err(ck("C_GetTokenInfo"))?;
        let current = info
            .token_initialized()
            .then(|| info.label().trim_end().to_owned());
        match choice {
            SlotChoice::Id(id) if slot.id() == id => chosen = Some((slot, current)),
            SlotChoice::ByLabel if current.as_deref() == Some(label) && chosen.is_none() => {
                chosen = Some((slot, current));
            }
            SlotChoice::ByLabel if current.is_none() && free.is_none() => free = Some(slot),
            _ => {}
        }
    }
    let (slot, current) = match (chosen, choice) {
        (Some(c), _) => c,
        (None, SlotChoice::Id(id)) => return Err(HsmError::NoSlot(id)),
        (None, SlotChoice::ByLabel) => (free.ok_or(HsmError::NoFreeSlot)?, None),
    };
    if let Some(existing) = &current
        && !force
    {
        return Err(HsmError::TokenExists {
            slot: slot.id(),
            label: existing.clone(),
        });
    }
    ctx.init_token(slot, so_pin, label).map_err(|e| match e {
        CkError::Pkcs11(RvError::PinIncorrect, _) => HsmError::SoPinIncorrect,
        e => ck("C_InitToken")(e),
    })?;
    let session = ctx.open_rw_session(slot).map_err(ck("C_OpenSession"))?;
    session
        .login(UserType::So, Some(so_pin))
        .map_err(ck("C_Login (SO)"))?;
    session.init_pin(user_pin).map_err(ck("C_InitPIN"))?;
    // Not logging out leaves nothing behind: closing the session ends the SO login.
    drop(session);
    let slot_now = ctx
        .get_slots_with_token()
        .ok()
        .into_iter()
        .flatten()
        .find(|s| {
            ctx.get_token_info(*s)
                .is_ok_and(|i| i.token_initialized() && i.label().trim_end() == label)
        })
        .map(|s| s.id());
    Ok(InitializedToken {
        slot: slot.id(),
        slot_now,
        replaced: current,
    })
}

/// Binds a ciphertext to its label and version, so a wrapped blob copied to another label
/// (or rolled back to an older version number) fails to decrypt.
fn wrap_aad(label: &str, version: u32) -> Vec<u8> {
    let mut aad = b"idgate-wrapped-v1\0".to_vec();
    aad.extend_from_slice(label.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc7512_uri_with_query_attributes() {
        let u = Pkcs11Uri::parse(
            "token=idgate;object=didit%20key;type=data?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:pin",
            Path::new("/etc/idgate"),
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("idgate"));
        assert_eq!(u.object, "didit key");
        assert_eq!(
            u.module_path,
            PathBuf::from("/usr/lib/softhsm/libsofthsm2.so")
        );
        assert_eq!(
            u.pin_source,
            PinSource::File(PathBuf::from("/etc/idgate/pin"))
        );
        assert_eq!(u.to_string(), "pkcs11:token=idgate;object=didit key");
    }

    #[test]
    fn versions_stop_at_the_largest_instead_of_wrapping() {
        assert_eq!(next_version("k", 1).unwrap(), 2);
        assert_eq!(next_version("k", u32::MAX - 1).unwrap(), u32::MAX);
        let err = next_version("k", u32::MAX).unwrap_err();
        assert!(
            matches!(err, HsmError::VersionsExhausted(ref l) if l == "k"),
            "{err}"
        );
    }

    #[test]
    fn refuses_literal_pins_and_missing_parts() {
        let base = Path::new("/");
        assert!(Pkcs11Uri::parse("object=k?module-path=/m.so&pin-value=1234", base).is_err());
        assert!(Pkcs11Uri::parse("object=k?pin-source=env:PIN", base).is_err());
        assert!(Pkcs11Uri::parse("token=t?module-path=/m.so&pin-source=env:PIN", base).is_err());
        assert!(
            Pkcs11Uri::parse_token("token=t?module-path=/m.so&pin-source=env:PIN", base).is_ok()
        );
        assert!(Pkcs11Uri::parse("object=%zz?module-path=/m.so&pin-source=env:PIN", base).is_err());
    }
}
