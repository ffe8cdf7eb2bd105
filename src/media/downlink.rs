//! What a subscriber's own estimates of its downlink (REMB) are worth as a ceiling,
//! and so what its allocator is told.
//!
//! A receiver-side estimate, which is what browsers send as REMB, starts low (Chrome:
//! 300 kbit/s), climbs a few percent a second, and never goes far above what arrives.
//! Taken as a ceiling from the first report it would hold down video the link could
//! carry; and once video is paused, what arrives is small, so the estimate stays small
//! and the video stays paused. What the estimate does say is congestion, when it falls.
//!
//! Owns: the latest estimate, the highest since the last fall, the state below, and how
//! long the estimate must stay calm before a probe.
//!
//! States:
//! - **Climbing** (from the start): no ceiling; the allocator is told nothing.
//! - **Believed** (from a fall of [`FALL_PERCENT`] below the highest estimate since the
//!   last fall): the estimate is the ceiling; the allocator moves down at once.
//! - **Probing** (once a believed estimate has stayed at or above what is sent for the
//!   calm time): the link is taken to have room again. The allocator is told an estimate
//!   with room ([`probe_estimate`]) and raises one layer at a time, each after its own
//!   hold time. The next fall makes the estimate believed again; a fall while probing
//!   doubles the calm time before the next probe (up to [`MAX_CALM`]); probing for
//!   [`SETTLED_AFTER`] without a fall brings it back to [`MIN_CALM`].
//!
//! Loop: feed [`DownlinkFilter::handle_estimate`] each estimate; ask
//! [`DownlinkFilter::estimate`] with what is being sent whenever the allocation is
//! brought up to date.

use std::time::{Duration, Instant};

/// How far below its highest an estimate must fall to signal congestion.
pub const FALL_PERCENT: u64 = 10;

/// The calm time before the first probe, and after a probe that went well.
pub const MIN_CALM: Duration = Duration::from_secs(5);

/// The longest calm time, after probes that kept failing.
pub const MAX_CALM: Duration = Duration::from_secs(60);

/// How long probing must go on without a fall for the calm time to come back to the
/// shortest.
pub const SETTLED_AFTER: Duration = Duration::from_secs(30);

/// Room a probe gives beyond what is being sent.
pub const PROBE_ROOM_BPS: u64 = 1_000_000;

/// An estimate is calm while it is at least this share (percent) of what is sent.
const CALM_PERCENT: u64 = 95;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Climbing,
    Believed {
        /// Since when the estimate has been calm.
        calm_since: Option<Instant>,
    },
    Probing {
        since: Instant,
    },
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct DownlinkFilter {
    latest: Option<u64>,
    highest: u64,
    state: State,
    calm: Duration,
}

impl Default for DownlinkFilter {
    fn default() -> Self {
        DownlinkFilter {
            latest: None,
            highest: 0,
            state: State::Climbing,
            calm: MIN_CALM,
        }
    }
}

/// The estimate a probe tells the allocator while `usage_bps` is being sent and the
/// subscriber estimates `latest_bps`: half as much again plus [`PROBE_ROOM_BPS`], or the
/// subscriber's own when that is higher.
pub fn probe_estimate(latest_bps: u64, usage_bps: u64) -> u64 {
    let room = usage_bps.saturating_add(usage_bps / 2) + PROBE_ROOM_BPS;
    latest_bps.max(room)
}

impl DownlinkFilter {
    /// One estimate from the subscriber, in bits per second.
    pub fn handle_estimate(&mut self, now: Instant, bps: u64) {
        self.latest = Some(bps);
        let fell =
            u128::from(bps) * 100 < u128::from(self.highest) * u128::from(100 - FALL_PERCENT);
        if !fell {
            self.highest = self.highest.max(bps);
            return;
        }
        self.highest = bps;
        if let State::Probing { since } = self.state {
            self.calm = if now.saturating_duration_since(since) >= SETTLED_AFTER {
                MIN_CALM
            } else {
                (self.calm * 2).min(MAX_CALM)
            };
        }
        self.state = State::Believed { calm_since: None };
    }

