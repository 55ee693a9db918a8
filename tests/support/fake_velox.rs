//! A stand-in for a Velox v3 build server (`vx server`), written from Velox's source (module
//! `velox/v3`, `internal/cli/server/server.go`, connect-go v1.20.0), point by point:
//!
//! - Connect unary JSON at `POST /api.service.v1.BuildService/Build`; another method is 405 with
//!   `Allow: POST`, another content type 415 (connect-go handler.go:274-295); a bad
//!   `Connect-Timeout-Ms` is 400 (protocol_connect.go:117-128).
//! - The body is decoded as protojson with unknown fields discarded, and counted here
//!   ([`FakeVelox::unknown_fields`]); then validated as request.proto says, an absent or empty
//!   `request_id` included (`support/velox_proto.rs`).
//! - A missing `target_platform` becomes the host's before hashing (server.go:79-82).
//! - `409 already_exists` while the same hash builds, checked before the cache and for
//!   `force_rebuild` too (server.go:90-97); the lock goes when the handler returns.
//! - Its cache: a hit without `force_rebuild` answers the same path with the fixed logs text and
//!   does not look at the file (server.go:99-105). Simplified: entries never expire (Velox's go
//!   after 30 minutes or 100 newer builds, deleting their files); [`FakeVelox::delete_files`] and
//!   [`FakeVelox::vanish_next`] delete files the cache still names instead.
//! - A build writes `<out>/<hash>/rr` (builder.go:29, 254-261: built beside it, then renamed) and
//!   answers `{"path": ...}` without logs (server.go:141-142).
//! - The build is cancelled when its caller goes away or `Connect-Timeout-Ms` runs out (the
//!   request context, gomod.go:49, 77-86): the stand-in watches the connection and counts it in
//!   [`FakeVelox::killed`]. Only plain-TCP connections are watched; over TLS a disconnect is seen
//!   only if actix drops the handler.
//! - Failures are `internal` (HTTP 500) with the compiler's stderr tail (server.go:120,138,
//!   gomod.go:70-75); windows targets fail as v3 refuses them (builder.go:132-134).
//!
//! Tests steer it further: a script of answers for the next calls that real Velox never gives
//! (a proxy's HTTP error, other Connect codes, a hang, an arbitrary path), a scripted compile
//! failure, a build delay, a `request_id` to refuse, and counters. It runs on its own thread with
//! its own actix system, so it serves whatever the test thread is doing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use sha2::{Digest, Sha256};

use super::process::ThreadServer;
use super::velox_proto::{decode, go_failure, hash, host_platform, validate, Request};

/// What the stand-in does with one call.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// A bare HTTP status with a non-Connect body (a proxy's error page), before decoding.
    Status(u16),
    /// A Connect error with this code, before decoding.
    Code(&'static str),
    /// Answers nothing for this long (watching for the caller to leave), then `unavailable`.
    Hang(Duration),
    /// Answers success with this path, without building.
    Path(String),
    /// Goes through validation, the in-flight lock and the cache like a build, and then the
    /// compile fails with this stderr.
    Fail(String),
    /// Builds normally (the default when the script is empty).
    Build,
}

#[derive(Default)]
struct State {
    calls: usize,
    builds: usize,
    killed: usize,
    cache_hits: usize,
    unknown_fields: usize,
    script: VecDeque<Behavior>,
    delay: Duration,
    size: usize,
    building: HashSet<String>,
    cache: HashMap<String, PathBuf>,
    refused_ids: HashSet<String>,
    vanish: usize,
    requests: Vec<serde_json::Value>,
    timeouts_ms: Vec<u64>,
    /// While set, builds wait before writing their binary (see `hold`).
    held: bool,
    /// A real binary the builds write instead of made-up bytes (see `build_binary`).
    binary: Option<PathBuf>,
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
    server: ThreadServer,
}

/// A duplicate of the connection's socket, to see the caller go away (closed with the
/// connection's data when actix drops the connection).
struct ConnFd(OwnedFd);

