//! The tracks a participant receives: one down-track per subscribed track.
//!
//! Subscribing adds a local track to the peer connection and asks for a server
//! offer. Only once the client has answered are the negotiated `mid` and payload
//! type known, and only once the connection is up can packets be sent; then the
//! down-track is attached to the publisher's forwarder and the client is told
//! `subscribed`.
//!
//! A track held back when it is subscribed (a camera last-N does not forward, or a
//! video the client hides) gets no transceiver until it is first forwarded: the
//! client hears `track_paused` at once, and `subscribed` once it is forwarded. In a
//! large room most cameras are never forwarded to most participants, and a
//! transceiver each would cost every connection memory, timers and offer size.

use std::collections::BTreeSet;
use std::sync::Arc;

use actix::prelude::*;
use rtc::media_stream::{MediaStreamId, MediaStreamTrack, MediaStreamTrackId};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tracing::debug;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::peer_connection::PeerConnection;
use webrtc::rtp_transceiver::RtpSender;

use super::publications::MAX_PICTURE_SIDE;
use super::Participant;
use crate::ids::{ParticipantId, TrackId};
use crate::media::allocator::Size;
use crate::media::downtrack::{self, DownTrackTasks};
use crate::media::forwarder::DownTrackKey;
use crate::media::uptrack::{UpTrackCommand, UpTrackHandle};
use crate::room::messages::FindTrack;
use crate::room::room::is_camera;
use crate::signal::protocol::{ErrorCode, PauseCause, ServerMessage, TrackInfo, TrackKind};

/// The most participants one client may pin.
pub const MAX_PINNED: usize = 16;

/// The most tracks one client may hide at once.
pub const MAX_HIDDEN: usize = 256;

pub(super) struct Subscription {
    key: DownTrackKey,
    ssrc: u32,
    pub(super) up: UpTrackHandle,
    /// Who publishes the track, whether it is video the client may hide, and whether
    /// it is a camera that last-N may pause.
    pub(super) publisher: ParticipantId,
    pub(super) video: bool,
    pub(super) camera: bool,
    /// Why it is not forwarded for now (hidden, last-N or bandwidth), if it is not;
    /// applied to the down-track once it starts.
    paused: Option<PauseCause>,
    /// The size the client shows the track at (`track_size`); applied likewise.
    pub(super) shown: Option<Size>,
    /// The highest layer of a simulcast track the client's downlink allows; applied
    /// likewise.
    cap: Option<usize>,
    local: Arc<dyn TrackLocal>,
    /// Held back since it was subscribed: no transceiver asked for yet.
    deferred: bool,
    sender: Option<Arc<dyn RtpSender>>,
    /// Carried by a server offer; then answered by the client.
    offered: bool,
    answered: bool,
    /// Running once the client answered the offer that carries this track.
    tasks: Option<DownTrackTasks>,
}

impl Subscription {
    /// Limits the layers of a simulcast track to `cap` and below (None: no limit).
    pub(super) fn set_max_layer(&mut self, cap: Option<usize>) {
        if self.cap == cap {
            return;
        }
        self.cap = cap;
        if self.tasks.is_some() {
            self.up.send(UpTrackCommand::SetMaxLayer {
                key: self.key,
                layer: cap,
            });
        }
    }

    pub fn stop(&self) {
        if let Some(tasks) = &self.tasks {
            tasks.stop();
        }
        self.up
            .send(UpTrackCommand::RemoveDownTrack { key: self.key });
    }
}

/// What negotiation settled for one subscription.
struct Negotiated {
    track_id: TrackId,
    mid: String,
    payload_type: u8,
}

impl Participant {
    /// A server offer was made: these senders are in it.
    pub(super) fn mark_offered(&mut self, senders: &[RTCRtpSenderId]) {
        for sub in self.subscriptions.values_mut() {
            let in_offer = sub
                .sender
                .as_ref()
                .is_some_and(|s| senders.contains(&s.id()));
            sub.offered |= in_offer;
        }
    }

    /// The client answered: whatever the offers carried is now negotiated.
    pub(super) fn mark_answered(&mut self) {
        for sub in self.subscriptions.values_mut() {
            sub.answered |= sub.offered;
        }
    }

    pub(super) fn on_subscribe(&mut self, track_ids: Vec<TrackId>, ctx: &mut Context<Self>) {
        if !self.claims.grants.subscribe {
            let message = "token does not grant subscribe";
            return self.send_error(ErrorCode::PermissionDenied, message, "subscribe");
        }
        let Some(room) = self.room.clone() else {
            return;
        };
        for track_id in track_ids {
            let fut = room.send(FindTrack {
                track_id: track_id.clone(),
            });
            ctx.wait(
                fut.into_actor(self)
                    .map(move |found, act, ctx| match found {
                        Ok(Some((info, handle))) if info.participant_id != act.id => {
                            act.subscribe_to(info, handle, ctx)
                        }
                        _ => act.send_error(
                            ErrorCode::UnknownTrack,
                            format!("no track {track_id}"),
                            "subscribe",
                        ),
                    }),
            );
        }
    }

