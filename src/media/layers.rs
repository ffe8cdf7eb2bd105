//! Simulcast layer selection for one subscriber of one video track: of the layers a
//! publisher sends (each its own SSRC, sequence numbers and timestamps), the subscriber
//! receives one, as a single continuous stream.
//!
//! Owns: which layer is being forwarded (*current*), which one the allocator wants
//! (*target*), the keyframe request owed for a switch, and the [`RtpRewriter`] that
//! gives the subscriber its own SSRC, payload type and numbering.
//!
//! Invariants:
//! - Only packets of the current layer are forwarded. The current layer changes to the
//!   target only at a packet that starts a keyframe of the target layer, because the
//!   subscriber's decoder cannot use another layer's delta frames. Until then the current
//!   layer keeps flowing, so a switch never leaves a hole in the picture.
//! - Every switch (including a start and a resume) owes exactly one keyframe request for
//!   its target layer, polled with [`LayerSelector::poll_keyframe_request`]. Setting the
//!   same target again owes nothing.
//! - Output sequence numbers never go backwards, never repeat, and have no hole at a
//!   switch or a pause; losses upstream stay visible as holes the subscriber can NACK.
//!   A late packet of the old layer, or of the new layer from before its keyframe, is
//!   dropped rather than sent with a number already used.
//! - Output timestamps advance across a switch or a pause by the real time that passed
//!   (90 kHz), so the subscriber's jitter buffer sees the right pacing.
//! - A target of None pauses at once.
//!
//! Loop: the caller detects keyframes once per incoming packet (with
//! [`crate::media::codec::is_keyframe`]) and hands each packet, with its layer and that
//! flag, to [`LayerSelector::handle_rtp`] of every subscriber, sending what comes back.
//! The allocator's choices go to [`LayerSelector::set_target`]; after each call, a
//! [`LayerSelector::poll_keyframe_request`] answer goes upstream as a PLI on that
//! layer's SSRC, through the forwarder's throttle.
//!
//! Not handled yet: a target layer whose keyframe never comes (the publisher stopped
//! sending it) is waited for forever, with the current layer still flowing; a real
//! deployment asks again after a while and falls back to a layer that is arriving.
//! Packets of a keyframe that arrive before its first packet are lost to the subscriber,
//! which then asks for another keyframe.

use std::time::{Duration, Instant};

use rtc::rtp::packet::Packet;

use super::allocator::MAX_LAYERS;
use super::rewrite::RtpRewriter;

/// RTP clock rate of video.
const VIDEO_CLOCK_HZ: u128 = 90_000;

/// Longest timestamp jump a switch or pause may introduce: well inside the half of the
/// 32-bit space that receivers read as "later".
const MAX_TS_GAP: u32 = 1 << 30;

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// No publisher sends that many layers.
    #[error("layer {layer} does not exist; at most {MAX_LAYERS} layers are supported")]
    UnknownLayer {
        /// The layer asked for.
        layer: usize,
    },
}

/// Counters of one selector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Packets sent to the subscriber.
    pub forwarded: u64,
    /// Packets of a layer other than the current one, or while paused.
    pub skipped: u64,
    /// Packets of the current layer the rewriter refused: duplicates, too old, from
    /// before a switch.
    pub dropped: u64,
    /// Switches made, the first start included.
    pub switches: u64,
}

/// Chooses one layer of a simulcast track for one subscriber. See the module
/// documentation.
#[derive(Clone, Debug)]
pub struct LayerSelector {
    /// Gives the subscriber one continuous stream whatever layer it comes from.
    rewriter: RtpRewriter,
    /// The layer being forwarded; None before the first keyframe and while paused.
    current: Option<usize>,
    /// The layer wanted; None when paused.
    target: Option<usize>,
    /// A keyframe request owed for this layer, not yet polled.
    owed_request: Option<usize>,
    /// When the last packet went out: a switch's timestamp gap is the time since.
    last_sent: Option<Instant>,
    /// Counters.
    stats: LayerStats,
}

impl LayerSelector {
    /// A paused selector sending with the subscriber's negotiated SSRC and payload type;
    /// the first output sequence number and timestamp are random.
    pub fn new(ssrc: u32, payload_type: u8) -> Self {
        Self::with_rewriter(RtpRewriter::new(ssrc, payload_type))
    }

    /// Like [`LayerSelector::new`], with the first output sequence number and timestamp
    /// given.
    pub fn with_start(ssrc: u32, payload_type: u8, first_seq: u16, first_ts: u32) -> Self {
        let rewriter = RtpRewriter::with_start(ssrc, payload_type, first_seq, first_ts);
        Self::with_rewriter(rewriter)
    }

    fn with_rewriter(rewriter: RtpRewriter) -> Self {
        LayerSelector {
            rewriter,
            current: None,
            target: None,
            owed_request: None,
            last_sent: None,
            stats: LayerStats::default(),
        }
    }

    /// The layer to send from now on (at its next keyframe), or None to pause at once.
    pub fn set_target(&mut self, target: Option<usize>) -> Result<(), LayerError> {
        if let Some(layer) = target.filter(|&layer| layer >= MAX_LAYERS) {
            return Err(LayerError::UnknownLayer { layer });
        }
        if target == self.target {
            return Ok(());
        }
        self.target = target;
        self.owed_request = None;
        match target {
            None => self.current = None,
            Some(_) if target == self.current => {}
            Some(layer) => self.owed_request = Some(layer),
        }
        Ok(())
    }

    /// One packet of `layer`, which starts a keyframe if `keyframe`. Returns the packet to
    /// send to the subscriber, rewritten, or None.
    pub fn handle_rtp(
        &mut self,
        now: Instant,
        layer: usize,
        keyframe: bool,
        packet: &Packet,
    ) -> Option<Packet> {
        if keyframe && self.target == Some(layer) && self.current != Some(layer) {
            self.switch_to(now, layer);
        }
        if self.current != Some(layer) {
            self.stats.skipped += 1;
            return None;
        }
        let mut copy = packet.clone();
        if !self.rewriter.rewrite(&mut copy.header) {
            self.stats.dropped += 1;
            return None;
        }
        self.last_sent = Some(now);
        self.stats.forwarded += 1;
        Some(copy)
    }

    /// The layer whose publisher should be asked for a keyframe, once per switch.
    pub fn poll_keyframe_request(&mut self) -> Option<usize> {
        self.owed_request.take()
    }

    /// The layer being forwarded.
    pub fn current(&self) -> Option<usize> {
        self.current
    }

    /// The layer wanted.
    pub fn target(&self) -> Option<usize> {
        self.target
    }

    /// The counters.
    pub fn stats(&self) -> &LayerStats {
        &self.stats
    }

    fn switch_to(&mut self, now: Instant, layer: usize) {
        // Before anything was sent there is nothing to continue from.
        if let Some(last) = self.last_sent {
            self.rewriter
                .switch_source(ts_gap(now.saturating_duration_since(last)));
        }
        self.current = Some(layer);
        self.owed_request = None;
        self.stats.switches += 1;
    }
}

/// The 90 kHz timestamp gap matching real time; at least one tick.
fn ts_gap(elapsed: Duration) -> u32 {
    let ticks = elapsed.as_micros().saturating_mul(VIDEO_CLOCK_HZ) / 1_000_000;
    u32::try_from(ticks)
        .unwrap_or(MAX_TS_GAP)
        .clamp(1, MAX_TS_GAP)
}

#[cfg(test)]
#[path = "layers_tests.rs"]
mod tests;
