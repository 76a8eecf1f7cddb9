//! One-time values within a window (webhook replay protection) and object ownership with a
//! retention (which caller created which provider object).

use std::future::Future;
use std::time::{Duration, SystemTime};

use crate::StoreError;
use crate::types::{Nonce, ObjectId, Owner};

/// Nonces seen within a window.
///
/// Atomicity: of any number of concurrent `insert_if_absent` calls for one nonce, on any
/// replica, exactly one gets `true` until the window ends.
pub trait Nonces: Send + Sync {
    /// Records `nonce` until `now + window` unless it is recorded already; `true` when it was
    /// new (the event is fresh), `false` for a replay.
    fn insert_if_absent(
        &self,
        nonce: &Nonce,
        window: Duration,
        now: SystemTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Removes expired nonces (see [`crate::Counters::sweep`]).
    fn sweep(&self, now: SystemTime) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// Who owns an object, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRecord {
    pub owner: Owner,
    pub expires_at: SystemTime,
}

/// Which principal created which provider object, kept for a retention.
///
/// Atomicity: the first owner recorded for an object keeps it while the record lives; of
/// concurrent `put`s by different owners exactly one wins, and every caller learns which.
pub trait Ownership: Send + Sync {
    /// Records `owner` as the owner of `object` until `now + retention` and returns the
    /// record in force. When another owner's record is live it is kept and returned
    /// unchanged (compare its `owner`); the same owner's record has its retention renewed.
    fn put(
        &self,
        object: &ObjectId,
        owner: &Owner,
        retention: Duration,
        now: SystemTime,
    ) -> impl Future<Output = Result<OwnerRecord, StoreError>> + Send;

    /// The live record for `object`, if any.
    fn get(
        &self,
        object: &ObjectId,
        now: SystemTime,
    ) -> impl Future<Output = Result<Option<OwnerRecord>, StoreError>> + Send;

    /// The live record for `object`, if any, read for `asker` to learn whether it is its
    /// own. A store that keeps records it has read close at hand answers only their owner
    /// from them and asks the store itself for anyone else, so that an object owned by
    /// someone else takes as long to refuse as one that does not exist (the answer's timing
    /// must not tell them apart). Stores without such a copy read as [`Ownership::get`].
    fn get_for(
        &self,
        object: &ObjectId,
        asker: &Owner,
        now: SystemTime,
    ) -> impl Future<Output = Result<Option<OwnerRecord>, StoreError>> + Send {
        let _ = asker;
        self.get(object, now)
    }

    /// Forgets `object` (deleted at the provider); `true` when there was a record.
    fn remove(&self, object: &ObjectId) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Removes expired records (see [`crate::Counters::sweep`]).
    fn sweep(&self, now: SystemTime) -> impl Future<Output = Result<u64, StoreError>> + Send;
}
