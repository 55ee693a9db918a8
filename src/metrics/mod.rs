//! Prometheus metrics (docs/metrics.md), named as the Go middleware named them so dashboards carry over.
//! Plain atomics and fixed-bucket histograms: nothing here allocates on the hot path.
//!
//! A registry that the layers write into and import, never the other way: the store, the
//! bucket, the build service and the resolver count into the structs defined here (the bucket
//! and the resolver through an `Arc`), naming reasons with the label enums of `labels`; what the
//! store knows at scrape time comes in as plain values ([`CacheTotals`], [`Gauges`]).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

mod bucket;
mod builders;
mod channels;
mod compression;
mod histogram;
mod history;
mod labels;
mod registry;
mod striped;

pub use bucket::{BucketCounters, BucketOp};
pub use builders::{render_builders, BuilderGauge};
pub use channels::{ChannelCounters, ChannelGauges};
pub use compression::CompressionCounters;
pub use histogram::Histogram;
pub use history::History;
pub use labels::{EvictionReason, ResolveCounters, RetryReason, StoreErrorReason};
pub use registry::RegistryCounters;
pub use striped::StripedCounter;

const LOOKUP_BOUNDS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.01, 0.1,
];
const BUILD_BOUNDS: &[f64] = &[1.0, 5.0, 10.0, 30.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0];

pub struct Metrics {
    /// Counted on every hit, by every worker: striped.
    pub hits: StripedCounter,
    pub misses: AtomicU64,
    pub lookup_duration: Histogram,
    pub builds_success: AtomicU64,
    pub builds_error: AtomicU64,
    pub builds_timeout: AtomicU64,
    pub builds_active: AtomicU64,
    pub builds_queued: AtomicU64,
    pub build_duration: Histogram,
    pub builds_coalesced: AtomicU64,
    /// By [`RetryReason::ALL`] order.
    pub velox_retries: [AtomicU64; RetryReason::ALL.len()],
    pub download_bytes: AtomicU64,
    /// By [`EvictionReason::ALL`] order.
    pub evictions: [AtomicU64; EvictionReason::ALL.len()],
    /// Proxy mode: upstream answers relayed, build instructions answered with a binary, and
    /// requests velox-cache answered with an error of its own.
    pub proxy_passed: AtomicU64,
    pub proxy_build: AtomicU64,
    pub proxy_error: AtomicU64,
    /// `velox_resolve_total{outcome}`: floating plugin tags resolved with the Go module proxy.
    pub resolve: ResolveCounters,
    /// `velox_cache_store_errors_total{reason}`: ingests that failed for lack of space (`full`)
    /// or another disk error (`io`), and blobs found damaged at rest (`corrupt`).
    pub store_errors_full: AtomicU64,
    pub store_errors_io: AtomicU64,
    pub store_errors_corrupt: AtomicU64,
    /// `velox_bucket_*`: traffic to the shared bucket (docs/object-storage.md).
    pub bucket: std::sync::Arc<BucketCounters>,
    /// `velox_channel_*` (docs/channels.md).
    pub channels: ChannelCounters,
    /// `velox_registry_*` (docs/images.md).
    pub registry: RegistryCounters,
    /// `velox_cache_sent_bytes_total`, `velox_cache_compression*` (docs/compression.md).
    pub compression: CompressionCounters,
}

/// The index's totals (`velox_cache_entries_count`, `velox_cache_size_bytes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheTotals {
    pub entries: u64,
    pub bytes: u64,
}

/// The data dir's filesystem, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskGauge {
    pub free: u64,
    pub total: u64,
}

