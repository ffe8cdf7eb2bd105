//! One simulated participant: a task that joins through the Rust client, publishes
//! synthetic media if it is a publisher, and measures what it receives.
//!
//! Loop: connect and wait for `joined` (bounded by [`JOIN_TIMEOUT`]); then one
//! `select!` over the run's [`Phase`], the video and audio tickers and the client's
//! events, until stopped, closed by the server, or past the hard deadline; then close
//! and wait, bounded, for the client to finish leaving. While the run drains,
//! publishers no longer send but everyone still receives, so the packets in flight
//! arrive and whatever is still missing afterwards is lost. The task owns its client,
//! its sources and its [`super::stats::ReceiveStats`], and hands them back as a
//! [`ParticipantReport`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::random;
use tokio::sync::watch;
use tokio::time::{interval, Instant, MissedTickBehavior};

use super::live::Live;
use super::plan::{Planned, Role};
use super::report::ParticipantReport;
use super::since_epoch;
use super::source::{AudioSource, VideoShape, VideoSource, AUDIO_PACKET_INTERVAL};
use crate::auth::{mint, now_unix, Grants, TokenRequest};
use crate::client::{Client, ClientEvent, ClientOptions, LocalTrack};
use crate::signal::protocol::{ServerMessage, TrackKind, TrackSource};

/// Longest wait from opening the socket to `joined`.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for the client to leave once stopped (the client allows 2 s itself).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(4);

/// Where the run is; the scenario moves it forward, participants follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Publishers stop sending; everyone keeps receiving.
    Draining,
    Stopped,
}

/// What every participant of a run shares.
#[derive(Debug)]
pub struct Shared {
    pub api_key: String,
    pub api_secret: String,
    pub bind_ip: IpAddr,
    pub video: VideoShape,
    pub audio: bool,
    /// Token lifetime: long enough for the whole run.
    pub token_ttl: Duration,
    pub live: Live,
}

/// A publisher's tracks and their sources.
struct Outgoing {
    video: (LocalTrack, VideoSource),
    audio: Option<(LocalTrack, AudioSource)>,
}

/// Runs one participant until the phase is `Stopped`, its client closes, or `deadline`.
pub async fn run(
    plan: Planned,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
    deadline: Instant,
) -> ParticipantReport {
    let mut report = ParticipantReport::new(&plan);
    let opened = since_epoch();
    let mut client = match join(&plan, &shared).await {
        Ok(client) => client,
        Err(why) => {
            shared.live.failed();
            report.error = Some(why);
            return report;
        }
    };
    report.join_time = Some(since_epoch().saturating_sub(opened));
    shared.live.joined();

    let outgoing = match plan.role {
        Role::Publisher => publish(&client, &plan, &shared, &mut report).await,
        Role::Subscriber => None,
    };
    exchange(
        &mut client,
        outgoing,
        &shared,
        &mut phase,
        deadline,
        &mut report,
    )
    .await;
    report.first_media = report
        .received
        .first_media
        .map(|t| t.saturating_sub(opened));
    leave(client).await;
    report
}

/// Opens the socket and waits for `joined`.
async fn join(plan: &Planned, shared: &Shared) -> Result<Client, String> {
    let token = token(plan, shared)?;
    let options = ClientOptions {
        url: plan.url.clone(),
        room: plan.room.clone(),
        token,
        auto_subscribe: true,
        bind_ip: shared.bind_ip,
        drop_every_nth_rtp: None,
    };
    let deadline = Instant::now() + JOIN_TIMEOUT;
    let connect = tokio::time::timeout_at(deadline, Client::connect(options));
    let mut client = match connect.await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("timed out connecting".to_owned()),
    };
    while let Some(event) = client.next_event(deadline).await {
        match event {
            ClientEvent::Server(ServerMessage::Joined { .. }) => return Ok(client),
            ClientEvent::Server(ServerMessage::Error(body)) => {
                return Err(format!("refused: {:?}: {}", body.code, body.message))
            }
            ClientEvent::Closed => return Err("closed before joining".to_owned()),
            _ => {}
        }
    }
    Err("timed out waiting for joined".to_owned())
}

