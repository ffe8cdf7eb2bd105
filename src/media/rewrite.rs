//! Per-down-track RTP header rewriting: a subscriber sees one continuous stream with its own
//! SSRC and negotiated payload type, whatever happens upstream.
//!
//! Owns: the mapping from the current upstream source's sequence numbers and timestamps to
//! the subscriber's, plus the memory of recently seen sequence numbers that catches
//! duplicates.
//!
//! Invariants:
//! - Within one upstream source, output = input + a fixed offset (wrapping), for both the
//!   sequence number and the timestamp. Reordered packets therefore keep their exact relative
//!   positions, and upstream losses stay visible as gaps the subscriber can NACK.
//! - A sequence number is forwarded at most once per source, and never when it is more than
//!   [`REORDER_WINDOW`] behind the highest one seen.
//! - When the source changes (explicitly, or because the SSRC changed), the next packet
//!   continues at the last output sequence number + 1, so output never goes backwards and
//!   never repeats. Packets of the new source older than its first one are dropped for a
//!   while, since they would land on numbers already sent.
//!
//! Loop: the caller runs [`RtpRewriter::rewrite`] on each packet it intends to send to this
//! subscriber and sends it only if that returns true.

use rtc::rtp::header::Header;

/// How far behind the highest sequence number a packet may arrive and still be forwarded.
pub const REORDER_WINDOW: u16 = 1000;

/// Size of the duplicate-detection bitmap: a power of two larger than the reorder window, so
/// every sequence number inside the window has its own bit.
const WINDOW_BITS: usize = 1024;

/// Too-old packets in a row after which the upstream is taken to have restarted its
/// numbering under the same SSRC, rather than to be sending stale packets.
const RESYNC_AFTER: u32 = 64;

/// Signed distance from `b` to `a` in sequence-number space: positive when `a` is newer.
pub(crate) fn seq_delta(a: u16, b: u16) -> i32 {
    i32::from(a.wrapping_sub(b) as i16)
}

/// A source that was replaced by another one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Retired {
    /// Its SSRC: late packets are recognised by it.
    pub ssrc: u32,
    /// Its highest sequence number: packets not newer than this are late arrivals.
    pub highest: u16,
}

impl Retired {
    /// Whether this packet is a late arrival from the retired source, which must not bring it
    /// back. A packet newer than its last one is a genuine return and is not a straggler.
    pub(crate) fn is_straggler(&self, ssrc: u32, seq: u16) -> bool {
        let behind = -seq_delta(seq, self.highest);
        ssrc == self.ssrc && (0..=i32::from(REORDER_WINDOW)).contains(&behind)
    }
}

/// Which sequence numbers within the reorder window have been forwarded.
#[derive(Clone, Debug)]
struct SeqWindow {
    /// One bit per `seq % WINDOW_BITS`; bits ahead of the highest sequence number are kept
    /// clear so they are free when the window slides onto them.
    words: [u64; WINDOW_BITS / 64],
}

impl SeqWindow {
    fn starting_at(seq: u16) -> Self {
        let mut window = SeqWindow {
            words: [0; WINDOW_BITS / 64],
        };
        window.insert(seq);
        window
    }

    fn slot(seq: u16) -> (usize, u64) {
        let bit = usize::from(seq) % WINDOW_BITS;
        (bit / 64, 1 << (bit % 64))
    }

    /// Marks `seq` as seen; false if it already was.
    fn insert(&mut self, seq: u16) -> bool {
        let (word, mask) = Self::slot(seq);
        let Some(word) = self.words.get_mut(word) else {
            return false;
        };
        let fresh = *word & mask == 0;
        *word |= mask;
        fresh
    }

    fn clear(&mut self, seq: u16) {
        let (word, mask) = Self::slot(seq);
        if let Some(word) = self.words.get_mut(word) {
            *word &= !mask;
        }
    }

    /// Slides the window from `highest` forward by `by` and marks the new highest as seen.
    fn advance(&mut self, highest: u16, by: u16) {
        if usize::from(by) >= WINDOW_BITS {
            self.words = [0; WINDOW_BITS / 64];
        } else {
            (1..=by).for_each(|step| self.clear(highest.wrapping_add(step)));
        }
        self.insert(highest.wrapping_add(by));
    }
}

