//! What builds this replica runs, for people (docs/console.md): the builds under way, the last
//! failures with their compiler message, and a stream of `started`, `finished` and `failed`
//! events (`GET /_velox/v1/builds`, `GET /_velox/v1/builds/events`).
//!
//! The service tells it of each build it runs; nothing here decides anything about a build.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::outcome::{BuildError, Outcome};
use super::velox::VeloxError;
use super::{BuildRequest, CacheKey};

/// A build being tracked; see [`Activity::track`].
pub(super) struct Tracked {
    activity: Arc<Activity>,
    key: CacheKey,
    ended: bool,
}

impl Tracked {
    pub(super) fn ended(mut self, outcome: &Outcome) {
        self.ended = true;
        self.activity.ended(self.key, outcome);
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.ended {
            let lost = Err(BuildError::Internal(
                "the build task ended without an outcome",
            ));
            self.activity.ended(self.key, &lost);
        }
    }
}

/// Failures kept for the list, newest first.
pub const KEPT_FAILURES: usize = 20;
/// Events a slow watcher may fall behind by before it is told it lagged.
const EVENT_BACKLOG: usize = 256;
/// The longest compiler output kept per failure (its tail: the error is at the end).
const MAX_LOGS: usize = 8 * 1024;

/// One event of the stream: its SSE name and its JSON.
#[derive(Debug, Clone)]
pub struct BuildEvent {
    pub kind: &'static str,
    pub data: Value,
}

struct Running {
    request: Value,
    started: SystemTime,
}

/// The builds under way and the recent failures.
pub struct Activity {
    running: Mutex<HashMap<CacheKey, Running>>,
    failures: Mutex<VecDeque<Value>>,
    events: broadcast::Sender<BuildEvent>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            running: Mutex::new(HashMap::new()),
            failures: Mutex::new(VecDeque::new()),
            events: broadcast::channel(EVENT_BACKLOG).0,
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a person wants to see of a request: never its `force_rebuild` or internal fields.
fn describe(key: &CacheKey, request: &BuildRequest, started: SystemTime) -> Value {
    let platform = request
        .target_platform
        .as_ref()
        .map(|p| format!("{}/{}", p.os, p.arch));
    json!({
        "key": key.to_hex(),
        "request_id": request.request_id(),
        "rr_version": request.rr_version,
        "plugins": request.plugins.iter().map(|p| json!({
            "module_name": p.module_name,
            "tag": p.tag,
        })).collect::<Vec<_>>(),
        "platform": platform,
        "started": rfc3339(started),
        "started_ms": millis(started),
    })
}

/// The tail of `logs`, at most [`MAX_LOGS`] bytes, cut at a character boundary.
fn tail(logs: &str) -> &str {
    if logs.len() <= MAX_LOGS {
        return logs;
    }
    let mut at = logs.len() - MAX_LOGS;
    while !logs.is_char_boundary(at) {
        at += 1;
    }
    &logs[at..]
}

/// The error's code, message and compiler output as a person reads them; never a path or a
/// storage cause (those stay in the server's log).
fn failure_of(e: &BuildError) -> (&'static str, String, Option<String>) {
    match e {
        BuildError::Velox(VeloxError::Failed { message, logs }) => (
            "build_failed",
            message.clone(),
            logs.as_deref().map(|l| tail(l).to_string()),
        ),
        BuildError::Velox(VeloxError::InvalidArgument(msg)) => {
            ("invalid_request", msg.clone(), None)
        }
        BuildError::Velox(VeloxError::Timeout) => {
            ("timeout", "the build did not finish in time".into(), None)
        }
        BuildError::Velox(VeloxError::NoBuilder(_)) => {
            ("velox_unavailable", "no Velox builder is up".into(), None)
        }
        BuildError::Velox(VeloxError::Unavailable(_)) => (
            "velox_unavailable",
            "Velox did not answer usefully".into(),
            None,
        ),
        BuildError::Overloaded => (
            "overloaded",
            "too many builds are running or waiting".into(),
            None,
        ),
        BuildError::Storage(_) => (
            "storage_unavailable",
            "the cache storage failed".into(),
            None,
        ),
        BuildError::Internal(_) => ("internal", "internal error".into(), None),
    }
}

impl Activity {
    /// Every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<BuildEvent> {
        self.events.subscribe()
    }

    fn send(&self, kind: &'static str, data: Value) {
        // No watcher is not an error.
        let _ = self.events.send(BuildEvent { kind, data });
    }

    /// A build of `key` starts. Unless [`Tracked::ended`] is called, dropping the guard (a task
    /// that panicked or whose worker stopped) reports the build as failed, so that it never
    /// stays listed as under way.
    pub(super) fn track(self: &Arc<Self>, key: CacheKey, request: &BuildRequest) -> Tracked {
        self.started(key, request);
        Tracked {
            activity: Arc::clone(self),
            key,
            ended: false,
        }
    }

