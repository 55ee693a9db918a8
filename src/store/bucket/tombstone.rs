//! Deletes that reach every replica (docs/object-storage.md, "Deleting an entry"). A
//! `DELETE /v1/cache/{key}` writes `<prefix>tombstones/<key>` before it deletes the key's
//! manifest; every replica lists `<prefix>tombstones/` every `storage.s3.tombstone_poll` and
//! drops its local copy of each key named there, so a local hit (which never asks the bucket)
//! is stale for at most that long. Lifecycle rules expire tombstones.
//!
//! A rebuild after the delete writes a new manifest and leaves the tombstone in place: a local
//! entry is dropped only when the bucket's manifest of its key is gone or names other bytes.
//! This compares what the entry holds with what the bucket holds now, never the clocks of two
//! replicas, so a skewed clock cannot make a replica throw away a rebuild (or keep a deleted
//! binary). An entry that matches a manifest written after the tombstone (the bucket's own clock
//! on both) is settled and not asked about again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Serialize;

use super::checked::Found;
use super::{bucket_err, io_err, Bucket, BucketOp};
use crate::ids::{CacheKey, Digest};
use crate::store::shared::SharedError;
use crate::store::Store;

/// Most tombstones one look reads (one listing page holds 1,000): far more than deletes by hand
/// within a lifecycle period; past it the rest wait for lifecycle expiry to make room.
const MAX_TOMBSTONES: usize = 100_000;

/// The body of a tombstone: for people reading the bucket. Replicas use only its name and the
/// time the bucket gives it.
#[derive(Serialize)]
struct TombstoneRecord<'a> {
    key: String,
    deleted_ms: u64,
    replica: &'a str,
}

/// A tombstone as the listing shows it: its key and when the bucket wrote it.
#[derive(Debug, Clone, Copy)]
struct Tombstone {
    key: CacheKey,
    written_ms: i64,
}

/// Local entries found to match a manifest written after their key's tombstone: the key, the
/// tombstone's time, and the digest that was kept.
type Settled = HashMap<CacheKey, (i64, Digest)>;

impl Bucket {
    fn tombstone_path(&self, key: &CacheKey) -> Path {
        self.path(format!("tombstones/{}", key.to_hex()))
    }

    /// Writes (or rewrites) the tombstone of `key`.
    pub(super) async fn put_tombstone(&self, key: CacheKey) -> Result<(), SharedError> {
        let record = TombstoneRecord {
            key: key.to_hex(),
            deleted_ms: crate::util::now_ms(),
            replica: &self.0.replica,
        };
        let bytes = serde_json::to_vec(&record).map_err(io_err)?;
        let n = bytes.len();
        let opts = PutOptions {
            mode: PutMode::Overwrite,
            ..Default::default()
        };
        let path = self.tombstone_path(&key);
        self.counted(
            BucketOp::TombstonePut,
            self.0.s3.put_opts(&path, PutPayload::from(bytes), opts),
        )
        .await?
        .map_err(bucket_err)?;
        self.0.counters.written(n);
        Ok(())
    }

    /// Every tombstone in the bucket (up to [`MAX_TOMBSTONES`]). Objects there whose name is
    /// not a key are not tombstones and are skipped.
    async fn tombstones(&self) -> Result<Vec<Tombstone>, SharedError> {
        let under = self.path("tombstones".into());
        let listed = self
            .counted(BucketOp::TombstoneList, async {
                let mut stream = self.0.s3.list(Some(&under));
                let mut out = Vec::new();
                while let Some(meta) = stream.try_next().await? {
                    if out.len() >= MAX_TOMBSTONES {
                        log::warn!(
                            "more than {MAX_TOMBSTONES} tombstones in the bucket; reading the \
                             first only (docs/object-storage.md, lifecycle rules)"
                        );
                        break;
                    }
                    out.push(meta);
                }
                Ok(out)
            })
            .await?
            .map_err(bucket_err)?;
        Ok(listed
            .into_iter()
            .filter_map(|meta| {
                let key = CacheKey::from_hex(meta.location.filename()?)?;
                Some(Tombstone {
                    key,
                    written_ms: meta.last_modified.timestamp_millis(),
                })
            })
            .collect())
    }

