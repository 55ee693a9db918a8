//! A stand-in Go module proxy, written from the GOPROXY protocol as go.dev/ref/mod describes it
//! ("GOPROXY protocol" and "Module proxies"):
//!
//! - `GET $base/$module/@v/list`: known versions, one per line;
//! - `GET $base/$module/@v/$query.info`: `{"Version": "...", "Time": "..."}` for a version or a
//!   query a proxy may resolve (a branch name resolves to a pseudo-version);
//! - `GET $base/$module/@latest`: the same JSON for the latest version;
//! - module paths and versions "case-encoded": each upper-case letter is `!` and its lower case,
//!   so a request naming an upper-case letter directly is not found;
//! - an unknown module or version answers 404 (or 410) with a plain-text reason.
//!
//! Switches: move a module's `@latest`, answer 500, hang, or answer slowly; counters of what was
//! asked and of how many requests were under way at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

use super::process::ThreadServer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Every request answers 500.
    Fail,
    /// Every request waits far longer than any client should.
    Hang,
    /// Every request waits this long, then answers as `Normal` would.
    Slow(Duration),
}

#[derive(Default)]
struct Module {
    latest: Option<String>,
    /// Tag or query → version.
    queries: HashMap<String, String>,
}

struct State {
    mode: Mode,
    modules: HashMap<String, Module>,
    /// Every path asked, decoded.
    asked: Vec<String>,
    /// Requests under way now, and the most there ever were at once.
    active: usize,
    max_active: usize,
}

/// Counts a request as under way until dropped (a client that gives up drops the handler).
struct Active(Arc<Mutex<State>>);

impl Active {
    fn enter(state: &Arc<Mutex<State>>) -> Active {
        let mut s = state.lock().expect("lock");
        s.active += 1;
        s.max_active = s.max_active.max(s.active);
        Active(Arc::clone(state))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.lock() {
            s.active -= 1;
        }
    }
}

pub struct GoProxy {
    pub url: String,
    state: Arc<Mutex<State>>,
    _server: ThreadServer,
}

/// Reverses the case encoding; `None` for a path that names an upper-case letter directly (not
/// a valid encoded path) or a `!` not followed by a lower-case letter.
fn decode(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut bang = false;
    for c in s.chars() {
        if bang {
            if !c.is_ascii_lowercase() {
                return None;
            }
            out.push(c.to_ascii_uppercase());
            bang = false;
        } else if c == '!' {
            bang = true;
        } else if c.is_ascii_uppercase() {
            return None;
        } else {
            out.push(c);
        }
    }
    (!bang).then_some(out)
}

fn info(version: &str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(format!(
            r#"{{"Version":"{version}","Time":"2025-01-30T12:00:00Z"}}"#
        ))
}

fn not_found(what: &str) -> HttpResponse {
    HttpResponse::NotFound()
        .content_type("text/plain; charset=utf-8")
        .body(format!("not found: {what}"))
}

async fn handle(req: HttpRequest, state: web::Data<Arc<Mutex<State>>>) -> HttpResponse {
    // The raw path, percent-decoded once (as a Go proxy's HTTP server would see it).
    let raw = req.uri().path().trim_start_matches('/').to_owned();
    let path = percent_decode(&raw);
    let _active = Active::enter(&state);
    let mode = {
        let mut s = state.lock().expect("lock");
        s.asked.push(path.clone());
        s.mode
    };
    match mode {
        Mode::Normal => {}
        Mode::Slow(delay) => tokio::time::sleep(delay).await,
        Mode::Fail => return HttpResponse::InternalServerError().body("proxy failure"),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(120)).await;
            return HttpResponse::GatewayTimeout().finish();
        }
    }
    let (module_enc, rest) = match path.split_once("/@") {
        Some((m, r)) => (m.to_owned(), r.to_owned()),
        None => return not_found(&path),
    };
    let Some(module) = decode(&module_enc) else {
        return HttpResponse::BadRequest().body("invalid escaped module path");
    };
    let s = state.lock().expect("lock");
    let Some(m) = s.modules.get(&module) else {
        return not_found(&format!("module {module}"));
    };
    if rest == "latest" {
        return match &m.latest {
            Some(v) => info(v),
            None => not_found(&format!("{module}@latest")),
        };
    }
    if rest == "v/list" {
        let mut versions: Vec<&String> = m.queries.values().collect();
        versions.sort();
        versions.dedup();
        let body: String = versions.iter().map(|v| format!("{v}\n")).collect();
        return HttpResponse::Ok().content_type("text/plain").body(body);
    }
    if let Some(q) = rest
        .strip_prefix("v/")
        .and_then(|r| r.strip_suffix(".info"))
    {
        let Some(query) = decode(q) else {
            return HttpResponse::BadRequest().body("invalid escaped version");
        };
        return match m.queries.get(&query) {
            Some(v) => info(v),
            None if m.queries.values().any(|v| *v == query) => info(&query),
            None => HttpResponse::Gone().body(format!("not found: {module}@{query}")),
        };
    }
    not_found(&path)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl GoProxy {
    pub fn start() -> GoProxy {
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Normal,
            modules: HashMap::new(),
            asked: Vec::new(),
            active: 0,
            max_active: 0,
        }));
        let shared = Arc::clone(&state);
        let server = ThreadServer::start("the stand-in Go proxy", move || {
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(web::Data::new(Arc::clone(&shared)))
                    .default_service(web::get().to(handle))
            })
            .workers(1)
            .disable_signals()
            .shutdown_timeout(0)
            .bind("127.0.0.1:0")?;
            let bound = server.addrs()[0];
            Ok((bound, server.run()))
        });
        GoProxy {
            url: format!("http://{}", server.addr),
            state,
            _server: server,
        }
    }

    /// Sets `module`'s `@latest` (and makes that version known).
    pub fn set_latest(&self, module: &str, version: &str) {
        let mut s = self.state.lock().expect("lock");
        let m = s.modules.entry(module.to_owned()).or_default();
        m.latest = Some(version.to_owned());
        m.queries.insert(version.to_owned(), version.to_owned());
    }

    /// Makes `query` (a tag or a branch) resolve to `version` for `module`.
    pub fn set_query(&self, module: &str, query: &str, version: &str) {
        let mut s = self.state.lock().expect("lock");
        s.modules
            .entry(module.to_owned())
            .or_default()
            .queries
            .insert(query.to_owned(), version.to_owned());
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().expect("lock").mode = mode;
    }

    /// Every path asked so far, case-encoding kept as sent.
    pub fn asked(&self) -> Vec<String> {
        self.state.lock().expect("lock").asked.clone()
    }

    /// The most requests that were under way at once.
    pub fn max_concurrent(&self) -> usize {
        self.state.lock().expect("lock").max_active
    }

    /// How many requests named `module` (as sent, encoded).
    pub fn asked_for(&self, encoded_module: &str) -> usize {
        self.asked()
            .iter()
            .filter(|p| p.starts_with(&format!("{encoded_module}/@")))
            .count()
    }
}
