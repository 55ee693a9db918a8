//! A stand-in for a Velox build server (`vx server`) that speaks its Connect protocol as the real
//! one does (docs/velox.md): `POST /api.service.v1.BuildService/Build` with JSON, unknown fields
//! rejected with `invalid_argument`, the request validated, `409 already_exists` while the same
//! build is under way, the binary written to a folder and its path answered.
//!
//! Tests steer it: a script of behaviours for the next calls (HTTP errors, Connect codes, hangs,
//! odd paths), a build delay, and counters of the calls it received. It runs on its own thread
//! with its own actix system, so it serves whatever the test thread is doing.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What the stand-in does with one call, instead of building.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// A bare HTTP status with a non-Connect body (a proxy's error page).
    Status(u16),
    /// A Connect error with this code.
    Code(&'static str),
    /// Answers nothing for this long.
    Hang(Duration),
    /// Answers success with this path, without building.
    Path(String),
    /// Builds normally (the default when the script is empty).
    Build,
}

#[derive(Default)]
struct State {
    calls: usize,
    builds: usize,
    script: VecDeque<Behavior>,
    delay: Duration,
    size: usize,
    building: HashSet<String>,
    requests: Vec<serde_json::Value>,
    timeouts_ms: Vec<u64>,
    /// While set, builds wait before writing their binary (see `hold`).
    held: bool,
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<State>>,
    dir: PathBuf,
}

pub struct FakeVelox {
    pub url: String,
    pub dir: PathBuf,
    state: Arc<Mutex<State>>,
    handle: actix_web::dev::ServerHandle,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    arch: String,
}

#[derive(Deserialize, serde::Serialize, PartialEq, Eq, PartialOrd, Ord, Clone)]
#[serde(deny_unknown_fields)]
struct Plugin {
    #[serde(default, alias = "moduleName")]
    module_name: String,
    #[serde(default)]
    tag: String,
}

#[derive(Deserialize, serde::Serialize, PartialEq, Eq, PartialOrd, Ord, Clone)]
#[serde(deny_unknown_fields)]
struct Replace {
    #[serde(default)]
    old: String,
    #[serde(default)]
    new: String,
}

#[derive(Deserialize, serde::Serialize, PartialEq, Eq, PartialOrd, Ord, Clone)]
#[serde(deny_unknown_fields)]
struct Exclude {
    #[serde(default)]
    module: String,
    #[serde(default)]
    version: String,
}

/// Velox's `BuildRequest`, as strict as protojson: unknown fields are an error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Request {
    #[serde(default, alias = "requestId")]
    request_id: String,
    #[serde(default, alias = "forceRebuild")]
    force_rebuild: bool,
    #[serde(default, alias = "targetPlatform")]
    target_platform: Option<Platform>,
    #[serde(default, alias = "rrVersion")]
    rr_version: String,
    #[serde(default)]
    plugins: Vec<Plugin>,
    #[serde(default)]
    replaces: Vec<Replace>,
    #[serde(default)]
    excludes: Vec<Exclude>,
    #[serde(default)]
    race: bool,
    #[serde(default)]
    debug: bool,
}

fn connect_error(status: u16, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("status"))
        .content_type("application/json")
        .json(serde_json::json!({"code": code, "message": message}))
}

fn http_status_for(code: &str) -> u16 {
    match code {
        "invalid_argument" | "failed_precondition" | "out_of_range" => 400,
        "already_exists" | "aborted" => 409,
        "resource_exhausted" => 429,
        "unavailable" => 503,
        "deadline_exceeded" => 504,
        _ => 500,
    }
}

/// Velox's own checks, written independently of velox-cache's.
fn validate(r: &Request) -> Result<(), String> {
    let v = &r.rr_version;
    let hexlike = (7..=40).contains(&v.len())
        && v.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
    let semver = v.starts_with('v')
        && v[1..]
            .split('.')
            .take(3)
            .filter(|p| p.chars().next().is_some_and(|c| c.is_ascii_digit()))
            .count()
            == 3;
    if !(v == "master" || hexlike || semver) {
        return Err(format!("invalid rr_version {v:?}"));
    }
    if r.plugins.is_empty() {
        return Err("no plugins".into());
    }
    if r.plugins
        .iter()
        .any(|p| p.module_name.is_empty() || p.tag.is_empty())
    {
        return Err("plugin without module_name or tag".into());
    }
    if !r.request_id.is_empty() && r.request_id.len() != 36 {
        return Err("request_id is not a UUID".into());
    }
    Ok(())
}

/// Deterministic content for a build: `size` bytes derived from the key and the build number.
fn content(key: &str, nonce: usize, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 32);
    let mut block = Sha256::digest(format!("{key}/{nonce}").as_bytes()).to_vec();
    while out.len() < size {
        out.extend_from_slice(&block);
        block = Sha256::digest(&block).to_vec();
    }
    out.truncate(size);
    out
}

