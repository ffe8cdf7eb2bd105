//! The signaling protocol: every JSON message that crosses the `/rtc` socket.
//!
//! One text frame carries one JSON object with a `type` field naming the message;
//! the other fields sit beside it. Both the server and the Rust client use these
//! types, so the protocol cannot drift between them. `docs/protocol.md` is the
//! contract for third-party clients and must change together with this file.

use serde::{Deserialize, Serialize};

use crate::ids::{ParticipantId, TrackId};

/// Version of the protocol described by these types.
pub const PROTOCOL_VERSION: u32 = 1;

/// What a client sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// First message on a new socket.
    Join {
        /// Subscribe to every track of the room as it appears (default true).
        #[serde(default = "default_true")]
        auto_subscribe: bool,
    },
    /// Describes a track the client is about to publish; sent before the offer.
    PublishTrack {
        /// The `MediaStreamTrack.id` the client's SDP carries in `a=msid`.
        cid: String,
        kind: TrackKind,
        #[serde(default)]
        source: TrackSource,
        #[serde(default)]
        name: String,
        #[serde(default)]
        muted: bool,
        /// Simulcast: the encodings the client sends, lowest first; empty for one.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        layers: Vec<LayerInfo>,
    },
    /// The client stops publishing a track (it also removes it from its SDP).
    UnpublishTrack {
        track_id: TrackId,
    },
    /// A client-initiated negotiation.
    Offer {
        sdp: String,
    },
    /// The answer to a server `offer`.
    Answer {
        sdp: String,
    },
    /// A trickled ICE candidate; `candidate: ""` or absent ends gathering.
    Candidate(IceCandidate),
    Subscribe {
        track_ids: Vec<TrackId>,
    },
    Unsubscribe {
        track_ids: Vec<TrackId>,
    },
    Mute {
        track_id: TrackId,
        muted: bool,
    },
    Ping {
        #[serde(default)]
        id: u64,
    },
    /// The participants whose cameras this client wants whatever last-N says (a
    /// pinned or spotlighted tile); replaces the previous list, `[]` unpins all.
    Pin {
        participant_ids: Vec<ParticipantId>,
    },
    /// The video tracks the client does not show now (a tile scrolled away, a
    /// minimised window); replaces the previous list, `[]` shows all again.
    Hide {
        track_ids: Vec<TrackId>,
    },
    /// The size, in device pixels, at which the client shows a video track it
    /// receives: of a simulcast track it is sent the largest layer that fits.
    TrackSize {
        track_id: TrackId,
        width: u32,
        height: u32,
    },
    Leave,
}

/// One simulcast encoding a client sends: its `rid` and its picture size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    pub rid: String,
    pub width: u32,
    pub height: u32,
}

/// What the server sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Joined {
        protocol: u32,
        room: String,
        node: String,
        participant: ParticipantInfo,
        /// Everyone else already in the room, with their tracks.
        participants: Vec<ParticipantInfo>,
        limits: Limits,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        participant_id: ParticipantId,
        reason: LeaveReason,
    },
    /// A track is available in the room (sent to everyone, publisher included).
    TrackPublished {
        track: TrackInfo,
    },
    TrackUnpublished {
        track_id: TrackId,
        participant_id: ParticipantId,
    },
    TrackMuted {
        track_id: TrackId,
        muted: bool,
    },
    /// A subscription is live: RTP for `track_id` arrives on transceiver `mid`.
    Subscribed {
        track_id: TrackId,
        mid: String,
    },
    Unsubscribed {
        track_id: TrackId,
    },
    /// A server-initiated negotiation (new subscriptions, removed tracks).
    Offer {
        sdp: String,
    },
    /// The answer to a client `offer`.
    Answer {
        sdp: String,
    },
    Candidate(IceCandidate),
    Pong {
        id: u64,
    },
    Error(ErrorBody),
    /// The server is closing the session; the socket closes after this.
    Leave {
        reason: LeaveReason,
    },
    /// Another node serves this room: reconnect there, with the same room and
    /// token plus `redirected=1` and `epoch` (when given). The socket closes after.
    Redirect {
        url: String,
        node: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<i64>,
    },
    /// Who speaks, from the audio levels the publishers send: the dominant speaker
    /// (kept through silence) and everyone speaking now, loudest first. Sent on
    /// every change, and once on joining a room where someone has spoken.
    SpeakersChanged {
        dominant: Option<ParticipantId>,
        speakers: Vec<ParticipantId>,
    },
    /// The server stopped (`paused: true`, with the reason) or resumed forwarding a
    /// subscribed track. A resumed video starts again at a keyframe.
    TrackPaused {
        track_id: TrackId,
        paused: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<PauseCause>,
    },
}

/// Why a subscribed track is not forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseCause {
    /// The client said it does not show it (`hide`).
    Hidden,
    /// Last-N: the publisher is not among the recent speakers, and not pinned.
    LastN,
    /// Not even its lowest layer fits the client's downlink.
    Bandwidth,
}

