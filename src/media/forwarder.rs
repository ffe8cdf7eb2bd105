//! The forwarder: one per published track, fanning its packets out to the subscribers'
//! down-tracks.
//!
//! Owns: the down-tracks of one published track (each with its own [`RtpRewriter`] and
//! state), the record of which upstream source is current, the keyframe-request throttle
//! towards the publisher, and the track's counters.
//!
//! Invariants:
//! - A paused down-track gets nothing.
//! - A video down-track (of a codec whose keyframes are recognised) gets nothing until a
//!   keyframe starts: after it is added, after a resume and after the upstream source changed.
//!   Once started it gets every packet its rewriter accepts, except packets older than the
//!   keyframe that belong to an earlier frame.
//! - While any down-track waits for a keyframe, a request towards the publisher is always
//!   pending in the throttle, so one goes out every throttle interval until a keyframe comes.
//! - Output sequence numbers of a down-track never go backwards, and withheld packets (pause,
//!   keyframe wait) leave no hole in them.
//!
//! Loop: feed [`Forwarder::handle_rtp`] with each publisher packet and send what it pushes;
//! feed subscribers' PLI/FIR to [`Forwarder::handle_keyframe_request`]; after each input and
//! at [`Forwarder::poll_timeout`], send a PLI upstream while
//! [`Forwarder::poll_keyframe_request`] says so.

use std::time::{Duration, Instant};

use rtc::rtp::header::Header;
use rtc::rtp::packet::Packet;

use super::codec::{self, MediaKind, VideoCodec};
use super::keyframe::{KeyframeThrottle, DEFAULT_MIN_INTERVAL};
use super::rewrite::{seq_delta, Retired, RtpRewriter, REORDER_WINDOW};

/// Identifies one down-track of a forwarder; chosen by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DownTrackKey(pub u64);

/// What a forwarder forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwarderConfig {
    /// Audio is forwarded at once; video waits for keyframes.
    pub kind: MediaKind,
    /// The video codec, to recognise keyframes; `Other` for audio.
    pub codec: VideoCodec,
    /// Shortest spacing between keyframe requests sent upstream.
    pub keyframe_interval: Duration,
}

impl ForwarderConfig {
    /// An audio track.
    pub fn audio() -> Self {
        ForwarderConfig {
            kind: MediaKind::Audio,
            codec: VideoCodec::Other,
            keyframe_interval: DEFAULT_MIN_INTERVAL,
        }
    }

    /// A video track of the given codec, with the default keyframe-request interval.
    pub fn video(codec: VideoCodec) -> Self {
        ForwarderConfig {
            kind: MediaKind::Video,
            codec,
            keyframe_interval: DEFAULT_MIN_INTERVAL,
        }
    }
}

/// Counters of one forwarder. Byte counts are RTP payload bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwarderStats {
    /// Packets received from the publisher.
    pub packets_in: u64,
    /// Payload bytes received from the publisher.
    pub bytes_in: u64,
    /// Packets handed out, summed over down-tracks.
    pub packets_out: u64,
    /// Payload bytes handed out, summed over down-tracks.
    pub bytes_out: u64,
    /// Packets withheld from down-tracks waiting for a keyframe, summed over down-tracks.
    pub dropped_waiting_keyframe: u64,
    /// Packets that start a keyframe.
    pub keyframes_in: u64,
    /// Keyframe requests sent upstream.
    pub keyframe_requests_sent: u64,
}

/// Longest timestamp gap a source change may introduce: well inside the half of the 32-bit
/// space that receivers read as "later".
const MAX_TS_GAP: u32 = 1 << 30;

/// Where a down-track stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The subscriber paused it: nothing is sent.
    Paused,
    /// Video only: nothing is sent until a packet starting a keyframe arrives.
    WaitingKeyframe,
    /// Packets flow. `keyframe` holds the (seq, timestamp) of the keyframe it started at, while
    /// older packets may still arrive: those are sent only if they belong to that frame.
    Forwarding { keyframe: Option<(u16, u32)> },
}

/// What became of a packet for one down-track.
enum Outcome {
    Sent(Packet),
    Waiting,
    Skipped,
}

