//! Active-speaker detection from the audio level header extension (RFC 6464).
//!
//! Owns: the audio level of recent packets of every audio track it is fed, the current
//! dominant speaker, the set of current speakers, and the change events not yet polled.
//!
//! How activity is measured: a packet at least as loud as the speech threshold is speech.
//! Each speech packet is credited with the time since the previous packet of its track
//! (at most [`MAX_PACKET_SPAN`]), so the measure does not depend on the packetisation time.
//! Over a sliding window (about a second) a track has a *speech time* (the sum of those
//! credits) and a *score* (the same sum weighted by loudness).
//!
//! Invariants:
//! - A track is *speaking* only with at least `min_speech` of speech inside the window, so
//!   a burst shorter than that (a cough, a door, a click) never makes anyone a speaker.
//! - The speakers are the speaking tracks, loudest score first, at most `max_speakers`.
//! - The dominant speaker changes only to the loudest speaking track, and only when the
//!   dominant one is no longer speaking or is out-scored by `switch_margin_percent`: two
//!   people talking over each other at similar levels do not make it flicker.
//! - Silence keeps the last dominant speaker (it stays highlighted); only
//!   [`SpeakerDetector::remove`] clears it.
//! - An event is queued only when something changed.
//! - Memory is bounded per track ([`MAX_SAMPLES`]); tracks silent for a whole window are
//!   forgotten except as the dominant speaker.
//!
//! Loop: feed [`SpeakerDetector::handle_level`] with every audio packet's level; call
//! [`SpeakerDetector::handle_timeout`] at [`SpeakerDetector::poll_timeout`] (packets stop
//! during silence when senders use DTX); after each call drain
//! [`SpeakerDetector::poll_change`]. Decisions are taken once per `tick`, not per packet.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// The quietest level: -127 dBov, digital silence.
pub const SILENT_DBOV: u8 = 127;

/// The most time one packet is credited with: the longest common Opus packet.
pub const MAX_PACKET_SPAN: Duration = Duration::from_millis(60);

/// Time credited to a track's first packet, or to one after it was forgotten: one common
/// Opus packet.
const FIRST_PACKET_SPAN: Duration = Duration::from_millis(20);

/// Speech samples kept per track: far more than a window holds from an honest sender
/// (50 at 20 ms over a second), so only a flooding sender loses its oldest samples.
pub const MAX_SAMPLES: usize = 512;

/// The V flag of the extension byte.
const VOICE_FLAG: u8 = 0x80;
/// The 7-bit level of the extension byte.
const LEVEL_MASK: u8 = 0x7f;

/// Why an audio level extension could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AudioLevelError {
    /// The extension element carried no data.
    #[error("audio level extension is empty")]
    Empty,
    /// The extension element carried more than its one byte.
    #[error("audio level extension holds {len} bytes, expected 1")]
    TooLong {
        /// How many bytes it held.
        len: usize,
    },
}

/// One packet's audio level as RFC 6464 carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AudioLevel {
    /// The sender's voice activity flag. Senders set it inconsistently, so the detector
    /// goes by the level alone.
    pub voice: bool,
    /// The level in -dBov: 0 is the loudest possible, [`SILENT_DBOV`] is silence.
    pub dbov: u8,
}

impl AudioLevel {
    /// Reads the data of the extension element (one byte: V flag, then the 7-bit level).
    /// The element's id and length belong to the header-extension parser, not here.
    pub fn parse(data: &[u8]) -> Result<AudioLevel, AudioLevelError> {
        match data {
            [] => Err(AudioLevelError::Empty),
            [byte] => Ok(AudioLevel::from_byte(*byte)),
            _ => Err(AudioLevelError::TooLong { len: data.len() }),
        }
    }

    /// Every byte is a valid level.
    pub fn from_byte(byte: u8) -> AudioLevel {
        AudioLevel {
            voice: byte & VOICE_FLAG != 0,
            dbov: byte & LEVEL_MASK,
        }
    }