/// A trickled ICE candidate, shaped like the browser's `RTCIceCandidateInit`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    #[serde(default)]
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(
        default,
        rename = "sdpMLineIndex",
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub id: ParticipantId,
    pub identity: String,
    pub name: String,
    pub tracks: Vec<TrackInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    pub id: TrackId,
    pub participant_id: ParticipantId,
    /// The publisher's own id for the track (`cid` of `publish_track`).
    pub cid: String,
    pub kind: TrackKind,
    pub source: TrackSource,
    pub name: String,
    /// Codec MIME type, e.g. `video/VP8`.
    pub mime_type: String,
    pub muted: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    Audio,
    Video,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackSource {
    #[default]
    Unknown,
    Camera,
    Microphone,
    ScreenShare,
    ScreenShareAudio,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The participant asked to leave.
    ClientLeave,
    /// The socket or the peer connection went away without a `leave`.
    Disconnected,
    /// The same identity joined again; the older session is closed.
    DuplicateIdentity,
    /// The client broke the protocol badly enough to be dropped.
    ProtocolViolation,
    /// The node is shutting down.
    ServerShutdown,
    /// The room is at its participant limit (sent after a `room_full` error).
    RoomFull,
    /// The room was closed.
    RoomClosed,
    /// The room moves to another node: reconnect at once to the same URL.
    Migrate,
    /// An operator removed this participant.
    Removed,
}

/// Limits the server enforces on this socket, announced in `joined`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
}

/// A typed error reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// The `type` of the client message that caused it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

/// Stable error codes; clients switch on these, never on `message`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame is not a JSON object of a known shape.
    BadJson,
    /// The `type` names no message of this protocol.
    UnknownType,
    /// The frame is larger than `limits.max_message_bytes`; it was not read.
    MessageTooLarge,
    /// More messages than the rate limit allows; this one was dropped.
    RateLimited,
    /// A message other than `join` arrived before `join`.
    NotJoined,
    /// `join` arrived a second time on the same socket.
    AlreadyJoined,
    /// The SDP could not be parsed or applied.
    BadSdp,
    /// An ICE candidate could not be parsed or applied.
    BadCandidate,
    /// The client's offer crossed a server offer; answer the server, then re-offer.
    NegotiationGlare,
    /// An `answer` arrived with no server offer outstanding.
    NoPendingOffer,
    /// The token does not grant this action.
    PermissionDenied,
    UnknownTrack,
    /// The room is at `room.max_participants`.
    RoomFull,
    /// Something failed on the server; the session goes on.
    Internal,
    /// The node cannot reach the cluster store; retry the join shortly.
    ClusterUnavailable,
    /// The node lost its cluster lease and admits nobody; retry shortly.
    NodeFenced,
    /// No node can take the room right now (all draining or unreachable).
    NoNodeAvailable,
    /// The join carried an epoch newer than this node's view of the room.
    StaleEpoch,
}

impl ErrorCode {
    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::UnknownType => "unknown_type",
            Self::MessageTooLarge => "message_too_large",
            Self::RateLimited => "rate_limited",
            Self::NotJoined => "not_joined",
            Self::AlreadyJoined => "already_joined",
            Self::BadSdp => "bad_sdp",
            Self::BadCandidate => "bad_candidate",
            Self::NegotiationGlare => "negotiation_glare",
            Self::NoPendingOffer => "no_pending_offer",
            Self::PermissionDenied => "permission_denied",
            Self::UnknownTrack => "unknown_track",
            Self::RoomFull => "room_full",
            Self::Internal => "internal",
            Self::ClusterUnavailable => "cluster_unavailable",
            Self::NodeFenced => "node_fenced",
            Self::NoNodeAvailable => "no_node_available",
            Self::StaleEpoch => "stale_epoch",
        }
    }
}

impl ErrorBody {
    /// A join refused with this error may succeed if tried again shortly.
    pub fn retryable(&self) -> bool {
        matches!(
            self.code,
            ErrorCode::ClusterUnavailable
                | ErrorCode::NodeFenced
                | ErrorCode::NoNodeAvailable
                | ErrorCode::StaleEpoch
                | ErrorCode::Internal
        )
    }
}

impl ServerMessage {
    pub fn error(code: ErrorCode, message: impl Into<String>, request: Option<&str>) -> Self {
        Self::Error(ErrorBody {
            code,
            message: message.into(),
            request: request.map(str::to_owned),
        })
    }

    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail: no maps with non-string keys.
        serde_json::to_string(self).expect("server messages serialize")
    }
}

/// Why a text frame could not be read as a [`ClientMessage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub code: ErrorCode,
    pub message: String,
    /// The `type` the frame claimed, if it had one.
    pub request: Option<String>,
}

