//! What a simulated participant measures about the media it receives.
//!
//! Owns per-track loss accounting ([`SequenceTracker`]), the per-participant
//! [`ReceiveStats`] (packets, bytes, loss, delay histogram, time of first media), and
//! small helpers for quantiles of few samples and rates. All of it is I/O-free: the
//! caller passes the receive time as the duration since the epoch.
//!
//! Loss is counted from the load header's per-track sequence, which the server
//! forwards untouched, not from RTP sequence numbers, which it rewrites: here a packet
//! is lost when a later one arrived and it never did. Packets after the newest one
//! received (a stream that stalled) are counted by the summary, which knows how many
//! each publisher sent.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::histogram::Histogram;
use super::payload;
use crate::ids::TrackId;
use crate::signal::protocol::TrackKind;

/// How many sequence numbers behind the newest a tracker can still tell a duplicate
/// from a late packet. Older arrivals are counted as late.
const REORDER_WINDOW: u64 = 128;

/// What one arrival changed in a track's loss count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The newest packet so far; `skipped` packets before it are missing for now.
    Ahead { skipped: u64 },
    /// An older packet that fills a gap (reordered or retransmitted).
    Late,
    /// Already received.
    Duplicate,
}

impl Arrival {
    /// The change this arrival makes to the number of missing packets.
    pub fn loss_change(self) -> i64 {
        match self {
            Arrival::Ahead { skipped } => i64::try_from(skipped).unwrap_or(i64::MAX),
            Arrival::Late => -1,
            Arrival::Duplicate => 0,
        }
    }
}

/// Loss accounting of one track's sequence, from the first packet received.
#[derive(Debug, Clone, Default)]
pub struct SequenceTracker {
    /// Lowest and highest sequence received; `None` before the first packet.
    range: Option<(u64, u64)>,
    /// Distinct packets received.
    received: u64,
    duplicates: u64,
    /// Bit i set: sequence `highest - i` has arrived.
    seen: u128,
    /// Packets the server chose not to forward while it paused the track: neither
    /// expected nor lost.
    held_back: u64,
    /// The server paused or resumed the track: the next gap is what it held back.
    gap_held_back: bool,
    /// Every gap is what the server held back: the audio of a large room, where it
    /// forwards only the loudest voices and withholds silence.
    every_gap_held_back: bool,
}

impl SequenceTracker {
    pub fn record(&mut self, sequence: u64) -> Arrival {
        let Some((first, highest)) = self.range else {
            self.range = Some((sequence, sequence));
            self.received = 1;
            self.seen = 1;
            return Arrival::Ahead { skipped: 0 };
        };
        if sequence > highest {
            let advance = sequence - highest;
            self.seen = if advance >= REORDER_WINDOW {
                1
            } else {
                (self.seen << advance) | 1
            };
            self.range = Some((first, sequence));
            self.received += 1;
            let skipped = advance - 1;
            if skipped > 0 && (self.gap_held_back || self.every_gap_held_back) {
                self.gap_held_back = false;
                self.held_back += skipped;
                return Arrival::Ahead { skipped: 0 };
            }
            return Arrival::Ahead { skipped };
        }
        self.record_behind(sequence, first, highest)
    }

    fn record_behind(&mut self, sequence: u64, first: u64, highest: u64) -> Arrival {
        let age = highest - sequence;
        if age < REORDER_WINDOW {
            let bit = 1u128 << age;
            if self.seen & bit != 0 {
                self.duplicates += 1;
                return Arrival::Duplicate;
            }
            self.seen |= bit;
        }
        self.received += 1;
        if sequence >= first {
            return Arrival::Late;
        }
        // Earlier than the first packet: the packets in between are now missing too.
        self.range = Some((sequence, highest));
        Arrival::Ahead {
            skipped: first - sequence - 1,
        }
    }

    /// The newest sequence received.
    pub fn highest(&self) -> Option<u64> {
        self.range.map(|(_, highest)| highest)
    }

