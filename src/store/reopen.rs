//! Reopening the index after sled refused writes (docs/storage.md, "Disk full").
//!
//! sled 0.34 keeps the first error of a write to its log (a full disk's `ENOSPC`, from its
//! flusher thread or from a flush) as a global error of the open `Db`, and every later write
//! returns it, even once the disk has room again; only opening the `Db` anew clears it. Reads
//! still work, so hits go on being served from the index as it is.
//!
//! So: every sled write error is noted; [`Store::heal_index`], run every second, then probes the
//! index with a durable write. While the probe fails and the disk has less than [`FULL_BELOW`]
//! free, it waits. With room again, it closes the index and opens it with every check of a start
//! (a damaged one is set aside and rebuilt from the manifests), then reconciles the index with
//! the files, as after a start. [`REOPEN_ATTEMPTS`] reopens failing in a row make the index
//! [`IndexState::Unrecoverable`]: `/healthz` then fails, so that an orchestrator restarts the
//! process. The attempts go on meanwhile; one that succeeds clears the state.
//!
//! The same reopen keeps the first open after a crash short (docs/storage.md, "Snapshots while
//! running"). sled 0.34 writes its page-table snapshot only while opening, and an open replays
//! the log written since the last snapshot: after months of hit batches, that is months of log.
//! So the writes to the index are counted, and once [`Store::snapshot_if_due`] finds more than
//! `cache.index_snapshot_writes` since the last snapshot, it flushes, closes and reopens the
//! index, which has sled write a new snapshot. Requests wait behind the index lock for that
//! moment (the replay of those writes, about 0.2 s for 100,000 on the benchmark machine), and a
//! crash replays at most that many writes at the next start.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::{open_meta, Index, Store, StoreError};

/// Below this much free space a refused write is the disk being full, and a reopen waits.
pub const FULL_BELOW: u64 = 1024 * 1024;

/// Reopens failing in a row after which the index is [`IndexState::Unrecoverable`].
pub const REOPEN_ATTEMPTS: u32 = 3;

/// How long a reopen waits for requests to let go of the old index before trying again later.
const LET_GO_WITHIN: Duration = Duration::from_secs(5);

/// Default of `cache.index_snapshot_writes`: index writes (an entry stored or removed, a key of a
/// hit batch) after which a running server reopens its index to snapshot it.
pub const SNAPSHOT_AFTER_WRITES: u64 = crate::config::INDEX_SNAPSHOT_WRITES;

/// How long a snapshot waits for requests to let go of the index, holding new ones back
/// meanwhile, before it gives up until the next try: a snapshot is never urgent, and a request
/// that holds the index for long (the start-up pass walking every entry) must not stall the
/// others.
const SNAPSHOT_LET_GO_WITHIN: Duration = Duration::from_millis(50);

/// The index as `/readyz` and `/healthz` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexState {
    /// Takes writes (as far as the last write told).
    Ok,
    /// Refused a write and is not reopened yet: waiting for room, or for the next attempt.
    Failed,
    /// [`REOPEN_ATTEMPTS`] reopens failed in a row.
    Unrecoverable,
}