fn token(plan: &Planned, shared: &Shared) -> Result<String, String> {
    let request = TokenRequest {
        api_key: shared.api_key.clone(),
        identity: plan.identity.clone(),
        name: plan.identity.clone(),
        room: plan.room.clone(),
        grants: Grants {
            publish: plan.role == Role::Publisher,
            subscribe: true,
            admin: false,
        },
        ttl: shared.token_ttl,
    };
    mint(&request, &shared.api_secret, now_unix()).map_err(|e| e.to_string())
}

/// Publishes the camera (and microphone) track; on failure the participant goes on
/// as a subscriber and the report says why.
async fn publish(
    client: &Client,
    plan: &Planned,
    shared: &Shared,
    report: &mut ParticipantReport,
) -> Option<Outgoing> {
    let camera = client.publish("cam", TrackKind::Video, TrackSource::Camera);
    let video = match camera.await {
        Ok(track) => track,
        Err(e) => {
            report.error = Some(format!("publishing video: {e}"));
            return None;
        }
    };
    let video_source = VideoSource::new(plan.stream, shared.video, random(), random());
    let mut audio = None;
    if shared.audio {
        let microphone = client.publish("mic", TrackKind::Audio, TrackSource::Microphone);
        match microphone.await {
            Ok(track) => audio = Some((track, AudioSource::new(plan.stream, random(), random()))),
            Err(e) => report.error = Some(format!("publishing audio: {e}")),
        }
    }
    Some(Outgoing {
        video: (video, video_source),
        audio,
    })
}

/// Sends (while running) and receives until stopped, closed, or past the deadline.
async fn exchange(
    client: &mut Client,
    mut outgoing: Option<Outgoing>,
    shared: &Shared,
    phase: &mut watch::Receiver<Phase>,
    deadline: Instant,
    report: &mut ParticipantReport,
) {
    let mut video_tick = interval(shared.video.frame_interval());
    let mut audio_tick = interval(AUDIO_PACKET_INTERVAL);
    video_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    audio_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let has_video = outgoing.is_some();
    let has_audio = outgoing.as_ref().is_some_and(|o| o.audio.is_some());

    loop {
        let current = *phase.borrow();
        if current == Phase::Stopped {
            break;
        }
        let sending = current == Phase::Running;
        tokio::select! {
            biased;
            changed = phase.changed() => if changed.is_err() { break },
            _ = video_tick.tick(), if sending && has_video => {
                if let Some((track, source)) = outgoing.as_mut().map(|o| &mut o.video) {
                    report.sent_video += send_frame(track, source).await;
                }
            }
            _ = audio_tick.tick(), if sending && has_audio => {
                if let Some((track, source)) = outgoing.as_mut().and_then(|o| o.audio.as_mut()) {
                    let _ = track.write(source.packet(since_epoch())).await;
                    report.sent_audio += 1;
                }
            }
            event = client.next_event(deadline) => {
                if !on_event(event, shared, report) {
                    break;
                }
            }
        }
    }
}

async fn send_frame(track: &LocalTrack, source: &mut VideoSource) -> u64 {
    let packets = source.frame(since_epoch(), track.take_keyframe_request());
    let count = packets.len() as u64;
    for packet in packets {
        // Writes fail until the connection is up; the frame is then simply not sent.
        let _ = track.write(packet).await;
    }
    count
}

/// Handles one client event; false when the client is gone or the deadline passed.
fn on_event(event: Option<ClientEvent>, shared: &Shared, report: &mut ParticipantReport) -> bool {
    match event {
        Some(ClientEvent::Rtp { track_id, packet }) => {
            let now = since_epoch();
            let first = report.received.first_media.is_none();
            if let Some(what) = report.received.record(&track_id, &packet.payload, now) {
                shared.live.received(packet.payload.len(), what);
                if first {
                    shared.live.media_started();
                }
            }
            true
        }
        Some(ClientEvent::Server(ServerMessage::Leave { reason })) => {
            report.error = Some(format!("removed by the server: {reason:?}"));
            true
        }
        Some(ClientEvent::Closed) => {
            report
                .error
                .get_or_insert_with(|| "closed by the server".to_owned());
            false
        }
        Some(_) => true,
        None => false,
    }
}

/// Sends `leave` and waits, bounded, for the client to close.
async fn leave(mut client: Client) {
    client.close();
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    while let Some(event) = client.next_event(deadline).await {
        if matches!(event, ClientEvent::Closed) {
            return;
        }
    }
}
