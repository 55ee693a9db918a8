//! Channels (docs/channels.md): named recipes whose current binaries have stable URLs, are
//! pinned against eviction, and are built again before anyone asks when a floating tag moves.
//!
//! A channel's record lives in the index beside the entries ([`crate::store::pins`]); a release
//! becomes current by one transaction that writes the record and its pins together, only once
//! every platform of it is stored. Beside this file: `model` (the record, the release id, the
//! JSON), `prebuild` (the background loop that resolves and builds) and `status` (what a
//! pre-build is doing, events, the channel JSON).

pub mod model;
mod prebuild;
mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::sync::{broadcast, Notify};

use crate::builds::resolve::Resolver;
use crate::builds::BuildService;
use crate::config::{valid_channel_name, ChannelConfig, Config, MAX_CHANNELS};
use crate::metrics::Metrics;
use crate::store::shared::{Expect, SharedError, SharedStore};
use crate::store::{Store, StoreError};
pub use model::{ChannelRecord, Origin, Release};
pub use status::{ChannelEvent, PrebuildState, PrebuildStatus};

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
    #[error(transparent)]
    Shared(#[from] SharedError),
    /// Other replicas kept changing the channel while this one tried to.
    #[error("channel `{0}` kept changing while it was written; try again")]
    Busy(String),
}

/// Conditional writes tried before a change gives up ([`ChangeError::Busy`]).
const ATTEMPTS: usize = 5;

