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
        match self
            .reopen()
            .and_then(|()| self.probe_index().map_err(Reopen::from))
        {
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

    /// Closes the index and opens it again. Holds the index lock for writing throughout, so that
    /// requests wait for the new index rather than fail.
    fn reopen(&self) -> Result<(), Reopen> {
        let mut slot = self.index.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = slot.as_ref() {
            // sled's files stay locked while any handle is open: wait for requests under way.
            let deadline = Instant::now() + LET_GO_WITHIN;
            while Arc::strong_count(old) > 1 {
                if Instant::now() > deadline {
                    return Err(Reopen::Busy);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // Closed before the new one opens, even when the open fails: the index is then `None`
        // (every call says [`StoreError::Closed`]) until an attempt succeeds.
        drop(slot.take());
        let db = open_meta(&self.root)?;
        *slot = Some(Arc::new(Index::new(db)?));
        Ok(())
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
