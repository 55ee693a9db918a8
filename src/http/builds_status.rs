//! Asynchronous builds (docs/http-api.md, "Asynchronous builds"): the `202 Accepted` answer to a
//! build request carrying `Prefer: respond-async`, and `GET /_velox/v1/builds/{key}`, the build's
//! status as JSON or as Server-Sent Events. Also the CORS grants of the PHP app remembered per key,
//! so that a browser app on another origin can follow the build it started through the proxy.
//!
//! A watcher of the event stream holds one [`BuildWatch`] (two `watch` receivers) and wakes only
//! when the build's state changes or its keep-alive timer fires: no watcher polls.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use futures_util::Stream;
use serde::Serialize;
use tokio::time::Instant;

use super::AppState;
use crate::builds::{BuildState, BuildWatch, CacheKey, KeyState};
use crate::config::Config;
use crate::error::ApiError;

/// What the 202 tells the client to wait before it first asks for the status.
const RETRY_AFTER_SECS: u32 = 2;
/// How long the origins the PHP app allowed for a key are remembered, from the last grant.
const GRANT_TTL: Duration = Duration::from_secs(3600);
/// Most keys with remembered grants, and most origins per key.
const MAX_GRANTED_KEYS: usize = 10_000;
const MAX_ORIGINS_PER_KEY: usize = 16;

/// The status route's path for `key`.
pub fn status_path(key: &CacheKey) -> String {
    format!("/_velox/v1/builds/{key}")
}

/// docs/http-api.md's status JSON; fields that do not apply are left out.
#[derive(Serialize)]
struct StatusBody<'a> {
    key: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    elapsed_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    velox_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

/// The status JSON of `key` in `state`.
fn status_json(
    key: &CacheKey,
    state: &BuildState,
    request_id: Option<&str>,
    config: &Config,
) -> Vec<u8> {
    let mut body = StatusBody {
        key: key.to_hex(),
        status: "queued",
        request_id,
        elapsed_ms: None,
        velox_attempts: None,
        artifact_url: None,
        size: None,
        digest: None,
        error: None,
        message: None,
    };
    match state {
        BuildState::Queued { elapsed } => {
            body.elapsed_ms = Some(elapsed.as_millis() as u64);
        }
        BuildState::Building {
            elapsed,
            velox_attempts,
        } => {
            body.status = "building";
            body.elapsed_ms = Some(elapsed.as_millis() as u64);
            body.velox_attempts = Some(*velox_attempts);
        }
        BuildState::Ready(entry) => {
            let digest = entry.digest.to_hex();
            body.status = "ready";
            body.artifact_url = Some(format!("/_velox/v1/artifacts/{digest}"));
            body.size = Some(entry.size);
            body.digest = Some(digest);
        }
        BuildState::Failed(e) => {
            let err = e.to_api_error(config);
            body.status = "failed";
            body.error = Some(err.code.code());
            body.message = Some(err.message);
        }
    }
    serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"status\":\"unknown\"}".to_vec())
}

/// What changes between two events (`elapsed_ms` alone does not make one).
fn phase(state: &BuildState) -> (u8, u32) {
    match state {
        BuildState::Queued { .. } => (0, 0),
        BuildState::Building { velox_attempts, .. } => (1, *velox_attempts),
        BuildState::Ready(_) => (2, 0),
        BuildState::Failed(_) => (3, 0),
    }
}

/// Whether the client asked for `respond-async` (RFC 7240).
pub fn wants_async(req: &HttpRequest) -> bool {
    super::prefer::respond_async(req.headers())
}

/// Headers of the PHP app's instruction that the 202 does not copy: velox-cache sets its own.
const NOT_ON_202: &[&str] = &[
    "cache-control",
    "content-disposition",
    "location",
    "retry-after",
    "preference-applied",
    "access-control-expose-headers",
];

/// `202 Accepted` for a build under way: `Location` of its status, `Preference-Applied`,
/// `Retry-After`, and the status JSON. `extra` are the PHP app's headers in proxy mode; their
/// CORS grant is remembered for the status route and extended to velox-cache's own headers.
pub fn accepted(
    key: CacheKey,
    watch: &BuildWatch,
    request_id: Option<&str>,
    extra: Vec<(HeaderName, HeaderValue)>,
    state: &AppState,
) -> HttpResponse {
    state.async_cors.grant(key, &extra);
    let cors = extra
        .iter()
        .any(|(n, _)| n == header::ACCESS_CONTROL_ALLOW_ORIGIN);
    let mut resp = HttpResponse::build(StatusCode::ACCEPTED);
    for (name, value) in &extra {
        if !NOT_ON_202.contains(&name.as_str()) {
            resp.append_header((name.clone(), value.clone()));
        }
    }
    if cors {
        let mut exposed: Vec<String> = extra
            .iter()
            .filter(|(n, _)| n == header::ACCESS_CONTROL_EXPOSE_HEADERS)
            .filter_map(|(_, v)| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        for ours in [
            "Location",
            "Retry-After",
            "Preference-Applied",
            "X-Velox-Cache-Key",
            "X-Build-Request-ID",
        ] {
            if !exposed.iter().any(|t| t.eq_ignore_ascii_case(ours)) {
                exposed.push(ours.to_owned());
            }
        }
        resp.insert_header((header::ACCESS_CONTROL_EXPOSE_HEADERS, exposed.join(", ")));
    }
    resp.insert_header((header::LOCATION, status_path(&key)))
        .insert_header(("preference-applied", "respond-async"))
        .insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .append_header((header::VARY, "Prefer"))
        .insert_header(("x-velox-cache-key", key.to_hex()))
        .insert_header((header::CONTENT_TYPE, "application/json"));
    if let Some(id) = request_id {
        resp.insert_header(("x-build-request-id", id));
    }
    let build_id = watch.request_id().or(request_id);
    resp.body(status_json(&key, &watch.state(), build_id, &state.config))
}

/// Whether `Accept` asks for an event stream rather than JSON.
fn wants_events(req: &HttpRequest) -> bool {
    let (mut events, mut json) = (0.0f32, 0.0f32);
    for value in req.headers().get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "text/event-stream" => events = events.max(q),
                "application/json" => json = json.max(q),
                _ => {}
            }
        }
    }
    events > 0.0 && events >= json
}

