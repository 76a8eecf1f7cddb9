//! PKCS#11 custody (RFC 7512 URIs, SoftHSM2 in tests) in two modes:
//!
//! - **wrapped value**: the API key is stored as a data object, AES-256-GCM encrypted under a
//!   non-extractable token key; decryption happens inside the token and the plaintext lives
//!   only in zeroizing memory in the gateway;
//! - **never leaves the HSM**: an HMAC-SHA256 key stored as a non-extractable, sensitive
//!   generic secret; every signature is computed by the token (`CKM_SHA256_HMAC`).
//!
//! The token also keeps Ed25519 key pairs that sign the audit trail's checkpoints
//! (`CKM_EDDSA`, in `ed25519.rs`): the private key is generated there and never leaves it.
//!
//! Objects carry a version (`CKA_ID`, 4 bytes big endian, for keys; `CKA_APPLICATION`
//! `idgate/N` for data objects, which have no `CKA_ID`); rotation adds a new
//! version under the same label and the newest one is used. Every call here blocks: callers
//! run them on blocking threads. Sessions are pooled and logged in once per token.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
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

mod ed25519;
mod init;
mod login;
mod objects;
#[cfg(test)]
mod token_tests;
mod uri;

/// The PKCS#11 binding whose sessions [`Hsm::with_session`] lends.
pub use cryptoki;
pub use init::{InitializedToken, SlotChoice, init_token};
pub use uri::{PinSource, Pkcs11Uri};

/// The label of the AES key that wraps stored values, unless the URI names another
/// (`wrap-key=` query attribute).
pub const DEFAULT_WRAP_KEY: &str = "idgate-wrap-key";
const WRAP_MAGIC: &[u8] = b"IDGW1";
const GCM_IV_LEN: usize = 12;

/// Why a token operation failed. Carries PKCS#11 return codes and labels, never values.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    #[error("cannot load PKCS#11 module {path}: {reason}")]
    Module { path: PathBuf, reason: String },
    #[error("no token labelled \"{0}\" is present")]
    NoToken(String),
    #[error("cannot read the token PIN: {0}")]
    Pin(String),
    #[error(
        "the token refused the user PIN from {pin_source} ({code}); it is not presented again until {pin_source} holds another"
    )]
    PinRefused {
        pin_source: String,
        code: &'static str,
    },
    #[error("no object labelled \"{0}\" in the token")]
    NoObject(String),
    #[error("version {version} of \"{label}\" is no longer in the token")]
    NoVersion { label: String, version: u32 },
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
    #[error("the {which} is {len} bytes long; this token takes {min} to {max} bytes")]
    PinLength {
        which: &'static str,
        len: usize,
        min: usize,
        max: usize,
    },
    #[error(
        "the token \"{label}\" is initialised, but its user PIN could not be set ({cause}): it holds no object and no one can log in to it as a user. Run `idgate hsm init-token --force` again with the Security Officer PIN just set and a user PIN the token takes"
    )]
    UserPinNotSet { label: String, cause: String },
    #[error(
        "version {version} of \"{label}\" is {len} bytes long; this key needs at least {min}, so it is not used (store a longer version)"
    )]
    KeyTooShort {
        label: String,
        version: u32,
        len: usize,
        min: usize,
    },
    #[error(
        "the token does not state the length of version {version} of \"{label}\" (CKA_VALUE_LEN), so it cannot be held to the {min} bytes this key needs and is not used"
    )]
    KeyLenUnknown {
        label: String,
        version: u32,
        min: usize,
    },
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
/// How long a call that found its token gone waits for the module's other calls to end
/// before re-initialising it; past that, it fails as the token being unavailable.
const REINIT_WAIT: Duration = Duration::from_millis(500);
/// Sessions kept idle per token, and signatures on the request path in flight on it at once
/// ([`Hsm::signing_slots`]).
const POOL_SIZE: usize = 16;

