//! Simulcast: a publisher sends three layers of its camera; each subscriber receives
//! one, chosen by the size it shows the track at, as one continuous stream.

mod common;

use std::time::Duration;

use common::etcd::Etcd;
use common::{index_of, packet, Node};
use relais::client::{Client, ClientEvent, Feedback, LocalTrack};
use relais::ids::TrackId;
use relais::signal::protocol::{
    ClientMessage, ErrorCode, LayerInfo, PauseCause, ServerMessage, TrackKind,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A layer's packets carry indices from `layer * LAYER_BASE` on.
const LAYER_BASE: u64 = 1_000_000;

fn layers() -> Vec<LayerInfo> {
    [("q", 320, 180), ("h", 640, 360), ("f", 1280, 720)]
        .into_iter()
        .map(|(rid, width, height)| LayerInfo {
            rid: rid.into(),
            width,
            height,
        })
        .collect()
}

/// Bytes added to each layer's packets, so that the layers cost what real ones do at
/// 100 packets a second: about 105, 345 and 905 kbit/s.
const LAYER_PADDING: [usize; 3] = [100, 400, 1_100];

/// Sends a frame of every layer every 10 ms, for at most a minute: a keyframe on each
/// every 30 frames, and on all of them when the server asks for one.
fn send_layers(camera: LocalTrack) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(10));
        for n in 0..6_000u64 {
            ticker.tick().await;
            let keyframe = n % 30 == 0 || camera.take_keyframe_request();
            for (layer, padding) in LAYER_PADDING.iter().enumerate().take(camera.layers()) {
                let index = layer as u64 * LAYER_BASE + n;
                let mut packet = packet(TrackKind::Video, index, keyframe);
                let mut payload = packet.payload.to_vec();
                payload.resize(payload.len() + padding, 0);
                packet.payload = payload.into();
                // Nothing goes out before negotiation; later writes succeed.
                let _ = camera.write_layer(layer, packet).await;
            }
        }
    })
}

/// A presenter in room `board` on `node`, sending its camera in three layers.
async fn present(node: &Node) -> (Client, JoinHandle<()>) {
    let publisher = node.join_with("board", "presenter", false).await;
    let camera = publisher
        .publish_layers("cam", layers())
        .await
        .expect("publish in layers");
    (publisher, send_layers(camera))
}

/// One received packet: its layer and its sequence number as the subscriber sees it.
async fn next_video(client: &mut Client, until: Instant) -> Option<(u64, u16)> {
    loop {
        match client.next_event(until).await? {
            ClientEvent::Rtp { packet, .. } => {
                let index = index_of(TrackKind::Video, &packet.payload)?;
                return Some((index / LAYER_BASE, packet.header.sequence_number));
            }
            _ => continue,
        }
    }
}

/// Reads video until a packet of `layer` arrives, then `count` more; returns the
/// (layer, sequence) of everything read from the first packet of `layer` on.
async fn switch_to(client: &mut Client, layer: u64, count: usize) -> Vec<(u64, u16)> {
    let until = Instant::now() + Duration::from_secs(15);
    let mut got = Vec::new();
    while let Some(received) = next_video(client, until).await {
        if got.is_empty() && received.0 != layer {
            continue;
        }
        got.push(received);
        if got.len() > count {
            return got;
        }
    }
    panic!("no layer {layer} within 15 s: {got:?}");
}

