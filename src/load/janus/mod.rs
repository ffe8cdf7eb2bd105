//! A simulated participant of a Janus VideoRoom, so that `relais load` can put the
//! same load on Janus as on relais and measure it the same way.
//!
//! Media goes through the relais client's own peer connections and tracks
//! ([`crate::client`]'s `peer` module): same codecs (VP8, Opus), same stack, same
//! receive path, so only the server differs. Janus's model needs more than relais':
//! every participant joins the room as a publisher on one handle (only publishers
//! hear of new feeds), a publisher sends on that handle's own peer connection, and
//! everything received comes through a second handle, a multistream subscriber,
//! whose peer connection Janus offers and which is updated as feeds appear.
//!
//! Loop: [`JanusClient::join`] creates the session, attaches and joins; a driver task
//! then owns the socket, both handles and both peer connections, and `select!`s over
//! Janus events (new feeds, renegotiations), the caller's commands (publish, close)
//! and the peer connections' events (candidates to trickle, received tracks). Received
//! packets reach the caller as [`ClientEvent::Rtp`], like the relais client's.

mod api;
mod socket;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout_at, Instant};
use webrtc::peer_connection::{PeerConnection, RTCIceCandidateInit, RTCSessionDescription};

use crate::client::peer::{add_local_track, build_peer, read_track, PeerEvent};
use crate::client::{ClientError, ClientEvent, LocalTrack, PublishCodec};
use crate::ids::TrackId;
use socket::JanusSocket;

pub use api::room_id;

/// Why talking to Janus failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JanusError {
    #[error("could not connect to Janus: {0}")]
    Connect(String),
    #[error("Janus refused: {code} {reason}")]
    Janus { code: i64, reason: String },
    #[error("unexpected reply from Janus: {0}")]
    Protocol(String),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("the Janus socket closed")]
    Closed,
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::error::Error),
}

/// Where and as whom to join.
#[derive(Debug, Clone)]
pub struct JanusOptions {
    /// Janus's WebSocket address, e.g. `ws://127.0.0.1:8188`.
    pub url: String,
    pub room: String,
    pub display: String,
    /// Local address of the media sockets.
    pub bind_ip: IpAddr,
}

enum Command {
    Publish {
        audio: bool,
        reply: oneshot::Sender<Result<Published, JanusError>>,
    },
    Close,
}

/// A publisher's tracks: video, and audio when asked for.
pub type Published = (LocalTrack, Option<LocalTrack>);

/// A participant joined to a Janus VideoRoom.
pub struct JanusClient {
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<ClientEvent>,
}

/// Creates the rooms a run uses, each with room for `publishers` senders; rooms that
/// exist already are fine.
pub async fn create_rooms(
    url: &str,
    rooms: &[String],
    publishers: usize,
) -> Result<(), JanusError> {
    let (socket, _events) = socket::connect(url).await?;
    let session = api::created_id(&socket.request(api::create_session()).await?)?;
    let handle = api::created_id(&socket.request(api::attach(session)).await?)?;
    for room in rooms {
        let body = api::create_room(room_id(room), publishers);
        match socket
            .request(api::message(session, handle, body, None))
            .await
        {
            Ok(_) => {}
            Err(JanusError::Janus { code, .. }) if code == api::ROOM_EXISTS => {}
            Err(e) => return Err(e),
        }
    }
    let _ = socket.request(api::destroy(session)).await;
    Ok(())
}

