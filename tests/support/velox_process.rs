//! The stand-in Velox as a process of its own, for the pool of builders (docs/builders.md):
//! several stand-ins are several processes, so that one can be killed with SIGKILL in the middle
//! of a build while the others go on, and started again on the same port.
//!
//! The test binary runs itself again as the stand-in: the test file has an entry test (named to
//! [`VeloxProcess::start`]) that calls [`serve_if_asked`] first. In the child, that serves a
//! [`FakeVelox`] on the address it was given until it is killed; it gains nothing over the
//! in-process stand-in. The test steers it as it steers the in-process one, through files
//! instead of method calls: builds are held while a file exists ([`VeloxProcess::hold`]), and
//! its counters are written to a file a few milliseconds apart ([`VeloxProcess::state`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::fake_velox::FakeVelox;
use super::process::{Process, Spawn};

const DIR: &str = "STAND_IN_VELOX_DIR";
const ADDR: &str = "STAND_IN_VELOX_ADDR";
const DELAY_MS: &str = "STAND_IN_VELOX_DELAY_MS";
const HOLD: &str = "STAND_IN_VELOX_HOLD";
const STATE: &str = "STAND_IN_VELOX_STATE";
const REFUSE: &str = "STAND_IN_VELOX_REFUSE_REQUEST_ID";
const READY: &str = "stand-in Velox listening on ";

/// What a stand-in process counted, as of `at_ms`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StandInState {
    /// When the counters were read (milliseconds since the epoch).
    pub at_ms: u64,
    /// Calls received, probes included.
    pub calls: usize,
    /// Builds started (past validation, the in-flight lock and its cache).
    pub builds: usize,
    /// Builds under way now.
    pub in_progress: usize,
    /// Whether builds are held (see [`VeloxProcess::hold`]).
    pub held: bool,
    /// The `request_id` of every call that carried one (probes carry none), in order.
    pub request_ids: Vec<String>,
}

