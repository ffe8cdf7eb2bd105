//! What travels on a cascade link: control messages on one stream, media in datagrams.
//!
//! Control frames are a 4-byte big-endian length and a JSON [`Control`] message.
//! A media datagram is one version byte, an 8-byte channel number chosen by the
//! *receiving* node when it asked for the track, and one RTP packet as sent on the
//! wire. Anything else is refused by the decoders below, never trusted.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::cluster::Epoch;
use crate::ids::{ParticipantId, TrackId};
use crate::signal::protocol::{ParticipantInfo, TrackInfo};

/// Version byte of media datagrams.
pub const MEDIA_VERSION: u8 = 1;
/// Bytes before the RTP packet in a media datagram.
pub const MEDIA_HEADER: usize = 9;
/// The RTP header extension id under which a media datagram of an audio track
/// carries the publisher's audio level (RFC 6464): links have no SDP, so the id is
/// fixed here. Extensions of the publisher's own connection never cross a link.
pub const AUDIO_LEVEL_ID: u8 = 1;
/// Largest control frame accepted.
pub const MAX_CONTROL_FRAME: usize = 1 << 20;

/// The codec of a track, enough for a subscriber elsewhere to negotiate it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodecInfo {
    pub mime_type: String,
    pub clock_rate: u32,
    pub channels: u16,
    pub sdp_fmtp_line: String,
}

/// A track published on the sending node, with its codec and, of a simulcast track,
/// the `[width, height]` of each layer, lowest first (one of them crosses at a time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteTrack {
    pub info: TrackInfo,
    pub codec: CodecInfo,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<[u32; 2]>,
}

/// One control message. Every message about a room carries the room's epoch as
/// the sender knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// The first frame each side sends: who it is, and proof that it holds the
    /// cluster secret, bound to this very TLS session.
    Hello { node: String, proof: String },
    /// The sender's shard of `room`: its own participants and their tracks.
    /// `reply` asks the receiver to answer with its own shard.
    Shard {
        room: String,
        epoch: Epoch,
        participants: Vec<ParticipantInfo>,
        tracks: Vec<RemoteTrack>,
        reply: bool,
    },
    /// The sender has no participant left in `room`.
    ShardClosed { room: String, epoch: Epoch },
    /// Send the media of `track` on `channel`, until `unsubscribe`.
    Subscribe {
        room: String,
        epoch: Epoch,
        track: TrackId,
        channel: u64,
    },
    Unsubscribe {
        room: String,
        track: TrackId,
        channel: u64,
    },
    /// A subscriber on the sender's side needs a keyframe of `track`.
    Keyframe { room: String, track: TrackId },
    /// The largest tile, `[width, height]` in pixels, at which subscribers on the
    /// sender's side show `track` (None: one wants it as large as it comes): of a
    /// simulcast track, the layer the link carries.
    Size {
        room: String,
        track: TrackId,
        shown: Option<[u32; 2]>,
    },
    /// What each layer of the sender's simulcast `track` costs, in bits per second,
    /// lowest first, as its origin measures them: the receiver's subscribers fit
    /// layers into their downlinks by these, although only one layer crosses.
    Rates {
        room: String,
        track: TrackId,
        bps: Vec<u64>,
    },
    /// An operator removed `participant`; its node ends the session.
    Remove {
        room: String,
        epoch: Epoch,
        participant: ParticipantId,
    },
}

impl Control {
    /// The room a message is about, if any.
    pub fn room(&self) -> Option<&str> {
        match self {
            Control::Hello { .. } => None,
            Control::Shard { room, .. }
            | Control::ShardClosed { room, .. }
            | Control::Subscribe { room, .. }
            | Control::Unsubscribe { room, .. }
            | Control::Keyframe { room, .. }
            | Control::Size { room, .. }
            | Control::Rates { room, .. }
            | Control::Remove { room, .. } => Some(room),
        }
    }
}