/// Gauges read at scrape time from outside the counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// The data dir's filesystem, when `statvfs` answers.
    pub disk: Option<DiskGauge>,
    /// `cache.min_free_gb` in bytes.
    pub min_free_bytes: u64,
    /// Whether Velox answered its last call (true before the first call).
    pub velox_up: bool,
    /// Reopens of the index that succeeded and that failed (docs/storage.md, "Disk full").
    pub index_reopens: (u64, u64),
    /// Snapshots of the index taken while running (`cache.index_snapshot_writes`).
    pub index_snapshots: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            hits: StripedCounter::default(),
            misses: AtomicU64::new(0),
            lookup_duration: Histogram::new(LOOKUP_BOUNDS),
            builds_success: AtomicU64::new(0),
            builds_error: AtomicU64::new(0),
            builds_timeout: AtomicU64::new(0),
            builds_active: AtomicU64::new(0),
            builds_queued: AtomicU64::new(0),
            build_duration: Histogram::new(BUILD_BOUNDS),
            builds_coalesced: AtomicU64::new(0),
            velox_retries: Default::default(),
            download_bytes: AtomicU64::new(0),
            evictions: Default::default(),
            proxy_passed: AtomicU64::new(0),
            proxy_build: AtomicU64::new(0),
            proxy_error: AtomicU64::new(0),
            resolve: Default::default(),
            store_errors_full: AtomicU64::new(0),
            store_errors_io: AtomicU64::new(0),
            store_errors_corrupt: AtomicU64::new(0),
            bucket: Default::default(),
            channels: Default::default(),
            registry: Default::default(),
            compression: Default::default(),
        }
    }
}