/// Whether the peer has closed or reset the connection.
fn peer_gone(fd: &ConnFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.0.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: poll(2) on one valid pollfd, without waiting.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

fn connect_error(code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(StatusCode::from_u16(http_status_for(code)).expect("status"))
        .content_type("application/json")
        .json(serde_json::json!({"code": code, "message": message}))
}

/// connect-go's code to HTTP status table (protocol_connect.go:1281-1320).
fn http_status_for(code: &str) -> u16 {
    match code {
        "canceled" => 499,
        "invalid_argument" | "failed_precondition" | "out_of_range" => 400,
        "deadline_exceeded" => 504,
        "not_found" => 404,
        "already_exists" | "aborted" => 409,
        "permission_denied" => 403,
        "resource_exhausted" => 429,
        "unimplemented" => 501,
        "unavailable" => 503,
        "unauthenticated" => 401,
        _ => 500,
    }
}

/// Deterministic content for a build: `size` bytes derived from the hash and the build number.
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

/// How a wait inside the handler ended.
enum Waited {
    Done,
    CallerGone,
    DeadlineExceeded,
}

/// Sleeps `d` the way a Velox build runs: until done, the caller leaves, or the deadline.
/// With `hold`, the build also waits while the test holds builds (`FakeVelox::hold`).
async fn wait(
    d: Duration,
    conn: Option<&ConnFd>,
    deadline: Option<Instant>,
    hold: Option<&Arc<Mutex<State>>>,
) -> Waited {
    let end = Instant::now() + d;
    let held = || hold.is_some_and(|s| s.lock().expect("lock").held);
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|t| now >= t) {
            return Waited::DeadlineExceeded;
        }
        if conn.is_some_and(peer_gone) {
            return Waited::CallerGone;
        }
        if now >= end && !held() {
            return Waited::Done;
        }
        tokio::time::sleep(
            end.saturating_duration_since(now)
                .clamp(Duration::from_millis(1), Duration::from_millis(10)),
        )
        .await;
    }
}

/// Holds a hash in the in-flight set (`defer b.currentlyProcessing.Remove(hash)`), and counts a
/// build dropped before it ended (actix cancelling the handler) as killed.
struct InFlight {
    state: Arc<Mutex<State>>,
    hash: String,
    building: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.state.lock().expect("lock");
        s.building.remove(&self.hash);
        if self.building {
            s.killed += 1;
        }
    }
}

/// Deletes the file about to be answered when [`FakeVelox::vanish_next`] asked for it.
fn vanish_if_asked(shared: &Shared, path: &Path) {
    let vanish = {
        let mut s = shared.state.lock().expect("lock");
        let v = s.vanish > 0;
        s.vanish = s.vanish.saturating_sub(1);
        v
    };
    if vanish {
        let _ = std::fs::remove_file(path);
    }
}