/// One subscriber's copy of the track.
#[derive(Debug)]
struct DownTrack {
    /// The caller's name for it, returned with each packet.
    key: DownTrackKey,
    /// Gives the subscriber its own continuous SSRC / payload type / numbering.
    rewriter: RtpRewriter,
    /// Paused, waiting for a keyframe or forwarding.
    state: State,
    /// When it was last sent a packet: a source switch's timestamp gap is the real time since.
    last_sent: Option<Instant>,
    /// The upstream source changed and the rewriter has not been told yet. It is told when
    /// the next packet goes out, so time spent waiting for a keyframe counts in the gap.
    switch_pending: bool,
}

impl DownTrack {
    fn new(key: DownTrackKey, rewriter: RtpRewriter, state: State) -> Self {
        DownTrack {
            key,
            rewriter,
            state,
            last_sent: None,
            switch_pending: false,
        }
    }

    fn forward(
        &mut self,
        packet: &Packet,
        keyframe: bool,
        now: Instant,
        kind: MediaKind,
    ) -> Outcome {
        let starting = match self.state {
            State::Paused => return Outcome::Skipped,
            State::WaitingKeyframe if !keyframe => return Outcome::Waiting,
            State::WaitingKeyframe => true,
            State::Forwarding { .. } => false,
        };
        if !starting && self.is_before_keyframe(&packet.header) {
            return Outcome::Skipped;
        }
        self.apply_switch(now, kind);
        let mut copy = packet.clone();
        if !self.rewriter.rewrite(&mut copy.header) {
            return if starting {
                Outcome::Waiting
            } else {
                Outcome::Skipped
            };
        }
        self.note_forwarded(now, &packet.header, starting);
        Outcome::Sent(copy)
    }

    fn apply_switch(&mut self, now: Instant, kind: MediaKind) {
        if !std::mem::take(&mut self.switch_pending) {
            return;
        }
        let elapsed = now.saturating_duration_since(self.last_sent.unwrap_or(now));
        self.rewriter.switch_source(ts_gap(kind, elapsed));
    }

    /// A late packet from a frame before the keyframe this down-track started at.
    fn is_before_keyframe(&self, header: &Header) -> bool {
        let State::Forwarding {
            keyframe: Some((seq, ts)),
        } = self.state
        else {
            return false;
        };
        seq_delta(header.sequence_number, seq) < 0 && header.timestamp != ts
    }

    /// Records a packet sent: the start of forwarding, or progress that makes the keyframe
    /// start too old to matter.
    fn note_forwarded(&mut self, now: Instant, header: &Header, starting: bool) {
        self.last_sent = Some(now);
        let seq = header.sequence_number;
        if starting {
            self.state = State::Forwarding {
                keyframe: Some((seq, header.timestamp)),
            };
        } else if let State::Forwarding {
            keyframe: Some((start, _)),
        } = self.state
        {
            if seq_delta(seq, start) > i32::from(REORDER_WINDOW) {
                self.state = State::Forwarding { keyframe: None };
            }
        }
    }
}

/// How a packet relates to the upstream source.
enum Arrival {
    /// From the current source.
    Current,
    /// From a new source.
    Changed,
    /// A late packet of the source that was replaced.
    Straggler,
}

/// The publisher's current source, to notice when it changes.
#[derive(Clone, Copy, Debug)]
struct Upstream {
    /// SSRC of the current source.
    ssrc: u32,
    /// Its highest sequence number, so a replaced source's late packets are recognised.
    highest: u16,
    /// The source it replaced.
    retired: Option<Retired>,
}

impl Upstream {
    fn first(header: &Header) -> Self {
        Upstream {
            ssrc: header.ssrc,
            highest: header.sequence_number,
            retired: None,
        }
    }

    fn observe(&mut self, header: &Header) -> Arrival {
        let seq = header.sequence_number;
        if header.ssrc == self.ssrc {
            if seq_delta(seq, self.highest) > 0 {
                self.highest = seq;
            }
            return Arrival::Current;
        }
        if self
            .retired
            .is_some_and(|r| r.is_straggler(header.ssrc, seq))
        {
            return Arrival::Straggler;
        }
        let retired = Retired {
            ssrc: self.ssrc,
            highest: self.highest,
        };
        *self = Upstream {
            retired: Some(retired),
            ..Upstream::first(header)
        };
        Arrival::Changed
    }
}

