//! Placement: which node serves a room, and whether this node may act on it.
//!
//! The rest of relais talks to a [`Placement`], chosen once at start-up:
//! - [`embedded::EmbeddedPlacement`]: one node, no etcd; every room is here.
//! - [`etcd::EtcdPlacement`]: nodes register under an etcd lease; the owner of a
//!   room is whoever created its owner key first, and that key's create revision
//!   is the room's *epoch*.
//!
//! Invariants, whichever implementation runs:
//! - A room actor exists on a node only while that node owns the room at the
//!   room's epoch, or while it is fenced and waiting to learn whether it still
//!   does. Rooms check the [`fence::FenceGate`] before admitting anyone.
//! - Anything that acts on a room across nodes carries the epoch; an older epoch
//!   is refused and counted ([`ClusterCounters::stale_epoch`]).
//! - Releasing a room is done by the registry only, after the room actor is gone,
//!   so a room is never released under the feet of a participant being admitted.

pub mod choose;
pub mod embedded;
pub mod etcd;
pub mod fence;
pub mod http;
mod keys;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::ids::RoomName;

pub use fence::FenceGate;

/// A room's ownership generation: the etcd revision that created its owner key.
pub type Epoch = i64;

/// What a node says about itself in the membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Takes new participants and rooms.
    Serving,
    /// Shutting down: takes nobody new; its rooms move elsewhere.
    Draining,
    /// Lost its lease (or cannot renew it): acts as owner of nothing.
    Fenced,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Draining => "draining",
            Self::Fenced => "fenced",
        }
    }
}

/// A node's membership record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub region: String,
    /// Base URL of its signaling socket, e.g. `ws://10.0.0.5:7880`.
    pub url: String,
    pub state: NodeState,
    /// Address of its cascade port (QUIC), when it cascades.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cascade: Option<String>,
}

impl NodeInfo {
    /// The HTTP base URL that serves the operations API.
    pub fn http_url(&self) -> String {
        http_url_of(&self.url)
    }
}

/// Turns a signaling base URL into the HTTP base URL of the same listener.
pub fn http_url_of(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if let Some(rest) = url.strip_prefix("ws://") {
        format!("http://{rest}")
    } else {
        url.to_owned()
    }
}

/// What a node reports about its load, every couple of seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeLoad {
    pub rooms: u64,
    pub participants: u64,
    pub tracks: u64,
    /// Share of one CPU the process used over the last report interval.
    pub cpu_ratio: f64,
}

/// A node as the operations API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub info: NodeInfo,
    pub load: Option<NodeLoad>,
}

/// Who owns a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub node: String,
    pub url: String,
    pub epoch: Epoch,
}

/// What the owner publishes about a room, for listings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSummary {
    pub participants: u64,
    pub tracks: u64,
}

/// A room as the operations API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RoomView {
    pub room: String,
    pub owner: String,
    pub epoch: Epoch,
    pub participants: u64,
    pub tracks: u64,
}

/// The answer to "where is this participant served?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Here, at the room's `epoch`; `owner` when this node owns the room, else
    /// this node holds a shard of a room owned elsewhere.
    Here { epoch: Epoch, owner: bool },
    /// On another node; the client reconnects to `url`.
    Redirect {
        node: String,
        url: String,
        /// The owner's epoch, when the target already owns the room.
        epoch: Option<Epoch>,
    },
}

/// Where the client came from, as far as placement cares.
#[derive(Debug, Clone, Default)]
pub struct JoinHints {
    /// The participant's region, from the token or the request.
    pub region: Option<String>,
    /// Another node already chose this one: take the room rather than choose again.
    pub redirected: bool,
    /// The owner epoch the redirecting node saw.
    pub epoch: Option<Epoch>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlacementError {
    #[error("the cluster store is unreachable: {0}")]
    Unavailable(String),
    #[error("this node is fenced: it cannot renew its cluster lease")]
    Fenced,
    #[error("no serving node can take the room")]
    NoNode,
    #[error("epoch {got} is older than the room's epoch {current}")]
    StaleEpoch { got: Epoch, current: Epoch },
}

impl PlacementError {
    /// The snake_case code clients and operators see.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "cluster_unavailable",
            Self::Fenced => "node_fenced",
            Self::NoNode => "no_node_available",
            Self::StaleEpoch { .. } => "stale_epoch",
        }
    }
}

