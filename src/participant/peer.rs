//! Building a participant's peer connection and turning its events into messages.
//!
//! relais negotiates a fixed codec set (Opus; VP8 and H.264) so that every
//! published track can be forwarded to every subscriber without transcoding. The
//! event handler does one thing per event: wrap it in a [`PeerEvent`] for the
//! participant actor that owns the connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use actix::Recipient;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::Slot;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8,
};
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateType,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, Registry, SettingEngineBuilder,
};

use crate::config::MediaConfig;
use crate::media::feedback::{DownlinkEstimate, RtcpFeedback, FEEDBACK_SLOT};
use crate::media::layer_acks::{LayerAcks, LAYER_ACKS_SLOT};
use crate::metrics::rtcp::{RtcpTap, RTCP_TAP_SLOT};
use crate::metrics::Metrics;
use crate::signal::protocol::IceCandidate;

/// What the peer connection tells its participant.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub enum PeerEvent {
    /// A local ICE candidate to trickle to the client.
    Candidate(IceCandidate),
    State(RTCPeerConnectionState),
    /// The client started sending a track.
    Track(Arc<dyn TrackRemote>),
}

struct Handler {
    participant: Recipient<PeerEvent>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        // A candidate that cannot be written as SDP is useless to the client.
        let Ok(init) = event.candidate.to_json() else {
            return;
        };
        self.participant.do_send(PeerEvent::Candidate(IceCandidate {
            candidate: init.candidate,
            sdp_mid: None,
            sdp_mline_index: Some(0),
        }));
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.participant.do_send(PeerEvent::State(state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        self.participant.do_send(PeerEvent::Track(track));
    }
}

/// Builds peer connections for one node: codecs, interceptors and UDP ports.
#[derive(Debug)]
pub struct PeerFactory {
    media: MediaConfig,
    /// Round-robin cursor over the configured UDP port range.
    next_port: AtomicU32,
    /// Every connection records its RTCP through a tap of its own.
    metrics: Arc<Metrics>,
}

impl PeerFactory {
    pub fn new(media: MediaConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            media,
            next_port: AtomicU32::new(0),
            metrics,
        }
    }

    /// A new peer connection whose events go to `participant`, and whose remote end's
    /// estimates of its downlink go to `estimate`.
    pub async fn build(
        &self,
        participant: Recipient<PeerEvent>,
        estimate: Arc<DownlinkEstimate>,
    ) -> Result<Arc<dyn PeerConnection>, webrtc::error::Error> {
        let handler = Arc::new(Handler { participant });
        let mut last_error = None;
        for addr in self.candidate_addrs() {
            match self.build_on(addr, handler.clone(), estimate.clone()).await {
                Ok(pc) => return Ok(pc),
                // The port may be held by another connection or process: try the next.
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("no UDP port to bind").into()))
    }

    /// Addresses to try binding, in order: one per port of the range, from the cursor.
    ///
    /// One socket per peer connection: the crate has no UDP multiplexing yet, so the
    /// range must be as wide as the number of participants a node serves.
    fn candidate_addrs(&self) -> Vec<SocketAddr> {
        let (min, max) = (self.media.udp_port_min, self.media.udp_port_max);
        if min == 0 {
            return vec![SocketAddr::new(self.media.bind_ip, 0)];
        }
        let span = u32::from(max - min) + 1;
        let start = self.next_port.fetch_add(1, Ordering::Relaxed) % span;
        (0..span.min(64))
            .map(|i| min as u32 + (start + i) % span)
            .map(|port| SocketAddr::new(self.media.bind_ip, port as u16))
            .collect()
    }

    async fn build_on(
        &self,
        addr: SocketAddr,
        handler: Arc<Handler>,
        estimate: Arc<DownlinkEstimate>,
    ) -> Result<Arc<dyn PeerConnection>, webrtc::error::Error> {
        let mut media_engine = media_engine()?;
        let registry = register_default_interceptors(Registry::new(), &mut media_engine)?;
        register_audio_level(&mut media_engine)?;
        let registry = registry
            .with(Slot::from(FEEDBACK_SLOT), RtcpFeedback::new(estimate))
            .with(Slot::from(LAYER_ACKS_SLOT), LayerAcks::default())
            .with(
                Slot::from(RTCP_TAP_SLOT),
                RtcpTap::new(self.metrics.clone()),
            );
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_setting_engine(self.setting_engine())
            .with_handler(handler)
            .with_udp_addrs(vec![addr])
            .build()
            .await?;
        Ok(Arc::new(pc))
    }

