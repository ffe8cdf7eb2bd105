//! Cluster placement against a real etcd and real relais processes: membership,
//! one owner per room under concurrent joins, failover after `kill -9`, fencing
//! of a stopped node, draining on SIGTERM, and an etcd outage.

mod common;

use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{owner_of, wait_for, Node};
use relais::client::{Client, ClientEvent};
use relais::signal::protocol::{ErrorCode, LeaveReason, ServerMessage, TrackKind};
use serde_json::Value;

/// Lease TTL of the test clusters, in seconds.
const TTL: u64 = 2;

fn cluster(etcd: &Etcd, regions: &[&str], extra: &str) -> Vec<Node> {
    let extra = format!("lease_ttl_secs = {TTL}\ndrain_grace_secs = 3\n{extra}");
    regions
        .iter()
        .enumerate()
        .map(|(i, region)| {
            Node::start_clustered(&etcd.endpoint(), &format!("n{i}"), region, &extra)
        })
        .collect()
}

fn ids_of(listing: &Value, key: &str, field: &str) -> Vec<String> {
    listing[key]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item[field].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn node_by_id<'a>(nodes: &'a [Node], id: &str) -> &'a Node {
    let index: usize = id[1..].parse().expect("node ids are n0, n1, ...");
    &nodes[index]
}