/// Where the next source's first packet lands in the output.
#[derive(Clone, Copy, Debug)]
struct Start {
    /// Its output sequence number.
    seq: u16,
    /// Its output timestamp, unless `keep` applies.
    ts: u32,
    /// Output timestamp of the last packet sent, once anything was sent: a switch's gap counts
    /// from it. Its presence also means earlier packets of the new source must be dropped,
    /// since they would reuse sequence numbers already sent.
    after_ts: Option<u32>,
    /// The timestamp mapping to keep when the same SSRC resumes: (ssrc, offset). After a pause
    /// the elapsed time then stays visible to the subscriber's jitter buffer.
    keep: Option<(u32, u32)>,
}

/// The upstream source currently being forwarded and its mapping onto the output.
#[derive(Clone, Debug)]
struct Source {
    /// Packets with another SSRC belong to another source.
    ssrc: u32,
    /// Newest sequence number seen: the reference for reordering and duplicates.
    highest: u16,
    /// Added to input sequence numbers.
    seq_offset: u16,
    /// Added to input timestamps.
    ts_offset: u32,
    /// Output timestamp of the packet with the highest sequence number: a switch continues
    /// from it.
    highest_out_ts: u32,
    /// First input sequence number after a switch: older ones would collide with output
    /// already sent. Cleared once the window has moved past it.
    floor: Option<u16>,
    /// Which recent sequence numbers were forwarded.
    seen: SeqWindow,
    /// Consecutive too-old packets, to detect a numbering restart.
    too_old_run: u32,
}

/// What to do with a packet of the current source.
enum Verdict {
    Accept,
    Drop,
    /// The numbering restarted: treat the packet as the start of a new source.
    Restart,
}

impl Source {
    fn anchored(ssrc: u32, seq: u16, ts: u32, start: Start) -> Self {
        let out_ts = match start.keep {
            Some((kept, offset)) if kept == ssrc => ts.wrapping_add(offset),
            _ => start.ts,
        };
        Source {
            ssrc,
            highest: seq,
            seq_offset: start.seq.wrapping_sub(seq),
            ts_offset: out_ts.wrapping_sub(ts),
            highest_out_ts: out_ts,
            floor: start.after_ts.map(|_| seq),
            seen: SeqWindow::starting_at(seq),
            too_old_run: 0,
        }
    }

    fn output(&self, seq: u16, ts: u32) -> (u16, u32) {
        (
            seq.wrapping_add(self.seq_offset),
            ts.wrapping_add(self.ts_offset),
        )
    }

    fn last_out_seq(&self) -> u16 {
        self.highest.wrapping_add(self.seq_offset)
    }

    fn retire(&self) -> Retired {
        Retired {
            ssrc: self.ssrc,
            highest: self.highest,
        }
    }

    fn classify(&mut self, seq: u16, ts: u32) -> Verdict {
        let delta = seq_delta(seq, self.highest);
        if delta > 0 {
            self.advance(seq, ts, delta as u16);
            return Verdict::Accept;
        }
        if delta < -i32::from(REORDER_WINDOW) {
            self.too_old_run += 1;
            let restart = self.too_old_run >= RESYNC_AFTER;
            return if restart {
                Verdict::Restart
            } else {
                Verdict::Drop
            };
        }
        self.too_old_run = 0;
        let below_floor = self.floor.is_some_and(|floor| seq_delta(seq, floor) < 0);
        if below_floor || !self.seen.insert(seq) {
            return Verdict::Drop;
        }
        Verdict::Accept
    }

    fn advance(&mut self, seq: u16, ts: u32, by: u16) {
        self.seen.advance(self.highest, by);
        self.highest = seq;
        self.highest_out_ts = ts.wrapping_add(self.ts_offset);
        self.too_old_run = 0;
        let past = |floor: u16| seq_delta(seq, floor) > i32::from(REORDER_WINDOW);
        if self.floor.is_some_and(past) {
            self.floor = None;
        }
    }
}