impl IndexState {
    pub fn as_str(self) -> &'static str {
        match self {
            IndexState::Ok => "ok",
            IndexState::Failed => "failed",
            IndexState::Unrecoverable => "unrecoverable",
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct IndexHealth {
    /// sled refused a write since the last probe that passed.
    failed: AtomicBool,
    /// Reopens that failed since the last that succeeded.
    failing_reopens: AtomicU32,
    reopened: AtomicU64,
    reopen_errors: AtomicU64,
    /// Index writes since the last open of the index (so, since its last snapshot).
    writes: AtomicU64,
    /// `cache.index_snapshot_writes`; 0: no snapshot while running.
    snapshot_after: AtomicU64,
    /// Snapshots taken while running, since the start.
    snapshots: AtomicU64,
}

impl IndexHealth {
    pub(super) fn new() -> IndexHealth {
        IndexHealth {
            snapshot_after: AtomicU64::new(SNAPSHOT_AFTER_WRITES),
            ..IndexHealth::default()
        }
    }
}

impl Store {
    /// `r`, noting a sled error (the index may have stopped taking writes) for
    /// [`Store::heal_index`].
    pub(super) fn noted<T, E: Into<StoreError>>(&self, r: Result<T, E>) -> Result<T, StoreError> {
        r.map_err(|e| {
            let e = e.into();
            if matches!(e, StoreError::Sled(_) | StoreError::Closed) {
                self.health.failed.store(true, Ordering::Relaxed);
            }
            e
        })
    }

    /// Counts `n` writes to the index towards the next snapshot.
    pub(super) fn count_writes(&self, n: u64) {
        self.health.writes.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets `cache.index_snapshot_writes`: the writes after which [`Store::snapshot_if_due`]
    /// snapshots the index; 0 turns it off.
    pub fn set_snapshot_after(&self, writes: u64) {
        self.health.snapshot_after.store(writes, Ordering::Relaxed);
    }

    /// Index writes since the index was last opened, that is since its last snapshot: what the
    /// next open would replay after a crash.
    pub fn writes_since_snapshot(&self) -> u64 {
        self.health.writes.load(Ordering::Relaxed)
    }

    /// Snapshots taken while running since the start.
    pub fn index_snapshots(&self) -> u64 {
        self.health.snapshots.load(Ordering::Relaxed)
    }

    /// Snapshots the index (by reopening it) when more writes than `cache.index_snapshot_writes`
    /// were made since the last snapshot and the index is healthy (after a refused write,
    /// [`Store::heal_index`] reopens it instead). Returns whether it did. Requests that come
    /// meanwhile wait for the new index; when requests do not let go of the old one within
    /// 50 ms, nothing is closed and the next call tries again. Blocks: run it on the blocking pool.
    pub fn snapshot_if_due(&self) -> bool {
        let after = self.health.snapshot_after.load(Ordering::Relaxed);
        let writes = self.health.writes.load(Ordering::Relaxed);
        if after == 0 || writes < after || self.health.failed.load(Ordering::Relaxed) {
            return false;
        }
        // Written to disk before the index is closed, so that the reopen replays rather than
        // loses them (dropping sled flushes too, but would only log a failure).
        if let Err(e) = self.flush() {
            log::error!("no index snapshot: the index refused a flush: {e}");
            return false;
        }
        // Someone holding the index for long (the start-up pass) would make the reopen wait
        // for nothing while holding requests back: look for a moment when nobody holds it.
        let idle = (0..20).any(|_| {
            let held = self.ix().map_or(usize::MAX, |ix| Arc::strong_count(&ix));
            // The slot's reference and the one just taken.
            held <= 2 || {
                std::thread::sleep(Duration::from_millis(1));
                false
            }
        });
        if !idle {
            log::debug!("the index is in use; its snapshot is tried again later");
            return false;
        }
        let started = Instant::now();
        match self.reopen(SNAPSHOT_LET_GO_WITHIN) {
            Ok(created) => {
                self.restore_if_created(created);
                let n = self.health.snapshots.fetch_add(1, Ordering::Relaxed) + 1;
                log::info!(
                    "index snapshot {n} written while running, after {writes} index writes, in {:.3}s; \
                     a crash now replays only the writes from here",
                    started.elapsed().as_secs_f64()
                );
                true
            }
            Err(Reopen::Busy) => {
                log::debug!("the index is in use; its snapshot is tried again later");
                false
            }
            Err(Reopen::Failed(e)) => {
                // The index is closed (or refuses writes): the heal reopens it, as after a
                // refused write, and fails `/healthz` if it cannot.
                self.health.failed.store(true, Ordering::Relaxed);
                self.health.reopen_errors.fetch_add(1, Ordering::Relaxed);
                self.health.failing_reopens.fetch_add(1, Ordering::Relaxed);
                log::error!("the index could not be reopened for its snapshot: {e}");
                false
            }
        }
    }

    /// A durable write to the index: a probe key inserted and flushed.
    pub(super) fn probe_index(&self) -> Result<(), StoreError> {
        let ix = self.ix();
        let ix = self.noted(ix)?;
        let written = ix
            .counters
            .insert(b"ready_probe", &crate::util::now_ms().to_be_bytes())
            .and_then(|_| ix.db.flush());
        self.noted(written)?;
        Ok(())
    }

    pub fn index_state(&self) -> IndexState {
        if self.health.failing_reopens.load(Ordering::Relaxed) >= REOPEN_ATTEMPTS {
            IndexState::Unrecoverable
        } else if self.health.failed.load(Ordering::Relaxed) {
            IndexState::Failed
        } else {
            IndexState::Ok
        }
    }

    /// Reopens that succeeded and that failed, since the start.
    pub fn index_reopens(&self) -> (u64, u64) {
        (
            self.health.reopened.load(Ordering::Relaxed),
            self.health.reopen_errors.load(Ordering::Relaxed),
        )
    }

    /// After a refused write: probes the index, and reopens it when it still refuses writes and
    /// the disk has room (see the module). Does nothing (one atomic load) while all is well.
    /// Blocks: run it on the blocking pool.
    pub fn heal_index(&self) {
        if !self.health.failed.load(Ordering::Relaxed) {
            return;
        }
        match self.probe_index() {
            Ok(()) => {
                log::info!("the index takes writes again");
                self.health.failed.store(false, Ordering::Relaxed);
                self.health.failing_reopens.store(0, Ordering::Relaxed);
                return;
            }
            Err(e) => log::debug!("the index still refuses writes: {e}"),
        }
        // Without room, a reopen would refuse writes too (or fail): wait for space.
        if self.disk_space().is_some_and(|d| d.free < FULL_BELOW) {
            return;
        }
        match self.reopen(LET_GO_WITHIN).and_then(|created| {
            self.restore_if_created(created);
            self.probe_index().map_err(Reopen::from)
        }) {
            Ok(()) => {
                self.health.reopened.fetch_add(1, Ordering::Relaxed);
                self.health.failing_reopens.store(0, Ordering::Relaxed);
                self.health.failed.store(false, Ordering::Relaxed);
                log::warn!("the index refused writes and was reopened; it takes writes again");
                // As after a start: entries whose writes were lost, manifests not indexed.
                match self.reconcile() {
                    Ok(report) => log::info!("reconciliation after the reopen: {report:?}"),
                    Err(e) => log::error!("reconciliation after the reopen failed: {e}"),
                }
            }
            Err(Reopen::Busy) => {
                log::warn!("the index is still in use; the reopen is tried again later")
            }
            Err(Reopen::Failed(e)) => {
                self.health.reopen_errors.fetch_add(1, Ordering::Relaxed);
                let n = self.health.failing_reopens.fetch_add(1, Ordering::Relaxed) + 1;
                log::error!(
                    "cannot reopen the index ({n} of {REOPEN_ATTEMPTS} attempts in a row): {e}"
                );
                if n == REOPEN_ATTEMPTS {
                    log::error!(
                        "the index cannot be reopened; /healthz fails so that the process is restarted"
                    );
                }
            }
        }
    }

    /// Closes the index and opens it again (which writes sled's snapshot). Holds the index lock
    /// for writing throughout, so that requests wait for the new index rather than fail; gives
    /// up, closing nothing, when requests under way do not let go of the old one within
    /// `let_go`.
    ///
    /// Says whether the index it opened is a new one (the old one damaged and set aside).
    fn reopen(&self, let_go: Duration) -> Result<bool, Reopen> {
        let mut slot = self.index.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = slot.as_ref() {
            // sled's files stay locked while any handle is open: wait for requests under way.
            let deadline = Instant::now() + let_go;
            while Arc::strong_count(old) > 1 {
                if Instant::now() > deadline {
                    return Err(Reopen::Busy);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // Nobody writes now: whatever the open replays is counted until here.
        self.health.writes.store(0, Ordering::Relaxed);
        // Closed before the new one opens, even when the open fails: the index is then `None`
        // (every call says [`StoreError::Closed`]) until an attempt succeeds.
        drop(slot.take());
        let (db, created) = open_meta(&self.root)?;
        *slot = Some(Arc::new(Index::new(db)?));
        Ok(created)
    }

    /// After a reopen that had to start a new index: what is kept beside it comes back
    /// ([`super::kept`]), as at a start.
    fn restore_if_created(&self, created: bool) {
        if !created {
            return;
        }
        if let Err(e) = self.restore_kept() {
            log::error!(
                "a new index: the channels and pins kept beside it could not be restored: {e}"
            );
        }
    }
}

enum Reopen {
    /// Requests held the old index too long; nothing was closed.
    Busy,
    Failed(StoreError),
}

impl From<StoreError> for Reopen {
    fn from(e: StoreError) -> Self {
        Reopen::Failed(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{CacheKey, Digest};
    use crate::store::EntryRecord;

    fn items(from: u8, to: u8) -> Vec<(CacheKey, EntryRecord)> {
        (from..to)
            .map(|i| {
                let entry = EntryRecord {
                    digest: Digest([i; 32]),
                    size: 10,
                    created_ms: u64::from(i),
                    last_access_ms: u64::from(i),
                    access_count: 1,
                    build_ms: 1,
                    file_name: "rr".into(),
                };
                (CacheKey([i; 32]), entry)
            })
            .collect()
    }

    /// sled's snapshot files, `meta/snap.<lsn>`.
    fn snapshots(root: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(root.join("meta"))
            .expect("meta")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("snap.") && !n.ends_with(".generating"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_writes_past_the_threshold_are_snapshotted_and_nothing_is_lost() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("data");
        let store = Store::open(&root).expect("open");
        store.set_snapshot_after(30);
        store.bulk_index(&items(0, 20)).expect("index");
        assert_eq!(store.writes_since_snapshot(), 20);
        assert!(!store.snapshot_if_due(), "20 writes are below 30");
        let at_open = snapshots(&root);

        store.bulk_index(&items(20, 40)).expect("index");
        assert_eq!(store.writes_since_snapshot(), 40);
        assert!(store.snapshot_if_due());
        assert_eq!(store.writes_since_snapshot(), 0);
        assert_eq!(store.index_snapshots(), 1);
        assert_ne!(snapshots(&root), at_open, "a new snapshot was written");
        assert_eq!(store.index_state(), IndexState::Ok);
        assert_eq!(store.index_reopens(), (0, 0), "not counted as a heal");
        assert_eq!(store.totals().expect("totals").entries, 40);
        for (key, entry) in items(0, 40) {
            assert_eq!(store.lookup(&key).expect("lookup"), Some(entry));
        }
        // The new index takes writes.
        store.bulk_index(&items(40, 41)).expect("index");
        assert_eq!(store.writes_since_snapshot(), 1);
    }

    #[test]
    fn a_snapshot_waits_for_nobody_holding_the_index() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("data")).expect("open");
        store.set_snapshot_after(5);
        store.bulk_index(&items(0, 10)).expect("index");
        // Held as the start-up pass holds it while it walks every entry.
        let held = store.ix().expect("index");
        assert!(!store.snapshot_if_due(), "given up while the index is held");
        assert_eq!(store.writes_since_snapshot(), 10, "still due");
        assert_eq!(store.index_snapshots(), 0);
        assert_eq!(held.entries.len(), 10, "the held index still works");
        drop(held);
        assert!(store.snapshot_if_due());
        assert_eq!(store.totals().expect("totals").entries, 10);
    }

    #[test]
    fn no_snapshot_while_running_when_turned_off() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("data")).expect("open");
        store.set_snapshot_after(0);
        store.bulk_index(&items(0, 10)).expect("index");
        assert!(!store.snapshot_if_due());
        assert_eq!(store.index_snapshots(), 0);
    }
}