/// A loaded PKCS#11 module. Every call into it holds `gate` for reading; re-initialising it
/// holds `gate` for writing, so that no call and no session is in use meanwhile.
///
/// Re-initialising (`C_Finalize` + `C_Initialize`) is how a token that disappeared is found
/// again: some modules, SoftHSM2 among them, mark a token whose storage vanished as broken
/// for good and only look at their storage again when initialised.
struct Module {
    ctx: Pkcs11,
    /// The library file, as the file system knows it: see [`module`].
    file: ModuleFile,
    gate: RwLock<ModuleState>,
    /// The PINs each token refused, by token label: kept with the module, which lives as
    /// long as the process, so that a handle let go and made again (its PIN source named
    /// once more) does not present them again. See `login.rs`.
    logins: Mutex<login::Refusals>,
}

/// A file as the file system knows it: its device and inode.
type FileId = (u64, u64);

/// Which file a module is: its device and inode, and its canonical path (for logs).
#[derive(Clone, Debug)]
struct ModuleFile {
    id: FileId,
    path: PathBuf,
}

impl ModuleFile {
    /// Blocking: reads the file system.
    fn of(path: &Path) -> Result<Self, HsmError> {
        use std::os::unix::fs::MetadataExt;
        let err = |e: std::io::Error| HsmError::Module {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let canonical = std::fs::canonicalize(path).map_err(err)?;
        let meta = std::fs::metadata(&canonical).map_err(err)?;
        Ok(Self {
            id: (meta.dev(), meta.ino()),
            path: canonical,
        })
    }
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
        let Some(mut st) = write_without_queueing(&self.gate, REINIT_WAIT) else {
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
                tracing::warn!(module = %self.file.path.display(), error = %e, "cannot initialise the PKCS#11 module again; retrying later");
            }
        }
        st.generation += 1;
        true
    }
}

/// Takes `lock` for writing once no one holds it, trying for at most `wait`, without ever
/// queueing for it: a writer waiting in a std `RwLock` makes every new reader wait behind it,
/// so one call hung inside the module (holding a read lock) would stall every other user of
/// the module (audit checkpoints, pseudonyms, other credentials) instead of letting them fail.
/// Blocking: called on blocking threads only, like every call into a module.
fn write_without_queueing<T>(lock: &RwLock<T>, wait: Duration) -> Option<RwLockWriteGuard<'_, T>> {
    let deadline = Instant::now() + wait;
    loop {
        match lock.try_write() {
            Ok(guard) => return Some(guard),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => return None,
        }
    }
}

/// One loaded module per library file for the whole process: `C_Initialize` must run once.
///
/// A path already seen, as written or as its canonical form, gives the module it gave
/// before, without looking at the file again. A new spelling is known by its file's device
/// and inode, not by the path as written: the dynamic loader loads one library once however
/// it is reached (Debian's `/usr/lib/softhsm/libsofthsm2.so` is a symlink to
/// `/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so`), so two module objects for two
/// spellings would share the library's state without sharing the lock that keeps a
/// re-initialisation from running under another call. Blocking (reads the file system).
fn module(path: &Path) -> Result<Arc<Module>, HsmError> {
    static MODULES: OnceLock<Mutex<Modules>> = OnceLock::new();
    let modules = MODULES.get_or_init(Default::default);
    let mut modules = modules
        .lock()
        .map_err(|_| HsmError::Pin("module table poisoned".into()))?;
    // A spelling once loaded keeps its module: the library stays loaded whatever happens to
    // its file since (replaced by a package upgrade, so another inode, or briefly missing).
    if let Some(m) = modules.by_path.get(path) {
        return Ok(m.clone());
    }
    let file = ModuleFile::of(path)?;
    let known = modules
        .by_path
        .get(&file.path)
        .or_else(|| modules.by_file.get(&file.id))
        .cloned();
    if let Some(m) = known {
        modules.by_path.insert(path.to_owned(), m.clone());
        return Ok(m);
    }
    let err = |reason: String| HsmError::Module {
        path: path.to_owned(),
        reason,
    };
    let ctx = Pkcs11::new(&file.path).map_err(|e| err(e.to_string()))?;
    ctx.initialize(init_args())
        .or_else(|e| match e {
            CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _) => Ok(()),
            e => Err(e),
        })
        .map_err(|e| err(e.to_string()))?;
    let module = Arc::new(Module {
        ctx,
        file: file.clone(),
        gate: RwLock::new(ModuleState {
            generation: 0,
            last_reinit: None,
        }),
        logins: Mutex::default(),
    });
    modules.by_file.insert(file.id, module.clone());
    modules.by_path.insert(file.path, module.clone());
    modules.by_path.insert(path.to_owned(), module.clone());
    Ok(module)
}

