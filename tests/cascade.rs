//! One meeting across several nodes: media cascaded over authenticated QUIC links,
//! once per link and only on demand, and what happens when nodes die.

mod common;

use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{
    owner_of, payload, publish, send_packets, wait_for, Node, API_KEY, CASCADE_SECRET, SECRET,
};
use relais::cascade::link::{LinkEvent, Links};
use relais::cascade::wire;
use relais::client::{Client, ClientEvent, LocalTrack};
use relais::ids::TrackId;
use relais::load::{run_scenario, LoadConfig, Role, SpreadBy, Target};
use relais::signal::protocol::{ClientMessage, ServerMessage, TrackKind};
use serde_json::Value;
use tokio::sync::mpsc;

const TTL: u64 = 2;

/// These tests take turns: each runs three or four nodes and a dozen clients, and
/// exact delivery is only meaningful on a machine they do not overload together.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cluster(etcd: &Etcd, count: usize) -> Vec<Node> {
    let nodes: Vec<Node> = (0..count)
        .map(|i| {
            let extra = format!("lease_ttl_secs = {TTL}\ndrain_grace_secs = 2\n");
            Node::start_clustered(&etcd.endpoint(), &format!("n{i}"), "r", &extra)
        })
        .collect();
    wait_for(Duration::from_secs(10), "membership", || {
        let (_, listing) = nodes[0].admin("GET", "/admin/nodes");
        (listing["nodes"].as_array().map(Vec::len) == Some(count)).then_some(())
    });
    for node in &nodes {
        node.wait_ready();
    }
    nodes
}

/// A node's link counters towards `peer`: (packets sent, packets received).
fn link_packets(node: &Node, peer: &str) -> (u64, u64) {
    let (_, view) = node.admin("GET", "/admin/node");
    let links = view["cascade"]["links"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    links
        .iter()
        .find(|l| l["peer"] == peer)
        .map(|l| {
            let n = |k: &str| l[k].as_u64().unwrap_or(0);
            (n("packets_sent"), n("packets_received"))
        })
        .unwrap_or((0, 0))
}

fn cascade_view(node: &Node) -> Value {
    node.admin("GET", "/admin/node").1["cascade"].clone()
}

/// Reads audio packets until index `last` arrives; returns the indices in order
/// of arrival, checking that each payload is intact.
async fn receive_until(client: &mut Client, last: u64, within: Duration) -> Vec<u64> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + within;
    while let Some(event) = client.next_event(deadline.into()).await {
        if let ClientEvent::Rtp { packet, .. } = event {
            let Some(index) = common::index_of(TrackKind::Audio, &packet.payload) else {
                continue;
            };
            assert_eq!(
                packet.payload,
                payload(TrackKind::Audio, index, false),
                "intact"
            );
            seen.push(index);
            if index == last {
                break;
            }
        }
    }
    seen
}

