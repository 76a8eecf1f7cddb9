//! The logic of counters, nonces and ownership, written once over rows with a deadline, so
//! that the in-memory and redb backends cannot drift apart. Each backend runs one of these
//! functions under its lock or inside one write transaction, which is what makes the call
//! atomic.

use std::time::{Duration, SystemTime};

use crate::StoreError;
use crate::counters::{GcraDecision, GcraLimit, GcraTake, WindowCount, gcra, window_count};
use crate::nonces::OwnerRecord;
use crate::types::{Owner, duration_micros, from_micros, micros};

/// How many expired rows a write removes on its way, so that the store is swept without a
/// task of its own and no write pays for a large backlog at once.
pub(crate) const SWEEP_PER_WRITE: usize = 16;

/// What a row belongs to; part of its key, so the four kinds never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    Window = 1,
    Gcra = 2,
    Nonce = 3,
    Owner = 4,
}

impl Kind {
    pub(crate) fn tag(self) -> u8 {
        self as u8
    }
}

/// One row: its deadline (microseconds; the row is dead from then on), a number (a count or
/// a GCRA arrival time) and a text (an owner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    pub(crate) deadline: u64,
    pub(crate) number: u64,
    pub(crate) text: String,
}

pub(crate) trait ReadRows {
    /// The row as stored, dead or alive.
    fn get(&self, kind: Kind, key: &str) -> Result<Option<Row>, StoreError>;
}

pub(crate) trait Rows: ReadRows {
    /// Stores the row, keeping the deadline index in step.
    fn put(&mut self, kind: Kind, key: &str, row: Row) -> Result<(), StoreError>;
    fn remove(&mut self, kind: Kind, key: &str) -> Result<bool, StoreError>;
    /// Removes up to `limit` rows (of the given kinds) whose deadline is at or before `now`.
    fn sweep(&mut self, kinds: &[Kind], now: u64, limit: usize) -> Result<u64, StoreError>;
}

pub(crate) const COUNTER_KINDS: &[Kind] = &[Kind::Window, Kind::Gcra];
pub(crate) const ALL_KINDS: &[Kind] = &[Kind::Window, Kind::Gcra, Kind::Nonce, Kind::Owner];

fn live(rows: &impl ReadRows, kind: Kind, key: &str, now: u64) -> Result<Option<Row>, StoreError> {
    Ok(rows.get(kind, key)?.filter(|r| r.deadline > now))
}

fn deadline(now: u64, span: Duration) -> u64 {
    // A zero span still gives the row a moment of life: "now" is then inside it.
    now.saturating_add(duration_micros(span).max(1))
}

pub(crate) fn increment(
    rows: &mut impl Rows,
    key: &str,
    by: u64,
    window: Duration,
    now: SystemTime,
) -> Result<WindowCount, StoreError> {
    let now = micros(now);
    rows.sweep(ALL_KINDS, now, SWEEP_PER_WRITE)?;
    let row = match live(rows, Kind::Window, key, now)? {
        Some(mut row) => {
            row.number = row.number.saturating_add(by);
            row
        }
        None => Row {
            deadline: deadline(now, window),
            number: by,
            text: String::new(),
        },
    };
    let out = window_count(row.number, row.deadline);
    rows.put(Kind::Window, key, row)?;
    Ok(out)
}

pub(crate) fn get_window(
    rows: &impl ReadRows,
    key: &str,
    now: SystemTime,
) -> Result<Option<WindowCount>, StoreError> {
    Ok(live(rows, Kind::Window, key, micros(now))?.map(|r| window_count(r.number, r.deadline)))
}

pub(crate) fn check_gcra(
    rows: &mut impl Rows,
    key: &str,
    limit: &GcraLimit,
    take: GcraTake,
    now: SystemTime,
) -> Result<GcraDecision, StoreError> {
    let now_us = micros(now);
    rows.sweep(ALL_KINDS, now_us, SWEEP_PER_WRITE)?;
    let tat = live(rows, Kind::Gcra, key, now_us)?.map(|r| r.number);
    let (decision, new_tat) = gcra(tat, limit, take, now);
    if let Some(tat) = new_tat {
        let row = Row {
            deadline: tat.max(now_us.saturating_add(1)),
            number: tat,
            text: String::new(),
        };
        rows.put(Kind::Gcra, key, row)?;
    }
    Ok(decision)
}

pub(crate) fn insert_nonce(
    rows: &mut impl Rows,
    nonce: &str,
    window: Duration,
    now: SystemTime,
) -> Result<bool, StoreError> {
    let now = micros(now);
    rows.sweep(ALL_KINDS, now, SWEEP_PER_WRITE)?;
    if live(rows, Kind::Nonce, nonce, now)?.is_some() {
        return Ok(false);
    }
    let row = Row {
        deadline: deadline(now, window),
        number: 0,
        text: String::new(),
    };
    rows.put(Kind::Nonce, nonce, row)?;
    Ok(true)
}

pub(crate) fn put_owner(
    rows: &mut impl Rows,
    object: &str,
    owner: &Owner,
    retention: Duration,
    now: SystemTime,
) -> Result<OwnerRecord, StoreError> {
    let now = micros(now);
    rows.sweep(ALL_KINDS, now, SWEEP_PER_WRITE)?;
    if let Some(row) = live(rows, Kind::Owner, object, now)?
        && row.text != owner.as_str()
    {
        return owner_record(object, row);
    }
    let row = Row {
        deadline: deadline(now, retention),
        number: 0,
        text: owner.as_str().to_owned(),
    };
    rows.put(Kind::Owner, object, row.clone())?;
    owner_record(object, row)
}

pub(crate) fn get_owner(
    rows: &impl ReadRows,
    object: &str,
    now: SystemTime,
) -> Result<Option<OwnerRecord>, StoreError> {
    live(rows, Kind::Owner, object, micros(now))?
        .map(|row| owner_record(object, row))
        .transpose()
}

fn owner_record(object: &str, row: Row) -> Result<OwnerRecord, StoreError> {
    let owner = Owner::new(row.text).map_err(|_| corrupt_owner(object))?;
    Ok(OwnerRecord {
        owner,
        expires_at: from_micros(row.deadline),
    })
}

/// An ownership record of `object` whose owner cannot be read. The object's id comes from a
/// request (a verification session's id: personal data), so the error names it only by
/// [`withheld`].
pub(crate) fn corrupt_owner(object: &str) -> StoreError {
    StoreError::CorruptRow {
        what: "ownership record",
        key: withheld(object),
        reason: "the owner is not a valid name".to_owned(),
    }
}

/// `id` as a log may name it: `#` and a keyed hash of it under a key drawn at random for
/// this process and never kept. The same id reads the same while the process runs, so
/// repeated failures of one record can be told apart from failures of many, and nothing
/// leads back to the id.
pub(crate) fn withheld(id: &str) -> String {
    use std::hash::BuildHasher;
    static KEY: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    format!(
        "#{:016x}",
        KEY.get_or_init(std::hash::RandomState::new).hash_one(id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_ownership_record_is_reported_without_its_object_id() {
        let object = "didit:sess-0b7c41d2-private";
        let row = Row {
            deadline: u64::MAX,
            number: 0,
            text: "\u{1}".to_owned(),
        };
        let e = owner_record(object, row).unwrap_err();
        for shown in [e.to_string(), format!("{e:?}")] {
            assert!(!shown.contains("sess-0b7c41d2"), "{shown}");
            assert!(shown.contains(&withheld(object)), "{shown}");
        }
        assert_eq!(withheld(object), withheld(object));
        assert_ne!(withheld(object), withheld("didit:another"));
    }
}
