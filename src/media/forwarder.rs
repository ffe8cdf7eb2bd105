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

/// Source of down-track keys: one counter for the node, because every subscriber of a
/// track shares that track's forwarder and keys must not collide there.
static NEXT_DOWN_TRACK_KEY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl DownTrackKey {
    /// A key no other down-track on this node has.
    pub fn fresh() -> Self {
        Self(NEXT_DOWN_TRACK_KEY.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

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
    /// Packets were withheld from every down-track since the last one forwarded.
    withheld: bool,
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
            withheld: false,
            stats: ForwarderStats::default(),
        }
    }

    /// One packet from the publisher that no down-track gets (audio last-N): counted
    /// in, and the next packet forwarded continues every down-track's numbering
    /// without a hole.
    pub fn withhold(&mut self, now: Instant, packet: &Packet) {
        self.note_time(now);
        self.stats.packets_in += 1;
        self.stats.bytes_in += packet.payload.len() as u64;
        self.withheld = true;
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

    /// Whether the down-track is paused; false for one not here.
    pub fn is_paused(&self, key: DownTrackKey) -> bool {
        let dt = self.down_tracks.iter().find(|dt| dt.key == key);
        dt.is_some_and(|dt| dt.state == State::Paused)
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
        if std::mem::take(&mut self.withheld) {
            for dt in &mut self.down_tracks {
                dt.rewriter.continue_sequence();
            }
        }
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
#[path = "forwarder_tests.rs"]
mod tests;
