//! The room actor: membership and published tracks of one meeting on this node.
//!
//! The room is the single owner of who is in the meeting and which tracks exist.
//! It never touches media: it hands out [`UpTrackHandle`]s so that subscribers
//! attach their down-tracks to the publisher's forwarder directly. Every change is
//! broadcast to the participants as a [`RoomEvent`]. A room with nobody in it
//! closes after the configured grace period, unless someone joins in time.
//!
//! In a cluster the actor is this node's *shard* of the room: `members` and
//! `tracks` are the participants and tracks of this node; what other shards hold
//! arrives over the cascade and lives in `peers` (see the `cascade` submodule).

mod cascade;
mod forwarding;
mod speaking;

pub(crate) use forwarding::is_camera;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use tracing::{debug, info};

use crate::cascade::Cascade;
use crate::cluster::{Epoch, FenceGate, Placement, RoomSummary};
use crate::config::RoomConfig;
use crate::ids::{ParticipantId, RoomName, TrackId};
use crate::media::forwarder::DownTrackKey;
use crate::media::last_n::LastN;
use crate::media::uptrack::{UpTrackCommand, UpTrackHandle};
use crate::media::voices::{SharedVoices, Voices};
use crate::room::messages::*;
use crate::room::registry::RoomRegistry;
use crate::room::speakers::Speakers;
use crate::signal::protocol::{LeaveReason, ParticipantInfo, TrackInfo, TrackKind};

struct Member {
    info: ParticipantInfo,
    events: Recipient<RoomEvent>,
}

struct Published {
    info: TrackInfo,
    handle: UpTrackHandle,
}

/// What a room is opened with.
pub struct RoomSettings {
    pub name: RoomName,
    /// The ownership epoch the placement granted for this room.
    pub epoch: Epoch,
    /// This node owns the room (rather than holding a shard of it).
    pub owner: bool,
    /// The node's cascade, in a cluster.
    pub cascade: Option<Arc<Cascade>>,
    pub registry: Addr<RoomRegistry>,
    pub placement: Arc<dyn Placement>,
    /// Checked before every join: a fenced node admits nobody.
    pub gate: Arc<FenceGate>,
    pub config: RoomConfig,
}

pub struct Room {
    name: RoomName,
    /// The room's epoch; shared with imported tracks, whose requests to the
    /// publisher's node carry it. Only [`Room::set_epoch`] changes it.
    epoch: Arc<AtomicI64>,
    owner: bool,
    cascade: Option<Arc<Cascade>>,
    /// What other nodes' shards hold, by node id.
    peers: BTreeMap<String, cascade::RemoteShard>,
    /// Nodes known to hold a shard of the room (from etcd and from their messages).
    peer_nodes: BTreeSet<String>,
    /// Local tracks sent to other nodes: (node, channel) to the track and the
    /// down-track that feeds the link.
    exports: HashMap<(String, u64), (TrackId, DownTrackKey)>,
    registry: Addr<RoomRegistry>,
    placement: Arc<dyn Placement>,
    gate: Arc<FenceGate>,
    max_participants: usize,
    empty_timeout: Duration,
    members: BTreeMap<ParticipantId, Member>,
    tracks: BTreeMap<TrackId, Published>,
    /// Bumped on every join, so a pending close timer knows it is stale.
    generation: u64,
    /// A summary for the placement is scheduled; changes until then ride along.
    summary_pending: bool,
    /// The speaker task, from the actor's start on.
    speakers: Option<Speakers>,
    /// What participants were last told of the speakers; a joiner is told too.
    speaking: speaking::Told,
    /// Whose camera is forwarded in a large room.
    last_n: LastN<ParticipantId>,
    /// What participants were last told of it: `None` while every camera is.
    forwarded: Option<BTreeSet<ParticipantId>>,
    /// Whose voices are forwarded in a large room, shared with the audio up-tracks;
    /// None where every voice always is (`audio_last_n` 0), so they ask nothing.
    voices: Option<SharedVoices>,
    /// Rooms of more participants are large.
    large_above: usize,
    closed: bool,
}

/// Changes within this window are published as one summary.
const SUMMARY_DELAY: Duration = Duration::from_millis(250);

