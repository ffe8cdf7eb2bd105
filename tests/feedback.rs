//! RTCP feedback from subscribers: lost packets are retransmitted on NACK, and
//! keyframe requests reach the publisher, throttled.

mod common;

use std::time::Duration;

use common::*;
use relais::client::{Client, ClientEvent, ClientOptions, Feedback};
use relais::signal::protocol::TrackKind;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_lost_on_the_way_to_a_subscriber_are_retransmitted() {
    let node = Node::start();
    let mut alice = node.join("nack", "alice").await;
    // Bob's socket drops every 10th RTP packet; his stack NACKs them.
    let lossy = ClientOptions {
        drop_every_nth_rtp: Some(10),
        ..node.options("nack", "bob")
    };
    let mut bob = Client::connect(lossy).await.unwrap();
    let video = publish(&alice, "cam", TrackKind::Video).await;
    let sender = stream(vec![video], 6000);
    let track_id = published_ids(&mut alice, &["cam"]).await.remove(0);

    // Collect 300 packets; retransmissions fill the holes the loss made.
    let mut indices = Vec::new();
    bob.wait_for(Duration::from_secs(30), "300 packets", |e| {
        if let ClientEvent::Rtp {
            track_id: t,
            packet,
        } = e
        {
            if *t == track_id {
                indices.extend(index_of(TrackKind::Video, &packet.payload));
            }
        }
        (indices.len() >= 300).then_some(())
    })
    .await
    .unwrap();
    assert!(
        bob.dropped_packets() >= 20,
        "only {} packets were dropped",
        bob.dropped_packets()
    );

    // Every index from the first to the last seen arrived, some of them late.
    let (first, last) = (indices[0], *indices.iter().max().unwrap());
    let mut sorted = indices.clone();
    sorted.sort_unstable();
    sorted.dedup();
    let late = indices.windows(2).filter(|w| w[1] < w[0]).count();
    // The newest few may still be waiting for their retransmission.
    let settled: Vec<u64> = sorted.iter().copied().filter(|i| *i + 20 <= last).collect();
    let expected: Vec<u64> = (first..first + settled.len() as u64).collect();
    assert_eq!(settled, expected, "holes remain in {first}..{last}");
    assert!(late >= 10, "only {late} packets came back out of order");
    sender.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyframe_requests_reach_the_publisher_throttled() {
    let node = Node::start();
    let mut alice = node.join("pli", "alice").await;
    let mut bob = node.join("pli", "bob").await;
    let video = publish(&alice, "cam", TrackKind::Video).await;
    let counter = video.clone();
    // No periodic keyframes: every keyframe answers a request.
    let sender = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(10));
        for index in 0..6000u64 {
            ticker.tick().await;
            let keyframe = video.take_keyframe_request();
            let _ = video.write(packet(TrackKind::Video, index, keyframe)).await;
        }
    });
    let track_id = published_ids(&mut alice, &["cam"]).await.remove(0);
    bob.wait_for(Duration::from_secs(15), "video", |e| {
        matches!(e, ClientEvent::Rtp { .. }).then_some(())
    })
    .await
    .unwrap();

    // Twenty requests within 200 ms become one or two upstream, not twenty.
    let before = counter.keyframe_requests();
    for _ in 0..20 {
        bob.feedback(&track_id, Feedback::Pli).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter.keyframe_requests() == before {
        assert!(
            Instant::now() < deadline,
            "no keyframe request reached the publisher"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let a pending, throttled request come through too before counting.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let forwarded = counter.keyframe_requests() - before;
    assert!(
        (1..=3).contains(&forwarded),
        "{forwarded} requests reached the publisher"
    );
    sender.abort();
}