/// `GET /_velox/v1/builds/{key}`: the status JSON, or with `Accept: text/event-stream` the
/// same as Server-Sent Events, one per change, ending after `ready` or `failed`.
pub async fn get_status(
    req: HttpRequest,
    key: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let Some(key) = CacheKey::from_hex(&key) else {
        return ApiError::not_found("no build has that key").error_response();
    };
    let cors = state
        .async_cors
        .headers_for(&key, req.headers().get(header::ORIGIN));
    let with_cors = |mut resp: HttpResponse| {
        for (name, value) in &cors {
            resp.headers_mut().append(name.clone(), value.clone());
        }
        resp
    };
    let known = match state.builds.state(&key) {
        Ok(Some(known)) => known,
        Ok(None) => {
            return with_cors(
                ApiError::not_found(
                    "no build has that key: none is cached, under way, or failed lately",
                )
                .error_response(),
            )
        }
        Err(e) => return with_cors(e.to_api_error(&state.config).error_response()),
    };
    let (now, request_id, watch) = match known {
        KeyState::InFlight(watch) => (
            watch.state(),
            watch.request_id().map(Box::<str>::from),
            Some(watch),
        ),
        KeyState::Ready(entry) => (BuildState::Ready(entry), None, None),
        KeyState::Failed(e, id) => (BuildState::Failed(e), id.as_deref().map(Box::from), None),
    };
    let mut resp = HttpResponse::Ok();
    resp.insert_header((header::CACHE_CONTROL, "no-store"))
        .append_header((header::VARY, "Accept"));
    let resp = if wants_events(&req) {
        // nginx buffers proxied answers unless told not to; an event stream must not wait.
        resp.insert_header((header::CONTENT_TYPE, "text/event-stream"))
            .insert_header(("x-accel-buffering", "no"))
            .streaming(events(key, now, request_id, watch, state.config.clone()))
    } else {
        resp.insert_header((header::CONTENT_TYPE, "application/json"))
            .body(status_json(
                &key,
                &now,
                request_id.as_deref(),
                &state.config,
            ))
    };
    with_cors(resp)
}

/// One watcher's event stream: the state now, then each change, a comment line after every
/// `sse_keepalive` of silence, and the end after a final state.
fn events(
    key: CacheKey,
    first: BuildState,
    request_id: Option<Box<str>>,
    watch: Option<BuildWatch>,
    config: std::sync::Arc<Config>,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    struct Watcher {
        key: CacheKey,
        pending: Option<BuildState>,
        request_id: Option<Box<str>>,
        watch: Option<BuildWatch>,
        last: Option<(u8, u32)>,
        done: bool,
        config: std::sync::Arc<Config>,
    }
    let start = Watcher {
        key,
        pending: Some(first),
        request_id,
        watch,
        last: None,
        done: false,
        config,
    };
    futures_util::stream::unfold(start, |mut w| async move {
        if w.done {
            return None;
        }
        loop {
            let next = match w.pending.take() {
                Some(state) => state,
                None => {
                    let keepalive = w.config.sse_keepalive;
                    let watch = w.watch.as_mut()?;
                    tokio::select! {
                        state = watch.changed() => state,
                        _ = tokio::time::sleep(keepalive) => {
                            return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), w));
                        }
                    }
                }
            };
            let phase = phase(&next);
            if w.last == Some(phase) {
                continue;
            }
            w.last = Some(phase);
            w.done = next.is_final();
            let json = status_json(&w.key, &next, w.request_id.as_deref(), &w.config);
            let mut event = Vec::with_capacity(json.len() + 8);
            event.extend_from_slice(b"data: ");
            event.extend_from_slice(&json);
            event.extend_from_slice(b"\n\n");
            return Some((Ok(Bytes::from(event)), w));
        }
    })
}

/// The CORS grants the PHP app gave on build instructions, per key: the origins its
/// `Access-Control-Allow-Origin` named (`*` included) and whether it allowed credentials.
#[derive(Default)]
pub struct CorsGrants {
    by_key: Mutex<HashMap<CacheKey, Grants>>,
}

