//! Active speakers: the node reads the audio level every publisher sends (RFC 6464)
//! and tells the room who speaks, on one node and across a cascade link; in a large
//! room, only the cameras of the most recent speakers are forwarded (last-N); and a
//! subscriber is sent no video it says it does not show.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::etcd::Etcd;
use common::{packet, publish, send_packets, Node};
use relais::client::{Client, ClientEvent, LocalTrack};
use relais::ids::{ParticipantId, TrackId};
use relais::media::speaker::SILENT_DBOV;
use relais::signal::protocol::{ClientMessage, ErrorCode, ServerMessage, TrackKind, TrackSource};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Loud speech, well above the detector's threshold.
const TALKING_DBOV: u8 = 25;

/// Louder still.
const SHOUTING_DBOV: u8 = 10;

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

    /// Speaks louder than [`Voice::talk`].
    fn shout(&self) {
        self.level.store(SHOUTING_DBOV, Ordering::Relaxed);
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
    assert_eq!(
        speakers,
        std::slice::from_ref(&alice_id),
        "only alice speaks"
    );

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
    let nodes = Node::cluster_of(&etcd.endpoint(), &["n0", "n1"], "lease_ttl_secs = 2\n");

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

/// What a subscriber saw of one publisher: its tracks by kind.
#[derive(Debug, Default)]
struct Seen {
    /// Track id to (publisher, kind), from `track_published`.
    tracks: HashMap<TrackId, (ParticipantId, TrackKind)>,
    /// RTP packets received per (publisher, kind) since the last `reset`.
    packets: HashMap<(ParticipantId, TrackKind), u64>,
    /// The latest `track_paused` per track.
    paused: HashMap<TrackId, bool>,
    /// Tracks the server said it negotiated (`subscribed`).
    subscribed: HashSet<TrackId>,
    /// Video sections (`m=video`) of the server's latest offer.
    video_sections: usize,
}

impl Seen {
    fn note(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::Server(ServerMessage::Joined { participants, .. }) => {
                for track in participants.into_iter().flat_map(|p| p.tracks) {
                    self.tracks
                        .insert(track.id.clone(), (track.participant_id, track.kind));
                }
            }
            ClientEvent::Server(ServerMessage::Subscribed { track_id, .. }) => {
                self.subscribed.insert(track_id);
            }
            ClientEvent::Server(ServerMessage::Offer { sdp }) => {
                self.video_sections = sdp.lines().filter(|l| l.starts_with("m=video")).count();
            }
            ClientEvent::Server(ServerMessage::TrackPublished { track }) => {
                self.tracks
                    .insert(track.id.clone(), (track.participant_id, track.kind));
            }
            ClientEvent::Server(ServerMessage::TrackPaused {
                track_id, paused, ..
            }) => {
                self.paused.insert(track_id, paused);
            }
            ClientEvent::Rtp { track_id, .. } => {
                if let Some(owner) = self.tracks.get(&track_id) {
                    *self.packets.entry(owner.clone()).or_default() += 1;
                }
            }
            _ => {}
        }
    }

    fn received(&self, who: &ParticipantId, kind: TrackKind) -> u64 {
        let key = (who.clone(), kind);
        self.packets.get(&key).copied().unwrap_or(0)
    }

    fn track_of(&self, who: &ParticipantId, kind: TrackKind) -> Option<&TrackId> {
        let (id, _) = self
            .tracks
            .iter()
            .find(|(_, owner)| **owner == (who.clone(), kind))?;
        Some(id)
    }

    fn camera_paused(&self, who: &ParticipantId) -> Option<bool> {
        let id = self.track_of(who, TrackKind::Video)?;
        self.paused.get(id).copied()
    }

    fn camera_subscribed(&self, who: &ParticipantId) -> bool {
        let id = self.track_of(who, TrackKind::Video);
        id.is_some_and(|id| self.subscribed.contains(id))
    }
}