/// The rooms a node says it acts as owner of right now.
fn acting_rooms(node: &Node) -> Vec<String> {
    let (status, view) = node.admin("GET", "/admin/node");
    if status != 200 {
        return Vec::new();
    }
    view["owned"]
        .as_array()
        .map(|rooms| {
            rooms
                .iter()
                .filter(|r| r["acting"] == true)
                .filter_map(|r| r["room"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn joined_node(client: &mut Client) -> String {
    client
        .wait_for(Duration::from_secs(20), "joined", |e| match e {
            ClientEvent::Server(ServerMessage::Joined { node, .. }) => Some(node.clone()),
            _ => None,
        })
        .await
        .expect("joined")
}

/// Joins through `entry`, trying the other nodes when it is gone.
async fn rejoin(entry: &Node, others: &[&Node], room: &str, identity: &str) -> Client {
    let fallbacks: Vec<String> = others.iter().map(|n| n.url()).collect();
    Client::connect_retrying(
        entry.options(room, identity),
        &fallbacks,
        Duration::from_secs(20),
    )
    .await
    .expect("rejoined")
}

async fn next_rtp_within(client: &mut Client, within: Duration) -> bool {
    client
        .wait_for(within, "media", |e| {
            matches!(e, ClientEvent::Rtp { .. }).then_some(())
        })
        .await
        .is_ok()
}

#[test]
fn three_nodes_register_and_each_lists_all_three() {
    let etcd = Etcd::start();
    let nodes = cluster(&etcd, &["north", "south", "east"], "");
    for node in &nodes {
        let listed = wait_for(Duration::from_secs(10), "three serving nodes", || {
            let (status, body) = node.admin("GET", "/admin/nodes");
            let states = ids_of(&body, "nodes", "state");
            (status == 200 && states.len() == 3 && states.iter().all(|s| s == "serving"))
                .then_some(body)
        });
        let mut ids = ids_of(&listed, "nodes", "id");
        ids.sort();
        assert_eq!(ids, ["n0", "n1", "n2"]);
        let mut regions = ids_of(&listed, "nodes", "region");
        regions.sort();
        assert_eq!(regions, ["east", "north", "south"]);
        let (status, ready) = node.http_get("/readyz");
        assert_eq!(status, 200, "{ready}");
    }
    // Operations need the admin grant.
    let plain = nodes[0].token("*", "someone");
    let (status, _) = common::http_at(
        &nodes[0].addr.to_string(),
        "GET",
        "/admin/nodes",
        Some(&plain),
    );
    assert_eq!(status, 403);
    let (status, _) = common::http_at(&nodes[0].addr.to_string(), "GET", "/admin/nodes", None);
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_through_different_nodes_meet_under_one_owner() {
    let etcd = Etcd::start();
    let nodes = cluster(&etcd, &["r", "r", "r"], "");
    wait_for(Duration::from_secs(10), "membership", || {
        (ids_of(&nodes[0].admin("GET", "/admin/nodes").1, "nodes", "id").len() == 3).then_some(())
    });
    let joins = (0..9).map(|i| {
        let options = nodes[i % 3].options("all-hands", &format!("p{i}"));
        tokio::spawn(async move {
            let mut client = Client::connect(options).await.expect("connect");
            let (node, present) = client
                .wait_for(Duration::from_secs(20), "joined", |e| match e {
                    ClientEvent::Server(ServerMessage::Joined {
                        node, participants, ..
                    }) => Some((
                        node.clone(),
                        participants
                            .iter()
                            .map(|p| p.identity.clone())
                            .collect::<std::collections::BTreeSet<_>>(),
                    )),
                    _ => None,
                })
                .await
                .expect("joined");
            (client, node, present)
        })
    });
    let mut clients = Vec::new();
    for join in joins.collect::<Vec<_>>() {
        clients.push(join.await.expect("join task"));
    }
    // Each participant stays on the node it reached; the room spans the three.
    let served_by: std::collections::BTreeSet<_> =
        clients.iter().map(|(_, n, _)| n.clone()).collect();
    assert_eq!(served_by.len(), 3, "{served_by:?}");
    let owner = wait_for(Duration::from_secs(5), "owner", || {
        owner_of(&nodes[0], "all-hands")
    })
    .0;

    // Every node sees the same single owner, and the room holds all nine.
    for node in &nodes {
        let (listed_owner, _) = wait_for(Duration::from_secs(5), "room listing", || {
            owner_of(node, "all-hands")
        });
        assert_eq!(listed_owner, owner);
    }
    let acting: Vec<_> = nodes
        .iter()
        .filter(|n| !acting_rooms(n).is_empty())
        .collect();
    assert_eq!(acting.len(), 1, "exactly one node acts as owner");
    // Asked through a node that is not the owner, the detail is forwarded.
    let other = nodes
        .iter()
        .find(|n| acting_rooms(n).is_empty())
        .expect("a non-owner");
    let detail = wait_for(Duration::from_secs(5), "nine participants", || {
        let (status, detail) = other.admin("GET", "/admin/rooms/all-hands");
        (status == 200 && detail["participants"].as_array().map(Vec::len) == Some(9))
            .then_some(detail)
    });
    assert_eq!(detail["owner"], owner.as_str());
    assert_eq!(common::serving_nodes(&detail), ["n0", "n1", "n2"]);
    // And every participant sees the eight others, wherever they are served.
    for (client, _, seen) in &mut clients {
        if seen.len() == 8 {
            continue;
        }
        client
            .wait_for(Duration::from_secs(10), "eight others", |e| {
                if let ClientEvent::Server(ServerMessage::ParticipantJoined { participant }) = e {
                    seen.insert(participant.identity.clone());
                }
                (seen.len() == 8).then_some(())
            })
            .await
            .expect("everyone meets everyone");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_owner_moves_the_room_and_media_comes_back() {
    let etcd = Etcd::start();
    let mut nodes = cluster(&etcd, &["r", "r", "r"], "");
    wait_for(Duration::from_secs(10), "membership", || {
        (ids_of(&nodes[0].admin("GET", "/admin/nodes").1, "nodes", "id").len() == 3).then_some(())
    });
    let publisher = nodes[0].join("standup", "alice").await;
    let mut subscriber = nodes[1].join("standup", "bob").await;
    let track = common::publish(&publisher, "mic", TrackKind::Audio).await;
    let streaming = common::stream(vec![track], 2_000);
    assert!(next_rtp_within(&mut subscriber, Duration::from_secs(10)).await);
    let (owner, epoch) = wait_for(Duration::from_secs(5), "owner", || {
        owner_of(&nodes[0], "standup")
    });

    let index: usize = owner[1..].parse().expect("node id");
    let survivors: Vec<usize> = (0..3).filter(|i| *i != index).collect();
    let killed_at = Instant::now();
    nodes[index].kill();
    streaming.abort();
    drop((publisher, subscriber));

    // Both participants were on the dead node: they come back through the others.
    let (a, b) = (&nodes[survivors[0]], &nodes[survivors[1]]);
    let (only_b, only_a) = ([b], [a]);
    let (mut publisher, mut subscriber) = tokio::join!(
        rejoin(a, &only_b, "standup", "alice"),
        rejoin(b, &only_a, "standup", "bob"),
    );
    joined_node(&mut publisher).await;
    joined_node(&mut subscriber).await;
    let (new_owner, new_epoch) = wait_for(Duration::from_secs(5), "new owner", || {
        owner_of(a, "standup").filter(|(o, _)| *o != owner)
    });
    let owner_after = killed_at.elapsed();
    assert!(new_epoch > epoch, "epoch must rise: {epoch} -> {new_epoch}");
    assert!(
        owner_after <= Duration::from_secs(TTL + 2),
        "new owner after {owner_after:?}"
    );
    let track = common::publish(&publisher, "mic", TrackKind::Audio).await;
    let streaming = common::stream(vec![track], 2_000);
    assert!(next_rtp_within(&mut subscriber, Duration::from_secs(10)).await);
    let media_after = killed_at.elapsed();
    streaming.abort();
    eprintln!(
        "failover: new owner {new_owner} after {} ms, media again after {} ms",
        owner_after.as_millis(),
        media_after.as_millis()
    );
    assert!(
        media_after <= Duration::from_secs(TTL + 7),
        "media after {media_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_owner_resumes_fenced_and_never_acts_beside_the_new_owner() {
    let etcd = Etcd::start();
    let nodes = cluster(&etcd, &["r", "r", "r"], "");
    wait_for(Duration::from_secs(10), "membership", || {
        (ids_of(&nodes[0].admin("GET", "/admin/nodes").1, "nodes", "id").len() == 3).then_some(())
    });
    let mut early = nodes[0].join("board", "carol").await;
    let (owner, epoch) = wait_for(Duration::from_secs(5), "owner", || {
        owner_of(&nodes[0], "board")
    });
    let frozen = node_by_id(&nodes, &owner);
    let others: Vec<&Node> = nodes.iter().filter(|n| n.addr != frozen.addr).collect();

    frozen.signal("STOP");
    // Once the lease is gone, the next join elsewhere creates a new owner.
    wait_for(Duration::from_secs(TTL + 3), "owner key to expire", || {
        owner_of(others[0], "board").is_none().then_some(())
    });
    let mut late = rejoin(others[0], &[others[1]], "board", "dave").await;
    let new_owner = joined_node(&mut late).await;
    assert_ne!(new_owner, owner);
    let (_, new_epoch) = owner_of(others[0], "board").expect("new owner listed");
    assert!(new_epoch > epoch);

    frozen.signal("CONT");
    // From the moment it resumes, at most one node acts as the room's owner.
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        let acting = nodes
            .iter()
            .filter(|n| acting_rooms(n).iter().any(|r| r == "board"))
            .count();
        assert!(acting <= 1, "two nodes act as owner of the room");
    }
    // The resumed node gave the room up: its participant is told to move on.
    let moved = early
        .wait_for(Duration::from_secs(10), "leave or close", |e| match e {
            ClientEvent::Server(ServerMessage::Leave { reason }) => Some(Some(*reason)),
            ClientEvent::Closed => Some(None),
            _ => None,
        })
        .await
        .expect("the old session ends");
    assert!(
        matches!(moved, Some(LeaveReason::Migrate) | None),
        "{moved:?}"
    );
    // A join through it now serves a shard of the new owner's room.
    let mut again = rejoin(frozen, &others, "board", "erin").await;
    joined_node(&mut again).await;
    assert!(acting_rooms(frozen).is_empty());
    let listed = owner_of(frozen, "board").expect("room listed");
    assert_eq!(listed, (new_owner, new_epoch));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_revokes_the_lease_at_once_and_the_rooms_move() {
    let etcd = Etcd::start();
    // A long TTL shows that the move does not wait for the lease to expire.
    let extra = "lease_ttl_secs = 30\n";
    let mut nodes: Vec<Node> = ["r", "r", "r"]
        .iter()
        .enumerate()
        .map(|(i, region)| {
            Node::start_clustered(
                &etcd.endpoint(),
                &format!("n{i}"),
                region,
                &format!("{extra}drain_grace_secs = 3\n"),
            )
        })
        .collect();
    wait_for(Duration::from_secs(10), "membership", || {
        (ids_of(&nodes[0].admin("GET", "/admin/nodes").1, "nodes", "id").len() == 3).then_some(())
    });
    let mut client = nodes[0].join("retro", "frank").await;
    let (owner, _) = wait_for(Duration::from_secs(5), "owner", || {
        owner_of(&nodes[0], "retro")
    });
    let index: usize = owner[1..].parse().expect("node id");
    let other = (index + 1) % 3;

    let started = Instant::now();
    let status = nodes[index].terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {status:?}"
    );
    let gone = ids_of(&nodes[other].admin("GET", "/admin/nodes").1, "nodes", "id");
    assert!(!gone.contains(&owner), "lease revoked on exit: {gone:?}");
    assert!(owner_of(&nodes[other], "retro").is_none(), "room released");
    assert!(started.elapsed() < Duration::from_secs(10));

    let reason = client
        .wait_for(Duration::from_secs(5), "leave", |e| match e {
            ClientEvent::Server(ServerMessage::Leave { reason }) => Some(*reason),
            _ => None,
        })
        .await
        .expect("told to move");
    assert_eq!(reason, LeaveReason::Migrate);
    let entry = &nodes[other];
    let rest: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index && *i != other)
        .map(|(_, n)| n)
        .collect();
    let mut moved = rejoin(entry, &rest, "retro", "frank").await;
    let served = joined_node(&mut moved).await;
    assert_ne!(served, owner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_keeps_media_refuses_joins_and_heals() {
    let mut etcd = Etcd::start();
    let nodes = cluster(&etcd, &["r", "r"], "");
    wait_for(Duration::from_secs(10), "membership", || {
        (ids_of(&nodes[0].admin("GET", "/admin/nodes").1, "nodes", "id").len() == 2).then_some(())
    });
    let publisher = nodes[0].join("ops", "gina").await;
    let (owner, epoch) = wait_for(Duration::from_secs(5), "owner", || {
        owner_of(&nodes[0], "ops")
    });
    let host = node_by_id(&nodes, &owner);
    let mut subscriber = host.join("ops", "hank").await;
    let track = common::publish(&publisher, "mic", TrackKind::Audio).await;
    let streaming = common::stream(vec![track], 1_500);
    assert!(next_rtp_within(&mut subscriber, Duration::from_secs(10)).await);

    etcd.stop();
    // Longer than the lease: media keeps flowing the whole time.
    let outage_end = Instant::now() + Duration::from_secs(TTL + 2);
    while Instant::now() < outage_end {
        assert!(
            next_rtp_within(&mut subscriber, Duration::from_secs(1)).await,
            "media stopped during the etcd outage"
        );
    }
    let (status, _) = host.http_get("/readyz");
    assert_eq!(status, 503, "not ready while cut off from etcd");
    // A join fails fast with a clear, retryable error.
    let asked = Instant::now();
    let mut refused = Client::connect(host.options("new-room", "ivan"))
        .await
        .expect("socket");
    let code = refused
        .wait_for(Duration::from_secs(5), "error", |e| match e {
            ClientEvent::Server(ServerMessage::Error(body)) => Some(body.code),
            _ => None,
        })
        .await
        .expect("join refused");
    assert!(
        matches!(code, ErrorCode::ClusterUnavailable | ErrorCode::NodeFenced),
        "{code:?}"
    );
    assert!(asked.elapsed() < Duration::from_secs(3));

    etcd.restart();
    for node in &nodes {
        wait_for(Duration::from_secs(15), "ready again", || {
            (node.http_get("/readyz").0 == 200).then_some(())
        });
    }
    let (owner_after, epoch_after) = wait_for(Duration::from_secs(5), "room listed", || {
        owner_of(&nodes[1], "ops")
    });
    assert_eq!(owner_after, owner);
    assert!(epoch_after >= epoch);
    assert!(next_rtp_within(&mut subscriber, Duration::from_secs(2)).await);
    // A newcomer on the other node joins the same meeting and receives the media.
    let mut late = Client::connect(nodes[1].options("ops", "judy"))
        .await
        .expect("connect");
    joined_node(&mut late).await;
    assert!(next_rtp_within(&mut late, Duration::from_secs(10)).await);
    streaming.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_act_on_a_room_through_any_node_and_stale_epochs_are_refused() {
    let etcd = Etcd::start();
    let nodes = cluster(&etcd, &["r", "r"], "");
    wait_for(Duration::from_secs(10), "membership", || {
        (ids_of(&nodes[0].admin("GET", "/admin/nodes").1, "nodes", "id").len() == 2).then_some(())
    });
    let mut kept = nodes[0].join("town-hall", "kim").await;
    let mut removed = nodes[1].join("town-hall", "lee").await;
    let (owner, epoch) = wait_for(Duration::from_secs(5), "owner", || {
        owner_of(&nodes[0], "town-hall")
    });
    let owner_node = node_by_id(&nodes, &owner);
    let other = nodes
        .iter()
        .find(|n| n.addr != owner_node.addr)
        .expect("two nodes");

    // A request stamped with an epoch that is not the owner's is refused and counted.
    let stale = format!("/admin/rooms/town-hall?epoch={}", epoch - 1);
    let (status, body) = owner_node.admin("GET", &stale);
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "stale_epoch");
    let (_, view) = owner_node.admin("GET", "/admin/node");
    assert!(
        view["counters"]["stale_epoch"].as_u64() >= Some(1),
        "{view}"
    );

    // Removing a participant through the other node is forwarded to the owner, once
    // the owner has heard of her from her node's shard.
    wait_for(Duration::from_secs(5), "lee known to the owner", || {
        let (_, room) = owner_node.admin("GET", "/admin/rooms/town-hall");
        let participants = room["participants"].as_array().cloned().unwrap_or_default();
        participants
            .iter()
            .any(|p| p["identity"] == "lee")
            .then_some(())
    });
    let (status, body) = other.admin("DELETE", "/admin/rooms/town-hall/participants/lee");
    assert_eq!(status, 200, "{body}");
    let reason = removed
        .wait_for(Duration::from_secs(5), "leave", |e| match e {
            ClientEvent::Server(ServerMessage::Leave { reason }) => Some(*reason),
            _ => None,
        })
        .await
        .expect("removed participant is told");
    assert_eq!(reason, LeaveReason::Removed);
    let (status, _) = other.admin("DELETE", "/admin/rooms/town-hall/participants/lee");
    assert_eq!(status, 404);

    // Ending the room, again through the other node.
    let (status, body) = other.admin("DELETE", "/admin/rooms/town-hall");
    assert_eq!(status, 200, "{body}");
    let reason = kept
        .wait_for(Duration::from_secs(5), "leave", |e| match e {
            ClientEvent::Server(ServerMessage::Leave { reason }) => Some(*reason),
            _ => None,
        })
        .await
        .expect("participants are told");
    assert_eq!(reason, LeaveReason::RoomClosed);
    wait_for(Duration::from_secs(5), "room gone", || {
        owner_of(&nodes[0], "town-hall").is_none().then_some(())
    });
    let (status, body) = other.admin("GET", "/admin/rooms/town-hall");
    assert_eq!(status, 404, "{body}");
    let (status, _) = other.admin("GET", "/admin/rooms/bad%20name");
    assert_eq!(status, 400);
}
