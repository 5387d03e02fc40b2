//! Order statistics for the benchmark figures: medians and 99th percentiles of samples, and of
//! the latency histograms the C benchmark client prints (`hist <lower_ns> <count>` lines).

/// The value at quantile `q` (0.0..=1.0) of `samples` (nearest rank). `None` when empty.
pub fn quantile(samples: &[f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// Median and 99th percentile of a set of samples.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// The median.
    pub median: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// How many samples.
    pub count: usize,
}

impl Summary {
    /// The summary of `samples`; `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        Some(Summary {
            median: quantile(samples, 0.5)?,
            p99: quantile(samples, 0.99)?,
            count: samples.len(),
        })
    }
}

/// A latency histogram: (bucket lower bound in ns, count), merged from several processes.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    buckets: std::collections::BTreeMap<u64, u64>,
}

impl Histogram {
    /// Adds the `hist <lower_ns> <count>` lines of one process's output.
    pub fn add_lines(&mut self, output: &str) {
        for line in output.lines() {
            let mut fields = line.split_whitespace();
            if fields.next() != Some("hist") {
                continue;
            }
            let lower = fields.next().and_then(|v| v.parse::<u64>().ok());
            let count = fields.next().and_then(|v| v.parse::<u64>().ok());
            if let (Some(lower), Some(count)) = (lower, count) {
                *self.buckets.entry(lower).or_default() += count;
            }
        }
    }

    /// How many samples the histogram holds.
    pub fn count(&self) -> u64 {
        self.buckets.values().sum()
    }

    /// The lower bound of the bucket holding quantile `q`; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (&lower, &count) in &self.buckets {
            seen += count;
            if seen >= rank {
                return Some(lower);
            }
        }
        self.buckets.keys().next_back().copied()
    }
}

/// Formats nanoseconds for a table: `850 ns`, `12.3 us`, `4.56 ms`.
pub fn format_ns(ns: f64) -> String {
    let abs = ns.abs();
    if abs < 1_000.0 {
        format!("{ns:.0} ns")
    } else if abs < 1_000_000.0 {
        format!("{:.1} us", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}
