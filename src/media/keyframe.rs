//! Keyframe-request throttle: subscribers' PLI/FIR must reach the publisher, but a keyframe
//! costs the publisher a burst of bitrate, so at most one request goes upstream per
//! `min_interval`.
//!
//! Owns: whether a request is owed upstream and when the last one was sent.
//!
//! Invariants:
//! - Two upstream requests are at least `min_interval` apart.
//! - A request is never lost: one arriving during the quiet period stays pending and goes
//!   out when the period ends, unless a keyframe arrives first and satisfies it.
//! - Every request is counted exactly once, in [`KeyframeThrottle::sent`] or
//!   [`KeyframeThrottle::suppressed`], except the one still pending.
//!
//! Loop: feed [`KeyframeThrottle::handle_request`] and [`KeyframeThrottle::handle_keyframe`];
//! call [`KeyframeThrottle::poll_request`] after each input and when the instant from
//! [`KeyframeThrottle::poll_timeout`] is reached; send a PLI upstream whenever it says so.

use std::time::{Duration, Instant};

/// Spacing between upstream keyframe requests for video unless configured otherwise.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_millis(500);

/// Longest quiet period accepted; larger values are clamped, which keeps instant arithmetic
/// far from overflow.
const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// Throttles keyframe requests on their way upstream. See the module documentation.
#[derive(Clone, Debug)]
pub struct KeyframeThrottle {
    /// Shortest spacing between two upstream requests.
    min_interval: Duration,
    /// When the last request went upstream: the quiet period runs from there.
    last_sent: Option<Instant>,
    /// Since when a request has been owed upstream; None when nothing is owed.
    pending_since: Option<Instant>,
    /// Requests sent upstream, for statistics.
    sent: u64,
    /// Requests merged into an earlier pending one or satisfied by a keyframe.
    suppressed: u64,
}

impl Default for KeyframeThrottle {
    fn default() -> Self {
        Self::new(DEFAULT_MIN_INTERVAL)
    }
}

impl KeyframeThrottle {
    /// A throttle sending at most one request per `min_interval` (clamped to one hour).
    pub fn new(min_interval: Duration) -> Self {
        KeyframeThrottle {
            min_interval: min_interval.min(MAX_INTERVAL),
            last_sent: None,
            pending_since: None,
            sent: 0,
            suppressed: 0,
        }
    }

    /// Someone wants a keyframe. Merges into a request already pending.
    pub fn handle_request(&mut self, now: Instant) {
        if self.pending_since.is_some() {
            self.suppressed += 1;
        } else {
            self.pending_since = Some(now);
        }
    }

    /// True when a request should go upstream now; the request then counts as sent.
    pub fn poll_request(&mut self, now: Instant) -> bool {
        if self.poll_timeout().is_none_or(|due| due > now) {
            return false;
        }
        self.pending_since = None;
        self.last_sent = Some(now);
        self.sent += 1;
        true
    }

    /// When the caller should poll next (for its timer), if a request is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let since = self.pending_since?;
        Some(self.quiet_until().map_or(since, |until| until.max(since)))
    }

    /// A keyframe was seen: requests pending since before it are satisfied.
    pub fn handle_keyframe(&mut self, now: Instant) {
        if self.pending_since.is_some_and(|since| since <= now) {
            self.pending_since = None;
            self.suppressed += 1;
        }
    }

    /// Whether a request is owed upstream.
    pub fn is_pending(&self) -> bool {
        self.pending_since.is_some()
    }

    /// Requests sent upstream.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Requests that did not go upstream themselves: merged or satisfied by a keyframe.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// End of the current quiet period, if a request was ever sent.
    fn quiet_until(&self) -> Option<Instant> {
        self.last_sent
            .map(|sent| sent.checked_add(self.min_interval).unwrap_or(sent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(base: Instant, millis: u64) -> Instant {
        base + Duration::from_millis(millis)
    }

    #[test]
    fn first_request_goes_out_immediately() {
        let base = Instant::now();
        let mut throttle = KeyframeThrottle::default();
        assert!(!throttle.poll_request(base));
        assert_eq!(throttle.poll_timeout(), None);
        throttle.handle_request(base);
        assert_eq!(throttle.poll_timeout(), Some(base));
        assert!(throttle.poll_request(base));
        assert!(!throttle.poll_request(base));
        assert_eq!((throttle.sent(), throttle.suppressed()), (1, 0));
    }

    #[test]
    fn requests_in_the_quiet_period_are_deferred_not_lost() {
        let base = Instant::now();
        let mut throttle = KeyframeThrottle::new(Duration::from_millis(500));
        throttle.handle_request(base);
        assert!(throttle.poll_request(base));
        throttle.handle_request(ms(base, 100));
        throttle.handle_request(ms(base, 200));
        assert!(!throttle.poll_request(ms(base, 200)));
        assert_eq!(throttle.poll_timeout(), Some(ms(base, 500)));
        assert!(!throttle.poll_request(ms(base, 499)));
        assert!(throttle.poll_request(ms(base, 500)));
        assert_eq!((throttle.sent(), throttle.suppressed()), (2, 1));
        assert_eq!(throttle.poll_timeout(), None);
    }

    #[test]
    fn at_most_one_request_per_interval_under_a_storm() {
        let base = Instant::now();
        let mut throttle = KeyframeThrottle::new(Duration::from_millis(500));
        let mut sent_at = Vec::new();
        for t in 0..3_000 {
            throttle.handle_request(ms(base, t));
            if throttle.poll_request(ms(base, t)) {
                sent_at.push(t);
            }
        }
        assert_eq!(sent_at, vec![0, 500, 1_000, 1_500, 2_000, 2_500]);
        assert_eq!(throttle.sent() + throttle.suppressed() + 1, 3_000);
    }

    #[test]
    fn a_keyframe_satisfies_pending_requests() {
        let base = Instant::now();
        let mut throttle = KeyframeThrottle::new(Duration::from_millis(500));
        throttle.handle_request(base);
        assert!(throttle.poll_request(base));
        throttle.handle_request(ms(base, 100));
        throttle.handle_keyframe(ms(base, 150));
        assert!(!throttle.is_pending());
        assert!(!throttle.poll_request(ms(base, 600)));
        assert_eq!((throttle.sent(), throttle.suppressed()), (1, 1));
    }

    #[test]
    fn a_keyframe_without_pending_request_changes_nothing() {
        let base = Instant::now();
        let mut throttle = KeyframeThrottle::default();
        throttle.handle_keyframe(base);
        assert_eq!((throttle.sent(), throttle.suppressed()), (0, 0));
        throttle.handle_request(ms(base, 1));
        assert!(throttle.poll_request(ms(base, 1)));
    }

    #[test]
    fn a_request_long_after_the_last_goes_out_at_once() {
        let base = Instant::now();
        let mut throttle = KeyframeThrottle::new(Duration::from_millis(500));
        throttle.handle_request(base);
        assert!(throttle.poll_request(base));
        throttle.handle_request(ms(base, 10_000));
        assert_eq!(throttle.poll_timeout(), Some(ms(base, 10_000)));
        assert!(throttle.poll_request(ms(base, 10_000)));
    }

    #[test]
    fn huge_intervals_are_clamped() {
        let base = Instant::now();
        let mut throttle = KeyframeThrottle::new(Duration::MAX);
        throttle.handle_request(base);
        assert!(throttle.poll_request(base));
        throttle.handle_request(base);
        assert_eq!(throttle.poll_timeout(), Some(base + MAX_INTERVAL));
    }
}
