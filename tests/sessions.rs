//! Session and room lifecycle through a real node: health, dev tokens, limits,
//! duplicate identities, explicit subscriptions, mute, cuts and room closing.

mod common;

use std::time::Duration;

use common::*;
use relais::client::{Client, ClientEvent, ClientOptions};
use relais::signal::protocol::{ClientMessage, ErrorCode, LeaveReason, ServerMessage, TrackKind};
use tokio::time::Instant;

const DEV: &str = "[auth]\ndev_mode = true\n";

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn is_error(event: &ClientEvent, code: ErrorCode) -> bool {
    matches!(event, ClientEvent::Server(ServerMessage::Error(e)) if e.code == code)
}

/// The reason of the server's `leave`, which must come within `within`.
async fn leave_reason(client: &mut Client, within: Duration) -> LeaveReason {
    let pick = |e: &ClientEvent| match e {
        ClientEvent::Server(ServerMessage::Leave { reason }) => Some(*reason),
        _ => None,
    };
    client.wait_for(within, "leave", pick).await.unwrap()
}

/// Polls `/readyz` until it reports `rooms` open rooms.
async fn wait_for_rooms(node: &Node, rooms: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = node.http_get("/readyz");
        assert_eq!(status, 200, "{body}");
        if json(&body)["rooms"] == rooms {
            return;
        }
        assert!(Instant::now() < deadline, "still {body} after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let node = Node::start();
    let (status, body) = node.http_get("/healthz");
    assert_eq!((status, json(&body)["status"].as_str()), (200, Some("ok")));
    let (status, body) = node.http_get("/readyz");
    assert_eq!(status, 200);
    assert_eq!(json(&body)["status"], "ready");
    assert_eq!(json(&body)["rooms"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_tokens_exist_only_in_dev_mode() {
    let node = Node::start();
    let (status, body) = node.http_get("/dev/token?room=r1&identity=dora");
    assert_eq!(
        (status, json(&body)["error"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = node.http("POST", "/dev/disconnect?room=r1&identity=dora");
    assert_eq!(status, 404);

    let dev = Node::start_with(DEV);
    let (status, body) = dev.http_get("/dev/token?room=r1&identity=dora&name=Dora");
    assert_eq!(status, 200, "{body}");
    let token = json(&body)["token"].as_str().expect("token").to_owned();
    let options = ClientOptions {
        token,
        ..dev.options("r1", "dora")
    };
    let mut client = Client::connect(options)
        .await
        .expect("dev token is accepted");
    let name = client
        .wait_for(Duration::from_secs(10), "joined", |e| match e {
            ClientEvent::Server(ServerMessage::Joined { participant, .. }) => {
                Some(participant.name.clone())
            }
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(name, "Dora");

    let (status, body) = dev.http_get("/dev/token?room=bad%20room&identity=dora");
    assert_eq!(
        (status, json(&body)["error"].as_str()),
        (400, Some("bad_room_name"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_room_refuses_the_next_participant() {
    let node = Node::start_with("[room]\nmax_participants = 2\n");
    let _a = node.join("small", "a").await;
    let _b = node.join("small", "b").await;
    let mut c = Client::connect(node.options("small", "c")).await.unwrap();
    let (mut refused, mut reason) = (false, None);
    c.wait_for(Duration::from_secs(10), "room_full and leave", |e| {
        refused |= is_error(e, ErrorCode::RoomFull);
        if let ClientEvent::Server(ServerMessage::Leave { reason: r }) = e {
            reason = Some(*r);
        }
        matches!(e, ClientEvent::Closed).then_some(())
    })
    .await
    .unwrap();
    assert!(refused, "no room_full error before the socket closed");
    assert_eq!(reason, Some(LeaveReason::RoomFull));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_identity_joining_again_replaces_the_old_session() {
    let node = Node::start();
    let mut first = node.join("dup", "erin").await;
    let _second = node.join("dup", "erin").await;
    let reason = leave_reason(&mut first, Duration::from_secs(10)).await;
    assert_eq!(reason, LeaveReason::DuplicateIdentity);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_subscription_mute_and_unsubscribe() {
    let node = Node::start();
    let mut alice = node.join("explicit", "alice").await;
    let quiet = ClientOptions {
        auto_subscribe: false,
        ..node.options("explicit", "bob")
    };
    let mut bob = Client::connect(quiet).await.unwrap();

    let audio = publish(&alice, "mic", TrackKind::Audio).await;
    let sender = stream(vec![audio], 6000);
    let track_id = published_ids(&mut alice, &["mic"]).await.remove(0);
    bob.wait_for(Duration::from_secs(10), "track_published", |e| {
        matches!(e, ClientEvent::Server(ServerMessage::TrackPublished { .. })).then_some(())
    })
    .await
    .unwrap();

    // Nothing arrives before bob asks for it; then it does.
    bob.send(ClientMessage::Subscribe {
        track_ids: vec![track_id.clone()],
    })
    .unwrap();
    bob.wait_for(Duration::from_secs(10), "subscribed", |e| match e {
        ClientEvent::Server(ServerMessage::Subscribed { track_id: t, mid }) if *t == track_id => {
            assert!(!mid.is_empty());
            Some(())
        }
        _ => None,
    })
    .await
    .unwrap();
    wait_for_packets(&mut bob, 20).await;

    alice
        .send(ClientMessage::Mute {
            track_id: track_id.clone(),
            muted: true,
        })
        .unwrap();
    let muted = bob
        .wait_for(Duration::from_secs(10), "track_muted", |e| match e {
            ClientEvent::Server(ServerMessage::TrackMuted { muted, .. }) => Some(*muted),
            _ => None,
        })
        .await
        .unwrap();
    assert!(muted);

    // Bob cannot mute alice's track.
    bob.send(ClientMessage::Mute {
        track_id: track_id.clone(),
        muted: false,
    })
    .unwrap();
    bob.wait_for(Duration::from_secs(10), "unknown_track", |e| {
        is_error(e, ErrorCode::UnknownTrack).then_some(())
    })
    .await
    .unwrap();

    bob.send(ClientMessage::Unsubscribe {
        track_ids: vec![track_id.clone()],
    })
    .unwrap();
    bob.wait_for(Duration::from_secs(10), "unsubscribed", |e| {
        matches!(e, ClientEvent::Server(ServerMessage::Unsubscribed { .. })).then_some(())
    })
    .await
    .unwrap();
    assert_no_packets_for(&mut bob, Duration::from_millis(1500)).await;
    sender.abort();
}

async fn wait_for_packets(client: &mut Client, count: usize) {
    let mut seen = 0;
    client
        .wait_for(Duration::from_secs(10), "packets", |e| {
            seen += usize::from(matches!(e, ClientEvent::Rtp { .. }));
            (seen >= count).then_some(())
        })
        .await
        .unwrap();
}

/// After a short settling time, no packet arrives during `window`.
async fn assert_no_packets_for(client: &mut Client, window: Duration) {
    // Packets already queued before the unsubscription took effect may still drain.
    let settle = Instant::now() + Duration::from_millis(500);
    while client.next_event(settle).await.is_some() {}
    let deadline = Instant::now() + window;
    while let Some(event) = client.next_event(deadline).await {
        assert!(
            !matches!(event, ClientEvent::Rtp { .. }),
            "packet after unsubscribe"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_participant_is_dropped_and_the_others_are_told() {
    let node = Node::start_with(DEV);
    let mut alice = node.join("cut", "alice").await;
    let mut bob = node.join("cut", "bob").await;

    let (status, body) = node.http("POST", "/dev/disconnect?room=cut&identity=bob");
    assert_eq!(
        (status, json(&body)["disconnected"].as_u64()),
        (200, Some(1))
    );

    bob.wait_for(Duration::from_secs(10), "socket closed", |e| {
        assert!(
            !matches!(e, ClientEvent::Server(ServerMessage::Leave { .. })),
            "a cut says nothing"
        );
        matches!(e, ClientEvent::Closed).then_some(())
    })
    .await
    .unwrap();
    let reason = alice
        .wait_for(Duration::from_secs(10), "participant_left", |e| match e {
            ClientEvent::Server(ServerMessage::ParticipantLeft { reason, .. }) => Some(*reason),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(reason, LeaveReason::Disconnected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_room_closes_after_the_grace_period() {
    let node = Node::start_with("[room]\nempty_timeout_secs = 1\n");
    let alice = node.join("brief", "alice").await;
    wait_for_rooms(&node, 1, Duration::from_secs(5)).await;
    alice.close();
    // The room outlives its last participant only by the grace period.
    wait_for_rooms(&node, 0, Duration::from_secs(10)).await;

    // The name can be used again at once.
    let _again = node.join("brief", "alice").await;
    wait_for_rooms(&node, 1, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_everyone_and_exits_cleanly() {
    let mut node = Node::start();
    let mut alice = node.join("closing", "alice").await;

    let status = tokio::task::block_in_place(|| node.terminate(Duration::from_secs(15)));
    let status = status.expect("relais did not exit within 15 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    let reason = leave_reason(&mut alice, Duration::from_secs(5)).await;
    assert_eq!(reason, LeaveReason::ServerShutdown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpublished_track_is_withdrawn_from_its_subscribers() {
    let node = Node::start();
    let mut alice = node.join("withdraw", "alice").await;
    let mut bob = node.join("withdraw", "bob").await;
    let audio = publish(&alice, "mic", TrackKind::Audio).await;
    let sender = stream(vec![audio], 6000);
    let track_id = published_ids(&mut alice, &["mic"]).await.remove(0);
    wait_for_packets(&mut bob, 20).await;

    alice
        .send(ClientMessage::UnpublishTrack {
            track_id: track_id.clone(),
        })
        .unwrap();
    let gone = bob
        .wait_for(Duration::from_secs(10), "track_unpublished", |e| match e {
            ClientEvent::Server(ServerMessage::TrackUnpublished { track_id, .. }) => {
                Some(track_id.clone())
            }
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(gone, track_id);
    // The forwarder has stopped: nothing more reaches bob, though alice still sends.
    assert_no_packets_for(&mut bob, Duration::from_millis(1500)).await;

    // A second unpublish of the same track is an error, and alice stays in the room.
    alice
        .send(ClientMessage::UnpublishTrack { track_id })
        .unwrap();
    alice
        .wait_for(Duration::from_secs(10), "unknown_track", |e| {
            is_error(e, ErrorCode::UnknownTrack).then_some(())
        })
        .await
        .unwrap();
    sender.abort();
}
