//! Keeping the cache within its limits (docs/storage.md): hits counted in memory and written in batches,
//! entries removed with their manifest and blob, and size/count/age limits and the free-space
//! floor enforced by taking victims from the front of the eviction-ordered trees.

use std::collections::HashMap;
use std::fs;
use std::sync::PoisonError;
use std::time::Duration;

use super::evict::Evictions;
use super::index::PendingHits;
use super::{EntryRecord, Store, StoreError};
use crate::config::{CacheConfig, EvictionPolicy};
use crate::ids::CacheKey;

pub use crate::metrics::EvictionReason;

/// The limits the cache is kept within; zero means none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: u64,
    pub max_age: Duration,
    pub policy: EvictionPolicy,
    /// Free bytes kept on the data dir's filesystem (a hard floor); 0: none.
    pub min_free_bytes: u64,
}

/// The data dir's filesystem, as `statvfs` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes an unprivileged writer may still use.
    pub free: u64,
    pub total: u64,
}

/// `statvfs(2)` of the filesystem holding `path`.
pub fn disk_space(path: &std::path::Path) -> Option<DiskSpace> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid C string; `st` is written by the call before it is read.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some(DiskSpace {
        free: (st.f_bavail as u64).saturating_mul(frsize),
        total: (st.f_blocks as u64).saturating_mul(frsize),
    })
}

