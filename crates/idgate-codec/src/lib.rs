//! The byte codecs the whole workspace shares, so that each is written (and tested) once:
//! hexadecimal ([`hex`]) and percent-encoding ([`percent`]). No dependencies, no
//! allocation where the caller gives the buffer.

pub mod hex;
pub mod percent;