impl Room {
    pub fn new(settings: RoomSettings) -> Self {
        Self {
            name: settings.name,
            epoch: Arc::new(AtomicI64::new(settings.epoch)),
            owner: settings.owner,
            cascade: settings.cascade,
            peers: BTreeMap::new(),
            peer_nodes: BTreeSet::new(),
            exports: HashMap::new(),
            registry: settings.registry,
            placement: settings.placement,
            gate: settings.gate,
            max_participants: settings.config.max_participants,
            empty_timeout: settings.config.empty_timeout,
            last_n: LastN::new(settings.config.last_n, settings.config.last_n_above),
            forwarded: None,
            voices: (settings.config.audio_last_n > 0)
                .then(|| Arc::new(Mutex::new(Voices::new(settings.config.audio_last_n)))),
            large_above: settings.config.last_n_above,
            members: BTreeMap::new(),
            tracks: BTreeMap::new(),
            generation: 0,
            summary_pending: false,
            speakers: None,
            speaking: speaking::Told::default(),
            closed: false,
        }
    }

    fn epoch(&self) -> Epoch {
        self.epoch.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn summary(&self) -> RoomSummary {
        RoomSummary {
            participants: self.members.len() as u64,
            tracks: self.tracks.len() as u64,
        }
    }

    /// Publishes the membership totals soon, once for a burst of changes.
    fn summary_changed(&mut self, ctx: &mut Context<Self>) {
        if self.closed {
            return;
        }
        self.refresh_forwarding();
        self.shard_changed();
        if self.summary_pending {
            return;
        }
        self.summary_pending = true;
        ctx.run_later(SUMMARY_DELAY, |room, _ctx| {
            room.summary_pending = false;
            if room.closed {
                return;
            }
            let summary = room.summary();
            room.registry.do_send(RoomChanged {
                name: room.name.clone(),
                summary: summary.clone(),
            });
            let (placement, name, epoch) =
                (room.placement.clone(), room.name.clone(), room.epoch());
            actix::spawn(async move { placement.publish_room(&name, epoch, summary).await });
        });
    }

    fn broadcast(&self, event: RoomEvent, except: Option<&ParticipantId>) {
        for (id, member) in &self.members {
            if Some(id) != except {
                member.events.do_send(event.clone());
            }
        }
    }

    /// Starts the grace timer if the room is empty.
    fn schedule_close(&mut self, ctx: &mut Context<Self>) {
        if !self.members.is_empty() {
            return;
        }
        let generation = self.generation;
        ctx.run_later(self.empty_timeout, move |room, ctx| {
            if room.members.is_empty() && room.generation == generation {
                room.close(LeaveReason::RoomClosed, ctx);
            }
        });
    }

    fn close(&mut self, reason: LeaveReason, ctx: &mut Context<Self>) {
        info!(room = %self.name, ?reason, "room closed");
        self.closed = true;
        self.broadcast(RoomEvent::Kick { reason }, None);
        for track in self.tracks.values() {
            track.handle.send(UpTrackCommand::Stop);
        }
        self.shard_closed();
        self.registry.do_send(RoomClosed {
            name: self.name.clone(),
            room: ctx.address(),
            epoch: self.epoch(),
            owner: self.owner,
        });
        ctx.stop();
    }

    fn snapshot_of(&self, id: &ParticipantId) -> Option<ParticipantInfo> {
        let member = self.members.get(id)?;
        let mut info = member.info.clone();
        info.tracks = self.tracks_of(id);
        Some(info)
    }

    fn tracks_of(&self, id: &ParticipantId) -> Vec<TrackInfo> {
        let owned = |t: &&Published| &t.info.participant_id == id;
        self.tracks
            .values()
            .filter(owned)
            .map(|t| t.info.clone())
            .collect()
    }

    fn remove_tracks_of(&mut self, id: &ParticipantId) {
        let gone: Vec<TrackId> = self
            .tracks
            .values()
            .filter(|t| &t.info.participant_id == id)
            .map(|t| t.info.id.clone())
            .collect();
        for track_id in gone {
            self.unpublish(id, &track_id);
        }
    }

    fn unpublish(&mut self, participant_id: &ParticipantId, track_id: &TrackId) {
        let Some(track) = self.tracks.remove(track_id) else {
            return;
        };
        track.handle.send(UpTrackCommand::Stop);
        self.stop_hearing(track_id);
        self.exports.retain(|_, (exported, _)| exported != track_id);
        let event = RoomEvent::TrackUnpublished {
            participant_id: participant_id.clone(),
            track_id: track_id.clone(),
        };
        self.broadcast(event, None);
    }

    /// An older session of the same identity gives way to the new one.
    fn evict_identity(&mut self, identity: &str) {
        let old: Vec<ParticipantId> = self
            .members
            .iter()
            .filter(|(_, m)| m.info.identity == identity)
            .map(|(id, _)| id.clone())
            .collect();
        for id in old {
            if let Some(member) = self.members.get(&id) {
                let kick = RoomEvent::Kick {
                    reason: LeaveReason::DuplicateIdentity,
                };
                member.events.do_send(kick);
            }
            self.remove_member(&id, LeaveReason::DuplicateIdentity);
        }
    }

    /// Announces the departure first, so clients can drop the tile at once, then
    /// withdraws the participant's tracks (each withdrawal renegotiates).
    fn remove_member(&mut self, id: &ParticipantId, reason: LeaveReason) {
        if self.members.remove(id).is_none() {
            self.remove_tracks_of(id);
            return;
        }
        debug!(room = %self.name, participant = %id, ?reason, "participant left");
        let event = RoomEvent::ParticipantLeft {
            participant_id: id.clone(),
            reason,
        };
        self.broadcast(event, None);
        self.remove_tracks_of(id);
    }
}

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        info!(room = %self.name, epoch = self.epoch(), owner = self.owner, "room opened");
        self.start_speakers(ctx);
        self.find_peers(ctx);
        // A room opened for a join that never arrives must not linger.
        self.schedule_close(ctx);
    }
}