/// Reads events into `seen` until `done` holds, or panics naming `what`.
async fn watch(client: &mut Client, seen: &mut Seen, what: &str, done: impl Fn(&Seen) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done(seen) {
        let Some(event) = client.next_event(deadline).await else {
            panic!("timed out waiting for {what}: {seen:?}");
        };
        seen.note(event);
    }
}

/// Reads events into a fresh count for `window`, keeping what `seen` knows of tracks.
async fn count_for(client: &mut Client, seen: &mut Seen, window: Duration) {
    let until = Instant::now() + window;
    seen.packets.clear();
    while let Some(event) = client.next_event(until).await {
        seen.note(event);
    }
}

/// Publishes a camera that sends a packet every 10 ms, a keyframe every 30 and on
/// request, for at most a minute.
async fn camera(client: &Client) -> JoinHandle<()> {
    let track = client
        .publish("cam", TrackKind::Video, TrackSource::Camera)
        .await
        .expect("publish a camera");
    tokio::spawn(async move { send_packets(&track, 0, 6_000, Duration::from_millis(10)).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_room_forwards_the_cameras_of_recent_speakers_and_pinned_ones() {
    // One camera forwarded in rooms of more than two; every voice, quiet or not.
    let node = Node::start_with("[room]\nlast_n = 1\nlast_n_above = 2\naudio_last_n = 0\n");
    let (alice, alice_id, _) = joined_id(&node, "plenary", "alice").await;
    let (bob, bob_id, _) = joined_id(&node, "plenary", "bob").await;
    let (mut carol, _, _) = joined_id(&node, "plenary", "carol").await;
    let mut seen = Seen::default();

    // Nobody has spoken: the first camera to arrive is the one forwarded.
    let alice_camera = camera(&alice).await;
    watch(&mut carol, &mut seen, "alice's video", |s| {
        s.received(&alice_id, TrackKind::Video) > 0
    })
    .await;
    let bob_camera = camera(&bob).await;
    let alice_voice = Voice::start(publish(&alice, "mic", TrackKind::Audio).await);
    let bob_voice = Voice::start(publish(&bob, "mic", TrackKind::Audio).await);
    watch(&mut carol, &mut seen, "bob's camera held back", |s| {
        s.camera_paused(&bob_id) == Some(true)
    })
    .await;
    // Alice's camera was forwarded from its arrival: carol was never told it was
    // paused, not even for a moment. Bob's has been held back from its arrival, and
    // is not negotiated.
    assert_eq!(seen.camera_paused(&alice_id), None, "{seen:?}");
    assert!(!seen.camera_subscribed(&bob_id));
    count_for(&mut carol, &mut seen, Duration::from_secs(1)).await;
    assert!(seen.received(&alice_id, TrackKind::Video) > 0);
    assert_eq!(
        seen.received(&bob_id, TrackKind::Video),
        0,
        "bob's camera paused"
    );
    assert!(
        seen.received(&bob_id, TrackKind::Audio) > 0,
        "audio is never held back"
    );

    // Bob speaks: his camera takes the place, Alice's is paused.
    bob_voice.talk();
    watch(&mut carol, &mut seen, "the cameras swapped", |s| {
        s.camera_paused(&bob_id) == Some(false) && s.camera_paused(&alice_id) == Some(true)
    })
    .await;
    bob_voice.hush();
    // What was in flight when the pause took effect lands first.
    count_for(&mut carol, &mut seen, Duration::from_millis(300)).await;
    count_for(&mut carol, &mut seen, Duration::from_secs(1)).await;
    assert!(
        seen.received(&bob_id, TrackKind::Video) > 0,
        "bob's video resumed"
    );
    assert_eq!(
        seen.received(&alice_id, TrackKind::Video),
        0,
        "alice's camera paused"
    );
    assert!(seen.received(&alice_id, TrackKind::Audio) > 0);

    // Carol pins Alice: she gets both cameras, whoever speaks.
    let pin = ClientMessage::Pin {
        participant_ids: vec![alice_id.clone()],
    };
    carol.send(pin).expect("send pin");
    watch(&mut carol, &mut seen, "alice's camera resumed", |s| {
        s.camera_paused(&alice_id) == Some(false)
    })
    .await;
    count_for(&mut carol, &mut seen, Duration::from_secs(1)).await;
    assert!(
        seen.received(&alice_id, TrackKind::Video) > 0,
        "the pinned camera"
    );
    assert!(seen.received(&bob_id, TrackKind::Video) > 0);

    alice_camera.abort();
    bob_camera.abort();
    drop((alice_voice, alice));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_held_back_from_a_late_joiner_is_negotiated_only_once_forwarded() {
    // One camera forwarded in rooms of more than two.
    let node = Node::start_with("[room]\nlast_n = 1\nlast_n_above = 2\naudio_last_n = 0\n");
    let mut publishers = Vec::new();
    let mut cameras = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let (client, id, _) = joined_id(&node, "plenary", name).await;
        cameras.push(camera(&client).await);
        publishers.push((client, id));
    }
    let ids: Vec<ParticipantId> = publishers.iter().map(|(_, id)| id.clone()).collect();
    let mut dave = Client::connect(node.options("plenary", "dave"))
        .await
        .expect("connect");
    let mut seen = Seen::default();
    watch(
        &mut dave,
        &mut seen,
        "one camera sent, two held back",
        |s| {
            let sent = ids.iter().filter(|id| s.received(id, TrackKind::Video) > 0);
            let held = ids.iter().filter(|id| s.camera_paused(id) == Some(true));
            sent.count() == 1 && held.count() == 2
        },
    )
    .await;
    let (sent, held): (Vec<&ParticipantId>, Vec<&ParticipantId>) = ids
        .iter()
        .partition(|id| seen.received(id, TrackKind::Video) > 0);
    // Held back from the start: told so, but neither offered nor subscribed.
    assert_eq!(seen.video_sections, 1, "only the camera sent is offered");
    assert!(seen.camera_subscribed(sent[0]));
    assert!(!seen.camera_subscribed(held[0]) && !seen.camera_subscribed(held[1]));

    // Dave pins one of the others: that camera is resumed, offered, subscribed, sent.
    let pin = ClientMessage::Pin {
        participant_ids: vec![held[0].clone()],
    };
    dave.send(pin).expect("send pin");
    watch(&mut dave, &mut seen, "the pinned camera's video", |s| {
        s.camera_paused(held[0]) == Some(false) && s.received(held[0], TrackKind::Video) > 0
    })
    .await;
    assert!(seen.camera_subscribed(held[0]));
    assert_eq!(seen.video_sections, 2);
    assert!(
        !seen.camera_subscribed(held[1]),
        "the third is still held back"
    );
    for camera in cameras {
        camera.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hidden_video_is_not_sent_and_returns_when_shown() {
    let node = Node::start();
    let (alice, alice_id, _) = joined_id(&node, "gallery", "alice").await;
    let (mut bob, _, _) = joined_id(&node, "gallery", "bob").await;
    let mut seen = Seen::default();
    let alice_camera = camera(&alice).await;
    let alice_voice = Voice::start(publish(&alice, "mic", TrackKind::Audio).await);
    watch(&mut bob, &mut seen, "alice's video and audio", |s| {
        s.received(&alice_id, TrackKind::Video) > 0 && s.received(&alice_id, TrackKind::Audio) > 0
    })
    .await;
    let video = seen.track_of(&alice_id, TrackKind::Video).cloned();
    let audio = seen.track_of(&alice_id, TrackKind::Audio).cloned();

    // Bob scrolls Alice's tile away; hiding her audio means nothing.
    let hide = |track_ids: Vec<TrackId>| ClientMessage::Hide { track_ids };
    let both = vec![video.clone().expect("video"), audio.expect("audio")];
    bob.send(hide(both)).expect("send hide");
    watch(&mut bob, &mut seen, "alice's camera paused", |s| {
        s.camera_paused(&alice_id) == Some(true)
    })
    .await;
    // What was in flight when the pause took effect lands first.
    count_for(&mut bob, &mut seen, Duration::from_millis(300)).await;
    count_for(&mut bob, &mut seen, Duration::from_secs(1)).await;
    assert_eq!(
        seen.received(&alice_id, TrackKind::Video),
        0,
        "hidden video"
    );
    assert!(
        seen.received(&alice_id, TrackKind::Audio) > 0,
        "audio is never hidden"
    );

    // Too long a list is refused and the previous one stands.
    let many = (0..300).map(|_| video.clone().expect("video")).collect();
    bob.send(hide(many)).expect("send a long hide");
    let refused = bob
        .wait_for(
            Duration::from_secs(5),
            "the long list refused",
            |e| match e {
                ClientEvent::Server(ServerMessage::Error(body)) => Some(body.code),
                _ => None,
            },
        )
        .await
        .expect("an error");
    assert_eq!(refused, ErrorCode::BadJson);
    count_for(&mut bob, &mut seen, Duration::from_millis(500)).await;
    assert_eq!(
        seen.received(&alice_id, TrackKind::Video),
        0,
        "still hidden"
    );

    // Shown again: forwarding resumes.
    bob.send(hide(Vec::new())).expect("send hide");
    watch(&mut bob, &mut seen, "alice's camera resumed", |s| {
        s.camera_paused(&alice_id) == Some(false)
    })
    .await;
    watch(&mut bob, &mut seen, "alice's video again", |s| {
        s.received(&alice_id, TrackKind::Video) > 0
    })
    .await;

    alice_camera.abort();
    drop((alice_voice, alice));
}

/// The audio packets of each of `who` that `client` receives over a second, once
/// `settle_ms` have passed for what a change left in flight or in its hangover.
async fn voices_over_a_second(
    client: &mut Client,
    seen: &mut Seen,
    who: [&ParticipantId; 2],
    settle_ms: u64,
) -> [u64; 2] {
    count_for(client, seen, Duration::from_millis(settle_ms)).await;
    count_for(client, seen, Duration::from_secs(1)).await;
    who.map(|id| seen.received(id, TrackKind::Audio))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_room_forwards_only_the_loudest_voices() {
    // Rooms of more than two are large, and forward one voice.
    let node = Node::start_with("[room]\nlast_n = 0\nlast_n_above = 2\naudio_last_n = 1\n");
    let (alice, alice_id, _) = joined_id(&node, "assembly", "alice").await;
    let (bob, bob_id, _) = joined_id(&node, "assembly", "bob").await;
    let (mut carol, _, _) = joined_id(&node, "assembly", "carol").await;
    let mut seen = Seen::default();
    let alice_voice = Voice::start(publish(&alice, "mic", TrackKind::Audio).await);
    let bob_voice = Voice::start(publish(&bob, "mic", TrackKind::Audio).await);
    // Both microphones reach carol's connection, bob's silence is not sent.
    alice_voice.talk();
    watch(
        &mut carol,
        &mut seen,
        "both microphones and alice's voice",
        |s| s.tracks.len() == 2 && s.received(&alice_id, TrackKind::Audio) > 0,
    )
    .await;
    let heard = [&alice_id, &bob_id];
    let [alice_heard, bob_heard] = voices_over_a_second(&mut carol, &mut seen, heard, 0).await;
    assert!(alice_heard > 40, "alice is heard");
    assert_eq!(bob_heard, 0, "silence is not");

    // Bob speaks louder: he is heard, and alice no longer once her hangover passed.
    bob_voice.shout();
    let [alice_heard, bob_heard] = voices_over_a_second(&mut carol, &mut seen, heard, 700).await;
    assert!(bob_heard > 40, "bob is heard");
    assert_eq!(alice_heard, 0, "alice is not");

    // Bob stops: alice is the loudest voice again.
    bob_voice.hush();
    let [alice_heard, bob_heard] = voices_over_a_second(&mut carol, &mut seen, heard, 700).await;
    assert!(alice_heard > 40, "alice again");
    assert_eq!(bob_heard, 0, "bob's silence");
    drop((alice_voice, bob_voice, alice, bob));
}
