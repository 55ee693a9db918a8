//! One build per key (docs/build-requests.md): the cache-hit decision, coalescing of identical misses, the
//! concurrency and queue limits, the memory of failed builds, and `force_rebuild`.
//!
//! A build runs as its own task on the worker that started it, so it goes on when its clients
//! disconnect. Waiters on any worker hold a `watch` receiver for its outcome, and one for its
//! progress (queued, building), which the status route reports (docs/http-api.md, "Asynchronous
//! builds").

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use super::artifact::{open_artifact, PathError};
use super::resolve::Resolution;
pub use super::status::{BuildState, BuildWatch, KeyState, Progress};
use super::status::{FailureReports, ResolvedReports};
use super::unstored::Unstored;
use super::velox::{VeloxClient, VeloxError};
use super::{BuildRequest, CacheKey};
use crate::config::Config;
use crate::error::{ApiError, ErrorCode};
use crate::metrics::{Metrics, RetryReason, StoreErrorReason};
use crate::store::shared::{AfterInsert, Artifact, Claim, Fill, LocalOnly, SharedError};
use crate::store::{BlobSource, EntryRecord, IngestError, Limits, Manifest, SharedStore, Store};

/// A cause shared by every waiter of a build (the outcome is cloned to each).
pub type SharedCause = Arc<dyn std::error::Error + Send + Sync>;

/// Why a build request could not be answered with a binary.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Velox(#[from] VeloxError),
    /// Past `max_concurrent_builds + max_queued_builds`.
    #[error("too many builds are running or waiting")]
    Overloaded,
    /// The disk or the index failed.
    #[error("the cache storage failed: {0}")]
    Storage(#[source] SharedCause),
    /// A bug: a poisoned lock, a lost task, a closed semaphore.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl BuildError {
    fn storage(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        BuildError::Storage(Arc::new(e))
    }

    /// The answer a client gets (docs/http-api.md, "Errors"). Causes stay in the log.
    pub fn to_api_error(&self, config: &Config) -> ApiError {
        match self {
            BuildError::Velox(VeloxError::InvalidArgument(msg)) => {
                ApiError::invalid_request(msg.clone())
            }
            BuildError::Velox(VeloxError::Failed { message, logs }) => {
                let mut err = ApiError::new(ErrorCode::BuildFailed, message.clone());
                err.logs = logs.as_deref().map(Box::from);
                err
            }
            BuildError::Velox(VeloxError::Unavailable(why)) => ApiError::new(
                ErrorCode::VeloxUnavailable,
                format!(
                    "Velox did not answer usefully after {} attempt(s): {why}",
                    config.retry.max_attempts
                ),
            ),
            BuildError::Velox(VeloxError::Timeout) => ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "the build did not finish within {}",
                    humantime::format_duration(config.build_timeout)
                ),
            ),
            BuildError::Overloaded => {
                let mut err = ApiError::new(
                    ErrorCode::Overloaded,
                    "too many builds are running or waiting; try again later",
                );
                err.retry_after = Some(5);
                err
            }
            BuildError::Storage(cause) => {
                log::error!("answering storage_unavailable: {cause}");
                let mut err = ApiError::storage_unavailable();
                // A bucket or a disk that failed may well be back in a moment.
                err.retry_after = Some(5);
                err
            }
            BuildError::Internal(what) => {
                log::error!("answering internal: {what}");
                ApiError::internal()
            }
        }
    }
}

/// How the binary was obtained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CacheStatus {
    Hit,
    /// Built for this request, or for another that this one waited on.
    Miss {
        build_time: Duration,
    },
}

/// A binary ready to be sent.
pub struct Served {
    pub entry: EntryRecord,
    /// The local tier's file, or (a hit that only the bucket holds) the bucket.
    pub source: BlobSource,
    pub modified: SystemTime,
    pub status: CacheStatus,
    /// False for a binary served from Velox's own file because the disk was full: it has no
    /// artifact URL.
    pub stored: bool,
}

/// What the cache holds for a key.
enum Hit {
    Fresh(Box<Served>),
    /// An entry from floating references past `cache.floating_ttl`.
    Stale,
    None,
}

