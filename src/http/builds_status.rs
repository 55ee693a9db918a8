//! Asynchronous builds (docs/http-api.md, "Asynchronous builds"): the `202 Accepted` answer to a
//! build request carrying `Prefer: respond-async`, and `GET /_velox/v1/builds/{key}`, the build's
//! status as JSON or as Server-Sent Events, CORS-readable by the origins the PHP app allowed
//! ([`super::cors_grants`]).
//!
//! A watcher of the event stream holds one [`BuildWatch`] (two `watch` receivers) and wakes only
//! when the build's state changes or its keep-alive timer fires: no watcher of a local build
//! polls.
//!
//! With a bucket (docs/object-storage.md), a key this replica knows nothing of is asked about
//! there: another replica's manifest makes it `ready`, another replica's live build lock
//! `building`. The local answer comes first and alone when it knows; a bucket that does not
//! answer gives 503 `storage_unavailable`. A watcher of another replica's build looks at the
//! bucket every [`REMOTE_POLL`].

use std::convert::Infallible;
use std::sync::Arc;

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{ConnectionType, StatusCode, Version};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use futures_util::Stream;
use serde::Serialize;

use super::AppState;
use crate::builds::resolve::Resolution;
use crate::builds::{BuildState, BuildWatch, CacheKey, KeyState};
use crate::config::Config;
use crate::error::ApiError;
use crate::store::shared::{Elsewhere, SharedStore};

/// What the 202 tells the client to wait before it first asks for the status.
const RETRY_AFTER_SECS: u32 = 2;

/// How often an event stream of another replica's build looks at the bucket.
const REMOTE_POLL: std::time::Duration = std::time::Duration::from_secs(2);
/// What a client asking about a key is told to wait when the bucket did not answer.
const BUCKET_RETRY_AFTER_SECS: u32 = 5;

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
    /// The floating tags resolved for the key, in full (`X-Build-Resolved` may be cut short).
    #[serde(skip_serializing_if = "Option::is_none")]
    resolved: Option<&'a [Resolution]>,
}

/// The status JSON of `key` in `state`.
fn status_json(
    key: &CacheKey,
    state: &BuildState,
    request_id: Option<&str>,
    resolved: Option<&[Resolution]>,
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
        resolved: resolved.filter(|r| !r.is_empty()),
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
            // 0: another replica's build, whose attempts this one cannot know.
            body.velox_attempts = Some(*velox_attempts).filter(|n| *n > 0);
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

/// The last event of a watcher of another replica's build that ended without a binary in the
/// bucket (it failed there; why is in that replica's log).
fn vanished_json(key: &CacheKey) -> Vec<u8> {
    let body = StatusBody {
        key: key.to_hex(),
        status: "failed",
        request_id: None,
        elapsed_ms: None,
        velox_attempts: None,
        artifact_url: None,
        size: None,
        digest: None,
        error: Some("build_failed"),
        message: Some(
            "the build on another replica ended without storing a binary; request it again to \
             build it"
                .into(),
        ),
        resolved: None,
    };
    serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"status\":\"failed\"}".to_vec())
}