    /// Adds a down-track for `info` and asks for renegotiation.
    pub(super) fn subscribe_to(
        &mut self,
        info: TrackInfo,
        up: UpTrackHandle,
        ctx: &mut Context<Self>,
    ) {
        if !self.claims.grants.subscribe || self.subscriptions.contains_key(&info.id) {
            return;
        }
        if self.pc.is_none() {
            return;
        }
        let key = DownTrackKey::fresh();
        let ssrc = rand::random::<u32>().max(1);
        let local: Arc<dyn TrackLocal> = Arc::new(local_track(&info, &up.codec, ssrc));
        let track_id = info.id.clone();
        let mut sub = Subscription {
            key,
            ssrc,
            up,
            publisher: info.participant_id.clone(),
            video: info.kind == TrackKind::Video,
            camera: is_camera(&info),
            paused: None,
            shown: None,
            cap: None,
            local,
            deferred: false,
            sender: None,
            offered: false,
            answered: false,
            tasks: None,
        };
        sub.paused = self.held_back(&track_id, &sub);
        sub.deferred = sub.paused.is_some();
        let reason = sub.paused;
        self.subscriptions.insert(track_id.clone(), sub);
        if reason.is_some() {
            self.send(ServerMessage::TrackPaused {
                track_id,
                paused: true,
                reason,
            });
            return;
        }
        self.add_transceiver(track_id, ctx);
    }

