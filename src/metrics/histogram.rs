//! A fixed-bucket histogram of durations: an observation adds one to the one bucket it falls in
//! (found by binary search) and its time to the sum — two atomic adds into the calling thread's
//! stripe (`striped.rs`), so observing never allocates, locks, or shares a cache line with
//! another thread; the exposition's cumulative `le` counts are summed when rendered.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::striped::{stripe, STRIPES};

/// Bounds a histogram may have.
const MAX_BOUNDS: usize = 15;

/// One thread's stripe: observations per bucket (not cumulative: `counts[i]` those in
/// (`bounds[i-1]`, `bounds[i]`], `counts[bounds.len()]` those above every bound) and the sum,
/// on cache lines of their own.
#[repr(align(128))]
#[derive(Default)]
struct Stripe {
    counts: [AtomicU64; MAX_BOUNDS + 1],
    sum_micros: AtomicU64,
}

/// A histogram with fixed upper bounds, in seconds.
pub struct Histogram {
    bounds: &'static [f64],
    stripes: Box<[Stripe; STRIPES]>,
}

impl Histogram {
    /// Bounds past the fifteenth are ignored (their observations count above the last kept).
    pub(super) fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds: &bounds[..bounds.len().min(MAX_BOUNDS)],
            stripes: Box::default(),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let bucket = self.bounds.partition_point(|bound| *bound < secs);
        let s = &self.stripes[stripe()];
        if let Some(count) = s.counts.get(bucket) {
            count.fetch_add(1, Relaxed);
        }
        s.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn bucket(&self, i: usize) -> u64 {
        self.stripes.iter().map(|s| s.counts[i].load(Relaxed)).sum()
    }

    pub(super) fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut total = 0u64;
        for (i, bound) in self.bounds.iter().enumerate() {
            total += self.bucket(i);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {total}");
        }
        // Above every bound; `+Inf` and `_count` are the same sum, so a scrape taken while
        // others observe is still a consistent histogram.
        total += self.bucket(self.bounds.len());
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let sum: u64 = self
            .stripes
            .iter()
            .map(|s| s.sum_micros.load(Relaxed))
            .sum();
        let sum = sum as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_render_as_cumulative_buckets() {
        static BOUNDS: &[f64] = &[0.001, 0.01, 0.1];
        let h = Histogram::new(BOUNDS);
        for ms in [0, 1, 5, 10, 50, 100, 101, 5_000] {
            h.observe(Duration::from_millis(ms));
        }
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        let lines: Vec<&str> = out.lines().skip(2).collect();
        assert_eq!(
            lines,
            [
                "x_bucket{le=\"0.001\"} 2",
                "x_bucket{le=\"0.01\"} 4",
                "x_bucket{le=\"0.1\"} 6",
                "x_bucket{le=\"+Inf\"} 8",
                "x_sum 5.267",
                "x_count 8",
            ]
        );
    }
}