/// What the bucket knows of a key this replica does not, as a state: `None` when it knows
/// nothing usable either.
fn remote_state(found: Elsewhere) -> Option<BuildState> {
    match found {
        Elsewhere::Built(m) => m.entry().ok().map(BuildState::Ready),
        Elsewhere::Building { elapsed } => Some(BuildState::Building {
            elapsed,
            velox_attempts: 0,
        }),
        Elsewhere::Unknown => None,
    }
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
    let resolved = state.builds.resolved(&key);
    resp.body(status_json(
        &key,
        &watch.state(),
        build_id,
        resolved.as_deref(),
        &state.config,
    ))
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
    let not_found = || {
        ApiError::not_found("no build has that key: none is cached, under way, or failed lately")
            .error_response()
    };
    let known = match state.builds.state(&key) {
        Ok(known) => known,
        Err(e) => return with_cors(e.to_api_error(&state.config).error_response()),
    };
    let mut remote = None;
    let (now, request_id, watch) = match known {
        Some(KeyState::InFlight(watch)) => (
            watch.state(),
            watch.request_id().map(Box::<str>::from),
            Some(watch),
        ),
        Some(KeyState::Ready(entry)) => (BuildState::Ready(entry), None, None),
        Some(KeyState::Failed(e, id)) => {
            (BuildState::Failed(e), id.as_deref().map(Box::from), None)
        }
        None => {
            let shared = Arc::clone(state.builds.shared());
            match shared.elsewhere(key).await {
                Ok(found) => match remote_state(found) {
                    Some(now) => {
                        remote = Some(shared);
                        (now, None, None)
                    }
                    None => return with_cors(not_found()),
                },
                Err(e) => {
                    log::warn!("status of {key}: the bucket did not answer: {e}");
                    let mut err = ApiError::storage_unavailable();
                    err.retry_after = Some(BUCKET_RETRY_AFTER_SECS);
                    return with_cors(err.error_response());
                }
            }
        }
    };
    let resolved = state.builds.resolved(&key);
    let mut resp = HttpResponse::Ok();
    resp.insert_header((header::CACHE_CONTROL, "no-store"))
        .append_header((header::VARY, "Accept"));
    let resp = if wants_events(&req) {
        // nginx buffers proxied answers unless told not to; an event stream must not wait.
        let mut stream = resp
            .insert_header((header::CONTENT_TYPE, "text/event-stream"))
            .insert_header(("x-accel-buffering", "no"))
            .streaming(events(
                key,
                now,
                request_id,
                resolved,
                Source { watch, remote },
                state.config.clone(),
            ));
        if req.version() < Version::HTTP_11 {
            // HTTP/1.0 has no chunked encoding: the stream ends with the connection.
            stream.head_mut().no_chunking(true);
            stream.head_mut().set_connection_type(ConnectionType::Close);
        }
        stream
    } else {
        resp.insert_header((header::CONTENT_TYPE, "application/json"))
            .body(status_json(
                &key,
                &now,
                request_id.as_deref(),
                resolved.as_deref(),
                &state.config,
            ))
    };
    with_cors(resp)
}

/// Where the changes of a watched build come from: this replica's build, or the bucket (another
/// replica's build, looked at every [`REMOTE_POLL`]); neither for a final state.
struct Source {
    watch: Option<BuildWatch>,
    remote: Option<Arc<dyn SharedStore>>,
}

/// One watcher's event stream: the state now, then each change, a comment line after every
/// `sse_keepalive` of silence, and the end after a final state.
fn events(
    key: CacheKey,
    first: BuildState,
    request_id: Option<Box<str>>,
    resolved: Option<Arc<[Resolution]>>,
    source: Source,
    config: Arc<Config>,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    struct Watcher {
        key: CacheKey,
        pending: Option<BuildState>,
        request_id: Option<Box<str>>,
        resolved: Option<Arc<[Resolution]>>,
        source: Source,
        last: Option<(u8, u32)>,
        /// When the last line went out (a remote watcher's keep-alive counts from it).
        sent: tokio::time::Instant,
        done: bool,
        config: Arc<Config>,
    }
    let start = Watcher {
        key,
        pending: Some(first),
        request_id,
        resolved,
        source,
        last: None,
        sent: tokio::time::Instant::now(),
        done: false,
        config,
    };
    const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";
    futures_util::stream::unfold(start, |mut w| async move {
        if w.done {
            return None;
        }
        loop {
            let keepalive = w.config.sse_keepalive;
            let next = match (w.pending.take(), &mut w.source) {
                (Some(state), _) => state,
                (
                    None,
                    Source {
                        watch: Some(watch), ..
                    },
                ) => {
                    tokio::select! {
                        state = watch.changed() => state,
                        _ = tokio::time::sleep(keepalive) => {
                            return Some((Ok(Bytes::from_static(KEEP_ALIVE)), w));
                        }
                    }
                }
                (
                    None,
                    Source {
                        remote: Some(remote),
                        ..
                    },
                ) => {
                    tokio::time::sleep(REMOTE_POLL.min(keepalive)).await;
                    match remote.elsewhere(w.key).await.map(remote_state) {
                        Ok(Some(state)) => state,
                        Ok(None) => {
                            w.done = true;
                            let json = vanished_json(&w.key);
                            return Some((Ok(event(&json)), w));
                        }
                        // Passing, perhaps: the build goes on without this replica's bucket.
                        Err(e) => {
                            log::warn!("status of {}: the bucket did not answer: {e}", w.key);
                            if w.sent.elapsed() >= keepalive {
                                w.sent = tokio::time::Instant::now();
                                return Some((Ok(Bytes::from_static(KEEP_ALIVE)), w));
                            }
                            continue;
                        }
                    }
                }
                (None, _) => return None,
            };
            let phase = phase(&next);
            if w.last == Some(phase) {
                if w.sent.elapsed() >= keepalive {
                    w.sent = tokio::time::Instant::now();
                    return Some((Ok(Bytes::from_static(KEEP_ALIVE)), w));
                }
                continue;
            }
            w.last = Some(phase);
            w.sent = tokio::time::Instant::now();
            w.done = next.is_final();
            let json = status_json(
                &w.key,
                &next,
                w.request_id.as_deref(),
                w.resolved.as_deref(),
                &w.config,
            );
            return Some((Ok(event(&json)), w));
        }
    })
}

