//! Bad input gets a typed error, and the meeting next to it goes on.
//!
//! One node, one publisher streaming audio and video, one subscriber receiving it.
//! Each case throws something bad at the node and then checks both the specific
//! reply and that the subscriber still receives media.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use relais::auth::Grants;
use relais::client::{Client, ClientError, ClientEvent, ClientOptions};
use relais::ids::TrackId;
use relais::signal::protocol::{ErrorCode, LeaveReason, ServerMessage, TrackKind};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const ROOM: &str = "bad-input";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A meeting in progress: alice publishes, bob receives.
struct Meeting {
    node: Node,
    bob: Client,
    kinds: HashMap<TrackId, TrackKind>,
    /// UDP ports the node announced to bob in its ICE candidates.
    server_ports: Vec<u16>,
    _alice: Client,
    sender: JoinHandle<()>,
}

impl Meeting {
    async fn start() -> Meeting {
        let node = Node::start();
        let mut alice = node.join(ROOM, "alice").await;
        let bob = node.join(ROOM, "bob").await;
        let video = publish(&alice, "cam", TrackKind::Video).await;
        let audio = publish(&alice, "mic", TrackKind::Audio).await;
        let sender = stream(vec![video, audio], 12_000);
        let ids = published_ids(&mut alice, &["cam", "mic"]).await;
        let kinds = HashMap::from([
            (ids[0].clone(), TrackKind::Video),
            (ids[1].clone(), TrackKind::Audio),
        ]);
        let mut meeting = Meeting {
            node,
            bob,
            kinds,
            server_ports: Vec::new(),
            _alice: alice,
            sender,
        };
        meeting.assert_flowing().await;
        meeting
    }

    /// Bob receives at least 20 more packets of every track within 10 s.
    async fn assert_flowing(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut counts: HashMap<TrackId, usize> = HashMap::new();
        while self
            .kinds
            .keys()
            .any(|id| counts.get(id).copied().unwrap_or(0) < 20)
        {
            let event = self.bob.next_event(deadline).await;
            match event {
                Some(ClientEvent::Rtp { track_id, .. }) => {
                    *counts.entry(track_id).or_default() += 1
                }
                Some(ClientEvent::Server(ServerMessage::Candidate(c))) => {
                    self.server_ports.extend(candidate_port(&c.candidate))
                }
                Some(_) => {}
                None => panic!("media stopped flowing to bob: {counts:?}"),
            }
        }
    }
}

impl Drop for Meeting {
    fn drop(&mut self) {
        self.sender.abort();
    }
}

fn candidate_port(candidate: &str) -> Option<u16> {
    // "candidate:<foundation> <component> <proto> <priority> <ip> <port> typ ..."
    candidate.split_whitespace().nth(5)?.parse().ok()
}

async fn raw_socket(node: &Node, identity: &str) -> Socket {
    let token = node.token(ROOM, identity);
    let url = format!("{}/rtc?room={ROOM}&access_token={token}", node.url());
    tokio_tungstenite::connect_async(url)
        .await
        .expect("socket")
        .0
}

async fn send_text(socket: &mut Socket, text: &str) {
    socket
        .send(Message::text(text.to_owned()))
        .await
        .expect("send");
}

/// Reads server messages until one matches, within 10 s.
async fn expect_message<T>(
    socket: &mut Socket,
    mut pick: impl FnMut(&ServerMessage) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("timed out waiting for a server message");
        let Some(Ok(Message::Text(text))) = frame else {
            panic!("socket ended while waiting: {frame:?}");
        };
        let message: ServerMessage = serde_json::from_str(&text).expect("server JSON");
        // Shown only when the test fails.
        eprintln!("server: {text}");
        if let Some(found) = pick(&message) {
            return found;
        }
    }
}

async fn expect_error(socket: &mut Socket, code: ErrorCode) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let reply = tokio::time::timeout_at(
        deadline,
        expect_message(socket, |m| match m {
            ServerMessage::Error(body) if body.code == code => Some(body.message.clone()),
            _ => None,
        }),
    )
    .await;
    reply.unwrap_or_else(|_| panic!("no `{}` error came back", code.as_str()))
}

