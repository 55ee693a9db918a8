//! Channels (docs/channels.md): named recipes whose current binaries have stable URLs, are
//! pinned against eviction, and are built again before anyone asks when a floating tag moves.
//!
//! A channel's record lives in the index beside the entries ([`crate::store::pins`]); a release
//! becomes current by one transaction that writes the record and its pins together, only once
//! every platform of it is stored. Beside this file: `model` (the record, the release id, the
//! JSON) and `prebuild` (the background loop that resolves and builds).

pub mod model;
mod prebuild;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{json, Value};
use tokio::sync::{broadcast, Notify};

use crate::builds::resolve::Resolver;
use crate::builds::BuildService;
use crate::config::{valid_channel_name, ChannelConfig, Config, MAX_CHANNELS};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
pub use model::{ChannelRecord, Origin, Release};

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
}

impl Default for PrebuildStatus {
    fn default() -> Self {
        PrebuildStatus {
            state: PrebuildState::Idle,
            error: None,
            checked_ms: None,
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

/// Why a change through the API was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// A field of the definition, and why.
    #[error("`{0}`: {1}")]
    Invalid(String, String),
    #[error("channel `{0}` is defined in the configuration file; change it there")]
    FromFile(String),
    #[error("no channel is named `{0}`")]
    NotFound(String),
    #[error("at most {MAX_CHANNELS} channels")]
    TooMany,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("channel record: {0}")]
    Record(String),
}

pub struct Channels {
    store: Arc<Store>,
    builds: Arc<BuildService>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    resolver: Option<Arc<Resolver>>,
    /// Serialises every read-modify-write of the records.
    registry: Mutex<()>,
    status: Mutex<HashMap<String, PrebuildStatus>>,
    events: broadcast::Sender<ChannelEvent>,
    /// Wakes the pre-build loop before its next poll (a channel defined, a binary asked for).
    kick: Notify,
    webhook: Option<crate::webhook::Webhook>,
}

impl Channels {
    pub fn new(
        store: Arc<Store>,
        builds: Arc<BuildService>,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        resolver: Option<Arc<Resolver>>,
        webhook: Option<crate::webhook::Webhook>,
    ) -> Channels {
        Channels {
            store,
            builds,
            config,
            metrics,
            resolver,
            registry: Mutex::new(()),
            status: Mutex::new(HashMap::new()),
            events: broadcast::channel(256).0,
            kick: Notify::new(),
            webhook,
        }
    }

    /// Makes the index's channels those of the file, plus those defined through the API: a
    /// file channel new or changed is written (keeping its releases), one gone from the file is
    /// deleted (its releases unpinned, no binary deleted).
    pub fn sync_file_channels(&self) -> Result<(), ChangeError> {
        let _held = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, spec) in &self.config.channels {
            let record = match self.read(name)? {
                None => ChannelRecord {
                    version: model::RECORD_VERSION,
                    name: name.clone(),
                    origin: Origin::File,
                    spec: spec.clone(),
                    generation: 1,
                    releases: Vec::new(),
                },
                Some(r) if r.origin == Origin::File && r.spec == *spec => continue,
                Some(mut r) => {
                    if r.origin == Origin::Api {
                        log::warn!(
                            "channel `{name}` of the configuration file replaces the one defined through the API"
                        );
                    }
                    r.origin = Origin::File;
                    r.spec = spec.clone();
                    r.generation += 1;
                    r.trim();
                    r
                }
            };
            self.write(&record)?;
            log::info!("channel `{name}` taken from the configuration file");
        }
        for record in self.list()? {
            if record.origin == Origin::File && !self.config.channels.contains_key(&record.name) {
                self.store.write_channel(&record.name, None, &[])?;
                log::info!(
                    "channel `{}` is no longer in the configuration file: deleted, its releases unpinned",
                    record.name
                );
            }
        }
        Ok(())
    }

    fn read(&self, name: &str) -> Result<Option<ChannelRecord>, ChangeError> {
        match self.store.channel_record(name)? {
            None => Ok(None),
            Some(bytes) => ChannelRecord::decode(&bytes)
                .map(Some)
                .map_err(|why| ChangeError::Record(format!("`{name}` {why}"))),
        }
    }

    fn write(&self, record: &ChannelRecord) -> Result<(), ChangeError> {
        let bytes = record.encode().map_err(ChangeError::Record)?;
        self.store
            .write_channel(&record.name, Some(&bytes), &record.pinned_keys())?;
        Ok(())
    }

