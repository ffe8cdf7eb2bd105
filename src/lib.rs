//! relais: a clustered WebRTC selective forwarding unit.
//!
//! The crate is laid out along the path a join takes: `config` and `auth` at the
//! edge, `server` for HTTP and the signaling socket, `participant` and `room` for
//! the actors that own membership and peer connections, and `media` for the
//! I/O-free forwarding core that the actors drive, `metrics` for what a node exports to
//! Prometheus. `client` is a Rust client of the
//! documented protocol, used by the tests and the load generator.

pub mod admin;
pub mod auth;
pub mod cascade;
pub mod client;
pub mod cluster;
pub mod config;
pub mod ids;
pub mod load;
pub mod media;
pub mod metrics;
pub mod participant;
pub mod room;
pub mod server;
pub mod signal;
pub mod web;
