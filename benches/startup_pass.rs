//! Hits while the start-up pass walks a large cache (BENCHMARKS.md): writes a data dir of N entries
//! (index, manifests and small blob files, as a server would have left them), starts the release
//! `velox-cache serve` on it, and times 1 KiB-range hits of one artifact from `CLIENTS`
//! keep-alive connections while the start-up pass runs, then for as long again after it ended.
//!
//! ```sh
//! cargo bench --bench startup_pass                        # 1,000,000 entries
//! VELOX_BENCH_ENTRIES=100000 cargo bench --bench startup_pass
//! ```
//! `VELOX_BENCH_DIR=/path` keeps the generated data dir there (and reuses it when it exists).
//! `CLIENTS` (4) connections send hits back to back, saturating the machine's two cores; with
//! `RATE=n` they send n hits per second between them instead.
//!
//! It also reports the server's memory: its RSS once it serves, and its RSS high-water mark
//! (`VmHWM` in `/proc/<pid>/status`) once the pass has ended, which is where a pass that
//! collects every entry, manifest or blob name shows.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest as _;
use velox_cache::builds::CacheKey;
use velox_cache::ids::Digest;
use velox_cache::store::{EntryRecord, Manifest, Store};

const BLOB: usize = 4096;

fn key(i: u64) -> CacheKey {
    CacheKey(sha2::Sha256::digest(i.to_be_bytes()).into())
}

fn blob_bytes(i: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOB];
    b[..8].copy_from_slice(&i.to_be_bytes());
    b
}

/// Writes `n` entries the way ingest leaves them (without its fsyncs, which would take hours).
/// Returns the digest of entry 0, the one the clients hit.
fn generate(root: &Path, n: u64) -> Result<Digest, Box<dyn std::error::Error>> {
    let store = Store::open(root)?;
    let started = Instant::now();
    let now = 1_750_000_000_000u64;
    let mut batch = Vec::with_capacity(10_000);
    let mut first = None;
    for i in 0..n {
        let bytes = blob_bytes(i);
        let digest = Digest(sha2::Sha256::digest(&bytes).into());
        first.get_or_insert(digest);
        let k = key(i);
        let blob = store.blob_path(&digest);
        std::fs::create_dir_all(blob.parent().ok_or("blob path")?)?;
        std::fs::write(&blob, &bytes)?;
        let manifest = Manifest {
            version: 1,
            key: k.to_hex(),
            digest: digest.to_hex(),
            size: BLOB as u64,
            created_ms: now + i,
            build_ms: 60_000,
            file_name: "rr".into(),
            request: serde_json::json!({"rr_version": "v2025.1.2", "n": i}),
        };
        let path = store.manifest_path(&k);
        std::fs::create_dir_all(path.parent().ok_or("manifest path")?)?;
        std::fs::write(&path, serde_json::to_vec_pretty(&manifest)?)?;
        batch.push((
            k,
            EntryRecord {
                digest,
                size: BLOB as u64,
                created_ms: now + i,
                last_access_ms: now + i,
                access_count: 0,
                build_ms: 60_000,
                file_name: "rr".into(),
            },
        ));
        if batch.len() == 10_000 {
            store.bulk_index(&batch)?;
            batch.clear();
        }
        if i > 0 && i % 100_000 == 0 {
            println!("  generated {i} entries ({:?})", started.elapsed());
        }
    }
    store.bulk_index(&batch)?;
    store.flush()?;
    println!("generated {n} entries in {:?}", started.elapsed());
    first.ok_or_else(|| "no entries".into())
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18_080)
}

/// One GET with a 1 KiB range on a keep-alive connection; the answer is read whole.
fn hit(conn: &mut BufReader<TcpStream>, request: &[u8]) -> std::io::Result<()> {
    conn.get_mut().write_all(request)?;
    let mut length = 0usize;
    let mut line = String::new();
    let mut status = true;
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        if status {
            if !line.starts_with("HTTP/1.1 206") {
                return Err(std::io::Error::other(format!("answer {line:?}")));
            }
            status = false;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line
            .to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().to_owned())
        {
            length = v.parse().map_err(std::io::Error::other)?;
        }
    }
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

fn report(name: &str, samples: &mut [Duration]) {
    if samples.is_empty() {
        println!("{name}: no samples");
        return;
    }
    samples.sort();
    println!(
        "{name}: {} hits, p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
        samples.len(),
        pct(samples, 0.5),
        pct(samples, 0.99),
        pct(samples, 0.999),
        samples[samples.len() - 1]
    );
}

fn load(rate: Option<f64>) -> String {
    rate.map_or("back to back".into(), |r| format!("{r} hits/s"))
}

