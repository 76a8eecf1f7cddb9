//! A sealed outbox message as read back from the state store (`idgate_webhooks::outbox`):
//! what a copied or altered redb file or Redis dump could hold. The bytes go to the clear
//! header's reader and to `OutboxKeys::open`, under a fixed key.
//!
//! Never panics; a message that opens (one sealed under the key, as the seeds are) has the
//! header the reader gives, names the queue it was opened for, and stops opening when one of
//! its bytes changes; the input sealed as a body (under a header whose time is taken from
//! the input, any `u64` the clear header can hold) opens to itself and that header, and
//! not once altered.
//!
//! What reads the clear header next, the rows of `idgate webhooks list`, is in the `idgate`
//! binary, out of this crate's reach; its own tests hold an absurd time.
#![no_main]

use idgate_webhooks::outbox::{read_header, Header, OpenError, OutboxKeys};
use libfuzzer_sys::fuzz_target;

const QUEUE: &str = "webhook.didit.kyc";

fuzz_target!(|data: &[u8]| {
    let Ok(keys) = OutboxKeys::from_keys(&[[7u8; 32], [9u8; 32]]) else {
        return;
    };
    let header = read_header(data);
    match keys.open(QUEUE, data) {
        Ok((h, _body)) => {
            // Only a message sealed under the key opens (the seeds hold such ones): then its
            // header is the clear one, for this queue, and no byte of it can change.
            assert_eq!(Ok(&h), header.as_ref(), "opened under another header");
            assert_eq!(h.queue, QUEUE);
            for at in [0, 5, 6, data.len() / 2, data.len() - 1] {
                let mut altered = data.to_vec();
                altered[at] ^= 0x20;
                assert!(
                    keys.open(QUEUE, &altered).is_err(),
                    "byte {at} changed unnoticed"
                );
            }
        }
        Err(OpenError::WrongQueue { found, .. }) => {
            assert_eq!(header.map(|h| h.queue), Ok(found));
        }
        Err(_) => {}
    }
    // The input as a body: sealed, it opens to itself; altered, it does not.
    let received_at = data
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes);
    let sealed = keys
        .seal(
            Header {
                webhook: "didit".into(),
                subscriber: "kyc".into(),
                queue: QUEUE.into(),
                key: String::new(),
                event: "evt_0".into(),
                event_type: None,
                received_at,
            },
            data,
        )
        .unwrap();
    let (opened, body) = keys.open(QUEUE, &sealed).unwrap();
    assert_eq!(body, data);
    assert_eq!(opened.received_at, received_at);
    assert_eq!(read_header(&sealed).map(|h| h.received_at), Ok(received_at));
    let mut altered = sealed.clone();
    let at = data.first().map_or(0, |b| usize::from(*b)) % altered.len();
    altered[at] ^= 1;
    assert!(
        keys.open(QUEUE, &altered).is_err(),
        "an altered byte at {at} went unnoticed"
    );
});