pub struct Channels {
    store: Arc<Store>,
    builds: Arc<BuildService>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    resolver: Option<Arc<Resolver>>,
    /// Serialises this replica's read-modify-writes of the records (other replicas are kept
    /// apart by the bucket's conditional writes).
    registry: tokio::sync::Mutex<()>,
    status: Mutex<HashMap<String, PrebuildStatus>>,
    /// Decoded records, for the routes: filled on a read, replaced on every write (all of them
    /// go through [`Channels::mirror`]).
    decoded: Mutex<HashMap<String, Arc<ChannelRecord>>>,
    /// Bumped by every write, so that a read that raced one does not cache what it read.
    writes: std::sync::atomic::AtomicU64,
    /// Whether the file's channels have been written since the start.
    file_synced: std::sync::atomic::AtomicBool,
    events: broadcast::Sender<ChannelEvent>,
    /// Wakes the pre-build loop before its next poll (a channel defined, a binary asked for).
    kick: Notify,
    /// `prebuild.max_concurrent` builds at once, across channels and their platforms.
    prebuild_slots: tokio::sync::Semaphore,
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
        let prebuild_slots = tokio::sync::Semaphore::new(config.prebuild.max_concurrent.max(1));
        Channels {
            prebuild_slots,
            store,
            builds,
            config,
            metrics,
            resolver,
            registry: tokio::sync::Mutex::new(()),
            status: Mutex::new(HashMap::new()),
            decoded: Mutex::new(HashMap::new()),
            writes: std::sync::atomic::AtomicU64::new(0),
            file_synced: std::sync::atomic::AtomicBool::new(false),
            events: broadcast::channel(256).0,
            kick: Notify::new(),
            webhook,
        }
    }

    /// The bucket, when channels live there (docs/channels.md, "With replicas").
    fn shared(&self) -> Option<&Arc<dyn SharedStore>> {
        let shared = self.builds.shared();
        shared.shares_channels().then_some(shared)
    }

    /// Makes the channels those of the file, plus those defined through the API: a file channel
    /// new or changed is written (keeping its releases), one gone from the file is deleted (its
    /// releases unpinned, no binary deleted). With replicas, the bucket's channels are read
    /// first, and every replica must be given the same file.
    pub async fn sync_file_channels(&self) -> bool {
        if self.file_synced.load(std::sync::atomic::Ordering::SeqCst) {
            return true;
        }
        match self.write_file_channels().await {
            Ok(()) => {
                self.file_synced
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                true
            }
            Err(e) => {
                log::error!(
                    "the channels of the configuration file could not be written ({e}); tried again before the next pre-build round"
                );
                false
            }
        }
    }

    async fn write_file_channels(&self) -> Result<(), ChangeError> {
        self.refresh().await?;
        let _held = self.registry.lock().await;
        for (name, spec) in &self.config.channels {
            self.change(name, |existing| {
                Ok(match existing {
                    None => Some(ChannelRecord {
                        version: model::RECORD_VERSION,
                        name: name.clone(),
                        origin: Origin::File,
                        spec: spec.clone(),
                        generation: 1,
                        releases: Vec::new(),
                    }),
                    Some(r) if r.origin == Origin::File && r.spec == *spec => None,
                    Some(r) => {
                        let mut r = r.clone();
                        if r.origin == Origin::Api {
                            log::warn!(
                                "channel `{name}` of the configuration file replaces the one defined through the API"
                            );
                        }
                        r.origin = Origin::File;
                        r.spec = spec.clone();
                        r.generation += 1;
                        r.trim();
                        Some(r)
                    }
                })
            })
            .await?;
        }
        for record in self.list()? {
            if record.origin == Origin::File && !self.config.channels.contains_key(&record.name) {
                self.commit(&record.name, None, Expect::Any).await?;
                log::info!(
                    "channel `{}` is no longer in the configuration file: deleted, its releases unpinned",
                    record.name
                );
            }
        }
        Ok(())
    }

    /// A read-modify-write of channel `name`: `edit` gets the record as its source of truth
    /// holds it now and returns the new one (`None`: no change). Retried when another replica
    /// wrote in between. Returns the record written, if any.
    async fn change(
        &self,
        name: &str,
        edit: impl Fn(Option<&ChannelRecord>) -> Result<Option<ChannelRecord>, ChangeError>,
    ) -> Result<Option<ChannelRecord>, ChangeError> {
        for _ in 0..ATTEMPTS {
            let (existing, expect) = self.fetch(name).await?;
            let Some(record) = edit(existing.as_ref())? else {
                return Ok(None);
            };
            if self.commit(name, Some(&record), expect).await? {
                return Ok(Some(record));
            }
        }
        Err(ChangeError::Busy(name.into()))
    }

    /// Reads every channel of the bucket into the local index (its pins with it), and drops the
    /// local ones the bucket no longer has. Nothing to do without replicas.
    pub async fn refresh(&self) -> Result<(), ChangeError> {
        let Some(shared) = self.shared() else {
            return Ok(());
        };
        let names = shared.channel_names().await?;
        for name in &names {
            if let Err(e) = self.fetch(name).await {
                log::error!("channel `{name}` in the bucket cannot be read: {e}");
            }
        }
        for (name, _) in self.store.channel_records()? {
            if !names.contains(&name) {
                self.mirror(&name, None).await?;
            }
        }
        Ok(())
    }

    /// Reads the bucket's channels every `every`, for as long as `stop` allows.
    pub async fn run_refresh(
        self: Arc<Self>,
        every: std::time::Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        if self.shared().is_none() {
            return;
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            if let Err(e) = self.refresh().await {
                log::warn!("cannot read the channels in the bucket: {e}");
            }
        }
    }

    /// The record of `name` where channels live, with the version to write on; the local index
    /// is brought up to date with it.
    async fn fetch(&self, name: &str) -> Result<(Option<ChannelRecord>, Expect), ChangeError> {
        let Some(shared) = self.shared() else {
            return Ok((self.read(name)?, Expect::Any));
        };
        match shared.channel_get(name.to_owned()).await? {
            None => {
                self.mirror(name, None).await?;
                Ok((None, Expect::Absent))
            }
            Some(got) => {
                let expect = got.etag.map_or(Expect::Any, Expect::Etag);
                let record = match ChannelRecord::decode(&got.bytes) {
                    Ok(r) if r.name == name => r,
                    // A newer velox-cache's record is never overwritten by this one.
                    Err(why) if model::is_newer(&got.bytes) => {
                        return Err(ChangeError::Record(format!("`{name}` in the bucket {why}")))
                    }
                    // Damaged (or naming another channel): this replica's own copy stands in
                    // for it, goes on being served, and is what the next change (a flip, the
                    // file's channels at a start) writes over it, on the ETag it was read at.
                    Ok(_) | Err(_) => {
                        log::error!(
                            "the record of channel `{name}` in the bucket is damaged; this replica's copy stands in for it until it is written again"
                        );
                        return Ok((self.read(name)?, expect));
                    }
                };
                self.mirror(name, Some(&record)).await?;
                Ok((Some(record), expect))
            }
        }
    }

    /// Writes `record` (`None`: deletes) where channels live, on the condition `expect`, then
    /// into the local index. False when the bucket's condition failed.
    async fn commit(
        &self,
        name: &str,
        record: Option<&ChannelRecord>,
        expect: Expect,
    ) -> Result<bool, ChangeError> {
        if let Some(shared) = self.shared() {
            match record {
                Some(r) => {
                    let bytes = r.encode().map_err(ChangeError::Record)?;
                    if !shared.channel_put(name.to_owned(), bytes, expect).await? {
                        return Ok(false);
                    }
                }
                None => shared.channel_delete(name.to_owned()).await?,
            }
        }
        self.mirror(name, record).await?;
        Ok(true)
    }

    /// Makes the local index hold `record` and its pins. A new current release (flipped here
    /// or by another replica) is an event.
    async fn mirror(&self, name: &str, record: Option<&ChannelRecord>) -> Result<(), ChangeError> {
        let bytes = record
            .map(|r| r.encode().map_err(ChangeError::Record))
            .transpose()?;
        let keys = record.map(ChannelRecord::pinned_keys).unwrap_or_default();
        let store = Arc::clone(&self.store);
        let owned = name.to_owned();
        let before = actix_web::rt::task::spawn_blocking(move || {
            let before = store.channel_record(&owned)?;
            if before != bytes {
                store.write_channel(&owned, bytes.as_deref(), &keys)?;
            }
            Ok::<_, StoreError>(before)
        })
        .await
        .map_err(|_| ChangeError::Record("the index task was lost".into()))??;
        if let Ok(mut decoded) = self.decoded.lock() {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match record {
                Some(r) => decoded.insert(name.to_owned(), Arc::new(r.clone())),
                None => decoded.remove(name),
            };
        }
        let was = before
            .and_then(|b| ChannelRecord::decode(&b).ok())
            .and_then(|r| r.current().map(|c| c.id.clone()));
        if let Some(current) = record.and_then(ChannelRecord::current) {
            if was.as_deref() != Some(current.id.as_str()) {
                self.notify(name, "release", model::release_json(current));
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
    pub fn get(&self, name: &str) -> Result<Option<Arc<ChannelRecord>>, ChangeError> {
        if !valid_channel_name(name) {
            return Ok(None);
        }
        if let Some(r) = self.decoded.lock().ok().and_then(|d| d.get(name).cloned()) {
            return Ok(Some(r));
        }
        let before = self.writes.load(std::sync::atomic::Ordering::SeqCst);
        let Some(record) = self.read(name)? else {
            return Ok(None);
        };
        let record = Arc::new(record);
        if let Ok(mut decoded) = self.decoded.lock() {
            // A write since the read may have made it stale: then it is not kept.
            if self.writes.load(std::sync::atomic::Ordering::SeqCst) == before {
                if decoded.len() >= 2 * MAX_CHANNELS {
                    decoded.clear();
                }
                decoded.insert(name.to_owned(), Arc::clone(&record));
            }
        }
        Ok(Some(record))
    }

    /// Defines or changes an API channel. Returns it and whether it is new.
    pub async fn put(
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
        let _held = self.registry.lock().await;
        let count = match self.shared() {
            Some(shared) => shared.channel_names().await?.len(),
            None => self.store.channel_records()?.len(),
        };
        let unchanged = Mutex::new(None);
        let written = self
            .change(name, |existing| match existing {
                Some(r) if r.origin == Origin::File => Err(ChangeError::FromFile(name.into())),
                Some(r) if r.spec == spec => {
                    if let Ok(mut u) = unchanged.lock() {
                        *u = Some(r.clone());
                    }
                    Ok(None)
                }
                Some(r) => {
                    let mut r = r.clone();
                    r.spec = spec.clone();
                    r.generation += 1;
                    r.trim();
                    Ok(Some(r))
                }
                None if count >= MAX_CHANNELS => Err(ChangeError::TooMany),
                None => Ok(Some(ChannelRecord {
                    version: model::RECORD_VERSION,
                    name: name.into(),
                    origin: Origin::Api,
                    spec: spec.clone(),
                    generation: 1,
                    releases: Vec::new(),
                })),
            })
            .await?;
        drop(_held);
        match written {
            Some(record) => {
                self.kick();
                let created = record.generation == 1;
                Ok((record, created))
            }
            None => unchanged
                .into_inner()
                .ok()
                .flatten()
                .map(|r| (r, false))
                .ok_or_else(|| ChangeError::Busy(name.into())),
        }
    }

    /// Deletes an API channel: its releases are unpinned; no binary is deleted (eviction takes
    /// them in their turn).
    pub async fn delete(&self, name: &str) -> Result<(), ChangeError> {
        if !valid_channel_name(name) {
            return Err(ChangeError::NotFound(name.into()));
        }
        let _held = self.registry.lock().await;
        let (existing, _) = self.fetch(name).await?;
        match existing {
            None => Err(ChangeError::NotFound(name.into())),
            Some(r) if r.origin == Origin::File => Err(ChangeError::FromFile(name.into())),
            Some(_) => {
                self.commit(name, None, Expect::Any).await?;
                if let Ok(mut status) = self.status.lock() {
                    status.remove(name);
                }
                Ok(())
            }
        }
    }

    /// Makes `release` the current release of channel `name`, when the channel is still the one
    /// the pre-build started from (`generation`) and the release is not current already (another
    /// replica flipped it). Returns whether this replica flipped it.
    async fn flip(
        &self,
        name: &str,
        generation: u64,
        release: Release,
    ) -> Result<bool, ChangeError> {
        let _held = self.registry.lock().await;
        let json = model::release_json(&release);
        let written = self
            .change(name, |existing| {
                Ok(match existing {
                    Some(r)
                        if r.generation == generation
                            && r.current().map(|c| &c.id) != Some(&release.id) =>
                    {
                        let mut r = r.clone();
                        r.releases.retain(|old| old.id != release.id);
                        r.releases.insert(0, release.clone());
                        r.trim();
                        Some(r)
                    }
                    _ => None,
                })
            })
            .await?;
        drop(_held);
        if written.is_none() {
            return Ok(false);
        }
        self.metrics.channels.flipped();
        self.webhook(
            "channel.release.flipped",
            json!({"channel": name, "release": json}),
        );
        Ok(true)
    }
}

/// Checks a channel's recipe against the build request's rules on each of its platforms. The
/// error names `recipe`; its message names the field the rule is about (`plugins[0].tag`, ...).
pub fn check_recipe(spec: &ChannelConfig) -> Result<(), (String, String)> {
    let recipe = spec.recipe();
    for platform in &spec.platforms {
        model::request_for(&recipe, platform).map_err(|e| ("recipe".to_string(), e.message))?;
    }
    Ok(())
}