/// Encodes a control frame: length prefix and JSON.
pub fn encode_control(message: &Control) -> Bytes {
    // Serializing these plain types cannot fail.
    let json = serde_json::to_vec(message).unwrap_or_default();
    let mut frame = BytesMut::with_capacity(4 + json.len());
    frame.put_u32(json.len() as u32);
    frame.put_slice(&json);
    frame.freeze()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("control frame of {0} bytes is too large")]
    TooLarge(usize),
    #[error("control frame is not a known message: {0}")]
    BadControl(String),
    #[error("media datagram is too short or of an unknown version")]
    BadDatagram,
}

/// The length announced by a control frame's 4-byte prefix, if acceptable.
pub fn control_length(prefix: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_CONTROL_FRAME {
        return Err(WireError::TooLarge(len));
    }
    Ok(len)
}

pub fn decode_control(body: &[u8]) -> Result<Control, WireError> {
    serde_json::from_slice(body).map_err(|e| WireError::BadControl(e.to_string()))
}

/// Encodes a media datagram.
pub fn encode_media(channel: u64, rtp: &[u8]) -> Bytes {
    let mut datagram = BytesMut::with_capacity(MEDIA_HEADER + rtp.len());
    datagram.put_u8(MEDIA_VERSION);
    datagram.put_u64(channel);
    datagram.put_slice(rtp);
    datagram.freeze()
}

/// Splits a media datagram into its channel and RTP bytes.
pub fn decode_media(datagram: &Bytes) -> Result<(u64, Bytes), WireError> {
    if datagram.len() <= MEDIA_HEADER + 12 || datagram[0] != MEDIA_VERSION {
        return Err(WireError::BadDatagram);
    }
    let mut channel = [0u8; 8];
    channel.copy_from_slice(&datagram[1..MEDIA_HEADER]);
    Ok((u64::from_be_bytes(channel), datagram.slice(MEDIA_HEADER..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_frames_round_trip() {
        let message = Control::Subscribe {
            room: "r".into(),
            epoch: 7,
            track: TrackId::from_string("TR_a".to_owned()),
            channel: 3,
        };
        let frame = encode_control(&message);
        let len = control_length(frame[..4].try_into().expect("prefix")).expect("length");
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode_control(&frame[4..]), Ok(message));
    }

    #[test]
    fn layer_rates_and_sizes_round_trip() {
        let message = Control::Rates {
            room: "r".into(),
            track: TrackId::from_string("TR_a".to_owned()),
            bps: vec![105_000, 345_000, 905_000],
        };
        let frame = encode_control(&message);
        assert_eq!(decode_control(&frame[4..]), Ok(message));
        // A track of one stream names no layers, and a node that names none is
        // understood.
        let track = r#"{"info":{"id":"TR_a","participant_id":"PA_b","cid":"c","kind":"video",
            "source":"camera","name":"","mime_type":"video/VP8","muted":false},
            "codec":{"mime_type":"video/VP8","clock_rate":90000,"channels":0,
            "sdp_fmtp_line":""}}"#;
        let track: RemoteTrack = serde_json::from_str(track).expect("a track without layers");
        assert!(track.layers.is_empty());
        assert!(!serde_json::to_string(&track)
            .expect("json")
            .contains("layers"));
    }

    #[test]
    fn refuses_oversized_and_unknown_control() {
        assert!(control_length((MAX_CONTROL_FRAME as u32 + 1).to_be_bytes()).is_err());
        assert!(decode_control(br#"{"type":"launch"}"#).is_err());
        assert!(decode_control(b"\xff\x00").is_err());
    }

    #[test]
    fn media_datagrams_round_trip_and_garbage_is_refused() {
        let rtp = [0x80u8; 20];
        let datagram = encode_media(42, &rtp);
        let (channel, body) = decode_media(&datagram).expect("valid");
        assert_eq!(channel, 42);
        assert_eq!(&body[..], &rtp[..]);
        assert!(decode_media(&Bytes::from_static(b"short")).is_err());
        let mut wrong = datagram.to_vec();
        wrong[0] = 9;
        assert!(decode_media(&Bytes::from(wrong)).is_err());
    }
}