impl Handler<Join> for Room {
    type Result = Result<JoinAccepted, JoinRefused>;

    fn handle(&mut self, msg: Join, ctx: &mut Self::Context) -> Self::Result {
        if self.closed {
            return Err(JoinRefused::Closed);
        }
        if !self.gate.is_open_now() {
            return Err(JoinRefused::Fenced);
        }
        self.evict_identity(&msg.info.identity);
        if self.members.len() >= self.max_participants {
            return Err(JoinRefused::Full);
        }
        self.generation += 1;

        let mut others: Vec<ParticipantInfo> = self
            .members
            .keys()
            .filter_map(|id| self.snapshot_of(id))
            .collect();
        others.extend(self.remote_participants());
        let mut tracks: Vec<(TrackInfo, UpTrackHandle)> = self
            .tracks
            .values()
            .map(|t| (t.info.clone(), t.handle.clone()))
            .collect();
        tracks.extend(self.remote_tracks());
        self.broadcast(RoomEvent::ParticipantJoined(msg.info.clone()), None);
        let id = msg.info.id.clone();
        if let Some(event) = self.speaking.event() {
            msg.events.do_send(event);
        }
        self.members.insert(
            id,
            Member {
                info: msg.info,
                events: msg.events,
            },
        );
        self.summary_changed(ctx);
        Ok(JoinAccepted {
            others,
            tracks,
            cameras: self.forwarded.clone().map(Arc::new),
        })
    }
}

impl Handler<Leave> for Room {
    type Result = ();

    fn handle(&mut self, msg: Leave, ctx: &mut Self::Context) {
        self.remove_member(&msg.participant_id, msg.reason);
        self.summary_changed(ctx);
        self.schedule_close(ctx);
    }
}

impl Handler<PublishTrack> for Room {
    type Result = ();

    fn handle(&mut self, msg: PublishTrack, ctx: &mut Self::Context) {
        // A track that lost the race with its publisher's departure is stopped at once.
        if !self.members.contains_key(&msg.info.participant_id) {
            msg.handle.send(UpTrackCommand::Stop);
            return;
        }
        let event = RoomEvent::TrackPublished {
            info: msg.info.clone(),
            handle: msg.handle.clone(),
        };
        if msg.info.kind == TrackKind::Audio {
            self.hear(&msg.info.id, &msg.handle);
        }
        self.tracks.insert(
            msg.info.id.clone(),
            Published {
                info: msg.info,
                handle: msg.handle,
            },
        );
        // Whether last-N forwards a new camera is told first, so that subscribers do
        // not hold it back on arrival only to resume it a moment later.
        self.refresh_forwarding();
        self.broadcast(event, None);
        self.summary_changed(ctx);
    }
}

impl Handler<UnpublishTrack> for Room {
    type Result = ();