    /// Packets from the first to the newest received, but for those held back.
    pub fn expected(&self) -> u64 {
        let range = self.range.map_or(0, |(first, highest)| highest - first + 1);
        range.saturating_sub(self.held_back)
    }

    /// The server paused or resumed the track: the next gap in the sequence is
    /// packets it did not forward on purpose, not loss.
    pub fn hold_next_gap(&mut self) {
        self.gap_held_back = true;
    }

    /// Whether the server paused or resumed the track after its newest packet, or may
    /// hold any packet back.
    pub fn gap_pending(&self) -> bool {
        self.gap_held_back || self.every_gap_held_back
    }

    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

/// Counters of one received track.
#[derive(Debug, Clone)]
pub struct TrackStats {
    pub kind: TrackKind,
    /// The publisher's stream number, from the load header.
    pub stream: u32,
    pub packets: u64,
    /// RTP payload bytes.
    pub bytes: u64,
    pub sequence: SequenceTracker,
}

/// Everything one participant measured about what it received.
#[derive(Debug, Clone, Default)]
pub struct ReceiveStats {
    pub tracks: HashMap<TrackId, TrackStats>,
    /// One-way delay, send to receive.
    pub delay: Histogram,
    /// When the first media packet arrived, since the epoch.
    pub first_media: Option<Duration>,
    /// Packets without a load header.
    pub unparsed: u64,
    /// Tracks the server says it does not forward now (last-N, or hidden).
    pub paused: HashSet<TrackId>,
    /// Tracks the server said at some time it did not forward.
    pub ever_paused: HashSet<TrackId>,
    /// The server chooses which voices to forward (audio last-N): audio gaps are not
    /// loss.
    pub voices_chosen: bool,
}

/// What one received packet was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub kind: TrackKind,
    pub arrival: Arrival,
}

impl ReceiveStats {
    /// Records a packet of `track` received at `now`; `None` without a load header.
    pub fn record(&mut self, track: &TrackId, payload: &[u8], now: Duration) -> Option<Received> {
        let Some((kind, header)) = payload::parse(payload) else {
            self.unparsed += 1;
            return None;
        };
        self.first_media.get_or_insert(now);
        self.delay.record(now.saturating_sub(header.sent));

        if !self.tracks.contains_key(track) {
            let fresh = TrackStats {
                kind,
                stream: header.stream,
                packets: 0,
                bytes: 0,
                sequence: SequenceTracker {
                    every_gap_held_back: self.voices_chosen && kind == TrackKind::Audio,
                    ..SequenceTracker::default()
                },
            };
            self.tracks.insert(track.clone(), fresh);
        }
        let stats = self.tracks.get_mut(track)?;
        stats.packets += 1;
        stats.bytes += payload.len() as u64;
        let arrival = stats.sequence.record(header.sequence);
        Some(Received { kind, arrival })
    }

    /// The server paused or resumed forwarding `track` to this participant.
    pub fn set_paused(&mut self, track: &TrackId, paused: bool) {
        if paused {
            self.paused.insert(track.clone());
            self.ever_paused.insert(track.clone());
        } else {
            self.paused.remove(track);
        }
        if let Some(stats) = self.tracks.get_mut(track) {
            stats.sequence.hold_next_gap();
        }
    }

    /// Tracks paused by the server that never sent a packet here: publishers that
    /// are in the room but held back from this participant. One resumed but not sent
    /// yet counts (in a large room a camera is resumed when its publisher speaks,
    /// from the next keyframe, which may not come before the run ends).
    pub fn held_back_streams(&self) -> usize {
        let never_received = |t: &&TrackId| !self.tracks.contains_key(*t);
        self.ever_paused.iter().filter(never_received).count()
    }

    /// Packets received of one kind.
    pub fn packets(&self, kind: TrackKind) -> u64 {
        self.sum(kind, |t| t.packets)
    }

