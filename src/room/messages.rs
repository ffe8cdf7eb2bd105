//! Messages between participants, rooms and the room registry.

use std::collections::BTreeSet;
use std::sync::Arc;

use actix::{Addr, Message, Recipient};

use crate::cluster::{Epoch, PlacementEvent, RoomSummary};
use crate::ids::{ParticipantId, RoomName, TrackId};
use crate::media::uptrack::UpTrackHandle;
use crate::room::room::Room;
use crate::signal::protocol::{LeaveReason, ParticipantInfo, TrackInfo};

/// Asks the registry for the room's actor, creating the room if needed.
///
/// `epoch` is the ownership the placement just granted; a new room starts with it.
#[derive(Message)]
#[rtype(result = "Result<Addr<Room>, OpenRefused>")]
pub struct OpenRoom {
    pub name: RoomName,
    pub epoch: Epoch,
    /// This node owns the room, rather than holding a shard of it.
    pub owner: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenRefused {
    /// The room just closed here and its ownership is being released: ask the
    /// placement again in a moment.
    #[error("the room is being released")]
    Releasing,
}

/// The room actor, if the room is open on this node.
#[derive(Message)]
#[rtype(result = "Option<Addr<Room>>")]
pub struct LookupRoom {
    pub name: RoomName,
}

/// A room's membership or tracks changed; the registry keeps the node's totals.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoomChanged {
    pub name: RoomName,
    pub summary: RoomSummary,
}

/// Something the placement decided about a room open here.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PlacementNotice {
    pub event: PlacementEvent,
}

/// The room's ownership was renewed under a new epoch.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetEpoch {
    pub epoch: Epoch,
}

/// Everything about a room, for the operations API.
#[derive(Message)]
#[rtype(result = "RoomDetail")]
pub struct GetRoomDetail;

#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomDetail {
    pub room: String,
    pub epoch: Epoch,
    pub participants: Vec<ParticipantInfo>,
    /// Nodes serving participants of the room, this one first.
    pub nodes: Vec<String>,
}

/// Something a cascade link said or did, for the room it is about.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub enum CascadeNotice {
    Up {
        peer: String,
    },
    Down {
        peer: String,
    },
    Control {
        peer: String,
        message: crate::cascade::wire::Control,
    },
}

/// The nodes holding shards of the room, found at start.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShardPeers {
    pub nodes: Vec<crate::cluster::NodeInfo>,
}

/// An operator removes every session of an identity; answers how many.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct RemoveIdentity {
    pub identity: String,
}

/// A room tells the registry it has closed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoomClosed {
    pub name: RoomName,
    pub room: Addr<Room>,
    /// The room's epoch when it closed, and whether this node owned it then.
    pub epoch: Epoch,
    pub owner: bool,
}

/// Number of open rooms and their participants, for readiness and logs.
#[derive(Message)]
#[rtype(result = "RegistryStats")]
pub struct GetRegistryStats;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    pub rooms: usize,
    pub participants: u64,
    pub tracks: u64,
}

/// Closes every room, telling participants why.
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct CloseAll {
    pub reason: LeaveReason,
}

/// Cuts the sessions of an identity as if its network had dropped (dev mode only).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CutIdentity {
    pub room: RoomName,
    pub identity: String,
}

/// A participant enters a room.
#[derive(Message)]
#[rtype(result = "Result<JoinAccepted, JoinRefused>")]
pub struct Join {
    pub info: ParticipantInfo,
    pub events: Recipient<RoomEvent>,
}

#[derive(Debug, Clone)]
pub struct JoinAccepted {
    /// Everyone already in the room, with their tracks.
    pub others: Vec<ParticipantInfo>,
    /// Handles of the tracks already published, to subscribe to.
    pub tracks: Vec<(TrackInfo, UpTrackHandle)>,
    /// Whose cameras the room forwards (last-N); None for everyone's.
    pub cameras: Option<Arc<BTreeSet<ParticipantId>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefused {
    #[error("the room is full")]
    Full,
    #[error("the room has closed")]
    Closed,
    #[error("this node cannot renew its cluster lease")]
    Fenced,
}

/// A participant leaves (or was lost).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub participant_id: ParticipantId,
    pub reason: LeaveReason,
}

/// A participant's track is now flowing.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PublishTrack {
    pub info: TrackInfo,
    pub handle: UpTrackHandle,
}

/// A participant's track ended or was withdrawn.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UnpublishTrack {
    pub participant_id: ParticipantId,
    pub track_id: TrackId,
}

#[derive(Message)]
#[rtype(result = "bool")]
pub struct SetTrackMuted {
    pub participant_id: ParticipantId,
    pub track_id: TrackId,
    pub muted: bool,
}

/// Looks a track up for a subscription.
#[derive(Message)]
#[rtype(result = "Option<(TrackInfo, UpTrackHandle)>")]
pub struct FindTrack {
    pub track_id: TrackId,
}

/// What a room tells its participants.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub enum RoomEvent {
    ParticipantJoined(ParticipantInfo),
    ParticipantLeft {
        participant_id: ParticipantId,
        reason: LeaveReason,
    },
    TrackPublished {
        info: TrackInfo,
        handle: UpTrackHandle,
    },
    TrackUnpublished {
        participant_id: ParticipantId,
        track_id: TrackId,
    },
    TrackMuted {
        track_id: TrackId,
        muted: bool,
    },
    /// The speakers changed (see [`crate::room::speakers`]).
    Speakers {
        dominant: Option<ParticipantId>,
        speakers: Vec<ParticipantId>,
    },
    /// Whose camera video subscribers get: `None` for everyone's; otherwise only
    /// these participants', besides what a subscriber pins (see
    /// [`crate::media::last_n`]).
    Forwarding {
        cameras: Option<Arc<BTreeSet<ParticipantId>>>,
    },
    /// This participant must leave: the room closes or its identity joined again.
    Kick {
        reason: LeaveReason,
    },
    /// Drop the socket without a word, as a broken network would.
    Cut,
}
