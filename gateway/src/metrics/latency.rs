//! `ryze_publish_to_send_seconds` as atomic counters: the fan-out records every frame of a
//! dispatch it wrote at once with one call ([`Latency::observe_n`]), not one locked update
//! per delivery (the library's histogram takes a write lock per observation).

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A histogram of seconds with fixed upper bounds (+Inf added).
#[derive(Debug, Clone)]
pub struct Latency(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    bounds: Vec<f64>,
    /// Per bucket, not cumulative; the last is +Inf.
    counts: Vec<AtomicU64>,
    /// Sum of the observations in microseconds.
    sum_micros: AtomicU64,
}

impl Latency {
    /// An empty histogram with these upper bounds.
    pub fn new(bounds: &[f64]) -> Latency {
        Latency(Arc::new(Inner {
            bounds: bounds.to_vec(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }))
    }

    /// Records `n` observations of `seconds`.
    pub fn observe_n(&self, seconds: f64, n: u64) {
        if n == 0 {
            return;
        }
        let i = self.0.bounds.partition_point(|b| *b < seconds);
        self.0.counts[i].fetch_add(n, Ordering::Relaxed);
        let micros = (seconds.max(0.0) * 1e6) as u64;
        self.0
            .sum_micros
            .fetch_add(micros.saturating_mul(n), Ordering::Relaxed);
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts: Vec<u64> = self
            .0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let buckets: Vec<(f64, u64)> = self
            .0
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(counts.iter().copied())
            .collect();
        let sum = self.0.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, counts.iter().sum(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn encodes_like_a_histogram_with_n_observations() {
        let mut registry = Registry::default();
        let h = Latency::new(&[0.001, 0.01]);
        registry.register("lat", "test", h.clone());
        h.observe_n(0.0005, 3);
        h.observe_n(0.001, 1);
        h.observe_n(5.0, 2);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("lat_count 6"), "{out}");
        assert!(out.contains("lat_bucket{le=\"0.001\"} 4"), "{out}");
        assert!(out.contains("lat_bucket{le=\"0.01\"} 4"), "{out}");
        assert!(out.contains("lat_bucket{le=\"+Inf\"} 6"), "{out}");
        assert!(out.contains("lat_sum 10.0025"), "{out}");
    }
}