async fn expect_pong(socket: &mut Socket, id: u64) {
    send_text(socket, &format!(r#"{{"type":"ping","id":{id}}}"#)).await;
    expect_message(socket, |m| {
        matches!(m, ServerMessage::Pong { id: got } if *got == id).then_some(())
    })
    .await;
}

/// Joins without subscribing, so that no server offer is outstanding.
const JOIN_QUIETLY: &str = r#"{"type":"join","auto_subscribe":false}"#;

/// Reads until the socket ends; `None` if it is still open after `within`, else the
/// close code the server sent, if any.
async fn closed_within(socket: &mut Socket, within: Duration) -> Option<Option<u16>> {
    let ending = async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    };
    tokio::time::timeout(within, ending).await.ok()
}

async fn joined_socket(node: &Node, identity: &str) -> Socket {
    let mut socket = raw_socket(node, identity).await;
    send_text(&mut socket, JOIN_QUIETLY).await;
    expect_message(&mut socket, |m| {
        matches!(m, ServerMessage::Joined { .. }).then_some(())
    })
    .await;
    socket
}

fn refusal(result: Result<Client, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Refused { status, body }) => {
            let value: serde_json::Value = serde_json::from_str(&body).expect("JSON reason");
            (
                status,
                value["error"].as_str().unwrap_or_default().to_owned(),
            )
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, got a session"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_before_upgrade() {
    let mut meeting = Meeting::start().await;
    let node = &meeting.node;
    let options = |token: String| ClientOptions {
        token,
        ..node.options(ROOM, "mallory")
    };

    let cases = [
        (String::new(), "missing_token"),
        (node.expired_token(ROOM, "mallory"), "token_expired"),
        (node.token("another-room", "mallory"), "wrong_room"),
        ("not.a.jwt".to_owned(), "malformed_token"),
        (forge(&node.token(ROOM, "mallory")), "bad_signature"),
    ];
    for (token, code) in cases {
        let (status, error) = refusal(Client::connect(options(token)).await);
        assert_eq!((status, error.as_str()), (401, code));
    }

    let bad_room = ClientOptions {
        room: "no spaces".into(),
        ..node.options(ROOM, "mallory")
    };
    let (status, error) = refusal(Client::connect(bad_room).await);
    assert_eq!((status, error.as_str()), (400, "bad_room_name"));
    meeting.assert_flowing().await;
}

/// Flips a character of the signature: same header and claims, wrong signature.
fn forge(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let last = chars.len() - 2;
    chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_typed_errors() {
    let mut meeting = Meeting::start().await;
    let mut socket = raw_socket(&meeting.node, "mallory").await;

    send_text(&mut socket, r#"{"type":"ping","id":1}"#).await;
    expect_error(&mut socket, ErrorCode::NotJoined).await;
    send_text(&mut socket, "{this is not json").await;
    expect_error(&mut socket, ErrorCode::BadJson).await;
    send_text(&mut socket, r#"{"type":"teleport"}"#).await;
    expect_error(&mut socket, ErrorCode::UnknownType).await;
    send_text(&mut socket, r#"{"type":"mute","muted":"yes"}"#).await;
    expect_error(&mut socket, ErrorCode::BadJson).await;
    socket
        .send(Message::binary(vec![0u8, 159, 146, 150]))
        .await
        .unwrap();
    expect_error(&mut socket, ErrorCode::BadJson).await;

    send_text(&mut socket, JOIN_QUIETLY).await;
    expect_message(&mut socket, |m| {
        matches!(m, ServerMessage::Joined { .. }).then_some(())
    })
    .await;
    send_text(&mut socket, JOIN_QUIETLY).await;
    expect_error(&mut socket, ErrorCode::AlreadyJoined).await;
    send_text(&mut socket, r#"{"type":"answer","sdp":"v=0"}"#).await;
    expect_error(&mut socket, ErrorCode::NoPendingOffer).await;
    send_text(
        &mut socket,
        r#"{"type":"subscribe","track_ids":["TR_nope"]}"#,
    )
    .await;
    expect_error(&mut socket, ErrorCode::UnknownTrack).await;
    send_text(
        &mut socket,
        r#"{"type":"mute","track_id":"TR_nope","muted":true}"#,
    )
    .await;
    expect_error(&mut socket, ErrorCode::UnknownTrack).await;
    send_text(
        &mut socket,
        r#"{"type":"candidate","candidate":"candidate:garbage"}"#,
    )
    .await;
    expect_error(&mut socket, ErrorCode::BadCandidate).await;

    expect_pong(&mut socket, 7).await;
    meeting.assert_flowing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_sdp_is_refused_and_the_session_goes_on() {
    let mut meeting = Meeting::start().await;
    let mut socket = joined_socket(&meeting.node, "mallory").await;

    for sdp in [
        "",
        "v=0\r\ngarbage\r\n",
        "\u{0}\u{1}\u{2}",
        &"m=".repeat(5000),
    ] {
        let offer = serde_json::json!({"type": "offer", "sdp": sdp}).to_string();
        send_text(&mut socket, &offer).await;
        expect_error(&mut socket, ErrorCode::BadSdp).await;
    }
    expect_pong(&mut socket, 1).await;
    meeting.assert_flowing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused() {
    let mut meeting = Meeting::start().await;
    let mut socket = joined_socket(&meeting.node, "mallory").await;

    // Above the 64 KiB limit but below the hard cap: refused, session goes on.
    let big = format!(r#"{{"type":"offer","sdp":"{}"}}"#, "x".repeat(100_000));
    send_text(&mut socket, &big).await;
    let message = expect_error(&mut socket, ErrorCode::MessageTooLarge).await;
    assert!(message.contains("65536"), "{message}");
    expect_pong(&mut socket, 2).await;

    // Far above it: the socket is closed.
    let huge = "y".repeat(2 * 1024 * 1024);
    let _ = socket.send(Message::text(huge)).await;
    let closed = closed_within(&mut socket, Duration::from_secs(10)).await;
    assert!(closed.is_some(), "socket stayed open after a 2 MiB frame");
    meeting.assert_flowing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_rate_limited_then_cut() {
    let mut meeting = Meeting::start().await;
    let mut socket = joined_socket(&meeting.node, "mallory").await;

    // 300 pings at once: the burst of 100 passes, the rest are refused.
    for id in 0..300 {
        send_text(&mut socket, &format!(r#"{{"type":"ping","id":{id}}}"#)).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    while pongs + limited < 300 {
        let ponged = expect_message(&mut socket, |m| match m {
            ServerMessage::Pong { .. } => Some(true),
            ServerMessage::Error(e) if e.code == ErrorCode::RateLimited => Some(false),
            _ => None,
        })
        .await;
        if ponged {
            pongs += 1;
        } else {
            limited += 1;
        }
    }
    assert!(limited >= 150, "only {limited} of 300 were limited");
    // The burst is 100 tokens, one of which `join` took.
    assert!(pongs >= 99, "the burst should pass, got {pongs}");

    // A client that keeps flooding is disconnected with a policy close.
    let flood: Vec<_> = (0..2000)
        .map(|i| format!(r#"{{"type":"ping","id":{i}}}"#))
        .collect();
    for text in flood {
        if socket.send(Message::text(text)).await.is_err() {
            break;
        }
    }
    let code = closed_within(&mut socket, Duration::from_secs(10))
        .await
        .expect("the flooding socket was not closed");
    assert_eq!(code, Some(1008));
    meeting.assert_flowing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_udp_on_the_media_port_is_ignored() {
    let mut meeting = Meeting::start().await;
    let ports = meeting.server_ports.clone();
    assert!(!ports.is_empty(), "the node announced no candidate to bob");

    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for i in 0..3000u32 {
        // A bounded burst of random-looking datagrams, some shaped like RTP or STUN.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut datagram = seed.to_be_bytes().repeat((i % 40 + 1) as usize);
        match i % 3 {
            0 => datagram[0] = 0x80,
            1 => datagram[0] = 0x00,
            _ => {}
        }
        let target = SocketAddr::from(([127, 0, 0, 1], ports[i as usize % ports.len()]));
        let _ = socket.send_to(&datagram, target);
    }
    meeting.assert_flowing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_vanishing_mid_negotiation_is_cleaned_up() {
    let mut meeting = Meeting::start().await;
    let mut socket = joined_socket(&meeting.node, "ghost").await;
    let offer = serde_json::json!({"type": "offer", "sdp": GHOST_OFFER}).to_string();
    send_text(&mut socket, &offer).await;
    // Gone without a close frame: the TCP connection just drops.
    drop(socket);

    let reason = meeting
        .bob
        .wait_for(Duration::from_secs(10), "ghost leaving", |e| match e {
            ClientEvent::Server(ServerMessage::ParticipantLeft { reason, .. }) => Some(*reason),
            _ => None,
        })
        .await
        .expect("participant_left for the ghost");
    assert_eq!(reason, LeaveReason::Disconnected);
    meeting.assert_flowing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_are_enforced() {
    let mut meeting = Meeting::start().await;
    let token = meeting.node.token_with(
        ROOM,
        "viewer",
        Grants {
            publish: false,
            subscribe: true,
            admin: false,
        },
        600,
    );
    let url = format!(
        "{}/rtc?room={ROOM}&access_token={token}",
        meeting.node.url()
    );
    let mut socket = tokio_tungstenite::connect_async(url)
        .await
        .expect("socket")
        .0;
    send_text(&mut socket, r#"{"type":"join"}"#).await;
    expect_message(&mut socket, |m| {
        matches!(m, ServerMessage::Joined { .. }).then_some(())
    })
    .await;
    send_text(
        &mut socket,
        r#"{"type":"publish_track","cid":"c","kind":"video"}"#,
    )
    .await;
    expect_error(&mut socket, ErrorCode::PermissionDenied).await;
    meeting.assert_flowing().await;
}

/// A real offer from a webrtc client, cut from a test run; its peer never answers ICE.
const GHOST_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0\r\na=fingerprint:sha-256 \
AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=ice-ufrag:ghostufrag\r\n\
a=ice-pwd:ghostpasswordghostpassword\r\na=setup:actpass\r\na=sendrecv\r\na=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\na=msid:ghost ghost-mic\r\n";