async fn build(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let conn = req.conn_data::<ConnFd>();
    let timeout = req
        .headers()
        .get("connect-timeout-ms")
        .map(|v| v.to_str().unwrap_or("x").to_owned());
    let behavior = {
        let mut s = shared.state.lock().expect("lock");
        s.calls += 1;
        if let Some(t) = timeout.as_ref().and_then(|t| t.parse().ok()) {
            s.timeouts_ms.push(t);
        }
        if let Ok(v) = serde_json::from_slice(&body) {
            s.requests.push(v);
        }
        s.script.pop_front().unwrap_or(Behavior::Build)
    };
    let json = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return HttpResponse::UnsupportedMediaType()
            .insert_header(("Accept-Post", "application/json, application/proto"))
            .finish();
    }
    let deadline = match timeout {
        None => None,
        Some(t) if !t.is_empty() && t.len() <= 10 && t.bytes().all(|b| b.is_ascii_digit()) => {
            Some(Instant::now() + Duration::from_millis(t.parse().unwrap_or(0)))
        }
        Some(t) => {
            return connect_error("invalid_argument", &format!("parse timeout: {t:?}"));
        }
    };
    let mut fail = None;
    match behavior {
        Behavior::Status(code) => {
            return HttpResponse::build(StatusCode::from_u16(code).expect("status"))
                .content_type("text/html")
                .body("<html><body>upstream error</body></html>")
        }
        Behavior::Code(code) => return connect_error(code, &format!("scripted {code}")),
        Behavior::Hang(d) => {
            if let Waited::CallerGone = wait(d, conn, None, None).await {
                shared.state.lock().expect("lock").killed += 1;
            }
            return connect_error("unavailable", "hung");
        }
        Behavior::Path(p) => return HttpResponse::Ok().json(serde_json::json!({"path": p})),
        Behavior::Fail(stderr) => fail = Some(stderr),
        Behavior::Build => {}
    }
    let mut request: Request = match decode(&body) {
        Ok((r, unknown)) => {
            shared.state.lock().expect("lock").unknown_fields += unknown;
            r
        }
        Err(e) => return connect_error("invalid_argument", &e),
    };
    if let Err(e) = validate(&request) {
        return connect_error("invalid_argument", &e);
    }
    let refused = shared
        .state
        .lock()
        .expect("lock")
        .refused_ids
        .contains(&request.request_id);
    if refused {
        // Not a Velox rule: a refusal that has nothing to do with what is built.
        return connect_error(
            "invalid_argument",
            &format!(
                "validation error: request_id: {} is refused",
                request.request_id
            ),
        );
    }
    if request.target_platform.is_none() {
        request.target_platform = Some(host_platform());
    }
    let hash = hash(&request);
    let (mut guard, cached, delay, size) = {
        let mut s = shared.state.lock().expect("lock");
        if !s.building.insert(hash.clone()) {
            return connect_error(
                "already_exists",
                &format!("build {hash} is already in progress"),
            );
        }
        let guard = InFlight {
            state: Arc::clone(&shared.state),
            hash: hash.clone(),
            building: false,
        };
        let cached = s
            .cache
            .get(&hash)
            .cloned()
            .filter(|_| !request.force_rebuild);
        if cached.is_some() {
            s.cache_hits += 1;
        }
        (guard, cached, s.delay, s.size)
    };
    if let Some(path) = cached {
        vanish_if_asked(&shared, &path);
        return HttpResponse::Ok().json(serde_json::json!({
            "path": path,
            "logs": "cached output, logs are available only on the first build",
        }));
    }
    let os = request
        .target_platform
        .as_ref()
        .map(|p| p.os.clone())
        .unwrap_or_default();
    if os == "windows" {
        return connect_error(
            "internal",
            "building plugins: velox v3 does not support Windows targets",
        );
    }
    guard.building = true;
    let nonce = {
        let mut s = shared.state.lock().expect("lock");
        s.builds += 1;
        s.builds
    };
    match wait(delay, conn, deadline, Some(&shared.state)).await {
        Waited::Done => {}
        // guard.building stays set: its drop counts the kill. Nobody reads these answers.
        Waited::CallerGone => {
            return connect_error("internal", "building plugins: compile: context canceled")
        }
        Waited::DeadlineExceeded => {
            return connect_error(
                "internal",
                "building plugins: compile: context deadline exceeded",
            )
        }
    }
    guard.building = false;
    if let Some(stderr) = fail {
        return connect_error("internal", &go_failure("compile", &stderr));
    }
    let dir = shared.dir.join(&hash);
    let path = dir.join("rr");
    let built = dir.join(format!("rr.building-{nonce}"));
    let binary = shared.state.lock().expect("lock").binary.clone();
    let written = std::fs::create_dir_all(&dir)
        .and_then(|_| match &binary {
            Some(real) => std::fs::copy(real, &built).map(|_| ()),
            None => std::fs::write(&built, content(&hash, nonce, size)),
        })
        .and_then(|_| std::fs::rename(&built, &path));
    if let Err(e) = written {
        return connect_error("internal", &format!("building plugins: relocate: {e}"));
    }
    shared
        .state
        .lock()
        .expect("lock")
        .cache
        .insert(hash, path.clone());
    vanish_if_asked(&shared, &path);
    HttpResponse::Ok().json(serde_json::json!({"path": path}))
}

