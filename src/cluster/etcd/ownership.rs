//! Ownership of rooms: the owner key taken by compare-and-swap, shard records,
//! admission, and writes guarded by the room's epoch.

use super::*;

impl EtcdPlacement {
    /// Records on `lease` that this node serves participants of `room`.
    pub(super) async fn register_shard(
        &self,
        room: &RoomName,
        lease: i64,
    ) -> Result<(), PlacementError> {
        let node = self.shared().node.clone();
        let key = self.keys.shard(room, &node.id);
        let options = PutOptions::new().with_lease(lease);
        let mut client = self.client.clone();
        self.call(client.put(key, encode(&node), Some(options)))
            .await?;
        self.shared().shards.insert(room.clone());
        Ok(())
    }

    /// Serves a participant here, as owner or as a shard of the owner's room.
    pub(super) async fn admit_here(
        &self,
        room: &RoomName,
        epoch: Epoch,
        owner: bool,
        lease: i64,
    ) -> Result<Admission, PlacementError> {
        if !self.shared().shards.contains(room) {
            self.register_shard(room, lease).await?;
        }
        Ok(Admission::Here { epoch, owner })
    }

    pub(super) fn lose(&self, room: &RoomName) {
        self.shared().owned.remove(room);
        ClusterCounters::bump(&self.counters.rooms_lost);
        let _ = self
            .events
            .send(PlacementEvent::RoomLost { room: room.clone() });
    }