struct Grants {
    at: Instant,
    /// (origin or `*`, credentials allowed)
    origins: Vec<(HeaderValue, bool)>,
}

impl CorsGrants {
    /// Remembers the grant in the instruction's headers, if there is one.
    pub fn grant(&self, key: CacheKey, headers: &[(HeaderName, HeaderValue)]) {
        let find = |name: &HeaderName| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let Some(origin) = find(&header::ACCESS_CONTROL_ALLOW_ORIGIN) else {
            return;
        };
        let credentials = find(&header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let Ok(mut by_key) = self.by_key.lock() else {
            return;
        };
        if by_key.len() >= MAX_GRANTED_KEYS && !by_key.contains_key(&key) {
            by_key.retain(|_, g| g.at.elapsed() < GRANT_TTL);
            if by_key.len() >= MAX_GRANTED_KEYS {
                let oldest = by_key.iter().min_by_key(|(_, g)| g.at).map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    by_key.remove(&oldest);
                }
            }
        }
        let grants = by_key.entry(key).or_insert_with(|| Grants {
            at: Instant::now(),
            origins: Vec::new(),
        });
        grants.at = Instant::now();
        grants.origins.retain(|(o, _)| o != origin);
        if grants.origins.len() >= MAX_ORIGINS_PER_KEY {
            grants.origins.remove(0);
        }
        grants.origins.push((origin.clone(), credentials));
    }

    /// The CORS headers for a status request from `origin` about `key`: its own origin when the
    /// app allowed it (with credentials if allowed), `*` when the app allowed any, else none.
    pub fn headers_for(
        &self,
        key: &CacheKey,
        origin: Option<&HeaderValue>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let Ok(by_key) = self.by_key.lock() else {
            return Vec::new();
        };
        let Some(grants) = by_key.get(key).filter(|g| g.at.elapsed() < GRANT_TTL) else {
            return Vec::new();
        };
        let mut out = vec![(header::VARY, HeaderValue::from_static("Origin"))];
        let exact = origin.and_then(|o| grants.origins.iter().find(|(g, _)| g == o));
        if let Some((origin, credentials)) = exact {
            out.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
            if *credentials {
                out.push((
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                ));
            }
        } else if grants.origins.iter().any(|(g, _)| g == "*") {
            out.push((
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> CacheKey {
        CacheKey([n; 32])
    }

    fn grant(origin: &'static str, credentials: bool) -> Vec<(HeaderName, HeaderValue)> {
        let mut h = vec![(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static(origin),
        )];
        if credentials {
            h.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        h
    }

    fn acao(h: &[(HeaderName, HeaderValue)]) -> Option<&str> {
        h.iter()
            .find(|(n, _)| n == header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .and_then(|(_, v)| v.to_str().ok())
    }

    #[test]
    fn an_origin_is_answered_only_where_the_app_allowed_it() {
        let g = CorsGrants::default();
        g.grant(key(1), &grant("https://app.example", true));
        g.grant(key(1), &grant("https://other.example", false));
        let app = HeaderValue::from_static("https://app.example");
        let evil = HeaderValue::from_static("https://evil.example");
        let h = g.headers_for(&key(1), Some(&app));
        assert_eq!(acao(&h), Some("https://app.example"));
        assert!(h
            .iter()
            .any(|(n, v)| n == header::ACCESS_CONTROL_ALLOW_CREDENTIALS && v == "true"));
        let other = HeaderValue::from_static("https://other.example");
        let h = g.headers_for(&key(1), Some(&other));
        assert_eq!(acao(&h), Some("https://other.example"));
        assert!(!h
            .iter()
            .any(|(n, _)| n == header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
        assert_eq!(acao(&g.headers_for(&key(1), Some(&evil))), None);
        assert_eq!(acao(&g.headers_for(&key(2), Some(&app))), None);
        assert!(g.headers_for(&key(2), Some(&app)).is_empty());
        // An instruction without CORS grants nothing.
        g.grant(key(3), &[]);
        assert!(g.headers_for(&key(3), Some(&app)).is_empty());
    }

    #[test]
    fn a_wildcard_grant_answers_any_origin() {
        let g = CorsGrants::default();
        g.grant(key(1), &grant("*", false));
        let any = HeaderValue::from_static("https://anyone.example");
        assert_eq!(acao(&g.headers_for(&key(1), Some(&any))), Some("*"));
        assert_eq!(acao(&g.headers_for(&key(1), None)), Some("*"));
    }

    #[test]
    fn the_grants_stay_bounded() {
        let g = CorsGrants::default();
        for n in 0..(MAX_ORIGINS_PER_KEY + 4) {
            let o = HeaderValue::from_str(&format!("https://o{n}.example")).expect("value");
            g.grant(key(1), &[(header::ACCESS_CONTROL_ALLOW_ORIGIN, o)]);
        }
        let by_key = g.by_key.lock().expect("lock");
        assert_eq!(by_key[&key(1)].origins.len(), MAX_ORIGINS_PER_KEY);
    }
}
