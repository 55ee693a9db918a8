//! Starts the real `velox-cache` binary on loopback port 0 with a temp data dir, waits until it
//! reports its listeners, and kills it on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_velox-cache");

pub struct Server {
    child: Child,
    pub public: String,
    pub admin: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// What to start a server with.
#[derive(Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    pub server_url: String,
    pub artifact_root: PathBuf,
    /// Extra environment (`VELOX_CACHE_...`).
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// A command the binary runs under (`prlimit --nofile=1024:1024 --`), empty for none. It
    /// must exec the binary, so that the child's pid stays the server's.
    pub wrapper: Vec<String>,
}

impl Options {
    pub fn new(data_dir: &Path, server_url: &str, artifact_root: &Path) -> Options {
        Options {
            data_dir: data_dir.to_path_buf(),
            server_url: server_url.to_owned(),
            artifact_root: artifact_root.to_path_buf(),
            // Fast retries so that the retry tests take milliseconds.
            env: vec![
                ("VELOX_CACHE_RETRY__INITIAL_DELAY".into(), "20ms".into()),
                ("VELOX_CACHE_RETRY__MAX_DELAY".into(), "100ms".into()),
            ],
            args: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Options {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }
}

impl Server {
    pub fn start(opts: &Options) -> Server {
        Self::try_start(opts).unwrap_or_else(|log| panic!("velox-cache did not start:\n{log}"))
    }

    /// Starts the server; on failure returns what it logged.
    pub fn try_start(opts: &Options) -> Result<Server, String> {
        std::fs::create_dir_all(&opts.data_dir).expect("data dir");
        let log = opts.data_dir.with_file_name(format!(
            "{}.log",
            opts.data_dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("server")
        ));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let mut cmd = match opts.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(BIN);
                cmd
            }
            None => Command::new(BIN),
        };
        cmd.arg("serve")
            .arg("--listen=127.0.0.1:0")
            .arg("--admin-listen=127.0.0.1:0")
            .arg(format!("--data-dir={}", opts.data_dir.display()))
            .arg(format!("--server-url={}", opts.server_url))
            .arg(format!("--artifact-root={}", opts.artifact_root.display()))
            .args(&opts.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        clear_env(&mut cmd);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn velox-cache");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Keep draining so the child never blocks on a full pipe.
                    continue;
                }
            }
        });
        let (mut public, mut admin) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while public.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("velox-cache: public listener on ") {
                        public = Some(a.to_owned());
                    } else if let Some(a) = line.strip_prefix("velox-cache: admin listener on ") {
                        admin = Some(a.to_owned());
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(std::fs::read_to_string(&log).unwrap_or_default());
                }
            }
        }
        Ok(Server {
            child,
            public: public.unwrap_or_default(),
            admin: admin.unwrap_or_default(),
            data_dir: opts.data_dir.clone(),
            log,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.public)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        self.wait_exit(Duration::from_secs(40))
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("velox-cache did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion (for `config` and start-up failures).
pub fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null());
    clear_env(&mut cmd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run velox-cache");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Keeps the test runner's own `VELOX_CACHE_*` variables away from the server.
fn clear_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("VELOX_CACHE_") {
            cmd.env_remove(k);
        }
    }
}