/// One Server-Sent Event carrying `json`.
fn event(json: &[u8]) -> Bytes {
    let mut event = Vec::with_capacity(json.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(json);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use actix_web::test::TestRequest;

    use super::*;

    fn accept(values: &[&str]) -> bool {
        let mut req = TestRequest::default();
        for v in values {
            req = req.append_header((header::ACCEPT, *v));
        }
        wants_events(&req.to_http_request())
    }

    #[test]
    fn accept_chooses_events_or_json() {
        assert!(accept(&["text/event-stream"]));
        assert!(accept(&["Text/Event-Stream; charset=utf-8"]));
        assert!(accept(&["application/json;q=0.5, text/event-stream"]));
        assert!(accept(&["application/json", "text/event-stream"]));
        assert!(!accept(&[]));
        assert!(!accept(&["*/*"]));
        assert!(!accept(&["application/json"]));
        assert!(!accept(&["text/event-stream;q=0"]));
        assert!(!accept(&["text/event-stream;q=0.2, application/json"]));
    }

    #[test]
    fn each_state_carries_its_fields_only() {
        let config = Config::default();
        let key = CacheKey([7; 32]);
        let json = |state: &BuildState| -> serde_json::Value {
            serde_json::from_slice(&status_json(&key, state, Some("id"), None, &config))
                .expect("json")
        };
        let building = json(&BuildState::Building {
            elapsed: Duration::from_millis(1500),
            velox_attempts: 2,
        });
        assert_eq!(
            building,
            serde_json::json!({"key": key.to_hex(), "status": "building", "request_id": "id",
                "elapsed_ms": 1500, "velox_attempts": 2})
        );
        let failed = json(&BuildState::Failed(crate::builds::BuildError::Overloaded));
        assert_eq!(failed["status"], "failed");
        assert_eq!(failed["error"], "overloaded");
        assert!(failed.get("elapsed_ms").is_none() && failed.get("digest").is_none());
        assert!(failed.get("resolved").is_none());
        let list = [Resolution {
            module: "github.com/a/b".into(),
            asked: "latest".into(),
            version: "v1.2.3".into(),
        }];
        let queued = BuildState::Queued {
            elapsed: Duration::ZERO,
        };
        let with = serde_json::from_slice::<serde_json::Value>(&status_json(
            &key,
            &queued,
            None,
            Some(&list),
            &config,
        ))
        .expect("json");
        assert_eq!(
            with["resolved"],
            serde_json::json!([{"module": "github.com/a/b", "asked": "latest", "version": "v1.2.3"}])
        );
        let empty = status_json(&key, &queued, None, Some(&[]), &config);
        assert!(!String::from_utf8_lossy(&empty).contains("resolved"));
    }
}