/// What the placement tells the room registry, which owns the room actors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementEvent {
    /// Another node owns the room now: close it here and move its participants.
    RoomLost { room: RoomName },
    /// This node owns the room again, under a new epoch (after a lost lease).
    RoomEpoch { room: RoomName, epoch: Epoch },
}

/// This node's standing, for `/readyz` and the operations API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Status {
    pub state: NodeState,
    /// The last request to the cluster store succeeded.
    pub store_reachable: bool,
}

impl Status {
    pub fn ready(&self) -> bool {
        self.state == NodeState::Serving && self.store_reachable
    }
}

/// Counters of refusals and changes, read by the operations API and metrics.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    /// Messages or requests refused because they carried an older epoch.
    pub stale_epoch: AtomicU64,
    /// Joins refused because the node was fenced.
    pub fenced_joins: AtomicU64,
    /// Rooms this node took (created or reclaimed an owner key).
    pub rooms_acquired: AtomicU64,
    /// Rooms this node gave up because another node owns them now.
    pub rooms_lost: AtomicU64,
    /// Keep-alives that failed or went unanswered.
    pub keepalive_failures: AtomicU64,
}

impl ClusterCounters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The placement seam. Implementations are cheap to share (`Arc`).
#[async_trait::async_trait]
pub trait Placement: Send + Sync {
    /// This node's membership record.
    fn node(&self) -> NodeInfo;
    fn status(&self) -> Status;
    /// The fencing gate rooms check before admitting anyone.
    fn gate(&self) -> Arc<FenceGate>;
    fn counters(&self) -> &ClusterCounters;
    /// Decides where a participant of `room` is served.
    async fn admit(&self, room: &RoomName, hints: &JoinHints) -> Result<Admission, PlacementError>;
    /// Gives up ownership of a room that closed here (only if still at `epoch`).
    async fn release(&self, room: &RoomName, epoch: Epoch);
    /// Publishes the room's summary, guarded by its epoch.
    async fn publish_room(&self, room: &RoomName, epoch: Epoch, summary: RoomSummary);
    async fn owner(&self, room: &RoomName) -> Result<Option<Owner>, PlacementError>;
    async fn nodes(&self) -> Result<Vec<NodeView>, PlacementError>;
    async fn rooms(&self) -> Result<Vec<RoomView>, PlacementError>;
    /// Records this node's load; the implementation publishes it.
    fn report_load(&self, load: NodeLoad);
    /// The other nodes holding a shard of `room`, with their records.
    async fn shard_peers(&self, room: &RoomName) -> Result<Vec<NodeInfo>, PlacementError>;
    /// This node holds no shard of `room` any more.
    async fn leave_shard(&self, room: &RoomName);
    /// Takes the room if nobody owns it (its owner died); the new epoch if taken.
    async fn take_over(&self, room: &RoomName) -> Result<Option<Epoch>, PlacementError>;
    /// A node's membership record, from the local view.
    fn member(&self, id: &str) -> Option<NodeInfo>;
    /// The rooms this node owns, with their epochs.
    fn owned_rooms(&self) -> Vec<(RoomName, Epoch)>;
    /// Marks the node draining: it takes nobody new.
    async fn drain(&self);
    /// Stops acting as owner and leaves the cluster at once (revokes the lease).
    async fn leave(&self);
}

/// Starts the placement the configuration asks for.
pub async fn start(
    config: &crate::config::Config,
    url: String,
    cascade: Option<std::net::SocketAddr>,
    events: mpsc::UnboundedSender<PlacementEvent>,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<Arc<dyn Placement>, PlacementError> {
    let node = NodeInfo {
        id: config.node.id.clone(),
        region: config.node.region.clone(),
        url,
        state: NodeState::Serving,
        cascade: cascade.map(|a| a.to_string()),
    };
    if config.cluster.etcd_endpoints.is_empty() {
        return Ok(Arc::new(embedded::EmbeddedPlacement::new(node)));
    }
    let placement =
        etcd::EtcdPlacement::start(config.cluster.clone(), node, events, metrics).await?;
    Ok(placement)
}