/// Forwards one published track to its down-tracks. See the module documentation.
#[derive(Debug)]
pub struct Forwarder {
    /// Kind, codec and keyframe-request interval of the track.
    cfg: ForwarderConfig,
    /// The down-tracks, in the order they were added (which is the output order).
    down_tracks: Vec<DownTrack>,
    /// The publisher's current source; None before the first packet.
    upstream: Option<Upstream>,
    /// Keeps keyframe requests towards the publisher spaced out.
    throttle: KeyframeThrottle,
    /// The latest instant passed in, for inputs that come without one (resume).
    clock: Option<Instant>,
    /// Counters.
    stats: ForwarderStats,
}

impl Forwarder {
    /// A forwarder with no down-tracks.
    pub fn new(cfg: ForwarderConfig) -> Self {
        Forwarder {
            cfg,
            down_tracks: Vec::new(),
            upstream: None,
            throttle: KeyframeThrottle::new(cfg.keyframe_interval),
            clock: None,
            stats: ForwarderStats::default(),
        }
    }

    /// A subscriber's down-track, with its negotiated ssrc and payload type. For video the
    /// down-track waits for a keyframe before getting anything (so its decoder can start), and
    /// a keyframe request goes upstream (throttled). An existing key is replaced.
    pub fn add_down_track(&mut self, now: Instant, key: DownTrackKey, ssrc: u32, payload_type: u8) {
        self.note_time(now);
        self.remove_down_track(key);
        let rewriter = RtpRewriter::new(ssrc, payload_type);
        self.down_tracks
            .push(DownTrack::new(key, rewriter, self.running_state()));
        if self.cfg.kind == MediaKind::Video {
            self.throttle.handle_request(now);
        }
    }

    /// Removes a down-track; false if there was none with this key.
    pub fn remove_down_track(&mut self, key: DownTrackKey) -> bool {
        let Some(index) = self.down_tracks.iter().position(|dt| dt.key == key) else {
            return false;
        };
        self.down_tracks.remove(index);
        true
    }

    /// Paused: the down-track gets nothing. On resume its numbering continues without a hole;
    /// video waits for a keyframe again and one is requested.
    pub fn set_paused(&mut self, key: DownTrackKey, paused: bool) {
        let running = self.running_state();
        let Some(dt) = self.down_tracks.iter_mut().find(|dt| dt.key == key) else {
            return;
        };
        match (paused, dt.state == State::Paused) {
            (true, false) => dt.state = State::Paused,
            (false, true) => {
                dt.rewriter.continue_sequence();
                dt.state = running;
                self.request_on_resume();
            }
            _ => {}
        }
    }

    /// Number of down-tracks, paused or not.
    pub fn down_track_count(&self) -> usize {
        self.down_tracks.len()
    }

    /// The hot path: one packet from the publisher. Pushes (key, rewritten packet) for every
    /// down-track that should get it into `out`, which the caller clears.
    pub fn handle_rtp(
        &mut self,
        now: Instant,
        packet: &Packet,
        out: &mut Vec<(DownTrackKey, Packet)>,
    ) {
        self.note_time(now);
        self.stats.packets_in += 1;
        self.stats.bytes_in += packet.payload.len() as u64;
        match self.observe_upstream(&packet.header) {
            Arrival::Straggler => return,
            Arrival::Changed => self.handle_source_change(),
            Arrival::Current => {}
        }
        let keyframe = self.detect_keyframe(now, &packet.payload);
        if self.fan_out(now, packet, keyframe, out) {
            self.keep_requesting(now);
        }
    }

    /// A subscriber asked for a keyframe (PLI/FIR). Ignored for audio, unknown and paused
    /// down-tracks.
    pub fn handle_keyframe_request(&mut self, now: Instant, from: DownTrackKey) {
        self.note_time(now);
        let active = self
            .down_tracks
            .iter()
            .any(|dt| dt.key == from && dt.state != State::Paused);
        if active && self.cfg.kind == MediaKind::Video {
            self.throttle.handle_request(now);
        }
    }

    /// Whether to send a PLI upstream now.
    pub fn poll_keyframe_request(&mut self, now: Instant) -> bool {
        self.note_time(now);
        self.keep_requesting(now);
        if !self.throttle.poll_request(now) {
            return false;
        }
        self.stats.keyframe_requests_sent = self.throttle.sent();
        self.keep_requesting(now);
        true
    }

