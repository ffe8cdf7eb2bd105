//! A Rust client of the relais signaling protocol, built on the `webrtc` crate.
//!
//! It speaks only what `docs/protocol.md` documents, so the tests that use it
//! check the protocol as a third-party client would see it. A driver task owns the
//! socket and the peer connection; it answers server offers by itself and behaves
//! as the polite peer when offers cross (rolls back its own, answers, re-offers).
//! The caller publishes tracks, writes RTP and reads events and received packets.

mod driver;
pub mod lossy;
pub(crate) mod peer;

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::rtp::extension::HeaderExtension;
use rtc::rtp::packet::Packet;
const SDES_MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
const SDES_RTP_STREAM_ID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout_at, Instant};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;

use crate::ids::TrackId;
use crate::signal::protocol::{ClientMessage, LayerInfo, ServerMessage, TrackKind, TrackSource};

/// Redirects followed before `connect` gives up.
pub const MAX_REDIRECTS: usize = 4;
/// How long `connect` waits for the answer to `join` before handing the client over.
const JOIN_ANSWER_WAIT: Duration = Duration::from_secs(10);

/// First and longest pause between attempts of [`Client::connect_retrying`].
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How to reach and join a node.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Base URL of the node, e.g. `ws://127.0.0.1:7880`.
    pub url: String,
    pub room: String,
    pub token: String,
    pub auto_subscribe: bool,
    /// Local address for the client's media socket.
    pub bind_ip: IpAddr,
    /// Fault injection: drop every n-th incoming RTP packet (see [`lossy`]).
    pub drop_every_nth_rtp: Option<u64>,
}

/// Something the client observed.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    Server(ServerMessage),
    /// An RTP packet of a subscribed track (`track_id` from the stream's `a=msid`).
    Rtp {
        track_id: TrackId,
        packet: Packet,
    },
    /// The peer connection's state changed.
    PeerState(String),
    /// The socket closed.
    Closed,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("the server refused the socket with HTTP {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::error::Error),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("the client has stopped")]
    Stopped,
    #[error("the track has no layer {0}")]
    NoSuchLayer(usize),
    #[error("the track has not been negotiated yet")]
    NotNegotiated,
}

pub(crate) enum Command {
    Send(ClientMessage),
    /// Sends text as is, for tests of malformed input.
    SendRaw(String),
    Publish {
        cid: String,
        codec: PublishCodec,
        source: TrackSource,
        /// Simulcast layers, lowest first; empty for one stream.
        layers: Vec<LayerInfo>,
        reply: oneshot::Sender<Result<LocalTrack, ClientError>>,
    },
    /// RTCP feedback about a received track, as a subscriber's stack would send it.
    Feedback {
        track_id: TrackId,
        feedback: Feedback,
    },
    Close,
}

/// Feedback a subscriber sends about a track it receives.
#[derive(Debug, Clone)]
pub enum Feedback {
    /// Picture loss: asks for a keyframe.
    Pli,
    /// Negative acknowledgement of these sequence numbers (as received).
    Nack(Vec<u16>),
    /// The subscriber's estimate of its downlink (REMB), in bits per second.
    Remb(u64),
}

/// The codec a published track is sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishCodec {
    Opus,
    Vp8,
    /// Constrained baseline, packetization mode 1.
    H264,
}

impl PublishCodec {
    pub fn kind(self) -> TrackKind {
        match self {
            Self::Opus => TrackKind::Audio,
            Self::Vp8 | Self::H264 => TrackKind::Video,
        }
    }
}

/// A connected client.
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<ClientEvent>,
    /// Incoming RTP packets dropped by fault injection.
    dropped: Arc<AtomicU64>,
    /// Events read while `connect` waited for the answer to `join`.
    pending: VecDeque<ClientEvent>,
}

