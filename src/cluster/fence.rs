//! Self-fencing: how long this node may act on what its etcd lease protects.
//!
//! etcd expires a lease `ttl` after the last keep-alive it *received*. The node
//! only knows when it *sent* a keep-alive that was acknowledged, which is earlier,
//! so `sent + ttl` is an upper bound of when etcd may hand our rooms to someone
//! else. The node stops acting as owner a margin before that bound. A keep-alive
//! answered with a TTL of zero means the lease is already gone.
//!
//! [`LeaseClock`] is the I/O-free rule, driven with `now` passed in. [`FenceGate`]
//! publishes its deadline to the rest of the node, so that a room can check it
//! synchronously before admitting anyone, without asking the keep-alive task.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The smallest safety margin, whatever the TTL.
const MIN_MARGIN: Duration = Duration::from_millis(200);

/// The deadline rule for one lease.
#[derive(Debug, Clone)]
pub struct LeaseClock {
    ttl: Duration,
    margin: Duration,
    /// When the newest acknowledged keep-alive (or the grant) was sent.
    acked_sent_at: Option<Instant>,
}

impl LeaseClock {
    /// A clock for a lease of `ttl`; the margin is a fifth of it, at least 200 ms.
    pub fn new(ttl: Duration) -> Self {
        let margin = (ttl / 5).max(MIN_MARGIN).min(ttl / 2);
        Self {
            ttl,
            margin,
            acked_sent_at: None,
        }
    }

    /// The lease was granted by a request sent at `sent_at`.
    pub fn granted(&mut self, sent_at: Instant) {
        self.acked_sent_at = Some(sent_at);
    }

    /// A keep-alive sent at `sent_at` was answered with `ttl_left` seconds.
    ///
    /// Returns false when etcd says the lease no longer exists.
    pub fn acknowledged(&mut self, sent_at: Instant, ttl_left: i64) -> bool {
        if ttl_left <= 0 {
            self.acked_sent_at = None;
            return false;
        }
        // Answers may arrive out of order; only a newer send moves the deadline.
        if self.acked_sent_at.is_none_or(|t| sent_at > t) {
            self.acked_sent_at = Some(sent_at);
        }
        true
    }

    /// The lease is known lost (revoked, or expired by etcd's word).
    pub fn lost(&mut self) {
        self.acked_sent_at = None;
    }

    /// The moment after which this node must not act on the lease.
    pub fn deadline(&self) -> Option<Instant> {
        self.acked_sent_at
            .map(|sent| sent + self.ttl.saturating_sub(self.margin))
    }

    pub fn is_valid(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now < d)
    }

    /// How often to send keep-alives: three chances before the deadline.
    pub fn keepalive_interval(&self) -> Duration {
        (self.ttl.saturating_sub(self.margin) / 3).max(Duration::from_millis(50))
    }
}

/// The fencing deadline, shared by the keep-alive task (writer) and rooms (readers).
#[derive(Debug)]
pub struct FenceGate {
    base: Instant,
    /// Nanoseconds after `base`; 0 means fenced.
    deadline_ns: AtomicU64,
    /// Set when the node must never act as owner again (shutting down).
    closed: AtomicBool,
}

impl FenceGate {
    /// A gate that is shut until [`open_until`](Self::open_until) is called.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            deadline_ns: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// A gate that never closes by itself: the embedded, single-node placement.
    pub fn always_open() -> Self {
        let gate = Self::new();
        gate.deadline_ns.store(u64::MAX, Ordering::SeqCst);
        gate
    }

    pub fn open_until(&self, deadline: Option<Instant>) {
        let ns = match deadline {
            Some(d) => d
                .saturating_duration_since(self.base)
                .as_nanos()
                .clamp(1, u64::MAX as u128) as u64,
            None => 0,
        };
        self.deadline_ns.store(ns, Ordering::SeqCst);
    }

    /// Shuts the gate for good.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.deadline_ns.store(0, Ordering::SeqCst);
    }

    /// May the node act as owner at `now`?
    pub fn is_open(&self, now: Instant) -> bool {
        if self.closed.load(Ordering::SeqCst) {
            return false;
        }
        let deadline = self.deadline_ns.load(Ordering::SeqCst);
        if deadline == u64::MAX {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.base).as_nanos();
        deadline != 0 && elapsed < u128::from(deadline)
    }

    pub fn is_open_now(&self) -> bool {
        self.is_open(Instant::now())
    }
}

impl Default for FenceGate {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(5);

    #[test]
    fn no_lease_means_fenced() {
        let clock = LeaseClock::new(TTL);
        assert!(!clock.is_valid(Instant::now()));
        assert_eq!(clock.deadline(), None);
    }

    #[test]
    fn deadline_counts_from_the_send_and_keeps_a_margin() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::new(TTL);
        clock.granted(t0);
        // 5 s TTL, 1 s margin: valid until 4 s after the grant was sent.
        assert!(clock.is_valid(t0 + Duration::from_millis(3_999)));
        assert!(!clock.is_valid(t0 + Duration::from_secs(4)));
        assert!(clock.acknowledged(t0 + Duration::from_secs(3), 5));
        assert!(clock.is_valid(t0 + Duration::from_millis(6_999)));
        assert!(!clock.is_valid(t0 + Duration::from_secs(7)));
    }

    #[test]
    fn a_late_answer_to_an_old_keepalive_does_not_move_the_deadline_back() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::new(TTL);
        clock.granted(t0);
        clock.acknowledged(t0 + Duration::from_secs(2), 5);
        clock.acknowledged(t0 + Duration::from_secs(1), 5);
        assert_eq!(clock.deadline(), Some(t0 + Duration::from_secs(6)));
    }

    #[test]
    fn zero_ttl_in_an_answer_means_the_lease_is_gone() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::new(TTL);
        clock.granted(t0);
        assert!(!clock.acknowledged(t0 + Duration::from_secs(1), 0));
        assert!(!clock.is_valid(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn a_stopped_process_finds_itself_fenced_when_it_resumes() {
        // The keep-alive task was frozen (SIGSTOP) right after one acknowledgement;
        // on resuming, the first check sees the monotonic clock past the deadline.
        let t0 = Instant::now();
        let mut clock = LeaseClock::new(Duration::from_secs(2));
        clock.granted(t0);
        let gate = FenceGate::new();
        gate.open_until(clock.deadline());
        assert!(gate.is_open(t0 + Duration::from_millis(500)));
        assert!(!gate.is_open(t0 + Duration::from_secs(3)));
    }

    #[test]
    fn margin_is_bounded_for_short_leases() {
        let clock = LeaseClock::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let mut clock = clock;
        clock.granted(t0);
        assert_eq!(clock.deadline(), Some(t0 + Duration::from_millis(800)));
        assert!(clock.keepalive_interval() <= Duration::from_millis(267));
    }

    #[test]
    fn a_closed_gate_stays_closed() {
        let gate = FenceGate::always_open();
        assert!(gate.is_open_now());
        gate.close();
        assert!(!gate.is_open_now());
        gate.open_until(Some(Instant::now() + TTL));
        assert!(!gate.is_open_now());
    }
}
