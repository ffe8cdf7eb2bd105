//! The room directory: a mirror of every room's owner and shard records, kept by
//! one watch on `{prefix}/rooms/`.
//!
//! Every shard of a room checks once a second that the room has an owner (to take
//! it over when the owner dies) and which other nodes hold shards of it. Asked of
//! etcd, that was two requests a second per room and node; the directory answers
//! from memory. While the watch is down (etcd unreachable, or history compacted)
//! the directory is not *synced* and callers ask etcd as before. Claiming a room
//! is still a transaction in etcd: the mirror only says when one is worth trying.

use super::*;

/// What the directory knows of one room.
#[derive(Debug, Default)]
pub(super) struct RoomRecords {
    pub owner: Option<Owner>,
    /// Nodes serving participants of the room, by id.
    pub shards: BTreeMap<String, NodeInfo>,
}

/// Every room's records, by room name.
#[derive(Debug, Default)]
pub(super) struct Directory {
    /// True from a complete listing on, while the watch that follows it runs.
    pub synced: bool,
    rooms: HashMap<String, RoomRecords>,
}

/// One change of a key under `{prefix}/rooms/`.
pub(super) enum Change<'a> {
    /// Written: the value and the key's create revision.
    Put(&'a [u8], i64),
    Delete,
}

impl Directory {
    /// Applies one key's change; keys other than owner and shard records (the
    /// summaries) are ignored, and so are values that do not decode.
    pub fn apply(&mut self, keys: &Keys, key: &str, change: Change) {
        let Some((room, rest)) = keys.room_key(key) else {
            return;
        };
        let records = self.rooms.entry(room.to_owned()).or_default();
        match (rest, change) {
            ("owner", Change::Put(value, revision)) => {
                if let Some(mut owner) = decode::<Owner>(value) {
                    owner.epoch = revision;
                    records.owner = Some(owner);
                }
            }
            ("owner", Change::Delete) => records.owner = None,
            (rest, change) => {
                // Summaries and malformed shard keys fall through to the clean-up below.
                let node = rest.strip_prefix("shards/").filter(|n| !n.is_empty());
                match (node, change) {
                    (Some(node), Change::Put(value, _)) => {
                        if let Some(info) = decode::<NodeInfo>(value) {
                            records.shards.insert(node.to_owned(), info);
                        }
                    }
                    (Some(node), Change::Delete) => {
                        records.shards.remove(node);
                    }
                    (None, _) => {}
                }
            }
        }
        if records.owner.is_none() && records.shards.is_empty() {
            self.rooms.remove(room);
        }
    }

    /// Starts over from a complete listing.
    pub fn reset(&mut self) {
        self.synced = false;
        self.rooms.clear();
    }

    /// The room's owner, or `None` when the directory cannot tell (not synced).
    pub fn owner(&self, room: &RoomName) -> Option<Option<&Owner>> {
        self.synced
            .then(|| self.rooms.get(room.as_str()).and_then(|r| r.owner.as_ref()))
    }

    /// The nodes other than `own_id` that hold a shard of the room, or `None` when
    /// the directory cannot tell.
    pub fn peers(&self, room: &RoomName, own_id: &str) -> Option<Vec<NodeInfo>> {
        let records = self.rooms.get(room.as_str());
        self.synced.then(|| {
            let shards = records.map(|r| r.shards.values()).into_iter().flatten();
            shards.filter(|n| n.id != own_id).cloned().collect()
        })
    }
}

