//! The cluster as this node sees it: the membership watch, load reports, the
//! choice of a node for a new room, and the listings the operations API shows.

use super::*;

impl EtcdPlacement {
    /// Chooses the node for a room nobody owns yet.
    pub(super) fn choose_node(&self, region: Option<&str>, exclude_self: bool) -> Option<NodeInfo> {
        let shared = self.shared();
        let own_id = shared.node.id.clone();
        let candidates: Vec<Candidate> = shared
            .members
            .values()
            .filter(|n| !(exclude_self && n.id == own_id))
            .map(|n| {
                let load = shared.loads.get(&n.id);
                Candidate {
                    id: n.id.clone(),
                    region: n.region.clone(),
                    state: n.state,
                    load: load.map(|(l, _, _)| l.clone()),
                    load_seen_at: load.map(|(_, _, seen)| *seen),
                }
            })
            .collect();
        let chosen = choose(
            &candidates,
            region,
            Instant::now(),
            LOAD_STALE_AFTER,
            &mut thread_rng(),
        )?;
        shared.members.get(&chosen.id).cloned()
    }

    pub(super) async fn watch_members(self: Arc<Self>) {
        let dir = self.keys.nodes();
        let mut quiet = false;
        while !self.leaving.load(Ordering::SeqCst) {
            // One warning per outage; the retries in between stay quiet.
            match self.follow_members(&dir, &mut quiet).await {
                Err(e) if !quiet => {
                    warn!(error = %e, "membership watch interrupted; resuming");
                    quiet = true;
                }
                _ => {}
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    pub(super) async fn follow_members(
        &self,
        dir: &str,
        quiet: &mut bool,
    ) -> Result<(), PlacementError> {
        let mut client = self.client.clone();
        let listing = self
            .call(client.get(dir, Some(GetOptions::new().with_prefix())))
            .await?;
        *quiet = false;
        let revision = listing.header().map(|h| h.revision()).unwrap_or_default();
        let members = listing
            .kvs()
            .iter()
            .filter_map(|kv| decode::<NodeInfo>(kv.value()))
            .map(|n| (n.id.clone(), n))
            .collect();
        self.shared().members = members;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut watch = self.call(client.watch(dir, Some(options))).await?;
        while let Some(response) = watch.message().await.map_err(store_error)? {
            if response.canceled() {
                break;
            }
            let mut shared = self.shared();
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let Some(id) = kv.key_str().ok().and_then(|k| Keys::leaf(dir, k)) else {
                    continue;
                };
                match event.event_type() {
                    EventType::Put => {
                        if let Some(node) = decode::<NodeInfo>(kv.value()) {
                            shared.members.insert(id.to_owned(), node);
                        }
                    }
                    EventType::Delete => {
                        shared.members.remove(id);
                    }
                }
            }
            if self.leaving.load(Ordering::SeqCst) {
                break;
            }
        }
        Ok(())
    }

    pub(super) async fn report_loads(self: Arc<Self>) {
        let dir = self.keys.loads();
        while !self.leaving.load(Ordering::SeqCst) {
            let (lease, load, id, registered) = {
                let shared = self.shared();
                (
                    shared.lease,
                    shared.own_load.clone(),
                    shared.node.id.clone(),
                    shared.registered,
                )
            };
            if let (Some(lease), true) = (lease, registered) {
                let mut client = self.client.clone();
                let put = client.put(
                    self.keys.load(&id),
                    encode(&load),
                    Some(PutOptions::new().with_lease(lease)),
                );
                let _ = self.call(put).await;
            }
            let mut client = self.client.clone();
            let get = client.get(dir.clone(), Some(GetOptions::new().with_prefix()));
            if let Ok(listing) = self.call(get).await {
                let now = Instant::now();
                let mut shared = self.shared();
                let mut fresh = BTreeMap::new();
                for kv in listing.kvs() {
                    let Some(id) = kv.key_str().ok().and_then(|k| Keys::leaf(&dir, k)) else {
                        continue;
                    };
                    let Some(load) = decode::<NodeLoad>(kv.value()) else {
                        continue;
                    };
                    let seen = match shared.loads.get(id) {
                        Some((_, rev, seen)) if *rev == kv.mod_revision() => *seen,
                        _ => now,
                    };
                    fresh.insert(id.to_owned(), (load, kv.mod_revision(), seen));
                }
                shared.loads = fresh;
            }
            tokio::time::sleep(LOAD_INTERVAL).await;
        }
    }

    pub(super) async fn list_nodes(&self) -> Result<Vec<NodeView>, PlacementError> {
        let mut client = self.client.clone();
        let prefix = Some(GetOptions::new().with_prefix());
        let listing = self.call(client.get(self.keys.nodes(), prefix)).await?;
        let prefix = Some(GetOptions::new().with_prefix());
        let loads = self.call(client.get(self.keys.loads(), prefix)).await?;
        let loads_dir = self.keys.loads();
        let mut load_of: HashMap<&str, NodeLoad> = HashMap::new();
        for kv in loads.kvs() {
            if let (Some(id), Some(load)) = (
                kv.key_str().ok().and_then(|k| Keys::leaf(&loads_dir, k)),
                decode::<NodeLoad>(kv.value()),
            ) {
                load_of.insert(id, load);
            }
        }
        Ok(listing
            .kvs()
            .iter()
            .filter_map(|kv| decode::<NodeInfo>(kv.value()))
            .map(|info| NodeView {
                load: load_of.get(info.id.as_str()).cloned(),
                info,
            })
            .collect())
    }

    pub(super) async fn list_rooms(&self) -> Result<Vec<RoomView>, PlacementError> {
        let mut client = self.client.clone();
        let prefix = Some(GetOptions::new().with_prefix());
        let listing = self.call(client.get(self.keys.rooms(), prefix)).await?;
        let mut rooms: BTreeMap<String, (Option<Owner>, RoomSummary)> = BTreeMap::new();
        for kv in listing.kvs() {
            let Some((room, what)) = kv.key_str().ok().and_then(|k| self.keys.room_key(k)) else {
                continue;
            };
            let entry = rooms.entry(room.to_owned()).or_default();
            match what {
                "owner" => entry.0 = owner_of(kv),
                "summary" => entry.1 = decode(kv.value()).unwrap_or_default(),
                // Shard records: one per node serving participants of the room.
                _ => {}
            }
        }
        Ok(rooms
            .into_iter()
            .filter_map(|(room, (owner, summary))| {
                let owner = owner?;
                Some(RoomView {
                    room,
                    owner: owner.node,
                    epoch: owner.epoch,
                    participants: summary.participants,
                    tracks: summary.tracks,
                })
            })
            .collect())
    }

    pub(super) async fn list_shard_peers(
        &self,
        room: &RoomName,
    ) -> Result<Vec<NodeInfo>, PlacementError> {
        let own_id = self.node_id();
        if let Some(peers) = self.shared().directory.peers(room, &own_id) {
            return Ok(peers);
        }
        let mut client = self.client.clone();
        let prefix = Some(GetOptions::new().with_prefix());
        let listing = self
            .call(client.get(self.keys.shards(room), prefix))
            .await?;
        Ok(listing
            .kvs()
            .iter()
            .filter_map(|kv| decode::<NodeInfo>(kv.value()))
            .filter(|n| n.id != own_id)
            .collect())
    }
}
