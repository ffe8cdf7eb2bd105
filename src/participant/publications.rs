//! The tracks a participant publishes: from the client's description to an up-track.
//!
//! A client may describe a track (`publish_track`) before its media arrives; the
//! description is matched to the incoming track by the `a=msid` track id. An
//! undescribed track is published with defaults taken from its kind.

use std::sync::Arc;

use actix::prelude::*;
use tracing::{info, warn};
use webrtc::media_stream::track_remote::TrackRemote;

use super::peer::audio_level_id;
use super::Participant;
use crate::ids::TrackId;
use crate::media::allocator::{Size, MAX_LAYERS};
use crate::media::codec::{MediaKind, VideoCodec};
use crate::media::fanout::SimulcastLayers;
use crate::media::forwarder::ForwarderConfig;
use crate::media::uptrack::{self, Source, UpTrack, UpTrackCommand, UpTrackHandle};
use crate::room::messages::{PublishTrack, SetTrackMuted, UnpublishTrack};
use crate::signal::protocol::{ErrorCode, LayerInfo, TrackInfo, TrackKind, TrackSource};

/// The most tracks one participant may have described but not yet sent.
const MAX_ANNOUNCED: usize = 32;

/// What a client said about a track before sending it.
#[derive(Debug, Clone)]
pub struct Announced {
    pub kind: TrackKind,
    pub source: TrackSource,
    pub name: String,
    pub muted: bool,
    /// Simulcast encodings, lowest first; empty for a track sent as one stream.
    pub layers: Vec<LayerInfo>,
}

/// The longest rid accepted (RFC 8851 allows more; browsers use one or two letters).
const MAX_RID_LEN: usize = 16;

/// The largest picture side accepted, in pixels.
pub const MAX_PICTURE_SIDE: u32 = 16_384;

/// Why a `publish_track`'s layers are refused, or None when they are fine.
fn layers_problem(kind: TrackKind, layers: &[LayerInfo]) -> Option<String> {
    if layers.is_empty() {
        return None;
    }
    if kind != TrackKind::Video {
        return Some("only video is sent in layers".into());
    }
    if !(2..=MAX_LAYERS).contains(&layers.len()) {
        return Some(format!("a simulcast track has 2 to {MAX_LAYERS} layers"));
    }
    let rid_ok = |rid: &str| {
        (1..=MAX_RID_LEN).contains(&rid.len())
            && rid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if let Some(bad) = layers.iter().find(|l| !rid_ok(&l.rid)) {
        return Some(format!(
            "rid {:?} is not 1 to {MAX_RID_LEN} letters, digits, - or _",
            bad.rid
        ));
    }
    let side_ok = |side: u32| (1..=MAX_PICTURE_SIDE).contains(&side);
    if layers
        .iter()
        .any(|l| !side_ok(l.width) || !side_ok(l.height))
    {
        return Some(format!(
            "layer sizes are 1 to {MAX_PICTURE_SIDE} pixels a side"
        ));
    }
    for (i, pair) in layers.windows(2).enumerate() {
        if pair[0].rid == pair[1].rid || layers[..i].iter().any(|l| l.rid == pair[1].rid) {
            return Some(format!("rid {:?} appears twice", pair[1].rid));
        }
        if pair[1].width < pair[0].width || pair[1].height < pair[0].height {
            return Some("layers go from the smallest to the largest".into());
        }
    }
    None
}

/// The up-track's view of announced layers.
fn simulcast_layers(layers: &[LayerInfo]) -> Option<SimulcastLayers> {
    (!layers.is_empty()).then(|| SimulcastLayers {
        rids: layers.iter().map(|l| l.rid.clone()).collect(),
        sizes: layers
            .iter()
            .map(|l| Size {
                width: l.width,
                height: l.height,
            })
            .collect(),
    })
}

pub(super) struct Publication {
    pub handle: UpTrackHandle,
}

impl Publication {
    pub fn stop(&self) {
        self.handle.send(UpTrackCommand::Stop);
    }
}

/// Sent by an up-track task when it ends.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct UpTrackEnded {
    pub track_id: TrackId,
}

/// What the remote track says about itself, read off the connection.
struct RemoteFacts {
    cid: String,
    ssrc: u32,
    codec: rtc::rtp_transceiver::rtp_sender::RTCRtpCodec,
    kind: TrackKind,
    audio_level_id: Option<u8>,
}

impl Participant {
    pub(super) fn announce(&mut self, cid: String, announced: Announced) {
        if !self.claims.grants.publish {
            return self.send_error(
                ErrorCode::PermissionDenied,
                "token does not grant publish",
                "publish_track",
            );
        }
        if self.announced.len() >= MAX_ANNOUNCED && !self.announced.contains_key(&cid) {
            return self.send_error(
                ErrorCode::PermissionDenied,
                "too many announced tracks",
                "publish_track",
            );
        }
        if let Some(problem) = layers_problem(announced.kind, &announced.layers) {
            return self.send_error(ErrorCode::BadJson, problem, "publish_track");
        }
        self.announced.insert(cid, announced);
    }

