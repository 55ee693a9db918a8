//! What a channel's pre-build is doing and how changes are told: the in-memory status, the
//! event stream the channel routes follow, the webhook, and the channel JSON that carries both.

use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::{model, ChannelRecord, Channels};

/// What a pre-build of a channel is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrebuildState {
    Idle,
    Building,
    Failed,
}

impl PrebuildState {
    pub fn as_str(self) -> &'static str {
        match self {
            PrebuildState::Idle => "idle",
            PrebuildState::Building => "building",
            PrebuildState::Failed => "failed",
        }
    }
}

/// The last pre-build of a channel, kept in memory (a restart starts from `idle` and checks
/// every channel at once).
#[derive(Debug, Clone)]
pub struct PrebuildStatus {
    pub state: PrebuildState,
    pub error: Option<String>,
    /// When the channel was last resolved.
    pub checked_ms: Option<u64>,
    /// The failure last told (counted, logged, sent to the webhook): the same failure again is
    /// not told again. Cleared once a round ends well.
    pub told: Option<String>,
}

impl Default for PrebuildStatus {
    fn default() -> Self {
        PrebuildStatus {
            state: PrebuildState::Idle,
            error: None,
            checked_ms: None,
            told: None,
        }
    }
}

/// One change a channel's event stream reports.
#[derive(Debug, Clone)]
pub struct ChannelEvent {
    pub channel: String,
    /// `release` (a flip) or `prebuild` (a state change).
    pub kind: &'static str,
    pub data: Value,
}

impl Channels {
    pub fn subscribe(&self) -> broadcast::Receiver<ChannelEvent> {
        self.events.subscribe()
    }

    /// Has the pre-build loop look at every channel now.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    pub fn status(&self, name: &str) -> PrebuildStatus {
        self.status
            .lock()
            .ok()
            .and_then(|s| s.get(name).cloned())
            .unwrap_or_default()
    }

    /// Sets the pre-build state of `name`; a change of state is an event.
    pub(super) fn set_status(&self, name: &str, state: PrebuildState, error: Option<String>) {
        let now = crate::util::now_ms();
        let changed = {
            let Ok(mut all) = self.status.lock() else {
                return;
            };
            let s = all.entry(name.to_owned()).or_default();
            let changed = s.state != state || s.error != error;
            s.state = state;
            s.error = error.clone();
            s.checked_ms = Some(now);
            match state {
                PrebuildState::Idle => s.told = None,
                PrebuildState::Failed => s.told = error.clone(),
                PrebuildState::Building => {}
            }
            changed
        };
        if changed {
            self.notify(
                name,
                "prebuild",
                json!({"state": state.as_str(), "error": error, "checked": model::rfc3339(now)}),
            );
        }
    }

    pub(super) fn notify(&self, name: &str, kind: &'static str, data: Value) {
        // No receiver is no error: nobody watches.
        let _ = self.events.send(ChannelEvent {
            channel: name.to_owned(),
            kind,
            data,
        });
    }

    pub(super) fn webhook(&self, event_type: &str, data: Value) {
        if let Some(w) = &self.webhook {
            w.send(event_type, data);
        }
    }

    /// The channel JSON (docs/channels.md).
    pub fn json(&self, record: &ChannelRecord) -> Value {
        let status = self.status(&record.name);
        model::channel_json(
            record,
            json!({
                "state": status.state.as_str(),
                "error": status.error,
                "checked": status.checked_ms.map(model::rfc3339),
            }),
        )
    }

    /// Seconds since each channel's current release was made, for the metrics.
    pub fn release_ages(&self) -> Vec<(String, u64)> {
        let now = crate::util::now_ms();
        self.list()
            .unwrap_or_default()
            .iter()
            .filter_map(|r| {
                let current = r.current()?;
                Some((
                    r.name.clone(),
                    now.saturating_sub(current.created_ms) / 1000,
                ))
            })
            .collect()
    }
}
