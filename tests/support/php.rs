//! The PHP app of `tests/php/` (a stand-in for roadrunner-php/velox-app) under PHP's built-in
//! server: started on a free loopback port, ready once it answers, killed on drop.
//!
//! `php -S` with `PHP_CLI_SERVER_WORKERS` forks workers that outlive a killed parent, so the app
//! runs in a process group of its own and the whole group is killed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub struct PhpApp {
    child: Child,
    pub url: String,
    /// Shared with the app as `VELOX_APP_FIXTURES`: brotli fixtures and stream release files.
    pub fixtures: TempDir,
    log: PathBuf,
}

impl PhpApp {
    /// Starts the app. Without `php` on the PATH this fails, naming what to install: the proxy
    /// tests must run in CI, never skip.
    pub fn start() -> PhpApp {
        let router = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/php/router.php");
        let fixtures = tempfile::tempdir().expect("fixtures dir");
        let log = fixtures.path().join("php.log");
        let log_file = std::fs::File::create(&log).expect("php log");
        // A port the kernel just handed out and we let go of: free unless something races us.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("php")
            .args([
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
            .env("VELOX_APP_FIXTURES", fixtures.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `php` ({e}): the proxy tests need PHP's CLI \
                     (`apt-get install php-cli`; .ci/run installs it)"
                )
            });
        let mut app = PhpApp {
            child,
            url: format!("http://127.0.0.1:{port}"),
            fixtures,
            log,
        };
        app.wait_ready(port);
        app
    }

    /// Polls `/ready` until it answers 200; fails at once if php exits.
    fn wait_ready(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait php") {
                panic!("php exited ({status}):\n{}", self.log_text());
            }
            if ready(port) {
                return;
            }
            if Instant::now() > deadline {
                panic!("php did not answer within 20s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
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
        std::fs::read_to_string(&self.log).unwrap_or_default()
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

impl Drop for PhpApp {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group led by our own child (see `process_group(0)`).
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// PHP's built-in server started as a user starts it, `php -S ADDR -t tests/php/plain`, with no
/// settings of ours: the plain scripts there set no `Content-Length`, so every answer ends at the
/// close. One process, one request at a time, as `php -S` runs by default.
pub struct PlainPhp {
    pub url: String,
    daemon: super::daemon::Daemon,
    _dir: TempDir,
}

/// The plain scripts, as a user writes them (no framing of their own).
pub fn plain_scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/php/plain")
}

impl PlainPhp {
    pub fn start() -> PlainPhp {
        super::daemon::require("php", "php-cli");
        let dir = tempfile::tempdir().expect("php dir");
        let port = super::daemon::free_port();
        let mut cmd = Command::new("php");
        cmd.arg("-S")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-t")
            .arg(plain_scripts());
        let daemon = super::daemon::Daemon::start("php -S", cmd, &dir.path().join("log"), port);
        PlainPhp {
            url: format!("http://127.0.0.1:{port}"),
            daemon,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        self.daemon.log_text()
    }
}