/// A track this client publishes.
#[derive(Clone)]
pub struct LocalTrack {
    pub cid: String,
    pub kind: TrackKind,
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload_type: u8,
    /// Set when the server asked for a keyframe; cleared by `take_keyframe_request`.
    keyframe_wanted: Arc<AtomicBool>,
    /// Keyframe requests received from the server, ever.
    keyframe_requests: Arc<AtomicU64>,
    /// The layers of a simulcast track; none for a track sent as one stream.
    simulcast: Arc<Simulcast>,
}

/// What writing the layers of a simulcast track takes: each layer's rid and SSRC, and
/// the transceiver's mid, which every packet carries so that the server can tell a
/// new layer's stream apart (as browsers do).
pub(crate) struct Simulcast {
    pub(crate) layers: Vec<(String, u32)>,
    pub(crate) pc: std::sync::Weak<dyn webrtc::peer_connection::PeerConnection>,
    pub(crate) sender: rtc::rtp_transceiver::RTCRtpSenderId,
    /// Known once the connection has negotiated the track.
    pub(crate) mid: tokio::sync::OnceCell<String>,
}

impl Simulcast {
    /// The transceiver's mid, once negotiated.
    async fn mid(&self) -> Option<String> {
        if let Some(mid) = self.mid.get() {
            return Some(mid.clone());
        }
        let pc = self.pc.upgrade()?;
        for transceiver in pc.get_transceivers().await {
            let Ok(Some(sender)) = transceiver.sender().await else {
                continue;
            };
            if sender.id() == self.sender {
                let mid = transceiver.mid().await.ok().flatten()?;
                return Some(self.mid.get_or_init(|| async { mid }).await.clone());
            }
        }
        None
    }
}

/// An SDES item carried as a header extension (mid, rid): the text, as is.
struct SdesExtension(Vec<u8>);

impl rtc::shared::marshal::MarshalSize for SdesExtension {
    fn marshal_size(&self) -> usize {
        self.0.len()
    }
}

impl rtc::shared::marshal::Marshal for SdesExtension {
    fn marshal_to(&self, buf: &mut [u8]) -> rtc::shared::error::Result<usize> {
        let len = self.0.len();
        if buf.len() < len {
            return Err(rtc::shared::error::Error::ErrBufferShort);
        }
        buf[..len].copy_from_slice(&self.0);
        Ok(len)
    }
}

fn sdes(uri: &'static str, text: &str) -> HeaderExtension {
    HeaderExtension::Custom {
        uri: uri.into(),
        extension: Box::new(SdesExtension(text.as_bytes().to_vec())),
    }
}

impl LocalTrack {
    /// Writes one packet; SSRC and payload type are set to this track's own.
    pub async fn write(&self, mut packet: Packet) -> Result<(), ClientError> {
        packet.header.ssrc = self.ssrc;
        packet.header.payload_type = self.payload_type;
        self.track
            .write_rtp(packet)
            .await
            .map_err(ClientError::from)
    }

    /// Writes one audio packet carrying an audio level (RFC 6464) of -`dbov` dBov,
    /// under the id the connection negotiated for the extension.
    pub async fn write_with_level(&self, mut packet: Packet, dbov: u8) -> Result<(), ClientError> {
        packet.header.ssrc = self.ssrc;
        packet.header.payload_type = self.payload_type;
        let level = AudioLevelExtension {
            level: dbov.min(127),
            voice: dbov < 127,
        };
        self.track
            .write_rtp_with_extensions(packet, &[HeaderExtension::AudioLevel(level)])
            .await
            .map_err(ClientError::from)
    }

    /// Writes one packet of simulcast layer `layer` (as announced, lowest first), with
    /// that layer's SSRC and its rid and mid extensions. Nothing is written before the
    /// track has been negotiated.
    pub async fn write_layer(&self, layer: usize, mut packet: Packet) -> Result<(), ClientError> {
        let Some((rid, ssrc)) = self.simulcast.layers.get(layer) else {
            return Err(ClientError::NoSuchLayer(layer));
        };
        let Some(mid) = self.simulcast.mid().await else {
            return Err(ClientError::NotNegotiated);
        };
        packet.header.ssrc = *ssrc;
        packet.header.payload_type = self.payload_type;
        let extensions = [sdes(SDES_MID_URI, &mid), sdes(SDES_RTP_STREAM_ID_URI, rid)];
        self.track
            .write_rtp_with_extensions(packet, &extensions)
            .await
            .map_err(ClientError::from)
    }

