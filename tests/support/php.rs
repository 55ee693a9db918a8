//! The PHP app of `tests/php/` (a stand-in for roadrunner-php/velox-app) under PHP's built-in
//! server: started on a free loopback port, ready once it answers, killed on drop.
//!
//! `php -S` with `PHP_CLI_SERVER_WORKERS` forks workers that outlive a killed parent, so the app
//! runs in a process group of its own and the whole group is killed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::process::{daemon, free_port, require, Process, Spawn};

pub struct PhpApp {
    process: Process,
    pub url: String,
    /// Shared with the app as `VELOX_APP_FIXTURES`: brotli fixtures and stream release files.
    pub fixtures: TempDir,
}

impl PhpApp {
    /// Starts the app. Without `php` on the PATH this fails, naming what to install: the proxy
    /// tests must run in CI, never skip.
    pub fn start() -> PhpApp {
        let router = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/php/router.php");
        let fixtures = tempfile::tempdir().expect("fixtures dir");
        let log = fixtures.path().join("php.log");
        let port = free_port();
        let mut cmd = Command::new("php");
        cmd.args([
            "-d",
            "output_buffering=0",
            "-d",
            "zlib.output_compression=0",
            "-d",
            "post_max_size=64M",
            "-d",
            "memory_limit=256M",
            "-S",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg(&router)
        .env("PHP_CLI_SERVER_WORKERS", "4")
        .env("VELOX_APP_FIXTURES", fixtures.path());
        let mut process = Spawn::new("php", cmd, &log)
            .group()
            .start()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `php` ({e}): the proxy tests need PHP's CLI \
                     (`apt-get install php-cli`; .ci/run installs it)"
                )
            });
        // Ready once `/ready` answers 200; fails at once if php exits.
        process.expect_ready(Duration::from_secs(20), |_| ready(port).then_some(()));
        PhpApp {
            process,
            url: format!("http://127.0.0.1:{port}"),
            fixtures,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Lets a paused `/stream?release=NAME` go on.
    pub fn release(&self, name: &str) {
        std::fs::write(self.fixtures.path().join(name), b"go").expect("release file");
    }

    /// Writes a fixture file the app can serve (the brotli-encoded instruction).
    pub fn fixture(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.fixtures.path().join(name), bytes).expect("fixture");
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }
}

fn ready(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 200")
}

/// PHP's built-in server started as a user starts it, `php -S ADDR -t tests/php/plain`, with no
/// settings of ours: the plain scripts there set no `Content-Length`, so every answer ends at the
/// close. One process, one request at a time, as `php -S` runs by default.
pub struct PlainPhp {
    pub url: String,
    process: Process,
    _dir: TempDir,
}

/// The plain scripts, as a user writes them (no framing of their own).
pub fn plain_scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/php/plain")
}

impl PlainPhp {
    pub fn start() -> PlainPhp {
        require("php", "php-cli");
        let dir = tempfile::tempdir().expect("php dir");
        let port = free_port();
        let mut cmd = Command::new("php");
        cmd.arg("-S")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-t")
            .arg(plain_scripts());
        let process = daemon("php -S", cmd, &dir.path().join("log"), port);
        PlainPhp {
            url: format!("http://127.0.0.1:{port}"),
            process,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        self.process.named_log()
    }
}
