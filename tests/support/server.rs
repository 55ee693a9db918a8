//! Starts the real `velox-cache` binary on loopback port 0 with a temp data dir, waits until it
//! reports its listeners, and kills it on drop (a [`Process`] underneath).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use super::process::{Process, Spawn};

pub const BIN: &str = env!("CARGO_BIN_EXE_velox-cache");

pub struct Server {
    process: Process,
    pub public: String,
    pub admin: String,
    /// The registry listener (`VELOX_CACHE_REGISTRY_LISTEN`, port 0 for any), as `http://host:port`.
    pub registry: Option<String>,
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
            // No free-space floor: a test's outcome must not depend on how full the host's disk
            // is (with the 1 GB default, a CI machine short of space evicted what a test had
            // just built). Tests of the floor set it themselves.
            env: vec![
                ("VELOX_CACHE_CACHE__MIN_FREE_GB".into(), "0".into()),
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

    /// Every pair of `vars`, as [`Options::env`] sets one.
    pub fn envs<K: AsRef<str>, V: AsRef<str>>(
        self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Options {
        vars.into_iter()
            .fold(self, |o, (k, v)| o.env(k.as_ref(), v.as_ref()))
    }

    /// One more command-line argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Options {
        self.args.push(arg.into());
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
            .arg(format!("--artifact-root={}", opts.artifact_root.display()));
        // Empty for a pool of builders (`velox.servers`), which `server_url` may not be set
        // beside.
        if !opts.server_url.is_empty() {
            cmd.arg(format!("--server-url={}", opts.server_url));
        }
        cmd.args(&opts.args).env("RUST_LOG", "info");
        clear_env(&mut cmd);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut process = Spawn::new("velox-cache", cmd, &log)
            .stdout_lines()
            .start()
            .expect("spawn velox-cache");
        let (mut public, mut admin, mut registry) = (None, None, None);
        let ready = process.wait_for(Duration::from_secs(30), |p| {
            while let Some(line) = p.line() {
                // Printed before the public listener's line.
                if let Some(a) = line.strip_prefix("velox-cache: registry listener on ") {
                    registry = Some(a.to_owned());
                } else if let Some(a) = line.strip_prefix("velox-cache: public listener on ") {
                    public = Some(a.to_owned());
                } else if let Some(a) = line.strip_prefix("velox-cache: admin listener on ") {
                    admin = Some(a.to_owned());
                }
            }
            public.clone().zip(admin.clone())
        });
        match ready {
            Ok((public, admin)) => Ok(Server {
                process,
                public,
                admin,
                registry,
                data_dir: opts.data_dir.clone(),
                log,
            }),
            Err(_) => {
                process.kill();
                Err(process.log_text())
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.public)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }

    /// The registry listener's base URL (no trailing slash); the test set
    /// `VELOX_CACHE_REGISTRY_LISTEN`.
    pub fn registry_url(&self) -> String {
        self.registry
            .clone()
            .expect("no registry listener: set VELOX_CACHE_REGISTRY_LISTEN")
    }

    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// The admin listener as `host:port`, the form `--admin-listen` takes.
    pub fn admin_addr(&self) -> String {
        self.admin.trim_start_matches("http://").to_owned()
    }

    /// The build route's URL.
    pub fn builds_url(&self) -> String {
        self.url("/_velox/v1/builds")
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        self.process.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(40))
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill(mut self) {
        self.process.kill();
    }

    /// Waits for the exit; past `within`, kills it and panics.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        self.process.wait_exit(within)
    }

    /// Waits for an exit with status 0 (after a SIGTERM); fails with the log otherwise.
    pub fn wait_success(&mut self, within: Duration) {
        self.process.wait_success(within)
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
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
