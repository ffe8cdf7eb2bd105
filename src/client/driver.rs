//! The client's driver task: owns the socket and the peer connection.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate as remb;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    nack_pairs_from_sequence_numbers, TransportLayerNack,
};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{PeerConnection, RTCIceCandidateInit, RTCSessionDescription};

use super::peer::{add_local_layers, build_peer, read_track, PeerEvent};
use super::{ClientError, ClientEvent, ClientOptions, Command, Feedback};
use crate::ids::TrackId;
use crate::signal::protocol::{ClientMessage, IceCandidate, ServerMessage};

/// How long `close` waits for the server to acknowledge `leave`.
const LEAVE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

type Started = (
    mpsc::UnboundedSender<Command>,
    mpsc::UnboundedReceiver<ClientEvent>,
    Arc<AtomicU64>,
);

/// Connects to `options.url`; `extra_query` (starting with `&`) is appended as is.
pub(super) async fn start(
    options: &ClientOptions,
    extra_query: &str,
) -> Result<Started, ClientError> {
    let url = format!(
        "{}/rtc?room={}&access_token={}{extra_query}",
        options.url.trim_end_matches('/'),
        percent_encode(&options.room),
        percent_encode(&options.token)
    );
    let socket = match tokio_tungstenite::connect_async(url).await {
        Ok((socket, _)) => socket,
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned());
            return Err(ClientError::Refused {
                status,
                body: body.unwrap_or_default(),
            });
        }
        Err(e) => return Err(ClientError::Connect(e.to_string())),
    };

    let (peer_tx, peer_rx) = mpsc::unbounded_channel();
    let (pc, dropped) = build_peer(options.bind_ip, options.drop_every_nth_rtp, peer_tx).await?;
    let (command_tx, command_rx) = mpsc::unbounded_channel();
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let mut driver = Driver {
        pc,
        remotes: HashMap::new(),
        events: event_tx,
        making_offer: false,
        want_offer: false,
    };
    let join = ClientMessage::Join {
        auto_subscribe: options.auto_subscribe,
    };
    let join = serde_json::to_string(&join).map_err(|e| ClientError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        driver.run(socket, join, command_rx, peer_rx).await;
    });
    Ok((command_tx, event_rx, dropped))
}

struct Driver {
    pc: Arc<dyn PeerConnection>,
    /// Received tracks by track id, with their SSRC, for sending feedback.
    remotes: HashMap<TrackId, (Arc<dyn TrackRemote>, u32)>,
    events: mpsc::UnboundedSender<ClientEvent>,
    /// Our offer awaits the server's answer.
    making_offer: bool,
    /// Tracks were added since our last offer.
    want_offer: bool,
}

