//! Cascading: one meeting across several nodes.
//!
//! Every node that serves participants of a room holds a *shard* of it (the
//! node's own `Room` actor). Shards of a room tell each other their own
//! participants and tracks over the cascade links ([`wire::Control::Shard`]);
//! each shard shows its participants the union. A track crosses a link only while
//! the far node has at least one subscriber taking it (not paused by last-N or by
//! `hide`), and once per link however many subscribers it has there:
//!
//! - on the subscriber's node the track is an up-track fed by the link
//!   ([`import`]); its first down-track that takes packets sends `subscribe` to the
//!   publisher's node, the last one to stop `unsubscribe`, and its keyframe
//!   requests travel back too;
//! - on the publisher's node, `subscribe` attaches one down-track to the track's
//!   forwarder whose output goes into datagrams on the link ([`export`]).
//!
//! This module holds the node's links and these two adapters; the room actor
//! decides what to import and export.

pub mod link;
pub mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rtc::rtp::packet::Packet;
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;
use rtc::shared::marshal::Marshal;
use tokio::sync::mpsc;

use crate::ids::TrackId;
use crate::media::allocator::Size;
use crate::media::forwarder::DownTrackKey;
use crate::media::uptrack::{
    self, CascadeOrigin, DownTrackSink, Offer, PacketMeta, Source, UpTrack, UpTrackCommand,
    UpTrackHandle, CASCADE_IMPORT_QUEUE,
};
use crate::metrics::{Direction, Kind, Metrics, Path, RtpCounters};
use crate::participant::peer::video_feedback;
use crate::participant::publications::forwarder_config;
use crate::signal::protocol::TrackKind;
use link::Links;
use wire::{CodecInfo, Control};

/// Payload type of media on a link; the receiving node rewrites it per subscriber.
const LINK_PAYLOAD_TYPE: u8 = 96;

/// The node's cascade: its links and the numbering of received channels.
pub struct Cascade {
    pub links: Arc<Links>,
    /// The address other nodes dial, as published in the membership.
    pub advertised: SocketAddr,
    pub metrics: Arc<Metrics>,
    next_channel: AtomicU64,
}

impl Cascade {
    pub fn new(links: Arc<Links>, advertised: SocketAddr, metrics: Arc<Metrics>) -> Self {
        Self {
            links,
            advertised,
            metrics,
            next_channel: AtomicU64::new(1),
        }
    }

    /// A channel number for media this node will receive; unique on this node.
    pub fn channel(&self) -> u64 {
        self.next_channel.fetch_add(1, Ordering::Relaxed)
    }
}

impl CodecInfo {
    pub fn of(codec: &RTCRtpCodec) -> Self {
        Self {
            mime_type: codec.mime_type.clone(),
            clock_rate: codec.clock_rate,
            channels: codec.channels,
            sdp_fmtp_line: codec.sdp_fmtp_line.clone(),
        }
    }

    /// The codec as the local stack describes it, with our feedback for video.
    pub fn to_codec(&self, kind: TrackKind) -> RTCRtpCodec {
        RTCRtpCodec {
            mime_type: self.mime_type.clone(),
            clock_rate: self.clock_rate,
            channels: self.channels,
            sdp_fmtp_line: self.sdp_fmtp_line.clone(),
            rtcp_feedback: match kind {
                TrackKind::Video => video_feedback(),
                TrackKind::Audio => Vec::new(),
            },
        }
    }
}

/// What a room needs to know to reach the far end of an imported track.
pub struct ImportOrigin {
    pub cascade: Arc<Cascade>,
    pub peer: String,
    pub room: String,
    pub track: TrackId,
    /// The room's epoch, shared with the room actor so requests carry the current one.
    pub epoch: Arc<AtomicI64>,
    pub channel: u64,
}

impl ImportOrigin {
    fn subscribe(&self) -> Control {
        Control::Subscribe {
            room: self.room.clone(),
            epoch: self.epoch.load(Ordering::Relaxed),
            track: self.track.clone(),
            channel: self.channel,
        }
    }
}