impl JanusClient {
    /// Opens the socket, creates a session and joins the room; returns once joined.
    pub async fn join(options: JanusOptions) -> Result<JanusClient, JanusError> {
        let (socket, janus_events) = socket::connect(&options.url).await?;
        let session = api::created_id(&socket.request(api::create_session()).await?)?;
        socket.keep_alive(session);
        let handle = api::created_id(&socket.request(api::attach(session)).await?)?;
        let room = room_id(&options.room);
        let join = api::join_publisher(room, &options.display);
        let joined = socket
            .request(api::message(session, handle, join, None))
            .await?;
        let data = api::plugin_data(&joined);
        let own_id = data["id"]
            .as_u64()
            .ok_or_else(|| JanusError::Protocol(format!("join: {data}")))?;
        let feeds = api::publishing_feeds(data);

        let (commands, command_rx) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let (publisher_tx, publisher_rx) = mpsc::unbounded_channel();
        let (subscriber_tx, subscriber_rx) = mpsc::unbounded_channel();
        let mut driver = Driver {
            socket,
            session,
            room,
            handle,
            own_id,
            bind_ip: options.bind_ip,
            publisher: None,
            subscriber: None,
            subscribed: HashSet::new(),
            events: events_tx,
            publisher_tx,
            subscriber_tx,
            tracks: 0,
        };
        tokio::spawn(async move {
            if let Err(e) = driver.subscribe(&feeds).await {
                tracing::debug!(error = %e, "janus: first subscription failed");
            }
            let channels = (janus_events, command_rx, publisher_rx, subscriber_rx);
            driver.run(channels).await;
        });
        Ok(JanusClient { commands, events })
    }

    /// Publishes VP8 video, and Opus audio if `audio`, on one peer connection.
    pub async fn publish(&self, audio: bool) -> Result<Published, JanusError> {
        let (reply, rx) = oneshot::channel();
        let command = Command::Publish { audio, reply };
        self.commands
            .send(command)
            .map_err(|_| JanusError::Closed)?;
        rx.await.map_err(|_| JanusError::Closed)?
    }

    /// The next event, or `None` at the deadline or once the client has stopped.
    pub async fn next_event(&mut self, deadline: Instant) -> Option<ClientEvent> {
        timeout_at(deadline, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Leaves: the session is destroyed and the peer connections closed.
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }
}

impl Drop for JanusClient {
    fn drop(&mut self) {
        self.close();
    }
}

/// The subscriber handle and the peer connection Janus offers on it.
struct Subscriber {
    handle: u64,
    pc: Arc<dyn PeerConnection>,
}

type Channels = (
    mpsc::UnboundedReceiver<Value>,
    mpsc::UnboundedReceiver<Command>,
    mpsc::UnboundedReceiver<PeerEvent>,
    mpsc::UnboundedReceiver<PeerEvent>,
);

struct Driver {
    socket: JanusSocket,
    session: u64,
    room: u64,
    /// The handle joined as a publisher: it hears of feeds, and publishes.
    handle: u64,
    /// This participant's own feed, never subscribed to.
    own_id: u64,
    bind_ip: IpAddr,
    publisher: Option<Arc<dyn PeerConnection>>,
    subscriber: Option<Subscriber>,
    /// Feeds already asked for.
    subscribed: HashSet<u64>,
    events: mpsc::UnboundedSender<ClientEvent>,
    publisher_tx: mpsc::UnboundedSender<PeerEvent>,
    subscriber_tx: mpsc::UnboundedSender<PeerEvent>,
    /// Tracks received so far, to name each one uniquely.
    tracks: u32,
}

impl Driver {
    async fn run(&mut self, channels: Channels) {
        let (mut janus, mut commands, mut publisher, mut subscriber) = channels;
        loop {
            let result = tokio::select! {
                frame = janus.recv() => match frame {
                    Some(frame) => self.on_janus(frame).await,
                    None => break,
                },
                command = commands.recv() => match command {
                    Some(Command::Publish { audio, reply }) => {
                        let _ = reply.send(self.publish(audio).await);
                        Ok(())
                    }
                    Some(Command::Close) | None => {
                        let _ = self.socket.request(api::destroy(self.session)).await;
                        break;
                    }
                },
                Some(event) = publisher.recv() => self.on_peer(event, self.handle),
                Some(event) = subscriber.recv() => {
                    let handle = self.subscriber.as_ref().map_or(0, |s| s.handle);
                    self.on_peer(event, handle)
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "janus: participant error");
            }
        }
        if let Some(pc) = &self.publisher {
            let _ = pc.close().await;
        }
        if let Some(subscriber) = &self.subscriber {
            let _ = subscriber.pc.close().await;
        }
        let _ = self.events.send(ClientEvent::Closed);
    }

