//! The participant actor: one client's session, its peer connection and its socket.
//!
//! A participant owns exactly one peer connection, used both to publish and to
//! subscribe. It turns client messages into room and media actions and room events
//! into client messages. Negotiation is serialized: each offer/answer step runs
//! with the mailbox held (`ctx.wait`), and the server offers only while no offer of
//! its own is outstanding. When a client offer crosses a server offer, the server
//! wins (it is the impolite peer) and the client answers first, then re-offers.
//!
//! Media never passes through this actor: it wires up-tracks and down-tracks and
//! steps aside.

mod bandwidth;
mod negotiation;
pub mod peer;
pub(crate) mod publications;
pub mod socket;
mod subscriptions;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use actix::prelude::*;
use actix_ws::CloseCode;
use tracing::{debug, info, warn};
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState};

use crate::auth::Claims;
use crate::cluster::{Admission, Epoch, JoinHints, Placement, PlacementError};
use crate::ids::{ParticipantId, RoomName};
use crate::media::uptrack::UpTrackHandle;
use crate::metrics::{GaugeGuard, JoinResult, Metrics};
use crate::participant::peer::{PeerEvent, PeerFactory};
use crate::participant::socket::{Inbound, Outbox};
use crate::room::messages::{Join, JoinRefused, Leave, OpenRefused, OpenRoom, RoomEvent};
use crate::room::registry::RoomRegistry;
use crate::room::room::Room;
use crate::signal::protocol::{
    ClientMessage, ErrorCode, LeaveReason, Limits, ParticipantInfo, ServerMessage, TrackInfo,
    PROTOCOL_VERSION,
};

pub use publications::Announced;
use publications::Publication;
use subscriptions::Subscription;

/// What a participant needs from the node, shared by all participants.
pub struct NodeContext {
    pub node_id: String,
    pub registry: Addr<RoomRegistry>,
    pub placement: Arc<dyn Placement>,
    /// Links to other nodes, in a cluster.
    pub cascade: Option<Arc<crate::cascade::Cascade>>,
    pub peers: PeerFactory,
    pub limits: Limits,
    /// Where everything on the node records its metrics.
    pub metrics: Arc<Metrics>,
}

pub struct Participant {
    id: ParticipantId,
    claims: Claims,
    room_name: RoomName,
    /// What placement needs to know about where the client came from.
    hints: JoinHints,
    node: Arc<NodeContext>,
    outbox: Outbox,
    /// Set once the room accepted the join.
    room: Option<Addr<Room>>,
    pc: Option<Arc<dyn PeerConnection>>,
    auto_subscribe: bool,
    /// A server offer awaits the client's answer.
    offer_outstanding: bool,
    /// Subscriptions changed since the last server offer.
    renegotiate: bool,
    /// Tracks the client described before sending media, by their `cid`.
    announced: HashMap<String, Announced>,
    published: HashMap<crate::ids::TrackId, Publication>,
    subscriptions: HashMap<crate::ids::TrackId, Subscription>,
    /// Whose cameras the room forwards (last-N); `None` for everyone's.
    cameras: Option<Arc<BTreeSet<ParticipantId>>>,
    /// Whose cameras the client wants whatever last-N says.
    pinned: BTreeSet<ParticipantId>,
    /// Video tracks the client does not show now: never forwarded to it.
    hidden: BTreeSet<crate::ids::TrackId>,
    /// The room's dominant speaker, whose camera comes first when bandwidth is short.
    dominant: Option<ParticipantId>,
    /// The client's downlink and what fits it.
    bandwidth: bandwidth::Bandwidth,
    /// DTLS is up: packets written now reach the client instead of being refused.
    media_connected: bool,
    left: bool,
    /// When the client asked to join, until the attempt's outcome is counted.
    join_started: Option<std::time::Instant>,
    /// Counts this participant on the node while the room has it.
    _presence: Option<GaugeGuard>,
}