    pub fn bytes(&self, kind: TrackKind) -> u64 {
        self.sum(kind, |t| t.bytes)
    }

    pub fn duplicates(&self) -> u64 {
        self.tracks.values().map(|t| t.sequence.duplicates()).sum()
    }

    /// Distinct publishers heard on tracks of one kind.
    pub fn streams(&self, kind: TrackKind) -> usize {
        let of_kind = self.tracks.values().filter(|t| t.kind == kind);
        of_kind.map(|t| t.stream).collect::<HashSet<_>>().len()
    }

    fn sum(&self, kind: TrackKind, field: impl Fn(&TrackStats) -> u64) -> u64 {
        let of_kind = self.tracks.values().filter(|t| t.kind == kind);
        of_kind.map(field).sum()
    }
}

/// The nearest-rank quantile `q` (0..=1) of unsorted samples.
pub fn quantile(samples: &[Duration], q: f64) -> Option<Duration> {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// Events per second of a growing total, between successive readings.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    last: Option<(Duration, u64)>,
}

impl RateMeter {
    /// The rate since the previous reading; 0 for the first.
    pub fn update(&mut self, now: Duration, total: u64) -> f64 {
        let rate = match self.last {
            Some((then, before)) => per_second(total.saturating_sub(before), now - then),
            None => 0.0,
        };
        self.last = Some((now, total));
        rate
    }
}

