//! The simulcast forwarder: one per published video track that arrives in several
//! layers (rid simulcast), sending each subscriber one layer as one continuous stream.
//!
//! Owns: the layers' sizes, when each layer last arrived, one [`LayerSelector`] per
//! down-track with the size its subscriber shows the track at, and one keyframe-request
//! throttle per layer towards the publisher.
//!
//! Invariants:
//! - A down-track's target is the largest layer that suits the size it is shown at (the
//!   lowest when none fits; the highest before the subscriber said a size), no higher
//!   than its bandwidth allows, or none while paused. Among layers that stopped
//!   arriving (the publisher's encoder dropped them, for bandwidth or CPU), the target
//!   falls back to the highest arriving one below it, else the lowest arriving one
//!   above; while no layer arrives at all, and for [`LAYER_STALE_AFTER`] after the
//!   first packet (encoders start their layers together, so a subscriber does not climb
//!   through them), it stays where the size puts it.
//! - Switches happen at keyframes of the target layer only ([`LayerSelector`]); while a
//!   down-track waits for one, a request for that layer stays pending in the layer's
//!   throttle, so one goes out every throttle interval until the keyframe comes.
//! - Every packet of a known layer is offered to every down-track; packets of an unknown
//!   layer are dropped and counted.
//!
//! Loop: feed [`SimulcastForwarder::handle_rtp`] with each packet and its layer; feed
//! subscribers' PLI/FIR to [`SimulcastForwarder::handle_keyframe_request`]; after each
//! input and at [`SimulcastForwarder::poll_timeout`], send a PLI for the layer
//! [`SimulcastForwarder::poll_keyframe_request`] names, until it names none.

use std::time::{Duration, Instant};

use rtc::rtp::packet::Packet;

use super::allocator::{Size, MAX_LAYERS};
use super::codec::{self, VideoCodec};
use super::forwarder::{DownTrackKey, ForwarderStats};
use super::keyframe::KeyframeThrottle;
use super::layers::LayerSelector;

/// A layer that sent nothing for this long is taken as stopped.
pub const LAYER_STALE_AFTER: Duration = Duration::from_millis(1_500);

/// One subscriber's copy of the track.
#[derive(Debug)]
struct DownTrack {
    key: DownTrackKey,
    selector: LayerSelector,
    /// The size the subscriber shows the track at; None until it says.
    shown: Option<Size>,
    /// The highest layer its bandwidth allows; None for no limit.
    cap: Option<usize>,
    paused: bool,
}

/// Forwards one simulcast track. See the module documentation.
#[derive(Debug)]
pub struct SimulcastForwarder {
    /// The layers' picture sizes, lowest first.
    layers: Vec<Size>,
    codec: VideoCodec,
    down_tracks: Vec<DownTrack>,
    /// When each layer's last packet arrived.
    seen: Vec<Option<Instant>>,
    /// When the first packet of any layer arrived: until [`LAYER_STALE_AFTER`] later,
    /// layers not seen yet are taken as about to arrive (encoders start them together).
    first_packet: Option<Instant>,
    /// That start-up time is over and targets were set without it.
    started: bool,
    /// Keyframe requests towards the publisher, one throttle per layer.
    throttles: Vec<KeyframeThrottle>,
    /// The latest instant passed in.
    clock: Option<Instant>,
    stats: ForwarderStats,
    /// Packets of a layer this track does not have.
    unknown_layer: u64,
}

impl SimulcastForwarder {
    /// A forwarder for `layers` (lowest first, at most [`MAX_LAYERS`]; more are ignored),
    /// with no down-tracks.
    pub fn new(layers: Vec<Size>, codec: VideoCodec, keyframe_interval: Duration) -> Self {
        let mut layers = layers;
        layers.truncate(MAX_LAYERS);
        let count = layers.len();
        SimulcastForwarder {
            layers,
            codec,
            down_tracks: Vec::new(),
            seen: vec![None; count],
            first_packet: None,
            started: false,
            throttles: (0..count)
                .map(|_| KeyframeThrottle::new(keyframe_interval))
                .collect(),
            clock: None,
            stats: ForwarderStats::default(),
            unknown_layer: 0,
        }
    }

    /// A subscriber's down-track, with its negotiated ssrc and payload type; it starts at
    /// a keyframe of its target layer. An existing key is replaced.
    pub fn add_down_track(&mut self, now: Instant, key: DownTrackKey, ssrc: u32, payload_type: u8) {
        self.note_time(now);
        self.remove_down_track(key);
        self.down_tracks.push(DownTrack {
            key,
            selector: LayerSelector::new(ssrc, payload_type),
            shown: None,
            cap: None,
            paused: false,
        });
        self.retarget(now);
    }

