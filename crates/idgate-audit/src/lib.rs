//! idgate's tamper-evident audit trail.
//!
//! One record per request and per refused connection (OCSF API Activity and Network
//! Activity, [`record`]), written off the request path by one thread ([`AuditTrail`]) into
//! JSON-lines files that form one hash chain across files and restarts ([`chain`]), with
//! Ed25519-signed checkpoints ([`checkpoint`]) and optional AES-256-GCM encryption at rest
//! ([`crypt`]). [`verify`] checks a trail and names the first entry that does not hold.
//!
//! The request path only serializes its record into a reused buffer and appends it to the
//! pending batch, in a place of the bounded queue it reserved before it was forwarded
//! ([`queue`]); chaining, encryption, signing, writing and syncing happen on the writer
//! thread. `docs/audit.md` describes the format, the guarantees and the tools.

pub mod chain;
pub mod checkpoint;
pub mod crypt;
pub mod files;
pub mod json;
pub mod keys;
pub mod queue;
pub mod reader;
pub mod record;
pub mod verify;
pub mod writer;

pub use chain::{Digest, Entry, EntryKind};
pub use checkpoint::Close;
pub use keys::{EncryptionKey, KeyError, PublicKey, SigningKey, generate_signing_key};
pub use queue::{AuditMetrics, AuditTrail, Permit};
pub use record::{
    ApiActivity, AuthLayers, ConnectionEvent, ConnectionOutcome, ConnectionSummary, Decision,
};
pub use verify::{
    End, ExpectHead, Finding, GapAfter, Problem, Schedule, Summary, Verifier, VerifyError,
    VerifyOptions, Warning,
};
pub use writer::{
    AppendError, AuditError, AuditKeys, Export, Gap, GapReason, Halt, MAX_RECORD, StartReport,
    WriterSettings,
};