    /// A level of -`dbov` dBov without the voice flag; values beyond silence are silence.
    pub fn from_dbov(dbov: u8) -> AudioLevel {
        AudioLevel {
            voice: false,
            dbov: dbov.min(SILENT_DBOV),
        }
    }

    /// How far above silence: 0 for silence, 127 for the loudest.
    pub fn loudness(self) -> u8 {
        SILENT_DBOV.saturating_sub(self.dbov)
    }
}

/// Tuning of the detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpeakerConfig {
    /// The sliding window activity is measured over.
    pub window: Duration,
    /// A packet at -`speech_dbov` dBov or louder is speech; quieter is background.
    pub speech_dbov: u8,
    /// Speech needed inside the window to count as speaking: longer than a cough.
    pub min_speech: Duration,
    /// How much louder (in percent of score) a challenger must be to take the dominant
    /// place from someone who is still speaking.
    pub switch_margin_percent: u32,
    /// The most speakers reported at once.
    pub max_speakers: usize,
    /// How often decisions are taken.
    pub tick: Duration,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        SpeakerConfig {
            window: Duration::from_secs(1),
            speech_dbov: 60,
            min_speech: Duration::from_millis(300),
            switch_margin_percent: 25,
            max_speakers: 3,
            tick: Duration::from_millis(100),
        }
    }
}

/// A change the room should tell its participants about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpeakerEvent<K> {
    /// The dominant speaker changed; None once the last one was removed.
    Dominant {
        /// The new dominant speaker.
        speaker: Option<K>,
    },
    /// The set of current speakers changed.
    Speakers {
        /// Loudest first; empty when nobody speaks.
        speakers: Vec<K>,
    },
}

/// One speech packet inside the window.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// When it arrived: it leaves the window one window later.
    at: Instant,
    /// The speech time it stands for.
    span: Duration,
    /// Its weight in the score.
    loudness: u8,
}

/// What one track did recently.
#[derive(Clone, Debug, Default)]
struct Activity {
    /// Speech packets inside the window, oldest first.
    samples: VecDeque<Sample>,
    /// The previous packet's arrival, speech or not: the next packet's span counts from it.
    last_at: Option<Instant>,
}

impl Activity {
    fn record(&mut self, now: Instant, level: AudioLevel, speech: bool) {
        let span = self.last_at.map_or(FIRST_PACKET_SPAN, |last| {
            now.saturating_duration_since(last).min(MAX_PACKET_SPAN)
        });
        self.last_at = Some(now);
        if !speech {
            return;
        }
        if self.samples.len() >= MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            at: now,
            span,
            loudness: level.loudness(),
        });
    }

    /// Drops samples that left the window; true if nothing is left to remember.
    fn prune(&mut self, now: Instant, window: Duration) -> bool {
        let expired = |s: &Sample| now.saturating_duration_since(s.at) >= window;
        while self.samples.front().is_some_and(expired) {
            self.samples.pop_front();
        }
        let idle = self
            .last_at
            .is_none_or(|last| now.saturating_duration_since(last) >= window);
        self.samples.is_empty() && idle
    }

    /// (score, speech time) over the window.
    fn measure(&self) -> (u64, Duration) {
        self.samples
            .iter()
            .fold((0, Duration::ZERO), |(score, speech), s| {
                let millis = u64::try_from(s.span.as_millis()).unwrap_or(u64::MAX);
                let weighted = millis.saturating_mul(u64::from(s.loudness));
                (
                    score.saturating_add(weighted),
                    speech.saturating_add(s.span),
                )
            })
    }
}

/// Detects the dominant speaker and the current speakers. `K` names a track or a
/// participant, as the caller prefers. See the module documentation.
#[derive(Clone, Debug)]
pub struct SpeakerDetector<K> {
    /// Tuning.
    cfg: SpeakerConfig,
    /// Recent activity per track; ordered, so that ties break the same way every time.
    activity: BTreeMap<K, Activity>,
    /// The dominant speaker, kept through silence.
    dominant: Option<K>,
    /// The current speakers, loudest first.
    speakers: Vec<K>,
    /// When the next decision is due; None before any input.
    next_tick: Option<Instant>,
    /// Changes not yet polled, oldest first.
    events: VecDeque<SpeakerEvent<K>>,
}

