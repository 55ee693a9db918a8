//! One build per key (docs/build-requests.md): the cache-hit decision, coalescing of identical misses, the
//! concurrency and queue limits, the memory of failed builds, and `force_rebuild`.
//!
//! A build runs as its own task on the worker that started it, so it goes on when its clients
//! disconnect. Waiters on any worker hold a `watch` receiver for its outcome, and one for its
//! progress (queued, building), which the status route reports (docs/http-api.md, "Asynchronous
//! builds").
//!
//! Beside this file: `admission` (a place among the admitted builds) and `ingest` (one build, from
//! the call to Velox to the stored binary); the outcome types are in `builds::outcome`.

mod admission;
mod ingest;

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use super::outcome::Outcome;
pub use super::outcome::{BuildError, CacheStatus, Served, SharedCause};
use super::resolve::Resolution;
pub use super::status::{BuildState, BuildWatch, KeyState, Progress};
use super::status::{FailureReports, ResolvedReports};
use super::velox::{VeloxClient, VeloxError};
use super::{BuildRequest, CacheKey};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::shared::{AfterInsert, Fill, LocalOnly};
use crate::store::{BlobSource, EntryRecord, Limits, Manifest, SharedStore, Store};
pub use admission::Admission;

/// What the cache holds for a key.
enum Hit {
    Fresh(Box<Served>),
    /// An entry from floating references past `cache.floating_ttl`.
    Stale,
    None,
}

/// What [`BuildService::start`] found.
pub enum Started {
    /// The cache holds the binary (counted as a hit).
    Hit(Box<Served>),
    /// A build of the key is under way: started by this call, or joined.
    Building(BuildWatch),
}

/// What Velox did on its last call, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VeloxHealth {
    Unknown,
    Answered,
    Unreachable,
}

pub struct BuildService {
    store: Arc<Store>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    inflight: Mutex<HashMap<CacheKey, BuildWatch>>,
    failures: Mutex<HashMap<CacheKey, (Instant, BuildError)>>,
    /// The last failure of each key, for the status route only (never consulted by builds).
    reported: FailureReports,
    /// The floating tags resolved for each key lately, for the status route.
    resolved: ResolvedReports,
    /// Build slots, handed round-robin across owners (docs/access.md).
    slots: Arc<crate::auth::slots::FairSlots>,
    admitted: AtomicUsize,
    velox_health: AtomicU8,
    /// The size of the last binary that found no room on the disk; 0 once one is stored again.
    short_of: Arc<AtomicU64>,
    /// What replicas share (docs/object-storage.md); a single replica shares nothing.
    shared: Arc<dyn SharedStore>,
    /// Told of every binary this replica built and stored (the provenance is made there).
    on_built: std::sync::OnceLock<OnBuilt>,
    /// The builds under way and the last failures, for people (docs/console.md).
    activity: Arc<super::activity::Activity>,
}

/// What a build that this replica ran and stored was: for its provenance.
pub struct BuiltFacts {
    pub key: CacheKey,
    pub entry: EntryRecord,
    /// The request Velox built (floating tags resolved).
    pub request: BuildRequest,
    /// The Velox builder that built it, its URL's credentials masked.
    pub velox_server: String,
    /// The floating tags resolved for it: module, tag asked, version.
    pub resolved: Vec<Resolution>,
    pub started: SystemTime,
    pub finished: SystemTime,
}

