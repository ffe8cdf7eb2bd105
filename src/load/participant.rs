//! One simulated participant: a task that joins through a [`Session`], publishes
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
use super::plan::{has_voice, Planned, Role};
use super::report::ParticipantReport;
use super::session::Session;
use super::since_epoch;
use super::source::{AudioSource, VideoShape, VideoSource, AUDIO_PACKET_INTERVAL};
use super::Target;
use crate::client::{ClientEvent, LocalTrack};
use crate::media::speaker::SILENT_DBOV;
use crate::signal::protocol::ServerMessage;

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
    /// Only the first this many publishers of a room send audio, and they speak in
    /// turns; `None`: every publisher sends audio, with no level.
    pub speakers: Option<usize>,
    /// Fault injection: publishers leave out every n-th media packet (see [`Link`]).
    pub drop_every_nth_sent: Option<u64>,
    pub target: Target,
    /// Token lifetime: long enough for the whole run.
    pub token_ttl: Duration,
    pub live: Live,
}

/// A publisher's tracks and their sources.
struct Outgoing {
    video: (LocalTrack, VideoSource),
    audio: Option<(LocalTrack, AudioSource)>,
    /// Whose turn it is to speak, when publishers take turns.
    voice: Option<Voice>,
    link: Link,
}

/// A publisher's place in a room where a few speak in turns: each speaks for
/// [`SPEAKING_TURN`], then is silent while the others speak.
#[derive(Debug, Clone, Copy)]
struct Voice {
    seat: usize,
    speakers: usize,
}

/// How long each speaker speaks before the next one's turn.
const SPEAKING_TURN: Duration = Duration::from_secs(2);

/// The audio level (RFC 6464, -dBov) of a speaker whose turn it is: loud speech.
const SPEAKING_DBOV: u8 = 25;

impl Voice {
    /// The audio level to send at `now` (since the epoch, the same for everyone).
    fn level(self, now: Duration) -> u8 {
        let turn = now.as_millis() / SPEAKING_TURN.as_millis();
        let speaking = turn % self.speakers as u128 == self.seat as u128;
        if speaking {
            SPEAKING_DBOV
        } else {
            SILENT_DBOV
        }
    }
}

impl Outgoing {
    /// Sends the frame due now; returns the packets it numbered, sent or not.
    async fn send_frame(&mut self) -> u64 {
        let (track, source) = &mut self.video;
        let packets = source.frame(since_epoch(), track.take_keyframe_request());
        let count = packets.len() as u64;
        for packet in packets {
            // Writes fail until the connection is up; the frame is then simply not sent.
            if self.link.passes() {
                let _ = track.write(packet).await;
            }
        }
        count
    }

    /// Sends the audio packet due now, if there is audio; returns the packets numbered.
    async fn send_audio(&mut self) -> u64 {
        let Some((track, source)) = &mut self.audio else {
            return 0;
        };
        let now = since_epoch();
        let packet = source.packet(now);
        if self.link.passes() {
            let _ = match self.voice {
                Some(voice) => track.write_with_level(packet, voice.level(now)).await,
                None => track.write(packet).await,
            };
        }
        1
    }
}

/// The way from a publisher to the node, with optional loss that no retransmission
/// can repair: a packet is numbered and counted as sent, then never leaves.
struct Link {
    every: u64,
    numbered: u64,
}

impl Link {
    fn new(drop_every_nth: Option<u64>) -> Link {
        Link {
            every: drop_every_nth.unwrap_or(u64::MAX).max(2),
            numbered: 0,
        }
    }

    /// Whether the next packet gets through.
    fn passes(&mut self) -> bool {
        self.numbered += 1;
        !self.numbered.is_multiple_of(self.every)
    }
}

/// Runs one participant until the phase is `Stopped`, its client closes, or `deadline`.
pub async fn run(
    plan: Planned,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
    deadline: Instant,
) -> ParticipantReport {
    let mut report = ParticipantReport::new(&plan);
    // Where a few speak in turns, the node may forward only the loudest voices.
    report.received.voices_chosen = shared.speakers.is_some();
    let opened = since_epoch();
    let mut session = match Session::join(&plan, &shared).await {
        Ok(session) => session,
        Err(why) => {
            shared.live.failed();
            report.error = Some(why);
            return report;
        }
    };
    report.join_time = Some(since_epoch().saturating_sub(opened));
    shared.live.joined();

    let outgoing = match plan.role {
        Role::Publisher => publish(&session, &plan, &shared, &mut report).await,
        Role::Subscriber => None,
    };
    exchange(
        &mut session,
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
    leave(session).await;
    report
}

/// Publishes the camera (and microphone) track; on failure the participant goes on
/// as a subscriber and the report says why.
async fn publish(
    session: &Session,
    plan: &Planned,
    shared: &Shared,
    report: &mut ParticipantReport,
) -> Option<Outgoing> {
    let voice = shared.speakers.map(|speakers| Voice {
        seat: plan.seat,
        speakers,
    });
    let speaks = has_voice(plan.seat, shared.speakers);
    let (video, audio) = match session.publish(shared.audio && speaks).await {
        Ok(tracks) => tracks,
        Err(e) => {
            report.error = Some(format!("publishing: {e}"));
            return None;
        }
    };
    let video_source = VideoSource::new(plan.stream, shared.video, random(), random());
    let audio = match audio {
        Some(Ok(track)) => Some((track, AudioSource::new(plan.stream, random(), random()))),
        Some(Err(e)) => {
            report.error = Some(format!("publishing audio: {e}"));
            None
        }
        None => None,
    };
    Some(Outgoing {
        video: (video, video_source),
        audio,
        voice,
        link: Link::new(shared.drop_every_nth_sent),
    })
}

/// Sends (while running) and receives until stopped, closed, or past the deadline.
async fn exchange(
    session: &mut Session,
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
                if let Some(o) = outgoing.as_mut() {
                    report.sent_video += o.send_frame().await;
                }
            }
            _ = audio_tick.tick(), if sending && has_audio => {
                if let Some(o) = outgoing.as_mut() {
                    report.sent_audio += o.send_audio().await;
                }
            }
            event = session.next_event(deadline) => {
                if !on_event(event, shared, report) {
                    break;
                }
            }
        }
    }
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
        Some(ClientEvent::Server(ServerMessage::TrackPaused {
            track_id, paused, ..
        })) => {
            report.received.set_paused(&track_id, paused);
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

/// Leaves and waits, bounded, for the session to close.
async fn leave(mut session: Session) {
    session.close();
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    while let Some(event) = session.next_event(deadline).await {
        if matches!(event, ClientEvent::Closed) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speakers_take_turns_of_two_seconds() {
        let voice = |seat| Voice { seat, speakers: 3 };
        let at = Duration::from_millis;
        assert_eq!(voice(0).level(at(1_999)), SPEAKING_DBOV);
        assert_eq!(voice(1).level(at(1_999)), SILENT_DBOV);
        assert_eq!(voice(1).level(at(2_000)), SPEAKING_DBOV);
        assert_eq!(voice(2).level(at(4_000)), SPEAKING_DBOV);
        assert_eq!(voice(0).level(at(6_000)), SPEAKING_DBOV);
        assert_eq!(voice(2).level(at(6_000)), SILENT_DBOV);
    }
}
