//! Placement through etcd: membership on a lease, room ownership by
//! compare-and-swap, self-fencing, and load reports.
//!
//! Three background tasks keep the node's standing:
//! - the *session* grants the lease, registers the node, reclaims rooms still
//!   open here after a lost lease, and sends keep-alives; every acknowledged
//!   keep-alive moves the [`FenceGate`] deadline (see [`fence`](super::fence));
//! - the *membership watch* mirrors `{prefix}/nodes/` into a local view;
//! - the *load reporter* writes this node's load and reads everyone else's.
//!
//! A room is owned by the node whose txn created `{prefix}/rooms/{room}/owner`
//! on its lease; the key's create revision is the room's epoch. Writes about a
//! room (its summary, its release) are txns guarded by that create revision, so
//! a node that lost a room can no longer write about it: the write fails, is
//! counted, and the room is closed here.

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
                loads: BTreeMap::new(),
                own_load: NodeLoad::default(),
                store_reachable: false,
                registered: false,
            }),
        });
        tokio::spawn(placement.clone().run_session());
        tokio::spawn(placement.clone().watch_members());
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

    // ---- the session: lease, registration, keep-alives -------------------------

    async fn run_session(self: Arc<Self>) {
        let mut clock = LeaseClock::new(self.ttl);
        let mut quiet = false;
        while !self.leaving.load(Ordering::SeqCst) {
            let sent = Instant::now();
            let mut client = self.client.clone();
            let ttl = self.ttl.as_secs() as i64;
            let lease = match self.call(client.lease_grant(ttl, None)).await {
                Ok(granted) => granted.id(),
                Err(e) => {
                    // One warning per outage; the retries in between stay quiet.
                    if !quiet {
                        warn!(error = %e, "cannot obtain a cluster lease; retrying");
                        quiet = true;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            };
            quiet = false;
            clock.granted(sent);
            self.shared().lease = Some(lease);
            match self.register(lease).await {
                Ok(()) => {
                    // Rooms owned elsewhere by now must be given up before the
                    // gate opens, or this node would act on them for a moment.
                    self.reclaim_rooms(lease).await;
                    self.gate.open_until(clock.deadline());
                    info!(lease, "registered in the cluster");
                }
                Err(e) => warn!(error = %e, "cannot register in the cluster; retrying"),
            }
            self.keep_alive(lease, &mut clock).await;
            self.shared().registered = false;
        }
    }

    /// Writes the membership record on `lease`.
    async fn register(&self, lease: i64) -> Result<(), PlacementError> {
        // Written only while the node holds its lease, so never "fenced".
        let mut node = self.shared().node.clone();
        if self.draining.load(Ordering::SeqCst) {
            node.state = NodeState::Draining;
        }
        let key = self.keys.node(&node.id);
        let options = PutOptions::new().with_lease(lease);
        let mut client = self.client.clone();
        self.call(client.put(key, encode(&node), Some(options)))
            .await?;
        self.shared().registered = true;
        Ok(())
    }

    /// Sends keep-alives on `lease` until it is lost or the node leaves.
    async fn keep_alive(&self, lease: i64, clock: &mut LeaseClock) {
        let mut stream = None;
        let mut fenced_logged = false;
        loop {
            tokio::time::sleep(clock.keepalive_interval()).await;
            if self.leaving.load(Ordering::SeqCst) {
                return;
            }
            if stream.is_none() {
                let mut client = self.client.clone();
                stream = self.call(client.lease_keep_alive(lease)).await.ok();
            }
            let sent = Instant::now();
            let answer = match stream.as_mut() {
                Some((keeper, responses)) => {
                    let exchange = async {
                        keeper.keep_alive().await?;
                        responses.message().await
                    };
                    self.call(exchange).await
                }
                None => Err(PlacementError::Unavailable("no keep-alive stream".into())),
            };
            match answer {
                Ok(Some(response)) => {
                    if !clock.acknowledged(sent, response.ttl()) {
                        warn!(lease, "the cluster lease expired; registering again");
                        self.gate.open_until(None);
                        return;
                    }
                    self.gate.open_until(clock.deadline());
                    if fenced_logged {
                        info!(
                            lease,
                            "the cluster lease was renewed in time; no longer fenced"
                        );
                        fenced_logged = false;
                        let _ = self.register(lease).await;
                    }
                }
                Ok(None) | Err(_) => {
                    ClusterCounters::bump(&self.counters.keepalive_failures);
                    self.set_reachable(false);
                    stream = None;
                }
            }
            let now = Instant::now();
            if !clock.is_valid(now) && !fenced_logged {
                warn!(lease, "cannot renew the cluster lease in time: fenced");
                fenced_logged = true;
            }
            // Past the TTL itself the lease is surely gone: start over.
            if clock.deadline().is_none_or(|d| now > d + self.ttl) {
                self.gate.open_until(None);
                return;
            }
        }
    }

    /// After a new lease, takes back the rooms still open here, or gives them up
    /// to whoever owns them now.
    async fn reclaim_rooms(&self, lease: i64) {
        let shards: Vec<RoomName> = self.shared().shards.iter().cloned().collect();
        for room in &shards {
            if let Err(e) = self.register_shard(room, lease).await {
                warn!(%room, error = %e, "cannot register shard again");
            }
        }
        let rooms: Vec<(RoomName, Epoch)> = self
            .shared()
            .owned
            .iter()
            .map(|(r, e)| (r.clone(), *e))
            .collect();
        for (room, old) in rooms {
            match self.claim(&room, lease).await {
                Ok(Claim::Won(epoch)) if epoch == old => {}
                Ok(Claim::Won(epoch)) => {
                    info!(%room, old, epoch, "room reclaimed under a new epoch");
                    self.shared().owned.insert(room.clone(), epoch);
                    let _ = self.events.send(PlacementEvent::RoomEpoch { room, epoch });
                }
                Ok(Claim::Lost(owner)) => {
                    warn!(%room, owner = %owner.node, epoch = owner.epoch,
                        "room is owned elsewhere now; closing it here");
                    self.lose(&room);
                }
                Err(e) => warn!(%room, error = %e, "cannot reclaim room; will retry"),
            }
        }
    }

    /// Records on `lease` that this node serves participants of `room`.
    async fn register_shard(&self, room: &RoomName, lease: i64) -> Result<(), PlacementError> {
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
    async fn admit_here(
        &self,
        room: &RoomName,
        epoch: Epoch,
        owner: bool,
        lease: i64,
    ) -> Result<Admission, PlacementError> {
        if self.cascades() && !self.shared().shards.contains(room) {
            self.register_shard(room, lease).await?;
        }
        Ok(Admission::Here { epoch, owner })
    }

    fn cascades(&self) -> bool {
        self.shared().node.cascade.is_some()
    }

    fn lose(&self, room: &RoomName) {
        self.shared().owned.remove(room);
        ClusterCounters::bump(&self.counters.rooms_lost);
        let _ = self
            .events
            .send(PlacementEvent::RoomLost { room: room.clone() });
    }

    // ---- ownership ---------------------------------------------------------------

    /// Creates the room's owner key on `lease` unless it exists.
    async fn claim(&self, room: &RoomName, lease: i64) -> Result<Claim, PlacementError> {
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
    async fn adopt(
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

    async fn fetch_owner(&self, room: &RoomName) -> Result<Option<Owner>, PlacementError> {
        let mut client = self.client.clone();
        let response = self.call(client.get(self.keys.owner(room), None)).await?;
        Ok(response.kvs().first().and_then(owner_of))
    }

    /// Chooses the node for a room nobody owns yet.
    fn choose_node(&self, region: Option<&str>, exclude_self: bool) -> Option<NodeInfo> {
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

    /// Admission when this node takes no new rooms: send the client to the owner
    /// or to another node.
    async fn admit_elsewhere(
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

    // ---- membership and load -------------------------------------------------------

    async fn watch_members(self: Arc<Self>) {
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

    async fn follow_members(&self, dir: &str, quiet: &mut bool) -> Result<(), PlacementError> {
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

    async fn report_loads(self: Arc<Self>) {
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
}

enum Claim {
    Won(Epoch),
    Lost(Owner),
}

fn owner_of(kv: &etcd_client::KeyValue) -> Option<Owner> {
    let mut owner: Owner = decode(kv.value())?;
    owner.epoch = kv.create_revision();
    Some(owner)
}

fn redirect_to_owner(owner: Owner) -> Admission {
    Admission::Redirect {
        node: owner.node,
        url: owner.url,
        epoch: Some(owner.epoch),
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
                if !(self.cascades() && stay) {
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
        let choose_again = if self.cascades() {
            !stay
        } else {
            !hints.redirected
        };
        if choose_again {
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
            Claim::Lost(owner) if self.cascades() => {
                self.admit_here(room, owner.epoch, false, lease).await
            }
            Claim::Lost(owner) => Ok(redirect_to_owner(owner)),
        }
    }

    async fn release(&self, room: &RoomName, epoch: Epoch) {
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

    async fn publish_room(&self, room: &RoomName, epoch: Epoch, summary: RoomSummary) {
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

    async fn owner(&self, room: &RoomName) -> Result<Option<Owner>, PlacementError> {
        self.fetch_owner(room).await
    }

    async fn nodes(&self) -> Result<Vec<NodeView>, PlacementError> {
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

    async fn rooms(&self) -> Result<Vec<RoomView>, PlacementError> {
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

    fn report_load(&self, load: NodeLoad) {
        self.shared().own_load = load;
    }

    async fn shard_peers(&self, room: &RoomName) -> Result<Vec<NodeInfo>, PlacementError> {
        let own_id = self.node_id();
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
        let lease = self.shared().lease;
        let Some(lease) = lease.filter(|_| self.gate.is_open_now()) else {
            return Err(PlacementError::Fenced);
        };
        if self.fetch_owner(room).await?.is_some() {
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
