//! Metadata at scale (BENCHMARKS.md): sled open time, finding and evicting one victim per policy, and
//! hits recorded per second with batching, at 1,000,000 entries; and, for the record, what the Go
//! middleware's approach (one JSON file per entry, scanned to find a victim) costs at that size.
//!
//! ```sh
//! cargo bench --bench metadata                       # 1,000,000 entries
//! VELOX_BENCH_ENTRIES=100000 cargo bench --bench metadata
//! VELOX_BENCH_SKIP_SCAN=1 cargo bench --bench metadata   # without the directory-scan baseline
//! VELOX_BENCH_POLICY_ORDER=fifo,lfu,lru cargo bench --bench metadata   # policies in that order
//! VELOX_BENCH_SNAPSHOT_WRITES=0 cargo bench --bench metadata   # no snapshot while populating
//! ```
//!
//! The entries are written by a child process (the benchmark re-executed), killed with SIGKILL
//! once they are: the first open after that is the first open after a crash.

use std::time::{Duration, Instant};

use velox_cache::builds::{BuildRequest, CacheKey};
use velox_cache::config::EvictionPolicy;
use velox_cache::store::{EntryRecord, Limits, Store};

fn key(i: u64) -> CacheKey {
    use sha2::Digest;
    CacheKey(sha2::Sha256::digest(i.to_be_bytes()).into())
}

fn entry(i: u64, base: u64) -> EntryRecord {
    EntryRecord {
        digest: velox_cache::ids::Digest(key(i + (1 << 40)).0),
        size: 60 * 1024 * 1024,
        created_ms: base + i,
        last_access_ms: base + i,
        access_count: i % 17,
        build_ms: 60_000,
        file_name: "roadrunner-linux-amd64".into(),
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name}: p50 {:?}, p99 {:?}, max {:?} ({} samples)",
        pct(&samples, 0.5),
        pct(&samples, 0.99),
        samples[samples.len() - 1],
        samples.len()
    );
}

