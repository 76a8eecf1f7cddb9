//! What Redis replies to the store's scripts and reads (`idgate_store::fuzzing`), in RESP:
//! what a compromised or impersonated Redis could send. The first byte picks the reader
//! (a GCRA check, a counting window, an ownership record, a queued message) and, for a
//! GCRA check, what it takes; the rest is the reply.
//!
//! Never panics. A GCRA decision read admits within what the check takes and the limit's
//! burst, or refuses taking nothing; an ownership record names a valid owner; a message
//! read has the id of its sequence number and a state its counts allow.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idgate_store::fuzzing::{gcra_reply, message_reply, owner_reply, window_reply};
use idgate_store::{GcraLimit, GcraTake, MessageState, ObjectId, Owner};
use libfuzzer_sys::fuzz_target;

const NOW_US: u64 = 1_800_000_000_000_000;

fn limit() -> &'static GcraLimit {
    static L: OnceLock<GcraLimit> = OnceLock::new();
    L.get_or_init(|| GcraLimit::per(10, Duration::from_secs(1), 5).expect("limit"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, resp)) = data.split_first() else {
        return;
    };
    let now = UNIX_EPOCH + Duration::from_micros(NOW_US);
    match selector % 4 {
        0 => {
            let take = if selector & 0x10 == 0 {
                GcraTake::exactly(u32::from(selector >> 5))
            } else {
                GcraTake::up_to(u32::from(selector >> 5))
            };
            if let Some(Ok(d)) = gcra_reply(resp, limit(), take, now) {
                if d.allowed {
                    assert!(
                        take.least() <= d.granted && d.granted <= take.most(),
                        "{d:?}"
                    );
                    assert!(d.remaining <= limit().burst(), "{d:?}");
                    assert!(d.retry_after.is_zero());
                    assert!(d.reset_after <= limit().emission_interval() * (limit().burst() + 1));
                } else {
                    assert_eq!((d.granted, d.remaining), (0, 0), "{d:?}");
                }
            }
        }
        1 => {
            let _ = window_reply(resp);
        }
        2 => {
            let object = ObjectId::new("session-1").expect("object id");
            if let Some(Ok(record)) = owner_reply(resp, &object) {
                let owner = record.owner.as_str();
                assert_eq!(Owner::new(owner).ok().as_ref(), Some(&record.owner));
                let _ = record.expires_at.duration_since(SystemTime::UNIX_EPOCH);
            }
        }
        _ => {
            if let Some(Ok((seq, info))) = message_reply(resp, NOW_US) {
                assert_eq!(info.id.as_str(), seq.to_string());
                if matches!(
                    info.state,
                    MessageState::Ready | MessageState::Waiting { .. }
                ) {
                    assert!(info.attempts < info.max_attempts, "{info:?}");
                }
            }
        }
    }
});
