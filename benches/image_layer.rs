//! The cost of an image layer (SPEC §17, docs/images.md): `oci::build_layer` over a 100 MB
//! binary, which is one SHA-256 pass over the binary (checked against its digest), one over the
//! tar (the diff id), gzip at the registry's level and one SHA-256 over the gzip'd bytes. Two
//! inputs: a Go executable repeated to the size (compresses as a real `rr` does) and
//! incompressible bytes (gzip's worst case, what the stand-in Velox writes). Median of several
//! runs, reading from memory and writing to a file in the temp dir, as the server writes one.
//!
//! ```sh
//! cargo bench --bench image_layer                           # 100 MB, 5 runs
//! VELOX_BENCH_LAYER_MB=300 VELOX_BENCH_RUNS=3 cargo bench --bench image_layer
//! VELOX_BENCH_GO_BINARY=/path/to/rr cargo bench --bench image_layer
//! ```

use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use velox_cache::oci::{build_layer, layer::LEVEL};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `size` bytes of `seed` repeated.
fn repeated(seed: &[u8], size: usize) -> Vec<u8> {
    seed.iter().copied().cycle().take(size).collect()
}

/// `size` bytes that do not compress: a SHA-256 chain.
fn incompressible(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 32);
    let mut block = Sha256::digest(b"velox-cache image layer bench").to_vec();
    while out.len() < size {
        out.extend_from_slice(&block);
        block = Sha256::digest(&block).to_vec();
    }
    out.truncate(size);
    out
}

fn run(label: &str, binary: &[u8], runs: usize) {
    let digest: [u8; 32] = Sha256::digest(binary).into();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("layer.tar.gz");
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..runs {
        let started = Instant::now();
        let file = std::fs::File::create(&path).expect("layer file");
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let facts =
            build_layer(binary, binary.len() as u64, &digest, &mut out, LEVEL).expect("layer");
        out.flush().expect("flush");
        out.get_ref().sync_all().expect("sync");
        times.push(started.elapsed());
        size = facts.size;
    }
    times.sort();
    let median: Duration = times[times.len() / 2];
    let mb = binary.len() as f64 / 1e6;
    println!(
        "{label:<34} {mb:.0} MB -> {:.1} MB ({:.0}%): median {:.0} ms, min {:.0} ms, max {:.0} ms ({:.0} MB/s)",
        size as f64 / 1e6,
        100.0 * size as f64 / binary.len() as f64,
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        mb / median.as_secs_f64()
    );
}

fn main() {
    let size = env("VELOX_BENCH_LAYER_MB", 100) * 1_000_000;
    let runs = env("VELOX_BENCH_RUNS", 5).max(1);
    let go = std::env::var("VELOX_BENCH_GO_BINARY").unwrap_or_else(|_| "/usr/bin/skopeo".into());
    println!(
        "image layer of a {} MB binary, gzip level {LEVEL}, {runs} runs",
        size / 1_000_000
    );
    match std::fs::read(&go) {
        Ok(seed) if !seed.is_empty() => run(
            &format!("Go executable ({go})"),
            &repeated(&seed, size),
            runs,
        ),
        _ => println!("(no Go executable at {go}: set VELOX_BENCH_GO_BINARY)"),
    }
    run("incompressible bytes", &incompressible(size), runs);
}