fn one(out: &mut String, kind: &str, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

impl Metrics {
    pub fn retried(&self, reason: RetryReason) {
        let i = RetryReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.velox_retries[i].fetch_add(1, Relaxed);
    }

    pub fn evicted(&self, reason: EvictionReason) {
        let i = EvictionReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.evictions[i].fetch_add(1, Relaxed);
    }

    pub fn store_error(&self, reason: StoreErrorReason) {
        let counter = match reason {
            StoreErrorReason::Full => &self.store_errors_full,
            StoreErrorReason::Io => &self.store_errors_io,
            StoreErrorReason::Corrupt => &self.store_errors_corrupt,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// The gauges of [`Gauges`], appended to [`Metrics::render`]'s text.
    pub fn render_gauges(out: &mut String, g: &Gauges) {
        if let Some(d) = g.disk {
            one(
                out,
                "gauge",
                "velox_cache_disk_free_bytes",
                "Free bytes on the data dir's filesystem.",
                d.free,
            );
            one(
                out,
                "gauge",
                "velox_cache_disk_total_bytes",
                "Size of the data dir's filesystem.",
                d.total,
            );
        }
        one(
            out,
            "gauge",
            "velox_cache_min_free_bytes",
            "The free space eviction keeps (cache.min_free_gb).",
            g.min_free_bytes,
        );
        one(
            out,
            "gauge",
            "velox_velox_up",
            "1 unless Velox's last call found it unreachable.",
            u64::from(g.velox_up),
        );
        let (ok, error) = g.index_reopens;
        let _ = writeln!(
            out,
            "# HELP velox_cache_index_reopens_total Reopens of the index after it refused writes, by result.\n\
             # TYPE velox_cache_index_reopens_total counter\n\
             velox_cache_index_reopens_total{{result=\"ok\"}} {ok}\n\
             velox_cache_index_reopens_total{{result=\"error\"}} {error}"
        );
        one(
            out,
            "counter",
            "velox_cache_index_snapshots_total",
            "Snapshots of the index taken while running (cache.index_snapshot_writes).",
            g.index_snapshots,
        );
    }

    /// The Prometheus text exposition.
    pub fn render(&self, totals: Option<CacheTotals>) -> String {
        let mut out = String::with_capacity(4096);
        let c = |a: &AtomicU64| a.load(Relaxed);
        one(
            &mut out,
            "counter",
            "velox_cache_hits_total",
            "Build requests answered from the cache.",
            self.hits.get(),
        );
        one(
            &mut out,
            "counter",
            "velox_cache_misses_total",
            "Build requests that needed a build.",
            c(&self.misses),
        );
        self.lookup_duration.render(
            &mut out,
            "velox_cache_lookup_duration_seconds",
            "Time to compute the key and look it up.",
        );
        if let Some(t) = totals {
            one(
                &mut out,
                "gauge",
                "velox_cache_entries_count",
                "Entries in the cache.",
                t.entries,
            );
            one(
                &mut out,
                "gauge",
                "velox_cache_size_bytes",
                "Bytes of blobs in the cache.",
                t.bytes,
            );
        }
        let _ = writeln!(
            out,
            "# HELP velox_builds_total Builds by outcome.\n# TYPE velox_builds_total counter\n\
             velox_builds_total{{status=\"success\"}} {}\nvelox_builds_total{{status=\"error\"}} {}\n\
             velox_builds_total{{status=\"timeout\"}} {}",
            c(&self.builds_success),
            c(&self.builds_error),
            c(&self.builds_timeout)
        );
        one(
            &mut out,
            "gauge",
            "velox_builds_active",
            "Builds calling Velox now.",
            c(&self.builds_active),
        );
        one(
            &mut out,
            "gauge",
            "velox_builds_queued",
            "Builds waiting for a build slot.",
            c(&self.builds_queued),
        );
        self.build_duration.render(
            &mut out,
            "velox_build_duration_seconds",
            "Time a build took.",
        );
        one(
            &mut out,
            "counter",
            "velox_builds_coalesced_total",
            "Requests that waited on a build already under way.",
            c(&self.builds_coalesced),
        );
        let _ = writeln!(
            out,
            "# HELP velox_velox_retries_total Calls to Velox made again, by the reason for the call before.\n\
             # TYPE velox_velox_retries_total counter"
        );
        for (reason, count) in RetryReason::ALL.iter().zip(&self.velox_retries) {
            let _ = writeln!(
                out,
                "velox_velox_retries_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                c(count)
            );
        }
        let _ = writeln!(
            out,
            "# HELP velox_cache_evictions_total Entries removed, by reason.\n# TYPE velox_cache_evictions_total counter"
        );
        for (reason, count) in EvictionReason::ALL.iter().zip(&self.evictions) {
            let _ = writeln!(
                out,
                "velox_cache_evictions_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                c(count)
            );
        }
        one(
            &mut out,
            "counter",
            "velox_download_bytes_total",
            "Artifact bytes sent to clients.",
            c(&self.download_bytes),
        );
        let _ = writeln!(
            out,
            "# HELP velox_proxy_requests_total Proxied requests by outcome.\n\
             # TYPE velox_proxy_requests_total counter\n\
             velox_proxy_requests_total{{outcome=\"passed\"}} {}\n\
             velox_proxy_requests_total{{outcome=\"build\"}} {}\n\
             velox_proxy_requests_total{{outcome=\"error\"}} {}",
            c(&self.proxy_passed),
            c(&self.proxy_build),
            c(&self.proxy_error)
        );
        let r = &self.resolve;
        let _ = writeln!(
            out,
            "# HELP velox_resolve_total Floating plugin tags looked up, by outcome.\n\
             # TYPE velox_resolve_total counter\n\
             velox_resolve_total{{outcome=\"resolved\"}} {}\n\
             velox_resolve_total{{outcome=\"cached\"}} {}\n\
             velox_resolve_total{{outcome=\"private\"}} {}\n\
             velox_resolve_total{{outcome=\"error\"}} {}",
            c(&r.resolved),
            c(&r.cached),
            c(&r.private),
            c(&r.error)
        );
        let _ = writeln!(
            out,
            "# HELP velox_cache_store_errors_total Storage failures, by reason and tier.\n\
             # TYPE velox_cache_store_errors_total counter\n\
             velox_cache_store_errors_total{{reason=\"full\",tier=\"local\"}} {}\n\
             velox_cache_store_errors_total{{reason=\"io\",tier=\"local\"}} {}\n\
             velox_cache_store_errors_total{{reason=\"corrupt\",tier=\"local\"}} {}\n\
             velox_cache_store_errors_total{{reason=\"corrupt\",tier=\"bucket\"}} {}",
            c(&self.store_errors_full),
            c(&self.store_errors_io),
            c(&self.store_errors_corrupt),
            c(&self.bucket.corrupt)
        );
        self.bucket.render(&mut out);
        self.registry.render(&mut out);
        out
    }
}