async fn build(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let timeout_ms = req
        .headers()
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let json_ok = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let (behavior, delay, size) = {
        let mut s = shared.state.lock().expect("lock");
        s.calls += 1;
        if let Some(t) = timeout_ms {
            s.timeouts_ms.push(t);
        }
        if let Ok(v) = serde_json::from_slice(&body) {
            s.requests.push(v);
        }
        (
            s.script.pop_front().unwrap_or(Behavior::Build),
            s.delay,
            s.size,
        )
    };
    if !json_ok {
        return HttpResponse::UnsupportedMediaType().finish();
    }
    match behavior {
        Behavior::Status(code) => {
            return HttpResponse::build(
                actix_web::http::StatusCode::from_u16(code).expect("status"),
            )
            .content_type("text/html")
            .body("<html><body>upstream error</body></html>")
        }
        Behavior::Code(code) => {
            return connect_error(http_status_for(code), code, &format!("scripted {code}"))
        }
        Behavior::Hang(d) => {
            tokio::time::sleep(d).await;
            return connect_error(503, "unavailable", "hung");
        }
        Behavior::Path(p) => {
            return HttpResponse::Ok().json(serde_json::json!({"path": p, "logs": "scripted path"}))
        }
        Behavior::Build => {}
    }
    let request: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return connect_error(400, "invalid_argument", &format!("proto: {e}")),
    };
    if let Err(e) = validate(&request) {
        return connect_error(400, "invalid_argument", &e);
    }
    let mut plugins = request.plugins.clone();
    plugins.sort();
    let mut replaces = request.replaces.clone();
    replaces.sort();
    let mut excludes = request.excludes.clone();
    excludes.sort();
    let platform = request
        .target_platform
        .as_ref()
        .map(|p| (p.os.clone(), p.arch.clone()));
    let key_src = serde_json::json!({
        "v": request.rr_version,
        "p": platform,
        "plugins": plugins,
        "r": replaces,
        "e": excludes,
        "race": request.race,
        "debug": request.debug,
    });
    let key = hex::encode(Sha256::digest(key_src.to_string().as_bytes()));
    let nonce = {
        let mut s = shared.state.lock().expect("lock");
        if !s.building.insert(key.clone()) {
            return connect_error(409, "already_exists", "this build is already in progress");
        }
        s.builds += 1;
        s.builds
    };
    tokio::time::sleep(delay).await;
    while shared.state.lock().expect("lock").held {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dir = shared.dir.join(format!("{}-{nonce}", &key[..16]));
    let path = dir.join("roadrunner");
    let written = std::fs::create_dir_all(&dir)
        .and_then(|_| std::fs::write(&path, content(&key, nonce, size)));
    shared.state.lock().expect("lock").building.remove(&key);
    if let Err(e) = written {
        return connect_error(500, "internal", &format!("cannot write the binary: {e}"));
    }
    HttpResponse::Ok().json(serde_json::json!({
        "path": path.to_string_lossy(),
        "logs": format!("built {key} (build #{nonce})"),
    }))
}

impl FakeVelox {
    /// Starts on a free loopback port, writing binaries under `dir`.
    pub fn start(dir: &Path) -> FakeVelox {
        Self::start_on("127.0.0.1:0", dir)
    }

    pub fn start_on(addr: &str, dir: &Path) -> FakeVelox {
        Self::serve(addr, dir, None)
    }

    /// Starts on a free loopback port speaking https with `tls`.
    pub fn start_tls(dir: &Path, tls: rustls::ServerConfig) -> FakeVelox {
        Self::serve("127.0.0.1:0", dir, Some(tls))
    }

    fn serve(addr: &str, dir: &Path, tls: Option<rustls::ServerConfig>) -> FakeVelox {
        std::fs::create_dir_all(dir).expect("artifact dir");
        let state = Arc::new(Mutex::new(State {
            size: 300 * 1024,
            ..State::default()
        }));
        let shared = Shared {
            state: Arc::clone(&state),
            dir: dir.to_path_buf(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let addr = addr.to_owned();
        let scheme = if tls.is_some() { "https" } else { "http" };
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(web::Data::new(shared.clone()))
                        .app_data(web::PayloadConfig::new(8 * 1024 * 1024))
                        .route("/api.service.v1.BuildService/Build", web::post().to(build))
                })
                .workers(1)
                .disable_signals()
                .shutdown_timeout(0);
                let server = match tls {
                    Some(tls) => server.bind_rustls_0_23(&addr, tls),
                    None => server.bind(&addr),
                }
                .expect("bind the stand-in Velox");
                let bound = server.addrs()[0];
                let server = server.run();
                tx.send((bound, server.handle())).expect("report address");
                let _ = server.await;
            });
        });
        let (bound, handle) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("stand-in Velox started");
        FakeVelox {
            url: format!("{scheme}://{bound}"),
            dir: dir.to_path_buf(),
            state,
            handle,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("lock"))
    }

    /// Calls received, whatever they answered.
    pub fn calls(&self) -> usize {
        self.with(|s| s.calls)
    }

    /// Builds actually run.
    pub fn builds(&self) -> usize {
        self.with(|s| s.builds)
    }

    /// The JSON bodies received, in order.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.with(|s| s.requests.clone())
    }

    /// The `Connect-Timeout-Ms` values received.
    pub fn timeouts_ms(&self) -> Vec<u64> {
        self.with(|s| s.timeouts_ms.clone())
    }

    /// Queues behaviours for the next calls.
    pub fn script(&self, behaviors: impl IntoIterator<Item = Behavior>) {
        self.with(|s| s.script.extend(behaviors));
    }

    /// How long each build takes.
    pub fn set_delay(&self, d: Duration) {
        self.with(|s| s.delay = d);
    }

    /// Holds every build (running or to come) until `hold(false)`: a build that stays under
    /// way for as long as a test needs, without guessing a delay.
    pub fn hold(&self, on: bool) {
        self.with(|s| s.held = on);
    }

    /// Size of the binaries it writes.
    pub fn set_size(&self, size: usize) {
        self.with(|s| s.size = size);
    }

    pub fn stop(&self) {
        let handle = self.handle.clone();
        std::thread::spawn(move || actix_web::rt::System::new().block_on(handle.stop(false)));
    }
}

impl Drop for FakeVelox {
    fn drop(&mut self) {
        self.stop();
    }
}
