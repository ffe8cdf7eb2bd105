//! The room's side of cascading: telling other shards what this node holds,
//! showing local participants what they hold, and moving media on demand.
//!
//! Each shard is the authority on its own participants and tracks and sends a
//! full snapshot of them to every other shard on each change; a snapshot replaces
//! the previous one from the same node, so a lost or repeated message heals with
//! the next. A link that goes down takes that node's participants and tracks out
//! of the room here; when it comes back, the shards exchange snapshots again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use tracing::{debug, info, warn};

use super::{Published, Room};
use crate::cascade::wire::{CodecInfo, Control, RemoteTrack};
use crate::cascade::{self, ImportOrigin};
use crate::cluster::{ClusterCounters, Epoch, NodeInfo};
use crate::ids::{ParticipantId, TrackId};
use crate::media::allocator::{Size, MAX_LAYERS};
use crate::media::forwarder::DownTrackKey;
use crate::media::rates::RATE_WINDOW;
use crate::media::uptrack::{UpTrackCommand, UpTrackHandle};
use crate::participant::publications::MAX_PICTURE_SIDE;
use crate::room::messages::{RoomEvent, SetEpoch, ShardPeers};
use crate::signal::protocol::{LeaveReason, ParticipantInfo, TrackInfo, TrackKind};

/// How often a shard of a room owned elsewhere checks that the owner still exists.
const OWNER_CHECK: Duration = Duration::from_secs(1);

/// What another node's shard holds.
#[derive(Default)]
pub(super) struct RemoteShard {
    participants: BTreeMap<ParticipantId, ParticipantInfo>,
    tracks: BTreeMap<TrackId, Imported>,
}

/// A track of another node, imported here.
struct Imported {
    info: TrackInfo,
    handle: UpTrackHandle,
    channel: u64,
}

impl Room {
    pub(super) fn set_epoch(&mut self, epoch: Epoch, owner: bool) {
        self.epoch.store(epoch, Ordering::Relaxed);
        self.owner = owner;
    }

    pub(super) fn remote_participants(&self) -> Vec<ParticipantInfo> {
        self.peers
            .values()
            .flat_map(|shard| {
                shard.participants.values().map(|p| {
                    let mut p = p.clone();
                    p.tracks = shard
                        .tracks
                        .values()
                        .filter(|t| t.info.participant_id == p.id)
                        .map(|t| t.info.clone())
                        .collect();
                    p
                })
            })
            .collect()
    }

    pub(super) fn remote_tracks(&self) -> Vec<(TrackInfo, UpTrackHandle)> {
        self.peers
            .values()
            .flat_map(|shard| shard.tracks.values())
            .map(|t| (t.info.clone(), t.handle.clone()))
            .collect()
    }

    pub(super) fn remote_track(&self, id: &TrackId) -> Option<(TrackInfo, UpTrackHandle)> {
        self.peers
            .values()
            .find_map(|shard| shard.tracks.get(id))
            .map(|t| (t.info.clone(), t.handle.clone()))
    }

    pub(super) fn nodes_with_participants(&self) -> Vec<String> {
        let mut nodes = vec![self.placement.node().id];
        nodes.extend(
            self.peers
                .iter()
                .filter(|(_, shard)| !shard.participants.is_empty())
                .map(|(node, _)| node.clone()),
        );
        nodes
    }

    /// Asks the nodes serving `identity` elsewhere to end its sessions.
    pub(super) fn remove_remote_identity(&self, identity: &str) -> usize {
        let mut removed = 0;
        for (node, shard) in &self.peers {
            for p in shard
                .participants
                .values()
                .filter(|p| p.identity == identity)
            {
                let message = Control::Remove {
                    room: self.name.to_string(),
                    epoch: self.epoch(),
                    participant: p.id.clone(),
                };
                if self.send_to(node, &message) {
                    removed += 1;
                }
            }
        }
        removed
    }

    fn send_to(&self, node: &str, message: &Control) -> bool {
        self.cascade
            .as_ref()
            .is_some_and(|c| c.links.send(node, message))
    }

    fn snapshot(&self, reply: bool) -> Control {
        let participants = self
            .members
            .values()
            .map(|m| {
                let mut info = m.info.clone();
                info.tracks.clear();
                info
            })
            .collect();
        let tracks = self
            .tracks
            .values()
            .map(|t| RemoteTrack {
                info: t.info.clone(),
                codec: CodecInfo::of(&t.handle.codec),
                layers: t
                    .handle
                    .layer_sizes
                    .iter()
                    .map(|size| [size.width, size.height])
                    .collect(),
            })
            .collect();
        Control::Shard {
            room: self.name.to_string(),
            epoch: self.epoch(),
            participants,
            tracks,
            reply,
        }
    }