/// A `kB` figure of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in MiB.
fn proc_mib(pid: u32, field: &str) -> Result<f64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status"))?;
    let kb: f64 = line
        .trim_start_matches(field)
        .trim_start_matches(':')
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb / 1024.0)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::var("VELOX_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let clients: usize = std::env::var("CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let rate: Option<f64> = std::env::var("RATE").ok().and_then(|v| v.parse().ok());
    let tmp = tempfile::tempdir()?;
    let root: PathBuf = std::env::var_os("VELOX_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("data"));
    let marker = root.join("bench-entries");
    let digest = match std::fs::read_to_string(&marker) {
        Ok(s) if s.split_whitespace().next() == Some(&n.to_string()) => {
            println!("reusing the data dir {} ({n} entries)", root.display());
            Digest::from_hex(s.split_whitespace().nth(1).ok_or("marker")?).ok_or("marker")?
        }
        _ => {
            println!("start-up pass benchmark: {n} entries in {}", root.display());
            let d = generate(&root, n)?;
            std::fs::write(&marker, format!("{n} {}", d.to_hex()))?;
            d
        }
    };
    // The page cache as after a restart of a busy machine: what the pass reads is mostly cached,
    // as the files were just written; nothing is dropped (that needs root and says little).

    let (listen, admin) = (port(), port());
    let log_path = tmp.path().join("server.log");
    let log = std::fs::File::create(&log_path)?;
    let server = Command::new(env!("CARGO_BIN_EXE_velox-cache"))
        .args(["serve", "--data-dir"])
        .arg(&root)
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--server-url", "http://127.0.0.1:9"])
        .env("RUST_LOG", "info")
        .env("VELOX_CACHE_CACHE__SCRUB_INTERVAL", "0")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let pid = server.id();
    let _server = Killed(server);
    let started = Instant::now();
    let request = format!(
        "GET /_velox/v1/artifacts/{} HTTP/1.1\r\nHost: bench\r\nRange: bytes=0-1023\r\n\r\n",
        digest.to_hex()
    )
    .into_bytes();
    let connect = || -> Option<BufReader<TcpStream>> {
        let s = TcpStream::connect(("127.0.0.1", listen)).ok()?;
        s.set_nodelay(true).ok()?;
        Some(BufReader::new(s))
    };
    while connect().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "serving after {:?}, RSS {:.0} MiB",
        started.elapsed(),
        proc_mib(pid, "VmRSS")?
    );

    let pass_done = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let during = Arc::new(Mutex::new(Vec::new()));
    let after = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for _ in 0..clients {
        let (pass_done, stop) = (Arc::clone(&pass_done), Arc::clone(&stop));
        let (during, after, request) = (Arc::clone(&during), Arc::clone(&after), request.clone());
        let mut conn = connect().ok_or("connect")?;
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let (mut d, mut a) = (Vec::new(), Vec::new());
            let gap = rate.map(|r| Duration::from_secs_f64(clients as f64 / r));
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(gap) = gap {
                    next += gap;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                let done = pass_done.load(Ordering::Relaxed);
                let t = Instant::now();
                hit(&mut conn, &request).map_err(|e| e.to_string())?;
                let took = t.elapsed();
                // A hit that began before the pass ended counts as during it.
                (if done { &mut a } else { &mut d }).push(took);
            }
            during.lock().map_err(|e| e.to_string())?.extend(d);
            after.lock().map_err(|e| e.to_string())?.extend(a);
            Ok(())
        }));
    }

    // The pass logs two lines when it ends: the reconciliation report, then the limits.
    let mut pass_took = None;
    while started.elapsed() < Duration::from_secs(3_600) {
        std::thread::sleep(Duration::from_millis(50));
        let text = std::fs::read_to_string(&log_path)?;
        if text.contains("start-up pass: the limits evicted") {
            pass_took = Some(started.elapsed());
            pass_done.store(true, Ordering::Relaxed);
            println!(
                "server memory after the pass: RSS {:.0} MiB, high-water mark (VmHWM) {:.0} MiB",
                proc_mib(pid, "VmRSS")?,
                proc_mib(pid, "VmHWM")?
            );
            break;
        }
    }
    let pass_took = pass_took.ok_or("the start-up pass did not end within an hour")?;
    std::thread::sleep(
        pass_took
            .min(Duration::from_secs(60))
            .max(Duration::from_secs(10)),
    );
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().map_err(|_| "a client panicked")??;
    }
    println!("start-up pass over {n} entries: {pass_took:?} (from the start of the process)");
    let text = std::fs::read_to_string(&log_path)?;
    for line in text
        .lines()
        .filter(|l| l.contains("start-up") || l.contains("ERROR"))
    {
        println!("  log: {line}");
    }
    report(
        &format!("hits during the pass ({clients} clients, {})", load(rate)),
        &mut during.lock().map_err(|e| e.to_string())?,
    );
    report(
        &format!("hits after the pass ({clients} clients, {})", load(rate)),
        &mut after.lock().map_err(|e| e.to_string())?,
    );
    Ok(())
}