/// Who starts a build (docs/access.md): the owner whose turn it takes in the queue, and what to
/// do when it ends (the quota given back, the audit line written).
pub struct BuildTicket {
    pub owner: Arc<str>,
    /// Called once when this ticket starts a build (not when it joins one or hits).
    pub on_start: Option<Box<dyn FnOnce() + Send>>,
    /// Called once with `success`, `error` or `timeout` when a build this ticket started ends.
    pub on_end: Option<Box<dyn FnOnce(&'static str) + Send>>,
}

impl BuildTicket {
    /// Builds started by nobody in particular (pre-builds, callers without a token).
    pub fn anonymous() -> BuildTicket {
        BuildTicket {
            owner: Arc::from("anonymous"),
            on_start: None,
            on_end: None,
        }
    }
}

/// See [`BuildService::on_built`].
pub type OnBuilt = Arc<dyn Fn(BuiltFacts) + Send + Sync>;

impl BuildService {
    pub fn new(store: Arc<Store>, config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        BuildService {
            slots: crate::auth::slots::FairSlots::new(config.build_slots()),
            store,
            config,
            metrics,
            inflight: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            reported: FailureReports::default(),
            resolved: ResolvedReports::default(),
            admitted: AtomicUsize::new(0),
            velox_health: AtomicU8::new(0),
            short_of: Arc::new(AtomicU64::new(0)),
            shared: Arc::new(LocalOnly),
            on_built: std::sync::OnceLock::new(),
            activity: Arc::default(),
        }
    }

    /// The builds under way, the last failures and their event stream (docs/console.md).
    pub fn activity(&self) -> &Arc<super::activity::Activity> {
        &self.activity
    }

    /// Has `hook` told of every build this replica runs and stores, on the blocking pool,
    /// after its waiters have their answer.
    pub fn on_built(&self, hook: OnBuilt) {
        let _ = self.on_built.set(hook);
    }

    /// The size of the last binary that could not be stored for lack of space, while no binary
    /// has been stored since (0: none), for `/readyz`.
    pub fn storage_short_of(&self) -> u64 {
        self.short_of.load(Ordering::Relaxed)
    }

    /// Uses `shared` (a bucket) behind the local tier.
    pub fn with_shared(mut self, shared: Arc<dyn SharedStore>) -> Self {
        self.shared = shared;
        self
    }

    pub fn shared(&self) -> &Arc<dyn SharedStore> {
        &self.shared
    }

    /// A fill of the local tier with `manifest`'s blob, as `key`'s entry (the artifact route's
    /// bucket-only blobs, whose entry the bucket named).
    pub fn fill(&self, key: CacheKey, manifest: Manifest) -> Fill {
        Fill {
            key,
            manifest,
            store: Arc::clone(&self.store),
            after: self.after_insert(),
        }
    }

    /// Enforces the cache limits after `key` entered the local tier (it is never a victim).
    fn after_insert(&self) -> AfterInsert {
        let limits = Limits::from(&self.config.cache);
        let metrics = Arc::clone(&self.metrics);
        Arc::new(
            move |store: &Store, key: &CacheKey| match store.enforce(&limits, Some(key)) {
                Ok(evicted) => {
                    for (victim, reason) in evicted {
                        log::info!("evicted {victim} ({})", reason.as_str());
                        metrics.evicted(reason);
                    }
                }
                Err(e) => log::error!("enforcing the cache limits failed: {e}"),
            },
        )
    }

    /// A local miss: the bucket's manifest of `key` makes it a hit on every replica. The bytes
    /// stream from the bucket; a whole download also fills the local tier.
    async fn serve_shared_hit(
        &self,
        key: &CacheKey,
        max_age: Option<Duration>,
    ) -> Result<Hit, BuildError> {
        let Some(manifest) = self.shared.find(*key).await.map_err(|e| {
            log::error!("looking {key} up in the bucket failed: {e}");
            BuildError::storage(e)
        })?
        else {
            return Ok(Hit::None);
        };
        let (Ok(entry), Some(mut remote)) = (manifest.entry(), self.shared.remote(&manifest))
        else {
            return Ok(Hit::None);
        };
        if let Some(max_age) = max_age {
            let age_ms = crate::util::now_ms().saturating_sub(entry.created_ms);
            if u128::from(age_ms) >= max_age.as_millis() {
                return Ok(Hit::Stale);
            }
        }
        self.metrics.hits.add(1);
        let modified = manifest.created();
        remote.fill = Some(Fill {
            key: *key,
            manifest,
            store: Arc::clone(&self.store),
            after: self.after_insert(),
        });
        Ok(Hit::Fresh(Box::new(Served {
            entry,
            source: BlobSource::Remote(Box::new(remote)),
            modified,
            status: CacheStatus::Hit,
            stored: true,
        })))
    }