impl From<&CacheConfig> for Limits {
    fn from(c: &CacheConfig) -> Self {
        Limits {
            // GB as the Go middleware counts them: 1024³ bytes.
            max_bytes: (c.max_size_gb * 1024.0 * 1024.0 * 1024.0) as u64,
            max_entries: c.max_entries,
            max_age: Duration::from_secs_f64(c.max_age_days * 86_400.0),
            policy: c.eviction_policy,
            min_free_bytes: (c.min_free_gb * 1024.0 * 1024.0 * 1024.0) as u64,
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
        let _writing = self
            .hits_writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
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

    /// Removes the entry for `key`: the index first, with a tombstone (flushed), then its
    /// manifest, then its blob when no other entry uses it, then the tombstone.
    ///
    /// The blob file is renamed into `tmp/` under the write lock and deleted after it (deleting
    /// a large file takes milliseconds that inserts would wait for: BENCHMARKS.md).
    pub fn remove(&self, key: &CacheKey) -> Result<Option<EntryRecord>, StoreError> {
        let mut retired = None;
        let removed = {
            let _guard = self.locked()?;
            self.remove_locked_with(key, Some(&mut retired))
        };
        if let Some(path) = retired {
            remove_file_logged(&path);
        }
        removed
    }

    /// [`Store::remove`] with the write lock held by the caller; the blob file goes at once.
    pub(super) fn remove_locked(&self, key: &CacheKey) -> Result<Option<EntryRecord>, StoreError> {
        self.remove_locked_with(key, None)
    }

    /// With `retired`, an orphaned blob file is moved into `tmp/` and its path left there for
    /// the caller to delete without the lock.
    fn remove_locked_with(
        &self,
        key: &CacheKey,
        retired: Option<&mut Option<std::path::PathBuf>>,
    ) -> Result<Option<EntryRecord>, StoreError> {
        let Some((entry, orphan)) = self.uncommit_entry(key)? else {
            return Ok(None);
        };
        if let Ok(mut p) = self.pending.lock() {
            p.remove(key);
        }
        pause_for_a_crash_test();
        let manifest_gone = remove_file_logged(&self.manifest_path(key));
        if let Some(digest) = orphan {
            match retired {
                Some(retired) => *retired = self.retire_blob_file(&digest),
                None => {
                    self.remove_blob_file(&digest);
                }
            }
        }
        if manifest_gone {
            self.clear_tombstone(key)?;
        }
        Ok(Some(entry))
    }

    /// The data dir's filesystem now.
    pub fn disk_space(&self) -> Option<DiskSpace> {
        disk_space(&self.root)
    }

    /// Brings the cache within `limits`: expired entries first, then victims of the policy while
    /// there are too many entries or bytes, then while the filesystem has less free space than
    /// the floor. Pending hits are written first, so that decisions count them. `protect` (the
    /// entry just inserted) is never a victim.
    pub fn enforce(
        &self,
        limits: &Limits,
        protect: Option<&CacheKey>,
    ) -> Result<Vec<(CacheKey, EvictionReason)>, StoreError> {
        self.enforce_with_room(limits, protect, 0)
    }

    /// [`Store::enforce`], keeping `room` bytes free beyond the floor (for a binary about to be
    /// stored). Room that the whole filesystem could not give is not asked for: evicting
    /// everything for a binary that cannot fit anyway would only empty the cache.
    pub fn enforce_with_room(
        &self,
        limits: &Limits,
        protect: Option<&CacheKey>,
        room: u64,
    ) -> Result<Vec<(CacheKey, EvictionReason)>, StoreError> {
        let mut evicted = Vec::new();
        if limits.max_bytes == 0
            && limits.max_entries == 0
            && limits.max_age.is_zero()
            && limits.min_free_bytes == 0
            && room == 0
        {
            return Ok(evicted);
        }
        self.write_pending_hits()?;
        let guard = self.locked()?;
        // The victims of this call are finished as a group (evict.rs), even when a step failed,
        // so that what left the index leaves the disk too: now, or by the background's reap.
        let mut group = Evictions::default();
        let chosen = self.evict_over_limits(limits, protect, room, &mut group, &mut evicted);
        // Space wanted now cannot wait for the background's deletions (evict.rs); the blob
        // files are still deleted without the lock, which inserts wait for, before this returns.
        let now = evicted
            .iter()
            .any(|(_, reason)| *reason == EvictionReason::FreeSpace);
        let mut retired = Vec::new();
        let finished = self.finish_evictions(group, now, Some(&mut retired));
        drop(guard);
        for path in retired {
            remove_file_logged(&path);
        }
        chosen?;
        finished?;
        Ok(evicted)
    }

    fn evict_over_limits(
        &self,
        limits: &Limits,
        protect: Option<&CacheKey>,
        room: u64,
        group: &mut Evictions,
        evicted: &mut Vec<(CacheKey, EvictionReason)>,
    ) -> Result<(), StoreError> {
        if !limits.max_age.is_zero() {
            let cutoff = crate::util::now_ms().saturating_sub(limits.max_age.as_millis() as u64);
            while let Some((key, created)) = self.oldest(protect)? {
                if created >= cutoff {
                    break;
                }
                self.evict_locked(&key, group)?;
                evicted.push((key, EvictionReason::Age));
            }
        }
        loop {
            let totals = self.totals()?;
            // The compressed variants and image layers count too (docs/compression.md,
            // docs/images.md), less those of the victims so far and of earlier ones whose files
            // wait for a flush (evict.rs).
            let variants = self
                .variant_bytes()?
                .saturating_add(self.image_layer_bytes()?)
                .saturating_sub(group.variant_bytes)
                .saturating_sub(self.variant_bytes_leaving());
            let reason = if limits.max_entries > 0 && totals.entries > limits.max_entries {
                EvictionReason::Count
            } else if limits.max_bytes > 0
                && totals.bytes.saturating_add(variants) > limits.max_bytes
            {
                EvictionReason::Size
            } else {
                break;
            };
            let Some(key) = self.victim(limits.policy, protect)? else {
                // Everything left is pinned (or protected): the limits cannot be kept.
                warn_pinned_over(reason, &totals);
                break;
            };
            if self.evict_locked(&key, group)?.is_none() {
                // The trees named an entry that is gone: drop the stale positions by rebuilding
                // is the reconciler's job; stop rather than spin.
                log::error!("eviction tree names {key}, which has no entry");
                break;
            }
            evicted.push((key, reason));
        }
        self.keep_free_locked(limits, protect, room, group, evicted)
    }

    /// The free-space floor. A deleted blob that a download still holds open frees nothing
    /// until the download ends, so the bytes of every blob deleted here count as freed at once:
    /// otherwise a busy server would evict its whole cache to make room that is already coming.
    fn keep_free_locked(
        &self,
        limits: &Limits,
        protect: Option<&CacheKey>,
        room: u64,
        group: &mut Evictions,
        evicted: &mut Vec<(CacheKey, EvictionReason)>,
    ) -> Result<(), StoreError> {
        let Some(space) = self.disk_space() else {
            return Ok(());
        };
        let room = if room.saturating_add(limits.min_free_bytes) > space.total {
            0
        } else {
            room
        };
        let want = limits.min_free_bytes.saturating_add(room);
        if want == 0 {
            return Ok(());
        }
        // Files of earlier victims that wait for a flush (evict.rs) free their space first.
        if space.free < want && (!group.gone_is_empty() || self.evictions_waiting()) {
            // Deleted here, under the lock: the loop below reads the disk's free space.
            self.finish_evictions(std::mem::take(group), true, None)?;
        }
        let mut freed = 0u64;
        loop {
            let Some(space) = self.disk_space() else {
                return Ok(());
            };
            if space.free.saturating_add(freed) >= want {
                return Ok(());
            }
            let Some(key) = self.victim(limits.policy, protect)? else {
                return Ok(());
            };
            let variants_before = group.variant_bytes;
            let Some(entry) = self.evict_locked(&key, group)? else {
                log::error!("eviction tree names {key}, which has no entry");
                return Ok(());
            };
            if self.blob(&entry.digest)?.is_none() {
                freed = freed.saturating_add(entry.size);
            }
            freed = freed.saturating_add(group.variant_bytes - variants_before);
            evicted.push((key, EvictionReason::FreeSpace));
        }
    }
}

/// Deletes `path`; whether it is gone.
pub(super) fn remove_file_logged(path: &std::path::Path) -> bool {
    match fs::remove_file(path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            log::warn!("cannot delete {}: {e}", path.display());
            false
        }
    }
}

/// For the crash tests only (docs/storage.md, "Removing an entry"): with
/// `VELOX_TEST_PAUSE_AFTER_REMOVAL=<file>` in the environment, a removal whose index change is
/// committed creates `<file>` and then waits for ever, before it deletes the manifest, so that a
/// test can SIGKILL the process at exactly that moment. Read once; unset, this is one load.
fn pause_for_a_crash_test() {
    static PAUSE: std::sync::LazyLock<Option<std::path::PathBuf>> =
        std::sync::LazyLock::new(|| {
            std::env::var_os("VELOX_TEST_PAUSE_AFTER_REMOVAL").map(std::path::PathBuf::from)
        });
    if let Some(marker) = PAUSE.as_ref() {
        log::warn!("VELOX_TEST_PAUSE_AFTER_REMOVAL is set: pausing a removal for a crash test");
        if let Err(e) = fs::write(marker, b"paused") {
            log::error!("cannot write {}: {e}", marker.display());
        }
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

fn merge_hits(into: &mut HashMap<CacheKey, PendingHits>, key: CacheKey, hits: PendingHits) {
    let e = into.entry(key).or_default();
    e.count += hits.count;
    e.last_ms = e.last_ms.max(hits.last_ms);
}

/// When the last warning that pinned entries hold the cache over its limits was logged (ms).
static PINNED_WARNED_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Warns, at most every ten minutes, that pinned entries alone keep the cache over a limit
/// (docs/channels.md, "Pins"; `velox_cache_pinned_bytes` shows how much).
fn warn_pinned_over(reason: EvictionReason, totals: &super::Totals) {
    use std::sync::atomic::Ordering;
    let now = crate::util::now_ms();
    let last = PINNED_WARNED_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) < 600_000 && last != 0 {
        return;
    }
    PINNED_WARNED_MS.store(now, Ordering::Relaxed);
    let limit = match reason {
        EvictionReason::Count => "cache.max_entries",
        _ => "cache.max_size_gb",
    };
    log::warn!(
        "the cache holds {} entries, {} bytes: over {limit}, and every entry left is pinned (a channel's kept releases, or pinned by hand); unpin some, lower a channel's keep, or raise the limit",
        totals.entries,
        totals.bytes
    );
}