    /// How many simulcast layers the track has; 0 for one stream.
    pub fn layers(&self) -> usize {
        self.simulcast.layers.len()
    }

    pub fn take_keyframe_request(&self) -> bool {
        self.keyframe_wanted.swap(false, Ordering::Relaxed)
    }

    pub fn keyframe_requests(&self) -> u64 {
        self.keyframe_requests.load(Ordering::Relaxed)
    }
}

impl Client {
    /// Opens the socket (the token is checked before upgrade) and sends `join`.
    ///
    /// A `redirect` before `joined` is followed: the client reconnects to the
    /// node named, up to [`MAX_REDIRECTS`] times. Events seen while waiting for
    /// the answer to `join` stay queued for [`next_event`](Self::next_event).
    pub async fn connect(options: ClientOptions) -> Result<Client, ClientError> {
        let mut options = options;
        let mut extra = String::new();
        for _ in 0..=MAX_REDIRECTS {
            let (commands, events, dropped) = driver::start(&options, &extra).await?;
            let mut client = Client {
                commands,
                events,
                dropped,
                pending: VecDeque::new(),
            };
            match client.await_join_answer().await {
                Some((url, epoch)) => {
                    client.close();
                    options.url = url;
                    extra = match epoch {
                        Some(epoch) => format!("&redirected=1&epoch={epoch}"),
                        None => "&redirected=1".to_owned(),
                    };
                }
                None => return Ok(client),
            }
        }
        Err(ClientError::Connect("too many redirects".to_owned()))
    }

    /// Connects and joins, trying `options.url` and then each of `fallbacks` in
    /// turn until a node answers `joined` or `within` has passed.
    ///
    /// This is how a client rides out a node's death or a cluster hiccup: a
    /// refused socket, a redirect to a node that is gone, or a retryable refusal
    /// of `join` (`cluster_unavailable`, `node_fenced`, `no_node_available`) is
    /// followed by a short backoff and the next URL. The returned client's next
    /// event is `joined`.
    pub async fn connect_retrying(
        options: ClientOptions,
        fallbacks: &[String],
        within: Duration,
    ) -> Result<Client, ClientError> {
        let deadline = Instant::now() + within;
        let urls: Vec<String> = std::iter::once(options.url.clone())
            .chain(fallbacks.iter().cloned())
            .collect();
        let mut backoff = RETRY_BACKOFF_MIN;
        let mut last_error = ClientError::Timeout("joined");
        for url in urls.iter().cycle() {
            if Instant::now() >= deadline {
                break;
            }
            let attempt = ClientOptions {
                url: url.clone(),
                ..options.clone()
            };
            match tokio::time::timeout_at(deadline, Client::connect(attempt)).await {
                Ok(Ok(client)) => match client.pending.front() {
                    Some(ClientEvent::Server(ServerMessage::Joined { .. })) => return Ok(client),
                    Some(ClientEvent::Server(ServerMessage::Error(body))) if !body.retryable() => {
                        return Err(ClientError::Refused {
                            status: 200,
                            body: body.message.clone(),
                        })
                    }
                    _ => client.close(),
                },
                Ok(Err(e)) => last_error = e,
                Err(_) => break,
            }
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
        }
        Err(last_error)
    }