/// The child's half of the crash figure: populates `root` with `n` entries as the server indexes
/// them (snapshotting while running as `cache.index_snapshot_writes` says), prints `populated`,
/// and waits, index open, for the SIGKILL.
fn populate_and_wait(root: &std::path::Path, n: u64) -> Result<(), Box<dyn std::error::Error>> {
    let base = 1_700_000_000_000;
    let store = Store::open(root)?;
    // As the server does once a second when `cache.index_snapshot_writes` is set (docs/storage.md,
    // "Snapshots while running"); here every 100,000 writes, about once per chunk.
    // `VELOX_BENCH_SNAPSHOT_WRITES=0` turns it off (the crash-open figure then replays every
    // write).
    let snapshot_after = std::env::var("VELOX_BENCH_SNAPSHOT_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    store.set_snapshot_after(snapshot_after);
    let mut snapshots = Vec::new();
    let started = Instant::now();
    let chunk: Vec<u64> = (0..n).collect();
    for part in chunk.chunks(10_000) {
        let items: Vec<_> = part.iter().map(|&i| (key(i), entry(i, base))).collect();
        store.bulk_index(&items)?;
        let t = Instant::now();
        if store.snapshot_if_due() {
            snapshots.push(t.elapsed());
        }
    }
    println!(
        "populate: {:?} ({:.0} inserts/s)",
        started.elapsed(),
        n as f64 / started.elapsed().as_secs_f64()
    );
    println!(
        "writes since the last snapshot taken while running: {} (threshold {snapshot_after})",
        store.writes_since_snapshot()
    );
    if !snapshots.is_empty() {
        report(
            "snapshot while running (the index closed and reopened; requests wait this long)",
            snapshots,
        );
    }
    let on_disk: u64 = walk_size(&root.join("meta"));
    println!("sled size on disk: {:.1} MiB", on_disk as f64 / 1048576.0);
    println!("populated");
    use std::io::Write as _;
    std::io::stdout().flush()?;
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::var("VELOX_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    if let Some(root) = std::env::var_os("VELOX_BENCH_POPULATE_INTO") {
        return populate_and_wait(std::path::Path::new(&root), n);
    }
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("data");
    println!("metadata benchmark, {n} entries, in {}", root.display());

    // A crash: the entries are written by a child process (this benchmark again), killed with
    // SIGKILL once they are, its index still open: no flush at close, no snapshot at close.
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .env("VELOX_BENCH_POPULATE_INTO", &root)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let mut populated = false;
    for line in std::io::BufRead::lines(std::io::BufReader::new(out)) {
        let line = line?;
        if line == "populated" {
            populated = true;
            break;
        }
        println!("{line}");
    }
    child.kill()?;
    child.wait()?;
    if !populated {
        return Err("the populating process ended early".into());
    }
    // `VELOX_BENCH_KEEP_CRASHED=/path`: a copy of the crashed state, kept, for a profile of the
    // open (`perf record velox-cache cache stats --data-dir /path`).
    if let Some(keep) = std::env::var_os("VELOX_BENCH_KEEP_CRASHED") {
        copy_dir(&root, std::path::Path::new(&keep))?;
    }
    let t = Instant::now();
    drop(Store::open(&root)?);
    println!(
        "first open after the SIGKILL (replays the writes since the last snapshot): {:?}",
        t.elapsed()
    );

    // That open wrote a snapshot, as `serve` does after a graceful stop (it opens the index once
    // more and closes it): the opens from here are a start after a graceful stop.
    let mut opens = Vec::new();
    let mut store = None;
    for _ in 0..5 {
        drop(store.take());
        let t = Instant::now();
        let s = Store::open(&root)?;
        opens.push(t.elapsed());
        let set_aside = std::fs::read_dir(&root)?
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("meta.corrupt-"));
        assert!(!set_aside, "the index was set aside on reopen");
        store = Some(s);
    }
    let store = store.ok_or("no store")?;
    report(
        "open after a graceful stop (sled open + first/last of every tree)",
        opens,
    );

    // The hit decision: canonical key of a parsed request, then the sled lookup.
    let body = br#"{"request_id":"b66d5617-64dd-419b-a68b-b002938320ab","target_platform":{"os":"linux","arch":"amd64"},"rr_version":"v2025.1.2","plugins":[{"module_name":"github.com/roadrunner-server/http/v5","tag":"v5.2.7"},{"module_name":"github.com/roadrunner-server/grpc/v5","tag":"v5.1.0"},{"module_name":"github.com/roadrunner-server/logger/v5","tag":"v5.1.0"}]}"#;
    let (request, _) = BuildRequest::parse(body)?;
    let mut decide = Vec::new();
    for i in 0..20_000u64 {
        // The request's own key is not in this synthetic index, so the lookup goes to a present
        // key: the same tree descent plus the decode a real hit pays.
        let t = Instant::now();
        let k = std::hint::black_box(request.cache_key());
        let hit = store.lookup(&key(i * 48_271 % n))?;
        decide.push(t.elapsed());
        assert!(hit.is_some() && k != key(0));
    }
    report(
        "hit decision (canonical key + sled lookup and decode)",
        decide,
    );

    // The gigabytes written above (populate, the snapshots) are written back by the kernel
    // first, so that the evictions' flushes do not queue behind them (BENCHMARKS.md, "Where the
    // slow evictions fall"); `VELOX_BENCH_NO_SYNC=1` leaves them.
    if std::env::var_os("VELOX_BENCH_NO_SYNC").is_none() {
        let t = Instant::now();
        std::process::Command::new("sync").status()?;
        println!("sync before the evictions: {:?}", t.elapsed());
    }

    // `VELOX_BENCH_POLICY_ORDER=fifo,lfu,lru` measures the policies in another order (the first
    // one measured after the reopens pays for pages sled has not cached yet).
    let order = std::env::var("VELOX_BENCH_POLICY_ORDER").unwrap_or_else(|_| "lru,lfu,fifo".into());
    let mut policies = Vec::new();
    for name in order.split(',') {
        policies.push(match name.trim() {
            "lru" => EvictionPolicy::Lru,
            "lfu" => EvictionPolicy::Lfu,
            "fifo" => EvictionPolicy::Fifo,
            other => {
                return Err(format!("unknown policy {other} in VELOX_BENCH_POLICY_ORDER").into())
            }
        });
    }
    // As in the server (docs/storage.md, "Limits and eviction"): an enforcement takes its victims
    // out of the index, and their files are deleted after a flush by a background task; here
    // that flush and the deletions are timed on their own, right after each eviction.
    store.on_evictions(|| {});
    for policy in policies {
        let mut find = Vec::new();
        let mut evict = Vec::new();
        let mut reap = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            let victim = store.victim(policy, None)?;
            find.push(t.elapsed());
            assert!(victim.is_some());
            let entries = store.totals()?.entries;
            let limits = Limits {
                max_bytes: 0,
                max_entries: entries - 1,
                max_age: Duration::ZERO,
                policy,
                min_free_bytes: 0,
            };
            let t = Instant::now();
            let gone = store.enforce(&limits, None)?;
            evict.push(t.elapsed());
            assert_eq!(gone.len(), 1);
            let t = Instant::now();
            let reaped = store.reap_evictions()?;
            reap.push(t.elapsed());
            assert_eq!(reaped, 1);
        }
        report(&format!("{policy:?}: find the victim"), find);
        // Where the slow ones fall (the first after the reopens, or spread out: BENCHMARKS.md,
        // "Three runs on a quiet machine", asks which).
        let slow: Vec<String> = evict
            .iter()
            .enumerate()
            .filter(|(_, d)| **d > Duration::from_millis(1))
            .map(|(i, d)| format!("#{i} {d:?}"))
            .collect();
        report(
            &format!("{policy:?}: find and evict one victim (one transaction, write lock held)"),
            evict,
        );
        println!("{policy:?}: evictions over 1 ms: [{}]", slow.join(", "));
        report(
            &format!("{policy:?}: then its files (a flush without the lock, then the deletions)"),
            reap,
        );
    }

    // Hits: a hot set of 10,000 keys, counted in memory and written every 5 s worth of traffic.
    let hits = 1_000_000u64;
    let t = Instant::now();
    let mut written = Duration::ZERO;
    for i in 0..hits {
        store.note_hit(&key((i * 7_919) % 10_000 + 1_000));
        if i % 250_000 == 249_999 {
            let w = Instant::now();
            store.write_pending_hits()?;
            written += w.elapsed();
        }
    }
    let total = t.elapsed();
    println!(
        "hits: {hits} recorded in {total:?} = {:.0} hits/s (of which batch writes {written:?})",
        hits as f64 / total.as_secs_f64()
    );
    // The worst batch: 50,000 distinct keys hit once each, written in one transaction.
    for i in 0..50_000u64 {
        store.note_hit(&key(i * 13 % n + 500));
    }
    let w = Instant::now();
    store.write_pending_hits()?;
    println!(
        "one batch of 50,000 distinct keys written in {:?}",
        w.elapsed()
    );

    if std::env::var_os("VELOX_BENCH_SKIP_SCAN").is_none() {
        scan_baseline(dir.path(), n)?;
    }
    Ok(())
}