    /// Removes a down-track; false if there was none with this key.
    pub fn remove_down_track(&mut self, key: DownTrackKey) -> bool {
        let before = self.down_tracks.len();
        self.down_tracks.retain(|dt| dt.key != key);
        self.down_tracks.len() != before
    }

    /// Paused: the down-track gets nothing. On resume it starts again at a keyframe.
    pub fn set_paused(&mut self, key: DownTrackKey, paused: bool) {
        if let Some(dt) = self.down_tracks.iter_mut().find(|dt| dt.key == key) {
            dt.paused = paused;
        }
        let now = self.clock.unwrap_or_else(Instant::now);
        self.retarget(now);
    }

    /// The size the subscriber shows the track at, or None for "as large as it comes".
    pub fn set_shown_size(&mut self, now: Instant, key: DownTrackKey, shown: Option<Size>) {
        self.note_time(now);
        if let Some(dt) = self.down_tracks.iter_mut().find(|dt| dt.key == key) {
            dt.shown = shown;
        }
        self.retarget(now);
    }

    /// The highest layer the subscriber's bandwidth allows, or None for no limit: the
    /// target is the lower of this and the layer its size calls for.
    pub fn set_max_layer(&mut self, now: Instant, key: DownTrackKey, cap: Option<usize>) {
        self.note_time(now);
        if let Some(dt) = self.down_tracks.iter_mut().find(|dt| dt.key == key) {
            dt.cap = cap;
        }
        self.retarget(now);
    }

    /// Whether the down-track is paused; false for one not here.
    pub fn is_paused(&self, key: DownTrackKey) -> bool {
        let dt = self.down_tracks.iter().find(|dt| dt.key == key);
        dt.is_some_and(|dt| dt.paused)
    }

    /// The layer a down-track is being sent, if it has started.
    pub fn current_layer(&self, key: DownTrackKey) -> Option<usize> {
        let dt = self.down_tracks.iter().find(|dt| dt.key == key)?;
        dt.selector.current()
    }

    /// The hot path: one packet of `layer`. Pushes (key, rewritten packet) for every
    /// down-track that should get it into `out`, which the caller clears.
    pub fn handle_rtp(
        &mut self,
        now: Instant,
        packet: &Packet,
        layer: usize,
        out: &mut Vec<(DownTrackKey, Packet)>,
    ) {
        self.note_time(now);
        let Some(seen) = self.seen.get_mut(layer) else {
            self.unknown_layer += 1;
            return;
        };
        self.stats.packets_in += 1;
        self.stats.bytes_in += packet.payload.len() as u64;
        self.first_packet.get_or_insert(now);
        let was_arriving = seen.is_some_and(|at| arriving(at, now));
        *seen = Some(now);
        if !was_arriving {
            self.retarget(now);
        }
        let keyframe = codec::is_keyframe(self.codec, &packet.payload);
        if keyframe {
            self.stats.keyframes_in += 1;
            self.throttles[layer].handle_keyframe(now);
        }
        for dt in &mut self.down_tracks {
            if let Some(copy) = dt.selector.handle_rtp(now, layer, keyframe, packet) {
                self.stats.packets_out += 1;
                self.stats.bytes_out += copy.payload.len() as u64;
                out.push((dt.key, copy));
            }
        }
    }

    /// A subscriber asked for a keyframe (PLI/FIR): the layer it is sent is asked.
    pub fn handle_keyframe_request(&mut self, now: Instant, from: DownTrackKey) {
        self.note_time(now);
        let layer = self
            .down_tracks
            .iter()
            .find(|dt| dt.key == from && !dt.paused)
            .and_then(|dt| dt.selector.current().or(dt.selector.target()));
        if let Some(throttle) = layer.and_then(|l| self.throttles.get_mut(l)) {
            throttle.handle_request(now);
        }
    }

    /// The layer to send a PLI for now, if any; call again until it says None.
    pub fn poll_keyframe_request(&mut self, now: Instant) -> Option<usize> {
        self.note_time(now);
        let start_over = !self.started && self.first_packet.is_some_and(|t| !arriving(t, now));
        if start_over || self.seen.iter().flatten().any(|at| !arriving(*at, now)) {
            // Layers that never came or went quiet: fall back to ones that arrive.
            self.started |= start_over;
            self.retarget(now);
        }
        self.collect_requests(now);
        let layer = (0..self.throttles.len()).find(|&l| self.throttles[l].poll_request(now))?;
        self.stats.keyframe_requests_sent += 1;
        Some(layer)
    }

