//! Signaling: the JSON protocol and the per-socket guards (size and rate limits).

pub mod protocol;
pub mod rate;
