//! The label values of the labelled counters, each enum in the order its counters are kept and
//! rendered. The layers that count name a reason with these; they live here so that the
//! registry imports none of those layers.

use std::sync::atomic::AtomicU64;

/// Why velox-cache called Velox again (docs/velox.md, "Outcomes and retries").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// No connection, a reset, connecting or sending past `request_timeout`, an answer cut off.
    Unreachable,
    /// Code `unavailable`, or a bare 502, 503 or 504 (a proxy in front of Velox).
    Unavailable,
    ResourceExhausted,
    Aborted,
    /// Velox is building the same key for another caller; waited out until `build_timeout`.
    AlreadyExists,
    /// Velox answered a path that no longer exists; asked again with `force_rebuild`.
    Vanished,
}

impl RetryReason {
    /// In the order of [`super::Metrics::velox_retries`].
    pub const ALL: [RetryReason; 6] = [
        RetryReason::Unreachable,
        RetryReason::Unavailable,
        RetryReason::ResourceExhausted,
        RetryReason::Aborted,
        RetryReason::AlreadyExists,
        RetryReason::Vanished,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Unreachable => "unreachable",
            RetryReason::Unavailable => "unavailable",
            RetryReason::ResourceExhausted => "resource_exhausted",
            RetryReason::Aborted => "aborted",
            RetryReason::AlreadyExists => "already_exists",
            RetryReason::Vanished => "vanished",
        }
    }
}

/// Why an entry left the cache (the `reason` label of `velox_cache_evictions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvictionReason {
    Size,
    Count,
    Age,
    Manual,
    /// The data dir's filesystem had less free space than `cache.min_free_gb`.
    FreeSpace,
}

impl EvictionReason {
    pub const ALL: [EvictionReason; 5] = [
        EvictionReason::Size,
        EvictionReason::Count,
        EvictionReason::Age,
        EvictionReason::Manual,
        EvictionReason::FreeSpace,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EvictionReason::Size => "size",
            EvictionReason::Count => "count",
            EvictionReason::Age => "age",
            EvictionReason::Manual => "manual",
            EvictionReason::FreeSpace => "free_space",
        }
    }
}

/// Why storing or keeping a binary failed (the `reason` label of
/// `velox_cache_store_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorReason {
    /// The filesystem had no room (`ENOSPC`, `EDQUOT`).
    Full,
    /// Any other failure of the disk or the index.
    Io,
    /// Stored bytes found not to match their digest.
    Corrupt,
}

/// `velox_resolve_total{outcome}`: floating plugin tags looked up by the resolver, which holds
/// these through its `Arc<Metrics>`.
#[derive(Default)]
pub struct ResolveCounters {
    pub resolved: AtomicU64,
    pub cached: AtomicU64,
    pub private: AtomicU64,
    pub error: AtomicU64,
}
