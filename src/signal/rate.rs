//! A token bucket that limits how many signaling messages a socket may send.
//!
//! The bucket holds at most `burst` tokens and refills at `rate_per_sec`. Each
//! message takes one token; a message that finds the bucket empty is refused. Time
//! is passed in, so tests drive it without sleeping.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct RateLimiter {
    rate_per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Messages refused since the last accepted one; a long run means a flood.
    refused_in_a_row: u32,
}

/// What to do with one incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Refuse this message and tell the client.
    Refuse,
    /// Refused so often in a row that the client is not listening: drop it.
    Disconnect,
}

/// Refusals in a row after which the socket is closed.
pub const FLOOD_DISCONNECT_AFTER: u32 = 500;

impl RateLimiter {
    pub fn new(now: Instant, rate_per_sec: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate_per_sec: f64::from(rate_per_sec.max(1)),
            burst,
            tokens: burst,
            last: now,
            refused_in_a_row: 0,
        }
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            return Verdict::Accept;
        }
        self.refused_in_a_row = self.refused_in_a_row.saturating_add(1);
        if self.refused_in_a_row >= FLOOD_DISCONNECT_AFTER {
            Verdict::Disconnect
        } else {
            Verdict::Refuse
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        let added = elapsed.as_secs_f64() * self.rate_per_sec;
        self.tokens = (self.tokens + added).min(self.burst);
    }

    /// How long until one token is available again.
    pub fn retry_after(&self) -> Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        Duration::from_secs_f64(missing / self.rate_per_sec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse_then_refill() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(t0, 10, 3);
        for _ in 0..3 {
            assert_eq!(limiter.check(t0), Verdict::Accept);
        }
        assert_eq!(limiter.check(t0), Verdict::Refuse);
        assert!(limiter.retry_after() <= Duration::from_millis(100));

        let later = t0 + Duration::from_millis(100);
        assert_eq!(limiter.check(later), Verdict::Accept);
        assert_eq!(limiter.check(later), Verdict::Refuse);
    }

    #[test]
    fn a_flood_ends_in_disconnect() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(t0, 1, 1);
        assert_eq!(limiter.check(t0), Verdict::Accept);
        let verdicts: Vec<_> = (0..FLOOD_DISCONNECT_AFTER)
            .map(|_| limiter.check(t0))
            .collect();
        assert!(verdicts[..verdicts.len() - 1]
            .iter()
            .all(|v| *v == Verdict::Refuse));
        assert_eq!(verdicts.last(), Some(&Verdict::Disconnect));
    }

    #[test]
    fn refill_is_capped_at_burst() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(t0, 100, 2);
        let much_later = t0 + Duration::from_secs(60);
        assert_eq!(limiter.check(much_later), Verdict::Accept);
        assert_eq!(limiter.check(much_later), Verdict::Accept);
        assert_eq!(limiter.check(much_later), Verdict::Refuse);
    }
}