    /// When to call [`Forwarder::poll_keyframe_request`] next, if a request is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.throttle.poll_timeout()
    }

    /// The counters.
    pub fn stats(&self) -> &ForwarderStats {
        &self.stats
    }

    /// Whether down-tracks must start at a keyframe.
    fn waits_for_keyframes(&self) -> bool {
        self.cfg.kind == MediaKind::Video && self.cfg.codec != VideoCodec::Other
    }

    /// The state of a down-track that is not paused and has not started yet.
    fn running_state(&self) -> State {
        if self.waits_for_keyframes() {
            State::WaitingKeyframe
        } else {
            State::Forwarding { keyframe: None }
        }
    }

    fn note_time(&mut self, now: Instant) {
        self.clock = Some(self.clock.map_or(now, |clock| clock.max(now)));
    }

    fn observe_upstream(&mut self, header: &Header) -> Arrival {
        match &mut self.upstream {
            Some(upstream) => upstream.observe(header),
            None => {
                self.upstream = Some(Upstream::first(header));
                Arrival::Current
            }
        }
    }

    /// The publisher's source changed: every down-track continues its numbering, and video
    /// down-tracks wait for the new source's keyframe.
    fn handle_source_change(&mut self) {
        let wait = self.waits_for_keyframes();
        for dt in &mut self.down_tracks {
            dt.switch_pending = true;
            if wait && matches!(dt.state, State::Forwarding { .. }) {
                dt.state = State::WaitingKeyframe;
            }
        }
    }

    fn detect_keyframe(&mut self, now: Instant, payload: &[u8]) -> bool {
        if !self.waits_for_keyframes() || !codec::is_keyframe(self.cfg.codec, payload) {
            return false;
        }
        self.stats.keyframes_in += 1;
        self.throttle.handle_keyframe(now);
        true
    }

    /// Hands the packet to every down-track; true if any is still waiting for a keyframe.
    fn fan_out(
        &mut self,
        now: Instant,
        packet: &Packet,
        keyframe: bool,
        out: &mut Vec<(DownTrackKey, Packet)>,
    ) -> bool {
        let (mut waiting, kind) = (false, self.cfg.kind);
        for dt in &mut self.down_tracks {
            match dt.forward(packet, keyframe, now, kind) {
                Outcome::Sent(copy) => {
                    self.stats.packets_out += 1;
                    self.stats.bytes_out += copy.payload.len() as u64;
                    out.push((dt.key, copy));
                }
                Outcome::Waiting => {
                    self.stats.dropped_waiting_keyframe += 1;
                    waiting = true;
                }
                Outcome::Skipped => {}
            }
        }
        waiting
    }

    /// Keeps a request pending while any down-track waits for a keyframe.
    fn keep_requesting(&mut self, now: Instant) {
        let waiting = self
            .down_tracks
            .iter()
            .any(|dt| dt.state == State::WaitingKeyframe);
        if waiting && !self.throttle.is_pending() {
            self.throttle.handle_request(now);
        }
    }

    /// A resumed video down-track needs a keyframe; resume carries no instant, so the latest
    /// one seen stands in (before any, the next timed input files the request).
    fn request_on_resume(&mut self) {
        if self.cfg.kind != MediaKind::Video {
            return;
        }
        if let Some(now) = self.clock {
            self.throttle.handle_request(now);
        }
    }
}