    /// When to call [`SimulcastForwarder::poll_keyframe_request`] next: a pending request,
    /// the end of the start-up time, or the moment an arriving layer would count as
    /// stopped.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let requests = self
            .throttles
            .iter()
            .filter_map(KeyframeThrottle::poll_timeout);
        let start = self.first_packet.filter(|_| !self.started);
        let stale = self
            .seen
            .iter()
            .flatten()
            .chain(start.as_ref())
            .map(|at| *at + LAYER_STALE_AFTER)
            .filter(|due| self.clock.is_none_or(|now| *due > now));
        requests.chain(stale).min()
    }

    /// The counters.
    pub fn stats(&self) -> &ForwarderStats {
        &self.stats
    }

    /// Packets dropped because their layer is not one of the track's.
    pub fn unknown_layer_packets(&self) -> u64 {
        self.unknown_layer
    }

    fn note_time(&mut self, now: Instant) {
        self.clock = Some(self.clock.map_or(now, |clock| clock.max(now)));
    }

    /// Gives every down-track the target its size and the arriving layers call for.
    fn retarget(&mut self, now: Instant) {
        let starting = self.first_packet.is_none_or(|first| arriving(first, now));
        let arriving: Vec<bool> = self
            .seen
            .iter()
            .map(|seen| starting || seen.is_some_and(|at| arriving(at, now)))
            .collect();
        for dt in &mut self.down_tracks {
            let target = if dt.paused {
                None
            } else {
                let wanted = wanted(&self.layers, dt.shown).min(dt.cap.unwrap_or(usize::MAX));
                Some(fallback(wanted, &arriving))
            };
            // Targets come from this track's own layers, all below MAX_LAYERS.
            let _ = dt.selector.set_target(target);
        }
        self.collect_requests(now);
    }

    /// Moves the selectors' owed requests, and those of down-tracks still waiting for
    /// their target's keyframe, into the layers' throttles.
    fn collect_requests(&mut self, now: Instant) {
        for dt in &mut self.down_tracks {
            let owed = dt.selector.poll_keyframe_request();
            let waiting = dt
                .selector
                .target()
                .filter(|t| dt.selector.current() != Some(*t));
            for layer in owed.into_iter().chain(waiting) {
                if let Some(throttle) = self.throttles.get_mut(layer) {
                    if !throttle.is_pending() {
                        throttle.handle_request(now);
                    }
                }
            }
        }
    }
}

/// What several subscribers showing one track at `sizes` need together: None (as
/// large as it comes) when one has said no size, else the widest and tallest.
pub fn largest_shown(mut sizes: impl Iterator<Item = Option<Size>>) -> Option<Size> {
    let first = sizes.next()??;
    sizes.try_fold(first, |largest, size| {
        let size = size?;
        Some(Size {
            width: largest.width.max(size.width),
            height: largest.height.max(size.height),
        })
    })
}

/// What a subscriber showing a track at `shown` needs when its downlink takes layers
/// up to one of size `cap`: in each dimension the smaller.
pub fn capped(shown: Option<Size>, cap: Option<Size>) -> Option<Size> {
    match (shown, cap) {
        (Some(shown), Some(cap)) => Some(Size {
            width: shown.width.min(cap.width),
            height: shown.height.min(cap.height),
        }),
        (shown, None) => shown,
        (None, cap) => cap,
    }
}

fn arriving(last: Instant, now: Instant) -> bool {
    now.saturating_duration_since(last) < LAYER_STALE_AFTER
}

/// The layer a subscriber showing the track at `shown` wants: the largest that suits it
/// ([`Size::suits`]), the lowest when none does, the highest when it said no size.
pub fn wanted(layers: &[Size], shown: Option<Size>) -> usize {
    let top = layers.len().saturating_sub(1);
    let Some(shown) = shown else { return top };
    (0..layers.len())
        .rev()
        .find(|&l| layers[l].suits(shown))
        .unwrap_or(0)
}

/// `wanted`, or the nearest layer that arrives: the highest below it, else the lowest
/// above it; `wanted` itself when it arrives or when none does.
fn fallback(wanted: usize, arriving: &[bool]) -> usize {
    if arriving.get(wanted).copied().unwrap_or(false) || !arriving.contains(&true) {
        return wanted;
    }
    let below = (0..wanted).rev().find(|&l| arriving[l]);
    let above = (wanted + 1..arriving.len()).find(|&l| arriving[l]);
    below.or(above).unwrap_or(wanted)
}

#[cfg(test)]
#[path = "simulcast_tests.rs"]
mod tests;