    /// Keeps the floating tags a request for `key` resolved, for the status route.
    pub fn note_resolved(&self, key: CacheKey, resolved: &[Resolution]) {
        self.resolved.note(key, resolved);
    }

    /// The floating tags resolved for `key` lately (the last request's), if any.
    pub fn resolved(&self, key: &CacheKey) -> Option<Arc<[Resolution]>> {
        self.resolved.get(key)
    }

    /// Builds running or waiting for a slot, and requests admitted while their tags resolve.
    pub fn in_flight(&self) -> usize {
        self.admitted.load(Ordering::SeqCst)
    }

    pub fn velox_health(&self) -> VeloxHealth {
        match self.velox_health.load(Ordering::Relaxed) {
            1 => VeloxHealth::Answered,
            2 => VeloxHealth::Unreachable,
            _ => VeloxHealth::Unknown,
        }
    }

    /// The cache-hit decision: the entry for `key` with its blob open, or `None`.
    pub fn lookup(
        &self,
        key: &CacheKey,
    ) -> Result<Option<(EntryRecord, Arc<File>, SystemTime)>, BuildError> {
        let started = std::time::Instant::now();
        let entry = self.store.lookup(key).map_err(|e| {
            log::error!("lookup of {key} failed: {e}");
            BuildError::storage(e)
        })?;
        let found = entry.and_then(|entry| {
            let (file, modified) = self.store.open_blob(&entry.digest, entry.size)?;
            Some((entry, file, modified))
        });
        self.metrics.lookup_duration.observe(started.elapsed());
        Ok(found)
    }

    /// Serves `request` from the cache or has it built, once per key however many ask.
    /// `admission`, when the request was admitted before its key was known, is the build's place.
    pub async fn resolve(
        self: &Arc<Self>,
        request: BuildRequest,
        key: CacheKey,
        velox: &VeloxClient,
        admission: Option<Admission>,
    ) -> Result<Served, BuildError> {
        self.resolve_as(request, key, velox, admission, BuildTicket::anonymous())
            .await
    }

    /// [`BuildService::resolve`], a build started here being `ticket`'s.
    pub async fn resolve_as(
        self: &Arc<Self>,
        request: BuildRequest,
        key: CacheKey,
        velox: &VeloxClient,
        admission: Option<Admission>,
        ticket: BuildTicket,
    ) -> Result<Served, BuildError> {
        match self
            .start_as(request, key, velox, admission, ticket)
            .await?
        {
            Started::Hit(served) => Ok(*served),
            Started::Building(watch) => self.wait(key, watch).await,
        }
    }

    /// The cache-hit decision, then the build of `key` joined or started, without waiting for
    /// it. The build goes on whether anyone waits or not. A build started here takes
    /// `admission`'s place when there is one (see [`BuildService::admit`]).
    pub async fn start(
        self: &Arc<Self>,
        request: BuildRequest,
        key: CacheKey,
        velox: &VeloxClient,
        admission: Option<Admission>,
    ) -> Result<Started, BuildError> {
        self.start_as(request, key, velox, admission, BuildTicket::anonymous())
            .await
    }

