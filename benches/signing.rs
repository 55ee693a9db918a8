//! The cost of a `.minisig` (SPEC §18): `SigningKey::sign_minisig` over a 100 MB file, which is
//! one BLAKE2b-512 pass over the whole file (minisign's prehash) and two Ed25519 signatures.
//! Median of several runs, the file read from the page cache after a first warm-up pass.
//!
//! ```sh
//! cargo bench --bench signing                      # 100 MB, 7 runs
//! VELOX_BENCH_SIGN_MB=500 VELOX_BENCH_RUNS=5 cargo bench --bench signing
//! ```

use std::fs::File;
use std::io::{BufReader, Write};
use std::time::{Duration, Instant};

use velox_cache::trust::keys::SigningKey;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mb = env("VELOX_BENCH_SIGN_MB", 100);
    let runs = env("VELOX_BENCH_RUNS", 7).max(1);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("rr");
    {
        let mut file = File::create(&path)?;
        let mut block = vec![0u8; 1 << 20];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..mb {
            for b in block.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            file.write_all(&block)?;
        }
        file.sync_all()?;
    }
    let key = SigningKey::generate()?;
    let sign = || -> Result<Duration, Box<dyn std::error::Error>> {
        let start = Instant::now();
        let sig = key.sign_minisig(BufReader::new(File::open(&path)?), "bench")?;
        let took = start.elapsed();
        assert!(sig.contains("trusted comment: bench"));
        Ok(took)
    };
    sign()?; // warm-up: the file into the page cache
    let mut samples = (0..runs).map(|_| sign()).collect::<Result<Vec<_>, _>>()?;
    samples.sort();
    let median = samples[samples.len() / 2];
    let mbps = mb as f64 / median.as_secs_f64();
    println!(
        "sign_minisig over {mb} MB: median {median:.1?} of {runs} runs ({mbps:.0} MB/s), min {:.1?}, max {:.1?}",
        samples[0],
        samples[samples.len() - 1]
    );
    Ok(())
}