    fn started(&self, key: CacheKey, request: &BuildRequest) {
        let now = SystemTime::now();
        let data = describe(&key, request, now);
        if let Ok(mut running) = self.running.lock() {
            running.insert(
                key,
                Running {
                    request: data.clone(),
                    started: now,
                },
            );
        }
        self.send("started", data);
    }

    /// The build of `key` ended with `outcome`.
    fn ended(&self, key: CacheKey, outcome: &Outcome) {
        let now = SystemTime::now();
        let Some(run) = self.running.lock().ok().and_then(|mut r| r.remove(&key)) else {
            return;
        };
        let mut data = run.request;
        data["finished"] = json!(rfc3339(now));
        data["seconds"] = json!(now
            .duration_since(run.started)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64());
        match outcome {
            Ok(built) => {
                data["digest"] = json!(built.entry.digest.to_hex());
                data["size"] = json!(built.entry.size);
                data["stored"] = json!(built.unstored.is_none());
                self.send("finished", data);
            }
            Err(e) => {
                let (code, message, logs) = failure_of(e);
                data["error"] = json!(code);
                data["message"] = json!(message);
                data["logs"] = json!(logs);
                if let Ok(mut failures) = self.failures.lock() {
                    failures.push_front(data.clone());
                    failures.truncate(KEPT_FAILURES);
                }
                self.send("failed", data);
            }
        }
    }

    /// `{"running": [...], "failures": [...]}`: the builds under way, oldest first, each with
    /// its `elapsed_seconds`, and the last failures, newest first.
    pub fn json(&self) -> Value {
        let now = SystemTime::now();
        let mut running: Vec<(SystemTime, Value)> = self
            .running
            .lock()
            .map(|r| {
                r.values()
                    .map(|b| {
                        let mut v = b.request.clone();
                        v["elapsed_seconds"] = json!(now
                            .duration_since(b.started)
                            .unwrap_or(Duration::ZERO)
                            .as_secs_f64());
                        (b.started, v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        running.sort_by_key(|(t, _)| *t);
        let failures: Vec<Value> = self
            .failures
            .lock()
            .map(|f| f.iter().cloned().collect())
            .unwrap_or_default();
        json!({
            "running": running.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
            "failures": failures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_of_long_logs_is_kept_whole_characters() {
        assert_eq!(tail("short"), "short");
        let long = format!("{}é{}", "a".repeat(MAX_LOGS), "end");
        let t = tail(&long);
        assert!(t.ends_with("end"));
        assert!(t.len() <= MAX_LOGS);
    }

    fn request() -> BuildRequest {
        serde_json::from_value(json!({
            "request_id": "r1", "rr_version": "v2025.1.2",
            "target_platform": {"os": "linux", "arch": "amd64"},
            "plugins": [{"module_name": "github.com/roadrunner-server/http/v5", "tag": "v5.2.7"}]
        }))
        .expect("request")
    }

    #[test]
    fn a_build_dropped_without_an_outcome_is_reported_failed_not_left_running() {
        let activity = Arc::new(Activity::default());
        let mut events = activity.subscribe();
        let key = CacheKey([7; 32]);
        let tracked = activity.track(key, &request());
        assert_eq!(activity.json()["running"][0]["key"], key.to_hex());
        assert_eq!(activity.json()["running"][0]["plugins"][0]["tag"], "v5.2.7");
        drop(tracked);
        let v = activity.json();
        assert_eq!(v["running"], json!([]));
        assert_eq!(v["failures"][0]["error"], "internal");
        assert_eq!(events.try_recv().map(|e| e.kind).ok(), Some("started"));
        assert_eq!(events.try_recv().map(|e| e.kind).ok(), Some("failed"));
    }

    #[test]
    fn only_the_last_failures_are_kept_newest_first() {
        let activity = Arc::new(Activity::default());
        for i in 0..(KEPT_FAILURES + 5) {
            let t = activity.track(CacheKey([i as u8; 32]), &request());
            t.ended(&Err(BuildError::Overloaded));
        }
        let failures = activity.json()["failures"].clone();
        let failures = failures.as_array().expect("failures");
        assert_eq!(failures.len(), KEPT_FAILURES);
        assert_eq!(failures[0]["key"], CacheKey([24; 32]).to_hex());
    }

    #[test]
    fn failures_say_no_storage_cause() {
        let e = BuildError::storage(std::io::Error::other("/var/lib/secret/path"));
        let (code, message, logs) = failure_of(&e);
        assert_eq!(code, "storage_unavailable");
        assert!(!message.contains("/var"));
        assert!(logs.is_none());
    }
}