/// `cp -a from to`.
fn copy_dir(
    from: &std::path::Path,
    to: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cp -a {} {} failed", from.display(), to.display()).into())
    }
}

fn walk_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                walk_size(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

/// The Go middleware keeps `{hash}.json` per entry in one directory and scans them all to choose
/// victims. This writes `n` such files and times one scan that finds the LRU victim.
fn scan_baseline(tmp: &std::path::Path, n: u64) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tmp.join("go-style");
    std::fs::create_dir_all(&dir)?;
    let t = Instant::now();
    for i in 0..n {
        let k = key(i).to_hex();
        let json = format!(
            r#"{{"version":"1.0","hash":"{k}","binary_file":"{k}.bin","file_size":62914560,"rr_version":"v2025.1.2","platform":{{"os":"linux","arch":"amd64"}},"plugins":[{{"module_name":"github.com/roadrunner-server/http/v5","tag":"v5.2.7"}}],"created_at":{},"last_accessed":{},"access_count":{},"build_duration_ms":45000}}"#,
            1_700_000_000 + i,
            1_700_000_000 + i,
            i % 17
        );
        std::fs::write(dir.join(format!("{k}.json")), json)?;
    }
    println!("baseline: wrote {n} metadata files in {:?}", t.elapsed());
    // Cold-ish and warm scans: read every file, parse it, keep the oldest last_accessed.
    for label in ["first scan", "second scan"] {
        let t = Instant::now();
        let mut best: Option<(u64, String)> = None;
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p)?)?;
            let la = v["last_accessed"].as_u64().unwrap_or(u64::MAX);
            if best.as_ref().is_none_or(|(b, _)| la < *b) {
                best = Some((la, p.display().to_string()));
            }
        }
        println!(
            "baseline: {label} of {n} files to find one LRU victim: {:?}",
            t.elapsed()
        );
    }
    Ok(())
}