    /// Sends this shard's snapshot to every other shard.
    pub(super) fn shard_changed(&self) {
        if self.cascade.is_none() || self.peer_nodes.is_empty() {
            return;
        }
        let snapshot = self.snapshot(false);
        for node in &self.peer_nodes {
            self.send_to(node, &snapshot);
        }
    }

    /// The room closes here: the others forget this shard, imports stop.
    pub(super) fn shard_closed(&mut self) {
        let message = Control::ShardClosed {
            room: self.name.to_string(),
            epoch: self.epoch(),
        };
        for node in &self.peer_nodes {
            self.send_to(node, &message);
        }
        let peers: Vec<String> = self.peers.keys().cloned().collect();
        for peer in peers {
            self.forget_peer(&peer, false);
        }
    }

    /// Looks up the other shards in etcd, keeps checking that the room has an owner
    /// while it is owned elsewhere, and tells the nodes importing its simulcast tracks
    /// what their layers cost.
    pub(super) fn find_peers(&mut self, ctx: &mut Context<Self>) {
        if self.cascade.is_none() {
            return;
        }
        self.refresh_peers(ctx);
        ctx.run_interval(RATE_WINDOW, |room, _| room.send_rates());
        ctx.run_interval(OWNER_CHECK, |room, ctx| {
            if room.closed {
                return;
            }
            // Shards that opened at the same moment may have missed each other.
            room.refresh_peers(ctx);
            if room.owner {
                return;
            }
            let (placement, name) = (room.placement.clone(), room.name.clone());
            let me = ctx.address();
            actix::spawn(async move {
                if let Ok(Some(epoch)) = placement.take_over(&name).await {
                    me.do_send(SetEpoch { epoch });
                }
            });
        });
    }

    fn refresh_peers(&self, ctx: &mut Context<Self>) {
        let (placement, name, me) = (self.placement.clone(), self.name.clone(), ctx.address());
        actix::spawn(async move {
            match placement.shard_peers(&name).await {
                Ok(nodes) => me.do_send(ShardPeers { nodes }),
                Err(e) => debug!(room = %name, error = %e, "cannot list the room's other shards"),
            }
        });
    }