    /// Adds the transceiver that carries a subscription, and asks for renegotiation.
    fn add_transceiver(&mut self, track_id: TrackId, ctx: &mut Context<Self>) {
        let (Some(pc), Some(sub)) = (self.pc.clone(), self.subscriptions.get(&track_id)) else {
            return;
        };
        let local = sub.local.clone();
        // Always a new transceiver: `add_track` would reuse the receive-only one of a
        // track the client publishes, where the client never receives. Send-receive,
        // because with the crate's send-only ones lost packets are not retransmitted.
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendrecv,
            streams: Vec::new(),
            send_encodings: Vec::new(),
        };
        let fut = async move {
            let transceiver = pc.add_transceiver_from_track(local, Some(init)).await?;
            let sender = transceiver.sender().await?;
            sender.ok_or_else(|| webrtc::error::Error::Other("transceiver has no sender".into()))
        };
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(sender) => {
                if let Some(sub) = act.subscriptions.get_mut(&track_id) {
                    sub.sender = Some(sender);
                }
                act.renegotiate = true;
                act.maybe_offer(ctx);
            }
            Err(e) => {
                debug!(participant = %act.id, error = %e, "adding a down-track failed");
                act.subscriptions.remove(&track_id);
                let message = format!("subscription to {track_id} failed");
                act.send_unprompted_error(ErrorCode::Internal, message);
            }
        }));
    }

    /// After an answer: starts the down-tracks whose transceivers are now negotiated.
    pub(super) fn activate_subscriptions(&mut self, ctx: &mut Context<Self>) {
        // Before DTLS is up every write would be refused; connecting activates them.
        if !self.media_connected {
            return;
        }
        let Some(pc) = self.pc.clone() else { return };
        let pending: Vec<(TrackId, Arc<dyn RtpSender>, RTCRtpCodec)> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.answered && s.tasks.is_none())
            .filter_map(|(id, s)| Some((id.clone(), s.sender.clone()?, s.up.codec.clone())))
            .collect();
        if pending.is_empty() {
            return;
        }
        let fut = negotiated(pc, pending);
        ctx.wait(fut.into_actor(self).map(|settled, act, ctx| {
            for settlement in settled {
                match settlement {
                    Settlement::Ready(negotiated) => act.start_down_track(negotiated),
                    Settlement::NotYet => {}
                    Settlement::NoCodec(track_id) => {
                        let message = format!("no codec in common for {track_id}");
                        act.send_unprompted_error(ErrorCode::Internal, message);
                        act.unsubscribe(&track_id, false, ctx);
                    }
                }
            }
        }));
    }

    fn start_down_track(&mut self, negotiated: Negotiated) {
        let Some(sub) = self.subscriptions.get_mut(&negotiated.track_id) else {
            return;
        };
        let (tasks, sink) = downtrack::spawn(
            sub.key,
            sub.local.clone(),
            sub.up.clone(),
            &self.node.metrics,
        );
        sub.up.send(UpTrackCommand::AddDownTrack {
            key: sub.key,
            ssrc: sub.ssrc,
            payload_type: negotiated.payload_type,
            sink: Box::new(sink),
        });
        let reason = sub.paused;
        if reason.is_some() {
            sub.up.send(UpTrackCommand::SetPaused {
                key: sub.key,
                paused: true,
            });
        }
        if sub.shown.is_some() {
            sub.up.send(UpTrackCommand::SetShownSize {
                key: sub.key,
                shown: sub.shown,
            });
        }
        if sub.cap.is_some() {
            sub.up.send(UpTrackCommand::SetMaxLayer {
                key: sub.key,
                layer: sub.cap,
            });
        }
        sub.tasks = Some(tasks);
        let track_id = negotiated.track_id;
        self.send(ServerMessage::Subscribed {
            track_id: track_id.clone(),
            mid: negotiated.mid,
        });
        if reason.is_some() {
            self.send(ServerMessage::TrackPaused {
                track_id,
                paused: true,
                reason,
            });
        }
    }

    /// Why the client chose not to be sent `track_id` for now, if it did: it hides that
    /// video, or last-N holds back the publisher's camera and the client did not pin it.
    pub(super) fn held_back(&self, track_id: &TrackId, sub: &Subscription) -> Option<PauseCause> {
        if sub.video && self.hidden.contains(track_id) {
            return Some(PauseCause::Hidden);
        }
        let publisher = &sub.publisher;
        let outside = |cameras: &Arc<BTreeSet<ParticipantId>>| !cameras.contains(publisher);
        let last_n = sub.camera
            && self.cameras.as_ref().is_some_and(outside)
            && !self.pinned.contains(publisher);
        last_n.then_some(PauseCause::LastN)
    }

    /// Why `track_id` is not sent now, if it is not: held back, or its lowest layer does
    /// not fit the client's downlink.
    fn paused_for(&self, track_id: &TrackId) -> Option<PauseCause> {
        let sub = self.subscriptions.get(track_id)?;
        let bandwidth = self.bandwidth.paused.contains(track_id);
        self.held_back(track_id, sub)
            .or(bandwidth.then_some(PauseCause::Bandwidth))
    }

    /// Pauses and resumes subscriptions as what the client hides, the forwarded
    /// cameras, the pins and the downlink say, telling the client of each change to a
    /// running or deferred one (of the reason too, while it stays paused). A deferred
    /// one that is forwarded now gets its transceiver.
    pub(super) fn apply_forwarding(&mut self, ctx: &mut Context<Self>) {
        let wanted: Vec<(TrackId, Option<PauseCause>)> = self
            .subscriptions
            .keys()
            .map(|id| (id.clone(), self.paused_for(id)))
            .filter(|(id, reason)| self.subscriptions[id].paused != *reason)
            .collect();
        for (track_id, reason) in wanted {
            let Some(sub) = self.subscriptions.get_mut(&track_id) else {
                continue;
            };
            let was_paused = sub.paused.is_some();
            let paused = reason.is_some();
            sub.paused = reason;
            if sub.deferred {
                // The client heard it was paused; it hears each new reason, and that
                // it is forwarded now, ahead of the offer that carries it.
                if !paused {
                    sub.deferred = false;
                    self.add_transceiver(track_id.clone(), ctx);
                }
                self.send(ServerMessage::TrackPaused {
                    track_id,
                    paused,
                    reason,
                });
                continue;
            }
            // One not started yet takes its state when it starts.
            if sub.tasks.is_some() {
                if paused != was_paused {
                    sub.up.send(UpTrackCommand::SetPaused {
                        key: sub.key,
                        paused,
                    });
                }
                self.send(ServerMessage::TrackPaused {
                    track_id,
                    paused,
                    reason,
                });
            }
        }
    }

    pub(super) fn on_pin(&mut self, participant_ids: Vec<ParticipantId>, ctx: &mut Context<Self>) {
        if participant_ids.len() > MAX_PINNED {
            let message = format!("at most {MAX_PINNED} participants can be pinned");
            return self.send_error(ErrorCode::BadJson, message, "pin");
        }
        self.pinned = participant_ids.into_iter().collect();
        self.apply_forwarding(ctx);
    }

    pub(super) fn on_track_size(&mut self, track_id: TrackId, width: u32, height: u32) {
        let side_ok = |side: u32| (1..=MAX_PICTURE_SIDE).contains(&side);
        if !side_ok(width) || !side_ok(height) {
            let message = format!("width and height are 1 to {MAX_PICTURE_SIDE} pixels");
            return self.send_error(ErrorCode::BadJson, message, "track_size");
        }
        let Some(sub) = self.subscriptions.get_mut(&track_id) else {
            let message = format!("not subscribed to {track_id}");
            return self.send_error(ErrorCode::UnknownTrack, message, "track_size");
        };
        sub.shown = Some(Size { width, height });
        if sub.tasks.is_some() {
            sub.up.send(UpTrackCommand::SetShownSize {
                key: sub.key,
                shown: sub.shown,
            });
        }
    }

    pub(super) fn on_hide(&mut self, track_ids: Vec<TrackId>, ctx: &mut Context<Self>) {
        if track_ids.len() > MAX_HIDDEN {
            let message = format!("at most {MAX_HIDDEN} tracks can be hidden");
            return self.send_error(ErrorCode::BadJson, message, "hide");
        }
        self.hidden = track_ids.into_iter().collect();
        self.apply_forwarding(ctx);
    }

    /// Ends a subscription; `tell` says whether the client asked (and gets `unsubscribed`).
    pub(super) fn unsubscribe(&mut self, track_id: &TrackId, tell: bool, ctx: &mut Context<Self>) {
        self.bandwidth.paused.remove(track_id);
        let Some(sub) = self.subscriptions.remove(track_id) else {
            if tell {
                self.send_error(ErrorCode::UnknownTrack, "not subscribed", "unsubscribe");
            }
            return;
        };
        sub.stop();
        if tell {
            self.send(ServerMessage::Unsubscribed {
                track_id: track_id.clone(),
            });
        }
        let (Some(pc), Some(sender)) = (self.pc.clone(), sub.sender) else {
            return;
        };
        let fut = async move { pc.remove_track(&sender).await };
        ctx.wait(fut.into_actor(self).map(|res, act, ctx| {
            if res.is_ok() {
                act.renegotiate = true;
                act.maybe_offer(ctx);
            }
        }));
    }
}

