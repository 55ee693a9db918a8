//! The sled index: entries, blob references, the eviction-ordered trees and the counters, always
//! changed together in one transaction.
//!
//! Tree layouts (all integers big-endian, so that byte order is numeric order):
//! - `entries`: key (32) → [`EntryRecord`]
//! - `blobs`: digest (32) → [`BlobRecord`] (how many entries use the blob)
//! - `lru`: last access (8) ‖ key → ()
//! - `lfu`: access count (8) ‖ last access (8) ‖ key → ()
//! - `fifo`: created (8) ‖ key → ()
//! - `counters`: `entries`, `bytes` → u64
//! - `tombstones`: key (32) → digest (32) ‖ created (8) of an entry removed whose manifest may
//!   still be on disk
//!
//! In each eviction tree the first item is the next victim: finding it is one O(log n) seek.
//!
//! Removal writes a tombstone in the transaction that removes the entry, before its manifest is
//! deleted: a crash between the two leaves a manifest the start-up pass would otherwise index
//! again, bringing the removed entry back. The pass deletes a manifest its tombstone names and
//! clears tombstones whose manifest is gone; storing the key again clears its tombstone in the
//! same transaction (docs/storage.md, "Removing an entry").

use std::collections::HashMap;

use sled::transaction::{
    ConflictableTransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::Transactional;

use super::{BlobRecord, EntryRecord, Index, RecordError, Store, StoreError};
use crate::config::EvictionPolicy;
use crate::ids::{CacheKey, Digest};

pub(super) const COUNTER_ENTRIES: &[u8] = b"entries";
pub(super) const COUNTER_BYTES: &[u8] = b"bytes";

/// Hits not yet written: how many, and the last one's time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingHits {
    pub count: u64,
    pub last_ms: u64,
}

pub(super) fn be_u64(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = v.len().min(8);
    b[..n].copy_from_slice(&v[..n]);
    u64::from_be_bytes(b)
}

/// LRU order: last access, then key.
pub(super) fn lru_key(e: &EntryRecord, key: &CacheKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(40);
    k.extend(e.last_access_ms.to_be_bytes());
    k.extend(key.0);
    k
}

/// LFU order: access count, then last access, then key.
pub(super) fn lfu_key(e: &EntryRecord, key: &CacheKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(48);
    k.extend(e.access_count.to_be_bytes());
    k.extend(e.last_access_ms.to_be_bytes());
    k.extend(key.0);
    k
}

/// FIFO order: creation, then key.
pub(super) fn fifo_key(e: &EntryRecord, key: &CacheKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(40);
    k.extend(e.created_ms.to_be_bytes());
    k.extend(key.0);
    k
}

/// The key at the end of an eviction-tree item.
pub(super) fn key_of(item: &[u8]) -> Option<CacheKey> {
    let tail = item.len().checked_sub(32)?;
    let mut k = [0u8; 32];
    k.copy_from_slice(&item[tail..]);
    Some(CacheKey(k))
}

type Abort = ConflictableTransactionError<StoreError>;

/// A removed entry and, when it held the last reference to its blob, that blob's digest.
pub(super) type Removed = (EntryRecord, Option<Digest>);

fn abort(e: RecordError) -> Abort {
    ConflictableTransactionError::Abort(StoreError::from(e))
}

/// A tombstone's value: the removed entry's blob and creation time. They name the one manifest
/// the tombstone condemns: a later manifest for the same key (an ingest the crash cut short) is
/// another entry, and is left to the pass's usual rules.
pub(super) fn tombstone(e: &EntryRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(40);
    v.extend(e.digest.as_bytes());
    v.extend(e.created_ms.to_be_bytes());
    v
}

/// Whether the tombstone `value` names the manifest of `digest` created at `created_ms`.
pub(super) fn tombstone_names(value: &[u8], digest: &Digest, created_ms: u64) -> bool {
    value.len() == 40 && &value[..32] == digest.as_bytes() && be_u64(&value[32..]) == created_ms
}

fn counter(ct: &TransactionalTree, name: &[u8]) -> Result<u64, UnabortableTransactionError> {
    Ok(ct.get(name)?.map(|v| be_u64(&v)).unwrap_or(0))
}

/// Drops one reference to `digest` inside a transaction. Returns the blob's size when that was
/// the last reference (the record is then gone and the file must be deleted by the caller).
fn release_blob(bl: &TransactionalTree, digest: &Digest) -> Result<Option<u64>, Abort> {
    let Some(b) = bl.get(digest)? else {
        return Ok(None);
    };
    let mut b = BlobRecord::decode(&b).map_err(abort)?;
    b.refs = b.refs.saturating_sub(1);
    if b.refs == 0 {
        bl.remove(digest.as_bytes())?;
        Ok(Some(b.size))
    } else {
        bl.insert(digest.as_bytes(), b.encode().map_err(abort)?)?;
        Ok(None)
    }
}

