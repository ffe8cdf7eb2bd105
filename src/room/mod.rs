//! Rooms: the registry of a node's rooms and the actor that owns each one.

pub mod messages;
pub mod registry;
#[allow(clippy::module_inception)]
pub mod room;
pub mod speakers;
