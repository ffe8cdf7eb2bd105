//! Running totals of a load run, for the progress line and the steady-state rates.
//!
//! Every participant task adds to these counters as it joins and as packets arrive;
//! the scenario reads them once a second. They are atomics rather than messages or a
//! lock because every received packet touches them and nobody needs them consistent
//! with one another. The exact figures of the summary come from each participant's
//! own [`super::stats::ReceiveStats`], handed back when it stops.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::stats::Received;

#[derive(Debug, Default)]
pub struct Live {
    joined: AtomicU64,
    failed: AtomicU64,
    /// Participants that have received their first media packet.
    receiving: AtomicU64,
    packets: AtomicU64,
    bytes: AtomicU64,
    /// Packets missing so far; a late arrival takes one back.
    lost: AtomicI64,
}

/// One reading of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub joined: u64,
    pub failed: u64,
    pub receiving: u64,
    pub packets: u64,
    pub bytes: u64,
    pub lost: u64,
}

impl Totals {
    /// Missing packets over packets that should have arrived.
    pub fn loss_ratio(&self) -> f64 {
        let expected = self.packets + self.lost;
        if expected == 0 {
            0.0
        } else {
            self.lost as f64 / expected as f64
        }
    }
}

impl Live {
    pub fn joined(&self) {
        self.joined.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn media_started(&self) {
        self.receiving.fetch_add(1, Ordering::Relaxed);
    }

    pub fn received(&self, bytes: usize, what: Received) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        let change = what.arrival.loss_change();
        if change != 0 {
            self.lost.fetch_add(change, Ordering::Relaxed);
        }
    }

    pub fn totals(&self) -> Totals {
        Totals {
            joined: self.joined.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            receiving: self.receiving.load(Ordering::Relaxed),
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed).max(0) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::stats::Arrival;
    use super::*;
    use crate::signal::protocol::TrackKind;

    #[test]
    fn loss_follows_gaps_and_late_arrivals() {
        let live = Live::default();
        let arrive = |arrival| Received {
            kind: TrackKind::Video,
            arrival,
        };
        live.received(100, arrive(Arrival::Ahead { skipped: 0 }));
        live.received(100, arrive(Arrival::Ahead { skipped: 2 }));
        live.received(100, arrive(Arrival::Late));
        live.joined();
        let totals = live.totals();
        assert_eq!((totals.packets, totals.bytes, totals.lost), (3, 300, 1));
        assert_eq!(totals.loss_ratio(), 0.25);
        assert_eq!(Totals::default().loss_ratio(), 0.0);
    }
}