impl Participant {
    pub fn new(
        claims: Claims,
        room_name: RoomName,
        hints: JoinHints,
        node: Arc<NodeContext>,
        outbox: Outbox,
    ) -> Self {
        let bandwidth = bandwidth::Bandwidth::new(node.peers.pauses_for_bandwidth());
        Self {
            id: ParticipantId::random(),
            claims,
            room_name,
            hints,
            node,
            outbox,
            room: None,
            pc: None,
            auto_subscribe: true,
            offer_outstanding: false,
            renegotiate: false,
            announced: HashMap::new(),
            published: HashMap::new(),
            subscriptions: HashMap::new(),
            cameras: None,
            pinned: BTreeSet::new(),
            hidden: BTreeSet::new(),
            dominant: None,
            bandwidth,
            media_connected: false,
            left: false,
            join_started: None,
            _presence: None,
        }
    }

    /// Counts the outcome of the join attempt, once.
    fn join_ended(&mut self, result: JoinResult) {
        let Some(started) = self.join_started.take() else {
            return;
        };
        match result {
            JoinResult::Success => self.node.metrics.join_connected(started.elapsed()),
            other => self.node.metrics.join(other),
        }
    }

    fn info(&self) -> ParticipantInfo {
        ParticipantInfo {
            id: self.id.clone(),
            identity: self.claims.sub.clone(),
            name: self.claims.name.clone(),
            tracks: Vec::new(),
        }
    }

    fn send(&self, message: ServerMessage) {
        if !self.outbox.send(&message) {
            debug!(participant = %self.id, "client is not reading; message dropped");
        }
    }

    fn send_error(&self, code: ErrorCode, message: impl Into<String>, request: &str) {
        self.send(ServerMessage::error(code, message, Some(request)));
    }

    /// An error about something the server did on its own, not in reply to a request.
    fn send_unprompted_error(&self, code: ErrorCode, message: impl Into<String>) {
        self.send(ServerMessage::error(code, message, None));
    }

    /// Leaves the room once (the others learn `reason`) and stops the actor.
    fn leave(&mut self, reason: LeaveReason, ctx: &mut Context<Self>) {
        if !self.left {
            self.left = true;
            if let Some(room) = &self.room {
                room.do_send(Leave {
                    participant_id: self.id.clone(),
                    reason,
                });
            }
        }
        ctx.stop();
    }

    fn close_socket(&self, reason: LeaveReason) {
        self.send(ServerMessage::Leave { reason });
        let code = match reason {
            LeaveReason::ProtocolViolation => CloseCode::Policy,
            LeaveReason::ServerShutdown => CloseCode::Away,
            _ => CloseCode::Normal,
        };
        self.outbox.close(code, "session ended");
    }

