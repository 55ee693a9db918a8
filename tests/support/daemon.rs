//! A server the tests start and stop (nginx, PHP-FPM, Python's `http.server`, `php -S`): run in
//! a process group of its own, its output in a log file, ready once its port takes connections,
//! and the whole group killed on drop (masters fork workers that would outlive a killed parent).

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

/// A loopback port the kernel just handed out and we let go of: free unless something races us.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Whether `program` can be run at all; the message says what to install when not.
pub fn require(program: &str, package: &str) {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "the tests need `{program}` (apt-get install {package}; scripts/test installs it)"
    );
}

impl Daemon {
    /// Starts `cmd` with its output in `log`, and waits until 127.0.0.1:`port` accepts a
    /// connection. Fails at once, with the log, if the program exits first.
    pub fn start(name: &str, mut cmd: Command, log: &Path, port: u16) -> Daemon {
        let out = std::fs::File::create(log).expect("daemon log");
        let err = out.try_clone().expect("daemon log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut daemon = Daemon {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = daemon.child.try_wait().expect("wait") {
                panic!("{name} exited ({status}):\n{}", daemon.log_text());
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return daemon;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not listen on port {port} within 20s:\n{}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        format!(
            "--- {} log ---\n{}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group led by our own child (see `process_group(0)`).
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Whether the tests run as root, where nginx and PHP-FPM must be told to keep that user.
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
