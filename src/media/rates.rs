//! What each layer of a published track costs to send: its bitrate, measured by the
//! up-track over windows of [`RATE_WINDOW`] and read by subscribers' allocators.
//!
//! Owns: the bytes counted in the current window per layer ([`RateMeter`], on the
//! up-track task) and the latest smoothed rates ([`LayerRates`], shared). A simulcast
//! track imported over a cascade link has one layer arriving, so its rates are not
//! measured where it arrives but told by its origin ([`LayerRates::replace`]).
//!
//! Invariants:
//! - A rate is published when a window ends, which the first packet after its end
//!   notices: a track that sends nothing keeps its last rates.
//! - Each window's rate is averaged with the previous published one, so a keyframe
//!   does not make a layer look twice as dear for a second; a layer that sent nothing
//!   in a window decays towards zero.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::allocator::MAX_LAYERS;

/// How long bytes are counted before a rate is published.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);

/// What an RTP packet carries besides its payload: the fixed header, and SRTP's tag.
const PACKET_OVERHEAD_BYTES: u64 = 12 + 10;

/// The latest rate of each layer, in bits per second; 0 for one not measured.
#[derive(Debug, Default)]
pub struct LayerRates {
    bps: [AtomicU64; MAX_LAYERS],
}

impl LayerRates {
    /// The rate of `layer`; 0 when it has not been measured or does not exist.
    pub fn get(&self, layer: usize) -> u64 {
        self.bps
            .get(layer)
            .map_or(0, |rate| rate.load(Ordering::Relaxed))
    }

    fn set(&self, layer: usize, bps: u64) {
        self.bps[layer].store(bps, Ordering::Relaxed);
    }

    /// Takes the rates measured elsewhere, lowest layer first: at a cascaded track's
    /// origin. Layers beyond [`MAX_LAYERS`] are ignored, and layers not named keep
    /// their rates.
    pub fn replace(&self, bps: &[u64]) {
        for (layer, rate) in bps.iter().take(MAX_LAYERS).enumerate() {
            self.set(layer, *rate);
        }
    }
}

/// Counts a track's packets per layer and publishes their rates. See the module
/// documentation.
#[derive(Debug)]
pub struct RateMeter {
    window_start: Option<Instant>,
    bytes: [u64; MAX_LAYERS],
    rates: Arc<LayerRates>,
}

impl RateMeter {
    pub fn new(rates: Arc<LayerRates>) -> Self {
        RateMeter {
            window_start: None,
            bytes: [0; MAX_LAYERS],
            rates,
        }
    }

    /// One packet of `layer` with a payload of `payload_bytes`; a layer beyond
    /// [`MAX_LAYERS`] is not counted.
    pub fn record(&mut self, now: Instant, layer: usize, payload_bytes: usize) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= RATE_WINDOW {
            self.publish(elapsed);
            self.window_start = Some(now);
        }
        if let Some(bytes) = self.bytes.get_mut(layer) {
            *bytes += payload_bytes as u64 + PACKET_OVERHEAD_BYTES;
        }
    }

    fn publish(&mut self, elapsed: Duration) {
        let millis = elapsed.as_millis().max(1) as u64;
        for (layer, bytes) in self.bytes.iter_mut().enumerate() {
            let measured = bytes.saturating_mul(8_000) / millis;
            let previous = self.rates.get(layer);
            let smoothed = if previous == 0 {
                measured
            } else {
                (previous + measured) / 2
            };
            self.rates.set(layer, smoothed);
            *bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter() -> (RateMeter, Arc<LayerRates>) {
        let rates = Arc::new(LayerRates::default());
        (RateMeter::new(rates.clone()), rates)
    }

    /// 50 packets a second of `payload` bytes on `layer`, for `seconds`, from `start`.
    fn feed(meter: &mut RateMeter, start: Instant, seconds: u64, layer: usize, payload: usize) {
        for i in 0..seconds * 50 {
            meter.record(start + Duration::from_millis(i * 20), layer, payload);
        }
    }

    #[test]
    fn nothing_is_published_before_a_window_ends() {
        let (mut meter, rates) = meter();
        let start = Instant::now();
        feed(&mut meter, start, 1, 0, 1_000);
        assert_eq!(rates.get(0), 0);
    }

    #[test]
    fn a_steady_layer_is_measured_with_its_headers() {
        let (mut meter, rates) = meter();
        let start = Instant::now();
        feed(&mut meter, start, 3, 1, 978);
        // 50 packets of 1,000 bytes on the wire a second: 400 kbit/s.
        assert_eq!(rates.get(1), 400_000);
        assert_eq!(rates.get(0), 0, "a layer that sent nothing costs nothing");
    }

    #[test]
    fn a_burst_is_averaged_with_the_window_before() {
        let (mut meter, rates) = meter();
        let start = Instant::now();
        feed(&mut meter, start, 2, 0, 978);
        assert_eq!(rates.get(0), 400_000);
        // A second at three times the rate, then the next packet ends its window.
        let burst = start + Duration::from_secs(2);
        feed(&mut meter, burst, 1, 0, 3 * 1_000 - 22);
        meter.record(burst + RATE_WINDOW, 0, 978);
        assert_eq!(rates.get(0), 800_000);
    }

    #[test]
    fn a_layer_that_stops_decays() {
        let (mut meter, rates) = meter();
        let start = Instant::now();
        feed(&mut meter, start, 2, 2, 978);
        feed(&mut meter, start + Duration::from_secs(2), 3, 0, 978);
        assert_eq!(
            rates.get(2),
            400_000 / 4,
            "halved in each of the two windows since"
        );
    }

    #[test]
    fn layers_beyond_the_limit_are_ignored() {
        let (mut meter, rates) = meter();
        let start = Instant::now();
        feed(&mut meter, start, 2, MAX_LAYERS, 978);
        assert!((0..=MAX_LAYERS).all(|layer| rates.get(layer) == 0));
    }
}