/// Streams audio until every client has received at least one packet.
async fn warm_up(track: &LocalTrack, clients: &mut [Client]) {
    let sender = {
        let track = track.clone();
        tokio::spawn(async move { send_packets(&track, 0, 1_000, Duration::from_millis(10)).await })
    };
    for client in clients.iter_mut() {
        client
            .wait_for(Duration::from_secs(15), "first media", |e| {
                matches!(e, ClientEvent::Rtp { .. }).then_some(())
            })
            .await
            .expect("media arrives");
    }
    sender.abort();
    // Let what is in flight land, then forget it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for client in clients.iter_mut() {
        while client
            .next_event(tokio::time::Instant::now())
            .await
            .is_some()
        {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_crosses_each_link_once_and_only_where_wanted() {
    let _turn = TURN.lock().await;
    let etcd = Etcd::start();
    let nodes = cluster(&etcd, 3);
    let publisher = nodes[0].join_with("plenary", "pub", false).await;
    let mut subscribers = Vec::new();
    for i in 0..10 {
        subscribers.push(nodes[1].join_with("plenary", &format!("b{i}"), true).await);
    }
    subscribers.push(nodes[2].join_with("plenary", "c0", true).await);
    // A participant on a fourth node who subscribes to nothing.
    let idle_node = Node::start_clustered(
        &etcd.endpoint(),
        "n3",
        "r",
        &format!("lease_ttl_secs = {TTL}\n"),
    );
    idle_node.wait_ready();
    let _idle = idle_node.join_with("plenary", "idle", false).await;

    let track = publish(&publisher, "mic", TrackKind::Audio).await;
    warm_up(&track, &mut subscribers).await;

    let before_ab = link_packets(&nodes[0], "n1");
    let before_ba = link_packets(&nodes[1], "n0");
    const FIRST: u64 = 2_000;
    const COUNT: u64 = 200;
    let sender = {
        let track = track.clone();
        tokio::spawn(
            async move { send_packets(&track, FIRST, COUNT, Duration::from_millis(10)).await },
        )
    };
    let last = FIRST + COUNT - 1;
    for subscriber in &mut subscribers {
        let seen = receive_until(subscriber, last, Duration::from_secs(20)).await;
        let expected: Vec<u64> = (FIRST..=last).collect();
        assert_eq!(seen, expected, "every payload, intact and in order");
    }
    sender.await.expect("sender");
    let after_ab = link_packets(&nodes[0], "n1");
    let after_ba = link_packets(&nodes[1], "n0");
    // Ten subscribers on n1, one copy of each packet on the n0-to-n1 link.
    assert_eq!(after_ab.0 - before_ab.0, COUNT, "sent once per packet");
    assert_eq!(after_ba.1 - before_ba.1, COUNT, "received once per packet");
    // The node whose participant subscribes to nothing receives nothing.
    assert_eq!(link_packets(&idle_node, "n0").1, 0);
    assert_eq!(link_packets(&nodes[0], "n3").0, 0);
}

/// Waits for the server's `track_paused` about `track` with `paused`.
async fn await_paused(client: &mut Client, track: &TrackId, paused: bool) {
    client
        .wait_for(Duration::from_secs(15), "track_paused", |e| match e {
            ClientEvent::Server(ServerMessage::TrackPaused {
                track_id,
                paused: now,
                ..
            }) => (track_id == track && *now == paused).then_some(()),
            _ => None,
        })
        .await
        .expect("track_paused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_nobody_shows_on_a_node_stops_crossing_the_link() {
    let _turn = TURN.lock().await;
    let etcd = Etcd::start();
    let nodes = cluster(&etcd, 2);
    let publisher = nodes[0].join_with("gallery", "pub", false).await;
    let mut viewer = nodes[1].join_with("gallery", "viewer", true).await;
    let camera = publish(&publisher, "cam", TrackKind::Video).await;
    let sender = {
        let camera = camera.clone();
        tokio::spawn(
            async move { send_packets(&camera, 0, 3_000, Duration::from_millis(10)).await },
        )
    };
    let track = viewer
        .wait_for(Duration::from_secs(15), "video", |e| match e {
            ClientEvent::Rtp { track_id, .. } => Some(track_id.clone()),
            _ => None,
        })
        .await
        .expect("video arrives");

    // The only viewer on n1 hides it: n0 stops sending it over the link.
    let hide = |track_ids| ClientMessage::Hide { track_ids };
    viewer.send(hide(vec![track.clone()])).expect("send hide");
    await_paused(&mut viewer, &track, true).await;
    // Demand travels as a control message; what was in flight lands first.
    let settled = wait_for(Duration::from_secs(5), "the link quiet", || {
        let before = link_packets(&nodes[0], "n1").0;
        std::thread::sleep(Duration::from_millis(300));
        (link_packets(&nodes[0], "n1").0 == before).then_some(before)
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(link_packets(&nodes[0], "n1").0, settled, "nothing crosses");

    // Shown again: it crosses again and reaches the viewer.
    viewer.send(hide(Vec::new())).expect("send hide");
    await_paused(&mut viewer, &track, false).await;
    viewer
        .wait_for(Duration::from_secs(15), "video again", |e| {
            matches!(e, ClientEvent::Rtp { .. }).then_some(())
        })
        .await
        .expect("video again");
    assert!(link_packets(&nodes[0], "n1").0 > settled, "crossing again");
    sender.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_node_dying_does_not_interrupt_the_others() {
    let _turn = TURN.lock().await;
    let etcd = Etcd::start();
    let mut nodes = cluster(&etcd, 3);
    let publisher = nodes[0].join_with("briefing", "pub", false).await;
    let mut subscribers = vec![
        nodes[1].join_with("briefing", "stays", true).await,
        nodes[2].join_with("briefing", "goes", true).await,
    ];
    let track = publish(&publisher, "mic", TrackKind::Audio).await;
    warm_up(&track, &mut subscribers).await;
    let mut kept = subscribers.remove(0);

    let sender = {
        let track = track.clone();
        tokio::spawn(
            async move { send_packets(&track, 2_000, 300, Duration::from_millis(10)).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    nodes[2].kill();
    let seen = receive_until(&mut kept, 2_299, Duration::from_secs(20)).await;
    sender.await.expect("sender");
    // No gap: the surviving subscriber got every packet, before and after the death.
    let expected: Vec<u64> = (2_000..2_300).collect();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_publishers_node_dies_it_republishes_elsewhere() {
    let _turn = TURN.lock().await;
    let etcd = Etcd::start();
    let mut nodes = cluster(&etcd, 3);
    let publisher = nodes[0].join_with("desk", "anchor", false).await;
    let mut watchers = vec![
        nodes[1].join_with("desk", "w1", true).await,
        nodes[2].join_with("desk", "w2", true).await,
    ];
    let track = publish(&publisher, "mic", TrackKind::Audio).await;
    warm_up(&track, &mut watchers).await;

    let died = Instant::now();
    nodes[0].kill();
    drop(publisher);
    let others = [nodes[2].url()];
    let options = nodes[1].options("desk", "anchor");
    let publisher = Client::connect_retrying(options, &others, Duration::from_secs(20))
        .await
        .expect("publisher back");
    let track = publish(&publisher, "mic", TrackKind::Audio).await;
    let sender =
        tokio::spawn(
            async move { send_packets(&track, 2_000, 1_000, Duration::from_millis(10)).await },
        );
    for watcher in &mut watchers {
        watcher
            .wait_for(Duration::from_secs(20), "media again", |e| match e {
                ClientEvent::Rtp { packet, .. } => {
                    common::index_of(TrackKind::Audio, &packet.payload)
                        .filter(|i| *i >= 2_000)
                        .map(|_| ())
                }
                _ => None,
            })
            .await
            .expect("media from the republished track");
    }
    let gap = died.elapsed();
    sender.abort();
    eprintln!(
        "publisher node death to media again: {} ms",
        gap.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_owner_dies_another_shard_takes_the_room_and_the_meeting_goes_on() {
    let _turn = TURN.lock().await;
    let etcd = Etcd::start();
    let mut nodes = cluster(&etcd, 3);
    let first = nodes[0].join_with("council", "first", false).await;
    let owner = wait_for(Duration::from_secs(5), "owner", || {
        owner_of(&nodes[1], "council")
    });
    assert_eq!(owner.0, "n0");
    let speaker = nodes[1].join_with("council", "speaker", false).await;
    let mut listeners = vec![nodes[2].join_with("council", "listener", true).await];
    let track = publish(&speaker, "mic", TrackKind::Audio).await;
    warm_up(&track, &mut listeners).await;

    nodes[0].kill();
    drop(first);
    let sender = {
        let track = track.clone();
        tokio::spawn(
            async move { send_packets(&track, 2_000, 500, Duration::from_millis(10)).await },
        )
    };
    let (new_owner, new_epoch) = wait_for(Duration::from_secs(TTL + 4), "new owner", || {
        owner_of(&nodes[1], "council").filter(|(o, _)| o != "n0")
    });
    assert!(new_owner == "n1" || new_owner == "n2", "{new_owner}");
    assert!(
        new_epoch > owner.1,
        "epoch rises: {} -> {new_epoch}",
        owner.1
    );
    // Media between the surviving shards never stopped.
    let seen = receive_until(&mut listeners[0], 2_499, Duration::from_secs(20)).await;
    sender.await.expect("sender");
    let expected: Vec<u64> = (2_000..2_500).collect();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_and_garbage_is_dropped() {
    let _turn = TURN.lock().await;
    let etcd = Etcd::start();
    let nodes = cluster(&etcd, 1);
    let address: std::net::SocketAddr = cascade_view(&nodes[0])["address"]
        .as_str()
        .expect("cascade address")
        .parse()
        .expect("socket address");

    // Raw garbage at the UDP port.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    for i in 0..200u8 {
        let _ = socket.send_to(&[i; 64], address);
    }

    // A peer without the secret: no link.
    let (events, mut stranger_events) = mpsc::unbounded_channel();
    let stranger = Links::start(
        "stranger".into(),
        "not-the-cluster-secret-but-long-enough-0123",
        "127.0.0.1:0".parse().expect("addr"),
        events,
        None,
    )
    .expect("links");
    stranger.want("n0", address);
    wait_for(Duration::from_secs(10), "authentication failure", || {
        (cascade_view(&nodes[0])["auth_failures"].as_u64() >= Some(1)).then_some(())
    });
    assert!(!stranger.is_up("n0"));
    assert!(!matches!(
        stranger_events.try_recv(),
        Ok(LinkEvent::Up { .. })
    ));
    stranger.unwant("n0");

    // A peer with the secret sending datagrams that are not media of any channel.
    let (events, mut friend_events) = mpsc::unbounded_channel();
    let friend = Links::start(
        "friend".into(),
        CASCADE_SECRET,
        "127.0.0.1:0".parse().expect("addr"),
        events,
        None,
    )
    .expect("links");
    friend.want("n0", address);
    let up = tokio::time::timeout(Duration::from_secs(10), friend_events.recv()).await;
    assert!(matches!(up, Ok(Some(LinkEvent::Up { .. }))), "{up:?}");
    let path = friend.media_path("n0").expect("link up");
    for i in 0..50u8 {
        assert!(path.send(bytes::Bytes::from(vec![i; 30])));
        assert!(path.send(wire::encode_media(999, &[0x80; 40])));
    }
    wait_for(Duration::from_secs(10), "garbage counted", || {
        (cascade_view(&nodes[0])["garbage_datagrams"].as_u64() >= Some(100)).then_some(())
    });
    // The node is none the worse.
    let (status, _) = nodes[0].http_get("/readyz");
    assert_eq!(status, 200);
    let _ = nodes[0].join_with("after-garbage", "ok", true).await;
}

/// The load generator's cascade scenario, small: a room's participants joined in
/// turn through three nodes, so that every track crosses to the two other nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_run_spread_over_three_nodes_delivers_every_packet() {
    let _turn = TURN.lock().await;
    let etcd = Etcd::start();
    let nodes = cluster(&etcd, 3);
    let config = LoadConfig {
        target: Target::Relais,
        urls: nodes.iter().map(Node::url).collect(),
        spread: SpreadBy::Participants,
        api_key: API_KEY.into(),
        api_secret: SECRET.into(),
        rooms: 1,
        publishers: 2,
        subscribers: 4,
        video_bitrate: 200_000,
        fps: 20,
        keyframe_interval: Duration::from_secs(1),
        audio: true,
        speakers: None,
        duration: Duration::from_secs(3),
        ramp_per_second: 20.0,
        server_pids: nodes.iter().map(Node::pid).collect(),
        bind_ip: "127.0.0.1".parse().unwrap(),
        room_prefix: "load-spread".into(),
        progress: true,
        drop_every_nth_sent: None,
    };
    let summary = run_scenario(config).await.expect("the run starts");
    eprintln!("{}", summary.table());

    assert_eq!((summary.joined, summary.failed), (6, 0));
    assert_eq!(summary.missing_media, 0);
    for session in &summary.sessions {
        let heard = match session.role {
            Role::Publisher => 1,
            Role::Subscriber => 2,
        };
        assert_eq!(session.publishers_heard, heard, "{session:?}");
        assert!(session.video_packets > 0 && session.audio_packets > 0);
        assert_eq!(session.lost_packets, 0, "{session:?}");
    }
    assert_eq!(summary.duplicate_packets, 0);
    // Publishers joined through n0 and n1, subscribers through all three: each
    // publisher's node sent its tracks to both others.
    for (from, to) in [("n0", "n1"), ("n0", "n2"), ("n1", "n0"), ("n1", "n2")] {
        let index: usize = from[1..].parse().unwrap();
        let (sent, _) = link_packets(&nodes[index], to);
        assert!(sent > 0, "nothing went from {from} to {to}");
    }
    assert_eq!(summary.servers.len(), 3);
    assert!(summary.server_cpu_us_per_packet.is_some());
}
