//! The timing loop the in-process benches share.

use std::time::{Duration, Instant};

/// Runs `f` in batches of `batch` calls for about a second; prints the median and the p99 batch's
/// time per call.
pub fn bench(name: &str, batch: u32, mut f: impl FnMut()) {
    let mut per_call = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        let t = Instant::now();
        for _ in 0..batch {
            f();
        }
        per_call.push(t.elapsed() / batch);
    }
    per_call.sort();
    println!(
        "{name}: median {:?} per call, p99 {:?} ({} batches of {batch})",
        per_call[per_call.len() / 2],
        per_call[per_call.len() * 99 / 100],
        per_call.len()
    );
}
