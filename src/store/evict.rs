//! Evictions committed as a group (docs/storage.md, "Limits and eviction"): the victims of one
//! enforcement leave the index one transaction each, and their manifests and blobs are deleted
//! only once those removals are on disk.
//!
//! A removal must survive a crash before its files go (sled loses unflushed writes): otherwise
//! the next start would find an entry whose manifest or blob is gone. A crash before the flush
//! leaves every victim whole in the index and on disk, and the start-up pass evicts them again;
//! a crash after it leaves tombstones, by which the start-up pass deletes what remains.
//!
//! Where the flush happens depends on who listens ([`Store::on_evictions`]). The server listens:
//! an enforcement then only takes its victims out of the index and queues their files, and a
//! background task flushes once for everything queued (outside the write lock, and usually for
//! nothing: each insert's own flush and sled's periodic one have most often written the removals
//! already) and deletes the files. An enforcement that must free disk space now (the free-space
//! floor, room for a binary about to be stored) flushes and deletes before it returns, as does
//! every enforcement when nobody listens (the command line, the library's tests).

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::{maintain::remove_file_logged, EntryRecord, Store, StoreError};
use crate::ids::{CacheKey, Digest};

/// Victims out of the index whose files wait for a flush.
#[derive(Default)]
pub(super) struct Evictions {
    /// Each victim's key and, when it held the last reference to its blob, that blob's digest.
    gone: Vec<(CacheKey, Option<Digest>)>,
    /// Bytes of the compressed variants and image layers of the blobs in `gone`, still on disk
    /// and counted until their files are deleted.
    pub(super) variant_bytes: u64,
}

impl Evictions {
    pub(super) fn gone_is_empty(&self) -> bool {
        self.gone.is_empty()
    }

    fn append(&mut self, mut other: Evictions) {
        self.gone.append(&mut other.gone);
        self.variant_bytes = self.variant_bytes.saturating_add(other.variant_bytes);
    }
}

impl Store {
    /// Removes the entry for `key` from the index without flushing, and keeps its files for
    /// [`Store::finish_evictions`]. The caller holds the write lock until then.
    pub(super) fn evict_locked(
        &self,
        key: &CacheKey,
        group: &mut Evictions,
    ) -> Result<Option<EntryRecord>, StoreError> {
        let Some((entry, orphan)) = self.uncommit_unflushed(key)? else {
            return Ok(None);
        };
        if let Ok(mut p) = self.pending.lock() {
            p.remove(key);
        }
        if let Some(blob) = &orphan {
            group.variant_bytes = group
                .variant_bytes
                .saturating_add(self.variant_bytes_of(blob))
                .saturating_add(self.image_layer_bytes_of(blob));
        }
        group.gone.push((*key, orphan));
        Ok(Some(entry))
    }

    /// Runs `f` whenever victims wait for [`Store::reap_evictions`]: from then on, enforcements
    /// that need no disk space at once leave the flush and the deletions to whoever `f` wakes.
    pub fn on_evictions(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.evictions_hook.set(Box::new(f));
    }

    /// Bytes of variants and layers whose blobs were evicted but whose files wait for
    /// [`Store::reap_evictions`]: what the size limit no longer counts.
    pub(super) fn variant_bytes_leaving(&self) -> u64 {
        self.leaving_variant_bytes.load(Ordering::Relaxed)
    }

    /// Whether victims wait for their files to be deleted.
    pub(super) fn evictions_waiting(&self) -> bool {
        self.waiting_evictions
            .lock()
            .map(|w| !w.gone.is_empty())
            .unwrap_or(false)
    }

    /// Ends an enforcement, with the write lock held. Queues the group's files for the listener
    /// when there is one and `now` is not asked for; otherwise flushes and deletes, the files of
    /// everything queued before included. When the flush fails no file is deleted (the removals
    /// may not have reached the disk): the victims wait for the next flush that works, and a
    /// start before it finds them whole and indexes them again. With `retired`, blob files
    /// deleted now are moved into `tmp/` instead and their paths pushed there, for the caller to
    /// delete once it has let the lock go (before it returns).
    pub(super) fn finish_evictions(
        &self,
        group: Evictions,
        now: bool,
        retired: Option<&mut Vec<PathBuf>>,
    ) -> Result<(), StoreError> {
        let hook = self.evictions_hook.get().filter(|_| !now);
        if group.gone.is_empty() && (hook.is_some() || !self.evictions_waiting()) {
            return Ok(());
        }
        self.queue(group);
        if let Some(hook) = hook {
            hook();
            return Ok(());
        }
        let batch = self.flushed(self.take_waiting())?;
        self.delete_evicted(batch, retired);
        Ok(())
    }