impl<K: Clone + Ord> SpeakerDetector<K> {
    /// A detector that has heard nobody yet.
    pub fn new(cfg: SpeakerConfig) -> Self {
        SpeakerDetector {
            cfg,
            activity: BTreeMap::new(),
            dominant: None,
            speakers: Vec::new(),
            next_tick: None,
            events: VecDeque::new(),
        }
    }

    /// One audio packet of `key` arrived at `now` with this level.
    pub fn handle_level(&mut self, now: Instant, key: K, level: AudioLevel) {
        let speech = level.dbov <= self.cfg.speech_dbov;
        self.activity
            .entry(key)
            .or_default()
            .record(now, level, speech);
        self.handle_timeout(now);
    }

    /// Takes a decision if one is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_tick.is_some_and(|due| now < due) {
            return;
        }
        self.next_tick = Some(now + self.cfg.tick);
        self.decide(now);
    }

    /// When [`SpeakerDetector::handle_timeout`] wants to be called; None before any input.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_tick
    }

    /// The next change, oldest first.
    pub fn poll_change(&mut self) -> Option<SpeakerEvent<K>> {
        self.events.pop_front()
    }

    /// The track or participant left: it is forgotten at once, and stops being a speaker
    /// or the dominant speaker.
    pub fn remove(&mut self, key: &K) {
        self.activity.remove(key);
        if self.speakers.contains(key) {
            self.speakers.retain(|k| k != key);
            self.events.push_back(SpeakerEvent::Speakers {
                speakers: self.speakers.clone(),
            });
        }
        if self.dominant.as_ref() == Some(key) {
            self.dominant = None;
            self.events
                .push_back(SpeakerEvent::Dominant { speaker: None });
        }
    }

    /// The dominant speaker, if anyone has spoken.
    pub fn dominant(&self) -> Option<&K> {
        self.dominant.as_ref()
    }

    /// The current speakers, loudest first.
    pub fn speakers(&self) -> &[K] {
        &self.speakers
    }

    fn decide(&mut self, now: Instant) {
        let window = self.cfg.window;
        self.activity
            .retain(|_, activity| !activity.prune(now, window));

        // Speaking tracks with their scores, loudest first; the map's order breaks ties.
        let mut speaking: Vec<(&K, u64)> = Vec::new();
        let mut dominant_score = None;
        for (key, activity) in &self.activity {
            let (score, speech) = activity.measure();
            if speech < self.cfg.min_speech {
                continue;
            }
            if self.dominant.as_ref() == Some(key) {
                dominant_score = Some(score);
            }
            speaking.push((key, score));
        }
        speaking.sort_by_key(|&(_, score)| std::cmp::Reverse(score));

        let speakers: Vec<K> = speaking
            .iter()
            .take(self.cfg.max_speakers)
            .map(|(key, _)| (*key).clone())
            .collect();
        let challenger = speaking
            .first()
            .filter(|(_, score)| self.takes_over(*score, dominant_score))
            .map(|(key, _)| (*key).clone());

        if speakers != self.speakers {
            self.speakers = speakers.clone();
            self.events.push_back(SpeakerEvent::Speakers { speakers });
        }
        if let Some(key) = challenger {
            if self.dominant.as_ref() != Some(&key) {
                self.dominant = Some(key.clone());
                self.events
                    .push_back(SpeakerEvent::Dominant { speaker: Some(key) });
            }
        }
    }

    /// Whether the loudest speaking track takes the dominant place: always when the
    /// dominant speaker is not speaking (or there is none), else only by the margin.
    fn takes_over(&self, score: u64, dominant_score: Option<u64>) -> bool {
        let Some(dominant_score) = dominant_score else {
            return true;
        };
        let margin = 100 + u128::from(self.cfg.switch_margin_percent);
        u128::from(score) * 100 > u128::from(dominant_score) * margin
    }
}

#[cfg(test)]
#[path = "speaker_tests.rs"]
mod tests;