    /// Whether the local entry of `stone.key`, holding `digest`, is what the bucket holds now;
    /// and if so whether that is settled (a manifest written after the tombstone).
    async fn still_current(
        &self,
        stone: Tombstone,
        digest: Digest,
    ) -> Result<(bool, bool), SharedError> {
        let path = self.manifest_path(&stone.key);
        let written_ms = match self
            .counted(BucketOp::ManifestGet, self.0.s3.head(&path))
            .await?
        {
            Ok(meta) => meta.last_modified.timestamp_millis(),
            Err(object_store::Error::NotFound { .. }) => return Ok((false, false)),
            Err(e) => return Err(bucket_err(e)),
        };
        let matches = matches!(
            self.get_manifest(stone.key).await?,
            Some((Found::Usable(m), _)) if m.digest == digest.to_hex()
        );
        Ok((matches, matches && written_ms > stone.written_ms))
    }

    /// One look at the tombstones: drops the local entries of deleted keys. Returns how many.
    async fn apply_tombstones(
        &self,
        store: &Arc<Store>,
        settled: &mut Settled,
    ) -> Result<usize, SharedError> {
        let stones = self.tombstones().await?;
        let named: HashSet<CacheKey> = stones.iter().map(|t| t.key).collect();
        settled.retain(|k, _| named.contains(k));
        // Index look-ups block (sled): off the bucket's runtime, all at once.
        let s = Arc::clone(store);
        let local = tokio::task::spawn_blocking(move || {
            stones
                .into_iter()
                .filter_map(|t| match s.lookup(&t.key) {
                    Ok(Some(entry)) => Some((t, entry.digest)),
                    Ok(None) => None,
                    Err(e) => {
                        log::warn!("tombstone of {}: cannot read the local entry: {e}", t.key);
                        None
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(io_err)?;
        let mut removed = 0;
        for (stone, digest) in local {
            if settled.get(&stone.key) == Some(&(stone.written_ms, digest)) {
                continue;
            }
            let (keep, settles) = self.still_current(stone, digest).await?;
            if keep {
                if settles {
                    settled.insert(stone.key, (stone.written_ms, digest));
                }
                continue;
            }
            // A fill of a newer manifest may land between the look and the removal: then it
            // goes too, and the next request fills it again (no bucket data is lost).
            let (s, key) = (Arc::clone(store), stone.key);
            match tokio::task::spawn_blocking(move || s.remove(&key))
                .await
                .map_err(io_err)?
            {
                Ok(Some(_)) => {
                    removed += 1;
                    self.0
                        .counters
                        .tombstones_applied
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    log::info!("dropped {key} from the local tier: a replica deleted it");
                }
                Ok(None) => {}
                Err(e) => log::warn!("cannot drop {key}, deleted by a replica: {e}"),
            }
        }
        Ok(removed)
    }

    /// Looks at the tombstones every `every` on the bucket's runtime, for as long as the bucket
    /// and the store live (the task holds neither).
    pub fn watch_tombstones(&self, store: &Arc<Store>, every: Duration) {
        let (bucket, store): (Weak<_>, Weak<Store>) =
            (Arc::downgrade(&self.0), Arc::downgrade(store));
        self.spawn(async move {
            let mut settled = Settled::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (Some(inner), Some(store)) = (bucket.upgrade(), store.upgrade()) else {
                    return;
                };
                // Errors are logged and counted by `counted`; the next tick tries again.
                if let Err(e) = Bucket(inner).apply_tombstones(&store, &mut settled).await {
                    log::warn!("cannot apply the bucket's tombstones: {e}");
                }
            }
        });
    }
}