impl CascadeOrigin for ImportOrigin {
    fn demand(&self, wanted: bool) {
        let message = if wanted {
            self.subscribe()
        } else {
            Control::Unsubscribe {
                room: self.room.clone(),
                track: self.track.clone(),
                channel: self.channel,
            }
        };
        self.cascade.links.send(&self.peer, &message);
    }

    fn keyframe(&self) {
        let message = Control::Keyframe {
            room: self.room.clone(),
            track: self.track.clone(),
        };
        self.cascade.links.send(&self.peer, &message);
    }

    fn shown(&self, size: Option<Size>) {
        let message = Control::Size {
            room: self.room.clone(),
            track: self.track.clone(),
            shown: size.map(|s| [s.width, s.height]),
        };
        self.cascade.links.send(&self.peer, &message);
    }
}

/// An imported track: its up-track here, and what re-subscribing needs.
pub struct Imported {
    pub handle: UpTrackHandle,
    pub origin: Arc<ImportOrigin>,
}

/// Starts an up-track on this node for a track published on `origin.peer`.
///
/// Nothing crosses the link until a subscriber here attaches to the returned
/// handle. `layers` are the sizes of a simulcast track's layers at its origin (empty
/// for one stream). `on_end` runs when the up-track stops.
pub fn import(
    origin: ImportOrigin,
    kind: TrackKind,
    codec: &CodecInfo,
    layers: Vec<Size>,
    on_end: impl FnOnce(TrackId) + Send + 'static,
) -> Imported {
    let (packets_tx, packets_rx) = mpsc::channel::<Bytes>(CASCADE_IMPORT_QUEUE);
    origin
        .cascade
        .links
        .route(&origin.peer, origin.channel, packets_tx);
    let origin = Arc::new(origin);
    let codec = codec.to_codec(kind);
    let up = UpTrack {
        track_id: origin.track.clone(),
        config: forwarder_config(kind, &codec.mime_type),
        // A simulcast track crosses a link as the one layer its export is sent, which
        // the origin picks by the sizes this up-track tells it.
        simulcast: None,
        metrics: origin.cascade.metrics.clone(),
        codec,
        // The origin's link carries the level under the link's own id.
        audio_level_id: (kind == TrackKind::Audio).then_some(wire::AUDIO_LEVEL_ID),
        source: Source::Cascade {
            packets: packets_rx,
            origin: origin.clone(),
            layers: layers.into(),
        },
    };
    let handle = uptrack::spawn(up, on_end);
    Imported { handle, origin }
}

/// Impersonates a subscriber on this node for `peer`: attaches a down-track to
/// `handle` whose packets leave as datagrams on `channel`. Returns its key, to
/// detach it with [`UpTrackCommand::RemoveDownTrack`]; `None` without a link.
pub fn export(
    cascade: &Cascade,
    peer: &str,
    channel: u64,
    handle: &UpTrackHandle,
) -> Option<DownTrackKey> {
    let path = cascade.links.media_path(peer)?;
    let sent = cascade
        .metrics
        .rtp_counters(Direction::Out, Kind::from(handle.kind), Path::Cascade);
    let key = DownTrackKey::fresh();
    let added = handle.send(UpTrackCommand::AddDownTrack {
        key,
        ssrc: rand::random(),
        payload_type: LINK_PAYLOAD_TYPE,
        sink: Box::new(LinkSink {
            path,
            channel,
            sent,
        }),
    });
    added.then_some(key)
}

/// Writes a down-track's packets into datagrams on a cascade link.
struct LinkSink {
    path: link::MediaPath,
    channel: u64,
    sent: RtpCounters,
}

impl DownTrackSink for LinkSink {
    fn offer(&mut self, mut packet: Packet, meta: PacketMeta) -> Offer {
        if let Some(level) = meta.audio_level {
            // One byte under the link's own id; the far node's up-track reads it.
            let data = Bytes::copy_from_slice(&[level]);
            let _ = packet.header.set_extension(wire::AUDIO_LEVEL_ID, data);
        }
        let Ok(rtp) = packet.marshal() else {
            return Offer::Refused;
        };
        // The link queues datagrams itself, dropping the oldest when it falls behind.
        if !self.path.send(wire::encode_media(self.channel, &rtp)) {
            return Offer::Refused;
        }
        self.sent.record(Instant::now(), packet.payload.len());
        Offer::Taken
    }
}
