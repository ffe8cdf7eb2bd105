//! Audio last-N: in a large room, only the few loudest voices are forwarded.
//!
//! Owns: a short-term loudness per audio track of the room, when each last spoke and
//! until when each may be heard, and whether the room is large enough to choose.
//!
//! Invariants:
//! - In a room that does not choose (small, or `n` 0) every packet is forwarded.
//! - Otherwise a packet is forwarded when its track is *audible*: it spoke (a packet at
//!   the speech threshold or louder) within [`HANGOVER`], and when it last spoke fewer
//!   than `n` other speaking tracks were louder. So while at most `n` people talk, all
//!   of them are heard from their first packet on, and nobody is cut mid-word: a voice
//!   outranked stays audible for the hangover.
//! - Packets that carry no level are always forwarded: there is nothing to judge.
//!
//! The decision is made per packet, from levels the packets themselves carry, rather
//! than from the smoothed speaker detector: that one needs 300 ms of speech to name a
//! speaker, and waiting for it would clip the start of every sentence.
//!
//! Loop: every audio up-track of the room calls [`Voices::admit`] with each packet's
//! level and forwards the packet only on `true`; the room calls
//! [`Voices::set_choosing`] when its size crosses the threshold.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a voice stays audible after it last spoke, or was last among the loudest.
pub const HANGOVER: Duration = Duration::from_millis(500);

/// A packet at -60 dBov or louder is speech, as for the speaker detector.
pub const SPEECH_DBOV: u8 = 60;

/// How much of a packet's level goes into a track's loudness: about the last 100 ms
/// of 20 ms packets weigh.
const SMOOTHING: f32 = 0.2;

/// One track's recent voice.
#[derive(Debug, Clone, Copy)]
struct Voice {
    /// Smoothed loudness, 127 minus -dBov: higher is louder.
    loudness: f32,
    /// When it last sent speech.
    spoke: Option<Instant>,
    /// Until when its packets are forwarded.
    audible_until: Option<Instant>,
}

/// The voices of one room. See the module documentation.
#[derive(Debug)]
pub struct Voices<K> {
    n: usize,
    choosing: bool,
    voices: HashMap<K, Voice>,
}

impl<K: Clone + Eq + std::hash::Hash> Voices<K> {
    /// Forwards the `n` loudest voices once choosing; `n` 0 forwards all.
    pub fn new(n: usize) -> Self {
        Voices {
            n,
            choosing: false,
            voices: HashMap::new(),
        }
    }

    /// The room became large enough to choose, or small again.
    pub fn set_choosing(&mut self, choosing: bool) {
        self.choosing = choosing && self.n > 0;
    }

    /// Whether the room chooses.
    pub fn choosing(&self) -> bool {
        self.choosing
    }

    /// One packet of `track` at -`dbov` dBov (RFC 6464): whether to forward it.
    pub fn admit(&mut self, track: &K, now: Instant, dbov: u8) -> bool {
        let dbov = dbov.min(127);
        let heard = f32::from(127 - dbov);
        let voice = self.voices.entry(track.clone()).or_insert(Voice {
            loudness: heard,
            spoke: None,
            audible_until: None,
        });
        voice.loudness += SMOOTHING * (heard - voice.loudness);
        let speech = dbov <= SPEECH_DBOV;
        if speech {
            voice.spoke = Some(now);
        }
        let me = *voice;
        if !self.choosing {
            return true;
        }
        if speech {
            let speaking = |v: &&Voice| v.spoke.is_some_and(|t| within(t, now));
            let louder = self
                .voices
                .values()
                .filter(speaking)
                .filter(|v| v.loudness > me.loudness)
                .count();
            if louder < self.n {
                if let Some(voice) = self.voices.get_mut(track) {
                    voice.audible_until = Some(now + HANGOVER);
                }
                return true;
            }
        }
        me.audible_until.is_some_and(|until| now <= until)
    }

    /// The track is gone.
    pub fn forget(&mut self, track: &K) {
        self.voices.remove(track);
    }
}

