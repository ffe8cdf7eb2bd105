//! The room's speaker task: who is speaking, from the audio levels of every audio
//! track the room forwards.
//!
//! Owns: one [`SpeakerDetector`] keyed by track, fed by the up-tracks through
//! [`LevelSink`]s. Up-tracks offer levels without waiting: when the task falls behind,
//! samples are dropped, which only makes a speaker count a little less, never blocks
//! media. Changes go to the room as [`SpeakersChanged`], at most once per detector
//! tick; the room turns tracks into participants.
//!
//! Loop: levels in, a decision at the detector's timeout, changes out. The task ends
//! when the room drops its [`Speakers`] handle and every up-track its sink.

use std::sync::Arc;
use std::time::Instant;

use actix::{Message, Recipient};
use tokio::sync::mpsc;

use crate::ids::TrackId;
use crate::media::sleep_until_opt;
use crate::media::speaker::{AudioLevel, SpeakerConfig, SpeakerDetector, SpeakerEvent};

/// Levels that may wait for the task: a second of 20 ms packets from 50 speakers.
const LEVEL_QUEUE: usize = 2_500;

/// The speakers changed; tracks, loudest first.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct SpeakersChanged {
    /// The track heard most, kept through silence; None once it was withdrawn.
    pub dominant: Option<TrackId>,
    /// Tracks speaking now, loudest first.
    pub speakers: Vec<TrackId>,
}

struct Level {
    track: Arc<TrackId>,
    at: Instant,
    level: AudioLevel,
}

/// Where one up-track reports the level of each of its packets.
pub struct LevelSink {
    track: Arc<TrackId>,
    levels: mpsc::Sender<Level>,
}

impl LevelSink {
    /// Offers one packet's level; dropped when the task is behind or gone.
    pub fn offer(&self, at: Instant, level: AudioLevel) {
        let track = self.track.clone();
        let _ = self.levels.try_send(Level { track, at, level });
    }
}

/// The room's handle on its speaker task.
pub struct Speakers {
    levels: mpsc::Sender<Level>,
    /// Withdrawn tracks: never dropped, unlike levels.
    forget: mpsc::UnboundedSender<TrackId>,
}

impl Speakers {
    /// Starts the task on the current runtime; changes go to `room`.
    pub fn spawn(config: SpeakerConfig, room: Recipient<SpeakersChanged>) -> Speakers {
        let (levels, levels_rx) = mpsc::channel(LEVEL_QUEUE);
        let (forget, forget_rx) = mpsc::unbounded_channel();
        tokio::spawn(run(
            SpeakerDetector::new(config),
            levels_rx,
            forget_rx,
            room,
        ));
        Speakers { levels, forget }
    }

    /// A sink for the levels of `track`.
    pub fn sink(&self, track: &TrackId) -> LevelSink {
        LevelSink {
            track: Arc::new(track.clone()),
            levels: self.levels.clone(),
        }
    }

    /// The track was withdrawn: it stops being a speaker at once.
    pub fn forget(&self, track: &TrackId) {
        let _ = self.forget.send(track.clone());
    }
}

async fn run(
    mut detector: SpeakerDetector<Arc<TrackId>>,
    mut levels: mpsc::Receiver<Level>,
    mut forget: mpsc::UnboundedReceiver<TrackId>,
    room: Recipient<SpeakersChanged>,
) {
    let mut told = SpeakersChanged {
        dominant: None,
        speakers: Vec::new(),
    };
    loop {
        let wake = detector.poll_timeout();
        tokio::select! {
            level = levels.recv() => match level {
                Some(l) => detector.handle_level(l.at, l.track, l.level),
                None => break,
            },
            gone = forget.recv() => match gone {
                Some(track) => detector.remove(&Arc::new(track)),
                None => break,
            },
            _ = sleep_until_opt(wake) => detector.handle_timeout(Instant::now()),
        }

        // Several events of one decision become one message.
        let mut changed = false;
        while let Some(event) = detector.poll_change() {
            changed = true;
            match event {
                SpeakerEvent::Dominant { speaker } => {
                    told.dominant = speaker.map(|t| (*t).clone());
                }
                SpeakerEvent::Speakers { speakers } => {
                    told.speakers = speakers.iter().map(|t| (**t).clone()).collect();
                }
            }
        }
        if !room.connected() {
            break;
        }
        if changed {
            room.do_send(told.clone());
        }
    }
}
