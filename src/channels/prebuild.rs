//! Pre-building (docs/channels.md, "Pre-building"): every `prebuild.poll`, and once at start,
//! each channel's recipe is resolved; a resolution that differs from the current release's is
//! built, platform by platform, behind the builds users asked for, and becomes current once
//! every platform is stored. A failure leaves the current release as it is and is reported (the
//! channel JSON, its event stream, the webhook, `velox_channel_releases_total{outcome="failed"}`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::watch;

use super::model::{self, Binary, Release};
use super::{Channels, PrebuildState};
use crate::builds::VeloxClient;

/// How often a pre-build waiting behind user builds looks again.
const BEHIND_USERS_POLL: Duration = Duration::from_millis(200);

/// Why a pre-build did not flip.
enum Skipped {
    /// The current release is the resolution's.
    Unchanged,
    /// The channel changed or went while it built: the next round takes the new definition.
    Superseded,
}

impl Channels {
    /// The pre-build loop, until `stop` says so. `velox` and `goproxy` are this loop's own
    /// clients (awc's are tied to the thread that made them).
    pub async fn run_prebuilds(
        self: Arc<Self>,
        velox: VeloxClient,
        goproxy: awc::Client,
        mut stop: watch::Receiver<bool>,
    ) {
        let poll = self.config.prebuild.poll;
        let at_once = self.config.prebuild.max_concurrent.max(1);
        loop {
            // The file's channels, when the start could not write them (a bucket down).
            self.sync_file_channels().await;
            // With replicas, another one may have flipped or changed a channel meanwhile.
            if let Err(e) = self.refresh().await {
                log::warn!("pre-build: cannot read the channels in the bucket: {e}");
            }
            let names: Vec<String> = match self.list() {
                Ok(list) => list.into_iter().map(|r| r.name).collect(),
                Err(e) => {
                    log::error!("pre-build: cannot list the channels: {e}");
                    Vec::new()
                }
            };
            let round = futures_util::stream::iter(names).for_each_concurrent(at_once, |name| {
                let this = Arc::clone(&self);
                let (velox, goproxy) = (&velox, &goproxy);
                async move { this.prebuild(&name, velox, goproxy).await }
            });
            tokio::select! {
                () = round => {}
                _ = stop.changed() => return,
            }
            let wait = async {
                if poll.is_zero() {
                    std::future::pending::<()>().await
                } else {
                    tokio::time::sleep(poll).await
                }
            };
            tokio::select! {
                () = wait => {}
                () = self.kick.notified() => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One channel's pre-build: resolve, and build and flip when the resolution moved.
    async fn prebuild(&self, name: &str, velox: &VeloxClient, goproxy: &awc::Client) {
        match self.try_prebuild(name, velox, goproxy).await {
            // Resolved to the current release (a failure reported before is over), or flipped.
            Ok(Some(Skipped::Unchanged)) | Ok(None) => {
                self.set_status(name, PrebuildState::Idle, None);
            }
            Ok(Some(Skipped::Superseded)) => {
                self.set_status(name, PrebuildState::Idle, None);
                self.kick();
            }
            Err(why) => {
                // Told once per failure: the rounds that fail the same way after it are not
                // counted, sent or logged again.
                if self.status(name).told.as_deref() == Some(&why) {
                    self.set_status(name, PrebuildState::Failed, Some(why));
                    return;
                }
                log::warn!(
                    "pre-build of channel `{name}` failed; its current release stays: {why}"
                );
                self.metrics.channels.failed();
                self.set_status(name, PrebuildState::Failed, Some(why.clone()));
                self.webhook(
                    "channel.prebuild.failed",
                    json!({"channel": name, "error": why}),
                );
            }
        }
    }

    /// `Ok(None)`: flipped. `Err`: why the pre-build failed, for the reports.
    async fn try_prebuild(
        &self,
        name: &str,
        velox: &VeloxClient,
        goproxy: &awc::Client,
    ) -> Result<Option<Skipped>, String> {
        let Some(record) = self.get(name).map_err(|e| e.to_string())? else {
            return Ok(Some(Skipped::Superseded));
        };
        let spec = &record.spec;
        let first = spec
            .platforms
            .first()
            .ok_or("the channel has no platform")?;
        let mut request = model::request_for(&spec.recipe(), first)
            .map_err(|e| format!("the recipe is refused: {}", e.message))?;
        let mut resolved = BTreeMap::new();
        if let Some(resolver) = &self.resolver {
            for r in resolver.resolve(goproxy, &mut request).await {
                resolved.insert(r.module, r.version);
            }
            let left = resolver.unresolved(&request);
            if !left.is_empty() {
                return Err(format!(
                    "the Go module proxy did not resolve {}",
                    left.join(", ")
                ));
            }
        }
        let recipe = model::recipe_of(&request);
        let id = model::release_id(&recipe, &spec.platforms);
        if record.current().is_some_and(|c| c.id == id) {
            return Ok(Some(Skipped::Unchanged));
        }
        log::info!(
            "channel `{name}`: release {id} to build ({})",
            if resolved.is_empty() {
                "no release yet".to_string()
            } else {
                resolved
                    .iter()
                    .map(|(m, v)| format!("{m}@{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        self.set_status(name, PrebuildState::Building, None);
        // The platforms build at once, each taking one of the `prebuild.max_concurrent` slots
        // (shared by every channel), in the recipe's order; the first failure ends the release.
        let builds = spec.platforms.iter().map(|platform| {
            let recipe = &recipe;
            async move {
                let _slot = self
                    .prebuild_slots
                    .acquire()
                    .await
                    .map_err(|_| format!("{platform}: the pre-build is stopping"))?;
                self.behind_user_builds().await;
                let request = model::request_for(recipe, platform)
                    .map_err(|e| format!("{platform}: the recipe is refused: {}", e.message))?;
                let key = request.cache_key();
                let served = self
                    .builds
                    .resolve(request, key, velox, None)
                    .await
                    .map_err(|e| format!("{platform}: {e}"))?;
                if !served.stored {
                    return Err(format!(
                        "{platform}: built, but the disk had no room to store it"
                    ));
                }
                let binary = Binary {
                    key,
                    digest: served.entry.digest,
                    size: served.entry.size,
                };
                Ok::<_, String>((platform.clone(), binary))
            }
        });
        let binaries: BTreeMap<String, Binary> = futures_util::future::try_join_all(builds)
            .await?
            .into_iter()
            .collect();
        let release = Release {
            id,
            created_ms: crate::util::now_ms(),
            recipe,
            resolved,
            binaries,
        };
        if self
            .flip(name, record.generation, release)
            .await
            .map_err(|e| e.to_string())?
        {
            self.set_status(name, PrebuildState::Idle, None);
            Ok(None)
        } else {
            Ok(Some(Skipped::Superseded))
        }
    }

    /// Waits while every build slot is taken: user builds go first.
    async fn behind_user_builds(&self) {
        while self.builds.in_flight() >= self.config.build_slots() {
            tokio::time::sleep(BEHIND_USERS_POLL).await;
        }
    }
}
