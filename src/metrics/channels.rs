//! Channel metrics (docs/metrics.md): releases flipped and pre-builds failed, the age of each
//! channel's current release, pinned bytes, webhook deliveries.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// `velox_channel_releases_total{outcome}`.
#[derive(Default)]
pub struct ChannelCounters {
    flipped: AtomicU64,
    failed: AtomicU64,
}

impl ChannelCounters {
    pub fn flipped(&self) {
        self.flipped.fetch_add(1, Relaxed);
    }

    pub fn failed(&self) {
        self.failed.fetch_add(1, Relaxed);
    }
}

/// What the channel layer knows at scrape time.
#[derive(Debug, Clone, Default)]
pub struct ChannelGauges {
    /// Channel name → seconds since its current release was made.
    pub release_ages: Vec<(String, u64)>,
    /// Bytes of the blobs pinned entries use.
    pub pinned_bytes: u64,
    /// Webhook deliveries: delivered, retried, failed.
    pub webhooks: (u64, u64, u64),
}

/// A label value as the exposition format escapes it.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl ChannelCounters {
    pub fn render(&self, out: &mut String, g: &ChannelGauges) {
        let _ = writeln!(
            out,
            "# HELP velox_channel_releases_total Channel pre-builds by outcome: a release flipped, or a pre-build failed.\n\
             # TYPE velox_channel_releases_total counter\n\
             velox_channel_releases_total{{outcome=\"flipped\"}} {}\n\
             velox_channel_releases_total{{outcome=\"failed\"}} {}",
            self.flipped.load(Relaxed),
            self.failed.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP velox_channel_release_age_seconds Seconds since the channel's current release was made.\n\
             # TYPE velox_channel_release_age_seconds gauge"
        );
        for (name, age) in &g.release_ages {
            let _ = writeln!(
                out,
                "velox_channel_release_age_seconds{{channel=\"{}\"}} {age}",
                label(name)
            );
        }
        let _ = writeln!(
            out,
            "# HELP velox_cache_pinned_bytes Bytes of the blobs of pinned entries (never evicted).\n\
             # TYPE velox_cache_pinned_bytes gauge\n\
             velox_cache_pinned_bytes {}",
            g.pinned_bytes
        );
        let (delivered, retried, failed) = g.webhooks;
        let _ = writeln!(
            out,
            "# HELP velox_channel_webhooks_total Webhook deliveries by outcome.\n\
             # TYPE velox_channel_webhooks_total counter\n\
             velox_channel_webhooks_total{{outcome=\"delivered\"}} {delivered}\n\
             velox_channel_webhooks_total{{outcome=\"retried\"}} {retried}\n\
             velox_channel_webhooks_total{{outcome=\"failed\"}} {failed}"
        );
    }
}