impl Index {
    /// Every tree of the index.
    pub(super) fn trees(&self) -> [&sled::Tree; 6] {
        [
            &self.entries,
            &self.blobs,
            &self.lru,
            &self.lfu,
            &self.fifo,
            &self.counters,
        ]
    }

    /// Every tree, the tombstones last, as sled's multi-tree transactions take them.
    #[allow(clippy::type_complexity)]
    fn all_trees(
        &self,
    ) -> (
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
    ) {
        let [entries, blobs, lru, lfu, fifo, counters] = self.trees();
        (entries, blobs, lru, lfu, fifo, counters, &self.tombstones)
    }
}

impl Store {
    /// Inserts (or replaces) the entry for `key` pointing at the blob `entry.digest`, in one
    /// transaction over the entry, the blob references, the eviction trees and the counters.
    /// Returns the digest of a blob that no entry uses any more, if the replaced entry left one;
    /// the caller deletes its file. Flushes when `flush` is set.
    pub(super) fn commit_entry(
        &self,
        key: &CacheKey,
        entry: &EntryRecord,
        stored_ms: u64,
        flush: bool,
    ) -> Result<Option<Digest>, StoreError> {
        let entry_bytes = entry.encode()?;
        let ix = self.ix()?;
        let trees = ix.all_trees();
        let committed = trees.transaction(|(en, bl, lru, lfu, fifo, ct, tb)| {
            let mut entries = counter(ct, COUNTER_ENTRIES)?;
            let mut bytes = counter(ct, COUNTER_BYTES)?;
            let mut orphan = None;
            // The new blob's reference comes first, so that replacing an entry with the same
            // bytes never drops the blob to zero references.
            let blob = match bl.get(entry.digest)? {
                Some(b) => {
                    let mut b = BlobRecord::decode(&b).map_err(abort)?;
                    b.refs += 1;
                    b
                }
                None => {
                    bytes += entry.size;
                    BlobRecord {
                        refs: 1,
                        size: entry.size,
                        stored_ms,
                        file_name: entry.file_name.clone(),
                    }
                }
            };
            bl.insert(entry.digest.as_bytes(), blob.encode().map_err(abort)?)?;
            if let Some(old) = en.insert(&key.0, entry_bytes.as_slice())? {
                let old = EntryRecord::decode(&old).map_err(abort)?;
                lru.remove(lru_key(&old, key))?;
                lfu.remove(lfu_key(&old, key))?;
                fifo.remove(fifo_key(&old, key))?;
                if let Some(size) = release_blob(bl, &old.digest)? {
                    bytes = bytes.saturating_sub(size);
                    orphan = Some(old.digest);
                }
            } else {
                entries += 1;
            }
            lru.insert(lru_key(entry, key), &[])?;
            lfu.insert(lfu_key(entry, key), &[])?;
            fifo.insert(fifo_key(entry, key), &[])?;
            ct.insert(COUNTER_ENTRIES, &entries.to_be_bytes())?;
            ct.insert(COUNTER_BYTES, &bytes.to_be_bytes())?;
            // Stored again: an earlier removal's tombstone must not condemn this manifest.
            tb.remove(&key.0)?;
            Ok(orphan)
        });
        let orphan = self.noted(committed)?;
        self.count_writes(1);
        if flush {
            self.noted(ix.db.flush())?;
        }
        Ok(orphan)
    }

    /// Removes the entry for `key` from every tree and writes its tombstone, in one transaction,
    /// and flushes. Returns the removed entry and, when it held the last reference to its blob,
    /// that blob's digest. The caller deletes the manifest, then clears the tombstone
    /// ([`Store::clear_tombstone`]).
    pub(super) fn uncommit_entry(&self, key: &CacheKey) -> Result<Option<Removed>, StoreError> {
        let removed = self.uncommit_unflushed(key)?;
        if removed.is_some() {
            self.flush()?;
        }
        Ok(removed)
    }

    /// [`Store::uncommit_entry`] without the flush: the caller flushes before it deletes any
    /// file of the entry (evictions flush once for a group, see `evict.rs`).
    pub(super) fn uncommit_unflushed(&self, key: &CacheKey) -> Result<Option<Removed>, StoreError> {
        let ix = self.ix()?;
        let trees = ix.all_trees();
        let removed = trees.transaction(|(en, bl, lru, lfu, fifo, ct, tb)| {
            let Some(old) = en.remove(&key.0)? else {
                return Ok(None);
            };
            let old = EntryRecord::decode(&old).map_err(abort)?;
            tb.insert(&key.0, tombstone(&old))?;
            lru.remove(lru_key(&old, key))?;
            lfu.remove(lfu_key(&old, key))?;
            fifo.remove(fifo_key(&old, key))?;
            let mut bytes = counter(ct, COUNTER_BYTES)?;
            let orphan = match release_blob(bl, &old.digest)? {
                Some(size) => {
                    bytes = bytes.saturating_sub(size);
                    Some(old.digest)
                }
                None => None,
            };
            let entries = counter(ct, COUNTER_ENTRIES)?.saturating_sub(1);
            ct.insert(COUNTER_ENTRIES, &entries.to_be_bytes())?;
            ct.insert(COUNTER_BYTES, &bytes.to_be_bytes())?;
            Ok(Some((old, orphan)))
        });
        let removed = self.noted(removed)?;
        if removed.is_some() {
            self.count_writes(1);
        }
        Ok(removed)
    }