/// The modules loaded, by the paths they were reached by and by their files.
#[derive(Default)]
struct Modules {
    by_path: HashMap<PathBuf, Arc<Module>>,
    by_file: HashMap<FileId, Arc<Module>>,
}

/// A logged-in view of one token, with a pool of sessions.
pub struct Hsm {
    module: Arc<Module>,
    token_label: Option<String>,
    /// Where the PIN is read from at each login: fixed for the life of the handle, so that a
    /// configuration that names another source gets a handle of its own ([`Hsm::shared`]).
    pin_source: PinSource,
    state: Mutex<HsmState>,
    /// The token was found missing and has not been used successfully since (for logs).
    gone: AtomicBool,
    /// Signatures on the request path in flight on this token: see [`Hsm::signing_slots`].
    signing: Arc<tokio::sync::Semaphore>,
    /// `C_Login` calls made, for the tests that count them.
    #[cfg(test)]
    login_attempts: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct HsmState {
    slot: Option<Slot>,
    idle: Vec<Session>,
    /// The module generation `slot` and `idle` belong to.
    generation: u64,
}

impl Drop for Hsm {
    /// Closes the pooled sessions under the module's gate, as every call into the module is
    /// made, and only those of the module's current initialisation: older handles may since
    /// have been given to someone else's sessions (see [`Hsm::checkout`]).
    ///
    /// Off the async runtime: closing a session is a call into the module (a round trip to
    /// a network HSM), and a handle may be dropped on the runtime with the last snapshot
    /// that held it.
    fn drop(&mut self) {
        let Ok(st) = self.state.get_mut() else {
            return;
        };
        let idle = std::mem::take(&mut st.idle);
        if idle.is_empty() {
            return;
        }
        /// Sessions that are forgotten, not closed, unless taken out to be closed.
        struct Unclosed(Vec<Session>);
        impl Drop for Unclosed {
            fn drop(&mut self) {
                std::mem::take(&mut self.0)
                    .into_iter()
                    .for_each(std::mem::forget);
            }
        }
        let mut idle = Unclosed(idle);
        let generation = st.generation;
        let module = Arc::clone(&self.module);
        let mut close = move || {
            if let Ok(gate) = module.read()
                && gate.generation == generation
            {
                drop(std::mem::take(&mut idle.0));
                drop(gate);
            }
        };
        // On the runtime, on its blocking pool (which the runtime waits for when it shuts
        // down, so that no close runs into the module's teardown at exit); elsewhere, here.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(close)),
            Err(_) => close(),
        }
    }
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
    /// The process-wide handle of the token `uri` names with its PIN source, opened on first
    /// use, so that every credential on one token shares its session pool and login. The
    /// token is known by its module's file and its label.
    ///
    /// The PIN source is part of the handle: a reference that names another source (a
    /// reload that changed it) gets a handle of its own, so the running handles keep reading
    /// their own source until the configuration holding them is dropped, whether or not the
    /// new one goes into use. Both log in to the same token, whose login holds for every
    /// session of the process (`CKR_USER_ALREADY_LOGGED_IN` is taken as logged in). A handle
    /// of another source that nothing holds any more is let go here, so they do not pile up.
    pub fn shared(uri: &Pkcs11Uri) -> Result<Arc<Self>, HsmError> {
        type Key = (FileId, Option<String>);
        static TOKENS: OnceLock<Mutex<HashMap<Key, Vec<Arc<Hsm>>>>> = OnceLock::new();
        let tokens = TOKENS.get_or_init(Default::default);
        let module = module(&uri.module_path)?;
        let key = (module.file.id, uri.token.clone());
        let (found, unused) = {
            let mut t = tokens
                .lock()
                .map_err(|_| HsmError::Pin("token table poisoned".into()))?;
            let handles = t.entry(key.clone()).or_default();
            // Only the table holds it (every clone is made under this lock).
            let (unused, kept): (Vec<_>, Vec<_>) = std::mem::take(handles)
                .into_iter()
                .partition(|h| h.pin_source != uri.pin_source && Arc::strong_count(h) == 1);
            *handles = kept;
            let found = handles
                .iter()
                .find(|h| h.pin_source == uri.pin_source)
                .cloned();
            (found, unused)
        };
        // Dropped outside the table's lock: closing their sessions calls into the module.
        drop(unused);
        if let Some(h) = found {
            return Ok(h);
        }
        // Opened outside the lock: it reads the PIN source.
        let hsm = Self::with_module(module, uri)?;
        let mut t = tokens
            .lock()
            .map_err(|_| HsmError::Pin("token table poisoned".into()))?;
        let handles = t.entry(key).or_default();
        if let Some(h) = handles.iter().find(|h| h.pin_source == uri.pin_source) {
            return Ok(h.clone());
        }
        handles.push(hsm.clone());
        Ok(hsm)
    }

