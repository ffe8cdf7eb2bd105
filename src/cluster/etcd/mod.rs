//! Placement through etcd: membership on a lease, room ownership by
//! compare-and-swap, self-fencing, and load reports.
//!
//! Four background tasks keep the node's standing:
//! - the *session* grants the lease, registers the node, reclaims rooms still
//!   open here after a lost lease, and sends keep-alives; every acknowledged
//!   keep-alive moves the [`FenceGate`] deadline (see [`fence`](super::fence));
//! - the *membership watch* mirrors `{prefix}/nodes/` into a local view;
//! - the *room directory watch* mirrors every room's owner and shard records
//!   (see [`directory`]), which the rooms' periodic checks read;
//! - the *load reporter* writes this node's load and reads everyone else's.
//!
//! A room is owned by the node whose txn created `{prefix}/rooms/{room}/owner`
//! on its lease; the key's create revision is the room's epoch. Writes about a
//! room (its summary, its release) are txns guarded by that create revision, so
//! a node that lost a room can no longer write about it: the write fails, is
//! counted, and the room is closed here.
//!
//! Layout: `session` (lease, keep-alives, fencing deadline, reclaiming rooms),
//! `ownership` (owner and shard records, admission, epoch-guarded writes),
//! `members` (membership watch, load reports, node choice, listings),
//! `directory` (the mirror of rooms' owner and shard records); this file
//! holds the shared state and the [`Placement`] implementation over them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use rand::thread_rng;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::cluster::choose::{choose, Candidate};
use crate::cluster::fence::LeaseClock;
use crate::cluster::keys::Keys;
use crate::cluster::*;
use crate::config::ClusterConfig;
use crate::metrics::{EtcdRequest, Metrics};

mod directory;
mod members;
mod ownership;
mod session;

use directory::Directory;
use ownership::{owner_of, Claim};

/// Longest wait for one etcd request before the store counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1_500);
/// How often the node reports its load and reads the others'.
const LOAD_INTERVAL: Duration = Duration::from_secs(2);
/// A node whose load report has not changed for this long is not a candidate.
const LOAD_STALE_AFTER: Duration = Duration::from_secs(7);
/// Pause between attempts when etcd does not answer.
const RETRY_PAUSE: Duration = Duration::from_millis(300);

pub struct EtcdPlacement {
    keys: Keys,
    client: Client,
    ttl: Duration,
    gate: Arc<FenceGate>,
    counters: ClusterCounters,
    events: mpsc::UnboundedSender<PlacementEvent>,
    /// Times every etcd request.
    metrics: Arc<Metrics>,
    draining: AtomicBool,
    leaving: AtomicBool,
    /// Everything the tasks and requests share; held only for map updates, never
    /// across an await.
    shared: Mutex<Shared>,
}

struct Shared {
    node: NodeInfo,
    lease: Option<i64>,
    /// Rooms this node owns, with their epoch.
    owned: HashMap<RoomName, Epoch>,
    /// Rooms this node holds a shard of (owned or not).
    shards: std::collections::HashSet<RoomName>,
    members: BTreeMap<String, NodeInfo>,
    /// Every room's owner and shards, as the directory watch last saw them.
    directory: Directory,
    /// Load reports by node, with the revision last seen and when it changed.
    loads: BTreeMap<String, (NodeLoad, i64, Instant)>,
    own_load: NodeLoad,
    store_reachable: bool,
    registered: bool,
}

fn timed_out(_: tokio::time::error::Elapsed) -> PlacementError {
    PlacementError::Unavailable("etcd did not answer in time".to_owned())
}

fn store_error(e: etcd_client::Error) -> PlacementError {
    PlacementError::Unavailable(e.to_string())
}