    /// Clears the tombstone of `key` once its manifest is gone. Not flushed: a tombstone that
    /// outlives its manifest is cleared by the next start-up pass.
    pub(super) fn clear_tombstone(&self, key: &CacheKey) -> Result<(), StoreError> {
        let cleared = self.ix()?.tombstones.remove(key.0);
        self.noted(cleared)?;
        Ok(())
    }

    /// Writes a batch of hits in one transaction over the entries and the LRU and LFU trees.
    /// Entries that are gone are skipped. Does not flush: a crash may lose one batch of access
    /// statistics, and nothing else.
    pub(super) fn write_hits(
        &self,
        batch: &HashMap<CacheKey, PendingHits>,
    ) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let ix = self.ix()?;
        let written = (&ix.entries, &ix.lru, &ix.lfu).transaction(|(en, lru, lfu)| {
            for (key, hits) in batch {
                let Some(bytes) = en.get(key.0)? else {
                    continue;
                };
                let old = EntryRecord::decode(&bytes).map_err(abort)?;
                let mut new = old.clone();
                new.access_count = old.access_count.saturating_add(hits.count);
                new.last_access_ms = old.last_access_ms.max(hits.last_ms);
                lru.remove(lru_key(&old, key))?;
                lfu.remove(lfu_key(&old, key))?;
                lru.insert(lru_key(&new, key), &[])?;
                lfu.insert(lfu_key(&new, key), &[])?;
                en.insert(&key.0, new.encode().map_err(abort)?)?;
            }
            Ok(())
        });
        self.noted(written)?;
        self.count_writes(batch.len() as u64);
        Ok(())
    }

    /// Indexes many entries whose blobs are already in place, flushing once at the end (imports
    /// and benchmarks; the server's own inserts go through `ingest`).
    pub fn bulk_index(&self, items: &[(CacheKey, EntryRecord)]) -> Result<(), StoreError> {
        let now = crate::util::now_ms();
        for (key, entry) in items {
            self.commit_entry(key, entry, now, false)?;
        }
        self.flush()
    }

    /// The next victim under `policy`, skipping `protect` and pinned entries: the first such
    /// item of the policy's tree.
    pub fn victim(
        &self,
        policy: EvictionPolicy,
        protect: Option<&CacheKey>,
    ) -> Result<Option<CacheKey>, StoreError> {
        let ix = self.ix()?;
        let tree = match policy {
            EvictionPolicy::Lru => &ix.lru,
            EvictionPolicy::Lfu => &ix.lfu,
            EvictionPolicy::Fifo => &ix.fifo,
        };
        // Without pins at most two items are read: the first, and the second when the first is
        // protected. Pinned entries stay in the trees and are stepped over: there are few of
        // them (a channel's kept releases), and a hit moves them like any other entry.
        let budget = ix.pins.len().saturating_add(2);
        for item in tree.iter().keys().take(budget) {
            let item = item?;
            if let Some(key) = key_of(&item) {
                if Some(&key) != protect && !ix.pins.contains_key(key.0)? {
                    return Ok(Some(key));
                }
            }
        }
        Ok(None)
    }

    /// The oldest entry by creation, with its creation time, skipping `protect` and pinned
    /// entries.
    pub(super) fn oldest(
        &self,
        protect: Option<&CacheKey>,
    ) -> Result<Option<(CacheKey, u64)>, StoreError> {
        let ix = self.ix()?;
        let budget = ix.pins.len().saturating_add(2);
        for item in ix.fifo.iter().keys().take(budget) {
            let item = item?;
            if let Some(key) = key_of(&item) {
                if Some(&key) != protect && !ix.pins.contains_key(key.0)? {
                    return Ok(Some((key, be_u64(&item[..8]))));
                }
            }
        }
        Ok(None)
    }

    /// Entries in key order, after `after`, at most `limit`.
    pub fn list(
        &self,
        after: Option<&CacheKey>,
        limit: usize,
    ) -> Result<Vec<(CacheKey, EntryRecord)>, StoreError> {
        let ix = self.ix()?;
        let iter = match after {
            Some(k) => ix.entries.range((
                std::ops::Bound::Excluded(k.0.to_vec()),
                std::ops::Bound::Unbounded,
            )),
            None => ix.entries.iter(),
        };
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (k, v) = item?;
            let Some(key) = key_of(&k) else { continue };
            out.push((key, EntryRecord::decode(&v)?));
        }
        Ok(out)
    }
}
