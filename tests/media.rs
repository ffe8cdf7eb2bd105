//! End-to-end media through a real node: publish, subscribe, late join, leave.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use relais::client::{Client, ClientEvent, PublishCodec};
use relais::ids::TrackId;
use relais::signal::protocol::{LeaveReason, ServerMessage, TrackKind};
use tokio::time::Instant;

/// Received packet indices per track, in arrival order.
type Received = HashMap<TrackId, Vec<u64>>;

/// Collects packets until every track in `want` has at least `min` of them.
async fn collect(
    client: &mut Client,
    kinds: &HashMap<TrackId, TrackKind>,
    min: usize,
    within: Duration,
) -> Received {
    let deadline = Instant::now() + within;
    let mut received: Received = HashMap::new();
    while kinds
        .keys()
        .any(|id| received.get(id).map_or(0, Vec::len) < min)
    {
        let Some(event) = client.next_event(deadline).await else {
            panic!("timed out; received so far: {:?}", summary(&received));
        };
        if let ClientEvent::Rtp { track_id, packet } = event {
            let Some(kind) = kinds.get(&track_id) else {
                continue;
            };
            let index = index_of(*kind, &packet.payload).expect("payload carries an index");
            received.entry(track_id).or_default().push(index);
        }
    }
    received
}

fn summary(received: &Received) -> Vec<(String, usize)> {
    received
        .iter()
        .map(|(k, v)| (k.to_string(), v.len()))
        .collect()
}

/// Every payload after the first one received arrives, in order, with no gap.
fn assert_contiguous(indices: &[u64]) {
    let first = indices[0];
    for (offset, index) in indices.iter().enumerate() {
        assert_eq!(
            *index,
            first + offset as u64,
            "gap or reorder in {indices:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_late_join_and_leave() {
    let node = Node::start();
    let mut alice = node.join("standup", "alice").await;
    let mut bob = node.join("standup", "bob").await;

    let video = publish(&alice, "cam", TrackKind::Video).await;
    let audio = publish(&alice, "mic", TrackKind::Audio).await;
    // Media flows from the start, as a real client's would: the server learns of a
    // track when its first packets arrive.
    let sender = stream(vec![video, audio], 3000);
    let ids = published_ids(&mut alice, &["cam", "mic"]).await;
    let (video_id, audio_id) = (ids[0].clone(), ids[1].clone());
    let kinds = HashMap::from([
        (video_id.clone(), TrackKind::Video),
        (audio_id.clone(), TrackKind::Audio),
    ]);

    let received = collect(&mut bob, &kinds, 100, Duration::from_secs(20)).await;
    for indices in received.values() {
        assert_contiguous(indices);
    }

    // A participant joining later receives the tracks as well.
    let mut carol = node.join("standup", "carol").await;
    let received = collect(&mut carol, &kinds, 50, Duration::from_secs(20)).await;
    for indices in received.values() {
        assert_contiguous(indices);
    }
    // Bob's down-tracks are untouched by carol's: he still gets packets sent after
    // carol's, in order (what he received earlier may still sit in his queue).
    let newest = received.values().flatten().copied().max().unwrap_or(0);
    let received = collect(&mut bob, &kinds, 400, Duration::from_secs(20)).await;
    for indices in received.values() {
        assert_contiguous(indices);
        assert!(
            indices.iter().any(|i| *i > newest + 20),
            "bob stopped at {indices:?}"
        );
    }

    // The publisher leaves: the others are told it is gone, then its tracks.
    alice.close();
    for watcher in [&mut bob, &mut carol] {
        let (mut gone, mut left) = (Vec::new(), None);
        watcher
            .wait_for(Duration::from_secs(10), "alice's departure", |e| {
                match e {
                    ClientEvent::Server(ServerMessage::TrackUnpublished { track_id, .. }) => {
                        gone.push(track_id.clone())
                    }
                    ClientEvent::Server(ServerMessage::ParticipantLeft { reason, .. }) => {
                        left = Some(*reason)
                    }
                    _ => {}
                }
                (left.is_some() && gone.len() == 2).then_some(())
            })
            .await
            .expect("participant_left and track_unpublished");
        assert_eq!(left, Some(LeaveReason::ClientLeave));
        gone.sort();
        let mut expected = vec![video_id.clone(), audio_id.clone()];
        expected.sort();
        assert_eq!(gone, expected);
    }
    sender.abort();
}

/// An H.264 single-NAL payload: IDR (type 5) or non-IDR slice (type 1), then the index.
fn h264_packet(index: u64, keyframe: bool) -> rtc::rtp::packet::Packet {
    let mut packet = packet(TrackKind::Audio, index, false);
    let mut payload = vec![if keyframe { 0x65 } else { 0x41 }];
    payload.extend_from_slice(&packet.payload);
    packet.payload = payload.into();
    packet.header.timestamp = (index as u32).wrapping_mul(3000);
    packet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_is_forwarded_when_offered() {
    let node = Node::start();
    let alice = node.join("h264", "alice").await;
    let mut bob = node.join("h264", "bob").await;
    let source = relais::signal::protocol::TrackSource::Camera;
    let video = alice
        .publish_codec("cam", PublishCodec::H264, source)
        .await
        .unwrap();
    let sender = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(10));
        for index in 0..3000u64 {
            ticker.tick().await;
            let keyframe = index % 30 == 0 || video.take_keyframe_request();
            let _ = video.write(h264_packet(index, keyframe)).await;
        }
    });

    let track = bob
        .wait_for(Duration::from_secs(15), "track_published", |e| match e {
            ClientEvent::Server(ServerMessage::TrackPublished { track }) => Some(track.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(track.mime_type.to_ascii_lowercase(), "video/h264");

    // The first packet bob gets starts a keyframe; the rest follow without a gap.
    let mut indices = Vec::new();
    let mut first_nal = None;
    bob.wait_for(Duration::from_secs(15), "100 H.264 packets", |e| {
        if let ClientEvent::Rtp { track_id, packet } = e {
            if *track_id == track.id {
                first_nal.get_or_insert(packet.payload[0]);
                indices.extend(index_of(TrackKind::Audio, &packet.payload[1..]));
            }
        }
        (indices.len() >= 100).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        first_nal,
        Some(0x65),
        "the first packet forwarded is not an IDR"
    );
    assert_contiguous(&indices);
    sender.abort();
}