    /// What the allocator should be told while `usage_bps` is being sent: None for no
    /// ceiling at all.
    pub fn estimate(&mut self, now: Instant, usage_bps: u64) -> Option<u64> {
        let latest = self.latest?;
        match self.state {
            State::Climbing => None,
            State::Believed { calm_since } => {
                let calm =
                    u128::from(latest) * 100 >= u128::from(usage_bps) * u128::from(CALM_PERCENT);
                let calm_since = calm.then(|| calm_since.unwrap_or(now));
                if calm_since.is_some_and(|since| now.saturating_duration_since(since) >= self.calm)
                {
                    self.state = State::Probing { since: now };
                    return Some(probe_estimate(latest, usage_bps));
                }
                self.state = State::Believed { calm_since };
                Some(latest)
            }
            State::Probing { .. } => Some(probe_estimate(latest, usage_bps)),
        }
    }

    /// Where the filter stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// How long a believed estimate must be calm before the next probe.
    pub fn calm_time(&self) -> Duration {
        self.calm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_climbing_estimate_is_no_ceiling() {
        let mut filter = DownlinkFilter::default();
        let start = Instant::now();
        assert_eq!(filter.estimate(start, 0), None, "nothing heard yet");
        for (i, bps) in [300_000, 324_000, 350_000, 340_000].into_iter().enumerate() {
            filter.handle_estimate(start + SECOND * i as u32, bps);
            // A dip of 3 % is no fall.
            assert_eq!(filter.estimate(start + SECOND * i as u32, 2_000_000), None);
        }
        assert_eq!(filter.state(), State::Climbing);
    }

    #[test]
    fn a_fall_is_believed_at_once() {
        let mut filter = DownlinkFilter::default();
        let start = Instant::now();
        filter.handle_estimate(start, 2_000_000);
        filter.handle_estimate(start + SECOND, 1_000_000);
        assert_eq!(filter.estimate(start + SECOND, 1_800_000), Some(1_000_000));
        // Lower again: believed again, without another fall needed.
        filter.handle_estimate(start + 2 * SECOND, 950_000);
        assert_eq!(
            filter.estimate(start + 2 * SECOND, 1_000_000),
            Some(950_000)
        );
    }

    #[test]
    fn a_calm_believed_estimate_turns_into_a_probe_with_room() {
        let mut filter = DownlinkFilter::default();
        let start = Instant::now();
        filter.handle_estimate(start, 2_000_000);
        filter.handle_estimate(start, 500_000);
        // What is sent was cut to fit: the estimate is calm from here.
        assert_eq!(filter.estimate(start, 480_000), Some(500_000));
        let almost = start + MIN_CALM - SECOND;
        assert_eq!(filter.estimate(almost, 480_000), Some(500_000));
        // Below what is sent for a moment: the calm time starts over.
        assert_eq!(filter.estimate(almost, 600_000), Some(500_000));
        assert_eq!(filter.estimate(start + MIN_CALM, 480_000), Some(500_000));
        let probe = start + MIN_CALM + MIN_CALM;
        assert_eq!(
            filter.estimate(probe, 480_000),
            Some(probe_estimate(500_000, 480_000))
        );
        assert!(matches!(filter.state(), State::Probing { .. }));
        assert_eq!(probe_estimate(500_000, 480_000), 1_720_000);
        assert_eq!(probe_estimate(9_000_000, 480_000), 9_000_000);
    }

    #[test]
    fn probes_that_keep_failing_wait_longer_each_time_and_one_that_holds_resets() {
        let mut filter = DownlinkFilter::default();
        let mut now = Instant::now();
        filter.handle_estimate(now, 2_000_000);
        let mut expected = MIN_CALM;
        for _ in 0..6 {
            // A fall, calm for the calm time, a probe, and a fall soon after.
            filter.handle_estimate(now, 500_000);
            assert_eq!(filter.calm_time(), expected);
            filter.estimate(now, 400_000);
            now += filter.calm_time();
            filter.estimate(now, 400_000);
            assert!(matches!(filter.state(), State::Probing { .. }));
            filter.handle_estimate(now, 800_000);
            now += SECOND;
            expected = (expected * 2).min(MAX_CALM);
        }
        assert_eq!(filter.calm_time(), MAX_CALM);
        // A probe that holds for a while: the next fall waits the shortest time again.
        filter.handle_estimate(now, 500_000);
        filter.estimate(now, 400_000);
        now += MAX_CALM;
        filter.estimate(now, 400_000);
        now += SETTLED_AFTER;
        filter.handle_estimate(now, 300_000);
        assert_eq!(filter.calm_time(), MIN_CALM);
        assert_eq!(filter.state(), State::Believed { calm_since: None });
    }
}