/// Rewrites one subscriber's copy of a published stream. See the module documentation.
#[derive(Clone, Debug)]
pub struct RtpRewriter {
    /// The SSRC the subscriber negotiated for this track.
    ssrc: u32,
    /// The payload type the subscriber negotiated for this codec.
    payload_type: u8,
    /// The source being forwarded; None before the first packet and right after a switch.
    source: Option<Source>,
    /// Where the next source starts; used when `source` is None.
    next: Start,
    /// The previous source, whose late packets are dropped.
    retired: Option<Retired>,
    /// Packets passed, for statistics.
    forwarded: u64,
    /// Packets dropped as duplicates or too old, for statistics.
    dropped: u64,
}

impl RtpRewriter {
    /// ssrc and payload_type the subscriber negotiated; the first output sequence number and
    /// timestamp are random.
    pub fn new(ssrc: u32, payload_type: u8) -> Self {
        Self::with_start(ssrc, payload_type, rand::random(), rand::random())
    }

    /// Like [`RtpRewriter::new`], with the first output sequence number and timestamp given.
    pub fn with_start(ssrc: u32, payload_type: u8, first_seq: u16, first_ts: u32) -> Self {
        let next = Start {
            seq: first_seq,
            ts: first_ts,
            after_ts: None,
            keep: None,
        };
        RtpRewriter {
            ssrc,
            payload_type,
            source: None,
            next,
            retired: None,
            forwarded: 0,
            dropped: 0,
        }
    }

    /// Rewrites ssrc, payload type, sequence number and timestamp in place. Returns false if
    /// the packet must be dropped: a duplicate, one more than [`REORDER_WINDOW`] behind the
    /// highest sequence number of its source, or a late packet of a replaced source. A new
    /// SSRC without [`RtpRewriter::switch_source`] is a switch with a gap of one tick.
    pub fn rewrite(&mut self, header: &mut Header) -> bool {
        let Some((seq, ts)) = self.map(header.ssrc, header.sequence_number, header.timestamp)
        else {
            self.dropped += 1;
            return false;
        };
        header.ssrc = self.ssrc;
        header.payload_type = self.payload_type;
        header.sequence_number = seq;
        header.timestamp = ts;
        self.forwarded += 1;
        true
    }

    /// The upstream source changed (new SSRC, republish, simulcast layer switch): the next
    /// packet continues the output sequence at the last one + 1 and the timestamp at the last
    /// one + `ts_gap` (e.g. one frame: 3000 at 90 kHz, 960 at 48 kHz). Called again before
    /// the next packet, the later gap replaces the earlier one; before the first packet this
    /// changes nothing.
    pub fn switch_source(&mut self, ts_gap: u32) {
        self.retire_source();
        if let Some(after_ts) = self.next.after_ts {
            self.next.ts = after_ts.wrapping_add(ts_gap);
            self.next.keep = None;
        }
    }

    /// Packets the caller withheld on purpose (a paused subscriber, one waiting for a
    /// keyframe) leave no hole: the next packet continues the output sequence at the last
    /// one + 1. If it comes from the same SSRC the timestamp mapping is kept, so the time
    /// that passed stays visible; otherwise this is a switch with a gap of one tick. After a
    /// [`RtpRewriter::switch_source`] not yet followed by a packet, this changes nothing.
    pub fn continue_sequence(&mut self) {
        self.retire_source();
    }

    /// The SSRC the subscriber sees.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The payload type the subscriber sees.
    pub fn payload_type(&self) -> u8 {
        self.payload_type
    }

    /// Packets this rewriter passed.
    pub fn forwarded(&self) -> u64 {
        self.forwarded
    }

    /// Packets this rewriter dropped (duplicates, too old, late packets of a replaced source).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Ends the current source, if any: the next packet continues its numbering, keeping its
    /// timestamp mapping if it has the same SSRC, else one tick after it.
    fn retire_source(&mut self) {
        let Some(source) = self.source.take() else {
            return;
        };
        self.retired = Some(source.retire());
        self.next = Start {
            seq: source.last_out_seq().wrapping_add(1),
            ts: source.highest_out_ts.wrapping_add(1),
            after_ts: Some(source.highest_out_ts),
            keep: Some((source.ssrc, source.ts_offset)),
        };
    }

