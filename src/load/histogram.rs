//! A log-linear histogram of durations, for one-way delay quantiles in bounded memory.
//!
//! Values are recorded in microseconds. Below 32 µs every value has its own bucket;
//! above, each power of two is cut into 32 equal buckets, so a quantile is off by at
//! most 1/32 (about 3 %) of its value. Minimum, maximum and mean are exact. The bucket
//! vector grows only as far as the largest value seen: delays of a few milliseconds
//! take a few hundred buckets.

use std::time::Duration;

/// log2 of the number of buckets per power of two.
const SUB_BITS: u32 = 5;
const SUB_BUCKETS: u64 = 1 << SUB_BITS;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min_us: u64,
    max_us: u64,
    sum_us: u128,
}

impl Histogram {
    pub fn record(&mut self, value: Duration) {
        let us = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        let index = bucket_of(us);
        if self.counts.len() <= index {
            self.counts.resize(index + 1, 0);
        }
        self.counts[index] += 1;
        self.min_us = if self.total == 0 {
            us
        } else {
            self.min_us.min(us)
        };
        self.max_us = self.max_us.max(us);
        self.sum_us += u128::from(us);
        self.total += 1;
    }

    /// Adds every value recorded in `other`.
    pub fn merge(&mut self, other: &Histogram) {
        if other.total == 0 {
            return;
        }
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.min_us = if self.total == 0 {
            other.min_us
        } else {
            self.min_us.min(other.min_us)
        };
        self.max_us = self.max_us.max(other.max_us);
        self.sum_us += other.sum_us;
        self.total += other.total;
    }

    pub fn min(&self) -> Option<Duration> {
        (self.total > 0).then(|| Duration::from_micros(self.min_us))
    }

    pub fn max(&self) -> Option<Duration> {
        (self.total > 0).then(|| Duration::from_micros(self.max_us))
    }

    pub fn mean(&self) -> Option<Duration> {
        let mean = self.sum_us.checked_div(u128::from(self.total))?;
        Some(Duration::from_micros(mean as u64))
    }

    /// The value below which a fraction `q` (0..=1) of the recorded values lie: the
    /// middle of its bucket, kept within the exact minimum and maximum.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        let index = self.counts.iter().position(|count| {
            seen += count;
            seen >= rank
        })?;
        let (low, width) = bucket_range(index);
        let middle = low + (width - 1) / 2;
        Some(Duration::from_micros(
            middle.clamp(self.min_us, self.max_us),
        ))
    }
}

fn bucket_of(us: u64) -> usize {
    if us < SUB_BUCKETS {
        return us as usize;
    }
    let exponent = 63 - us.leading_zeros();
    let shift = exponent - SUB_BITS;
    let mantissa = us >> shift;
    (((u64::from(shift) + 1) << SUB_BITS) + mantissa - SUB_BUCKETS) as usize
}

/// Lowest value and width of a bucket.
fn bucket_range(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return (index, 1);
    }
    let shift = (index >> SUB_BITS) - 1;
    let mantissa = (index & (SUB_BUCKETS - 1)) + SUB_BUCKETS;
    (mantissa << shift, 1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        let mut next = 0;
        for index in 0..600 {
            let (low, width) = bucket_range(index);
            assert_eq!(low, next, "bucket {index}");
            assert_eq!(bucket_of(low), index);
            assert_eq!(bucket_of(low + width - 1), index);
            next = low + width;
        }
        assert_eq!(bucket_of(u64::MAX), bucket_of(u64::MAX - (1 << 57)));
    }

    #[test]
    fn quantiles_are_within_three_percent() {
        let mut h = Histogram::default();
        for v in 1..=10_000 {
            h.record(us(v));
        }
        for (q, exact) in [(0.5, 5_000.0), (0.9, 9_000.0), (0.99, 9_900.0)] {
            let got = h.quantile(q).unwrap().as_micros() as f64;
            assert!((got - exact).abs() / exact < 0.03, "q{q}: {got} vs {exact}");
        }
        assert_eq!(h.quantile(1.0), Some(us(10_000)));
        assert_eq!(h.quantile(0.0), Some(us(1)));
        assert_eq!((h.min(), h.max()), (Some(us(1)), Some(us(10_000))));
        assert_eq!(h.mean(), Some(us(5_000)));
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::default();
        for v in [3, 3, 7, 20] {
            h.record(us(v));
        }
        assert_eq!(h.quantile(0.5), Some(us(3)));
        assert_eq!(h.quantile(0.75), Some(us(7)));
    }

    #[test]
    fn merging_equals_recording_together() {
        let (mut a, mut b, mut both) = Default::default();
        for v in [5, 900, 40_000] {
            Histogram::record(&mut a, us(v));
            Histogram::record(&mut both, us(v));
        }
        for v in [1, 77, 3_000_000] {
            Histogram::record(&mut b, us(v));
            Histogram::record(&mut both, us(v));
        }
        let mut merged = Histogram::default();
        merged.merge(&a);
        merged.merge(&Histogram::default());
        merged.merge(&b);
        assert_eq!(merged, both);
    }

    #[test]
    fn empty_has_no_quantiles() {
        let h = Histogram::default();
        assert_eq!((h.quantile(0.5), h.max(), h.mean()), (None, None, None));
    }
}