/// `count` over `elapsed`, 0 when no time passed.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(sequences: &[u64]) -> (SequenceTracker, i64) {
        let mut tracker = SequenceTracker::default();
        let change = sequences.iter().map(|s| tracker.record(*s).loss_change());
        let live_loss = change.sum();
        (tracker, live_loss)
    }

    #[test]
    fn in_order_has_no_loss() {
        let (t, live) = track(&[10, 11, 12, 13]);
        assert_eq!((t.expected(), t.lost(), live), (4, 0, 0));
        assert_eq!(t.highest(), Some(13));
        assert_eq!(SequenceTracker::default().highest(), None);
    }

    #[test]
    fn a_gap_is_loss_until_filled() {
        let (t, live) = track(&[0, 1, 4, 5]);
        assert_eq!((t.lost(), live), (2, 2));
        let (t, live) = track(&[0, 1, 4, 3, 5, 2]);
        assert_eq!((t.lost(), live), (0, 0));
    }

    #[test]
    fn the_gap_of_a_pause_is_held_back_and_later_gaps_are_loss() {
        let mut t = SequenceTracker::default();
        let mut live = 0;
        for sequence in [0, 1, 2] {
            live += t.record(sequence).loss_change();
        }
        t.hold_next_gap();
        // Paused from 3 to 9; then a real loss of 12.
        for sequence in [10, 11, 13] {
            live += t.record(sequence).loss_change();
        }
        assert_eq!((t.expected(), t.lost(), live), (7, 1, 1));
    }

    #[test]
    fn where_voices_are_chosen_audio_gaps_are_held_back_and_video_gaps_lost() {
        let mut stats = ReceiveStats {
            voices_chosen: true,
            ..ReceiveStats::default()
        };
        let (cam, mic) = (
            TrackId::from_string("cam".into()),
            TrackId::from_string("mic".into()),
        );
        for sequence in [0, 1, 5, 9] {
            stats.record(&cam, &payload(true, sequence, 1), Duration::from_millis(2));
            stats.record(&mic, &payload(false, sequence, 1), Duration::from_millis(2));
        }
        assert_eq!(stats.tracks[&cam].sequence.lost(), 6);
        assert_eq!(stats.tracks[&mic].sequence.lost(), 0);
        assert!(stats.tracks[&mic].sequence.gap_pending());
    }

    #[test]
    fn a_pause_before_the_first_packet_leaves_nothing_to_hold_back() {
        let mut stats = ReceiveStats::default();
        let track = TrackId::from_string("held".into());
        stats.set_paused(&track, true);
        assert_eq!(stats.held_back_streams(), 1);
        stats.set_paused(&track, false);
        assert_eq!(stats.held_back_streams(), 1, "resumed, nothing sent yet");
        stats.record(&track, &payload(true, 5, 1), Duration::from_millis(2));
        assert_eq!(stats.held_back_streams(), 0, "heard from now on");
        stats.record(&track, &payload(true, 7, 1), Duration::from_millis(3));
        let sequence = &stats.tracks[&track].sequence;
        assert_eq!((sequence.expected(), sequence.lost()), (3, 1));
    }

    #[test]
    fn duplicates_are_neither_received_twice_nor_lost() {
        let (t, live) = track(&[0, 1, 1, 2, 0]);
        assert_eq!((t.expected(), t.duplicates(), t.lost(), live), (3, 2, 0, 0));
    }

    #[test]
    fn an_arrival_before_the_first_widens_the_range() {
        let (t, live) = track(&[5, 6, 2]);
        assert_eq!((t.expected(), t.lost(), live), (5, 2, 2));
        let (t, live) = track(&[5, 6, 2, 3, 4]);
        assert_eq!((t.lost(), live), (0, 0));
    }

    #[test]
    fn jumps_beyond_the_window_forget_old_arrivals() {
        let (t, live) = track(&[0, 1000, 1]);
        assert_eq!((t.expected(), t.lost(), live), (1001, 998, 998));
        let (t, _) = track(&[0, 300, 299, 299]);
        assert_eq!((t.lost(), t.duplicates()), (298, 1));
    }

    fn payload(video: bool, sequence: u64, sent_ms: u64) -> Vec<u8> {
        let mut bytes = payload::sample(video, sequence, sent_ms);
        bytes.resize(bytes.len() + 50, 0);
        bytes
    }

    #[test]
    fn receive_stats_split_kinds_and_measure_delay() {
        let (cam, mic) = (
            TrackId::from_string("cam".into()),
            TrackId::from_string("mic".into()),
        );
        let mut stats = ReceiveStats::default();
        let ms = Duration::from_millis;
        stats.record(&cam, &payload(true, 0, 100), ms(103));
        stats.record(&cam, &payload(true, 2, 110), ms(111));
        stats.record(&mic, &payload(false, 7, 120), ms(125));
        let got = stats.record(&mic, &payload(false, 8, 140), ms(142));
        assert_eq!(stats.record(&mic, b"not ours", ms(150)), None);

        let ahead = Arrival::Ahead { skipped: 0 };
        assert_eq!(
            got,
            Some(Received {
                kind: TrackKind::Audio,
                arrival: ahead
            })
        );
        assert_eq!(stats.packets(TrackKind::Video), 2);
        assert_eq!(stats.packets(TrackKind::Audio), 2);
        assert_eq!(stats.bytes(TrackKind::Audio), 2 * (24 + 50));
        let video = &stats.tracks[&cam];
        assert_eq!(
            (video.stream, video.sequence.lost(), stats.unparsed),
            (1, 1, 1)
        );
        assert_eq!(stats.first_media, Some(ms(103)));
        assert_eq!(stats.delay.max(), Some(ms(5)));
        assert_eq!(stats.delay.min(), Some(ms(1)));
    }

    #[test]
    fn quantiles_of_samples_use_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(quantile(&samples, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(quantile(&samples, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(
            quantile(&samples[..1], 0.99),
            Some(Duration::from_millis(100))
        );
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn rates_are_per_second_between_readings() {
        let mut meter = RateMeter::default();
        assert_eq!(meter.update(Duration::from_secs(1), 100), 0.0);
        assert_eq!(meter.update(Duration::from_millis(1500), 400), 600.0);
        assert_eq!(per_second(10, Duration::ZERO), 0.0);
    }
}
