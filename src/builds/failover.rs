//! The build call across the pool (docs/builders.md, docs/velox.md): a builder leased from the
//! pool, Velox's answers classified, and what can succeed on retry tried again.
//!
//! An attempt that fails for reachability (no connection, a reset, 502/503/504, `unavailable`,
//! an answer that is not Velox's) moves at once to another usable builder not yet tried in this
//! round, counted in `velox_builder_failovers_total`. When none is left, the round counts as one
//! of `retry.max_attempts` and the next starts after the backoff, over every usable builder.
//! With one builder that is docs/velox.md's retry schedule exactly. `already_exists` is waited
//! out on the builder that said it; `internal` and `invalid_argument` never move.

use std::sync::Arc;

use actix_web::web::Bytes;
use tokio::time::Instant;

use super::pool::{CallStatus, Lease, NoLease, Seen};
use super::velox::{
    backoff, jitter, Attempt, VeloxClient, VeloxError, VeloxSuccess, LAST_CALL_MARGIN,
};
use super::BuildRequest;
use crate::config::BuilderSpec;
use crate::metrics::RetryReason;

/// A build Velox answered, and the builder that answered it.
#[derive(Debug, Clone)]
pub struct Answered {
    pub success: VeloxSuccess,
    pub builder: Arc<BuilderSpec>,
    /// The builder's URL with any credentials masked (for provenance).
    pub builder_url: String,
}

impl VeloxClient {
    /// The error when no builder can be leased.
    fn no_builder(&self) -> VeloxError {
        let secs = self.pool.health_interval().as_secs().max(1);
        VeloxError::NoBuilder(format!(
            "every Velox builder is down or draining; the next probe is within {secs}s"
        ))
    }

    async fn lease(&self, exclude: &[usize], deadline: Instant) -> Result<Lease, VeloxError> {
        self.pool
            .lease(exclude, deadline)
            .await
            .map_err(|e| match e {
                NoLease::NoBuilder => self.no_builder(),
                NoLease::Timeout => VeloxError::Timeout,
            })
    }

    /// Asks a builder for the build, retrying and failing over what can succeed on retry,
    /// until `deadline`. `on_retry` is told of each call made again and its reason.
    ///
    /// The build holds one lease at a time. A builder that fails for reachability gets its
    /// place back before another is asked for, so that a build waiting for a full builder never
    /// holds a place on one that does not answer; a retry on the same builder (`already_exists`,
    /// `resource_exhausted`, `aborted`) keeps its place through the backoff.
    pub async fn build(
        &self,
        request: &BuildRequest,
        deadline: Instant,
        on_retry: &dyn Fn(RetryReason),
    ) -> Result<Answered, VeloxError> {
        let body =
            Bytes::from(serde_json::to_vec(request).map_err(|e| {
                VeloxError::InvalidArgument(format!("cannot encode the request: {e}"))
            })?);
        let mut attempts = 0;
        let mut waits = 0;
        // Builders that failed for reachability in this round.
        let mut tried: Vec<usize> = Vec::new();
        // The place the next call uses; `None`: a new round, any usable builder.
        let mut held: Option<Lease> = None;
        loop {
            if Instant::now() >= deadline {
                return Err(VeloxError::Timeout);
            }
            let lease = match held.take() {
                Some(lease) => lease,
                None => self.lease(&[], deadline).await?,
            };
            let i = lease.index();
            let url = lease.builder().spec.url.trim_end_matches('/').to_owned();
            let (attempt, seen) = self
                .attempt(
                    &format!("{url}{}", super::velox::BUILD_PROCEDURE),
                    &body,
                    deadline,
                )
                .await;
            // In a pool an answer that is not Velox's is not trusted: the builder is down and
            // the build moves. With `server_url` alone it is classified as docs/velox.md says.
            let garbage = matches!(seen, Some(Seen::Unreachable(_)))
                && !matches!(attempt, Attempt::Retry(..))
                && self.pool.pooled();
            if let Some(seen) = seen {
                self.pool.saw(i, seen);
            }
            let (reason, why) = match attempt {
                Attempt::Success(success) => {
                    self.pool.called(i, CallStatus::Success);
                    let builder = Arc::clone(&lease.builder().spec);
                    let builder_url = lease.builder().shown_url.clone();
                    return Ok(Answered {
                        success,
                        builder,
                        builder_url,
                    });
                }
                Attempt::Fatal(e) if garbage => {
                    log::warn!(
                        "Velox builder {}: {e}; not trusted",
                        lease.builder().spec.id
                    );
                    (RetryReason::Unreachable, e.to_string())
                }
                Attempt::Fatal(e) => {
                    let status = match e {
                        VeloxError::Timeout => CallStatus::Timeout,
                        _ => CallStatus::Error,
                    };
                    self.pool.called(i, status);
                    return Err(e);
                }
                Attempt::Retry(reason, why) => (reason, why),
            };
            let reachability =
                matches!(reason, RetryReason::Unreachable | RetryReason::Unavailable);
            if reachability {
                self.pool.called(i, CallStatus::Unavailable);
                tried.push(i);
                let from = lease.builder().spec.id.clone();
                // Its place first, then another builder's, at once when one is left in this
                // round.
                drop(lease);
                match self.pool.lease(&tried, deadline).await {
                    Ok(next) => {
                        log::warn!(
                            "Velox builder {from}: {why}; moving the build to builder {}",
                            next.builder().spec.id
                        );
                        self.pool.failed_over();
                        on_retry(reason);
                        held = Some(next);
                        continue;
                    }
                    Err(NoLease::Timeout) => return Err(VeloxError::Timeout),
                    Err(NoLease::NoBuilder) => {}
                }
                if self.pool.pooled() && self.pool.none_usable() {
                    log::warn!("Velox builder {from}: {why}; no builder is left");
                    return Err(self.no_builder());
                }
            } else {
                held = Some(lease);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let delay = if reason == RetryReason::AlreadyExists {
                // Another caller's build: its result will be in Velox's own cache. Wait as long
                // as build_timeout allows, and make the last call just before it.
                waits += 1;
                let delay =
                    jitter(backoff(&self.retry, waits)).min(left.saturating_sub(LAST_CALL_MARGIN));
                if delay.is_zero() {
                    self.pool.called(i, CallStatus::Timeout);
                    return Err(VeloxError::Timeout);
                }
                delay
            } else {
                attempts += 1;
                if left.is_zero() {
                    return Err(VeloxError::Timeout);
                }
                if attempts >= self.retry.max_attempts {
                    if !reachability {
                        self.pool.called(i, CallStatus::Unavailable);
                    }
                    return Err(VeloxError::Unavailable(why));
                }
                let delay = jitter(backoff(&self.retry, attempts));
                if delay >= left {
                    return Err(VeloxError::Unavailable(why));
                }
                delay
            };
            log::warn!("Velox: {why}; calling again in {delay:?}");
            on_retry(reason);
            // After a reachability round, the next starts over every usable builder (`held` is
            // empty); any other retry stays on the builder that said it.
            tokio::time::sleep(delay).await;
            if reachability {
                tried.clear();
            }
        }
    }
}