    fn handle(&mut self, msg: UnpublishTrack, ctx: &mut Self::Context) {
        let owned = self
            .tracks
            .get(&msg.track_id)
            .is_some_and(|t| t.info.participant_id == msg.participant_id);
        if owned {
            self.unpublish(&msg.participant_id, &msg.track_id);
            self.summary_changed(ctx);
        }
    }
}

impl Handler<SetTrackMuted> for Room {
    type Result = bool;

    fn handle(&mut self, msg: SetTrackMuted, _ctx: &mut Self::Context) -> bool {
        let Some(track) = self.tracks.get_mut(&msg.track_id) else {
            return false;
        };
        if track.info.participant_id != msg.participant_id {
            return false;
        }
        track.info.muted = msg.muted;
        let event = RoomEvent::TrackMuted {
            track_id: msg.track_id,
            muted: msg.muted,
        };
        self.broadcast(event, None);
        self.shard_changed();
        true
    }
}

impl Handler<FindTrack> for Room {
    type Result = Option<(TrackInfo, UpTrackHandle)>;

    fn handle(&mut self, msg: FindTrack, _ctx: &mut Self::Context) -> Self::Result {
        match self.tracks.get(&msg.track_id) {
            Some(track) => Some((track.info.clone(), track.handle.clone())),
            None => self.remote_track(&msg.track_id),
        }
    }
}

impl Handler<CloseAll> for Room {
    type Result = ();

    fn handle(&mut self, msg: CloseAll, ctx: &mut Self::Context) {
        self.close(msg.reason, ctx);
    }
}

impl Handler<CutIdentity> for Room {
    type Result = usize;

    fn handle(&mut self, msg: CutIdentity, _ctx: &mut Self::Context) -> usize {
        let cut = self
            .members
            .values()
            .filter(|m| m.info.identity == msg.identity);
        cut.map(|member| member.events.do_send(RoomEvent::Cut))
            .count()
    }
}

impl Handler<CascadeNotice> for Room {
    type Result = ();

    fn handle(&mut self, msg: CascadeNotice, ctx: &mut Self::Context) {
        match msg {
            CascadeNotice::Up { peer } => self.peer_up(&peer),
            CascadeNotice::Down { peer } => self.peer_down(&peer),
            CascadeNotice::Control { peer, message } => self.on_control(&peer, message, ctx),
        }
    }
}

impl Handler<ShardPeers> for Room {
    type Result = ();

    fn handle(&mut self, msg: ShardPeers, _ctx: &mut Self::Context) {
        for node in msg.nodes {
            self.add_peer_node(&node);
        }
    }
}

impl Handler<SetEpoch> for Room {
    type Result = ();

    fn handle(&mut self, msg: SetEpoch, ctx: &mut Self::Context) {
        info!(room = %self.name, old = self.epoch(), epoch = msg.epoch, "room epoch renewed");
        self.set_epoch(msg.epoch, true);
        self.summary_changed(ctx);
    }
}

impl Handler<GetRoomDetail> for Room {
    type Result = MessageResult<GetRoomDetail>;

    fn handle(&mut self, _msg: GetRoomDetail, _ctx: &mut Self::Context) -> Self::Result {
        let mut participants: Vec<ParticipantInfo> = self
            .members
            .keys()
            .filter_map(|id| self.snapshot_of(id))
            .collect();
        participants.extend(self.remote_participants());
        MessageResult(RoomDetail {
            room: self.name.to_string(),
            epoch: self.epoch(),
            participants,
            nodes: self.nodes_with_participants(),
        })
    }
}

impl Handler<RemoveIdentity> for Room {
    type Result = usize;

    fn handle(&mut self, msg: RemoveIdentity, ctx: &mut Self::Context) -> usize {
        let removed: Vec<ParticipantId> = self
            .members
            .iter()
            .filter(|(_, m)| m.info.identity == msg.identity)
            .map(|(id, _)| id.clone())
            .collect();
        let remote = self.remove_remote_identity(&msg.identity);
        for id in &removed {
            if let Some(member) = self.members.get(id) {
                member.events.do_send(RoomEvent::Kick {
                    reason: LeaveReason::Removed,
                });
            }
            self.remove_member(id, LeaveReason::Removed);
        }
        self.summary_changed(ctx);
        self.schedule_close(ctx);
        removed.len() + remote
    }
}