    fn on_join(&mut self, auto_subscribe: bool, ctx: &mut Context<Self>) {
        if self.room.is_some() {
            return self.send_error(ErrorCode::AlreadyJoined, "already joined", "join");
        }
        self.auto_subscribe = auto_subscribe;
        self.join_started = Some(std::time::Instant::now());
        let node = self.node.clone();
        let name = self.room_name.clone();
        let hints = self.hints.clone();
        let info = self.info();
        let events = ctx.address().recipient();
        let fut = async move { enter(&node, &name, &hints, info, events).await };
        ctx.wait(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(Entered::Here(room, accepted)) => act.joined(room, accepted, ctx),
            Ok(Entered::Elsewhere { url, node, epoch }) => {
                info!(room = %act.room_name, participant = %act.id, %node, "redirected");
                act.join_ended(JoinResult::Redirected);
                act.send(ServerMessage::Redirect { url, node, epoch });
                act.outbox.close(CloseCode::Normal, "redirected");
                act.left = true;
                ctx.stop();
            }
            Err(refusal) => act.refuse_join(refusal, ctx),
        }));
    }

    fn refuse_join(&mut self, refusal: Refusal, ctx: &mut Context<Self>) {
        self.join_ended(match &refusal {
            Refusal::Full => JoinResult::RoomFull,
            Refusal::Placement(_) => JoinResult::Unplaced,
            Refusal::Internal => JoinResult::Error,
        });
        let (code, message) = match refusal {
            Refusal::Full => (ErrorCode::RoomFull, "the room is full".to_owned()),
            Refusal::Placement(e) => {
                let code = match e {
                    PlacementError::Unavailable(_) => ErrorCode::ClusterUnavailable,
                    PlacementError::Fenced => ErrorCode::NodeFenced,
                    PlacementError::StaleEpoch { .. } => ErrorCode::StaleEpoch,
                    _ => ErrorCode::NoNodeAvailable,
                };
                (code, e.to_string())
            }
            Refusal::Internal => (ErrorCode::Internal, "the room could not be joined".into()),
        };
        warn!(room = %self.room_name, participant = %self.id, code = code.as_str(),
            %message, "join refused");
        self.send_error(code, message, "join");
        let reason = match code {
            ErrorCode::RoomFull => LeaveReason::RoomFull,
            _ => LeaveReason::Disconnected,
        };
        self.close_socket(reason);
        self.left = true;
        ctx.stop();
    }

    fn joined(
        &mut self,
        room: Addr<Room>,
        accepted: crate::room::messages::JoinAccepted,
        ctx: &mut Context<Self>,
    ) {
        info!(room = %self.room_name, participant = %self.id, identity = %self.claims.sub,
            "participant joined");
        self.room = Some(room);
        // Known before the first subscription: a camera held back gets no transceiver.
        self.cameras = accepted.cameras;
        self._presence = Some(self.node.metrics.participant());
        self.send(ServerMessage::Joined {
            protocol: PROTOCOL_VERSION,
            room: self.room_name.to_string(),
            node: self.node.node_id.clone(),
            participant: self.info(),
            participants: accepted.others,
            limits: self.node.limits.clone(),
        });
        let initial = if self.auto_subscribe {
            accepted.tracks
        } else {
            Vec::new()
        };
        self.build_peer(initial, ctx);
    }

    /// Builds the peer connection, then subscribes to the tracks already published.
    fn build_peer(&mut self, initial: Vec<(TrackInfo, UpTrackHandle)>, ctx: &mut Context<Self>) {
        let node = self.node.clone();
        let recipient = ctx.address().recipient();
        let estimate = self.bandwidth.estimate.clone();
        let fut = async move { node.peers.build(recipient, estimate).await };
        ctx.wait(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(pc) => {
                act.pc = Some(pc);
                for (info, handle) in initial {
                    act.subscribe_to(info, handle, ctx);
                }
            }
            Err(e) => {
                warn!(participant = %act.id, error = %e, "peer connection could not be built");
                act.join_ended(JoinResult::Error);
                act.send_error(
                    ErrorCode::Internal,
                    "media is unavailable on this node",
                    "join",
                );
                act.close_socket(LeaveReason::Disconnected);
                act.leave(LeaveReason::Disconnected, ctx);
            }
        }));
    }

    fn on_client_message(&mut self, msg: ClientMessage, ctx: &mut Context<Self>) {
        if let ClientMessage::Join { auto_subscribe } = msg {
            return self.on_join(auto_subscribe, ctx);
        }
        if self.room.is_none() || self.pc.is_none() {
            return self.send_error(ErrorCode::NotJoined, "send `join` first", kind_of(&msg));
        }
        match msg {
            ClientMessage::Join { .. } => {}
            ClientMessage::PublishTrack {
                cid,
                kind,
                source,
                name,
                muted,
                layers,
            } => self.announce(
                cid,
                Announced {
                    kind,
                    source,
                    name,
                    muted,
                    layers,
                },
            ),
            ClientMessage::UnpublishTrack { track_id } => self.unpublish(&track_id),
            ClientMessage::Offer { sdp } => self.on_offer(sdp, ctx),
            ClientMessage::Answer { sdp } => self.on_answer(sdp, ctx),
            ClientMessage::Candidate(candidate) => self.on_candidate(candidate, ctx),
            ClientMessage::Subscribe { track_ids } => self.on_subscribe(track_ids, ctx),
            ClientMessage::Unsubscribe { track_ids } => {
                for track_id in track_ids {
                    self.unsubscribe(&track_id, true, ctx);
                }
            }
            ClientMessage::Mute { track_id, muted } => self.on_mute(track_id, muted, ctx),
            ClientMessage::Ping { id } => self.send(ServerMessage::Pong { id }),
            ClientMessage::Pin { participant_ids } => self.on_pin(participant_ids, ctx),
            ClientMessage::Hide { track_ids } => self.on_hide(track_ids, ctx),
            ClientMessage::TrackSize {
                track_id,
                width,
                height,
            } => self.on_track_size(track_id, width, height),
            ClientMessage::Leave => {
                self.outbox.close(CloseCode::Normal, "left");
                self.leave(LeaveReason::ClientLeave, ctx);
            }
        }
    }

    fn on_room_event(&mut self, event: RoomEvent, ctx: &mut Context<Self>) {
        match event {
            RoomEvent::ParticipantJoined(info) if info.id != self.id => {
                self.send(ServerMessage::ParticipantJoined { participant: info })
            }
            RoomEvent::ParticipantJoined(_) => {}
            RoomEvent::ParticipantLeft {
                participant_id,
                reason,
            } => {
                if participant_id != self.id {
                    self.send(ServerMessage::ParticipantLeft {
                        participant_id,
                        reason,
                    });
                }
            }
            RoomEvent::TrackPublished { info, handle } => {
                self.send(ServerMessage::TrackPublished {
                    track: info.clone(),
                });
                let own = info.participant_id == self.id;
                if self.auto_subscribe && !own {
                    self.subscribe_to(info, handle, ctx);
                }
            }
            RoomEvent::TrackUnpublished {
                participant_id,
                track_id,
            } => {
                // Tell the client before renegotiating, which holds the mailbox.
                self.send(ServerMessage::TrackUnpublished {
                    track_id: track_id.clone(),
                    participant_id,
                });
                self.unsubscribe(&track_id, false, ctx);
            }
            RoomEvent::TrackMuted { track_id, muted } => {
                self.send(ServerMessage::TrackMuted { track_id, muted })
            }
            RoomEvent::Speakers { dominant, speakers } => {
                self.dominant = dominant.clone();
                self.send(ServerMessage::SpeakersChanged { dominant, speakers })
            }
            RoomEvent::Forwarding { cameras } => {
                self.cameras = cameras;
                self.apply_forwarding(ctx);
            }
            RoomEvent::Cut => {
                self.outbox.abort();
                self.leave(LeaveReason::Disconnected, ctx);
            }
            RoomEvent::Kick { reason } => {
                self.close_socket(reason);
                self.left = true;
                ctx.stop();
            }
        }
    }

    fn on_peer_state(&mut self, state: RTCPeerConnectionState, ctx: &mut Context<Self>) {
        debug!(participant = %self.id, %state, "peer connection state");
        if state == RTCPeerConnectionState::Connected {
            self.media_connected = true;
            self.join_ended(JoinResult::Success);
            self.activate_subscriptions(ctx);
        }
        if matches!(
            state,
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
        ) {
            self.close_socket(LeaveReason::Disconnected);
            self.leave(LeaveReason::Disconnected, ctx);
        }
    }
}