    fn setting_engine(&self) -> webrtc::peer_connection::SettingEngine {
        // mDNS would open a multicast socket and hide the host address clients need.
        // When answering, stay the DTLS server: after a server offer the client chose
        // to be the DTLS client, and a later answer must not claim that role too.
        let builder = SettingEngineBuilder::new()
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_answering_dtls_role(RTCDtlsRole::Server);
        match self.media.public_ip {
            Some(ip) => builder
                .with_nat_1to1_ips(vec![ip.to_string()], RTCIceCandidateType::Host)
                .build(),
            None => builder.build(),
        }
    }

    pub fn bind_ip(&self) -> IpAddr {
        self.media.bind_ip
    }

    /// Whether subscribers' downlink estimates limit what they are sent.
    pub fn adapts_to_bandwidth(&self) -> bool {
        self.media.bandwidth_adaptation
    }

    /// Whether video whose lowest layer does not fit a subscriber's downlink pauses.
    pub fn pauses_for_bandwidth(&self) -> bool {
        self.media.pause_for_bandwidth
    }
}

/// The codecs relais forwards. No RTX: publishers retransmit in the original stream.
///
/// The header extensions come from the crate's defaults (mid 1, rid 2, rrid 3,
/// transport-cc 4). When relais offers first these ids become the bundle's, and
/// Chrome's later offers, which use its own default ids, clash with them; browser
/// clients renumber their offers today. Registering Chrome's default ids here would
/// remove that burden.
pub fn media_engine() -> Result<MediaEngine, webrtc::error::Error> {
    let mut engine = MediaEngine::default();
    let opus = codec(
        MIME_TYPE_OPUS,
        48_000,
        2,
        "minptime=10;useinbandfec=1",
        vec![],
        111,
    );
    engine.register_codec(opus, RtpCodecKind::Audio)?;

    let videos = [
        (MIME_TYPE_VP8, "", 96),
        (MIME_TYPE_H264, H264_FMTP_BASELINE, 102),
        (MIME_TYPE_H264, H264_FMTP_CONSTRAINED, 125),
    ];
    for (mime, fmtp, pt) in videos {
        let params = codec(mime, 90_000, 0, fmtp, video_feedback(), pt);
        engine.register_codec(params, RtpCodecKind::Video)?;
    }
    Ok(engine)
}

/// The URI of the audio level header extension (RFC 6464).
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

/// Offers and accepts the audio level extension on audio, which speaker detection
/// reads. Registered after the crate's defaults, so their ids stay what they were.
pub fn register_audio_level(engine: &mut MediaEngine) -> Result<(), webrtc::error::Error> {
    let extension = RTCRtpHeaderExtensionCapability {
        uri: AUDIO_LEVEL_URI.to_owned(),
    };
    engine.register_header_extension(extension, RtpCodecKind::Audio, None)?;
    Ok(())
}

/// The id a session description gives the audio level extension. A bundle uses one
/// id per extension, so the first `a=extmap` line for it holds for every m-line.
pub fn audio_level_id(sdp: &str) -> Option<u8> {
    sdp.lines().find_map(|line| {
        let rest = line.trim_end().strip_prefix("a=extmap:")?;
        let (id, rest) = rest.split_once(' ')?;
        let uri = rest.split_whitespace().next()?;
        // The id may carry a direction: `a=extmap:5/recvonly URI`.
        let id = id.split('/').next()?.parse::<u8>().ok()?;
        (uri == AUDIO_LEVEL_URI && id != 0).then_some(id)
    })
}

const H264_FMTP_BASELINE: &str =
    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f";
const H264_FMTP_CONSTRAINED: &str =
    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";

fn codec(
    mime: &str,
    clock_rate: u32,
    channels: u16,
    fmtp: &str,
    rtcp_feedback: Vec<RTCPFeedback>,
    payload_type: u8,
) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate,
            channels,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback,
        },
        payload_type,
    }
}

pub(crate) fn video_feedback() -> Vec<RTCPFeedback> {
    [
        ("nack", ""),
        ("nack", "pli"),
        ("ccm", "fir"),
        ("goog-remb", ""),
    ]
    .into_iter()
    .map(|(typ, parameter)| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audio_level_id_is_read_from_the_first_extmap_that_names_it() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
            a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
            a=extmap:5/sendrecv urn:ietf:params:rtp-hdrext:ssrc-audio-level vad=on\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
            a=extmap:5 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n";
        assert_eq!(audio_level_id(sdp), Some(5));
        let without = "v=0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n";
        assert_eq!(audio_level_id(without), None);
    }

    #[test]
    fn malformed_extmap_lines_give_no_id() {
        for line in [
            "a=extmap:x urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "a=extmap:300 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "a=extmap:0 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "a=extmap:3",
            "a=extmap:",
        ] {
            assert_eq!(audio_level_id(line), None, "{line}");
        }
    }
}