    async fn on_janus(&mut self, frame: Value) -> Result<(), JanusError> {
        if frame["janus"] != "event" {
            return Ok(());
        }
        let sender = frame["sender"].as_u64();
        if sender == Some(self.handle) {
            let feeds = api::publishing_feeds(api::plugin_data(&frame));
            return self.subscribe(&feeds).await;
        }
        // Janus renegotiates the subscription by itself, e.g. when a feed leaves.
        match (&self.subscriber, api::jsep(&frame, "offer")) {
            (Some(subscriber), Some(offer)) if sender == Some(subscriber.handle) => {
                let offer = offer.to_owned();
                self.answer(&offer).await
            }
            _ => Ok(()),
        }
    }

    /// Subscribes to the feeds not yet asked for: the first time by joining as a
    /// subscriber, then by updating the subscription.
    async fn subscribe(&mut self, feeds: &[u64]) -> Result<(), JanusError> {
        let new: Vec<u64> = feeds
            .iter()
            .copied()
            .filter(|feed| *feed != self.own_id && !self.subscribed.contains(feed))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        self.subscribed.extend(&new);
        let (handle, body) = match &self.subscriber {
            Some(subscriber) => (subscriber.handle, api::subscribe_more(&new)),
            None => {
                let attached = self.socket.request(api::attach(self.session)).await?;
                let handle = api::created_id(&attached)?;
                let tx = self.subscriber_tx.clone();
                let (pc, _) = build_peer(self.bind_ip, None, tx).await?;
                self.subscriber = Some(Subscriber { handle, pc });
                (handle, api::join_subscriber(self.room, &new))
            }
        };
        let message = api::message(self.session, handle, body, None);
        let reply = self.socket.request(message).await?;
        match api::jsep(&reply, "offer") {
            Some(offer) => self.answer(offer).await,
            None => Ok(()),
        }
    }

    /// Answers an offer of the subscriber handle and starts receiving.
    async fn answer(&mut self, offer: &str) -> Result<(), JanusError> {
        let Some(subscriber) = &self.subscriber else {
            return Ok(());
        };
        let pc = &subscriber.pc;
        pc.set_remote_description(RTCSessionDescription::offer(offer.to_owned())?)
            .await?;
        let answer = pc.create_answer(None).await?;
        pc.set_local_description(answer.clone()).await?;
        let start = serde_json::json!({"request": "start"});
        let jsep = Some(("answer", answer.sdp.as_str()));
        let message = api::message(self.session, subscriber.handle, start, jsep);
        self.socket.request(message).await.map(|_| ())
    }

    async fn publish(&mut self, audio: bool) -> Result<Published, JanusError> {
        let tx = self.publisher_tx.clone();
        let (pc, _) = build_peer(self.bind_ip, None, tx).await?;
        self.publisher = Some(pc.clone());
        let video = add_local_track(&pc, "cam".to_owned(), PublishCodec::Vp8).await?;
        let audio = match audio {
            true => Some(add_local_track(&pc, "mic".to_owned(), PublishCodec::Opus).await?),
            false => None,
        };
        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer.clone()).await?;
        let body = serde_json::json!({"request": "publish"});
        let jsep = Some(("offer", offer.sdp.as_str()));
        let reply = self
            .socket
            .request(api::message(self.session, self.handle, body, jsep))
            .await?;
        let answer = api::jsep(&reply, "answer")
            .ok_or_else(|| JanusError::Protocol("no answer to publish".to_owned()))?;
        pc.set_remote_description(RTCSessionDescription::answer(answer.to_owned())?)
            .await?;
        Ok((video, audio))
    }

    fn on_peer(&mut self, event: PeerEvent, handle: u64) -> Result<(), JanusError> {
        match event {
            PeerEvent::Candidate(init) => self.trickle(handle, init),
            PeerEvent::State(state) => {
                let _ = self.events.send(ClientEvent::PeerState(state.to_string()));
            }
            PeerEvent::Track(remote) => {
                self.tracks += 1;
                let track_id = TrackId::from_string(format!("janus-{}", self.tracks));
                tokio::spawn(read_track(remote, track_id, self.events.clone()));
            }
        }
        Ok(())
    }

    fn trickle(&self, handle: u64, init: RTCIceCandidateInit) {
        if handle == 0 || init.candidate.is_empty() {
            return;
        }
        let mid = init.sdp_mid.as_deref();
        let body = api::trickle(self.session, handle, &init.candidate, mid);
        self.socket.send(body);
    }
}
