//! Shared test support: the stand-in Velox, the real server as a child process, and an HTTP
//! client. Each test file uses part of it.
#![allow(dead_code)]

pub mod download;
pub mod fake_velox;
pub mod goproxy;
pub mod http10;
pub mod nginx;
pub mod php;
pub mod process;
pub mod server;
pub mod sse;
pub mod velox_process;
pub mod velox_proto;
pub mod webhook_sink;

use std::time::Duration;

use actix_web::http::header::HeaderMap;
use actix_web::web::Bytes;
use serde_json::{json, Value};
use tempfile::TempDir;

#[allow(unused_imports)]
pub use fake_velox::{Behavior, FakeVelox};
#[allow(unused_imports)]
pub use server::{Options, Server};

/// A temp dir, a stand-in Velox writing into it, and a server using both.
pub struct Harness {
    pub tmp: TempDir,
    pub velox: FakeVelox,
    pub opts: Options,
    pub server: Option<Server>,
}

impl Harness {
    pub fn start() -> Harness {
        Self::start_with(|o| o)
    }

    pub fn start_with(f: impl FnOnce(Options) -> Options) -> Harness {
        let tmp = tempfile::tempdir().expect("temp dir");
        let artifacts = tmp.path().join("velox-out");
        let velox = FakeVelox::start(&artifacts);
        let opts = f(Options::new(
            &tmp.path().join("data"),
            &velox.url,
            &artifacts,
        ));
        let server = Server::start(&opts);
        Harness {
            tmp,
            velox,
            opts,
            server: Some(server),
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    pub fn url(&self, path: &str) -> String {
        self.server().url(path)
    }

    pub fn builds_url(&self) -> String {
        self.url("/_velox/v1/builds")
    }

    /// Posts a build request (without headers) to the build route.
    pub async fn post(&self, req: &Value) -> Resp {
        post_json(&self.builds_url(), req, &[]).await
    }

    /// A GET on the admin listener, its body as JSON.
    pub async fn admin_json(&self, path: &str) -> Value {
        get(&self.server().admin_url(path), &[]).await.json()
    }

    /// The data dir, as a command-line argument.
    pub fn data_dir_arg(&self) -> String {
        self.opts.data_dir.display().to_string()
    }

    /// Starts the server again on the same data dir (after `take()`ing the old one).
    pub fn restart(&mut self) {
        self.server = Some(Server::start(&self.opts));
    }

    /// Starts the server again on the same data dir with changed options.
    pub fn restart_with(&mut self, f: impl FnOnce(Options) -> Options) {
        self.opts = f(self.opts.clone());
        self.restart();
    }

    pub fn take(&mut self) -> Server {
        self.server.take().expect("server running")
    }

    /// A graceful stop (SIGTERM) that must end in success.
    pub fn stop(&mut self) {
        let server = self.take();
        let log = server.log.clone();
        let status = server.terminate();
        assert!(
            status.success(),
            "velox-cache stopped with {status}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

/// A build request in the shape velox-app sends.
pub fn build_request(os: &str, arch: &str) -> Value {
    json!({
        "request_id": "b66d5617-64dd-419b-a68b-b002938320ab",
        "force_rebuild": false,
        "target_platform": {"os": os, "arch": arch},
        "rr_version": "v2025.1.2",
        "plugins": [
            {"module_name": "github.com/roadrunner-server/http/v5", "tag": "v5.2.7"},
            {"module_name": "github.com/roadrunner-server/grpc/v5", "tag": "v5.1.0"}
        ]
    })
}

/// A request that differs from others by `n` (its own key).
pub fn distinct_request(n: usize) -> Value {
    let mut v = build_request("linux", "amd64");
    v["plugins"][0]["tag"] = json!(format!("v5.2.{n}"));
    v
}

/// The `distinct_request`s of `ns`, one JSON line each (what `warm` reads).
pub fn request_lines(ns: impl IntoIterator<Item = usize>) -> Vec<String> {
    ns.into_iter()
        .map(|n| serde_json::to_string(&distinct_request(n)).expect("json"))
        .collect()
}

/// Writes `lines` to `path`, one a line; the path as a command-line argument.
pub fn write_lines(path: &std::path::Path, lines: &[String]) -> String {
    std::fs::write(path, lines.join("\n")).expect("write lines");
    path.display().to_string()
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts a docs/http-api.md error.
    pub fn assert_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
        let v = self.json();
        assert_eq!(v["error"], code, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        v
    }
}

pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(120))
        .disable_redirects()
        .finish()
}

async fn finish(
    res: Result<
        awc::ClientResponse<
            impl futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
        >,
        awc::error::SendRequestError,
    >,
) -> Resp {
    let mut res = res.expect("request sent");
    let body = res
        .body()
        .limit(512 * 1024 * 1024)
        .await
        .expect("body read");
    Resp {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body,
    }
}

pub async fn post_json(url: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
    let mut req = client()
        .post(url)
        .insert_header(("content-type", "application/json"));
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    finish(req.send_body(serde_json::to_vec(body).expect("json")).await).await
}

pub async fn post_raw(url: &str, body: Vec<u8>) -> Resp {
    let req = client()
        .post(url)
        .insert_header(("content-type", "application/json"));
    finish(req.send_body(body).await).await
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = client().get(url);
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    finish(req.send().await).await
}

pub async fn delete(url: &str) -> Resp {
    finish(client().delete(url).send().await).await
}

/// A request with any method (`body`, if any, sent as `application/octet-stream`); its answer.
pub async fn request(method: &str, url: &str, body: Option<&[u8]>) -> Resp {
    let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
    let req = client().request(method, url);
    match body {
        Some(b) => {
            finish(
                req.insert_header(("content-type", "application/octet-stream"))
                    .send_body(b.to_vec())
                    .await,
            )
            .await
        }
        None => finish(req.send().await).await,
    }
}

/// An `Authorization` value for `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Makes a token through the admin listener's `POST /v1/tokens`, authorised by `admin_token`;
/// the 201 answer's JSON (with `token`, the secret, shown this once).
pub async fn create_token(s: &Server, admin_token: &str, fields: &Value) -> Value {
    let r = post_json(
        &s.admin_url("/v1/tokens"),
        fields,
        &[("authorization", &bearer(admin_token))],
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

pub async fn head(url: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = client().head(url);
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    finish(req.send().await).await
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Polls `f` until it is true, for at most `within`.
pub async fn eventually(within: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Reads one metric's value from the admin listener.
pub async fn metric(server: &Server, name: &str) -> f64 {
    let resp = get(&server.admin_url("/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&resp.body);
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
}

/// Every file below `dir` (none when it does not exist).
pub fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}