    pub(super) fn add_peer_node(&mut self, node: &NodeInfo) {
        let Some(cascade) = self.cascade.clone() else {
            return;
        };
        if node.id == self.placement.node().id {
            return;
        }
        let addr = node.cascade.as_deref().and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            warn!(room = %self.name, node = %node.id, "peer has no cascade address");
            return;
        };
        // Wanting again is cheap, and redials a node that was given up on.
        let new = self.peer_nodes.insert(node.id.clone());
        cascade.links.want(&node.id, addr);
        if new && cascade.links.is_up(&node.id) {
            self.send_to(&node.id, &self.snapshot(true));
        }
    }

    pub(super) fn peer_up(&mut self, peer: &str) {
        if self.peer_nodes.contains(peer) {
            self.send_to(peer, &self.snapshot(true));
        }
    }

    pub(super) fn peer_down(&mut self, peer: &str) {
        self.forget_peer(peer, true);
    }

    /// Takes a node's participants and tracks out of the room here.
    fn forget_peer(&mut self, peer: &str, tell_locals: bool) {
        self.exports.retain(|(node, _), _| node != peer);
        let Some(shard) = self.peers.remove(peer) else {
            return;
        };
        for id in shard.participants.keys() {
            if tell_locals {
                self.broadcast(
                    RoomEvent::ParticipantLeft {
                        participant_id: id.clone(),
                        reason: LeaveReason::Disconnected,
                    },
                    None,
                );
            }
        }
        for track in shard.tracks.into_values() {
            self.stop_import(peer, &track, tell_locals);
        }
        self.refresh_forwarding();
    }

    fn stop_import(&self, peer: &str, track: &Imported, tell_locals: bool) {
        if tell_locals {
            self.broadcast(
                RoomEvent::TrackUnpublished {
                    participant_id: track.info.participant_id.clone(),
                    track_id: track.info.id.clone(),
                },
                None,
            );
        }
        track.handle.send(UpTrackCommand::Stop);
        self.stop_hearing(&track.info.id);
        if let Some(cascade) = &self.cascade {
            cascade.links.unroute(peer, track.channel);
        }
    }

    /// Accepts `got` unless it is older than the room's epoch; a newer one means
    /// another node owns the room now.
    fn accept_epoch(&mut self, peer: &str, got: Epoch) -> bool {
        if got < self.epoch() {
            ClusterCounters::bump(&self.placement.counters().stale_epoch);
            warn!(room = %self.name, %peer, got, epoch = self.epoch(), "stale epoch refused");
            return false;
        }
        if got > self.epoch() {
            info!(room = %self.name, %peer, old = self.epoch(), epoch = got, "newer epoch");
            self.set_epoch(got, false);
        }
        true
    }

    pub(super) fn on_control(&mut self, peer: &str, message: Control, ctx: &mut Context<Self>) {
        self.follow_control(peer, message, ctx);
        // A shard's news may change who is in the room and whose camera it has.
        self.refresh_forwarding();
    }

    fn follow_control(&mut self, peer: &str, message: Control, ctx: &mut Context<Self>) {
        match message {
            Control::Shard {
                epoch,
                participants,
                tracks,
                reply,
                ..
            } => {
                if !self.accept_epoch(peer, epoch) {
                    return;
                }
                if !self.peer_nodes.contains(peer) {
                    if let Some(node) = self.placement.member(peer) {
                        self.add_peer_node(&node);
                    }
                    self.peer_nodes.insert(peer.to_owned());
                }
                self.apply_shard(peer, participants, tracks);
                if reply {
                    self.send_to(peer, &self.snapshot(false));
                }
            }
            Control::ShardClosed { epoch, .. } => {
                if self.accept_epoch(peer, epoch) {
                    self.forget_peer(peer, true);
                    self.peer_nodes.remove(peer);
                }
            }
            Control::Subscribe {
                epoch,
                track,
                channel,
                ..
            } => {
                if self.accept_epoch(peer, epoch) {
                    self.export(peer, &track, channel);
                }
            }
            Control::Unsubscribe { channel, .. } => {
                if let Some((track, key)) = self.exports.remove(&(peer.to_owned(), channel)) {
                    if let Some(t) = self.tracks.get(&track) {
                        t.handle.send(UpTrackCommand::RemoveDownTrack { key });
                    }
                }
            }
            Control::Keyframe { track, .. } => {
                if let Some((from, t)) = self.export_of(peer, &track) {
                    t.handle.send(UpTrackCommand::KeyframeRequest { from });
                }
            }
            Control::Size { track, shown, .. } => {
                // A size no tile has is taken as none said: the largest layer.
                let shown = shown.and_then(picture_size);
                if let Some((key, t)) = self.export_of(peer, &track) {
                    t.handle.send(UpTrackCommand::SetShownSize { key, shown });
                }
            }
            Control::Rates { track, bps, .. } => {
                // Only an imported simulcast track takes its rates from its origin.
                let imported = self.peers.get(peer).and_then(|s| s.tracks.get(&track));
                if let Some(t) = imported.filter(|t| !t.handle.layer_sizes.is_empty()) {
                    t.handle.rates.replace(&bps);
                }
            }
            Control::Remove {
                epoch, participant, ..
            } => {
                if self.accept_epoch(peer, epoch) {
                    if let Some(member) = self.members.get(&participant) {
                        member.events.do_send(RoomEvent::Kick {
                            reason: LeaveReason::Removed,
                        });
                        self.remove_member(&participant, LeaveReason::Removed);
                        self.summary_changed(ctx);
                        self.schedule_close(ctx);
                    }
                }
            }
            Control::Hello { .. } => {}
        }
    }

    /// Tells each node that imports a simulcast track from here what its layers cost,
    /// as measured here: its subscribers' allocators need them.
    pub(super) fn send_rates(&self) {
        let exported: BTreeSet<(&String, &TrackId)> = self
            .exports
            .iter()
            .map(|((peer, _), (track, _))| (peer, track))
            .collect();
        for (peer, track) in exported {
            let Some(t) = self.tracks.get(track) else {
                continue;
            };
            self.send_rates_of(peer, track, &t.handle);
        }
    }

    fn send_rates_of(&self, peer: &str, track: &TrackId, handle: &UpTrackHandle) {
        let layers = handle.layer_sizes.len();
        if layers == 0 {
            return;
        }
        let message = Control::Rates {
            room: self.name.to_string(),
            track: track.clone(),
            bps: (0..layers).map(|layer| handle.rates.get(layer)).collect(),
        };
        self.send_to(peer, &message);
    }

    /// The down-track that exports `track` to `peer`, and the track's entry here.
    fn export_of(&self, peer: &str, track: &TrackId) -> Option<(DownTrackKey, &Published)> {
        let key = self
            .exports
            .iter()
            .find(|((node, _), (t, _))| node == peer && t == track)
            .map(|(_, (_, key))| *key)?;
        Some((key, self.tracks.get(track)?))
    }

    fn export(&mut self, peer: &str, track: &TrackId, channel: u64) {
        let (Some(cascade), Some(local)) = (&self.cascade, self.tracks.get(track)) else {
            debug!(room = %self.name, %peer, %track, "subscribe for a track not here");
            return;
        };
        if let Some(key) = cascade::export(cascade, peer, channel, &local.handle) {
            // What the layers cost is known at once, not only from the next round.
            self.send_rates_of(peer, track, &local.handle);
            self.exports
                .insert((peer.to_owned(), channel), (track.clone(), key));
        }
    }

    /// Replaces what `peer` holds with its new snapshot, telling local
    /// participants what changed: arrivals before their tracks, departures first.
    fn apply_shard(
        &mut self,
        peer: &str,
        participants: Vec<ParticipantInfo>,
        tracks: Vec<RemoteTrack>,
    ) {
        let Some(cascade) = self.cascade.clone() else {
            return;
        };
        let mut old = self.peers.remove(peer).unwrap_or_default();
        let mut shard = RemoteShard::default();
        let mut published = Vec::new();
        for p in participants {
            if old.participants.remove(&p.id).is_none() {
                self.broadcast(RoomEvent::ParticipantJoined(p.clone()), None);
            }
            shard.participants.insert(p.id.clone(), p);
        }
        for gone in old.participants.keys() {
            self.broadcast(
                RoomEvent::ParticipantLeft {
                    participant_id: gone.clone(),
                    reason: LeaveReason::Disconnected,
                },
                None,
            );
        }
        for track in tracks {
            let id = track.info.id.clone();
            match old.tracks.remove(&id) {
                Some(mut existing) => {
                    if existing.info.muted != track.info.muted {
                        let event = RoomEvent::TrackMuted {
                            track_id: id.clone(),
                            muted: track.info.muted,
                        };
                        self.broadcast(event, None);
                    }
                    existing.info = track.info;
                    shard.tracks.insert(id, existing);
                }
                None => {
                    let channel = cascade.channel();
                    let origin = ImportOrigin {
                        cascade: cascade.clone(),
                        peer: peer.to_owned(),
                        room: self.name.to_string(),
                        track: id.clone(),
                        epoch: self.epoch.clone(),
                        channel,
                    };
                    let layers = layer_sizes(&track.layers);
                    let kind = track.info.kind;
                    let imported = cascade::import(origin, kind, &track.codec, layers, |_| {});
                    if track.info.kind == TrackKind::Audio {
                        self.hear(&id, &imported.handle);
                    }
                    published.push(RoomEvent::TrackPublished {
                        info: track.info.clone(),
                        handle: imported.handle.clone(),
                    });
                    shard.tracks.insert(
                        id,
                        Imported {
                            info: track.info,
                            handle: imported.handle,
                            channel,
                        },
                    );
                }
            }
        }
        for gone in old.tracks.values() {
            self.stop_import(peer, gone, true);
        }
        self.peers.insert(peer.to_owned(), shard);
        // Whether last-N forwards the new cameras is told before they are.
        self.refresh_forwarding();
        for event in published {
            self.broadcast(event, None);
        }
    }
}