    /// Whether `label` names a wrapped value or an HMAC key: the kind of an object the
    /// gateway would use, else (for `idgate hsm rotate`, and for an error that says what is
    /// wrong with it) the kind of whatever is stored under the label.
    pub fn kind_of(&self, label: &str) -> Result<ObjectKind, HsmError> {
        self.with_session(|s| {
            if Self::newest_of(s, label, Wanted::HmacKey).is_ok() {
                Ok(ObjectKind::HmacKey)
            } else if Self::newest_of(s, label, Wanted::WrappedValue).is_ok() {
                Ok(ObjectKind::WrappedValue)
            } else if Self::newest(s, label, ObjectClass::SECRET_KEY).is_ok() {
                Ok(ObjectKind::HmacKey)
            } else {
                Self::newest(s, label, ObjectClass::DATA).map(|_| ObjectKind::WrappedValue)
            }
        })
    }

    /// Opens the token that `uri` names. The PIN is read now, to report an unreadable
    /// source at once, and again at each login; it is never kept.
    pub fn open(uri: &Pkcs11Uri) -> Result<Arc<Self>, HsmError> {
        Self::with_module(module(&uri.module_path)?, uri)
    }

    fn with_module(module: Arc<Module>, uri: &Pkcs11Uri) -> Result<Arc<Self>, HsmError> {
        drop(login::read_pin(&uri.pin_source)?);
        Ok(Arc::new(Self {
            module,
            token_label: uri.token.clone(),
            pin_source: uri.pin_source.clone(),
            state: Mutex::new(HsmState::default()),
            gone: AtomicBool::new(false),
            signing: Arc::new(tokio::sync::Semaphore::new(POOL_SIZE)),
            #[cfg(test)]
            login_attempts: Default::default(),
        }))
    }

