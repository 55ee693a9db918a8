//! The plain sections of the configuration: the cache's limits and eviction, Velox call retries,
//! and the resolution of floating tags with a Go module proxy.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;
use super::lenient::lenient_opt_string;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvictionPolicy {
    Lru,
    Lfu,
    Fifo,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub max_attempts: u32,
    #[serde(with = "duration")]
    pub initial_delay: Duration,
    #[serde(with = "duration")]
    pub max_delay: Duration,
    pub backoff_multiplier: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
            backoff_multiplier: 2.0,
        }
    }
}

/// Default of `cache.index_snapshot_writes` (docs/storage.md, "Snapshots while running"). Measured
/// at a million entries (BENCHMARKS.md, metadata): the first open after a SIGKILL took 0.38–0.49 s
/// with a snapshot every 100,000 writes, 3.8 s with none (SPEC §12: every open < 2 s).
pub const INDEX_SNAPSHOT_WRITES: u64 = 100_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub max_size_gb: f64,
    pub max_entries: u64,
    pub max_age_days: f64,
    #[serde(with = "duration")]
    pub cleanup_interval: Duration,
    pub eviction_policy: EvictionPolicy,
    #[serde(with = "duration")]
    pub access_update_interval: Duration,
    /// How long an entry built from floating references (`latest`, a branch) is served before the
    /// request rebuilds; 0 = never served from the cache.
    #[serde(with = "duration")]
    pub floating_ttl: Duration,
    /// How often the scrub re-hashes every blob; 0 turns it off.
    #[serde(with = "duration")]
    pub scrub_interval: Duration,
    /// MB/s (10^6 bytes) the scrub may read.
    pub scrub_rate_mb: f64,
    /// Free space eviction keeps on the data dir's filesystem, in GB (1024³ bytes).
    pub min_free_gb: f64,
    /// Index writes after which the running server snapshots its index (docs/storage.md);
    /// 0 = only at a graceful stop.
    pub index_snapshot_writes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_size_gb: 0.0,
            max_entries: 0,
            max_age_days: 0.0,
            cleanup_interval: Duration::from_secs(3600),
            eviction_policy: EvictionPolicy::Lru,
            access_update_interval: Duration::from_secs(5),
            floating_ttl: Duration::from_secs(30 * 60),
            scrub_interval: Duration::from_secs(24 * 3600),
            scrub_rate_mb: 64.0,
            min_free_gb: 1.0,
            index_snapshot_writes: INDEX_SNAPSHOT_WRITES,
        }
    }
}

/// Resolution of floating plugin tags with a Go module proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResolveConfig {
    /// GOPROXY URL (or GOPROXY's comma-separated list); none = no resolution.
    #[serde(
        deserialize_with = "lenient_opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub goproxy: Option<String>,
    /// How long a resolution is remembered.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// How long one proxy may take to answer before the tag is left unresolved.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// How long all the lookups of one request may take together; tags still unresolved then
    /// stay as asked.
    #[serde(with = "duration")]
    pub deadline: Duration,
    /// Most lookups of one request under way at once.
    pub concurrency: usize,
    /// Module patterns never sent to the proxy, in GOPRIVATE's form; default: `GOPRIVATE`.
    #[serde(
        deserialize_with = "lenient_opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub private: Option<String>,
}

impl Default for ResolveConfig {
    fn default() -> Self {
        ResolveConfig {
            goproxy: None,
            ttl: Duration::from_secs(300),
            timeout: Duration::from_secs(3),
            deadline: Duration::from_secs(10),
            concurrency: 8,
            private: std::env::var("GOPRIVATE")
                .ok()
                .filter(|v| !v.trim().is_empty()),
        }
    }
}