/// A picture size told by another node; None for one no picture has.
fn picture_size([width, height]: [u32; 2]) -> Option<Size> {
    let side_ok = |side: u32| (1..=MAX_PICTURE_SIDE).contains(&side);
    (side_ok(width) && side_ok(height)).then_some(Size { width, height })
}

/// The layer sizes of a track imported from another node; none (one stream) when
/// they are more than a track may have or not pictures, larger each than the last.
fn layer_sizes(told: &[[u32; 2]]) -> Vec<Size> {
    let sizes: Option<Vec<Size>> = told.iter().map(|size| picture_size(*size)).collect();
    let sizes = sizes.unwrap_or_default();
    let growing = sizes.windows(2).all(|w| w[0].fits_in(w[1]) && w[0] != w[1]);
    if sizes.len() > MAX_LAYERS || !growing {
        return Vec::new();
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_sizes_from_another_node_are_checked() {
        let sizes = layer_sizes(&[[320, 180], [640, 360], [1280, 720]]);
        let widths: Vec<u32> = sizes.iter().map(|s| s.width).collect();
        assert_eq!(widths, [320, 640, 1280]);
        assert!(layer_sizes(&[]).is_empty());
        // Shrinking, repeated, empty, too large or too many: taken as one stream.
        for bad in [
            vec![[640, 360], [320, 180]],
            vec![[320, 180], [320, 180]],
            vec![[0, 180], [640, 360]],
            vec![[320, 180], [MAX_PICTURE_SIDE + 1, 360]],
            (1..=MAX_LAYERS as u32 + 1)
                .map(|n| [n * 10, n * 10])
                .collect(),
        ] {
            assert!(layer_sizes(&bad).is_empty(), "{bad:?}");
        }
    }
}