    /// Every channel, by name. A record that does not decode is logged and left out.
    pub fn list(&self) -> Result<Vec<ChannelRecord>, StoreError> {
        let mut out = Vec::new();
        for (name, bytes) in self.store.channel_records()? {
            match ChannelRecord::decode(&bytes) {
                Ok(r) => out.push(r),
                Err(why) => log::error!("the record of channel `{name}` {why}"),
            }
        }
        Ok(out)
    }

    /// The channel `name`, if there is one (a record that does not decode is an error).
    pub fn get(&self, name: &str) -> Result<Option<ChannelRecord>, ChangeError> {
        if !valid_channel_name(name) {
            return Ok(None);
        }
        self.read(name)
    }

    /// Defines or changes an API channel. Returns it and whether it is new.
    pub fn put(
        &self,
        name: &str,
        spec: ChannelConfig,
    ) -> Result<(ChannelRecord, bool), ChangeError> {
        if !valid_channel_name(name) {
            return Err(ChangeError::Invalid(
                "name".into(),
                "a channel name is 1 to 64 of a-z, 0-9, `.`, `_` and `-`, starting with a letter or digit".into(),
            ));
        }
        spec.check()
            .map_err(|(f, why)| ChangeError::Invalid(f, why))?;
        check_recipe(&spec).map_err(|(f, why)| ChangeError::Invalid(f, why))?;
        let _held = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let (record, created) = match self.read(name)? {
            Some(r) if r.origin == Origin::File => return Err(ChangeError::FromFile(name.into())),
            Some(r) if r.spec == spec => return Ok((r, false)),
            Some(mut r) => {
                r.spec = spec;
                r.generation += 1;
                r.trim();
                (r, false)
            }
            None => {
                if self.store.channel_records()?.len() >= MAX_CHANNELS {
                    return Err(ChangeError::TooMany);
                }
                let r = ChannelRecord {
                    version: model::RECORD_VERSION,
                    name: name.into(),
                    origin: Origin::Api,
                    spec,
                    generation: 1,
                    releases: Vec::new(),
                };
                (r, true)
            }
        };
        self.write(&record)?;
        drop(_held);
        self.kick();
        Ok((record, created))
    }

    /// Deletes an API channel: its releases are unpinned; no binary is deleted (eviction takes
    /// them in their turn).
    pub fn delete(&self, name: &str) -> Result<(), ChangeError> {
        let _held = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        match self.get(name)? {
            None => Err(ChangeError::NotFound(name.into())),
            Some(r) if r.origin == Origin::File => Err(ChangeError::FromFile(name.into())),
            Some(_) => {
                self.store.write_channel(name, None, &[])?;
                if let Ok(mut status) = self.status.lock() {
                    status.remove(name);
                }
                Ok(())
            }
        }
    }

    /// Makes `release` the current release of channel `name`, when the channel is still the one
    /// the pre-build started from (`generation`). Returns whether it flipped.
    fn flip(&self, name: &str, generation: u64, release: Release) -> Result<bool, ChangeError> {
        let _held = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(mut record) = self.read(name)? else {
            return Ok(false);
        };
        if record.generation != generation {
            return Ok(false);
        }
        let json = model::release_json(&release);
        record.releases.retain(|r| r.id != release.id);
        record.releases.insert(0, release);
        record.trim();
        self.write(&record)?;
        drop(_held);
        self.metrics.channels.flipped();
        self.notify(name, "release", json.clone());
        self.webhook(
            "channel.release.flipped",
            json!({"channel": name, "release": json}),
        );
        Ok(true)
    }

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
    fn set_status(&self, name: &str, state: PrebuildState, error: Option<String>) {
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

    fn notify(&self, name: &str, kind: &'static str, data: Value) {
        // No receiver is no error: nobody watches.
        let _ = self.events.send(ChannelEvent {
            channel: name.to_owned(),
            kind,
            data,
        });
    }

    fn webhook(&self, event_type: &str, data: Value) {
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

/// Checks a channel's recipe against the build request's rules on each of its platforms. The
/// field named is the channel's (`plugins`, `rr_version`, ...) when the rule names one.
pub fn check_recipe(spec: &ChannelConfig) -> Result<(), (String, String)> {
    let recipe = spec.recipe();
    for platform in &spec.platforms {
        model::request_for(&recipe, platform).map_err(|e| ("recipe".to_string(), e.message))?;
    }
    Ok(())
}