impl StandInState {
    /// Calls that carried `request_id`.
    pub fn calls_with(&self, request_id: &str) -> usize {
        self.request_ids.iter().filter(|r| *r == request_id).count()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// In a stand-in child, serves until killed and never returns; elsewhere returns at once.
pub fn serve_if_asked() {
    let Ok(dir) = std::env::var(DIR) else { return };
    let addr = std::env::var(ADDR).unwrap_or_else(|_| "127.0.0.1:0".into());
    let velox = FakeVelox::start_on(&addr, Path::new(&dir));
    if let Some(ms) = std::env::var(DELAY_MS).ok().and_then(|v| v.parse().ok()) {
        velox.set_delay(Duration::from_millis(ms));
    }
    if let Ok(id) = std::env::var(REFUSE) {
        velox.refuse_request_id(&id);
    }
    let hold = std::env::var_os(HOLD).map(PathBuf::from);
    let state = std::env::var_os(STATE).map(PathBuf::from);
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "\n{READY}{}", velox.url);
        let _ = out.flush();
    }
    loop {
        let held = hold.as_ref().is_some_and(|h| h.exists());
        velox.hold(held);
        if let Some(state) = &state {
            let snapshot = StandInState {
                at_ms: now_ms(),
                calls: velox.calls(),
                builds: velox.builds(),
                in_progress: velox.in_progress(),
                held,
                request_ids: velox
                    .requests()
                    .iter()
                    .filter_map(|r| r["request_id"].as_str().map(str::to_owned))
                    .collect(),
            };
            let tmp = state.with_extension("tmp");
            let written = serde_json::to_vec(&snapshot)
                .map_err(std::io::Error::other)
                .and_then(|bytes| std::fs::write(&tmp, bytes))
                .and_then(|()| std::fs::rename(&tmp, state));
            if let Err(e) = written {
                eprintln!("stand-in Velox: cannot write its state: {e}");
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How to start a stand-in process.
#[derive(Clone, Default)]
pub struct StandIn {
    /// How long each build takes.
    pub delay: Duration,
    /// A `request_id` it refuses with `invalid_argument` (as [`FakeVelox::refuse_request_id`]).
    pub refuse_request_id: Option<String>,
}

/// A stand-in Velox in a process of its own, killed on drop.
pub struct VeloxProcess {
    pub name: String,
    pub url: String,
    /// Where it writes binaries (`<dir>/<hash>/rr`).
    pub dir: PathBuf,
    entry: String,
    settings: StandIn,
    hold: PathBuf,
    state: PathBuf,
    addr: String,
    process: Process,
}

impl VeloxProcess {
    /// Starts `name` under `root` (its binaries in `root/name`) on a free loopback port, running
    /// this test binary's `entry` test, which must call [`serve_if_asked`].
    pub fn start(entry: &str, root: &Path, name: &str, settings: StandIn) -> VeloxProcess {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("stand-in dir");
        let hold = root.join(format!("{name}.hold"));
        let state = root.join(format!("{name}.state.json"));
        let (process, url) = spawn(
            entry,
            name,
            &dir,
            "127.0.0.1:0",
            &settings,
            &hold,
            &state,
            root,
        );
        VeloxProcess {
            name: name.to_owned(),
            addr: url.trim_start_matches("http://").to_owned(),
            url,
            dir,
            entry: entry.to_owned(),
            settings,
            hold,
            state,
            process,
        }
    }

    /// SIGKILL: it dies at once, with whatever it was building; its port is free again.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port and folder (after [`VeloxProcess::kill`]); its counters
    /// start over.
    pub fn restart(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_file(&self.state);
        let root = self.dir.parent().expect("root").to_path_buf();
        let (process, _) = spawn(
            &self.entry,
            &self.name,
            &self.dir,
            &self.addr,
            &self.settings,
            &self.hold,
            &self.state,
            &root,
        );
        self.process = process;
    }

    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// Holds every build (running or to come) while `on`; returns once the process has seen it.
    pub fn hold(&self, on: bool) {
        if on {
            std::fs::write(&self.hold, b"held").expect("hold file");
        } else {
            let _ = std::fs::remove_file(&self.hold);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.state().held != on {
            assert!(
                std::time::Instant::now() < deadline,
                "stand-in {} did not see its hold file for 10s",
                self.name
            );
        }
    }

    /// Its counters, read after this call was made (so that every call it answered before is in
    /// them).
    pub fn state(&self) -> StandInState {
        let asked = now_ms();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let read = std::fs::read(&self.state)
                .ok()
                .and_then(|b| serde_json::from_slice::<StandInState>(&b).ok());
            if let Some(s) = read.filter(|s| s.at_ms > asked) {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "stand-in {} wrote no state for 10s:\n{}",
                self.name,
                self.process.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The digests of the binaries it wrote.
    pub fn digests(&self) -> Vec<String> {
        super::walk_files(&self.dir)
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n == "rr"))
            .map(|p| super::sha256_hex(&std::fs::read(p).expect("read a stand-in's binary")))
            .collect()
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn(
    entry: &str,
    name: &str,
    dir: &Path,
    addr: &str,
    settings: &StandIn,
    hold: &Path,
    state: &Path,
    root: &Path,
) -> (Process, String) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(exe);
    cmd.args([entry, "--exact", "--nocapture", "--test-threads=1"])
        .env(DIR, dir)
        .env(ADDR, addr)
        .env(DELAY_MS, settings.delay.as_millis().to_string())
        .env(HOLD, hold)
        .env(STATE, state);
    if let Some(id) = &settings.refuse_request_id {
        cmd.env(REFUSE, id);
    }
    let mut process = Spawn::new(
        &format!("stand-in Velox {name}"),
        cmd,
        &root.join(format!("{name}.log")),
    )
    .stdout_lines()
    .start()
    .expect("spawn a stand-in Velox");
    let url = process.expect_ready(Duration::from_secs(20), |p| {
        while let Some(line) = p.line() {
            // libtest writes `test <name> ... ` before the test runs, on the same line.
            if let Some((_, url)) = line.split_once(READY) {
                return Some(url.trim().to_owned());
            }
        }
        None
    });
    (process, url)
}
