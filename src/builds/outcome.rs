//! What a build gives its waiters: the binary ([`Served`], [`Built`]) or why not
//! ([`BuildError`]). Both the service and the status reports use these; they import this
//! module, never each other's.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::unstored::Unstored;
use super::velox::VeloxError;
use crate::config::Config;
use crate::error::{ApiError, ErrorCode};
use crate::store::{BlobSource, EntryRecord};

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
    pub(super) fn storage(e: impl std::error::Error + Send + Sync + 'static) -> Self {
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
            BuildError::Velox(VeloxError::NoBuilder(why)) => {
                let mut err = ApiError::new(ErrorCode::VeloxUnavailable, why.clone())
                    .with_status(actix_web::http::StatusCode::SERVICE_UNAVAILABLE);
                // A probe may find a builder up again within one interval.
                let secs = config.velox.health_interval.as_secs().max(1);
                err.retry_after = Some(u32::try_from(secs).unwrap_or(u32::MAX));
                err
            }
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

#[derive(Debug, Clone)]
pub(super) struct Built {
    pub(super) entry: EntryRecord,
    /// The disk was full: `entry` was never committed, and this is Velox's file, shared by
    /// every waiter (docs/storage.md, "Disk full").
    pub(super) unstored: Option<Arc<Unstored>>,
    pub(super) build_time: Duration,
    /// Built by another replica; this one waited and fetched it from the bucket.
    pub(super) elsewhere: bool,
    /// The URL (credentials masked) of the Velox builder that built it, when this replica did.
    pub(super) builder: Option<String>,
}

pub(super) type Outcome = Result<Built, BuildError>;

/// What the status route reports for a build whose binary could not be stored.
pub(super) fn not_stored() -> BuildError {
    BuildError::storage(std::io::Error::other(
        "the disk was full: the binary was served to the requests that waited for it, not stored",
    ))
}