/// What reading a pending subscription's transceiver found.
enum Settlement {
    Ready(Negotiated),
    /// Not in any answered offer yet; the next offer carries it.
    NotYet,
    /// Negotiated, but the client accepted none of the publisher's codec.
    NoCodec(TrackId),
}

/// Reads mid and payload type of each pending subscription's transceiver.
async fn negotiated(
    pc: Arc<dyn PeerConnection>,
    pending: Vec<(TrackId, Arc<dyn RtpSender>, RTCRtpCodec)>,
) -> Vec<Settlement> {
    let transceivers = pc.get_transceivers().await;
    let mut settled = Vec::new();
    for (track_id, sender, codec) in pending {
        let mut mid = None;
        for transceiver in &transceivers {
            let Ok(Some(candidate)) = transceiver.sender().await else {
                continue;
            };
            if candidate.id() == sender.id() {
                mid = transceiver.mid().await.ok().flatten();
            }
        }
        let Some(mid) = mid else {
            settled.push(Settlement::NotYet);
            continue;
        };
        let params = sender
            .get_parameters()
            .await
            .map(|p| p.rtp_parameters.codecs);
        let payload_type = params
            .ok()
            .and_then(|codecs| payload_type_of(&codec, &codecs));
        settled.push(match payload_type {
            Some(payload_type) => Settlement::Ready(Negotiated {
                track_id,
                mid,
                payload_type,
            }),
            None => Settlement::NoCodec(track_id),
        });
    }
    settled
}

/// The payload type negotiated for `codec`: same format parameters first, then same MIME type.
fn payload_type_of(codec: &RTCRtpCodec, negotiated: &[RTCRtpCodecParameters]) -> Option<u8> {
    let same_mime =
        |c: &&RTCRtpCodecParameters| c.rtp_codec.mime_type.eq_ignore_ascii_case(&codec.mime_type);
    let exact = negotiated
        .iter()
        .filter(same_mime)
        .find(|c| c.rtp_codec.sdp_fmtp_line == codec.sdp_fmtp_line);
    exact
        .or_else(|| negotiated.iter().find(same_mime))
        .map(|c| c.payload_type)
}

fn encoding(codec: &RTCRtpCodec, ssrc: u32) -> RTCRtpEncodingParameters {
    RTCRtpEncodingParameters {
        rtp_coding_parameters: RTCRtpCodingParameters {
            ssrc: Some(ssrc),
            ..Default::default()
        },
        codec: codec.clone(),
        ..Default::default()
    }
}

fn local_track(info: &TrackInfo, codec: &RTCRtpCodec, ssrc: u32) -> TrackLocalStaticRTP {
    let kind = match info.kind {
        TrackKind::Audio => RtpCodecKind::Audio,
        TrackKind::Video => RtpCodecKind::Video,
    };
    // The stream id groups a publisher's tracks, so clients can lip-sync them.
    TrackLocalStaticRTP::new(MediaStreamTrack::new(
        MediaStreamId::from(info.participant_id.to_string()),
        MediaStreamTrackId::from(info.id.to_string()),
        info.name.clone(),
        kind,
        vec![encoding(codec, ssrc)],
    ))
}
