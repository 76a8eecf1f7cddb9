//! The byte codecs the whole workspace shares, so that each is written (and tested) once:
//! hexadecimal ([`hex`]), percent-encoding ([`percent`]) and JSON strings ([`json`]). No dependencies, no
//! allocation where the caller gives the buffer.

pub mod hex;
pub mod json;
pub mod percent;
