//! Runs the stand-in Velox used by the tests, so that the whole flow can be tried on one machine
//! without a real Velox:
//!
//! ```sh
//! cargo run --example fake_velox -- 127.0.0.1:9000 /tmp/velox-out 2s
//! ```
//!
//! Arguments: listen address, folder for the binaries it "builds", build delay (humantime), and
//! optionally the size of each binary in bytes (default 300 KiB), or the path of a real binary
//! every build writes a copy of (`/usr/bin/promtool`: what benches/compression.sh compresses).
//!
//! It behaves as Velox v3's `vx server` does (see `tests/support/fake_velox.rs`): a `request_id`
//! is required, a second caller for a hash being built gets `409 already_exists`, a caller that
//! disconnects cancels its build, and binaries land at `<folder>/<hash>/rr`, remembered by its
//! own cache until it stops.

#[path = "../tests/support/fake_velox.rs"]
#[allow(dead_code)]
mod fake_velox;
#[path = "../tests/support/process.rs"]
#[allow(dead_code)]
mod process;
#[path = "../tests/support/velox_proto.rs"]
#[allow(dead_code)]
mod velox_proto;

use std::path::PathBuf;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9000".into());
    let dir = PathBuf::from(args.next().unwrap_or_else(|| {
        std::env::temp_dir()
            .join("velox-out")
            .to_string_lossy()
            .into_owned()
    }));
    let delay = args
        .next()
        .map(|d| humantime::parse_duration(&d).unwrap_or_else(|e| panic!("bad delay {d:?}: {e}")))
        .unwrap_or(Duration::from_secs(2));
    let binary = args.next();
    let velox = fake_velox::FakeVelox::start_on(&addr, &dir);
    velox.set_delay(delay);
    match binary.as_deref().map(|b| (b, b.parse::<usize>())) {
        Some((_, Ok(size))) => velox.set_size(size),
        Some((path, Err(_))) => {
            let path = PathBuf::from(path);
            assert!(path.is_file(), "{} is not a file", path.display());
            velox.build_binary(&path);
        }
        None => {}
    }
    println!(
        "stand-in Velox on {} writing binaries under {} (each build takes {})",
        velox.url,
        dir.display(),
        humantime::format_duration(delay)
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