async fn method_not_allowed() -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .insert_header(("Allow", "POST"))
        .finish()
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
        let addr = addr.to_owned();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = ThreadServer::start("the stand-in Velox", move || {
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(web::Data::new(shared.clone()))
                    .app_data(web::PayloadConfig::new(8 * 1024 * 1024))
                    .service(
                        web::resource("/api.service.v1.BuildService/Build")
                            .route(web::post().to(build))
                            .default_service(web::to(method_not_allowed)),
                    )
            })
            .on_connect(|conn, ext| {
                if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                    if let Ok(fd) = tcp.as_fd().try_clone_to_owned() {
                        ext.insert(ConnFd(fd));
                    }
                }
            })
            .workers(1)
            .disable_signals()
            .shutdown_timeout(0);
            let server = match tls {
                Some(tls) => server.bind_rustls_0_23(&addr, tls),
                None => server.bind(&addr),
            }?;
            let bound = server.addrs()[0];
            Ok((bound, server.run()))
        });
        FakeVelox {
            url: format!("{scheme}://{}", server.addr),
            dir: dir.to_path_buf(),
            state,
            server,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("lock"))
    }

    /// The Build procedure's URL, for calling the stand-in directly.
    pub fn build_url(&self) -> String {
        format!("{}/api.service.v1.BuildService/Build", self.url)
    }

    /// Calls received, whatever they answered.
    pub fn calls(&self) -> usize {
        self.with(|s| s.calls)
    }

    /// Builds started (cache misses and forced rebuilds past validation and the in-flight lock).
    pub fn builds(&self) -> usize {
        self.with(|s| s.builds)
    }

    /// Builds cancelled before they finished because the caller went away or its
    /// `Connect-Timeout-Ms` ran out.
    pub fn killed(&self) -> usize {
        self.with(|s| s.killed)
    }

    /// Builds in progress now.
    pub fn in_progress(&self) -> usize {
        self.with(|s| s.building.len())
    }

    /// Answers from its own cache.
    pub fn cache_hits(&self) -> usize {
        self.with(|s| s.cache_hits)
    }

    /// JSON members it did not know and dropped, over all calls.
    pub fn unknown_fields(&self) -> usize {
        self.with(|s| s.unknown_fields)
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

    /// Drops what is left of the script: builds go back to normal.
    pub fn clear_script(&self) {
        self.with(|s| s.script.clear());
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

    /// Builds from now on write a copy of `binary` (a real Go program, such as Debian's
    /// `promtool`) as their `rr`, as a real Velox writes what `go build` made: the same build
    /// path, cache and answers, only real bytes instead of made-up ones.
    pub fn build_binary(&self, binary: &Path) {
        self.with(|s| s.binary = Some(binary.to_path_buf()));
    }

    /// Size of the binaries it writes.
    pub fn set_size(&self, size: usize) {
        self.with(|s| s.size = size);
    }

    /// Refuses requests carrying this `request_id` with `invalid_argument`, after validation: a
    /// refusal that has nothing to do with the binary asked for.
    pub fn refuse_request_id(&self, id: &str) {
        self.with(|s| s.refused_ids.insert(id.to_owned()));
    }

    /// Deletes every binary it wrote, keeping its cache entries, as a tmp cleaner would: its cache
    /// then answers paths that no longer exist.
    pub fn delete_files(&self) {
        let paths: Vec<PathBuf> = self.with(|s| s.cache.values().cloned().collect());
        for p in paths {
            let _ = std::fs::remove_file(p);
        }
    }

    /// The next `n` successful answers (built or cached) name a file that is deleted before the
    /// answer leaves: Velox's eviction racing its answer.
    pub fn vanish_next(&self, n: usize) {
        self.with(|s| s.vanish += n);
    }

    /// Stops serving (as on drop): Velox goes down.
    pub fn stop(&self) {
        self.server.stop();
    }
}