    /// [`BuildService::start`], a build started here being `ticket`'s (it waits for a slot in
    /// the ticket owner's turn); a build joined or a hit drops the ticket unused.
    pub async fn start_as(
        self: &Arc<Self>,
        request: BuildRequest,
        key: CacheKey,
        velox: &VeloxClient,
        admission: Option<Admission>,
        ticket: BuildTicket,
    ) -> Result<Started, BuildError> {
        let mut request = request;
        // An entry built from floating references is a hit only for `cache.floating_ttl`; past
        // it, the request rebuilds with `force_rebuild`, since Velox's own cache may hold the
        // same stale resolution.
        let max_age = request
            .is_floating()
            .then_some(self.config.cache.floating_ttl);
        if !request.force_rebuild {
            let mut hit = self.serve_hit(&key, max_age)?;
            if matches!(hit, Hit::None) {
                hit = self.serve_shared_hit(&key, max_age).await?;
            }
            match hit {
                Hit::Fresh(served) => return Ok(Started::Hit(served)),
                Hit::Stale => {
                    log::info!("{key} was built from floating references too long ago: rebuilding");
                    request.force_rebuild = true;
                }
                Hit::None => {}
            }
        }
        let force = request.force_rebuild;
        let watch = {
            let mut inflight = self
                .inflight
                .lock()
                .map_err(|_| BuildError::Internal("the in-flight map's lock is poisoned"))?;
            if let Some(watch) = inflight.get(&key) {
                self.metrics
                    .builds_coalesced
                    .fetch_add(1, Ordering::Relaxed);
                watch.clone()
            } else {
                if !force {
                    // A build of this key may have finished since the first look.
                    if let Hit::Fresh(served) = self.serve_hit(&key, max_age)? {
                        return Ok(Started::Hit(served));
                    }
                    if let Some(err) = self.remembered_failure(&key) {
                        return Err(err);
                    }
                }
                match admission {
                    // Already counted: from now on the build's `Admitted` gives it back.
                    Some(mut admission) => admission.held = false,
                    None => {
                        let limit = self.config.build_slots() + self.config.max_queued_builds;
                        if self.admitted.fetch_add(1, Ordering::SeqCst) >= limit {
                            self.admitted.fetch_sub(1, Ordering::SeqCst);
                            return Err(BuildError::Overloaded);
                        }
                    }
                }
                let (tx, rx) = watch::channel(None);
                let (progress_tx, progress_rx) = watch::channel(Progress::Queued);
                let now = Instant::now();
                let watch = BuildWatch {
                    admitted: now,
                    deadline: now + self.config.build_timeout,
                    request_id: request.request_id().map(Arc::from),
                    progress: progress_rx,
                    outcome: rx,
                };
                inflight.insert(key, watch.clone());
                let deadline = watch.deadline;
                let this = Arc::clone(self);
                let velox = velox.clone();
                let mut ticket = ticket;
                if let Some(on_start) = ticket.on_start.take() {
                    on_start();
                }
                actix_web::rt::spawn(async move {
                    this.run_build(request, key, velox, deadline, tx, progress_tx, ticket)
                        .await;
                });
                watch
            }
        };
        self.metrics.misses.fetch_add(1, Ordering::Relaxed);
        Ok(Started::Building(watch))
    }

    /// Waits for the build `watch` follows and opens its binary.
    async fn wait(&self, key: CacheKey, watch: BuildWatch) -> Result<Served, BuildError> {
        let mut rx = watch.outcome;
        // The build stops itself at its deadline; the margin covers only a lost task.
        let waited = tokio::time::timeout_at(
            watch.deadline + Duration::from_secs(5),
            rx.wait_for(Option::is_some),
        )
        .await;
        let outcome = match waited {
            Ok(Ok(outcome)) => outcome.clone(),
            Ok(Err(_)) => {
                log::error!("the build task for {key} ended without an outcome");
                return Err(BuildError::Internal(
                    "the build task ended without an outcome",
                ));
            }
            Err(_) => return Err(BuildError::Velox(VeloxError::Timeout)),
        };
        let built = outcome.unwrap_or(Err(BuildError::Internal(
            "the build task ended without an outcome",
        )))?;
        let status = CacheStatus::Miss {
            build_time: built.build_time,
        };
        if let Some(unstored) = &built.unstored {
            return Ok(Served {
                source: BlobSource::File(Arc::new(unstored.open().map_err(BuildError::storage)?)),
                entry: built.entry,
                modified: unstored.modified,
                status,
                stored: false,
            });
        }
        let (file, modified) = self
            .store
            .open_blob(&built.entry.digest, built.entry.size)
            .ok_or_else(|| {
                BuildError::storage(std::io::Error::other(
                    "the blob just stored cannot be opened",
                ))
            })?;
        Ok(Served {
            entry: built.entry,
            source: BlobSource::File(file),
            modified,
            status,
            stored: true,
        })
    }

