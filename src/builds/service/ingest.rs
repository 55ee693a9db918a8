//! A build from start to stored binary: the call to Velox under the build deadline, the checks
//! on the artifact, the ingest into the store (room made first), and the hand-over through the
//! bucket when another replica builds the same key.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use super::admission::{Admitted, Count};
use super::{BuildService, Progress};
use crate::builds::artifact::{open_artifact, PathError};
use crate::builds::outcome::{not_stored, BuildError, Built, Outcome};
use crate::builds::unstored::Unstored;
use crate::builds::velox::{VeloxClient, VeloxError};
use crate::builds::{BuildRequest, CacheKey};
use crate::metrics::{Metrics, RetryReason, StoreErrorReason};
use crate::store::shared::{Artifact, Claim, SharedError};
use crate::store::{EntryRecord, IngestError, Limits, Store};

/// A stored binary: its entry, whether another replica built it, and Velox's own file when the
/// disk had no room for it.
type Stored = (EntryRecord, bool, Option<Arc<Unstored>>);

impl BuildService {
    // The task's whole context; a struct would only be unpacked again on the next line.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run_build(
        self: Arc<Self>,
        request: BuildRequest,
        key: CacheKey,
        velox: VeloxClient,
        deadline: Instant,
        tx: watch::Sender<Option<Outcome>>,
        progress: watch::Sender<Progress>,
        ticket: super::BuildTicket,
    ) {
        // Whatever ends this task (an outcome, a panic, the worker stopping), the key must leave
        // the in-flight map and its admission must be returned, or the key would wait forever.
        let _slot = Admitted {
            service: &self,
            key,
        };
        let started = Instant::now();
        let tracked = self.activity.track(key, &request);
        let outcome = match tokio::time::timeout_at(
            deadline,
            self.build(&request, key, &velox, deadline, &progress, &ticket.owner),
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => Err(BuildError::Velox(VeloxError::Timeout)),
        }
        .map(|((entry, elsewhere, unstored), builder)| Built {
            entry,
            unstored,
            build_time: started.elapsed(),
            elsewhere,
            builder,
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
                if let (Some(hook), None) = (self.on_built.get(), &b.unstored) {
                    let finished = std::time::SystemTime::now();
                    let facts = super::BuiltFacts {
                        key,
                        entry: b.entry.clone(),
                        request: request.clone(),
                        velox_server: b.builder.clone().unwrap_or_default(),
                        resolved: self.resolved(&key).map(|r| r.to_vec()).unwrap_or_default(),
                        started: finished.checked_sub(b.build_time).unwrap_or(finished),
                        finished,
                    };
                    let hook = Arc::clone(hook);
                    actix_web::rt::task::spawn_blocking(move || hook(facts));
                }
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
        tracked.ended(&outcome);
        if let Some(on_end) = ticket.on_end {
            on_end(match &outcome {
                Ok(_) => "success",
                Err(BuildError::Velox(VeloxError::Timeout)) => "timeout",
                Err(_) => "error",
            });
        }
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
        owner: &str,
    ) -> Result<(Stored, Option<String>), BuildError> {
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
                return Ok(((entry, true, None), None));
            }
        };
        let permit = {
            let _queued = Count::up(&self.metrics.builds_queued);
            self.slots.acquire(owner).await
        };
        let _active = Count::up(&self.metrics.builds_active);
        progress.send_replace(Progress::Building { velox_attempts: 1 });
        let started = Instant::now();
        let (file, builder) = self.fetch(request, key, velox, deadline, progress).await?;
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
            Ok(result) => result.map(|stored| (stored, Some(builder))),
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
    ) -> Result<(File, String), BuildError> {
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
            let path = answer.success.path.clone();
            // The builder that answered names a file on its own volume.
            let path_map = answer.builder.path_map.clone();
            let root = answer.builder.artifact_root.clone();
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
                Ok(file) => return Ok((file, answer.builder_url)),
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
                        logs: Some(answer.success.logs).filter(|l| !l.is_empty()),
                    }));
                }
            }
        }
    }
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
