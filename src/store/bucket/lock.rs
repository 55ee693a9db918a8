//! One build per key across replicas (docs/object-storage.md): before calling Velox a replica
//! creates `<prefix>locks/<key>` with `If-None-Match: *`, holding its id and an expiry one
//! `lock_lease` away, and renews it while it builds. A replica that finds a live lock does not
//! call Velox: it polls the key's manifest with backoff. An expired lock (its holder died) is
//! taken over with `If-Match` on the ETag that was read, so that of two replicas taking it over
//! one wins. The lock is deleted when the build ends, however it ends.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::{
    GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::checked::{read_capped, Capped};
use super::{bucket_err, Bucket, BucketOp};
use crate::ids::CacheKey;
use crate::store::shared::{BuildLock, Claim, SharedError};

/// The first pause between two looks at another replica's build; it grows to `MAX_POLL`.
const FIRST_POLL: Duration = Duration::from_millis(100);
const MAX_POLL: Duration = Duration::from_secs(2);

/// A lock object is a few hundred bytes; anything larger is not one.
const MAX_LOCK_BYTES: usize = 4096;

/// The body of a lock object.
#[derive(Debug, Serialize, Deserialize)]
struct LockRecord {
    key: String,
    replica: String,
    acquired_ms: u64,
    expires_ms: u64,
}

/// What a look at the lock found.
enum Seen {
    Acquired(String),
    Held {
        record: Option<LockRecord>,
        etag: Option<String>,
    },
    Gone,
}

/// A lock this replica holds: renewed every third of the lease, deleted when dropped.
struct HeldLock {
    bucket: Bucket,
    key: CacheKey,
    renewal: tokio::task::JoinHandle<()>,
    /// Cleared when a renewal finds that another replica took the lock over.
    ours: Arc<Mutex<bool>>,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        self.renewal.abort();
        if !self.ours.lock().is_ok_and(|o| *o) {
            return;
        }
        let (bucket, key) = (self.bucket.clone(), self.key);
        self.bucket.spawn(async move {
            let path = bucket.lock_path(&key);
            match bucket
                .counted(BucketOp::LockDelete, bucket.0.s3.delete(&path))
                .await
            {
                Ok(Ok(())) => log::debug!("released the build lock of {key}"),
                Ok(Err(e)) => {
                    log::warn!("cannot release the build lock of {key}: {}", bucket_err(e))
                }
                Err(e) => log::warn!("cannot release the build lock of {key}: {e}"),
            }
        });
    }
}

impl Bucket {
    fn lock_body(&self, key: &CacheKey) -> Result<PutPayload, SharedError> {
        let now = crate::util::now_ms();
        let record = LockRecord {
            key: key.to_hex(),
            replica: self.0.replica.clone(),
            acquired_ms: now,
            expires_ms: now + self.0.lease.as_millis() as u64,
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| SharedError::Damaged(e.to_string()))?;
        Ok(PutPayload::from(bytes))
    }

    /// Writes the lock: created when `over` is none, else replacing the version `over` names.
    /// `None` when the precondition failed (someone else holds or just took the lock).
    async fn write_lock(
        &self,
        key: &CacheKey,
        over: Option<String>,
    ) -> Result<Option<String>, SharedError> {
        let mode = match over {
            None => PutMode::Create,
            Some(e_tag) => PutMode::Update(UpdateVersion {
                e_tag: Some(e_tag),
                version: None,
            }),
        };
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        let path = self.lock_path(key);
        let body = self.lock_body(key)?;
        match self
            .counted(BucketOp::LockPut, self.0.s3.put_opts(&path, body, opts))
            .await?
        {
            Ok(put) => Ok(Some(put.e_tag.unwrap_or_default())),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(bucket_err(e)),
        }
    }

    /// Tries to create the lock (first, when `create_first`; else only when there is none), and
    /// otherwise reads it.
    async fn look(&self, key: &CacheKey, create_first: bool) -> Result<Seen, SharedError> {
        if create_first {
            if let Some(etag) = self.write_lock(key, None).await? {
                return Ok(Seen::Acquired(etag));
            }
        }
        let seen = self.read_lock(key).await?;
        if let Seen::Held {
            record: Some(r),
            etag: Some(etag),
        } = &seen
        {
            // This replica builds a key at most once at a time: a lock in its name is its own,
            // left by a create whose answer was lost (and retried), or by a release that failed.
            if r.replica == self.0.replica {
                return Ok(Seen::Acquired(etag.clone()));
            }
        }
        if matches!(seen, Seen::Gone) && !create_first {
            if let Some(etag) = self.write_lock(key, None).await? {
                return Ok(Seen::Acquired(etag));
            }
        }
        Ok(seen)
    }

    async fn read_lock(&self, key: &CacheKey) -> Result<Seen, SharedError> {
        let path = self.lock_path(key);
        let got = match self
            .counted(BucketOp::LockGet, async {
                let got = self.0.s3.get_opts(&path, GetOptions::default()).await?;
                let etag = got.meta.e_tag.clone();
                match read_capped(got, MAX_LOCK_BYTES).await {
                    Ok(bytes) => Ok((Some(bytes), etag)),
                    // Not a lock this code wrote: held by nobody known, so it expires.
                    Err(Capped::TooLarge(_)) => Ok((None, etag)),
                    Err(Capped::Store(e)) => Err(e),
                }
            })
            .await?
        {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(Seen::Gone),
            Err(e) => return Err(bucket_err(e)),
        };
        let (bytes, etag) = got;
        Ok(Seen::Held {
            record: bytes.and_then(|b| serde_json::from_slice(&b).ok()),
            etag,
        })
    }