/// Reads video until more than 20 packets of layer `to` came, after `before` (what
/// was read already); checks that the layer changed once, from `from` to `to`, and
/// that the subscriber's sequence numbers went on by one throughout.
async fn switch_across(client: &mut Client, before: Vec<(u64, u16)>, from: u64, to: u64) {
    let until = Instant::now() + Duration::from_secs(15);
    let mut across = before;
    while let Some(received) = next_video(client, until).await {
        across.push(received);
        if across.iter().filter(|(layer, _)| *layer == to).count() > 20 {
            break;
        }
    }
    let switched = across.iter().position(|(layer, _)| *layer == to);
    let switched = switched.unwrap_or_else(|| panic!("no layer {to} after a keyframe"));
    assert!(
        across[..switched].iter().all(|(l, _)| *l == from),
        "{across:?}"
    );
    assert!(
        across[switched..].iter().all(|(l, _)| *l == to),
        "{across:?}"
    );
    let seqs: Vec<u16> = across.iter().map(|(_, seq)| *seq).collect();
    let steps: Vec<u16> = seqs.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
    assert!(steps.iter().all(|step| *step == 1), "{seqs:?}");
}

async fn video_track(client: &mut Client) -> TrackId {
    client
        .wait_for(Duration::from_secs(15), "the camera's video", |e| match e {
            ClientEvent::Rtp { track_id, .. } => Some(track_id.clone()),
            _ => None,
        })
        .await
        .expect("video arrives")
}

