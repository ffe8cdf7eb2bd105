//! The embedded placement: one node, no etcd. Every room is served here.
//!
//! Epochs still exist (a node-wide counter), so the rooms and the operations API
//! behave the same as in a cluster: a room reopened after it closed gets a
//! higher epoch than before.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::cluster::*;

pub struct EmbeddedPlacement {
    node: NodeInfo,
    gate: Arc<FenceGate>,
    counters: ClusterCounters,
    draining: AtomicBool,
    /// Owned rooms with their epoch and last summary. Held only for map updates.
    rooms: Mutex<Rooms>,
}

#[derive(Default)]
struct Rooms {
    next_epoch: Epoch,
    owned: BTreeMap<RoomName, (Epoch, RoomSummary)>,
    load: Option<NodeLoad>,
}

impl EmbeddedPlacement {
    pub fn new(node: NodeInfo) -> Self {
        Self {
            node,
            gate: Arc::new(FenceGate::always_open()),
            counters: ClusterCounters::default(),
            draining: AtomicBool::new(false),
            rooms: Mutex::new(Rooms {
                next_epoch: 1,
                ..Rooms::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rooms> {
        // The lock guards plain map updates that cannot panic half-way.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl Placement for EmbeddedPlacement {
    fn node(&self) -> NodeInfo {
        let mut node = self.node.clone();
        node.state = self.status().state;
        node
    }

    fn status(&self) -> Status {
        let state = if self.draining.load(Ordering::SeqCst) {
            NodeState::Draining
        } else {
            NodeState::Serving
        };
        Status {
            state,
            store_reachable: true,
        }
    }

    fn gate(&self) -> Arc<FenceGate> {
        self.gate.clone()
    }

    fn counters(&self) -> &ClusterCounters {
        &self.counters
    }

    async fn admit(
        &self,
        room: &RoomName,
        _hints: &JoinHints,
    ) -> Result<Admission, PlacementError> {
        let mut rooms = self.lock();
        if let Some((epoch, _)) = rooms.owned.get(room) {
            return Ok(Admission::Here {
                epoch: *epoch,
                owner: true,
            });
        }
        if self.draining.load(Ordering::SeqCst) {
            return Err(PlacementError::NoNode);
        }
        let epoch = rooms.next_epoch;
        rooms.next_epoch += 1;
        rooms
            .owned
            .insert(room.clone(), (epoch, RoomSummary::default()));
        ClusterCounters::bump(&self.counters.rooms_acquired);
        Ok(Admission::Here { epoch, owner: true })
    }

    async fn release(&self, room: &RoomName, epoch: Epoch) {
        let mut rooms = self.lock();
        if rooms.owned.get(room).is_some_and(|(e, _)| *e == epoch) {
            rooms.owned.remove(room);
        }
    }

    async fn publish_room(&self, room: &RoomName, epoch: Epoch, summary: RoomSummary) {
        let mut rooms = self.lock();
        match rooms.owned.get_mut(room) {
            Some((e, current)) if *e == epoch => *current = summary,
            _ => ClusterCounters::bump(&self.counters.stale_epoch),
        }
    }

    async fn owner(&self, room: &RoomName) -> Result<Option<Owner>, PlacementError> {
        let rooms = self.lock();
        Ok(rooms.owned.get(room).map(|(epoch, _)| Owner {
            node: self.node.id.clone(),
            url: self.node.url.clone(),
            epoch: *epoch,
        }))
    }

    async fn nodes(&self) -> Result<Vec<NodeView>, PlacementError> {
        let load = self.lock().load.clone();
        Ok(vec![NodeView {
            info: self.node(),
            load,
        }])
    }

    async fn rooms(&self) -> Result<Vec<RoomView>, PlacementError> {
        let rooms = self.lock();
        Ok(rooms
            .owned
            .iter()
            .map(|(name, (epoch, summary))| RoomView {
                room: name.to_string(),
                owner: self.node.id.clone(),
                epoch: *epoch,
                participants: summary.participants,
                tracks: summary.tracks,
            })
            .collect())
    }

    fn report_load(&self, load: NodeLoad) {
        self.lock().load = Some(load);
    }

    async fn shard_peers(&self, _room: &RoomName) -> Result<Vec<NodeInfo>, PlacementError> {
        Ok(Vec::new())
    }

    async fn leave_shard(&self, _room: &RoomName) {}

    async fn take_over(&self, _room: &RoomName) -> Result<Option<Epoch>, PlacementError> {
        Ok(None)
    }

    fn member(&self, id: &str) -> Option<NodeInfo> {
        (id == self.node.id).then(|| self.node())
    }

    fn owned_rooms(&self) -> Vec<(RoomName, Epoch)> {
        let rooms = self.lock();
        rooms
            .owned
            .iter()
            .map(|(r, (e, _))| (r.clone(), *e))
            .collect()
    }

    async fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    async fn leave(&self) {
        self.gate.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement() -> EmbeddedPlacement {
        EmbeddedPlacement::new(NodeInfo {
            id: "solo".into(),
            region: "local".into(),
            url: "ws://127.0.0.1:7880".into(),
            state: NodeState::Serving,
            cascade: None,
        })
    }

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).expect("valid room name")
    }

    #[tokio::test]
    async fn a_reopened_room_gets_a_higher_epoch() {
        let p = placement();
        let hints = JoinHints::default();
        let Ok(Admission::Here { epoch: first, .. }) = p.admit(&room("a"), &hints).await else {
            panic!("embedded placement serves every room here");
        };
        assert_eq!(
            p.admit(&room("a"), &hints).await,
            Ok(Admission::Here {
                epoch: first,
                owner: true
            })
        );
        p.release(&room("a"), first).await;
        let Ok(Admission::Here { epoch: second, .. }) = p.admit(&room("a"), &hints).await else {
            panic!("reopened here");
        };
        assert!(second > first);
    }

    #[tokio::test]
    async fn writes_with_an_old_epoch_are_refused_and_counted() {
        let p = placement();
        let Ok(Admission::Here { epoch, .. }) = p.admit(&room("a"), &JoinHints::default()).await
        else {
            panic!("served here");
        };
        let summary = RoomSummary {
            participants: 3,
            tracks: 2,
        };
        p.publish_room(&room("a"), epoch - 1, summary.clone()).await;
        assert_eq!(p.counters().stale_epoch.load(Ordering::Relaxed), 1);
        p.publish_room(&room("a"), epoch, summary).await;
        let listed = p.rooms().await.expect("listing");
        assert_eq!(listed[0].participants, 3);
        // Releasing with a stale epoch leaves the room alone.
        p.release(&room("a"), epoch - 1).await;
        assert_eq!(p.owned_rooms(), vec![(room("a"), epoch)]);
    }

    #[tokio::test]
    async fn a_draining_node_takes_no_new_room() {
        let p = placement();
        p.drain().await;
        assert_eq!(
            p.admit(&room("b"), &JoinHints::default()).await,
            Err(PlacementError::NoNode)
        );
        assert_eq!(p.status().state, NodeState::Draining);
        assert!(!p.status().ready());
    }
}
