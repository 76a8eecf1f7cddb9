//! The readers of Redis's replies (those of the scripts, and the records the store keeps),
//! for the fuzz targets (`fuzz/fuzz_targets/redis_reply.rs`). Each takes a reply as Redis
//! sends it, in RESP; `None` when the bytes are not one.

use std::time::SystemTime;

use redis::Value;

use crate::queue::MessageInfo;
use crate::{GcraDecision, GcraLimit, GcraTake, ObjectId, OwnerRecord, StoreError, WindowCount};

fn reply(resp: &[u8]) -> Option<Value> {
    redis::parse_redis_value(resp).ok()
}

/// The GCRA script's reply, read for a check of `take` under `limit` at `now`.
pub fn gcra_reply(
    resp: &[u8],
    limit: &GcraLimit,
    take: GcraTake,
    now: SystemTime,
) -> Option<Result<GcraDecision, StoreError>> {
    Some(super::counters::gcra_decision(
        reply(resp)?,
        limit,
        take,
        now,
    ))
}

/// The window script's reply.
pub fn window_reply(resp: &[u8]) -> Option<Result<WindowCount, StoreError>> {
    Some(super::counters::window_reply(reply(resp)?))
}

/// An ownership record of `object`, as a script or `HMGET` replies it.
pub fn owner_reply(resp: &[u8], object: &ObjectId) -> Option<Result<OwnerRecord, StoreError>> {
    Some(super::counters::owner_record(object, reply(resp)?))
}

/// A queued message's record, as the queue's scripts reply it, described at `now`
/// (microseconds).
pub fn message_reply(resp: &[u8], now: u64) -> Option<Result<(u64, MessageInfo), StoreError>> {
    Some(super::queue::record(reply(resp)?).map(|(seq, meta)| (seq, meta.info(seq, now))))
}
