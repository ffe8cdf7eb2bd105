//! Tests of the speaker detector, driven by scripted levels and instants.
use super::*;

const A: &str = "alice";
const B: &str = "bob";
const C: &str = "carol";

/// Speech at a conversational level.
const TALK: u8 = 30;
/// A loud, short sound.
const COUGH: u8 = 10;

type Event = SpeakerEvent<&'static str>;

fn speakers(keys: &[&'static str]) -> Event {
    SpeakerEvent::Speakers {
        speakers: keys.to_vec(),
    }
}

fn dominant(key: &'static str) -> Event {
    SpeakerEvent::Dominant { speaker: Some(key) }
}

/// Feeds the detector one packet every 20 ms per track, and records (millis, event).
struct Script {
    base: Instant,
    detector: SpeakerDetector<&'static str>,
    events: Vec<(u64, Event)>,
}

impl Script {
    fn new() -> Self {
        Script {
            base: Instant::now(),
            detector: SpeakerDetector::new(SpeakerConfig::default()),
            events: Vec::new(),
        }
    }

    /// From `from` to `to` millis (exclusive), each track sends the level `level(track, t)`.
    fn run(&mut self, from: u64, to: u64, level: impl Fn(&'static str, u64) -> u8) {
        for t in (from..to).step_by(20) {
            let now = self.base + Duration::from_millis(t);
            for key in [A, B, C] {
                let dbov = level(key, t);
                self.detector
                    .handle_level(now, key, AudioLevel::from_dbov(dbov));
            }
            self.drain(t);
        }
    }

    /// Nobody sends anything (DTX) from `from` to `to`; timers still fire.
    fn quiet(&mut self, from: u64, to: u64) {
        for t in (from..to).step_by(10) {
            let now = self.base + Duration::from_millis(t);
            if self.detector.poll_timeout().is_some_and(|due| due <= now) {
                self.detector.handle_timeout(now);
            }
            self.drain(t);
        }
    }

    fn drain(&mut self, t: u64) {
        while let Some(event) = self.detector.poll_change() {
            self.events.push((t, event));
        }
    }
}

#[test]
fn scripted_meeting() {
    let mut s = Script::new();

    // Alice talks alone; Carol coughs while she does.
    s.run(0, 3000, |key, t| match key {
        A => TALK,
        C if (2000..2200).contains(&t) => COUGH,
        _ => SILENT_DBOV,
    });
    // Bob takes over as Alice stops.
    s.run(
        3000,
        6000,
        |key, _| if key == B { TALK + 5 } else { SILENT_DBOV },
    );
    // Silence, with a cough from Carol in the middle of it.
    s.run(6000, 9000, |key, t| match key {
        C if (7000..7200).contains(&t) => COUGH,
        _ => SILENT_DBOV,
    });

    let expected = vec![
        // 300 ms of Alice's speech make her a speaker and the dominant one.
        (300, speakers(&[A])),
        (300, dominant(A)),
        // Bob has 300 ms; Alice's last second still holds more.
        (3300, speakers(&[A, B])),
        // Bob's score passes Alice's, then by the margin.
        (3600, speakers(&[B, A])),
        (3600, dominant(B)),
        // Alice stopped at 2980: from 3700 her window holds 280 ms of speech.
        (3700, speakers(&[B])),
        // Silence: likewise Bob stops being a speaker, but stays the dominant one.
        (6700, speakers(&[])),
    ];
    assert_eq!(s.events, expected);
    assert_eq!(s.detector.dominant(), Some(&B));
}

#[test]
fn a_cough_in_silence_changes_nothing() {
    let mut s = Script::new();
    s.run(0, 2000, |key, t| match key {
        C if (1000..1280).contains(&t) => COUGH,
        _ => SILENT_DBOV,
    });
    assert_eq!(s.events, vec![]);
    assert_eq!(s.detector.dominant(), None);
    assert!(s.detector.speakers().is_empty());
}

#[test]
fn two_people_at_similar_levels_do_not_flicker() {
    let mut s = Script::new();
    s.run(0, 1000, |key, _| if key == A { TALK } else { SILENT_DBOV });
    // Bob joins Alice, slightly louder, alternating a little louder and softer.
    s.run(1000, 6000, |key, t| match key {
        A => TALK,
        B if (t / 500) % 2 == 0 => TALK - 4,
        B => TALK + 2,
        _ => SILENT_DBOV,
    });
    let dominant_changes = s
        .events
        .iter()
        .filter(|(_, e)| matches!(e, SpeakerEvent::Dominant { .. }))
        .count();
    assert_eq!(dominant_changes, 1, "{:?}", s.events);
    assert_eq!(s.detector.dominant(), Some(&A));
    assert_eq!(s.detector.speakers().len(), 2);
}

#[test]
fn a_much_louder_interruption_takes_over_while_the_other_still_talks() {
    let mut s = Script::new();
    s.run(0, 2000, |key, _| if key == A { 50 } else { SILENT_DBOV });
    s.run(2000, 4000, |key, _| match key {
        A => 50,
        B => 10,
        _ => SILENT_DBOV,
    });
    assert_eq!(s.detector.dominant(), Some(&B));
    assert_eq!(s.detector.speakers(), &[B, A]);
}

#[test]
fn senders_that_stop_sending_in_silence_stop_being_speakers() {
    let mut s = Script::new();
    s.run(0, 1000, |key, _| if key == A { TALK } else { SILENT_DBOV });
    s.quiet(1000, 3000);
    assert_eq!(
        s.events,
        vec![
            (300, speakers(&[A])),
            (300, dominant(A)),
            (1700, speakers(&[]))
        ]
    );
    assert_eq!(s.detector.dominant(), Some(&A));
}

#[test]
fn background_noise_is_not_speech() {
    let mut s = Script::new();
    s.run(0, 3000, |key, _| if key == A { 70 } else { SILENT_DBOV });
    assert_eq!(s.events, vec![]);
}

#[test]
fn at_most_max_speakers_loudest_first() {
    let cfg = SpeakerConfig {
        max_speakers: 2,
        ..SpeakerConfig::default()
    };
    let mut s = Script::new();
    s.detector = SpeakerDetector::new(cfg);
    s.run(0, 2000, |key, _| match key {
        A => 40,
        B => 20,
        _ => 30,
    });
    assert_eq!(s.detector.speakers(), &[B, C]);
    assert_eq!(s.detector.dominant(), Some(&B));
}

#[test]
fn removing_the_dominant_speaker_clears_it() {
    let mut s = Script::new();
    s.run(0, 1000, |key, _| if key == A { TALK } else { SILENT_DBOV });
    s.events.clear();
    s.detector.remove(&A);
    s.drain(1000);
    assert_eq!(
        s.events,
        vec![
            (1000, speakers(&[])),
            (1000, SpeakerEvent::Dominant { speaker: None })
        ]
    );
    s.detector.remove(&B);
    assert_eq!(s.detector.poll_change(), None);
}

#[test]
fn packetisation_time_does_not_change_the_verdict() {
    // 60 ms packets: a 240 ms burst is still no speaker, 360 ms of speech is one.
    let base = Instant::now();
    let mut detector = SpeakerDetector::new(SpeakerConfig::default());
    for t in (0..240).step_by(60) {
        let now = base + Duration::from_millis(t);
        detector.handle_level(now, A, AudioLevel::from_dbov(TALK));
    }
    detector.handle_timeout(base + Duration::from_millis(400));
    assert_eq!(detector.poll_change(), None);
    for t in (2000..2420).step_by(60) {
        let now = base + Duration::from_millis(t);
        detector.handle_level(now, A, AudioLevel::from_dbov(TALK));
    }
    detector.handle_timeout(base + Duration::from_millis(2500));
    assert_eq!(detector.poll_change(), Some(speakers(&[A])));
}

#[test]
fn decisions_are_taken_once_per_tick() {
    let base = Instant::now();
    let mut detector = SpeakerDetector::new(SpeakerConfig::default());
    assert_eq!(detector.poll_timeout(), None);
    detector.handle_level(base, A, AudioLevel::from_dbov(TALK));
    let tick = base + Duration::from_millis(100);
    assert_eq!(detector.poll_timeout(), Some(tick));
    detector.handle_timeout(base + Duration::from_millis(99));
    assert_eq!(detector.poll_timeout(), Some(tick));
    detector.handle_timeout(tick);
    assert_eq!(
        detector.poll_timeout(),
        Some(tick + Duration::from_millis(100))
    );
}

#[test]
fn a_flooding_sender_is_bounded() {
    let base = Instant::now();
    let mut detector = SpeakerDetector::new(SpeakerConfig::default());
    for _ in 0..10_000 {
        detector.handle_level(base, A, AudioLevel::from_dbov(TALK));
    }
    let samples = detector.activity.get(A).map_or(0, |a| a.samples.len());
    assert_eq!(samples, MAX_SAMPLES);
}

#[test]
fn time_going_backwards_does_not_panic() {
    let base = Instant::now() + Duration::from_secs(10);
    let mut detector = SpeakerDetector::new(SpeakerConfig::default());
    for step in 0..200_u64 {
        let back = Duration::from_millis((step * 37) % 1000);
        detector.handle_level(base - back, A, AudioLevel::from_byte(step as u8));
        detector.handle_timeout(base - back / 2);
    }
    while detector.poll_change().is_some() {}
}

#[test]
fn parses_the_extension_byte() {
    assert_eq!(
        AudioLevel::parse(&[0x80 | 42]),
        Ok(AudioLevel {
            voice: true,
            dbov: 42
        })
    );
    assert_eq!(
        AudioLevel::parse(&[0x7f]),
        Ok(AudioLevel {
            voice: false,
            dbov: SILENT_DBOV
        })
    );
    assert_eq!(AudioLevel::parse(&[0]).map(AudioLevel::loudness), Ok(127));
    assert_eq!(AudioLevel::parse(&[0xff]).map(AudioLevel::loudness), Ok(0));
}

#[test]
fn refuses_malformed_extensions() {
    assert_eq!(AudioLevel::parse(&[]), Err(AudioLevelError::Empty));
    assert_eq!(
        AudioLevel::parse(&[0x10, 0x00]),
        Err(AudioLevelError::TooLong { len: 2 })
    );
    assert_eq!(
        AudioLevel::parse(&[0; 16]),
        Err(AudioLevelError::TooLong { len: 16 })
    );
}

#[test]
fn every_byte_parses() {
    for byte in 0..=u8::MAX {
        let level = AudioLevel::parse(&[byte]).expect("one byte is always a level");
        assert!(level.dbov <= SILENT_DBOV);
        assert_eq!(level.voice, byte >= 0x80);
    }
    assert_eq!(AudioLevel::from_dbov(200).dbov, SILENT_DBOV);
}