fn size(track_id: &TrackId, width: u32, height: u32) -> ClientMessage {
    ClientMessage::TrackSize {
        track_id: track_id.clone(),
        width,
        height,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tile_size_picks_the_layer_and_numbering_stays_continuous() {
    let node = Node::start();
    let (_publisher, sender) = present(&node).await;
    let mut viewer = node.join("board", "viewer").await;
    let track = video_track(&mut viewer).await;

    // No size said: the highest layer.
    let first = switch_to(&mut viewer, 2, 20).await;
    assert!(first.iter().all(|(layer, _)| *layer == 2), "{first:?}");

    // A small tile: the low layer, from its keyframe on, numbered on without a gap.
    viewer
        .send(size(&track, 320, 180))
        .expect("send track_size");
    let small = switch_to(&mut viewer, 0, 30).await;
    assert!(small.iter().all(|(layer, _)| *layer == 0), "{small:?}");
    // A large tile: the high layer again.
    viewer
        .send(size(&track, 1280, 720))
        .expect("send track_size");
    // One stream for the subscriber: sequence numbers go on by one across the switch.
    switch_across(&mut viewer, small, 0, 2).await;
    sender.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_viewers_of_one_camera_get_their_own_layers() {
    let node = Node::start();
    let (_publisher, sender) = present(&node).await;
    let mut small = node.join("board", "small").await;
    let mut large = node.join("board", "large").await;
    let track = video_track(&mut small).await;
    small.send(size(&track, 400, 300)).expect("send track_size");
    video_track(&mut large).await;
    large.send(size(&track, 800, 600)).expect("send track_size");

    let got_small = switch_to(&mut small, 0, 20).await;
    assert!(
        got_small.iter().all(|(layer, _)| *layer == 0),
        "{got_small:?}"
    );
    let got_large = switch_to(&mut large, 1, 20).await;
    assert!(
        got_large.iter().all(|(layer, _)| *layer == 1),
        "{got_large:?}"
    );
    sender.abort();
}

/// The viewer estimates its downlink at `bps` (REMB) about `track`.
fn estimate(viewer: &Client, track: &TrackId, bps: u64) {
    viewer
        .feedback(track, Feedback::Remb(bps))
        .expect("send REMB");
}

/// What the node's metrics say of participants held back by their downlink.
fn limited_participants(node: &Node) -> u32 {
    let scrape = node.scrape();
    let line = scrape
        .lines()
        .find(|l| l.starts_with("relais_bandwidth_limited_participants "))
        .expect("the gauge is exported");
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a count")
}

/// The next `track_paused` about `track`: whether paused, and why.
async fn next_pause(client: &mut Client, track: &TrackId) -> (bool, Option<PauseCause>) {
    client
        .wait_for(Duration::from_secs(15), "track_paused", |e| match e {
            ClientEvent::Server(ServerMessage::TrackPaused {
                track_id,
                paused,
                reason,
            }) if track_id == track => Some((*paused, *reason)),
            _ => None,
        })
        .await
        .expect("track_paused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_short_of_bandwidth_is_moved_down_and_back_up_as_it_recovers() {
    let node = Node::start();
    let (_publisher, sender) = present(&node).await;
    let mut viewer = node.join("board", "viewer").await;
    let track = video_track(&mut viewer).await;
    // No estimate yet: nothing is limited, and the large tile gets the high layer.
    viewer
        .send(size(&track, 1280, 720))
        .expect("send track_size");
    let high = switch_to(&mut viewer, 2, 20).await;
    assert!(high.iter().all(|(layer, _)| *layer == 2), "{high:?}");

    // A climbing estimate is no ceiling: the high layer stays.
    estimate(&viewer, &track, 300_000);
    let still = switch_to(&mut viewer, 2, 100).await;
    assert!(still.iter().all(|(layer, _)| *layer == 2), "{still:?}");
    // It falls to 250 kbit/s, which fits the low layer (105) but not the middle one
    // (345).
    estimate(&viewer, &track, 250_000);
    switch_across(&mut viewer, still, 2, 0).await;
    assert_eq!(
        limited_participants(&node),
        1,
        "operators see the viewer held back"
    );

    // Recovered: up one layer at a time, each after the estimate has had room to
    // spare for a while, with one continuous stream.
    estimate(&viewer, &track, 5_000_000);
    let middle = switch_to(&mut viewer, 1, 10).await;
    assert!(middle.iter().all(|(layer, _)| *layer == 1), "{middle:?}");
    switch_across(&mut viewer, middle, 1, 2).await;
    assert_eq!(limited_participants(&node), 0);

    // Not even the low layer fits: by default it keeps the low layer.
    estimate(&viewer, &track, 50_000);
    let low = switch_to(&mut viewer, 0, 50).await;
    assert!(low.iter().all(|(layer, _)| *layer == 0), "{low:?}");
    sender.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_that_does_not_fit_pauses_when_so_configured_and_says_why() {
    let node = Node::start_with_media("pause_for_bandwidth = true", "");
    let (_publisher, sender) = present(&node).await;
    let mut viewer = node.join("board", "viewer").await;
    let track = video_track(&mut viewer).await;
    // A climbing estimate, then a fall below the low layer's 105 kbit/s.
    for bps in [300_000, 50_000] {
        estimate(&viewer, &track, bps);
    }
    let bandwidth = (true, Some(PauseCause::Bandwidth));
    assert_eq!(next_pause(&mut viewer, &track).await, bandwidth);
    // While it stays paused, the client hears each new reason, and nothing between.
    for (hidden, reason) in [
        (vec![track.clone()], PauseCause::Hidden),
        (vec![], PauseCause::Bandwidth),
    ] {
        viewer
            .send(ClientMessage::Hide { track_ids: hidden })
            .expect("send hide");
        assert_eq!(next_pause(&mut viewer, &track).await, (true, Some(reason)));
    }
    // It recovers: the video resumes at the low layer.
    estimate(&viewer, &track, 5_000_000);
    assert_eq!(next_pause(&mut viewer, &track).await, (false, None));
    let back = switch_to(&mut viewer, 0, 10).await;
    assert!(back.iter().all(|(layer, _)| *layer == 0), "{back:?}");
    sender.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_layers_and_sizes_are_refused_with_a_clear_error() {
    let node = Node::start();
    let mut client = node.join("board", "odd").await;
    let mut twice = layers();
    twice[1].rid = "q".into();
    let mut shrinking = layers();
    shrinking.swap(0, 2);
    let cases = [
        (vec![layers()[0].clone()], "2 to"),
        (twice, "twice"),
        (shrinking, "smallest to the largest"),
    ];
    for (layers, why) in cases {
        let announce = ClientMessage::PublishTrack {
            cid: "cam".into(),
            kind: TrackKind::Video,
            source: Default::default(),
            name: String::new(),
            muted: false,
            layers,
        };
        client.send(announce).expect("send publish_track");
        let error = client
            .wait_for(Duration::from_secs(5), "an error", |e| match e {
                ClientEvent::Server(ServerMessage::Error(body)) => Some(body.clone()),
                _ => None,
            })
            .await
            .expect("refused");
        assert_eq!(error.code, ErrorCode::BadJson);
        assert!(error.message.contains(why), "{}: {why}", error.message);
    }
    let unknown = TrackId::from_string("TR_nothing".into());
    for (width, expected) in [(0, ErrorCode::BadJson), (640, ErrorCode::UnknownTrack)] {
        client
            .send(size(&unknown, width, 360))
            .expect("send track_size");
        let code = client
            .wait_for(Duration::from_secs(5), "an error", |e| match e {
                ClientEvent::Server(ServerMessage::Error(body)) => Some(body.code),
                _ => None,
            })
            .await
            .expect("refused");
        assert_eq!(code, expected);
    }
}

/// A presenter on n0 of a two-node cluster, sending three layers, and a viewer on n1.
struct AcrossNodes {
    nodes: Vec<Node>,
    _presenter: Client,
    sender: JoinHandle<()>,
    viewer: Client,
    /// The camera, as the viewer knows it.
    track: TrackId,
}

async fn across_nodes(etcd: &Etcd) -> AcrossNodes {
    let nodes = Node::cluster_of(&etcd.endpoint(), &["n0", "n1"], "lease_ttl_secs = 2\n");
    let (_presenter, sender) = present(&nodes[0]).await;
    let mut viewer = nodes[1].join_with("board", "remote", true).await;
    let track = video_track(&mut viewer).await;
    AcrossNodes {
        nodes,
        _presenter,
        sender,
        viewer,
        track,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_in_layers_crosses_to_another_node_in_the_layer_its_tiles_need() {
    let etcd = Etcd::start();
    // Every field is bound: what is not would be dropped, nodes and presenter too.
    let AcrossNodes {
        nodes: _nodes,
        _presenter,
        sender,
        mut viewer,
        track,
    } = across_nodes(&etcd).await;
    // Before its viewer says a size, the link carries the highest layer.
    let large = switch_to(&mut viewer, 2, 30).await;
    assert!(large.iter().all(|(layer, _)| *layer == 2), "{large:?}");
    // A small tile on n1: n0 sends the low layer over the link instead, and the
    // viewer sees one stream throughout.
    viewer
        .send(size(&track, 320, 180))
        .expect("send track_size");
    switch_across(&mut viewer, large, 2, 0).await;
    sender.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_on_another_node_short_of_bandwidth_gets_a_lower_layer_over_the_link() {
    let etcd = Etcd::start();
    let AcrossNodes {
        nodes,
        _presenter,
        sender,
        mut viewer,
        track,
    } = across_nodes(&etcd).await;
    viewer
        .send(size(&track, 1280, 720))
        .expect("send track_size");
    let high = switch_to(&mut viewer, 2, 30).await;
    assert!(high.iter().all(|(layer, _)| *layer == 2), "{high:?}");
    // n1 knows what the layers cost from n0, where all of them arrive: 250 kbit/s
    // takes the low layer only, and n0 sends that one over the link.
    for bps in [300_000, 250_000] {
        estimate(&viewer, &track, bps);
    }
    switch_across(&mut viewer, high, 2, 0).await;
    assert_eq!(limited_participants(&nodes[1]), 1);
    // Recovered: the link carries the higher layers again, one at a time.
    estimate(&viewer, &track, 5_000_000);
    let middle = switch_to(&mut viewer, 1, 10).await;
    assert!(middle.iter().all(|(layer, _)| *layer == 1), "{middle:?}");
    switch_across(&mut viewer, middle, 1, 2).await;
    sender.abort();
}