/// A room's voices, shared by its audio up-tracks.
pub type SharedVoices = std::sync::Arc<std::sync::Mutex<Voices<crate::ids::TrackId>>>;

fn within(at: Instant, now: Instant) -> bool {
    now.saturating_duration_since(at) <= HANGOVER
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOUD: u8 = 10;
    const TALK: u8 = 25;
    const SILENCE: u8 = 127;
    const PACKET: Duration = Duration::from_millis(20);

    /// Sends one 20 ms packet of each (track, level) in turn, `times` times; returns
    /// how many packets of each track were admitted.
    fn run(
        voices: &mut Voices<&'static str>,
        now: &mut Instant,
        levels: &[(&'static str, u8)],
        times: usize,
    ) -> HashMap<&'static str, usize> {
        let mut admitted = HashMap::new();
        for _ in 0..times {
            *now += PACKET;
            for (track, level) in levels {
                let count = admitted.entry(*track).or_insert(0);
                *count += usize::from(voices.admit(track, *now, *level));
            }
        }
        admitted
    }

    #[test]
    fn a_room_that_does_not_choose_forwards_everything() {
        let mut voices = Voices::new(1);
        let mut now = Instant::now();
        let got = run(&mut voices, &mut now, &[("a", SILENCE), ("b", TALK)], 10);
        assert_eq!((got["a"], got["b"]), (10, 10));
        voices.set_choosing(true);
        assert!(voices.choosing());
        let mut off = Voices::<&str>::new(0);
        off.set_choosing(true);
        assert!(!off.choosing(), "n 0 forwards all");
    }

    #[test]
    fn silence_is_not_forwarded_and_speech_is_from_its_first_packet() {
        let mut voices = Voices::new(2);
        voices.set_choosing(true);
        let mut now = Instant::now();
        let got = run(&mut voices, &mut now, &[("a", SILENCE), ("b", SILENCE)], 10);
        assert_eq!((got["a"], got["b"]), (0, 0));
        let got = run(&mut voices, &mut now, &[("a", TALK), ("b", SILENCE)], 1);
        assert_eq!((got["a"], got["b"]), (1, 0), "the first word is heard");
    }

    #[test]
    fn only_the_n_loudest_speakers_are_heard() {
        let mut voices = Voices::new(2);
        voices.set_choosing(true);
        let mut now = Instant::now();
        let talk = [("quiet", 50), ("loud", LOUD), ("mid", TALK)];
        // Long past every hangover: the quietest of three is left out.
        let got = run(&mut voices, &mut now, &talk, 100);
        let later = run(&mut voices, &mut now, &talk, 50);
        assert_eq!((later["loud"], later["mid"], later["quiet"]), (50, 50, 0));
        assert!(got["quiet"] < 100);
    }

    #[test]
    fn a_voice_outranked_or_silent_fades_after_the_hangover() {
        let mut voices = Voices::new(1);
        voices.set_choosing(true);
        let mut now = Instant::now();
        run(&mut voices, &mut now, &[("a", TALK)], 10);
        // A louder voice starts: "a" stays audible for the hangover, not longer.
        let hangover = HANGOVER.as_millis() as usize / 20;
        let got = run(&mut voices, &mut now, &[("a", TALK), ("b", LOUD)], 50);
        assert_eq!(got["b"], 50);
        assert!((hangover - 2..=hangover + 8).contains(&got["a"]), "{got:?}");
        // "b" stops: after its hangover, "a" is the loudest speaker again.
        let got = run(&mut voices, &mut now, &[("a", TALK), ("b", SILENCE)], 50);
        assert!(got["b"] <= hangover, "{got:?}");
        assert!(got["a"] >= 50 - hangover - 8, "{got:?}");
    }

    #[test]
    fn a_forgotten_track_no_longer_outranks_anyone() {
        let mut voices = Voices::new(1);
        voices.set_choosing(true);
        let mut now = Instant::now();
        run(&mut voices, &mut now, &[("a", TALK), ("b", LOUD)], 50);
        voices.forget(&"b");
        let got = run(&mut voices, &mut now, &[("a", TALK)], 1);
        assert_eq!(got["a"], 1);
    }
}