fn kind_of(msg: &ClientMessage) -> &'static str {
    match msg {
        ClientMessage::Join { .. } => "join",
        ClientMessage::PublishTrack { .. } => "publish_track",
        ClientMessage::UnpublishTrack { .. } => "unpublish_track",
        ClientMessage::Offer { .. } => "offer",
        ClientMessage::Answer { .. } => "answer",
        ClientMessage::Candidate(_) => "candidate",
        ClientMessage::Subscribe { .. } => "subscribe",
        ClientMessage::Unsubscribe { .. } => "unsubscribe",
        ClientMessage::Mute { .. } => "mute",
        ClientMessage::Ping { .. } => "ping",
        ClientMessage::Pin { .. } => "pin",
        ClientMessage::Hide { .. } => "hide",
        ClientMessage::TrackSize { .. } => "track_size",
        ClientMessage::Leave => "leave",
    }
}

impl Actor for Participant {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.node.peers.adapts_to_bandwidth() {
            ctx.run_interval(bandwidth::ADAPT_EVERY, |act, ctx| {
                act.adapt_to_bandwidth(ctx)
            });
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Still pending: the session ended between the join request and media.
        self.join_ended(JoinResult::Abandoned);
        for subscription in self.subscriptions.values() {
            subscription.stop();
        }
        for publication in self.published.values() {
            publication.stop();
        }
        if let Some(room) = self.room.as_ref().filter(|_| !self.left) {
            let reason = LeaveReason::Disconnected;
            room.do_send(Leave {
                participant_id: self.id.clone(),
                reason,
            });
        }
        // Whatever ended the session, the client must not be left with a dead socket.
        self.outbox.close(CloseCode::Normal, "session ended");
        // While the node shuts down there may be no runtime left to close on; the
        // process exit closes the sockets then.
        if let (Some(pc), Ok(runtime)) = (self.pc.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move {
                let _ = pc.close().await;
            });
        }
        debug!(participant = %self.id, "participant stopped");
    }
}