    /// What is known of `key`: a build under way (its watch), the cached entry, or a failure
    /// still reported; `None` for none of these. Reading it counts no hit.
    pub fn state(&self, key: &CacheKey) -> Result<Option<KeyState>, BuildError> {
        let watch = self
            .inflight
            .lock()
            .map_err(|_| BuildError::Internal("the in-flight map's lock is poisoned"))?
            .get(key)
            .cloned();
        if let Some(watch) = watch {
            return Ok(Some(KeyState::InFlight(watch)));
        }
        if let Some(entry) = self.store.lookup(key).map_err(BuildError::storage)? {
            return Ok(Some(KeyState::Ready(entry)));
        }
        let reported = self.reported.get(key, self.config.failure_ttl);
        Ok(reported.map(|(e, id)| KeyState::Failed(e, id)))
    }

    /// The entry for `key` as a hit (counted as one) when it holds the blob `digest`, whatever
    /// its age: a channel's release names the very bytes it serves, floating parts or not.
    pub fn serve_exact(
        &self,
        key: &CacheKey,
        digest: &crate::ids::Digest,
    ) -> Result<Option<Served>, BuildError> {
        let Some((entry, file, modified)) = self.lookup(key)? else {
            return Ok(None);
        };
        if entry.digest != *digest {
            return Ok(None);
        }
        self.hit(key);
        Ok(Some(Served {
            entry,
            source: BlobSource::File(file),
            modified,
            status: CacheStatus::Hit,
            stored: true,
        }))
    }

    /// The entry for `key` ready to serve as a hit (and counted as one), if there is one no older
    /// than `max_age`.
    fn serve_hit(&self, key: &CacheKey, max_age: Option<Duration>) -> Result<Hit, BuildError> {
        let Some((entry, file, modified)) = self.lookup(key)? else {
            return Ok(Hit::None);
        };
        if let Some(max_age) = max_age {
            let age_ms = crate::util::now_ms().saturating_sub(entry.created_ms);
            if u128::from(age_ms) >= max_age.as_millis() {
                return Ok(Hit::Stale);
            }
        }
        self.hit(key);
        Ok(Hit::Fresh(Box::new(Served {
            entry,
            source: BlobSource::File(file),
            modified,
            status: CacheStatus::Hit,
            stored: true,
        })))
    }

    /// Counts a hit: in the metrics, and in the store's batch of access statistics (written at
    /// once when `cache.access_update_interval` is 0).
    fn hit(&self, key: &CacheKey) {
        self.metrics.hits.add(1);
        self.store.note_hit(key);
        if self.config.cache.access_update_interval.is_zero() {
            let store = Arc::clone(&self.store);
            actix_web::rt::task::spawn_blocking(move || {
                if let Err(e) = store.write_pending_hits() {
                    log::error!("cannot write access statistics: {e}");
                }
            });
        }
    }

    fn remembered_failure(&self, key: &CacheKey) -> Option<BuildError> {
        let mut failures = self.failures.lock().ok()?;
        match failures.get(key) {
            Some((at, err)) if at.elapsed() < self.config.failure_ttl => Some(err.clone()),
            Some(_) => {
                failures.remove(key);
                None
            }
            None => None,
        }
    }

    fn remember(&self, key: CacheKey, outcome: &Outcome) {
        let Ok(mut failures) = self.failures.lock() else {
            return;
        };
        match outcome {
            // Only a failed build is a fact about the key. Velox refusing the request (a bad
            // `request_id`, say), being unreachable or slow may come from this one request or this
            // moment, and must not block the key for everyone else.
            Err(e @ BuildError::Velox(VeloxError::Failed { .. }))
                if !self.config.failure_ttl.is_zero() =>
            {
                if failures.len() >= 4096 {
                    let ttl = self.config.failure_ttl;
                    failures.retain(|_, (at, _)| at.elapsed() < ttl);
                }
                failures.insert(key, (Instant::now(), e.clone()));
            }
            Ok(_) => {
                failures.remove(&key);
            }
            Err(_) => {}
        }
    }
}