    /// Flushes the index once for every victim queued so far and deletes their files; returns
    /// how many victims' files were dealt with. The flush holds no lock, so that inserts and
    /// further evictions go on meanwhile. A victim whose key was stored again since keeps the
    /// new manifest, and a blob referenced again is kept.
    pub fn reap_evictions(&self) -> Result<usize, StoreError> {
        let batch = self.take_waiting();
        if batch.gone.is_empty() {
            return Ok(0);
        }
        let batch = self.flushed(batch)?;
        let mut retired = Vec::new();
        let n = {
            let _guard = match self.locked() {
                Ok(guard) => guard,
                Err(e) => {
                    self.requeue(batch);
                    return Err(e);
                }
            };
            self.delete_evicted(batch, Some(&mut retired))
        };
        // The blobs' own deletions, which take milliseconds each, without the lock.
        for path in retired {
            remove_file_logged(&path);
        }
        Ok(n)
    }

    /// Flushes the index for `batch` and hands it back; when the flush fails, the batch waits
    /// again (its files kept) and the error is returned.
    fn flushed(&self, batch: Evictions) -> Result<Evictions, StoreError> {
        match self.flush() {
            Ok(()) => Ok(batch),
            Err(e) => {
                log::error!(
                    "the index refused the flush of {} evictions; their files are kept until a flush works: {e}",
                    batch.gone.len()
                );
                self.requeue(batch);
                Err(e)
            }
        }
    }

    fn queue(&self, group: Evictions) {
        self.leaving_variant_bytes
            .fetch_add(group.variant_bytes, Ordering::Relaxed);
        let mut waiting = self
            .waiting_evictions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        waiting.append(group);
    }

    /// Puts back a batch taken by [`Store::take_waiting`] whose flush failed.
    fn requeue(&self, batch: Evictions) {
        let mut waiting = self
            .waiting_evictions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        waiting.append(batch);
    }

