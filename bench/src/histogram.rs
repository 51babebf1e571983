//! A small log-linear histogram of microseconds, mergeable across processes.
//!
//! Values below 32 have a bucket each; above, every power of two is split into 32 buckets, so a
//! bucket's width is at most 1/32 of its lower bound (about 3 %). Percentiles report a bucket's
//! upper bound (never better than measured); count, sum, min and max are exact. Workers print
//! the non-empty buckets as `[index, count]` pairs and the orchestrator merges them.

use serde::{Deserialize, Serialize};

/// log2 of the buckets per power of two.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for any `u64`.
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// The bucket holding `v`.
fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = exp - SUB_BITS;
    let mantissa = v >> shift; // in [SUB, 2 * SUB)
    ((shift as u64 + 1) * SUB + (mantissa - SUB)) as usize
}

/// The largest value of bucket `i`.
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = i / SUB - 1;
    let mantissa = i % SUB + SUB;
    let end = u128::from(mantissa + 1) << shift;
    (end - 1).min(u128::from(u64::MAX)) as u64
}

/// Counts of microsecond values.
#[derive(Clone)]
pub struct Histogram {
    buckets: Box<[u64]>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count)
            .field("min", &self.min())
            .field("max", &self.max)
            .finish()
    }
}

/// The wire form: non-empty buckets only.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistogramData {
    /// `[bucket index, count]` for every non-empty bucket.
    pub buckets: Vec<(u32, u64)>,
    /// Values recorded.
    pub count: u64,
    /// Their sum (µs).
    pub sum: u128,
    /// Smallest value (0 when empty).
    pub min: u64,
    /// Largest value.
    pub max: u64,
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, v: u64) {
        self.buckets[index(v)] += 1;
        self.count += 1;
        self.sum += u128::from(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Smallest value; 0 when empty.
    pub fn min(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.min
        }
    }

    /// Largest value.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean; 0 when empty.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The value at or below which `q` (0..=1) of the values lie: a bucket's upper bound,
    /// clamped to the exact maximum. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return upper(i).min(self.max).max(self.min());
            }
        }
        self.max
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        *self = Histogram::default();
    }

    /// The wire form.
    pub fn data(&self) -> HistogramData {
        HistogramData {
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .filter(|(_, &n)| n > 0)
                .map(|(i, &n)| (i as u32, n))
                .collect(),
            count: self.count,
            sum: self.sum,
            min: self.min(),
            max: self.max,
        }
    }

    /// Rebuilds a histogram from its wire form (unknown bucket indexes are ignored).
    pub fn from_data(d: &HistogramData) -> Histogram {
        let mut h = Histogram::default();
        for &(i, n) in &d.buckets {
            if let Some(b) = h.buckets.get_mut(i as usize) {
                *b += n;
            }
        }
        h.count = d.count;
        h.sum = d.sum;
        h.min = if d.count == 0 { u64::MAX } else { d.min };
        h.max = d.max;
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..100_000u64).chain([1 << 40, u64::MAX / 2, u64::MAX]) {
            let i = index(v);
            assert!(i >= last, "index goes backwards at {v}");
            last = i;
            assert!(upper(i) >= v, "upper({i}) = {} < {v}", upper(i));
            assert!(upper(i) - v <= v / 16 + 1, "bucket of {v} too wide");
            assert!(i < BUCKETS);
        }
    }

    #[test]
    fn quantiles_merge_and_round_trip() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        for v in 1..=1000 {
            a.record(v);
            b.record(v + 1000);
        }
        a.merge(&Histogram::from_data(&b.data()));
        assert_eq!(a.count(), 2000);
        assert_eq!(a.min(), 1);
        assert_eq!(a.max(), 2000);
        let p50 = a.quantile(0.5);
        assert!((1000..=1032).contains(&p50), "{p50}");
        assert_eq!(a.quantile(1.0), 2000);
        assert_eq!(Histogram::default().quantile(0.99), 0);
    }
}