impl EtcdPlacement {
    pub(super) async fn watch_rooms(self: Arc<Self>) {
        let dir = self.keys.rooms();
        let mut quiet = false;
        while !self.leaving.load(Ordering::SeqCst) {
            let result = self.follow_rooms(&dir, &mut quiet).await;
            self.shared().directory.synced = false;
            // One warning per outage; the retries in between stay quiet.
            if let Err(e) = result {
                if !quiet {
                    warn!(error = %e, "room directory watch interrupted; resuming");
                    quiet = true;
                }
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    async fn follow_rooms(&self, dir: &str, quiet: &mut bool) -> Result<(), PlacementError> {
        let mut client = self.client.clone();
        let listing = self
            .call(client.get(dir, Some(GetOptions::new().with_prefix())))
            .await?;
        *quiet = false;
        let revision = listing.header().map(|h| h.revision()).unwrap_or_default();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut watch = self.call(client.watch(dir, Some(options))).await?;
        {
            let mut shared = self.shared();
            let directory = &mut shared.directory;
            directory.reset();
            for kv in listing.kvs() {
                let Ok(key) = kv.key_str() else { continue };
                directory.apply(
                    &self.keys,
                    key,
                    Change::Put(kv.value(), kv.create_revision()),
                );
            }
            directory.synced = true;
        }
        while let Some(response) = watch.message().await.map_err(store_error)? {
            if response.canceled() {
                break;
            }
            let mut shared = self.shared();
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let Ok(key) = kv.key_str() else { continue };
                let change = match event.event_type() {
                    EventType::Put => Change::Put(kv.value(), kv.create_revision()),
                    EventType::Delete => Change::Delete,
                };
                shared.directory.apply(&self.keys, key, change);
            }
            if self.leaving.load(Ordering::SeqCst) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> Vec<u8> {
        let info = NodeInfo {
            id: id.to_owned(),
            region: "r".to_owned(),
            url: format!("ws://{id}"),
            state: NodeState::Serving,
            cascade: None,
        };
        encode(&info)
    }

    fn owner(id: &str) -> Vec<u8> {
        let record = Owner {
            node: id.to_owned(),
            url: format!("ws://{id}"),
            epoch: 0,
        };
        encode(&record)
    }

    #[test]
    fn owners_and_shards_are_mirrored_until_deleted() {
        let keys = Keys::new("/relais");
        let room = RoomName::parse("standup").unwrap();
        let mut directory = Directory::default();
        directory.apply(&keys, &keys.owner(&room), Change::Put(&owner("n1"), 42));
        directory.apply(
            &keys,
            &keys.shard(&room, "n1"),
            Change::Put(&node("n1"), 43),
        );
        directory.apply(
            &keys,
            &keys.shard(&room, "n2"),
            Change::Put(&node("n2"), 44),
        );
        directory.apply(&keys, &keys.summary(&room), Change::Put(b"{}", 45));
        assert_eq!(directory.owner(&room), None, "unknown until synced");
        assert_eq!(directory.peers(&room, "n1"), None);

        directory.synced = true;
        let found = directory.owner(&room).flatten().expect("an owner");
        assert_eq!((found.node.as_str(), found.epoch), ("n1", 42));
        let peers = directory.peers(&room, "n1").unwrap();
        assert_eq!(
            peers.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            ["n2"]
        );

        // The owner dies: its owner and shard keys go with its lease.
        directory.apply(&keys, &keys.owner(&room), Change::Delete);
        directory.apply(&keys, &keys.shard(&room, "n1"), Change::Delete);
        assert_eq!(directory.owner(&room), Some(None));
        assert_eq!(directory.peers(&room, "n1").unwrap().len(), 1);
        directory.apply(&keys, &keys.shard(&room, "n2"), Change::Delete);
        assert!(directory.rooms.is_empty(), "an empty room is forgotten");
        assert_eq!(directory.peers(&room, "n1"), Some(Vec::new()));
    }

    #[test]
    fn garbage_and_foreign_keys_change_nothing() {
        let keys = Keys::new("/relais");
        let room = RoomName::parse("standup").unwrap();
        let mut directory = Directory {
            synced: true,
            ..Directory::default()
        };
        directory.apply(&keys, &keys.owner(&room), Change::Put(b"not json", 7));
        directory.apply(&keys, &keys.shard(&room, ""), Change::Put(&node("n1"), 8));
        directory.apply(
            &keys,
            "/other/rooms/standup/owner",
            Change::Put(&owner("n1"), 9),
        );
        directory.apply(&keys, &keys.node("n1"), Change::Put(&node("n1"), 10));
        assert!(directory.rooms.is_empty());
        assert_eq!(directory.owner(&room), Some(None));

        directory.reset();
        assert!(!directory.synced);
    }
}