    pub(super) fn on_remote_track(
        &mut self,
        remote: Arc<dyn TrackRemote>,
        ctx: &mut Context<Self>,
    ) {
        let facts = {
            let remote = remote.clone();
            let pc = self.pc.clone();
            async move {
                let ssrc = *remote.ssrcs().await.first()?;
                let codec = remote.codec(ssrc).await?;
                let kind = match remote.kind().await {
                    rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Audio => TrackKind::Audio,
                    _ => TrackKind::Video,
                };
                let cid = remote.track_id().await.to_string();
                // The description that brought the track names the extension ids
                // the publisher writes.
                let audio_level_id = match (kind, pc) {
                    (TrackKind::Audio, Some(pc)) => pc
                        .remote_description()
                        .await
                        .and_then(|description| audio_level_id(&description.sdp)),
                    _ => None,
                };
                Some(RemoteFacts {
                    cid,
                    ssrc,
                    codec,
                    kind,
                    audio_level_id,
                })
            }
        };
        ctx.spawn(
            facts
                .into_actor(self)
                .map(move |facts, act, ctx| match facts {
                    Some(facts) => act.publish(remote, facts, ctx),
                    None => warn!(participant = %act.id, "incoming track without SSRC or codec"),
                }),
        );
    }

    fn publish(
        &mut self,
        remote: Arc<dyn TrackRemote>,
        facts: RemoteFacts,
        ctx: &mut Context<Self>,
    ) {
        if !self.claims.grants.publish {
            let message = "token does not grant publish: incoming media is ignored";
            return self.send_unprompted_error(ErrorCode::PermissionDenied, message);
        }
        let announced = self
            .announced
            .remove(&facts.cid)
            .unwrap_or_else(|| default_announced(facts.kind));
        let info = TrackInfo {
            id: TrackId::random(),
            participant_id: self.id.clone(),
            cid: facts.cid,
            kind: facts.kind,
            source: announced.source,
            name: announced.name,
            mime_type: facts.codec.mime_type.clone(),
            muted: announced.muted,
        };
        info!(participant = %self.id, track = %info.id, mime = %info.mime_type, "track published");

        let me = ctx.address();
        let up = UpTrack {
            track_id: info.id.clone(),
            source: Source::Peer {
                remote,
                media_ssrc: facts.ssrc,
            },
            codec: facts.codec.clone(),
            config: forwarder_config(facts.kind, &facts.codec.mime_type),
            simulcast: simulcast_layers(&announced.layers),
            audio_level_id: facts.audio_level_id,
            metrics: self.node.metrics.clone(),
        };
        let handle = uptrack::spawn(up, move |track_id| me.do_send(UpTrackEnded { track_id }));
        self.published.insert(
            info.id.clone(),
            Publication {
                handle: handle.clone(),
            },
        );
        if let Some(room) = &self.room {
            room.do_send(PublishTrack { info, handle });
        }
    }

    pub(super) fn unpublish(&mut self, track_id: &TrackId) {
        let Some(publication) = self.published.remove(track_id) else {
            return self.send_error(
                ErrorCode::UnknownTrack,
                "no such track of yours",
                "unpublish_track",
            );
        };
        publication.stop();
        self.tell_room_unpublished(track_id);
    }

    fn tell_room_unpublished(&self, track_id: &TrackId) {
        if let Some(room) = &self.room {
            let msg = UnpublishTrack {
                participant_id: self.id.clone(),
                track_id: track_id.clone(),
            };
            room.do_send(msg);
        }
    }

    pub(super) fn on_mute(&mut self, track_id: TrackId, muted: bool, ctx: &mut Context<Self>) {
        let Some(room) = self.room.clone() else {
            return;
        };
        let msg = SetTrackMuted {
            participant_id: self.id.clone(),
            track_id,
            muted,
        };
        let fut = async move { room.send(msg).await.unwrap_or(false) };
        ctx.spawn(fut.into_actor(self).map(|known, act, _ctx| {
            if !known {
                act.send_error(ErrorCode::UnknownTrack, "no such track of yours", "mute");
            }
        }));
    }
}

impl Handler<UpTrackEnded> for Participant {
    type Result = ();

    fn handle(&mut self, msg: UpTrackEnded, _ctx: &mut Self::Context) {
        if self.published.remove(&msg.track_id).is_some() {
            self.tell_room_unpublished(&msg.track_id);
        }
    }
}

fn default_announced(kind: TrackKind) -> Announced {
    let source = match kind {
        TrackKind::Audio => TrackSource::Microphone,
        TrackKind::Video => TrackSource::Camera,
    };
    Announced {
        kind,
        source,
        name: String::new(),
        muted: false,
        layers: Vec::new(),
    }
}

pub(crate) fn forwarder_config(kind: TrackKind, mime: &str) -> ForwarderConfig {
    let (kind, codec) = match kind {
        TrackKind::Audio => (MediaKind::Audio, VideoCodec::Other),
        TrackKind::Video => (MediaKind::Video, VideoCodec::from_mime(mime)),
    };
    ForwarderConfig {
        kind,
        codec,
        keyframe_interval: std::time::Duration::from_millis(500),
    }
}