/// Parses one text frame, telling a malformed frame from an unknown `type`.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ParseError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ParseError {
        code: ErrorCode::BadJson,
        message: format!("not valid JSON: {e}"),
        request: None,
    })?;
    let Some(kind) = value
        .get("type")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
    else {
        return Err(ParseError {
            code: ErrorCode::BadJson,
            message: "expected a JSON object with a string field `type`".into(),
            request: None,
        });
    };
    if !CLIENT_TYPES.contains(&kind.as_str()) {
        return Err(ParseError {
            code: ErrorCode::UnknownType,
            message: format!("unknown message type `{kind}`"),
            request: Some(kind),
        });
    }
    serde_json::from_value(value).map_err(|e| ParseError {
        code: ErrorCode::BadJson,
        message: format!("malformed `{kind}`: {e}"),
        request: Some(kind),
    })
}

/// Every `type` a client may send.
pub const CLIENT_TYPES: &[&str] = &[
    "join",
    "publish_track",
    "unpublish_track",
    "offer",
    "answer",
    "candidate",
    "subscribe",
    "unsubscribe",
    "mute",
    "ping",
    "pin",
    "hide",
    "track_size",
    "leave",
];

fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_round_trip() {
        let text = r#"{"type":"mute","track_id":"TR_1","muted":true}"#;
        let msg = parse_client_message(text).unwrap();
        assert_eq!(
            msg,
            ClientMessage::Mute {
                track_id: TrackId::from_string("TR_1".into()),
                muted: true
            }
        );
        let back = serde_json::to_string(&msg).unwrap();
        assert_eq!(parse_client_message(&back).unwrap(), msg);
    }

    #[test]
    fn join_defaults_to_auto_subscribe() {
        let msg = parse_client_message(r#"{"type":"join"}"#).unwrap();
        assert_eq!(
            msg,
            ClientMessage::Join {
                auto_subscribe: true
            }
        );
    }

    #[test]
    fn candidate_uses_browser_field_names() {
        let text = r#"{"type":"candidate","candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host",
            "sdpMid":"0","sdpMLineIndex":0}"#;
        let ClientMessage::Candidate(c) = parse_client_message(text).unwrap() else {
            panic!("expected a candidate");
        };
        assert_eq!(c.sdp_mid.as_deref(), Some("0"));
        assert_eq!(c.sdp_mline_index, Some(0));
    }

    #[test]
    fn errors_tell_bad_json_from_unknown_type() {
        assert_eq!(
            parse_client_message("{nope").unwrap_err().code,
            ErrorCode::BadJson
        );
        assert_eq!(
            parse_client_message("[1,2]").unwrap_err().code,
            ErrorCode::BadJson
        );
        let unknown = parse_client_message(r#"{"type":"dance"}"#).unwrap_err();
        assert_eq!(unknown.code, ErrorCode::UnknownType);
        assert_eq!(unknown.request.as_deref(), Some("dance"));
        let missing = parse_client_message(r#"{"type":"mute"}"#).unwrap_err();
        assert_eq!(missing.code, ErrorCode::BadJson);
        assert_eq!(missing.request.as_deref(), Some("mute"));
    }

    #[test]
    fn every_client_type_is_listed() {
        let samples = [
            ClientMessage::Join {
                auto_subscribe: false,
            },
            ClientMessage::Leave,
            ClientMessage::Ping { id: 3 },
            ClientMessage::Offer { sdp: "v=0".into() },
            ClientMessage::Pin {
                participant_ids: Vec::new(),
            },
            ClientMessage::Hide {
                track_ids: Vec::new(),
            },
            ClientMessage::TrackSize {
                track_id: TrackId::from_string("TR_x".into()),
                width: 640,
                height: 360,
            },
        ];
        for msg in samples {
            let value = serde_json::to_value(&msg).unwrap();
            let kind = value["type"].as_str().unwrap().to_owned();
            assert!(CLIENT_TYPES.contains(&kind.as_str()), "{kind}");
        }
    }

    #[test]
    fn error_codes_serialize_to_their_names() {
        let msg = ServerMessage::error(ErrorCode::RateLimited, "slow down", Some("mute"));
        let value: serde_json::Value = serde_json::from_str(&msg.to_json()).unwrap();
        assert_eq!(value["type"], "error");
        assert_eq!(value["code"], ErrorCode::RateLimited.as_str());
        assert_eq!(value["request"], "mute");
    }

    /// Mutated and random frames never panic the parser; they are refused or accepted.
    #[test]
    fn mutated_frames_never_panic() {
        let seeds = [
            r#"{"type":"join","auto_subscribe":false}"#,
            r#"{"type":"offer","sdp":"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"}"#,
            concat!(
                r#"{"type":"candidate","candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","#,
                r#""sdpMLineIndex":0}"#
            ),
            r#"{"type":"subscribe","track_ids":["TR_a","TR_b"]}"#,
            r#"{"type":"publish_track","cid":"c","kind":"video","source":"camera"}"#,
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let mut bytes = seeds[round % seeds.len()].as_bytes().to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % bytes.len().max(1);
                match next() % 3 {
                    0 => bytes[at] = next() as u8,
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, next() as u8),
                }
                if bytes.is_empty() {
                    bytes.push(b'{');
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Err(e) = parse_client_message(&text) {
                assert!(!e.message.is_empty());
            }
        }
    }
}