#[derive(Debug, Clone)]
pub(super) struct Built {
    pub(super) entry: EntryRecord,
    /// The disk was full: `entry` was never committed, and this is Velox's file, shared by
    /// every waiter (docs/storage.md, "Disk full").
    pub(super) unstored: Option<Arc<Unstored>>,
    build_time: Duration,
    /// Built by another replica; this one waited and fetched it from the bucket.
    elsewhere: bool,
}

pub(super) type Outcome = Result<Built, BuildError>;

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
    slots: Arc<Semaphore>,
    admitted: AtomicUsize,
    velox_health: AtomicU8,
    /// The size of the last binary that found no room on the disk; 0 once one is stored again.
    short_of: Arc<AtomicU64>,
    /// What replicas share (docs/object-storage.md); a single replica shares nothing.
    shared: Arc<dyn SharedStore>,
}

/// A build's place among the admitted ones and in the in-flight map, given back when dropped.
struct Admitted<'a> {
    service: &'a BuildService,
    key: CacheKey,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Ok(mut inflight) = self.service.inflight.lock() {
            inflight.remove(&self.key);
        }
        self.service.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One place among the admitted builds, taken before a request's floating tags are resolved, so
/// that a full queue refuses the request before any Go module proxy is asked
/// (docs/build-requests.md, "Floating references"). It becomes the build's if the request
/// starts one, and is given back when dropped otherwise (a hit, a build joined, a failure).
pub struct Admission {
    service: Arc<BuildService>,
    held: bool,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.held {
            self.service.admitted.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Decrements a counter when dropped, so that cancelled tasks leave the books straight.
struct Count<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> Count<'a> {
    fn up(c: &'a std::sync::atomic::AtomicU64) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Count(c)
    }
}

impl Drop for Count<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl BuildService {
    pub fn new(store: Arc<Store>, config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        BuildService {
            slots: Arc::new(Semaphore::new(config.max_concurrent_builds)),
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
        }
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
        self.metrics.hits.fetch_add(1, Ordering::Relaxed);
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

    /// Takes one place among the admitted builds (`max_concurrent_builds + max_queued_builds`),
    /// or refuses with [`BuildError::Overloaded`].
    pub fn admit(self: &Arc<Self>) -> Result<Admission, BuildError> {
        let limit = self.config.max_concurrent_builds + self.config.max_queued_builds;
        if self.admitted.fetch_add(1, Ordering::SeqCst) >= limit {
            self.admitted.fetch_sub(1, Ordering::SeqCst);
            return Err(BuildError::Overloaded);
        }
        Ok(Admission {
            service: Arc::clone(self),
            held: true,
        })
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
        match self.start(request, key, velox, admission).await? {
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
                        let limit =
                            self.config.max_concurrent_builds + self.config.max_queued_builds;
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
                actix_web::rt::spawn(async move {
                    this.run_build(request, key, velox, deadline, tx, progress_tx)
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
        self.metrics.hits.fetch_add(1, Ordering::Relaxed);
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

    async fn run_build(
        self: Arc<Self>,
        request: BuildRequest,
        key: CacheKey,
        velox: VeloxClient,
        deadline: Instant,
        tx: watch::Sender<Option<Outcome>>,
        progress: watch::Sender<Progress>,
    ) {
        // Whatever ends this task (an outcome, a panic, the worker stopping), the key must leave
        // the in-flight map and its admission must be returned, or the key would wait forever.
        let _slot = Admitted {
            service: &self,
            key,
        };
        let started = Instant::now();
        let outcome = match tokio::time::timeout_at(
            deadline,
            self.build(&request, key, &velox, deadline, &progress),
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => Err(BuildError::Velox(VeloxError::Timeout)),
        }
        .map(|(entry, elsewhere, unstored)| Built {
            entry,
            unstored,
            build_time: started.elapsed(),
            elsewhere,
        });
        let m = &self.metrics;
        match &outcome {
            Ok(b) if b.elsewhere => {
                log::info!("{key} was built by another replica; fetched it from the bucket");
            }
            Ok(b) => {
                m.builds_success.fetch_add(1, Ordering::Relaxed);
                m.build_duration.observe(b.build_time);
                log::info!("built {key} in {:.1}s", b.build_time.as_secs_f64());
            }
            Err(BuildError::Velox(VeloxError::Timeout)) => {
                m.builds_timeout.fetch_add(1, Ordering::Relaxed);
                log::warn!("build of {key} timed out");
            }
            Err(e) => {
                m.builds_error.fetch_add(1, Ordering::Relaxed);
                log::warn!("build of {key} failed: {e}");
            }
        }
        self.remember(key, &outcome);
        // A binary that was served but not stored cannot be fetched later: the status route
        // says so to whoever asks after the build.
        let not_stored = outcome
            .as_ref()
            .ok()
            .filter(|b| b.unstored.is_some())
            .map(|_| not_stored());
        let failure = outcome.as_ref().err().or(not_stored.as_ref());
        self.reported
            .note(key, failure, request.request_id(), self.config.failure_ttl);
        // Nobody may be waiting any more (all clients left); the result is cached regardless.
        // Requests that join between this send and the slot's release get this outcome at once.
        let _ = tx.send(Some(outcome));
    }

    async fn build(
        &self,
        request: &BuildRequest,
        key: CacheKey,
        velox: &VeloxClient,
        deadline: Instant,
        progress: &watch::Sender<Progress>,
    ) -> Result<(EntryRecord, bool, Option<Arc<Unstored>>), BuildError> {
        // One build per key across replicas: another replica's build is waited for and fetched.
        let bucket_failed = |e: SharedError| {
            log::error!("the bucket failed for the build of {key}: {e}");
            BuildError::storage(e)
        };
        let _lock = match self
            .shared
            .claim(key, request.force_rebuild, deadline)
            .await
            .map_err(bucket_failed)?
        {
            Claim::Build(lock) => lock,
            Claim::Built(manifest) => {
                let entry = self
                    .shared
                    .fetch(Arc::clone(&self.store), manifest)
                    .await
                    .map_err(bucket_failed)?;
                let (store, after) = (Arc::clone(&self.store), self.after_insert());
                let _ = actix_web::rt::task::spawn_blocking(move || after(&store, &key)).await;
                return Ok((entry, true, None));
            }
        };
        let permit = {
            let _queued = Count::up(&self.metrics.builds_queued);
            Arc::clone(&self.slots)
                .acquire_owned()
                .await
                .map_err(|_| BuildError::Internal("the build slots are closed"))?
        };
        let _active = Count::up(&self.metrics.builds_active);
        progress.send_replace(Progress::Building { velox_attempts: 1 });
        let started = Instant::now();
        let file = self.fetch(request, key, velox, deadline, progress).await?;
        drop(permit);

        let store = Arc::clone(&self.store);
        let request = request.clone();
        let build_ms = started.elapsed().as_millis() as u64;
        let after = self.after_insert();
        let shared = Arc::clone(&self.shared);
        let replace = request.force_rebuild;
        let limits = Limits::from(&self.config.cache);
        let metrics = Arc::clone(&self.metrics);
        let short_of = Arc::clone(&self.short_of);
        let ingested = actix_web::rt::task::spawn_blocking(move || {
            // Kept for the disk-full path: ingest consumes the file, and reads here are positional.
            let spare = file.try_clone().ok();
            make_room(&store, &limits, &metrics, &file);
            let artifact = Artifact {
                file,
                key,
                file_name: request.file_name(),
                request: request.manifest_payload(),
                build_ms,
                replace,
            };
            let stored = shared.ingest(&store, artifact).map_err(|e| match e {
                SharedError::Ingest(e) => SharedError::Ingest(e.classified()),
                e => e,
            });
            let entry = match stored {
                Ok(entry) => entry,
                Err(SharedError::Ingest(IngestError::NoSpace(e))) => {
                    metrics.store_error(StoreErrorReason::Full);
                    let unstored = spare
                        .ok_or_else(|| std::io::Error::other("no second handle on the artifact"))
                        .and_then(|f| Unstored::hash(f, request.file_name(), build_ms))
                        .map_err(|why| {
                            log::error!("no space to store {key} ({e}), and Velox's file cannot be served: {why}");
                            BuildError::storage(e)
                        })?;
                    log::error!(
                        "no space to store {key} ({} bytes); serving Velox's file without storing it",
                        unstored.entry.size
                    );
                    short_of.store(unstored.entry.size, Ordering::Relaxed);
                    return Ok((unstored.entry.clone(), false, Some(Arc::new(unstored))));
                }
                Err(e) => {
                    log::error!("storing the artifact for {key} failed: {e}");
                    return Err(match e {
                        SharedError::Ingest(
                            IngestError::Empty | IngestError::SizeChanged { .. },
                        ) => BuildError::Velox(VeloxError::Failed {
                            message: "Velox's artifact changed while it was read".into(),
                            logs: None,
                        }),
                        e => {
                            if matches!(e, SharedError::Ingest(_) | SharedError::Local(_)) {
                                metrics.store_error(StoreErrorReason::Io);
                            }
                            BuildError::storage(e)
                        }
                    });
                }
            };
            short_of.store(0, Ordering::Relaxed);
            // Limits are enforced right after every insert; the new entry is not a victim.
            after(&store, &key);
            Ok((entry, false, None))
        })
        .await;
        match ingested {
            Ok(result) => result,
            Err(e) => {
                log::error!("the ingest task for {key} failed: {e}");
                Err(BuildError::Internal("the ingest task failed"))
            }
        }
    }

    /// Calls Velox and opens the file it names. A path that no longer exists (Velox's cache
    /// answers from memory, and its eviction or a tmp cleaner may have deleted the file) gets one
    /// more call with `force_rebuild`; only then is it a failed build.
    async fn fetch(
        &self,
        request: &BuildRequest,
        key: CacheKey,
        velox: &VeloxClient,
        deadline: Instant,
        progress: &watch::Sender<Progress>,
    ) -> Result<File, BuildError> {
        let mut forced = None;
        loop {
            let asked = forced.as_ref().unwrap_or(request);
            let answer = velox
                .build(asked, deadline, &|reason| {
                    self.metrics.retried(reason);
                    progress.send_modify(|p| {
                        if let Progress::Building { velox_attempts } = p {
                            *velox_attempts += 1;
                        }
                    });
                })
                .await;
            let health = match &answer {
                Ok(_) | Err(VeloxError::Failed { .. } | VeloxError::InvalidArgument(_)) => 1,
                Err(_) => 2,
            };
            self.velox_health.store(health, Ordering::Relaxed);
            let answer = answer?;
            let path = answer.path.clone();
            let path_map = self.config.path_map();
            let root = self.config.artifact_root.clone();
            // Blocking only as long as resolving the path takes: the open never waits on a FIFO.
            let opened = actix_web::rt::task::spawn_blocking(move || {
                open_artifact(&path, path_map.as_ref(), &root)
            })
            .await
            .map_err(|e| {
                log::error!("the open task for {key} failed: {e}");
                BuildError::Internal("the open task failed")
            })?;
            match opened {
                Ok(file) => return Ok(file),
                Err(PathError::Vanished(p)) if forced.is_none() => {
                    log::warn!(
                        "Velox's artifact for {key} ({}) no longer exists; asking for a rebuild",
                        p.display()
                    );
                    self.metrics.retried(RetryReason::Vanished);
                    forced = Some(BuildRequest {
                        force_rebuild: true,
                        ..request.clone()
                    });
                }
                Err(e) => {
                    log::error!("refusing Velox's artifact for {key}: {e}");
                    return Err(BuildError::Velox(VeloxError::Failed {
                        message: "Velox's artifact is missing, empty, not a regular file, or outside artifact_root".into(),
                        logs: Some(answer.logs).filter(|l| !l.is_empty()),
                    }));
                }
            }
        }
    }
}

/// What the status route reports for a build whose binary could not be stored.
pub(super) fn not_stored() -> BuildError {
    BuildError::storage(std::io::Error::other(
        "the disk was full: the binary was served to the requests that waited for it, not stored",
    ))
}

/// Before a binary is stored: the free-space floor plus room for the binary itself, so that it
/// fits when evicting can make it fit.
fn make_room(store: &Store, limits: &Limits, metrics: &Metrics, file: &File) {
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    match store.enforce_with_room(limits, None, size) {
        Ok(evicted) => {
            for (victim, reason) in evicted {
                log::info!("evicted {victim} ({}) to make room", reason.as_str());
                metrics.evicted(reason);
            }
        }
        Err(e) => log::error!("making room for a new binary failed: {e}"),
    }
}