    /// The output (seq, timestamp) for an input packet, or None to drop it.
    fn map(&mut self, ssrc: u32, seq: u16, ts: u32) -> Option<(u16, u32)> {
        if self.is_straggler(ssrc, seq) {
            return None;
        }
        let verdict = match &mut self.source {
            Some(source) if source.ssrc == ssrc => source.classify(seq, ts),
            _ => Verdict::Restart,
        };
        match verdict {
            Verdict::Accept => self.source.as_ref().map(|source| source.output(seq, ts)),
            Verdict::Drop => None,
            Verdict::Restart => Some(self.start_source(ssrc, seq, ts)),
        }
    }

    fn is_straggler(&self, ssrc: u32, seq: u16) -> bool {
        let current = self.source.as_ref().map(|source| source.ssrc);
        current != Some(ssrc) && self.retired.is_some_and(|r| r.is_straggler(ssrc, seq))
    }

    /// Anchors a new source; if one is current, this is a switch with a gap of one tick.
    fn start_source(&mut self, ssrc: u32, seq: u16, ts: u32) -> (u16, u32) {
        if self.source.is_some() {
            self.switch_source(1);
        }
        let source = Source::anchored(ssrc, seq, ts, self.next);
        let out = source.output(seq, ts);
        self.source = Some(source);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IN_SSRC: u32 = 0x1111;
    const OUT_SSRC: u32 = 0xabcd;
    const OUT_PT: u8 = 111;

    fn header(ssrc: u32, seq: u16, ts: u32) -> Header {
        Header {
            version: 2,
            payload_type: 96,
            sequence_number: seq,
            timestamp: ts,
            ssrc,
            ..Header::default()
        }
    }

    /// Rewrites and returns the output (seq, ts), or None if dropped.
    fn run(rw: &mut RtpRewriter, ssrc: u32, seq: u16, ts: u32) -> Option<(u16, u32)> {
        let mut h = header(ssrc, seq, ts);
        if !rw.rewrite(&mut h) {
            return None;
        }
        assert_eq!((h.ssrc, h.payload_type), (OUT_SSRC, OUT_PT));
        Some((h.sequence_number, h.timestamp))
    }

    fn rewriter(first_seq: u16, first_ts: u32) -> RtpRewriter {
        RtpRewriter::with_start(OUT_SSRC, OUT_PT, first_seq, first_ts)
    }

    #[test]
    fn sets_ssrc_and_payload_type() {
        let mut rw = RtpRewriter::new(OUT_SSRC, OUT_PT);
        assert_eq!((rw.ssrc(), rw.payload_type()), (OUT_SSRC, OUT_PT));
        assert!(run(&mut rw, IN_SSRC, 7, 7).is_some());
    }

    #[test]
    fn continuity_across_sequence_and_timestamp_wrap() {
        let mut rw = rewriter(65_530, u32::MAX - 5_000);
        let mut expected = (65_530_u16, u32::MAX - 5_000);
        for i in 0..20_u16 {
            let got = run(&mut rw, IN_SSRC, 100 + i, 3_000 * u32::from(i));
            assert_eq!(got, Some(expected));
            expected = (expected.0.wrapping_add(1), expected.1.wrapping_add(3_000));
        }
        assert_eq!(rw.forwarded(), 20);
    }

    #[test]
    fn input_wrap_is_continuous() {
        let mut rw = rewriter(10, 0);
        for i in 0..10_u16 {
            let seq = 65_531_u16.wrapping_add(i);
            let ts = (u32::MAX - 1_000).wrapping_add(960 * u32::from(i));
            assert_eq!(
                run(&mut rw, IN_SSRC, seq, ts),
                Some((10 + i, 960 * u32::from(i)))
            );
        }
    }

    #[test]
    fn reordered_packets_keep_their_offsets() {
        let mut rw = rewriter(500, 9_000);
        assert_eq!(run(&mut rw, IN_SSRC, 10, 0), Some((500, 9_000)));
        assert_eq!(run(&mut rw, IN_SSRC, 12, 6_000), Some((502, 15_000)));
        assert_eq!(run(&mut rw, IN_SSRC, 11, 3_000), Some((501, 12_000)));
        assert_eq!(run(&mut rw, IN_SSRC, 13, 9_000), Some((503, 18_000)));
        assert_eq!(run(&mut rw, IN_SSRC, 9, 0), Some((499, 9_000)));
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut rw = rewriter(0, 0);
        assert!(run(&mut rw, IN_SSRC, 10, 0).is_some());
        assert!(run(&mut rw, IN_SSRC, 12, 0).is_some());
        assert!(run(&mut rw, IN_SSRC, 12, 0).is_none());
        assert!(run(&mut rw, IN_SSRC, 10, 0).is_none());
        assert!(run(&mut rw, IN_SSRC, 11, 0).is_some());
        assert!(run(&mut rw, IN_SSRC, 11, 0).is_none());
        assert_eq!((rw.forwarded(), rw.dropped()), (3, 3));
    }

    #[test]
    fn too_old_packets_are_dropped() {
        let mut rw = rewriter(0, 0);
        assert!(run(&mut rw, IN_SSRC, 5_000, 0).is_some());
        assert!(run(&mut rw, IN_SSRC, 5_000 - REORDER_WINDOW, 0).is_some());
        assert!(run(&mut rw, IN_SSRC, 5_000 - REORDER_WINDOW - 1, 0).is_none());
        assert_eq!(rw.dropped(), 1);
    }

    #[test]
    fn duplicate_detection_survives_window_slides() {
        let mut rw = rewriter(0, 0);
        for seq in 0..5_000_u16 {
            assert!(run(&mut rw, IN_SSRC, seq, 0).is_some());
        }
        for seq in 4_000..5_000_u16 {
            assert!(
                run(&mut rw, IN_SSRC, seq, 0).is_none(),
                "seq {seq} repeated"
            );
        }
        assert!(run(&mut rw, IN_SSRC, 5_000 + 1_500, 0).is_some());
        assert!(run(&mut rw, IN_SSRC, 5_000 + 1_499, 0).is_some());
    }

    #[test]
    fn loss_keeps_gaps() {
        let mut rw = rewriter(100, 0);
        assert_eq!(run(&mut rw, IN_SSRC, 1, 0).map(|o| o.0), Some(100));
        assert_eq!(run(&mut rw, IN_SSRC, 2, 0).map(|o| o.0), Some(101));
        assert_eq!(run(&mut rw, IN_SSRC, 6, 0).map(|o| o.0), Some(105));
    }

    #[test]
    fn switch_source_continues_output() {
        let mut rw = rewriter(1_000, 50_000);
        assert!(run(&mut rw, IN_SSRC, 10, 0).is_some());
        assert_eq!(run(&mut rw, IN_SSRC, 11, 3_000), Some((1_001, 53_000)));
        rw.switch_source(3_000);
        assert_eq!(run(&mut rw, 0x2222, 40_000, 777), Some((1_002, 56_000)));
        assert_eq!(run(&mut rw, 0x2222, 40_001, 3_777), Some((1_003, 59_000)));
    }

    #[test]
    fn switch_source_on_same_ssrc_restarted_numbering() {
        let mut rw = rewriter(0, 0);
        assert!(run(&mut rw, IN_SSRC, 30_000, 90_000).is_some());
        rw.switch_source(3_000);
        assert_eq!(run(&mut rw, IN_SSRC, 5, 100), Some((1, 3_000)));
        assert_eq!(run(&mut rw, IN_SSRC, 6, 3_100), Some((2, 6_000)));
    }

    #[test]
    fn after_a_switch_older_packets_of_the_new_source_are_dropped() {
        let mut rw = rewriter(0, 0);
        assert!(run(&mut rw, IN_SSRC, 10, 0).is_some());
        rw.switch_source(1);
        assert_eq!(run(&mut rw, 0x2222, 500, 0).map(|o| o.0), Some(1));
        assert!(run(&mut rw, 0x2222, 499, 0).is_none());
        assert_eq!(run(&mut rw, 0x2222, 501, 0).map(|o| o.0), Some(2));
    }

    #[test]
    fn implicit_ssrc_change_stays_monotonic() {
        let mut rw = rewriter(200, 10_000);
        assert!(run(&mut rw, IN_SSRC, 1, 0).is_some());
        assert_eq!(run(&mut rw, IN_SSRC, 2, 960), Some((201, 10_960)));
        assert_eq!(run(&mut rw, 0x3333, 9_000, 123_456), Some((202, 10_961)));
        assert_eq!(run(&mut rw, 0x3333, 9_001, 124_416), Some((203, 11_921)));
    }

    #[test]
    fn late_packets_of_the_old_source_are_dropped() {
        let mut rw = rewriter(0, 0);
        assert!(run(&mut rw, IN_SSRC, 10, 0).is_some());
        assert!(run(&mut rw, IN_SSRC, 12, 0).is_some());
        assert_eq!(run(&mut rw, 0x3333, 70, 0).map(|o| o.0), Some(3));
        assert!(run(&mut rw, IN_SSRC, 11, 0).is_none());
        assert_eq!(run(&mut rw, 0x3333, 71, 0).map(|o| o.0), Some(4));
        assert_eq!(
            run(&mut rw, IN_SSRC, 13, 0).map(|o| o.0),
            Some(5),
            "a genuine return"
        );
    }

    #[test]
    fn continue_sequence_closes_the_gap_and_keeps_time() {
        let mut rw = rewriter(0, 0);
        assert_eq!(run(&mut rw, IN_SSRC, 10, 1_000), Some((0, 0)));
        rw.continue_sequence();
        assert_eq!(run(&mut rw, IN_SSRC, 110, 301_000), Some((1, 300_000)));
        assert_eq!(run(&mut rw, IN_SSRC, 111, 304_000), Some((2, 303_000)));
    }

    #[test]
    fn continue_sequence_before_any_packet_keeps_the_start() {
        let mut rw = rewriter(42, 4_200);
        rw.continue_sequence();
        rw.switch_source(3_000);
        assert_eq!(run(&mut rw, IN_SSRC, 9, 9), Some((42, 4_200)));
    }

    #[test]
    fn the_last_switch_gap_wins() {
        let mut rw = rewriter(0, 0);
        assert_eq!(run(&mut rw, IN_SSRC, 10, 1_000), Some((0, 0)));
        rw.switch_source(3_000);
        rw.switch_source(9_000);
        assert_eq!(run(&mut rw, 0x2222, 7, 7), Some((1, 9_000)));
    }

    #[test]
    fn a_switch_after_continue_sequence_wins() {
        let mut rw = rewriter(0, 0);
        assert_eq!(run(&mut rw, IN_SSRC, 10, 1_000), Some((0, 0)));
        rw.continue_sequence();
        rw.switch_source(3_000);
        rw.continue_sequence();
        assert_eq!(run(&mut rw, IN_SSRC, 5_000, 50_000), Some((1, 3_000)));
    }

    #[test]
    fn continue_sequence_then_another_ssrc_is_a_one_tick_switch() {
        let mut rw = rewriter(0, 0);
        assert_eq!(run(&mut rw, IN_SSRC, 10, 1_000), Some((0, 0)));
        rw.continue_sequence();
        assert_eq!(run(&mut rw, 0x2222, 5, 50_000), Some((1, 1)));
    }

    #[test]
    fn restarted_numbering_without_a_switch_recovers() {
        let mut rw = rewriter(0, 0);
        assert!(run(&mut rw, IN_SSRC, 10_000, 0).is_some());
        let restart = 5_000 + RESYNC_AFTER as u16;
        for seq in 5_000..restart - 1 {
            assert!(run(&mut rw, IN_SSRC, seq, 0).is_none());
        }
        assert_eq!(run(&mut rw, IN_SSRC, restart - 1, 0).map(|o| o.0), Some(1));
        assert_eq!(run(&mut rw, IN_SSRC, restart, 0).map(|o| o.0), Some(2));
    }

    #[test]
    fn arbitrary_headers_never_panic_and_output_never_repeats() {
        let mut rw = rewriter(0, 0);
        let mut state = 99_u32;
        let (mut seen, mut newest) = (std::collections::HashSet::new(), 0_i64);
        for _ in 0..20_000 {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let ssrc = (state >> 30) & 1;
            let seq = (state >> 8) as u16 % 2_048;
            if let Some((out, _)) = run(&mut rw, ssrc, seq, state) {
                let unwrapped = newest + i64::from(seq_delta(out, newest as u16));
                assert!(seen.insert(unwrapped), "output seq {unwrapped} sent twice");
                newest = newest.max(unwrapped);
            }
        }
    }
}
