//! The etcd key layout, in one place.
//!
//! ```text
//! {prefix}/nodes/{node}          NodeInfo, on the node's lease (membership)
//! {prefix}/load/{node}           NodeLoad, on the node's lease (rewritten often)
//! {prefix}/rooms/{room}/owner    Owner, on the owner's lease; create revision = epoch
//! {prefix}/rooms/{room}/summary  RoomSummary, on the owner's lease, epoch-guarded
//! ```
//!
//! Load lives apart from membership so that the frequent load writes never wake
//! the membership watchers. Room names are validated to a safe character set, so
//! they need no escaping inside a key.

use crate::ids::RoomName;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    pub fn node(&self, id: &str) -> String {
        format!("{}{id}", self.nodes())
    }

    pub fn loads(&self) -> String {
        format!("{}/load/", self.prefix)
    }

    pub fn load(&self, id: &str) -> String {
        format!("{}{id}", self.loads())
    }

    pub fn rooms(&self) -> String {
        format!("{}/rooms/", self.prefix)
    }

    pub fn owner(&self, room: &RoomName) -> String {
        format!("{}{}/owner", self.rooms(), room.as_str())
    }

    pub fn summary(&self, room: &RoomName) -> String {
        format!("{}{}/summary", self.rooms(), room.as_str())
    }

    /// The directory of a room's shards: one key per node serving participants.
    pub fn shards(&self, room: &RoomName) -> String {
        format!("{}{}/shards/", self.rooms(), room.as_str())
    }

    pub fn shard(&self, room: &RoomName, node: &str) -> String {
        format!("{}{node}", self.shards(room))
    }

    /// The last path segment of a key under `dir`, e.g. a node id.
    pub fn leaf<'a>(dir: &str, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(dir).filter(|rest| !rest.contains('/'))
    }

    /// Splits `{rooms}/{room}/{what}` into the room name and the rest.
    pub fn room_key<'a>(&self, key: &'a str) -> Option<(&'a str, &'a str)> {
        let rooms = self.rooms();
        let rest = key.strip_prefix(rooms.as_str())?;
        rest.split_once('/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_nest_under_the_prefix() {
        let keys = Keys::new("/relais/");
        let room = RoomName::parse("standup").expect("valid name");
        assert_eq!(keys.node("n1"), "/relais/nodes/n1");
        assert_eq!(keys.owner(&room), "/relais/rooms/standup/owner");
        assert_eq!(
            keys.room_key("/relais/rooms/standup/summary"),
            Some(("standup", "summary"))
        );
        assert_eq!(
            keys.room_key("/relais/rooms/standup/shards/n2"),
            Some(("standup", "shards/n2"))
        );
        assert_eq!(keys.shard(&room, "n2"), "/relais/rooms/standup/shards/n2");
        assert_eq!(Keys::leaf(&keys.nodes(), "/relais/nodes/n1"), Some("n1"));
        assert_eq!(Keys::leaf(&keys.nodes(), "/relais/nodes/a/b"), None);
    }
}