    /// Queues events until the server answers `join`; returns a redirect, if any.
    async fn await_join_answer(&mut self) -> Option<(String, Option<i64>)> {
        let deadline = Instant::now() + JOIN_ANSWER_WAIT;
        while let Some(event) = timeout_at(deadline, self.events.recv())
            .await
            .ok()
            .flatten()
        {
            match event {
                ClientEvent::Server(ServerMessage::Redirect { url, epoch, .. }) => {
                    return Some((url, epoch))
                }
                answer @ (ClientEvent::Server(ServerMessage::Joined { .. })
                | ClientEvent::Server(ServerMessage::Error(_))
                | ClientEvent::Closed) => {
                    self.pending.push_back(answer);
                    return None;
                }
                other => self.pending.push_back(other),
            }
        }
        None
    }

    pub fn send(&self, message: ClientMessage) -> Result<(), ClientError> {
        self.commands
            .send(Command::Send(message))
            .map_err(|_| ClientError::Stopped)
    }

    pub fn send_raw(&self, text: impl Into<String>) -> Result<(), ClientError> {
        self.commands
            .send(Command::SendRaw(text.into()))
            .map_err(|_| ClientError::Stopped)
    }

    /// Announces a track, adds it to the connection and offers it to the server.
    /// Audio is sent as Opus, video as VP8.
    pub async fn publish(
        &self,
        cid: &str,
        kind: TrackKind,
        source: TrackSource,
    ) -> Result<LocalTrack, ClientError> {
        let codec = match kind {
            TrackKind::Audio => PublishCodec::Opus,
            TrackKind::Video => PublishCodec::Vp8,
        };
        self.publish_codec(cid, codec, source).await
    }

    /// Publishes a VP8 camera sent in simulcast `layers` (lowest first), announced with
    /// their rids and sizes; write each layer with [`LocalTrack::write_layer`].
    pub async fn publish_layers(
        &self,
        cid: &str,
        layers: Vec<LayerInfo>,
    ) -> Result<LocalTrack, ClientError> {
        self.request_publish(cid, PublishCodec::Vp8, TrackSource::Camera, layers)
            .await
    }

    /// Like [`publish`](Self::publish), with the codec chosen by the caller.
    pub async fn publish_codec(
        &self,
        cid: &str,
        codec: PublishCodec,
        source: TrackSource,
    ) -> Result<LocalTrack, ClientError> {
        self.request_publish(cid, codec, source, Vec::new()).await
    }

    async fn request_publish(
        &self,
        cid: &str,
        codec: PublishCodec,
        source: TrackSource,
        layers: Vec<LayerInfo>,
    ) -> Result<LocalTrack, ClientError> {
        let (reply, rx) = oneshot::channel();
        let cid = cid.to_owned();
        self.commands
            .send(Command::Publish {
                cid,
                codec,
                source,
                layers,
                reply,
            })
            .map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)?
    }

    /// The next event, or `None` at the deadline or once the client has stopped.
    pub async fn next_event(&mut self, deadline: Instant) -> Option<ClientEvent> {
        if let Some(event) = self.pending.pop_front() {
            return Some(event);
        }
        timeout_at(deadline, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Skips events until one matches, returning it.
    pub async fn wait_for<T>(
        &mut self,
        within: Duration,
        what: &'static str,
        mut pick: impl FnMut(&ClientEvent) -> Option<T>,
    ) -> Result<T, ClientError> {
        let deadline = Instant::now() + within;
        loop {
            let event = self
                .next_event(deadline)
                .await
                .ok_or(ClientError::Timeout(what))?;
            if let Some(found) = pick(&event) {
                return Ok(found);
            }
        }
    }

    /// Incoming RTP packets dropped so far by `drop_every_nth_rtp`.
    pub fn dropped_packets(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sends RTCP feedback about a received track to the server.
    pub fn feedback(&self, track_id: &TrackId, feedback: Feedback) -> Result<(), ClientError> {
        let command = Command::Feedback {
            track_id: track_id.clone(),
            feedback,
        };
        self.commands
            .send(command)
            .map_err(|_| ClientError::Stopped)
    }

    /// Closes socket and peer connection.
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}