impl Driver {
    async fn run(
        &mut self,
        socket: Socket,
        join: String,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut peer: mpsc::UnboundedReceiver<PeerEvent>,
    ) {
        let (mut sink, mut stream) = socket.split();
        let _ = sink.send(Message::text(join)).await;
        loop {
            let outgoing = tokio::select! {
                frame = stream.next() => match frame {
                    Some(Ok(Message::Text(text))) => self.on_text(&text).await,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => Vec::new(),
                },
                command = commands.recv() => match command {
                    Some(Command::Close) | None => {
                        let _ = sink.send(Message::text(r#"{"type":"leave"}"#)).await;
                        // The server closes the socket once it has processed `leave`;
                        // closing media first would look like a lost connection.
                        let drained = async { while let Some(Ok(_)) = stream.next().await {} };
                        let _ = tokio::time::timeout(LEAVE_GRACE, drained).await;
                        break;
                    }
                    Some(command) => self.on_command(command).await,
                },
                Some(event) = peer.recv() => self.on_peer(event).await,
            };
            for text in outgoing {
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
        }
        let _ = sink.close().await;
        let _ = self.pc.close().await;
        let _ = self.events.send(ClientEvent::Closed);
    }

    async fn on_text(&mut self, text: &str) -> Vec<String> {
        let Ok(message) = serde_json::from_str::<ServerMessage>(text) else {
            return Vec::new();
        };
        let _ = self.events.send(ClientEvent::Server(message.clone()));
        let result = match message {
            ServerMessage::Offer { sdp } => self.on_server_offer(sdp).await,
            ServerMessage::Answer { sdp } => self.on_server_answer(sdp).await,
            ServerMessage::Candidate(c) => self.on_server_candidate(c).await,
            _ => Ok(Vec::new()),
        };
        result.unwrap_or_default()
    }

    async fn on_server_offer(&mut self, sdp: String) -> Result<Vec<String>, ClientError> {
        // Polite peer: our crossing offer gives way; we re-offer after answering.
        if self.making_offer {
            self.pc
                .set_local_description(RTCSessionDescription::rollback(None)?)
                .await?;
            self.making_offer = false;
            self.want_offer = true;
        }
        self.pc
            .set_remote_description(RTCSessionDescription::offer(sdp)?)
            .await?;
        let answer = self.pc.create_answer(None).await?;
        self.pc.set_local_description(answer.clone()).await?;
        let mut out = vec![to_json(&ClientMessage::Answer { sdp: answer.sdp })];
        out.extend(self.try_offer().await?);
        Ok(out)
    }

    async fn on_server_answer(&mut self, sdp: String) -> Result<Vec<String>, ClientError> {
        if !self.making_offer {
            return Ok(Vec::new());
        }
        self.pc
            .set_remote_description(RTCSessionDescription::answer(sdp)?)
            .await?;
        self.making_offer = false;
        self.try_offer().await
    }

    async fn on_server_candidate(&mut self, c: IceCandidate) -> Result<Vec<String>, ClientError> {
        if !c.candidate.is_empty() {
            let init = RTCIceCandidateInit {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid,
                sdp_mline_index: c.sdp_mline_index,
                ..Default::default()
            };
            self.pc.add_ice_candidate(init).await?;
        }
        Ok(Vec::new())
    }

    async fn try_offer(&mut self) -> Result<Vec<String>, ClientError> {
        if !self.want_offer || self.making_offer {
            return Ok(Vec::new());
        }
        self.want_offer = false;
        self.making_offer = true;
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer.clone()).await?;
        Ok(vec![to_json(&ClientMessage::Offer { sdp: offer.sdp })])
    }

    async fn on_command(&mut self, command: Command) -> Vec<String> {
        match command {
            Command::Send(message) => vec![to_json(&message)],
            Command::SendRaw(text) => vec![text],
            Command::Publish {
                cid,
                codec,
                source,
                layers,
                reply,
            } => {
                let rids: Vec<String> = layers.iter().map(|l| l.rid.clone()).collect();
                let announce = ClientMessage::PublishTrack {
                    cid: cid.clone(),
                    kind: codec.kind(),
                    source,
                    name: cid.clone(),
                    muted: false,
                    layers,
                };
                let mut out = vec![to_json(&announce)];
                match add_local_layers(&self.pc, cid, codec, &rids).await {
                    Ok(track) => {
                        let _ = reply.send(Ok(track));
                        self.want_offer = true;
                        out.extend(self.try_offer().await.unwrap_or_default());
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
                out
            }
            Command::Feedback { track_id, feedback } => {
                self.send_feedback(&track_id, feedback).await;
                Vec::new()
            }
            Command::Close => Vec::new(),
        }
    }

    async fn send_feedback(&self, track_id: &TrackId, feedback: Feedback) {
        let Some((remote, ssrc)) = self.remotes.get(track_id) else {
            return;
        };
        let packet: Box<dyn rtc::rtcp::Packet> = match feedback {
            Feedback::Pli => Box::new(PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc: *ssrc,
            }),
            Feedback::Nack(seqs) => Box::new(TransportLayerNack {
                sender_ssrc: 0,
                media_ssrc: *ssrc,
                nacks: nack_pairs_from_sequence_numbers(&seqs),
            }),
            Feedback::Remb(bps) => Box::new(remb::ReceiverEstimatedMaximumBitrate {
                sender_ssrc: 0,
                bitrate: bps as f32,
                ssrcs: vec![*ssrc],
            }),
        };
        let _ = remote.write_rtcp(vec![packet]).await;
    }

    async fn on_peer(&mut self, event: PeerEvent) -> Vec<String> {
        match event {
            PeerEvent::Candidate(init) => {
                let candidate = IceCandidate {
                    candidate: init.candidate,
                    sdp_mid: None,
                    sdp_mline_index: Some(0),
                };
                vec![to_json(&ClientMessage::Candidate(candidate))]
            }
            PeerEvent::State(state) => {
                let _ = self.events.send(ClientEvent::PeerState(state.to_string()));
                Vec::new()
            }
            PeerEvent::Track(remote) => {
                let track_id = TrackId::from_string(remote.track_id().await.to_string());
                let ssrc = remote.ssrcs().await.first().copied().unwrap_or_default();
                self.remotes
                    .insert(track_id.clone(), (remote.clone(), ssrc));
                tokio::spawn(read_track(remote, track_id, self.events.clone()));
                Vec::new()
            }
        }
    }
}

/// Encodes a query value: everything but RFC 3986 unreserved characters.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn to_json(message: &ClientMessage) -> String {
    serde_json::to_string(message).expect("client messages serialize")
}
