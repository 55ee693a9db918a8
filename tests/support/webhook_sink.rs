//! A webhook receiver for tests: an HTTP server on a loopback port the kernel chose, on a thread
//! of its own with its own actix system (so it answers whatever the test thread is doing), that
//! records every request and answers as the test scripts it.
//!
//! - Every request, whatever its method or path, is recorded ([`Recorded`]: method, path,
//!   lower-case headers, body bytes, arrival time) and answered `200` unless scripted.
//! - [`WebhookSink::fail_next`] / [`WebhookSink::reply_next`] queue answers for the next requests
//!   (a status, a status with `Retry-After`, or a hang before answering).
//! - [`WebhookSink::hold`] makes requests wait, unrecorded and unanswered, until
//!   [`WebhookSink::release`]: what a test needs to show a sender does not wait for its receiver.
//!
//! It depends on nothing else in `tests/support`, so `src/webhook.rs`'s unit tests include the
//! same file.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use tokio::sync::watch;

/// One request as the sink received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names in lower case; a repeated header's values joined with `, `.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// When it arrived (after any hold was released).
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "webhook body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A scripted answer for one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status, empty body.
    Status(u16),
    /// This status with `Retry-After` set to this value (as sent, so a test can send nonsense).
    RetryAfter(u16, String),
    /// Record, wait this long, then answer `200` (a sender that timed out has left by then).
    Hang(Duration),
}

#[derive(Default)]
struct State {
    script: VecDeque<Reply>,
    received: Vec<Recorded>,
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<State>>,
    gate: Arc<watch::Sender<bool>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct WebhookSink {
    pub addr: SocketAddr,
    shared: Shared,
    handle: ServerHandle,
}

impl WebhookSink {
    /// Starts on `127.0.0.1:0`; panics when it cannot.
    pub fn start() -> WebhookSink {
        let (gate, _) = watch::channel(false);
        let shared = Shared {
            state: Arc::default(),
            gate: Arc::new(gate),
        };
        let for_server = shared.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let bound = HttpServer::new(move || {
                    App::new()
                        .app_data(web::Data::new(for_server.clone()))
                        .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                        .default_service(web::to(receive))
                })
                .workers(1)
                .disable_signals()
                .shutdown_timeout(0)
                .bind("127.0.0.1:0");
                match bound {
                    Ok(server) => {
                        let addr = server.addrs()[0];
                        let server = server.run();
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
            Ok(Ok((addr, handle))) => WebhookSink {
                addr,
                shared,
                handle,
            },
            Ok(Err(e)) => panic!("cannot start the webhook sink: {e}"),
            Err(e) => panic!("the webhook sink did not start within 20s: {e}"),
        }
    }

    /// The URL to give a sender (`http://127.0.0.1:<port>/hook`).
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The next `n` requests are answered `status`.
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut st = self.shared.lock();
        st.script
            .extend(std::iter::repeat_n(Reply::Status(status), n));
    }

    /// The next request not already scripted is answered with `reply`.
    pub fn reply_next(&self, reply: Reply) {
        self.shared.lock().script.push_back(reply);
    }

    /// Requests wait, unrecorded and unanswered, until [`release`](Self::release).
    pub fn hold(&self) {
        self.shared.gate.send_replace(true);
    }

    pub fn release(&self) {
        self.shared.gate.send_replace(false);
    }

    /// What has been received so far, in order of arrival.
    pub fn received(&self) -> Vec<Recorded> {
        self.shared.lock().received.clone()
    }

    /// Waits until at least `n` requests have been received and returns all of them; panics,
    /// saying how many came, when fewer did within `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "the webhook sink received {} request(s) within {timeout:?}, expected {n}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        self.release();
        let handle = self.handle.clone();
        std::thread::spawn(move || actix_web::rt::System::new().block_on(handle.stop(false)));
    }
}

async fn receive(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let mut gate = shared.gate.subscribe();
    // Err only when the sender is gone, which cannot happen while `shared` holds it.
    let _ = gate.wait_for(|held| !held).await;
    let mut headers: HashMap<String, String> = HashMap::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_ascii_lowercase())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let reply = {
        let mut st = shared.lock();
        st.received.push(Recorded {
            method: req.method().to_string(),
            path: req.path().to_owned(),
            headers,
            body: body.to_vec(),
            at: Instant::now(),
        });
        st.script.pop_front()
    };
    match reply {
        None => HttpResponse::Ok().finish(),
        Some(Reply::Status(code)) => HttpResponse::build(status(code)).finish(),
        Some(Reply::RetryAfter(code, value)) => HttpResponse::build(status(code))
            .insert_header(("Retry-After", value))
            .finish(),
        Some(Reply::Hang(d)) => {
            tokio::time::sleep(d).await;
            HttpResponse::Ok().finish()
        }
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