    /// Creates the room's owner key on `lease` unless it exists.
    pub(super) async fn claim(&self, room: &RoomName, lease: i64) -> Result<Claim, PlacementError> {
        let node = self.node();
        let key = self.keys.owner(room);
        let record = Owner {
            node: node.id.clone(),
            url: node.url.clone(),
            epoch: 0,
        };
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                encode(&record),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let mut client = self.client.clone();
        let response = self.call(client.txn(txn)).await?;
        if response.succeeded() {
            let epoch = response.header().map(|h| h.revision()).unwrap_or_default();
            return Ok(Claim::Won(epoch));
        }
        let owner = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().and_then(owner_of),
            _ => None,
        });
        match owner {
            Some(owner) if owner.node == node.id => self.adopt(room, owner, lease).await,
            Some(owner) => Ok(Claim::Lost(owner)),
            // Deleted between the compare and the get: try again later.
            None => Err(PlacementError::Unavailable("the room changed hands".into())),
        }
    }

    /// Moves an owner key this node wrote under an older lease onto `lease`.
    ///
    /// The key still existing proves the old lease never expired, so nobody else
    /// can have owned the room since: the epoch stays what it was.
    pub(super) async fn adopt(
        &self,
        room: &RoomName,
        owner: Owner,
        lease: i64,
    ) -> Result<Claim, PlacementError> {
        let key = self.keys.owner(room);
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                owner.epoch,
            )])
            .and_then([TxnOp::put(
                key,
                encode(&owner),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let mut client = self.client.clone();
        let response = self.call(client.txn(txn)).await?;
        if response.succeeded() {
            Ok(Claim::Won(owner.epoch))
        } else {
            Err(PlacementError::Unavailable("the room changed hands".into()))
        }
    }

    pub(super) async fn fetch_owner(
        &self,
        room: &RoomName,
    ) -> Result<Option<Owner>, PlacementError> {
        let mut client = self.client.clone();
        let response = self.call(client.get(self.keys.owner(room), None)).await?;
        Ok(response.kvs().first().and_then(owner_of))
    }

    /// Admission when this node takes no new rooms: send the client to the owner
    /// or to another node.
    pub(super) async fn admit_elsewhere(
        &self,
        room: &RoomName,
        hints: &JoinHints,
    ) -> Result<Admission, PlacementError> {
        let own_id = self.node_id();
        if let Some(owner) = self.fetch_owner(room).await? {
            if owner.node != own_id {
                return Ok(redirect_to_owner(owner));
            }
        }
        let target = self
            .choose_node(hints.region.as_deref(), true)
            .ok_or(PlacementError::NoNode)?;
        Ok(Admission::Redirect {
            node: target.id,
            url: target.url,
            epoch: None,
        })
    }

    pub(super) async fn place(
        &self,
        room: &RoomName,
        hints: &JoinHints,
    ) -> Result<Admission, PlacementError> {
        if self.leaving.load(Ordering::SeqCst) {
            return Err(PlacementError::NoNode);
        }
        if !self.gate.is_open_now() {
            ClusterCounters::bump(&self.counters.fenced_joins);
            return Err(PlacementError::Fenced);
        }
        if self.draining.load(Ordering::SeqCst) {
            return self.admit_elsewhere(room, hints).await;
        }
        let (owned, lease, own_id) = {
            let shared = self.shared();
            (
                shared.owned.get(room).copied(),
                shared.lease,
                shared.node.id.clone(),
            )
        };
        if let Some(epoch) = owned {
            if let Some(newer) = hints.epoch.filter(|e| *e > epoch) {
                ClusterCounters::bump(&self.counters.stale_epoch);
                return Err(PlacementError::StaleEpoch {
                    got: epoch,
                    current: newer,
                });
            }
            let lease = lease.ok_or(PlacementError::Fenced)?;
            return self.admit_here(room, epoch, true, lease).await;
        }
        let lease = lease.ok_or(PlacementError::Fenced)?;
        // A participant stays on the node it reached when that node is in its
        // region (or it names none), or when another node sent it here.
        let stay = hints.redirected
            || hints
                .region
                .as_deref()
                .is_none_or(|r| r == self.shared().node.region);
        if let Some(owner) = self.fetch_owner(room).await? {
            if owner.node != own_id {
                if !stay {
                    return Ok(redirect_to_owner(owner));
                }
                if let Some(newer) = hints.epoch.filter(|e| *e > owner.epoch) {
                    ClusterCounters::bump(&self.counters.stale_epoch);
                    return Err(PlacementError::StaleEpoch {
                        got: owner.epoch,
                        current: newer,
                    });
                }
                return self.admit_here(room, owner.epoch, false, lease).await;
            }
        }
        // Nobody owns the room (or a stale record of ours is about to expire).
        if !stay {
            if let Some(target) = self.choose_node(hints.region.as_deref(), false) {
                if target.id != own_id {
                    return Ok(Admission::Redirect {
                        node: target.id,
                        url: target.url,
                        epoch: None,
                    });
                }
            }
        }
        match self.claim(room, lease).await? {
            Claim::Won(epoch) => {
                if !self.gate.is_open_now() {
                    return Err(PlacementError::Fenced);
                }
                self.shared().owned.insert(room.clone(), epoch);
                ClusterCounters::bump(&self.counters.rooms_acquired);
                info!(%room, epoch, "room owned here");
                self.admit_here(room, epoch, true, lease).await
            }
            Claim::Lost(owner) if owner.node == own_id => Err(PlacementError::Unavailable(
                "the room's previous record on this node has not expired yet".into(),
            )),
            Claim::Lost(owner) => self.admit_here(room, owner.epoch, false, lease).await,
        }
    }

    pub(super) async fn release_room(&self, room: &RoomName, epoch: Epoch) {
        {
            let mut shared = self.shared();
            if shared.owned.get(room) != Some(&epoch) {
                return;
            }
            shared.owned.remove(room);
        }
        let owner = self.keys.owner(room);
        let txn = Txn::new()
            .when([Compare::create_revision(
                owner.clone(),
                CompareOp::Equal,
                epoch,
            )])
            .and_then([
                TxnOp::delete(owner, None),
                TxnOp::delete(self.keys.summary(room), None),
            ]);
        let mut client = self.client.clone();
        match self.call(client.txn(txn)).await {
            Ok(r) if r.succeeded() => info!(%room, epoch, "room released"),
            Ok(_) => ClusterCounters::bump(&self.counters.stale_epoch),
            // The key is on our lease: it goes when the lease does.
            Err(e) => warn!(%room, error = %e, "cannot release room; it expires with the lease"),
        }
    }

    pub(super) async fn publish_summary(
        &self,
        room: &RoomName,
        epoch: Epoch,
        summary: RoomSummary,
    ) {
        let Some(lease) = self.shared().lease else {
            return;
        };
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.keys.owner(room),
                CompareOp::Equal,
                epoch,
            )])
            .and_then([TxnOp::put(
                self.keys.summary(room),
                encode(&summary),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let mut client = self.client.clone();
        match self.call(client.txn(txn)).await {
            Ok(r) if r.succeeded() => {}
            Ok(_) => {
                // Our epoch is no longer the room's: someone else owns it.
                ClusterCounters::bump(&self.counters.stale_epoch);
                if self.shared().owned.get(room) == Some(&epoch) {
                    warn!(%room, epoch, "room summary refused: epoch is stale");
                    self.lose(room);
                }
            }
            Err(_) => {}
        }
    }

    pub(super) async fn take_over_room(
        &self,
        room: &RoomName,
    ) -> Result<Option<Epoch>, PlacementError> {
        let lease = self.shared().lease;
        let Some(lease) = lease.filter(|_| self.gate.is_open_now()) else {
            return Err(PlacementError::Fenced);
        };
        // The directory tells without a request whether the room has an owner;
        // only when it cannot tell is etcd asked.
        let known = self.shared().directory.owner(room).map(|o| o.is_some());
        let owned = match known {
            Some(owned) => owned,
            None => self.fetch_owner(room).await?.is_some(),
        };
        if owned {
            return Ok(None);
        }
        match self.claim(room, lease).await? {
            Claim::Won(epoch) => {
                self.shared().owned.insert(room.clone(), epoch);
                ClusterCounters::bump(&self.counters.rooms_acquired);
                info!(%room, epoch, "took over the room from its dead owner");
                Ok(Some(epoch))
            }
            Claim::Lost(_) => Ok(None),
        }
    }
}

pub(super) enum Claim {
    Won(Epoch),
    Lost(Owner),
}

pub(super) fn owner_of(kv: &etcd_client::KeyValue) -> Option<Owner> {
    let mut owner: Owner = decode(kv.value())?;
    owner.epoch = kv.create_revision();
    Some(owner)
}

pub(super) fn redirect_to_owner(owner: Owner) -> Admission {
    Admission::Redirect {
        node: owner.node,
        url: owner.url,
        epoch: Some(owner.epoch),
    }
}
