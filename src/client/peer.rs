//! The client's peer connections: how one is built, how a track is published on it
//! and how a received track is read.
//!
//! Shared by the relais client's driver and by the load generator's other signaling
//! backends, so that every simulated participant sends and receives media through the
//! same stack, whatever server it talks to. The event handler only turns each event
//! into a [`PeerEvent`] for whoever owns the connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rtc::media_stream::{MediaStreamTrack, MediaStreamTrackId};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8,
};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, Registry, SettingEngineBuilder,
};

use super::lossy::LossyRuntime;
use super::{ClientError, ClientEvent, LocalTrack, PublishCodec, Simulcast};
use crate::ids::TrackId;
use crate::media::feedback::{RtcpFeedback, FEEDBACK_SLOT};
use crate::participant::peer::{media_engine, register_audio_level};

/// Must match one of the H.264 formats the server registers.
const H264_CONSTRAINED_BASELINE: &str =
    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";

/// What a peer connection tells its owner.
pub(crate) enum PeerEvent {
    Candidate(RTCIceCandidateInit),
    State(RTCPeerConnectionState),
    Track(Arc<dyn TrackRemote>),
}

struct Handler {
    tx: mpsc::UnboundedSender<PeerEvent>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.tx.send(PeerEvent::Candidate(init));
        }
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.tx.send(PeerEvent::State(state));
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.tx.send(PeerEvent::Track(track));
    }
}

/// A peer connection with the codecs relais negotiates, bound to `bind_ip`, whose
/// events go to `tx`; `drop_every_nth_rtp` injects inbound loss (see [`super::lossy`]).
/// Returns the connection and the count of packets dropped by that fault hook.
pub(crate) async fn build_peer(
    bind_ip: IpAddr,
    drop_every_nth_rtp: Option<u64>,
    tx: mpsc::UnboundedSender<PeerEvent>,
) -> Result<(Arc<dyn PeerConnection>, Arc<AtomicU64>), ClientError> {
    let mut engine = media_engine()?;
    let registry = register_default_interceptors(Registry::new(), &mut engine)?.with(
        rtc::interceptor::Slot::from(FEEDBACK_SLOT),
        RtcpFeedback::default(),
    );
    register_audio_level(&mut engine)?;
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .build();
    let lossy = LossyRuntime::new(drop_every_nth_rtp.unwrap_or(u64::MAX));
    let dropped = lossy.dropped.clone();
    let mut builder = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .with_handler(Arc::new(Handler { tx }))
        .with_udp_addrs(vec![SocketAddr::new(bind_ip, 0)]);
    if drop_every_nth_rtp.is_some() {
        builder = builder.with_runtime(Arc::new(lossy));
    }
    let pc = builder.build().await?;
    Ok((Arc::new(pc), dropped))
}

/// Adds a track sent with `publish` to `pc`; keyframe requests for it are watched.
pub(crate) async fn add_local_track(
    pc: &Arc<dyn PeerConnection>,
    cid: String,
    publish: PublishCodec,
) -> Result<LocalTrack, ClientError> {
    add_local_layers(pc, cid, publish, &[]).await
}

/// Adds a track sent as one stream per rid in `rids` (simulcast, lowest first), or as
/// one stream when `rids` is empty.
pub(crate) async fn add_local_layers(
    pc: &Arc<dyn PeerConnection>,
    cid: String,
    publish: PublishCodec,
    rids: &[String],
) -> Result<LocalTrack, ClientError> {
    let (codec, payload_type, codec_kind) = match publish {
        PublishCodec::Opus => (
            codec(MIME_TYPE_OPUS, 48_000, 2, "minptime=10;useinbandfec=1"),
            111,
            RtpCodecKind::Audio,
        ),
        PublishCodec::Vp8 => (codec(MIME_TYPE_VP8, 90_000, 0, ""), 96, RtpCodecKind::Video),
        PublishCodec::H264 => (
            codec(MIME_TYPE_H264, 90_000, 0, H264_CONSTRAINED_BASELINE),
            125,
            RtpCodecKind::Video,
        ),
    };
    let kind = publish.kind();
    let ssrc = rand::random::<u32>().max(1);
    let layers: Vec<(String, u32)> = rids
        .iter()
        .map(|rid| (rid.clone(), rand::random::<u32>().max(1)))
        .collect();
    let streams = if layers.is_empty() {
        vec![(String::new(), ssrc)]
    } else {
        layers.clone()
    };
    let encodings = streams
        .iter()
        .map(|(rid, ssrc)| RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                rid: rid.clone(),
                ssrc: Some(*ssrc),
                ..Default::default()
            },
            codec: codec.clone(),
            ..Default::default()
        })
        .collect();
    let stream_id = format!("stream-{cid}");
    let media = MediaStreamTrack::new(
        stream_id,
        MediaStreamTrackId::from(cid.clone()),
        cid.clone(),
        codec_kind,
        encodings,
    );
    let track = Arc::new(TrackLocalStaticRTP::new(media));
    let sender = pc.add_track(track.clone()).await?;

    let keyframe_wanted = Arc::new(AtomicBool::new(false));
    let keyframe_requests = Arc::new(AtomicU64::new(0));
    let watch = watch_feedback(
        track.clone(),
        keyframe_wanted.clone(),
        keyframe_requests.clone(),
    );
    tokio::spawn(watch);
    Ok(LocalTrack {
        cid,
        kind,
        track,
        ssrc,
        payload_type,
        keyframe_wanted,
        keyframe_requests,
        simulcast: Arc::new(Simulcast {
            layers,
            pc: Arc::downgrade(pc),
            sender: sender.id(),
            mid: tokio::sync::OnceCell::new(),
        }),
    })
}

async fn watch_feedback(
    track: Arc<TrackLocalStaticRTP>,
    wanted: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) {
    while let Some(event) = track.poll().await {
        // Only PLI and FIR get here: the feedback interceptor lets nothing else through.
        if let TrackLocalEvent::OnRtcpPacket(packets) = event {
            count.fetch_add(packets.len() as u64, Ordering::Relaxed);
            wanted.store(true, Ordering::Relaxed);
        }
    }
}

/// Forwards the packets of a received track to `events` as [`ClientEvent::Rtp`],
/// until the track ends or nobody listens.
pub(crate) async fn read_track(
    remote: Arc<dyn TrackRemote>,
    track_id: TrackId,
    events: mpsc::UnboundedSender<ClientEvent>,
) {
    while let Some(event) = remote.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => {
                let rtp = ClientEvent::Rtp {
                    track_id: track_id.clone(),
                    packet,
                };
                if events.send(rtp).is_err() {
                    return;
                }
            }
            TrackRemoteEvent::OnEnded => return,
            _ => {}
        }
    }
}

fn codec(mime: &str, clock_rate: u32, channels: u16, fmtp: &str) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: mime.to_owned(),
        clock_rate,
        channels,
        sdp_fmtp_line: fmtp.to_owned(),
        rtcp_feedback: Vec::new(),
    }
}