    /// The slots of signatures made for requests on this token, shared by every key in it:
    /// as many as the session pool keeps, so a burst queues for a slot instead of opening
    /// more sessions. A slot is held for as long as the token works on the signature, even
    /// when the request that asked for it has gone.
    pub(crate) fn signing_slots(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.signing
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
    ///
    /// A pooled session may have lost its login (a `C_Logout` by another user of the module,
    /// or the token ending it), and then sees no private object: when `f` fails on one that
    /// is no longer logged in, it is closed and `f` runs once more on a new session, logged
    /// in again.
    pub fn with_session<T>(
        &self,
        mut f: impl FnMut(&Session) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let mut gate = self.module.read()?;
        let (session, slot, pooled) = match self.checkout(gate.generation) {
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
        let mut result = self.call(&mut f, &session, slot);
        let mut session = Some(session);
        if pooled
            && matches!(&result, Err(e) if !e.token_gone())
            && session.as_ref().is_some_and(|s| !login::logged_in(s))
        {
            session = None;
            match self.new_session(slot) {
                Ok(fresh) => {
                    result = self.call(&mut f, &fresh, slot);
                    session = Some(fresh);
                }
                Err(e) => result = Err(e),
            }
        }
        if matches!(&result, Err(e) if e.token_gone()) {
            drop(session);
            if let Ok(mut st) = self.state.lock() {
                st.idle.clear();
                st.slot = None;
            }
            return result.map_err(|e| self.note_gone(e));
        }
        if let Some(session) = session
            && let Ok(mut st) = self.state.lock()
            && st.generation == gate.generation
            && st.idle.len() < POOL_SIZE
        {
            st.idle.push(session);
        }
        self.note_back();
        drop(gate);
        result
    }

    /// `f` on `session`; a failure after which the token is no longer in `slot` is the
    /// token's absence.
    fn call<T>(
        &self,
        f: &mut impl FnMut(&Session) -> Result<T, HsmError>,
        session: &Session,
        slot: Slot,
    ) -> Result<T, HsmError> {
        match f(session) {
            Err(e) if !e.token_gone() && !self.present_in(slot) => {
                tracing::debug!(error = %e, "PKCS#11 call failed and the token is no longer present");
                Err(HsmError::NoToken(self.label()))
            }
            r => r,
        }
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

    /// A pooled session of module generation `generation`, or a new one; with its slot and
    /// whether it came from the pool.
    fn checkout(&self, generation: u64) -> Result<(Session, Slot, bool), HsmError> {
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
            Some(s) => Ok((s, slot, true)),
            None => Ok((self.new_session(slot)?, slot, false)),
        }
    }

    /// A new read-write session, logged in ([`Hsm::log_in`]).
    fn new_session(&self, slot: Slot) -> Result<Session, HsmError> {
        let session = self
            .module
            .ctx
            .open_rw_session(slot)
            .map_err(ck("C_OpenSession"))?;
        if !login::logged_in(&session) {
            self.log_in(&session)?;
        }
        Ok(session)
    }

    /// The newest version of any object with this label and class: (handle, version). For
    /// numbering a new version, which must be above every one there; an object to be used
    /// is looked up with [`Hsm::newest_of`].
    fn newest(
        session: &Session,
        label: &str,
        class: ObjectClass,
    ) -> Result<(ObjectHandle, u32), HsmError> {
        Self::newest_matching(session, label, class, &[])
    }

    /// The newest version of this label that is what `wanted` must be. When none is, but
    /// the label holds an object of the class, the error says what it lacks.
    fn newest_of(
        session: &Session,
        label: &str,
        wanted: Wanted,
    ) -> Result<(ObjectHandle, u32), HsmError> {
        match Self::newest_matching(session, label, wanted.class(), &wanted.attributes()) {
            Err(HsmError::NoObject(_)) if Self::newest(session, label, wanted.class()).is_ok() => {
                Err(HsmError::WrongKind(label.to_owned(), wanted.described()))
            }
            found => found,
        }
    }

    fn newest_matching(
        session: &Session,
        label: &str,
        class: ObjectClass,
        attributes: &[Attribute],
    ) -> Result<(ObjectHandle, u32), HsmError> {
        let mut template = vec![
            Attribute::Class(class),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        template.extend_from_slice(attributes);
        let handles = session
            .find_objects(&template)
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
}

/// What an object is used as, and so what it must be for the gateway to use it: private
/// (readable only once logged in, so that no one without the PIN can put an object of their
/// own under the label), and a key with the flags it was stored with. An object under the
/// label that is not all of this is never used, whatever its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    /// A wrapped value: a private data object.
    WrappedValue,
    /// The AES key that wraps values: private, sensitive, never extractable.
    WrapKey,
    /// An HMAC key: a private, sensitive, never extractable generic secret that may sign.
    HmacKey,
    /// The private half of an Ed25519 pair: private, sensitive, never extractable, may sign.
    Ed25519Private,
}

impl Wanted {
    fn class(self) -> ObjectClass {
        match self {
            Self::WrappedValue => ObjectClass::DATA,
            Self::WrapKey | Self::HmacKey => ObjectClass::SECRET_KEY,
            Self::Ed25519Private => ObjectClass::PRIVATE_KEY,
        }
    }

    fn described(self) -> &'static str {
        match self {
            Self::WrappedValue => "a private data object",
            Self::WrapKey => "a private, sensitive, never extractable AES key",
            Self::HmacKey => {
                "a private, sensitive, never extractable generic secret key that may sign"
            }
            Self::Ed25519Private => {
                "a private, sensitive, never extractable Ed25519 key that may sign"
            }
        }
    }

    fn attributes(self) -> Vec<Attribute> {
        let held = [
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
        ];
        match self {
            Self::WrappedValue => vec![Attribute::Private(true)],
            Self::WrapKey => [
                &held[..],
                &[Attribute::KeyType(KeyType::AES), Attribute::Decrypt(true)],
            ]
            .concat(),
            Self::HmacKey => [
                &held[..],
                &[
                    Attribute::KeyType(KeyType::GENERIC_SECRET),
                    Attribute::Sign(true),
                ],
            ]
            .concat(),
            Self::Ed25519Private => [
                &held[..],
                &[
                    Attribute::KeyType(KeyType::EC_EDWARDS),
                    Attribute::Sign(true),
                ],
            ]
            .concat(),
        }
    }
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

    /// A call hung inside the module holds its read lock; a re-initialisation waiting for
    /// it must not make every other call wait behind it.
    #[test]
    fn a_reinitialisation_waiting_for_a_hung_call_never_stalls_the_other_calls() {
        let gate = Arc::new(RwLock::new(0u64));
        let hung = gate.read().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                tx.send(()).unwrap();
                // Long enough that this thread reads while the writer still tries, even
                // when a loaded machine runs it late.
                let took = write_without_queueing(&gate, Duration::from_secs(1)).is_some();
                tx.send(()).unwrap();
                took
            })
        };
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        // Until the writer gives up, every other call still gets in at once.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut reads = 0u32;
        while rx.try_recv().is_err() {
            assert!(
                gate.try_read().is_ok(),
                "a call was made to wait behind a pending re-initialisation"
            );
            reads += 1;
            assert!(Instant::now() < deadline, "the writer never gave up");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(reads > 0);
        assert!(!writer.join().unwrap(), "took the lock from a hung call");
        drop(hung);
        assert!(write_without_queueing(&gate, Duration::from_millis(300)).is_some());
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

    #[test]
    fn a_relative_module_path_is_refused() {
        let base = Path::new("/etc/idgate");
        for relative in ["libsofthsm2.so", "./lib/m.so", "../m.so", ""] {
            let uri = format!("token=t;object=k?module-path={relative}&pin-source=env:PIN");
            assert_eq!(
                Pkcs11Uri::parse(&uri, base),
                Err(SecretRefError::BadPkcs11Uri(
                    "module-path must be the module's absolute path"
                )),
                "{relative:?}"
            );
        }
        let uri = "token=t;object=k?module-path=/usr/lib/softhsm/../softhsm/libsofthsm2.so&pin-source=env:PIN";
        assert!(Pkcs11Uri::parse(uri, base).is_ok());
    }
}
