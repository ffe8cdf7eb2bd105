//! Active speakers: the node reads the audio level every publisher sends (RFC 6464)
//! and tells the room who speaks, on one node and across a cascade link.

mod common;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::etcd::Etcd;
use common::{packet, publish, wait_for, Node};
use relais::client::{Client, ClientEvent, LocalTrack};
use relais::ids::ParticipantId;
use relais::media::speaker::SILENT_DBOV;
use relais::signal::protocol::{ServerMessage, TrackKind};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Loud speech, well above the detector's threshold.
const TALKING_DBOV: u8 = 25;

/// A microphone that sends a packet every 20 ms at the level the test sets.
struct Voice {
    level: Arc<AtomicU8>,
    sender: JoinHandle<()>,
}

impl Voice {
    fn start(track: LocalTrack) -> Voice {
        let level = Arc::new(AtomicU8::new(SILENT_DBOV));
        let heard = level.clone();
        let sender = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(20));
            // Bounded: a minute of packets, far longer than any test here runs.
            for index in 0..3_000 {
                ticker.tick().await;
                let dbov = heard.load(Ordering::Relaxed);
                let _ = track
                    .write_with_level(packet(TrackKind::Audio, index, false), dbov)
                    .await;
            }
        });
        Voice { level, sender }
    }

    fn talk(&self) {
        self.level.store(TALKING_DBOV, Ordering::Relaxed);
    }

    fn hush(&self) {
        self.level.store(SILENT_DBOV, Ordering::Relaxed);
    }
}

impl Drop for Voice {
    fn drop(&mut self) {
        self.sender.abort();
    }
}

/// The next `speakers_changed` before `deadline`.
async fn next_speakers(
    client: &mut Client,
    deadline: Instant,
) -> Option<(Option<ParticipantId>, Vec<ParticipantId>)> {
    while let Some(event) = client.next_event(deadline).await {
        if let ClientEvent::Server(ServerMessage::SpeakersChanged { dominant, speakers }) = event {
            return Some((dominant, speakers));
        }
    }
    None
}

/// Waits until `who` is the dominant speaker, returning the speakers then.
async fn await_dominant(client: &mut Client, who: &ParticipantId) -> Vec<ParticipantId> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match next_speakers(client, deadline).await {
            Some((Some(dominant), speakers)) if &dominant == who => return speakers,
            Some(_) => continue,
            None => panic!("{who} never became the dominant speaker"),
        }
    }
}

/// Joins through `node`; returns the client, its participant id and the node
/// that serves it.
async fn joined_id(node: &Node, room: &str, identity: &str) -> (Client, ParticipantId, String) {
    let options = node.options(room, identity);
    let mut client = Client::connect(options).await.expect("connect");
    let (id, serving) = client
        .wait_for(Duration::from_secs(10), "joined", |e| match e {
            ClientEvent::Server(ServerMessage::Joined {
                participant, node, ..
            }) => Some((participant.id.clone(), node.clone())),
            _ => None,
        })
        .await
        .expect("joined");
    (client, id, serving)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dominant_speaker_follows_who_talks_and_ignores_a_cough() {
    let node = Node::start();
    let (alice, alice_id, _) = joined_id(&node, "standup", "alice").await;
    let (bob, bob_id, _) = joined_id(&node, "standup", "bob").await;
    let (mut carol, _, _) = joined_id(&node, "standup", "carol").await;
    let alice_voice = Voice::start(publish(&alice, "mic", TrackKind::Audio).await);
    let bob_voice = Voice::start(publish(&bob, "mic", TrackKind::Audio).await);

    alice_voice.talk();
    let speakers = await_dominant(&mut carol, &alice_id).await;
    assert_eq!(speakers, std::slice::from_ref(&alice_id), "only alice speaks");

    // Bob coughs: 100 ms of sound, a third of the speech a speaker needs.
    bob_voice.talk();
    tokio::time::sleep(Duration::from_millis(100)).await;
    bob_voice.hush();
    let watch_until = Instant::now() + Duration::from_millis(1_500);
    while let Some((dominant, speakers)) = next_speakers(&mut carol, watch_until).await {
        assert_eq!(dominant.as_ref(), Some(&alice_id), "a cough took over");
        assert!(!speakers.contains(&bob_id), "a cough made bob a speaker");
    }

    // Alice stops and Bob talks: he takes over; silence keeps him dominant.
    alice_voice.hush();
    bob_voice.talk();
    await_dominant(&mut carol, &bob_id).await;
    bob_voice.hush();

    // Someone who joins now learns who spoke last at once.
    let (mut dave, _, _) = joined_id(&node, "standup", "dave").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let (dominant, _) = next_speakers(&mut dave, deadline)
        .await
        .expect("a joiner is told who speaks");
    assert_eq!(dominant, Some(bob_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speaker_on_one_node_is_heard_on_another() {
    let etcd = Etcd::start();
    let nodes: Vec<Node> = ["n0", "n1"]
        .iter()
        .map(|id| Node::start_clustered(&etcd.endpoint(), id, "r", "lease_ttl_secs = 2\n"))
        .collect();
    wait_for(Duration::from_secs(10), "membership", || {
        let (_, listing) = nodes[0].admin("GET", "/admin/nodes");
        (listing["nodes"].as_array().map(Vec::len) == Some(2)).then_some(())
    });
    for node in &nodes {
        node.wait_ready();
    }

    let (alice, alice_id, alice_node) = joined_id(&nodes[0], "townhall", "alice").await;
    let (mut bob, _, bob_node) = joined_id(&nodes[1], "townhall", "bob").await;
    assert_ne!(
        alice_node, bob_node,
        "the two are served by different nodes"
    );

    let voice = Voice::start(publish(&alice, "mic", TrackKind::Audio).await);
    voice.talk();
    let speakers = await_dominant(&mut bob, &alice_id).await;
    assert_eq!(speakers, [alice_id]);
}
