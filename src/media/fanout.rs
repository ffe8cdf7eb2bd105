//! What an up-track fans its packets out with: a [`Forwarder`] for a track sent as one
//! stream, or a [`SimulcastForwarder`] for a track sent in layers, whose SSRCs are
//! learnt from the publisher's connection as each layer opens.
//!
//! Owns: the forwarder, and for simulcast the layers' rids (lowest first) and which
//! SSRC carries which layer.

use std::collections::HashMap;
use std::time::Instant;

use rtc::rtp::packet::Packet;

use super::allocator::Size;
use super::forwarder::{DownTrackKey, Forwarder, ForwarderConfig, ForwarderStats};
use super::simulcast::SimulcastForwarder;

/// The layers a publisher said it sends, lowest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimulcastLayers {
    pub rids: Vec<String>,
    pub sizes: Vec<Size>,
}

/// Where a keyframe request goes upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyframeFrom {
    /// The track's one stream.
    Track,
    /// The stream of one simulcast layer.
    Ssrc(u32),
}

/// A forwarder of either kind. See the module documentation.
#[derive(Debug)]
pub enum Fanout {
    Single(Forwarder),
    Simulcast {
        forwarder: SimulcastForwarder,
        rids: Vec<String>,
        /// SSRC to layer, from the publisher's streams as they open.
        layers: HashMap<u32, usize>,
    },
}

impl Fanout {
    pub fn new(config: ForwarderConfig, simulcast: Option<SimulcastLayers>) -> Fanout {
        match simulcast {
            None => Fanout::Single(Forwarder::new(config)),
            Some(layers) => Fanout::Simulcast {
                forwarder: SimulcastForwarder::new(
                    layers.sizes,
                    config.codec,
                    config.keyframe_interval,
                ),
                rids: layers.rids,
                layers: HashMap::new(),
            },
        }
    }

    /// A stream of the publisher's opened: of a simulcast track, its rid names its layer.
    /// A rid the publisher did not announce is ignored, and its packets dropped.
    pub fn stream_opened(&mut self, ssrc: u32, rid: Option<&str>) {
        if let Fanout::Simulcast { rids, layers, .. } = self {
            if let Some(layer) = rid.and_then(|rid| rids.iter().position(|r| r == rid)) {
                layers.retain(|_, l| *l != layer);
                layers.insert(ssrc, layer);
            }
        }
    }

    /// One packet from the publisher; see [`Forwarder::handle_rtp`]. Returns the
    /// layer it belongs to (0 for a track sent as one stream), None for a stream that
    /// is no layer.
    pub fn handle_rtp(
        &mut self,
        now: Instant,
        packet: &Packet,
        out: &mut Vec<(DownTrackKey, Packet)>,
    ) -> Option<usize> {
        match self {
            Fanout::Single(forwarder) => {
                forwarder.handle_rtp(now, packet, out);
                Some(0)
            }
            Fanout::Simulcast {
                forwarder, layers, ..
            } => {
                // A stream that never opened is no layer: dropped and counted.
                let layer = layers.get(&packet.header.ssrc).copied();
                forwarder.handle_rtp(now, packet, layer.unwrap_or(usize::MAX), out);
                layer
            }
        }
    }

    /// A packet no down-track gets; see [`Forwarder::withhold`].
    pub fn withhold(&mut self, now: Instant, packet: &Packet) {
        if let Fanout::Single(forwarder) = self {
            forwarder.withhold(now, packet);
        }
    }

    pub fn add_down_track(&mut self, now: Instant, key: DownTrackKey, ssrc: u32, payload_type: u8) {
        match self {
            Fanout::Single(f) => f.add_down_track(now, key, ssrc, payload_type),
            Fanout::Simulcast { forwarder, .. } => {
                forwarder.add_down_track(now, key, ssrc, payload_type)
            }
        }
    }

    pub fn remove_down_track(&mut self, key: DownTrackKey) {
        match self {
            Fanout::Single(f) => {
                f.remove_down_track(key);
            }
            Fanout::Simulcast { forwarder, .. } => {
                forwarder.remove_down_track(key);
            }
        }
    }

    pub fn set_paused(&mut self, key: DownTrackKey, paused: bool) {
        match self {
            Fanout::Single(f) => f.set_paused(key, paused),
            Fanout::Simulcast { forwarder, .. } => forwarder.set_paused(key, paused),
        }
    }

    pub fn is_paused(&self, key: DownTrackKey) -> bool {
        match self {
            Fanout::Single(f) => f.is_paused(key),
            Fanout::Simulcast { forwarder, .. } => forwarder.is_paused(key),
        }
    }

    /// The size a subscriber shows the track at; only a simulcast track cares.
    pub fn set_shown_size(&mut self, now: Instant, key: DownTrackKey, shown: Option<Size>) {
        if let Fanout::Simulcast { forwarder, .. } = self {
            forwarder.set_shown_size(now, key, shown);
        }
    }

    /// The highest layer a subscriber's bandwidth allows; only a simulcast track cares.
    pub fn set_max_layer(&mut self, now: Instant, key: DownTrackKey, cap: Option<usize>) {
        if let Fanout::Simulcast { forwarder, .. } = self {
            forwarder.set_max_layer(now, key, cap);
        }
    }

    pub fn handle_keyframe_request(&mut self, now: Instant, from: DownTrackKey) {
        match self {
            Fanout::Single(f) => f.handle_keyframe_request(now, from),
            Fanout::Simulcast { forwarder, .. } => forwarder.handle_keyframe_request(now, from),
        }
    }

    /// Where to send a PLI now, if anywhere; call again until None.
    pub fn poll_keyframe_request(&mut self, now: Instant) -> Option<KeyframeFrom> {
        match self {
            Fanout::Single(f) => f.poll_keyframe_request(now).then_some(KeyframeFrom::Track),
            Fanout::Simulcast {
                forwarder, layers, ..
            } => loop {
                let layer = forwarder.poll_keyframe_request(now)?;
                // A layer whose stream has not opened yet cannot be asked.
                if let Some((ssrc, _)) = layers.iter().find(|(_, l)| **l == layer) {
                    return Some(KeyframeFrom::Ssrc(*ssrc));
                }
            },
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Fanout::Single(f) => f.poll_timeout(),
            Fanout::Simulcast { forwarder, .. } => forwarder.poll_timeout(),
        }
    }

    pub fn stats(&self) -> &ForwarderStats {
        match self {
            Fanout::Single(f) => f.stats(),
            Fanout::Simulcast { forwarder, .. } => forwarder.stats(),
        }
    }
}