fn decode<T: DeserializeOwned>(value: &[u8]) -> Option<T> {
    serde_json::from_slice(value).ok()
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

impl EtcdPlacement {
    /// Connects and starts the background tasks; the node becomes ready once its
    /// lease is granted and it is registered.
    pub async fn start(
        config: ClusterConfig,
        node: NodeInfo,
        events: mpsc::UnboundedSender<PlacementEvent>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, PlacementError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(1), REQUEST_TIMEOUT);
        let client = Client::connect(&config.etcd_endpoints, Some(options))
            .await
            .map_err(store_error)?;
        let placement = Arc::new(Self {
            keys: Keys::new(&config.prefix),
            client,
            ttl: config.lease_ttl,
            gate: Arc::new(FenceGate::new()),
            counters: ClusterCounters::default(),
            events,
            metrics,
            draining: AtomicBool::new(false),
            leaving: AtomicBool::new(false),
            shared: Mutex::new(Shared {
                node,
                lease: None,
                owned: HashMap::new(),
                shards: std::collections::HashSet::new(),
                members: BTreeMap::new(),
                directory: Directory::default(),
                loads: BTreeMap::new(),
                own_load: NodeLoad::default(),
                store_reachable: false,
                registered: false,
            }),
        });
        tokio::spawn(placement.clone().run_session());
        tokio::spawn(placement.clone().watch_members());
        tokio::spawn(placement.clone().watch_rooms());
        tokio::spawn(placement.clone().report_loads());
        Ok(placement)
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        // Updates under this lock are plain map and field writes that cannot
        // panic half-way, so a poisoned lock still holds consistent data.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_reachable(&self, reachable: bool) {
        self.shared().store_reachable = reachable;
    }

    fn node_id(&self) -> String {
        self.shared().node.id.clone()
    }

    /// Runs `fut` with the request timeout, recording whether etcd answered and how
    /// long it took.
    async fn call<T: EtcdRequest>(
        &self,
        fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, PlacementError> {
        let request = tokio::time::timeout(REQUEST_TIMEOUT, fut);
        let result = self
            .metrics
            .time_etcd(T::OPERATION, request)
            .await
            .map_err(timed_out)
            .and_then(|r| r.map_err(store_error));
        self.set_reachable(result.is_ok());
        result
    }
}

#[async_trait::async_trait]
impl Placement for EtcdPlacement {
    fn node(&self) -> NodeInfo {
        let mut node = self.shared().node.clone();
        node.state = self.status().state;
        node
    }

    fn status(&self) -> Status {
        let state = if self.draining.load(Ordering::SeqCst) {
            NodeState::Draining
        } else if !self.gate.is_open_now() {
            NodeState::Fenced
        } else {
            NodeState::Serving
        };
        let shared = self.shared();
        Status {
            state,
            store_reachable: shared.store_reachable && shared.registered,
        }
    }

    fn gate(&self) -> Arc<FenceGate> {
        self.gate.clone()
    }

    fn counters(&self) -> &ClusterCounters {
        &self.counters
    }

    async fn admit(&self, room: &RoomName, hints: &JoinHints) -> Result<Admission, PlacementError> {
        self.place(room, hints).await
    }

    async fn release(&self, room: &RoomName, epoch: Epoch) {
        self.release_room(room, epoch).await
    }

    async fn publish_room(&self, room: &RoomName, epoch: Epoch, summary: RoomSummary) {
        self.publish_summary(room, epoch, summary).await
    }

    async fn owner(&self, room: &RoomName) -> Result<Option<Owner>, PlacementError> {
        self.fetch_owner(room).await
    }

    async fn nodes(&self) -> Result<Vec<NodeView>, PlacementError> {
        self.list_nodes().await
    }

    async fn rooms(&self) -> Result<Vec<RoomView>, PlacementError> {
        self.list_rooms().await
    }

    fn report_load(&self, load: NodeLoad) {
        self.shared().own_load = load;
    }

    async fn shard_peers(&self, room: &RoomName) -> Result<Vec<NodeInfo>, PlacementError> {
        self.list_shard_peers(room).await
    }

    async fn leave_shard(&self, room: &RoomName) {
        if !self.shared().shards.remove(room) {
            return;
        }
        let key = self.keys.shard(room, &self.node_id());
        let mut client = self.client.clone();
        if let Err(e) = self.call(client.delete(key, None)).await {
            warn!(%room, error = %e, "cannot remove shard record; it expires with the lease");
        }
    }

    async fn take_over(&self, room: &RoomName) -> Result<Option<Epoch>, PlacementError> {
        self.take_over_room(room).await
    }

    fn member(&self, id: &str) -> Option<NodeInfo> {
        self.shared().members.get(id).cloned()
    }

    fn owned_rooms(&self) -> Vec<(RoomName, Epoch)> {
        let shared = self.shared();
        shared.owned.iter().map(|(r, e)| (r.clone(), *e)).collect()
    }

    async fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let lease = self.shared().lease;
        if let Some(lease) = lease {
            if let Err(e) = self.register(lease).await {
                warn!(error = %e, "cannot announce draining");
            }
        }
    }

    async fn leave(&self) {
        self.leaving.store(true, Ordering::SeqCst);
        self.gate.close();
        let lease = self.shared().lease.take();
        if let Some(lease) = lease {
            let mut client = self.client.clone();
            match self.call(client.lease_revoke(lease)).await {
                Ok(_) => info!(lease, "cluster lease revoked"),
                Err(e) => warn!(error = %e, "cannot revoke the cluster lease; it will expire"),
            }
        }
    }
}
