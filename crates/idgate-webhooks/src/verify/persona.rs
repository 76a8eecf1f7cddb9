//! Persona's `Persona-Signature: t=<unix>,v1=<hex>`: v1 is the lowercase hex
//! HMAC-SHA256 of `{t}.{raw body}`. While a secret is rotated the header carries one group
//! per secret, separated by spaces (`t=…,v1=… t=…,v1=…`); any group that matches will do,
//! and its `t` must be within the tolerance.
//!
//! The header is untrusted and parsed strictly and boundedly: at most [`MAX_GROUPS`]
//! groups of at most [`MAX_V1`] signatures, one `t` each; keys other than `t` and `v1`
//! are skipped (a later scheme version may add some). One HMAC is computed per group and
//! secret, however many signatures the group holds.
//!
//! The event (docs.withpersona.com, webhooks: a JSON:API `event`): `data.id` is the event
//! id, `data.attributes.name` its type (`inquiry.completed`, …), and
//! `data.attributes.payload.data.id` the inquiry it concerns.

use http::HeaderMap;

use super::json::{self, Json};
use super::mac::{self, Digest};
use super::{Clock, PERSONA_SIGNATURE, Rejected, Verified, id_text, replay_key, unix_seconds};

/// Groups in one header: two during a rotation; more is refused.
pub(crate) const MAX_GROUPS: usize = 4;
/// `v1` signatures in one group.
pub(crate) const MAX_V1: usize = 4;

/// One `t=…,v1=…` group.
#[derive(Debug, PartialEq, Eq)]
struct Group<'h> {
    /// The timestamp as sent (it is signed as text).
    t: &'h str,
    unix: i64,
    v1: Vec<Vec<u8>>,
}

fn malformed<T>() -> Result<T, Rejected> {
    Err(Rejected::Malformed(PERSONA_SIGNATURE))
}

fn parse(header: &str) -> Result<Vec<Group<'_>>, Rejected> {
    let mut groups = Vec::new();
    for text in header.split(' ').filter(|g| !g.is_empty()) {
        if groups.len() == MAX_GROUPS {
            return malformed();
        }
        let mut t = None;
        let mut v1 = Vec::new();
        for pair in text.split(',') {
            let Some((key, value)) = pair.split_once('=') else {
                return malformed();
            };
            if key.is_empty() || value.is_empty() {
                return malformed();
            }
            match key {
                "t" if t.is_none() => {
                    let unix = unix_seconds(value).ok_or(Rejected::Malformed(PERSONA_SIGNATURE))?;
                    t = Some((value, unix));
                }
                "t" => return malformed(),
                "v1" if v1.len() < MAX_V1 => {
                    v1.push(mac::decode_hex(value, Digest::Sha256, PERSONA_SIGNATURE)?)
                }
                "v1" => return malformed(),
                _ => {}
            }
        }
        let Some((t, unix)) = t else {
            return malformed();
        };
        if v1.is_empty() {
            return malformed();
        }
        groups.push(Group { t, unix, v1 });
    }
    if groups.is_empty() {
        return malformed();
    }
    Ok(groups)
}

pub(super) fn verify(
    secrets: &[&[u8]],
    headers: &HeaderMap,
    body: &[u8],
    clock: Clock,
) -> Result<Verified, Rejected> {
    let groups = parse(mac::required(headers, PERSONA_SIGNATURE)?)?;
    let (group, index) = groups
        .iter()
        .find_map(|g| {
            let parts: [&[u8]; 3] = [g.t.as_bytes(), b".", body];
            mac::matching_secret_any(Digest::Sha256, secrets, &parts, &g.v1).map(|i| (g, i))
        })
        .ok_or(Rejected::BadSignature)?;
    let timestamp = clock.fresh(group.unix)?;
    let value = json::parse(body).ok();
    let at = |path: &[&str]| id_text(value.as_ref().and_then(|v: &Json| v.path(path)));
    let event_id = at(&["data", "id"]);
    Ok(Verified {
        replay_key: replay_key(event_id.as_deref(), &[group.t.as_bytes(), b".", body]),
        event_id,
        session_id: at(&["data", "attributes", "payload", "data", "id"]),
        event_type: at(&["data", "attributes", "name"]),
        timestamp: Some(timestamp),
        secret_index: index,
        body_signed: true,
        signed_part: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_one_or_more_groups() {
        let one = format!("t=1700000000,v1={SIG}");
        let groups = parse(&one).unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!((groups[0].t, groups[0].unix), ("1700000000", 1_700_000_000));
        assert_eq!(groups[0].v1.len(), 1);

        let two = format!("t=1,v1={SIG}  t=2,v0=ignored,v1={SIG},v1={SIG}");
        let groups = parse(&two).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[1].v1.len(), 2);
    }

    #[test]
    fn refuses_anything_else_within_bounds() {
        let group = format!("t=1,v1={SIG}");
        let too_many = [group.as_str(); MAX_GROUPS + 1].join(" ");
        let many_v1 = format!("t=1{}", format!(",v1={SIG}").repeat(MAX_V1 + 1));
        for bad in [
            String::new(),
            " ".to_owned(),
            format!("v1={SIG}"),
            "t=1".to_owned(),
            format!("t=1,t=2,v1={SIG}"),
            format!("t=-1,v1={SIG}"),
            format!("t=1.5,v1={SIG}"),
            format!("t=99999999999999999999,v1={SIG}"),
            format!("t=1,v1={}", SIG.to_uppercase()),
            format!("t=1,v1={}", &SIG[2..]),
            format!("t=1,v1={SIG},"),
            format!("t=1,=x,v1={SIG}"),
            format!("t=1,v2,v1={SIG}"),
            format!("t=1;v1={SIG}"),
            too_many,
            many_v1,
        ] {
            assert_eq!(
                parse(&bad),
                Err(Rejected::Malformed(PERSONA_SIGNATURE)),
                "{bad:?}"
            );
        }
    }
}
