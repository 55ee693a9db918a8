//! Evictions committed as a group (docs/storage.md, "Limits and eviction"): the victims of one
//! enforcement leave the index one transaction each, with one flush for them all, and only then
//! are their manifests and blobs deleted.
//!
//! A removal must survive a crash before its files go (sled loses unflushed writes): otherwise
//! the next start would find an entry whose manifest or blob is gone. Flushing once for the
//! group keeps that order while an enforcement that evicts many entries pays for one flush, not
//! one per victim; a crash before the flush leaves every victim whole in the index and on disk,
//! and the start-up pass evicts them again.

use super::{maintain::remove_file_logged, EntryRecord, Store, StoreError};
use crate::ids::{CacheKey, Digest};

/// Victims out of the index whose files wait for the group's flush.
#[derive(Default)]
pub(super) struct Evictions {
    /// Each victim's key and, when it held the last reference to its blob, that blob's digest.
    gone: Vec<(CacheKey, Option<Digest>)>,
    /// Bytes of the compressed variants and image layers of the blobs in `gone`, still on disk
    /// and counted until [`Store::finish_evictions`] deletes them.
    pub(super) variant_bytes: u64,
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

    /// Flushes the group's removals, then deletes each victim's manifest and then its blob when
    /// no entry uses it. When the flush fails, no file is deleted: the removals may not have
    /// reached the disk, and the next start's pass, which finds the files whole, indexes the
    /// entries again rather than keep entries without their files.
    pub(super) fn finish_evictions(&self, group: Evictions) -> Result<(), StoreError> {
        if group.gone.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.flush() {
            log::error!(
                "the index refused the flush of {} evictions; their files are kept: {e}",
                group.gone.len()
            );
            return Err(e);
        }
        for (key, orphan) in group.gone {
            let manifest_gone = remove_file_logged(&self.manifest_path(&key));
            if let Some(digest) = orphan {
                self.remove_blob_file(&digest);
            }
            // The removal's tombstone (index.rs) has done its work once the manifest is gone; a
            // tombstone left behind is cleared by the next start's pass.
            if manifest_gone {
                if let Err(e) = self.clear_tombstone(&key) {
                    log::warn!("cannot clear the tombstone of the evicted {key}: {e}");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{Limits, Store};
    use super::*;
    use crate::config::EvictionPolicy;

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
