//! Counting from many threads at once without sharing a cache line: each thread adds into its
//! own stripe (threads take stripes in turn, once), and a scrape sums the stripes. On the hit
//! path two actix workers otherwise pass the same counter's line back and forth on every hit
//! (BENCHMARKS.md, "Counting and exposition": 164 ns per hit on two threads with one shared
//! line per series, against 20 ns on one).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Stripes per series: at least the threads that count at once on the hit path (the actix
/// workers, one per core), more cost only memory and scrape time.
pub(super) const STRIPES: usize = 8;

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Relaxed) % STRIPES;
}

/// The calling thread's stripe.
pub(super) fn stripe() -> usize {
    STRIPE.try_with(|s| *s).unwrap_or(0)
}

/// One stripe's value, alone on its cache line (two, for the adjacent-line prefetcher).
#[repr(align(128))]
#[derive(Default)]
struct Line(AtomicU64);

/// A counter that threads add to without contending.
#[derive(Default)]
pub struct StripedCounter {
    stripes: [Line; STRIPES],
}

impl StripedCounter {
    pub fn add(&self, n: u64) {
        self.stripes[stripe()].0.fetch_add(n, Relaxed);
    }

    /// The sum of every stripe.
    pub fn get(&self) -> u64 {
        self.stripes.iter().map(|l| l.0.load(Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_from_many_threads_are_all_counted() {
        let c = StripedCounter::default();
        std::thread::scope(|s| {
            for _ in 0..(STRIPES + 3) {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        c.add(1);
                    }
                });
            }
        });
        c.add(5);
        assert_eq!(c.get(), (STRIPES as u64 + 3) * 10_000 + 5);
    }
}
