//! What counting costs a hit, and what a scrape of `/metrics` costs: today's hand-written
//! registry (`velox_cache::metrics`, plain atomics and a fixed-bucket histogram) against the
//! Prometheus org's `prometheus-client` crate holding the same series. BENCHMARKS.md has the
//! figures and which one is kept.
//!
//! ```sh
//! cargo bench --bench metrics
//! ```

use std::hint::black_box;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use velox_cache::metrics::{CacheTotals, DiskGauge, Gauges, Metrics};

#[path = "support/timing.rs"]
mod timing;
use timing::bench;

// The bounds of today's histograms (src/metrics/mod.rs).
const LOOKUP_BOUNDS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.01, 0.1,
];
const BUILD_BOUNDS: &[f64] = &[1.0, 5.0, 10.0, 30.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0];

type Labels = Vec<(&'static str, &'static str)>;

/// The series of today's `/metrics`, held by prometheus-client: the same names, labels and
/// histogram bounds (the crate adds `_total` to counters itself).
struct Client {
    registry: Registry,
    hits: Counter,
    lookup: Histogram,
}

fn client() -> Client {
    let mut registry = Registry::default();
    let hits = Counter::default();
    let lookup = Histogram::new(LOOKUP_BOUNDS.iter().copied());
    registry.register(
        "velox_cache_hits",
        "Build requests answered from the cache.",
        hits.clone(),
    );
    registry.register(
        "velox_cache_misses",
        "Build requests that needed a build.",
        Counter::<u64>::default(),
    );
    registry.register(
        "velox_cache_lookup_duration_seconds",
        "Time to compute the key and look it up.",
        lookup.clone(),
    );
    for (name, help) in [
        ("velox_cache_entries_count", "Entries in the cache."),
        ("velox_cache_size_bytes", "Bytes of blobs in the cache."),
        ("velox_builds_active", "Builds calling Velox now."),
        ("velox_builds_queued", "Builds waiting for a build slot."),
        (
            "velox_cache_disk_free_bytes",
            "Free bytes on the data dir's filesystem.",
        ),
        (
            "velox_cache_disk_total_bytes",
            "Size of the data dir's filesystem.",
        ),
        (
            "velox_cache_min_free_bytes",
            "The free space eviction keeps.",
        ),
        (
            "velox_velox_up",
            "1 unless Velox's last call found it unreachable.",
        ),
    ] {
        registry.register(name, help, Gauge::<i64>::default());
    }
    registry.register(
        "velox_build_duration_seconds",
        "Time a build took.",
        Histogram::new(BUILD_BOUNDS.iter().copied()),
    );
    for (name, help) in [
        (
            "velox_builds_coalesced",
            "Requests that waited on a build already under way.",
        ),
        ("velox_download_bytes", "Artifact bytes sent to clients."),
        (
            "velox_bucket_read_bytes",
            "Bytes downloaded from the bucket.",
        ),
        (
            "velox_bucket_written_bytes",
            "Bytes uploaded to the bucket.",
        ),
        ("velox_bucket_multipart_uploads", "Blobs uploaded in parts."),
        (
            "velox_bucket_lock_waits",
            "Builds that waited for another replica's build.",
        ),
        (
            "velox_bucket_lock_takeovers",
            "Expired build locks taken over.",
        ),
        (
            "velox_bucket_fills",
            "Blobs copied from the bucket into the local tier.",
        ),
        (
            "velox_bucket_corrupt",
            "Blobs in the bucket that did not hash to their name.",
        ),
    ] {
        registry.register(name, help, Counter::<u64>::default());
    }
    let ops = [
        "manifest_get",
        "manifest_put",
        "manifest_delete",
        "blob_head",
        "blob_get",
        "blob_put",
        "blob_delete",
        "lock_put",
        "lock_get",
        "lock_delete",
        "presign",
    ];
    let labelled: [(&str, &str, &str, &[&'static str]); 9] = [
        (
            "velox_builds",
            "Builds by outcome.",
            "status",
            &["success", "error", "timeout"],
        ),
        (
            "velox_velox_retries",
            "Calls to Velox made again.",
            "reason",
            &[
                "unreachable",
                "unavailable",
                "resource_exhausted",
                "aborted",
                "already_exists",
                "vanished",
            ],
        ),
        (
            "velox_cache_evictions",
            "Entries removed, by reason.",
            "reason",
            &["size", "count", "age", "manual", "free_space"],
        ),
        (
            "velox_proxy_requests",
            "Proxied requests by outcome.",
            "outcome",
            &["passed", "build", "error"],
        ),
        (
            "velox_resolve",
            "Floating plugin tags looked up, by outcome.",
            "outcome",
            &["resolved", "cached", "private", "error"],
        ),
        (
            "velox_cache_store_errors",
            "Storage failures, by reason and tier.",
            "reason",
            &["full", "io", "corrupt", "corrupt_bucket"],
        ),
        (
            "velox_bucket_requests",
            "Requests to the bucket, by operation.",
            "op",
            &ops,
        ),
        (
            "velox_bucket_errors",
            "Bucket requests that failed, by operation.",
            "op",
            &ops,
        ),
        (
            "velox_cache_index_reopens",
            "Reopens of the index, by result.",
            "result",
            &["ok", "error"],
        ),
    ];
    for (name, help, label, values) in labelled {
        let family = Family::<Labels, Counter>::default();
        // Every label present from the start, as today's renderer shows them.
        for v in values {
            drop(family.get_or_create(&vec![(label, *v)]));
        }
        registry.register(name, help, family);
    }
    Client {
        registry,
        hits,
        lookup,
    }
}

/// Runs `f` on two threads at once, 2,000,000 calls each, five rounds; prints the median round's
/// wall time per call on one thread.
fn contended(name: &str, f: impl Fn() + Sync) {
    const CALLS: u32 = 2_000_000;
    let mut rounds: Vec<Duration> = (0..5)
        .map(|_| {
            let barrier = std::sync::Barrier::new(2);
            let t = std::thread::scope(|s| {
                let run = || {
                    barrier.wait();
                    let t = std::time::Instant::now();
                    for _ in 0..CALLS {
                        f();
                    }
                    t.elapsed()
                };
                let a = s.spawn(run);
                let b = s.spawn(run);
                let a = a.join().unwrap_or_default();
                let b = b.join().unwrap_or_default();
                a.max(b)
            });
            t / CALLS
        })
        .collect();
    rounds.sort();
    println!(
        "{name}: median {:?} per call per thread (rounds {:?} .. {:?})",
        rounds[2], rounds[0], rounds[4]
    );
}

fn main() {
    let today = Metrics::default();
    let other = client();
    let took = Duration::from_micros(37);

    bench(
        "hit path, hand-written (counter add + histogram observe)",
        100_000,
        || {
            today.hits.add(1);
            today.lookup_duration.observe(black_box(took));
        },
    );
    bench(
        "hit path, prometheus-client (counter inc + histogram observe)",
        100_000,
        || {
            other.hits.inc();
            other.lookup.observe(black_box(took).as_secs_f64());
        },
    );

    // Both cores counting at once (two actix workers answering hits): what each pays when the
    // other touches the same counter and histogram.
    contended("hit path on two threads at once, hand-written", || {
        today.hits.add(1);
        today.lookup_duration.observe(black_box(took));
    });
    contended("hit path on two threads at once, prometheus-client", || {
        other.hits.inc();
        other.lookup.observe(black_box(took).as_secs_f64());
    });

    let gauges = Gauges {
        disk: Some(DiskGauge {
            free: 1 << 40,
            total: 1 << 41,
        }),
        min_free_bytes: 1 << 30,
        velox_up: true,
        index_reopens: (0, 0),
        index_snapshots: 0,
    };
    let totals = Some(CacheTotals {
        entries: 1_000_000,
        bytes: 1 << 40,
    });
    let mut size = (0, 0);
    bench("render /metrics, hand-written", 100, || {
        let mut text = today.render(black_box(totals));
        Metrics::render_gauges(&mut text, &gauges);
        size.0 = text.len();
        black_box(text);
    });
    bench("render /metrics, prometheus-client", 100, || {
        let mut text = String::with_capacity(4096);
        if encode(&mut text, &other.registry).is_err() {
            panic!("encoding failed");
        }
        size.1 = text.len();
        black_box(text);
    });
    println!(
        "bytes per scrape: hand-written {}, prometheus-client {}",
        size.0, size.1
    );
}
