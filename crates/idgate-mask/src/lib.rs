//! Response masking: which values of a JSON answer a caller may see, and in what form.
//!
//! A [`Profile`] is an ordered list of [`Rule`]s, each a [`MaskPath`] (`$..date_of_birth`,
//! `$.id_verifications[*].document_number`) and an [`Action`] (drop, redact, mask,
//! truncate to the year, pseudonymize, allow, block). For every value of a document the
//! first rule whose path names it decides what happens to it.
//!
//! The crate is pure: it works on a JSON text as it arrived ([`Profile::mask_text`], which
//! writes out only what changes) or on a parsed `serde_json::Value` ([`Profile::mask`]), and
//! knows nothing of HTTP, configuration files or where keys live. Pseudonyms come from a
//! [`Pseudonymizer`] that is asked once per document for every distinct value at once (at
//! most [`MAX_PSEUDONYMS`] of them), so a key held in an HSM is looked up once per answer
//! and makes its tags in one session. Documents are an upstream's answers, which are not
//! trusted: nothing here panics on any input.
//!
//! What is not JSON cannot be masked: [`media`] says which other types a profile lets
//! through ([`PassTypes`]), binary media by default and a text type only when named.

mod action;
mod engine;
pub mod media;
mod path;
mod text;

pub use action::{Action, REDACTED, mask_chars, pseudonym, truncate_date};
pub use engine::{
    Blocked, MAX_PSEUDONYMS, MaskError, Profile, Pseudonymizer, Pseudonyms, Report, Rule,
};
pub use media::{MediaRange, MediaRangeError, MediaType, PassTypes};
pub use path::{MaskPath, PathError, Segment, Selector, Step};
pub use text::{MaskedText, NotJson, TextMaskError};