/// The timestamp gap matching real time between two sources: 90 kHz for video, 48 kHz
/// (Opus) for audio; at least one tick.
fn ts_gap(kind: MediaKind, elapsed: Duration) -> u32 {
    let rate: u128 = match kind {
        MediaKind::Audio => 48_000,
        MediaKind::Video => 90_000,
    };
    let ticks = elapsed.as_micros().saturating_mul(rate) / 1_000_000;
    u32::try_from(ticks)
        .unwrap_or(MAX_TS_GAP)
        .clamp(1, MAX_TS_GAP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const UP_SSRC: u32 = 0x5eed;
    /// VP8, no extension, S=1 PID=0, keyframe header.
    const VP8_KEY: &[u8] = &[0x10, 0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a];
    /// VP8, S=1 PID=0, interframe header.
    const VP8_DELTA: &[u8] = &[0x10, 0x51, 0x02, 0x00];
    /// VP8, S=0: a later packet of a frame.
    const VP8_MIDDLE: &[u8] = &[0x00, 0x77, 0x66];
    const OPUS: &[u8] = &[0xfc, 0xff, 0xfe];

    type Out = Vec<(DownTrackKey, Packet)>;

    fn packet(ssrc: u32, seq: u16, ts: u32, payload: &[u8]) -> Packet {
        let header = Header {
            version: 2,
            payload_type: 96,
            sequence_number: seq,
            timestamp: ts,
            ssrc,
            ..Header::default()
        };
        Packet {
            header,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn at(base: Instant, millis: u64) -> Instant {
        base + Duration::from_millis(millis)
    }

    fn send(fwd: &mut Forwarder, now: Instant, packet: &Packet) -> Out {
        let mut out = Vec::new();
        fwd.handle_rtp(now, packet, &mut out);
        out
    }

    fn for_key(out: &Out, key: u64) -> Vec<&Header> {
        out.iter()
            .filter(|(k, _)| *k == DownTrackKey(key))
            .map(|(_, p)| &p.header)
            .collect()
    }

    /// Checks a down-track's output has consecutive sequence numbers and returns them.
    fn assert_consecutive(headers: &[&Header]) -> Vec<u16> {
        let seqs: Vec<u16> = headers.iter().map(|h| h.sequence_number).collect();
        for pair in seqs.windows(2) {
            assert_eq!(pair[1], pair[0].wrapping_add(1), "seqs {seqs:?}");
        }
        seqs
    }

    /// A video stream: frames of three packets at 90 kHz, keyframe on the given frames.
    struct Publisher {
        ssrc: u32,
        seq: u16,
        ts: u32,
    }

    impl Publisher {
        fn new(ssrc: u32, seq: u16) -> Self {
            Publisher {
                ssrc,
                seq,
                ts: 1_000,
            }
        }

        fn frame(&mut self, key: bool) -> Vec<Packet> {
            let first = if key { VP8_KEY } else { VP8_DELTA };
            let packets = [first, VP8_MIDDLE, VP8_MIDDLE]
                .iter()
                .enumerate()
                .map(|(i, payload)| {
                    packet(self.ssrc, self.seq.wrapping_add(i as u16), self.ts, payload)
                })
                .collect();
            self.seq = self.seq.wrapping_add(3);
            self.ts = self.ts.wrapping_add(3_000);
            packets
        }
    }

    fn send_all(fwd: &mut Forwarder, now: Instant, packets: &[Packet]) -> Out {
        packets.iter().flat_map(|p| send(fwd, now, p)).collect()
    }

    #[test]
    fn audio_fans_out_with_each_subscribers_ssrc_and_payload_type() {
        let base = Instant::now();
        let mut fwd = Forwarder::new(ForwarderConfig::audio());
        for key in 0..3 {
            fwd.add_down_track(base, DownTrackKey(key), 100 + key as u32, 111 + key as u8);
        }
        let mut out = Vec::new();
        for i in 0..50_u16 {
            let p = packet(
                UP_SSRC,
                65_500_u16.wrapping_add(i),
                960 * u32::from(i),
                OPUS,
            );
            fwd.handle_rtp(at(base, 20 * u64::from(i)), &p, &mut out);
        }
        assert_eq!(out.len(), 150);
        for key in 0..3 {
            let headers = for_key(&out, key);
            assert_eq!(headers.len(), 50);
            assert!(headers.iter().all(|h| h.ssrc == 100 + key as u32));
            assert!(headers.iter().all(|h| h.payload_type == 111 + key as u8));
            assert_consecutive(&headers);
            for pair in headers.windows(2) {
                assert_eq!(pair[1].timestamp.wrapping_sub(pair[0].timestamp), 960);
            }
        }
        assert!(out.iter().all(|(_, p)| p.payload == OPUS));
        let stats = fwd.stats();
        assert_eq!((stats.packets_in, stats.packets_out), (50, 150));
        assert_eq!((stats.bytes_in, stats.bytes_out), (150, 450));
    }

    #[test]
    fn audio_never_requests_keyframes() {
        let base = Instant::now();
        let mut fwd = Forwarder::new(ForwarderConfig::audio());
        fwd.add_down_track(base, DownTrackKey(1), 1, 111);
        fwd.handle_keyframe_request(base, DownTrackKey(1));
        assert!(!fwd.poll_keyframe_request(base));
        assert_eq!(fwd.poll_timeout(), None);
    }

    #[test]
    fn video_down_track_added_mid_stream_starts_at_a_keyframe() {
        let base = Instant::now();
        let mut fwd = Forwarder::new(ForwarderConfig::video(VideoCodec::Vp8));
        let mut publisher = Publisher::new(UP_SSRC, 65_000);
        assert!(send_all(&mut fwd, base, &publisher.frame(true)).is_empty());
        fwd.add_down_track(base, DownTrackKey(7), 0x77, 96);
        for _ in 0..4 {
            assert!(send_all(&mut fwd, base, &publisher.frame(false)).is_empty());
        }
        assert_eq!(fwd.stats().dropped_waiting_keyframe, 12);
        let mut out = send_all(&mut fwd, base, &publisher.frame(true));
        for _ in 0..300 {
            out.extend(send_all(&mut fwd, base, &publisher.frame(false)));
        }
        let headers = for_key(&out, 7);
        assert_eq!(headers.len(), 3 * 301);
        assert_consecutive(&headers);
        assert_eq!(out[0].1.payload, VP8_KEY);
        assert_eq!(
            headers[3].timestamp.wrapping_sub(headers[0].timestamp),
            3_000
        );
        assert_eq!(fwd.stats().keyframes_in, 2);
    }

    #[test]
    fn keyframe_requests_on_add_are_throttled_and_repeated_while_waiting() {
        let base = Instant::now();
        let mut fwd = Forwarder::new(ForwarderConfig::video(VideoCodec::Vp8));
        let mut publisher = Publisher::new(UP_SSRC, 1);
        fwd.add_down_track(base, DownTrackKey(1), 1, 96);
        fwd.add_down_track(at(base, 10), DownTrackKey(2), 2, 96);
        assert!(fwd.poll_keyframe_request(at(base, 10)));
        assert!(!fwd.poll_keyframe_request(at(base, 100)));
        send_all(&mut fwd, at(base, 200), &publisher.frame(false));
        assert_eq!(fwd.poll_timeout(), Some(at(base, 510)));
        assert!(!fwd.poll_keyframe_request(at(base, 509)));
        assert!(fwd.poll_keyframe_request(at(base, 510)));
        send_all(&mut fwd, at(base, 600), &publisher.frame(true));
        assert_eq!(fwd.poll_timeout(), None);
        assert!(!fwd.poll_keyframe_request(at(base, 2_000)));
        assert_eq!(fwd.stats().keyframe_requests_sent, 2);
    }

    #[test]
    fn subscriber_requests_are_throttled() {
        let base = Instant::now();
        let mut fwd = Forwarder::new(ForwarderConfig::video(VideoCodec::Vp8));
        let mut publisher = Publisher::new(UP_SSRC, 1);
        fwd.add_down_track(base, DownTrackKey(1), 1, 96);
        assert!(fwd.poll_keyframe_request(base));
        send_all(&mut fwd, at(base, 50), &publisher.frame(true));
        for t in (100..1_000).step_by(10) {
            fwd.handle_keyframe_request(at(base, t), DownTrackKey(1));
            fwd.handle_keyframe_request(at(base, t), DownTrackKey(99));
            fwd.poll_keyframe_request(at(base, t));
        }
        assert_eq!(fwd.stats().keyframe_requests_sent, 2);
        assert_eq!(fwd.poll_timeout(), Some(at(base, 1_000)));
    }

    #[test]
    fn unknown_video_codec_does_not_wait() {
        let base = Instant::now();
        let mut fwd = Forwarder::new(ForwarderConfig::video(VideoCodec::Other));
        let mut publisher = Publisher::new(UP_SSRC, 1);
        fwd.add_down_track(base, DownTrackKey(1), 1, 98);
        assert!(fwd.poll_keyframe_request(base));
        let out = send_all(&mut fwd, base, &publisher.frame(false));
        assert_eq!(out.len(), 3);
        assert_eq!(fwd.poll_timeout(), None);
    }

    #[test]
    fn pause_and_resume_audio_continues_without_a_hole() {
        let base = Instant::now();
        let mut fwd = Forwarder::new(ForwarderConfig::audio());
        fwd.add_down_track(base, DownTrackKey(1), 1, 111);
        fwd.add_down_track(base, DownTrackKey(2), 2, 111);
        let mut out = Vec::new();
        for i in 0..30_u16 {
            fwd.set_paused(DownTrackKey(1), (10..20).contains(&i));
            let p = packet(UP_SSRC, i, 960 * u32::from(i), OPUS);
            fwd.handle_rtp(base, &p, &mut out);
        }
        let paused = for_key(&out, 1);
        assert_eq!(paused.len(), 20);
        assert_consecutive(&paused);
        assert_eq!(
            paused[10].timestamp.wrapping_sub(paused[9].timestamp),
            960 * 11
        );
        assert_eq!(for_key(&out, 2).len(), 30);
        assert!(!fwd.poll_keyframe_request(base));
    }

    #[test]
    fn resumed_video_waits_for_a_keyframe_and_requests_one() {
        let base = Instant::now();
        let mut fwd = Forwarder::new(ForwarderConfig::video(VideoCodec::Vp8));
        let mut publisher = Publisher::new(UP_SSRC, 500);
        fwd.add_down_track(base, DownTrackKey(1), 1, 96);
        assert!(fwd.poll_keyframe_request(base));
        let mut out = send_all(&mut fwd, base, &publisher.frame(true));
        fwd.set_paused(DownTrackKey(1), true);
        fwd.set_paused(DownTrackKey(1), true);
        assert!(send_all(&mut fwd, at(base, 600), &publisher.frame(false)).is_empty());
        assert_eq!(fwd.stats().dropped_waiting_keyframe, 0);
        fwd.set_paused(DownTrackKey(1), false);
        assert!(fwd.poll_keyframe_request(at(base, 600)));
        assert!(send_all(&mut fwd, at(base, 700), &publisher.frame(false)).is_empty());
        assert_eq!(fwd.stats().dropped_waiting_keyframe, 3);
        out.extend(send_all(&mut fwd, at(base, 800), &publisher.frame(true)));
        let headers = for_key(&out, 1);
        assert_eq!(headers.len(), 6);
        assert_consecutive(&headers);
        assert_eq!(
            headers[3].timestamp.wrapping_sub(headers[0].timestamp),
            9_000
        );
    }

    #[test]
    fn removed_down_tracks_get_nothing() {
        let base = Instant::now();
        let mut fwd = Forwarder::new(ForwarderConfig::audio());
        fwd.add_down_track(base, DownTrackKey(1), 1, 111);
        fwd.add_down_track(base, DownTrackKey(2), 2, 111);
        fwd.add_down_track(base, DownTrackKey(2), 3, 111);
        assert_eq!(fwd.down_track_count(), 2);
        assert!(fwd.remove_down_track(DownTrackKey(1)));
        assert!(!fwd.remove_down_track(DownTrackKey(1)));
        assert_eq!(fwd.down_track_count(), 1);
        let out = send(&mut fwd, base, &packet(UP_SSRC, 1, 1, OPUS));
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].0, out[0].1.header.ssrc), (DownTrackKey(2), 3));
    }

    #[test]
    fn a_thousand_packets_to_ten_down_tracks() {
        let base = Instant::now();
        let mut fwd = Forwarder::new(ForwarderConfig::audio());
        for key in 0..10 {
            fwd.add_down_track(base, DownTrackKey(key), 1_000 + key as u32, 111);
        }
        let mut out = Vec::new();
        for i in 0..1_000_u16 {
            let p = packet(
                UP_SSRC,
                64_000_u16.wrapping_add(i),
                960 * u32::from(i),
                OPUS,
            );
            fwd.handle_rtp(at(base, 20 * u64::from(i)), &p, &mut out);
        }
        assert_eq!(out.len(), 10_000);
        for key in 0..10 {
            let headers = for_key(&out, key);
            assert_eq!(headers.len(), 1_000);
            assert!(headers.iter().all(|h| h.ssrc == 1_000 + key as u32));
            assert_consecutive(&headers);
        }
        assert_eq!(fwd.stats().packets_out, 10_000);
    }

    #[test]
    fn a_new_upstream_source_needs_a_keyframe_and_keeps_numbering() {
        let base = Instant::now();
        let mut fwd = Forwarder::new(ForwarderConfig::video(VideoCodec::Vp8));
        let mut old = Publisher::new(UP_SSRC, 100);
        let mut new = Publisher::new(0xbeef, 40_000);
        fwd.add_down_track(base, DownTrackKey(1), 1, 96);
        assert!(fwd.poll_keyframe_request(base));
        let mut out = send_all(&mut fwd, base, &old.frame(true));
        assert!(send_all(&mut fwd, at(base, 1_000), &new.frame(false)).is_empty());
        assert!(fwd.poll_keyframe_request(at(base, 1_000)));
        let late_old = send(&mut fwd, at(base, 1_010), &old.frame(false)[0]);
        assert!(late_old.is_empty());
        out.extend(send_all(&mut fwd, at(base, 1_100), &new.frame(true)));
        let headers = for_key(&out, 1);
        assert_eq!(headers.len(), 6);
        assert_consecutive(&headers);
        assert_eq!(
            headers[3].timestamp.wrapping_sub(headers[0].timestamp),
            99_000
        );
    }

    #[test]
    fn late_packets_of_the_starting_keyframe_are_forwarded() {
        let base = Instant::now();
        let mut fwd = Forwarder::new(ForwarderConfig::video(VideoCodec::H264));
        fwd.add_down_track(base, DownTrackKey(1), 1, 102);
        let older_frame = packet(UP_SSRC, 9, 3_000, &[0x41, 0x9a]);
        let sps = packet(UP_SSRC, 10, 6_000, &[0x67, 0x42]);
        let start = packet(UP_SSRC, 11, 6_000, &[0x7c, 0x85, 0x88]);
        let end = packet(UP_SSRC, 12, 6_000, &[0x7c, 0x45, 0x11]);
        let mut out = send(&mut fwd, base, &start);
        out.extend(send(&mut fwd, base, &sps));
        out.extend(send(&mut fwd, base, &older_frame));
        out.extend(send(&mut fwd, base, &end));
        let seqs: Vec<u16> = for_key(&out, 1).iter().map(|h| h.sequence_number).collect();
        assert_eq!(seqs.len(), 3);
        assert_eq!(seqs[1], seqs[0].wrapping_sub(1));
        assert_eq!(seqs[2], seqs[0].wrapping_add(1));
    }

    #[test]
    fn garbage_never_panics() {
        let base = Instant::now();
        let mut rng = StdRng::seed_from_u64(0x5eed);
        for cfg in [
            ForwarderConfig::video(VideoCodec::Vp8),
            ForwarderConfig::video(VideoCodec::H264),
            ForwarderConfig::video(VideoCodec::Other),
            ForwarderConfig::audio(),
        ] {
            let mut fwd = Forwarder::new(cfg);
            let mut out = Vec::new();
            for i in 0..5_000_u64 {
                let now = at(base, i);
                let key = DownTrackKey(rng.gen_range(0..4));
                match rng.gen_range(0..100) {
                    0 => fwd.add_down_track(now, key, rng.gen(), rng.gen()),
                    1 => {
                        fwd.remove_down_track(key);
                    }
                    2 => fwd.set_paused(key, rng.gen()),
                    3 => fwd.handle_keyframe_request(now, key),
                    _ => {
                        let mut payload = vec![0_u8; rng.gen_range(0..40)];
                        rng.fill(&mut payload[..]);
                        let header = Header {
                            ssrc: rng.gen_range(0..3),
                            sequence_number: rng.gen(),
                            timestamp: rng.gen(),
                            payload_type: rng.gen(),
                            ..Header::default()
                        };
                        let p = Packet {
                            header,
                            payload: Bytes::from(payload),
                        };
                        fwd.handle_rtp(now, &p, &mut out);
                    }
                }
                fwd.poll_keyframe_request(now);
                let _ = fwd.poll_timeout();
                out.clear();
            }
            let stats = fwd.stats();
            assert!(stats.packets_in > 0 && stats.packets_out <= 4 * stats.packets_in);
        }
    }

    #[test]
    fn ts_gap_follows_real_time() {
        assert_eq!(ts_gap(MediaKind::Video, Duration::from_millis(100)), 9_000);
        assert_eq!(ts_gap(MediaKind::Audio, Duration::from_millis(20)), 960);
        assert_eq!(ts_gap(MediaKind::Audio, Duration::ZERO), 1);
        assert_eq!(ts_gap(MediaKind::Video, Duration::MAX), MAX_TS_GAP);
    }
}
