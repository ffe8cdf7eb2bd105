//! Recording handles for the tasks that own tracks: gauges that follow a value's lifetime,
//! and the local RTP counters of the hot path.

use std::time::{Duration, Instant};

use prometheus::local::LocalIntCounter;
use prometheus::{IntCounter, IntGauge};

/// One packet in this many carries its arrival instant, to measure the forwarding delay:
/// enough samples for quantiles, without a clock read and histogram update per packet.
pub const DELAY_SAMPLE_EVERY: u64 = 16;

/// Local counts reach the shared families at least this often while packets flow.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Adds one to a gauge while it lives, so a count cannot leak on an early return.
#[derive(Debug)]
pub struct GaugeGuard {
    gauge: IntGauge,
}

impl GaugeGuard {
    pub(super) fn new(gauge: IntGauge) -> Self {
        gauge.inc();
        GaugeGuard { gauge }
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Packets and payload bytes of one stream, counted without synchronisation by the task that
/// owns the stream and added to the shared counters about once a second and when dropped.
///
/// A shared atomic per packet would bounce one cache line between every core forwarding
/// media; this costs a plain add per packet instead.
#[derive(Debug)]
pub struct RtpCounters {
    packets: LocalIntCounter,
    bytes: LocalIntCounter,
    /// When the local counts were last added to the shared ones.
    flushed: Option<Instant>,
}

impl RtpCounters {
    pub(super) fn new(packets: IntCounter, bytes: IntCounter) -> Self {
        RtpCounters {
            packets: packets.local(),
            bytes: bytes.local(),
            flushed: None,
        }
    }

    /// Counts one packet of `payload_bytes` at `now`, flushing if a second has passed.
    pub fn record(&mut self, now: Instant, payload_bytes: usize) {
        self.packets.inc();
        self.bytes.inc_by(payload_bytes as u64);
        let flushed = *self.flushed.get_or_insert(now);
        if now.saturating_duration_since(flushed) >= FLUSH_INTERVAL {
            self.flush(now);
        }
    }

    fn flush(&mut self, now: Instant) {
        self.packets.flush();
        self.bytes.flush();
        self.flushed = Some(now);
    }
}

impl Drop for RtpCounters {
    fn drop(&mut self) {
        self.packets.flush();
        self.bytes.flush();
    }
}
