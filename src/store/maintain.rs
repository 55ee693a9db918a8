//! Keeping the cache within its limits (docs/storage.md): hits counted in memory and written in batches,
//! entries removed with their manifest and blob, and size/count/age limits enforced by taking
//! victims from the front of the eviction-ordered trees.

use std::collections::HashMap;
use std::fs;
use std::time::Duration;

use super::index::PendingHits;
use super::{EntryRecord, Store, StoreError};
use crate::config::{CacheConfig, EvictionPolicy};
use crate::ids::CacheKey;

/// Why an entry left the cache (the `reason` label of `velox_cache_evictions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvictionReason {
    Size,
    Count,
    Age,
    Manual,
}

impl EvictionReason {
    pub const ALL: [EvictionReason; 4] = [
        EvictionReason::Size,
        EvictionReason::Count,
        EvictionReason::Age,
        EvictionReason::Manual,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EvictionReason::Size => "size",
            EvictionReason::Count => "count",
            EvictionReason::Age => "age",
            EvictionReason::Manual => "manual",
        }
    }
}

/// The limits the cache is kept within; zero means none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: u64,
    pub max_age: Duration,
    pub policy: EvictionPolicy,
}

impl From<&CacheConfig> for Limits {
    fn from(c: &CacheConfig) -> Self {
        Limits {
            // GB as the Go middleware counts them: 1024³ bytes.
            max_bytes: (c.max_size_gb * 1024.0 * 1024.0 * 1024.0) as u64,
            max_entries: c.max_entries,
            max_age: Duration::from_secs_f64(c.max_age_days * 86_400.0),
            policy: c.eviction_policy,
        }
    }
}

impl Store {
    /// Counts a hit in memory; [`Store::write_pending_hits`] writes the batch.
    pub fn note_hit(&self, key: &CacheKey) {
        let now = crate::util::now_ms();
        if let Ok(mut pending) = self.pending.lock() {
            merge_hits(
                &mut pending,
                *key,
                PendingHits {
                    count: 1,
                    last_ms: now,
                },
            );
        }
    }

    /// The hits for `key` counted but not yet written.
    pub fn pending_hits(&self, key: &CacheKey) -> PendingHits {
        self.pending
            .lock()
            .ok()
            .and_then(|p| p.get(key).copied())
            .unwrap_or_default()
    }

    /// Writes the hits counted so far as one transaction. On failure they are counted again, so
    /// a passing sled error loses nothing.
    pub fn write_pending_hits(&self) -> Result<usize, StoreError> {
        let batch = match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return Ok(0),
        };
        let n = batch.len();
        if let Err(e) = self.write_hits(&batch) {
            if let Ok(mut p) = self.pending.lock() {
                for (k, hits) in batch {
                    merge_hits(&mut p, k, hits);
                }
            }
            return Err(e);
        }
        Ok(n)
    }

    /// Removes the entry for `key`: the index first (flushed), then its manifest, then its blob
    /// when no other entry uses it.
    pub fn remove(&self, key: &CacheKey) -> Result<Option<EntryRecord>, StoreError> {
        let _guard = self.locked()?;
        self.remove_locked(key)
    }

    pub(super) fn remove_locked(&self, key: &CacheKey) -> Result<Option<EntryRecord>, StoreError> {
        let Some((entry, orphan)) = self.uncommit_entry(key)? else {
            return Ok(None);
        };
        if let Ok(mut p) = self.pending.lock() {
            p.remove(key);
        }
        remove_file_logged(&self.manifest_path(key));
        if let Some(digest) = orphan {
            remove_file_logged(&self.blob_path(&digest));
        }
        Ok(Some(entry))
    }

    /// Brings the cache within `limits`: expired entries first, then victims of the policy while
    /// there are too many entries or bytes. Pending hits are written first, so that decisions
    /// count them. `protect` (the entry just inserted) is never a victim.
    pub fn enforce(
        &self,
        limits: &Limits,
        protect: Option<&CacheKey>,
    ) -> Result<Vec<(CacheKey, EvictionReason)>, StoreError> {
        let mut evicted = Vec::new();
        if limits.max_bytes == 0 && limits.max_entries == 0 && limits.max_age.is_zero() {
            return Ok(evicted);
        }
        self.write_pending_hits()?;
        let _guard = self.locked()?;
        if !limits.max_age.is_zero() {
            let cutoff = crate::util::now_ms().saturating_sub(limits.max_age.as_millis() as u64);
            while let Some((key, created)) = self.oldest(protect)? {
                if created >= cutoff {
                    break;
                }
                self.remove_locked(&key)?;
                evicted.push((key, EvictionReason::Age));
            }
        }
        loop {
            let totals = self.totals()?;
            let reason = if limits.max_entries > 0 && totals.entries > limits.max_entries {
                EvictionReason::Count
            } else if limits.max_bytes > 0 && totals.bytes > limits.max_bytes {
                EvictionReason::Size
            } else {
                break;
            };
            let Some(key) = self.victim(limits.policy, protect)? else {
                break;
            };
            if self.remove_locked(&key)?.is_none() {
                // The trees named an entry that is gone: drop the stale positions by rebuilding
                // is the reconciler's job; stop rather than spin.
                log::error!("eviction tree names {key}, which has no entry");
                break;
            }
            evicted.push((key, reason));
        }
        Ok(evicted)
    }
}

fn remove_file_logged(path: &std::path::Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("cannot delete {}: {e}", path.display()),
    }
}

fn merge_hits(into: &mut HashMap<CacheKey, PendingHits>, key: CacheKey, hits: PendingHits) {
    let e = into.entry(key).or_default();
    e.count += hits.count;
    e.last_ms = e.last_ms.max(hits.last_ms);
}
