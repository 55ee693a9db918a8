//! Compressed downloads (docs/compression.md): bytes sent per content coding, the variants made,
//! and the compressor's backlog.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Content codings of binary answers, in the label order of the exposition.
pub const SENT_ENCODINGS: [&str; 3] = ["identity", "zstd", "gzip"];

/// Outcomes of making one variant: `fetched` and `refused` are a replica's taking of another's
/// from the bucket (docs/compression.md, "With replicas").
pub const COMPRESSION_OUTCOMES: [&str; 5] = ["stored", "useless", "error", "fetched", "refused"];
/// Where an unknown outcome is counted.
const OUTCOME_ERROR: usize = 2;

/// The compressed-download counters.
#[derive(Default)]
pub struct CompressionCounters {
    /// `velox_cache_sent_bytes_total{encoding}`, by [`SENT_ENCODINGS`] order.
    sent: [AtomicU64; 3],
    /// `velox_cache_compressions_total{encoding,outcome}`: zstd then gzip, by
    /// [`COMPRESSION_OUTCOMES`] order.
    made: [[AtomicU64; 5]; 2],
    /// `velox_cache_compression_backlog`: blobs waiting for their variants.
    pub backlog: AtomicU64,
    /// `velox_cache_compression_seconds_total{encoding}`: time spent making variants, in
    /// milliseconds.
    busy_ms: [AtomicU64; 2],
}

fn encoding_index(encoding: &str) -> usize {
    SENT_ENCODINGS
        .iter()
        .position(|e| *e == encoding)
        .unwrap_or(0)
}

impl CompressionCounters {
    /// Counts `n` bytes of a binary answer sent in `encoding` (`identity`, `zstd`, `gzip`).
    pub fn sent(&self, encoding: &str, n: u64) {
        self.sent[encoding_index(encoding)].fetch_add(n, Relaxed);
    }

    /// Counts one variant made in `encoding` (`zstd` or `gzip`) with `outcome` (one of
    /// [`COMPRESSION_OUTCOMES`]), and the time it took.
    pub fn made(&self, encoding: &str, outcome: &str, took: std::time::Duration) {
        let e = usize::from(encoding == "gzip");
        let o = COMPRESSION_OUTCOMES
            .iter()
            .position(|x| *x == outcome)
            .unwrap_or(OUTCOME_ERROR);
        self.made[e][o].fetch_add(1, Relaxed);
        self.busy_ms[e].fetch_add(took.as_millis() as u64, Relaxed);
    }

    /// The exposition; `variant_bytes` when the store answered.
    pub fn render(&self, out: &mut String, variant_bytes: Option<u64>) {
        let _ = writeln!(
            out,
            "# HELP velox_cache_sent_bytes_total Bytes of binary answers sent, by content coding.\n\
             # TYPE velox_cache_sent_bytes_total counter"
        );
        for (name, n) in SENT_ENCODINGS.iter().zip(&self.sent) {
            let _ = writeln!(
                out,
                "velox_cache_sent_bytes_total{{encoding=\"{name}\"}} {}",
                n.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP velox_cache_compressions_total Compressed variants made, by coding and outcome.\n\
             # TYPE velox_cache_compressions_total counter"
        );
        for (e, name) in ["zstd", "gzip"].iter().enumerate() {
            for (o, outcome) in COMPRESSION_OUTCOMES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "velox_cache_compressions_total{{encoding=\"{name}\",outcome=\"{outcome}\"}} {}",
                    self.made[e][o].load(Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP velox_cache_compression_seconds_total Time spent making compressed variants, by coding.\n\
             # TYPE velox_cache_compression_seconds_total counter"
        );
        for (e, name) in ["zstd", "gzip"].iter().enumerate() {
            let _ = writeln!(
                out,
                "velox_cache_compression_seconds_total{{encoding=\"{name}\"}} {:.3}",
                self.busy_ms[e].load(Relaxed) as f64 / 1000.0
            );
        }
        let _ = writeln!(
            out,
            "# HELP velox_cache_compression_backlog Stored binaries waiting for their compressed variants.\n\
             # TYPE velox_cache_compression_backlog gauge\n\
             velox_cache_compression_backlog {}",
            self.backlog.load(Relaxed)
        );
        if let Some(bytes) = variant_bytes {
            let _ = writeln!(
                out,
                "# HELP velox_cache_variant_bytes Bytes of compressed variants (counted by the size limit).\n\
                 # TYPE velox_cache_variant_bytes gauge\n\
                 velox_cache_variant_bytes {bytes}"
            );
        }
    }
}