    fn hold(&self, key: CacheKey, etag: String) -> BuildLock {
        let ours = Arc::new(Mutex::new(true));
        let (bucket, still) = (self.clone(), Arc::clone(&ours));
        let every = (self.0.lease / 3).max(Duration::from_millis(200));
        let renewal = self.spawn(async move {
            let mut etag = etag;
            loop {
                tokio::time::sleep(every).await;
                match bucket.write_lock(&key, Some(etag.clone())).await {
                    Ok(Some(next)) => etag = next,
                    Ok(None) => {
                        log::warn!("the build lock of {key} was taken over by another replica");
                        if let Ok(mut o) = still.lock() {
                            *o = false;
                        }
                        return;
                    }
                    // A passing failure: the lease outlives a few missed renewals.
                    Err(e) => log::warn!("cannot renew the build lock of {key}: {e}"),
                }
            }
        });
        BuildLock::held(Box::new(HeldLock {
            bucket: self.clone(),
            key,
            renewal,
            ours,
        }))
    }

    /// Whether a lock read from the bucket no longer holds. A lock is input like any object
    /// there: its expiry counts for at most one lease after its acquisition (a clock far ahead,
    /// or a hand-written lock, cannot hold a key for years), and a lock that this replica has
    /// seen unchanged for a whole lease is expired whatever it says, since a live holder renews
    /// (and so rewrites) it every third of a lease.
    fn expired(
        &self,
        record: Option<&LockRecord>,
        etag: Option<&str>,
        unchanged: &mut Option<(String, Instant)>,
    ) -> bool {
        let lease = self.0.lease;
        let stale = match (etag, unchanged.as_ref()) {
            (Some(e), Some((seen, since))) if e == seen => since.elapsed() >= lease,
            (Some(e), _) => {
                *unchanged = Some((e.to_owned(), Instant::now()));
                false
            }
            (None, _) => false,
        };
        let Some(r) = record else {
            return true;
        };
        let now = crate::util::now_ms();
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let until = r
            .expires_ms
            .min(r.acquired_ms.min(now).saturating_add(lease_ms));
        stale || until <= now
    }

    /// How long ago another replica took the build lock of `key`, when it holds a live one (the
    /// status route's question). A lock past its expiry, or that says nothing readable, is no
    /// build under way; a lock in this replica's own name is not another replica's build.
    pub(super) async fn build_elsewhere(
        &self,
        key: CacheKey,
    ) -> Result<Option<Duration>, SharedError> {
        let Seen::Held {
            record: Some(record),
            etag,
        } = self.read_lock(&key).await?
        else {
            return Ok(None);
        };
        if record.replica == self.0.replica
            || self.expired(Some(&record), etag.as_deref(), &mut None)
        {
            return Ok(None);
        }
        let now = crate::util::now_ms();
        Ok(Some(Duration::from_millis(
            now.saturating_sub(record.acquired_ms.min(now)),
        )))
    }

    /// The protocol of the module doc. Runs until it settles; the caller's deadline (the build's)
    /// cancels it.
    pub(super) async fn claim_build(
        &self,
        key: CacheKey,
        force: bool,
        deadline: Instant,
    ) -> Result<Claim, SharedError> {
        let mut pause = FIRST_POLL;
        // With `force`, only a manifest written by the build this one waited for settles it: one
        // created after that build took its lock.
        let mut joined: Option<u64> = None;
        let mut counted_wait = false;
        // The version of the lock last seen, and since when (this replica's clock).
        let mut unchanged: Option<(String, Instant)> = None;
        loop {
            if !force || joined.is_some() {
                if let Some(m) = self.usable_manifest(key).await? {
                    if joined.is_none_or(|since| m.created_ms >= since) {
                        return Ok(Claim::Built(m));
                    }
                }
            }
            match self.look(&key, joined.is_none() && !counted_wait).await? {
                Seen::Acquired(etag) => {
                    let lock = self.hold(key, etag);
                    // A build may have ended between the look at the manifest and the lock.
                    if !force {
                        if let Some(m) = self.usable_manifest(key).await? {
                            return Ok(Claim::Built(m));
                        }
                    }
                    return Ok(Claim::Build(lock));
                }
                // Released a moment ago: look again after a short pause.
                Seen::Gone => {}
                Seen::Held { record, etag } => {
                    let expired = self.expired(record.as_ref(), etag.as_deref(), &mut unchanged);
                    if expired {
                        let holder = record.map(|r| r.replica).unwrap_or_default();
                        if let Some(etag) = self.write_lock(&key, etag).await? {
                            self.0.counters.lock_takeovers.fetch_add(1, Relaxed);
                            log::warn!(
                                "took over the expired build lock of {key} (held by {holder:?})"
                            );
                            return Ok(Claim::Build(self.hold(key, etag)));
                        }
                        continue;
                    }
                    if let Some(r) = &record {
                        joined.get_or_insert(r.acquired_ms);
                    }
                    if !counted_wait {
                        counted_wait = true;
                        self.0.counters.lock_waits.fetch_add(1, Relaxed);
                        log::info!(
                            "{key} is being built by replica {:?}; waiting for it",
                            record.as_ref().map(|r| r.replica.as_str()).unwrap_or("?")
                        );
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(pause.min(left.max(Duration::from_millis(10)))).await;
            pause = (pause * 3 / 2).min(MAX_POLL);
        }
    }
}
