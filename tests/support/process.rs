//! The one way the tests run a process they need for a while (the server under test, moto,
//! nginx, PHP-FPM, `php -S`, Python's `http.server`): spawned with its output in a log file,
//! waited for with a deadline until it is ready (its port takes connections, or any condition),
//! its log shown when it fails to get there, and killed on drop.
//!
//! Every child also gets `PR_SET_PDEATHSIG`, so it dies with the test even when the test
//! process is killed outright (no drop runs then). The signal follows the *thread* that spawned
//! the child: start processes from the test's own thread, not from a thread that ends first.
//!
//! [`ThreadServer`] is the same for the in-process stand-ins (Velox, the Go module proxy): an
//! actix server on a thread of its own, on a port the kernel chose, stopped on drop.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(20);

/// A free loopback port for a process that cannot be told to take port 0 (php -S, nginx,
/// moto, ...), or where nothing listens (a "Velox that is down").
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`), never from it: a port
/// the kernel hands out for `bind(0)` and we let go of is handed out again as the source port
/// of the next outgoing connection, and a test's own HTTP clients then took it before the
/// child bound it. Below that range nothing takes a port but a bind that names it, and a
/// counter shared by the test binary's threads never names one twice.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| {
            r.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u32>().ok())
        })
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(LOW);
    if span < 1_000 {
        // An unusual range leaves no room below it: the kernel's choice, as before.
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
    }
    // Each test binary starts somewhere else, so that a server a previous binary left in
    // TIME_WAIT is rarely met (and skipped by the bind check when it is).
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOW + (start + n) % span;
        if let Ok(port) = u16::try_from(port) {
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    panic!("no free loopback port between {LOW} and {ephemeral_low}");
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

/// Whether the tests run as root, where nginx and PHP-FPM must be told to keep that user.
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether something accepts connections on 127.0.0.1:`port`.
pub fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// How to start a [`Process`].
pub struct Spawn {
    name: String,
    cmd: Command,
    log: PathBuf,
    group: bool,
    stdout_lines: bool,
}

impl Spawn {
    /// `cmd` as `name` (in messages), its stdout and stderr appended to `log`.
    pub fn new(name: &str, cmd: Command, log: &Path) -> Spawn {
        Spawn {
            name: name.to_owned(),
            cmd,
            log: log.to_path_buf(),
            group: false,
            stdout_lines: false,
        }
    }

    /// Runs it in a process group of its own and kills the whole group: for masters that fork
    /// workers which would outlive a killed parent (nginx, PHP-FPM, `php -S` with workers).
    pub fn group(mut self) -> Spawn {
        self.group = true;
        self
    }

    /// Keeps stdout out of the log and hands it over line by line ([`Process::line`]): for a
    /// program that reports on stdout what a test must read (the server's listener addresses).
    pub fn stdout_lines(mut self) -> Spawn {
        self.stdout_lines = true;
        self
    }

    /// Spawns it; the error is the spawn's own (the program is not installed, say).
    pub fn start(self) -> std::io::Result<Process> {
        let Spawn {
            name,
            mut cmd,
            log,
            group,
            stdout_lines,
        } = self;
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let out = if stdout_lines {
            Stdio::piped()
        } else {
            Stdio::from(err.try_clone()?)
        };
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        if group {
            cmd.process_group(0);
        }
        // SAFETY: prctl(2) is async-signal-safe and touches only the child being set up.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let lines = child.stdout.take().map(|stdout| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    // Keep draining after the receiver is gone, so the child never blocks on a
                    // full pipe.
                    let _ = tx.send(line);
                }
            });
            rx
        });
        Ok(Process {
            name,
            child,
            log,
            group,
            lines,
            exited: None,
        })
    }
}

/// A server in a process group of its own (see [`Spawn::group`]), ready once
/// 127.0.0.1:`port` takes connections; panics with its log when it exits first or takes over
/// 20 s.
pub fn daemon(name: &str, cmd: Command, log: &Path, port: u16) -> Process {
    let mut p = Spawn::new(name, cmd, log)
        .group()
        .start()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    p.expect_port(port, Duration::from_secs(20));
    p
}

/// Why a process did not become ready.
#[derive(Debug)]
pub enum NotReady {
    /// It exited first, with this status.
    Exited(ExitStatus),
    /// It was still not ready when the deadline passed.
    TimedOut(Duration),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Exited(status) => write!(f, "exited ({status})"),
            NotReady::TimedOut(within) => write!(f, "was not ready within {within:?}"),
        }
    }
}

/// A running child process; killed (with its group, if it has one) on drop.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    group: bool,
    lines: Option<Receiver<String>>,
    exited: Option<ExitStatus>,
}

impl Process {
    /// Polls `ready` until it gives a value, the process exits, or `within` passes. A process
    /// that exits is asked once more, so that what it said before going is not missed.
    pub fn wait_for<T>(
        &mut self,
        within: Duration,
        mut ready: impl FnMut(&mut Process) -> Option<T>,
    ) -> Result<T, NotReady> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = ready(self) {
                return Ok(v);
            }
            if let Some(status) = self.try_wait() {
                return ready(self).ok_or(NotReady::Exited(status));
            }
            if Instant::now() > deadline {
                return Err(NotReady::TimedOut(within));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Like [`Process::wait_for`], and panics with the log when the process does not get there.
    pub fn expect_ready<T>(
        &mut self,
        within: Duration,
        ready: impl FnMut(&mut Process) -> Option<T>,
    ) -> T {
        self.wait_for(within, ready)
            .unwrap_or_else(|e| panic!("{} {e}:\n{}", self.name, self.log_text()))
    }

    /// Waits until 127.0.0.1:`port` takes connections; panics with the log when it does not.
    pub fn expect_port(&mut self, port: u16, within: Duration) {
        self.expect_ready(within, |_| listening(port).then_some(()));
    }

    /// The next line it wrote on stdout, if one is waiting (see [`Spawn::stdout_lines`]).
    pub fn line(&mut self) -> Option<String> {
        self.lines.as_ref()?.try_recv().ok()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Its exit status, once it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("wait for a child");
        }
        self.exited
    }

    /// Sends `signal` to the process alone (not its group).
    pub fn signal(&self, signal: libc::c_int) {
        if self.exited.is_none() {
            // SAFETY: kill(2) on our own child's pid, not yet reaped.
            unsafe {
                libc::kill(self.pid(), signal);
            }
        }
    }

    /// Waits for the exit; past `within`, kills it and panics.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "{} did not exit within {within:?}; its log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// [`Self::wait_exit`] for an exit with status 0: anything else fails the test with the
    /// status and the process's log.
    pub fn wait_success(&mut self, within: Duration) {
        let status = self.wait_exit(within);
        assert!(
            status.success(),
            "{} ended with {status}; its log:\n{}",
            self.name,
            self.log_text()
        );
    }

    /// SIGKILL (to the whole group, for a group), then reaps it.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            if self.group {
                // SAFETY: kill(2) on the process group led by our own child (`process_group(0)`).
                unsafe {
                    libc::kill(-self.pid(), libc::SIGKILL);
                }
            } else {
                let _ = self.child.kill();
            }
        } else if self.group {
            // The leader is gone; its workers may not be.
            // SAFETY: as above; the group id stays ours while members are left.
            unsafe {
                libc::kill(-self.pid(), libc::SIGKILL);
            }
        }
        if let Ok(status) = self.child.wait() {
            self.exited = Some(status);
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What it wrote to its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log under a line naming the process, for messages that show several logs.
    pub fn named_log(&self) -> String {
        format!("--- {} log ---\n{}", self.name, self.log_text())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An actix server of the tests' own on a thread with its own system (so that it serves
/// whatever the test thread is doing), stopped on drop.
pub struct ThreadServer {
    pub addr: SocketAddr,
    handle: ServerHandle,
}

impl ThreadServer {
    /// Runs `make` inside the new thread's system; it binds (port 0 for a free one) and returns
    /// the address bound and the server, not yet awaited. Panics naming `name` when it fails.
    pub fn start(
        name: &str,
        make: impl FnOnce() -> std::io::Result<(SocketAddr, actix_web::dev::Server)> + Send + 'static,
    ) -> ThreadServer {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                match make() {
                    Ok((addr, server)) => {
                        let _ = tx.send(Ok((addr, server.handle())));
                        let _ = server.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok((addr, handle))) => ThreadServer { addr, handle },
            Ok(Err(e)) => panic!("cannot start {name}: {e}"),
            Err(e) => panic!("{name} did not start within 20s: {e}"),
        }
    }

    /// Stops it without waiting (the stop runs on a thread of its own).
    pub fn stop(&self) {
        let handle = self.handle.clone();
        std::thread::spawn(move || actix_web::rt::System::new().block_on(handle.stop(false)));
    }
}

impl Drop for ThreadServer {
    fn drop(&mut self) {
        self.stop();
    }
}