impl Handler<Inbound> for Participant {
    type Result = ();

    fn handle(&mut self, msg: Inbound, ctx: &mut Self::Context) {
        match msg {
            Inbound::Message(msg) => self.on_client_message(msg, ctx),
            Inbound::Closed(_) => self.leave(LeaveReason::Disconnected, ctx),
        }
    }
}

impl Handler<RoomEvent> for Participant {
    type Result = ();

    fn handle(&mut self, event: RoomEvent, ctx: &mut Self::Context) {
        self.on_room_event(event, ctx);
    }
}

impl Handler<PeerEvent> for Participant {
    type Result = ();

    fn handle(&mut self, event: PeerEvent, ctx: &mut Self::Context) {
        match event {
            PeerEvent::Candidate(candidate) => self.send(ServerMessage::Candidate(candidate)),
            PeerEvent::State(state) => self.on_peer_state(state, ctx),
            PeerEvent::Track(remote) => self.on_remote_track(remote, ctx),
        }
    }
}

/// Where a join ended up.
enum Entered {
    Here(Addr<Room>, crate::room::messages::JoinAccepted),
    Elsewhere {
        url: String,
        node: String,
        epoch: Option<Epoch>,
    },
}

enum Refusal {
    Full,
    Placement(PlacementError),
    Internal,
}

/// Attempts before a join gives up on a room that keeps closing under it.
const ENTER_ATTEMPTS: usize = 5;
/// Pause before asking the placement again about a room being released.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Asks the placement where the room is served and, when here, joins it.
async fn enter(
    node: &NodeContext,
    name: &RoomName,
    hints: &JoinHints,
    info: ParticipantInfo,
    events: Recipient<RoomEvent>,
) -> Result<Entered, Refusal> {
    for _ in 0..ENTER_ATTEMPTS {
        let (epoch, owner) = match node.placement.admit(name, hints).await {
            Ok(Admission::Here { epoch, owner }) => (epoch, owner),
            Ok(Admission::Redirect { node, url, epoch }) => {
                return Ok(Entered::Elsewhere { url, node, epoch })
            }
            Err(e) => return Err(Refusal::Placement(e)),
        };
        let open = OpenRoom {
            name: name.clone(),
            epoch,
            owner,
        };
        let room = match node.registry.send(open).await {
            Ok(Ok(room)) => room,
            Ok(Err(OpenRefused::Releasing)) => {
                tokio::time::sleep(RELEASE_WAIT).await;
                continue;
            }
            Err(_) => return Err(Refusal::Internal),
        };
        let join = Join {
            info: info.clone(),
            events: events.clone(),
        };
        match room.send(join).await {
            Ok(Ok(accepted)) => return Ok(Entered::Here(room, accepted)),
            Ok(Err(JoinRefused::Full)) => return Err(Refusal::Full),
            Ok(Err(JoinRefused::Fenced)) => return Err(Refusal::Placement(PlacementError::Fenced)),
            // The room closed between lookup and join: ask again.
            Ok(Err(JoinRefused::Closed)) | Err(_) => continue,
        }
    }
    Err(Refusal::Internal)
}