    fn take_waiting(&self) -> Evictions {
        std::mem::take(
            &mut *self
                .waiting_evictions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Deletes each victim's manifest and then its blob when no entry uses it, the write lock
    /// held and the removals flushed. With `retired`, blob files are moved into `tmp/` and
    /// their paths pushed there, for the caller to delete without the lock. Returns how many
    /// victims there were.
    fn delete_evicted(&self, batch: Evictions, mut retired: Option<&mut Vec<PathBuf>>) -> usize {
        let n = batch.gone.len();
        for (key, orphan) in batch.gone {
            // Stored again since it was evicted: the manifest there is the new entry's.
            let back = self.ix().and_then(|ix| Ok(ix.entries.contains_key(key.0)?));
            let manifest_gone = match back {
                Ok(false) => remove_file_logged(&self.manifest_path(&key)),
                Ok(true) => false,
                Err(e) => {
                    log::warn!(
                        "cannot tell whether the evicted {key} is back; its manifest is kept: {e}"
                    );
                    false
                }
            };
            if let Some(digest) = orphan {
                match self.blob(&digest) {
                    // No entry refers to it: its file, variants and layers go.
                    Ok(None) => match retired.as_deref_mut() {
                        Some(retired) => retired.extend(self.retire_blob_file(&digest)),
                        None => {
                            self.remove_blob_file(&digest);
                        }
                    },
                    Ok(Some(_)) => {}
                    Err(e) => log::warn!(
                        "cannot tell whether blob {digest} is used again; it is kept: {e}"
                    ),
                }
            }
            // The removal's tombstone (index.rs) has done its work once the manifest is gone; a
            // tombstone left behind is cleared by the next start's pass.
            if manifest_gone {
                if let Err(e) = self.clear_tombstone(&key) {
                    log::warn!("cannot clear the tombstone of the evicted {key}: {e}");
                }
            }
        }
        self.leaving_variant_bytes.fetch_sub(
            batch.variant_bytes.min(self.variant_bytes_leaving()),
            Ordering::Relaxed,
        );
        n
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::super::{Limits, Store};
    use super::*;
    use crate::config::EvictionPolicy;
    use crate::store::EvictionReason;

    fn key(i: u8) -> CacheKey {
        CacheKey([i; 32])
    }

    /// A store of `n` entries, each with its own blob and manifest file, in FIFO order 1..=n.
    fn store_of(n: u8) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("data")).expect("open");
        let items: Vec<_> = (1..=n)
            .map(|i| {
                let entry = EntryRecord {
                    digest: Digest([i; 32]),
                    size: 10,
                    created_ms: 1_000 + u64::from(i),
                    last_access_ms: 1_000 + u64::from(i),
                    access_count: 1,
                    build_ms: 1,
                    file_name: "rr".into(),
                };
                for path in [store.blob_path(&entry.digest), store.manifest_path(&key(i))] {
                    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                    std::fs::write(&path, b"0123456789").expect("write");
                }
                (key(i), entry)
            })
            .collect();
        store.bulk_index(&items).expect("index");
        (dir, store)
    }

    fn fifo(max_entries: u64) -> Limits {
        Limits {
            max_bytes: 0,
            max_entries,
            max_age: Duration::ZERO,
            policy: EvictionPolicy::Fifo,
            min_free_bytes: 0,
        }
    }

    /// The blobs go through `tmp/` (renamed under the lock, deleted after it): none may stay.
    fn assert_tmp_empty(store: &Store) {
        let left: Vec<_> = std::fs::read_dir(store.tmp_dir())
            .expect("tmp")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    fn files_of(store: &Store, i: u8) -> [bool; 2] {
        [
            store.blob_path(&Digest([i; 32])).exists(),
            store.manifest_path(&key(i)).exists(),
        ]
    }

    #[test]
    fn a_group_of_victims_leaves_the_index_then_the_disk() {
        let (_dir, store) = store_of(5);
        let gone = store.enforce(&fifo(2), None).expect("enforce");
        let keys: Vec<_> = gone.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, vec![key(1), key(2), key(3)]);
        for i in 1..=3 {
            assert_eq!(store.lookup(&key(i)).expect("lookup"), None);
            assert_eq!(files_of(&store, i), [false, false], "victim {i}");
        }
        for i in 4..=5 {
            assert!(store.lookup(&key(i)).expect("lookup").is_some());
            assert_eq!(files_of(&store, i), [true, true], "kept {i}");
        }
        assert_eq!(store.totals().expect("totals").entries, 2);
    }

    #[test]
    fn a_failing_victim_stops_the_group_but_the_earlier_victims_still_go() {
        let (_dir, store) = store_of(4);
        // The second victim's record is damaged: removing it fails.
        store
            .ix()
            .expect("index")
            .entries
            .insert(key(2).0, &[0xff, 1, 2][..])
            .expect("insert");
        let failed = store.enforce(&fifo(1), None);
        assert!(matches!(failed, Err(StoreError::Record(_))), "{failed:?}");
        assert_eq!(store.lookup(&key(1)).expect("lookup"), None);
        assert_eq!(files_of(&store, 1), [false, false], "the first victim");
        assert_eq!(files_of(&store, 2), [true, true], "the damaged one");
        assert_eq!(files_of(&store, 3), [true, true]);
        assert!(store.lookup(&key(3)).expect("lookup").is_some());
    }

    /// The server's way: a listener is told, the files stay until the reap, which deletes
    /// them after a flush.
    #[test]
    fn with_a_listener_the_files_wait_for_the_reap() {
        let (_dir, store) = store_of(4);
        let told = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let t = std::sync::Arc::clone(&told);
        store.on_evictions(move || {
            t.fetch_add(1, Ordering::SeqCst);
        });
        let gone = store.enforce(&fifo(2), None).expect("enforce");
        assert_eq!(gone.len(), 2);
        assert_eq!(told.load(Ordering::SeqCst), 1, "one call, one wake-up");
        for i in 1..=2 {
            assert_eq!(store.lookup(&key(i)).expect("lookup"), None);
            assert_eq!(
                files_of(&store, i),
                [true, true],
                "victim {i} before the reap"
            );
        }
        assert_eq!(store.reap_evictions().expect("reap"), 2);
        for i in 1..=2 {
            assert_eq!(
                files_of(&store, i),
                [false, false],
                "victim {i} after the reap"
            );
        }
        // The blobs went through tmp/ (renamed under the lock, deleted after it): nothing stays.
        assert_tmp_empty(&store);
        for i in 3..=4 {
            assert_eq!(files_of(&store, i), [true, true], "kept {i}");
        }
        assert_eq!(store.reap_evictions().expect("reap"), 0, "nothing left");
    }

    /// A key stored again between its eviction and the reap keeps its new manifest and its
    /// blob, which it shares with the victim.
    #[test]
    fn a_victim_stored_again_before_the_reap_keeps_its_files() {
        let (dir, store) = store_of(3);
        store.on_evictions(|| {});
        store.enforce(&fifo(2), None).expect("enforce");
        assert_eq!(store.lookup(&key(1)).expect("lookup"), None);
        // The same bytes as the victim's blob (`store_of` writes these), under the same key.
        let src = dir.path().join("again");
        std::fs::write(&src, b"0123456789").expect("write");
        let again = store
            .ingest(
                std::fs::File::open(&src).expect("open"),
                &key(1),
                "rr",
                serde_json::json!({}),
                1,
            )
            .expect("ingest");
        assert_eq!(store.reap_evictions().expect("reap"), 1);
        assert!(store.manifest_path(&key(1)).exists(), "the new manifest");
        assert!(store.blob_path(&again.digest).exists(), "the new blob");
        assert!(store.lookup(&key(1)).expect("lookup").is_some());
        // The victim's own blob (digest [1; 32], not the hash of its bytes) had no other user.
        assert!(!store.blob_path(&Digest([1; 32])).exists());
    }

    /// Without a listener every enforcement deletes its victims' files before it returns, the
    /// files of earlier queued victims included.
    #[test]
    fn without_a_listener_an_enforcement_deletes_at_once() {
        let (_dir, store) = store_of(3);
        store.enforce(&fifo(1), None).expect("enforce");
        assert_eq!(files_of(&store, 1), [false, false]);
        assert_eq!(files_of(&store, 2), [false, false]);
        assert_eq!(store.reap_evictions().expect("reap"), 0);
    }

    /// The free-space floor wants the space now: even with a listener, its victims' files are
    /// gone when the enforcement returns (moved aside under the lock, deleted after it), none
    /// is left in `tmp/`, and nothing waits for the reap. A reader holding a victim's blob open
    /// still reads it whole.
    #[test]
    fn the_floors_victims_are_deleted_before_the_enforcement_returns() {
        let (_dir, store) = store_of(3);
        store.on_evictions(|| {});
        let mut open = std::fs::File::open(store.blob_path(&Digest([1; 32]))).expect("open");
        // A floor larger than the disk: everything unprotected goes.
        let limits = Limits {
            min_free_bytes: u64::MAX / 2,
            ..fifo(0)
        };
        let gone = store.enforce(&limits, Some(&key(3))).expect("enforce");
        assert_eq!(gone.len(), 2, "{gone:?}");
        assert!(gone.iter().all(|(_, r)| *r == EvictionReason::FreeSpace));
        for i in 1..=2 {
            assert_eq!(files_of(&store, i), [false, false], "victim {i}");
        }
        assert_eq!(files_of(&store, 3), [true, true], "the protected entry");
        assert_tmp_empty(&store);
        assert_eq!(store.reap_evictions().expect("reap"), 0, "nothing queued");
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut open, &mut bytes).expect("read");
        assert_eq!(bytes, b"0123456789");
    }

    #[test]
    fn the_group_survives_a_reopen_as_one() {
        let dir = {
            let (dir, store) = store_of(3);
            store.enforce(&fifo(1), None).expect("enforce");
            dir
        };
        let store = Store::open(&dir.path().join("data")).expect("reopen");
        assert_eq!(store.totals().expect("totals").entries, 1);
        assert!(store.lookup(&key(3)).expect("lookup").is_some());
    }
}
