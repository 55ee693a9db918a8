//! Moving blobs (docs/object-storage.md): uploads of staged blobs (one conditional PUT, or parts),
//! and downloads into a bounded channel, optionally filling the local tier on the way.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use actix_web::web::Bytes;
use futures_util::StreamExt;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStore, PutMode, PutMultipartOptions, PutOptions,
    PutPayload, WriteMultipart,
};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, watch};

use super::{bucket_err, io_err, Bucket, BucketOp};
use crate::ids::{CacheKey, Digest};
use crate::store::shared::{ByteStream, Fill, RemoteReader, SharedError};
use crate::store::{EntryRecord, Staged, Staging};

/// Blobs up to this size go up in one PUT (with `If-None-Match: *`); larger ones in parts of it.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploading at once: memory per upload stays near `(PARALLEL_PARTS + 1) * PART_SIZE`.
const PARALLEL_PARTS: usize = 2;
/// Chunks in flight between a bucket download and its HTTP response.
const CHANNEL_CHUNKS: usize = 4;
/// Local writes of a download are batched to this size.
const WRITE_BATCH: usize = 1024 * 1024;
/// The user metadata of a blob object that names the key it was built for.
pub(super) const KEY_METADATA: &str = "velox-key";
/// Chunks of a range read from the local tier after a fill.
const RANGE_CHUNK: usize = 256 * 1024;

impl Bucket {
    /// Uploads a staged (hashed, verified) blob: one PUT up to `PART_SIZE`, a multipart upload
    /// above. An object already at the digest's name is replaced, never trusted for its size: it
    /// may be damaged, and keeping it would hand the damage to every replica (the bucket's copy
    /// of the local ingest rule). Two replicas racing on one digest both write the same bytes.
    /// The object names `key` in its metadata (`velox-key`), so that a request for the digest
    /// alone can find the entry to fill the local tier with.
    pub(super) async fn put_blob(
        &self,
        staged_path: std::path::PathBuf,
        digest: Digest,
        size: u64,
        file_name: String,
        key: CacheKey,
    ) -> Result<(), SharedError> {
        let path = self.blob_path(&digest);
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, "application/octet-stream".into());
        attributes.insert(
            Attribute::ContentDisposition,
            format!("attachment; filename=\"{file_name}\"").into(),
        );
        attributes.insert(
            Attribute::CacheControl,
            "public, max-age=31536000, immutable".into(),
        );
        attributes.insert(
            Attribute::Metadata(KEY_METADATA.into()),
            key.to_hex().into(),
        );
        self.upload_file(&path, staged_path, size, attributes).await
    }

    /// Uploads the local file `local` (`size` bytes) to `path` with `attributes`, replacing what
    /// is there: one PUT up to `PART_SIZE`, a multipart upload above.
    pub(super) async fn upload_file(
        &self,
        path: &object_store::path::Path,
        local: std::path::PathBuf,
        size: u64,
        attributes: Attributes,
    ) -> Result<(), SharedError> {
        let file = Arc::new(std::fs::File::open(&local)?);
        let read = |offset: u64, len: usize| {
            let file = Arc::clone(&file);
            async move {
                tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt;
                    let mut buf = vec![0u8; len];
                    file.read_exact_at(&mut buf, offset)
                        .map(|_| Bytes::from(buf))
                })
                .await
                .map_err(io_err)?
            }
        };
        if size <= PART_SIZE as u64 {
            let bytes = read(0, size as usize).await?;
            let opts = PutOptions {
                mode: PutMode::Overwrite,
                attributes,
                ..Default::default()
            };
            return match self
                .counted(
                    BucketOp::BlobPut,
                    self.0.s3.put_opts(path, PutPayload::from(bytes), opts),
                )
                .await?
            {
                Ok(_) => {
                    self.0.counters.written(size as usize);
                    Ok(())
                }
                Err(e) => Err(bucket_err(e)),
            };
        }
        let c = &self.0.counters;
        let upload = match self
            .counted(
                BucketOp::BlobPut,
                self.0.s3.put_multipart_opts(
                    path,
                    PutMultipartOptions {
                        attributes,
                        ..Default::default()
                    },
                ),
            )
            .await?
        {
            Ok(u) => u,
            Err(e) => return Err(bucket_err(e)),
        };
        c.multipart.fetch_add(1, Relaxed);
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut offset = 0u64;
        let result: Result<(), SharedError> = async {
            while offset < size {
                let len = (size - offset).min(PART_SIZE as u64) as usize;
                writer
                    .wait_for_capacity(PARALLEL_PARTS)
                    .await
                    .map_err(bucket_err)?;
                writer.put(read(offset, len).await?);
                offset += len as u64;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            c.error(BucketOp::BlobPut);
            let _ = writer.abort().await;
            return Err(e);
        }
        match writer.finish().await {
            Ok(_) => {
                c.written(size as usize);
                self.0.health.store(1, Relaxed);
                Ok(())
            }
            Err(e) => {
                c.error(BucketOp::BlobPut);
                self.0.health.store(2, Relaxed);
                Err(bucket_err(e))
            }
        }
    }

    /// Streams the whole blob into `tx` (when there is a client) and into `stage` (when it fills
    /// the local tier), hashing it on the way. Every byte is checked before the last one leaves:
    /// one chunk is always held back until the whole blob is known to hash to its name, so that a
    /// client never receives a complete wrong body, and a staged copy that does not hash to its
    /// name is never adopted. An object of another size is refused before any byte is sent. A
    /// blob found wrong is condemned (`repair.rs`).
    pub(super) async fn pump(
        &self,
        digest: Digest,
        size: u64,
        tx: Option<mpsc::Sender<Result<Bytes, io::Error>>>,
        mut stage: Option<Staging>,
    ) -> Result<Option<Staged>, SharedError> {
        let path = self.blob_path(&digest);
        let c = &self.0.counters;
        let got = match self
            .counted(
                BucketOp::BlobGet,
                self.0.s3.get_opts(&path, GetOptions::default()),
            )
            .await?
        {
            Ok(r) => r,
            Err(e) => return Err(bucket_err(e)),
        };
        if got.meta.size != size {
            let why = format!("has {} bytes, not {size}", got.meta.size);
            self.condemn(digest, &why).await;
            return Err(SharedError::Damaged(format!(
                "the bucket's blob {digest} {why}"
            )));
        }
        let mut stream = got.into_stream();
        let mut tx = tx;
        let mut hasher = Sha256::new();
        let mut held: Option<Bytes> = None;
        let mut batch: Vec<u8> = Vec::new();
        let mut got = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                c.error(BucketOp::BlobGet);
                bucket_err(e)
            })?;
            c.read(chunk.len());
            got += chunk.len() as u64;
            if got > size {
                break;
            }
            hasher.update(&chunk);
            if let Some(s) = stage.as_mut() {
                batch.extend_from_slice(&chunk);
                if batch.len() >= WRITE_BATCH {
                    if let Err(e) = tokio::task::block_in_place(|| s.write(&batch)) {
                        log::warn!("filling the local tier with {digest} failed: {e}");
                        stage = None;
                    }
                    batch.clear();
                }
            }
            if let (Some(sender), Some(previous)) = (tx.as_ref(), held.replace(chunk)) {
                if sender.send(Ok(previous)).await.is_err() {
                    // The client left; a fill goes on without it.
                    tx = None;
                }
            }
            if tx.is_none() && stage.is_none() {
                return Ok(None);
            }
        }
        if got != size {
            return Err(SharedError::Damaged(format!(
                "blob {digest}: {got} bytes of {size} arrived"
            )));
        }
        let hashed = Digest(hasher.finalize().into());
        if hashed != digest {
            self.condemn(digest, &format!("hashes to {hashed}")).await;
            return Err(SharedError::Damaged(format!(
                "the bucket's blob {digest} hashes to {hashed}"
            )));
        }
        let staged = match stage {
            Some(mut s) => {
                let done = tokio::task::block_in_place(|| s.write(&batch).and_then(|_| s.finish()));
                match done {
                    Ok(staged) if staged.digest == digest && staged.size == size => Some(staged),
                    // What was hashed on the way is right; the copy on disk is not.
                    Ok(staged) => {
                        log::error!(
                            "the local copy of {digest} hashes to {}: not kept",
                            staged.digest
                        );
                        None
                    }
                    Err(e) => {
                        log::warn!("filling the local tier with {digest} failed: {e}");
                        None
                    }
                }
            }
            None => None,
        };
        if let (Some(out), Some(last)) = (tx.as_ref(), held) {
            let _ = out.send(Ok(last)).await;
        }
        Ok(staged)
    }

    /// Downloads the blob of `fill.manifest` into the local tier and indexes it there, streaming
    /// the bytes to `tx` as they come when there is a client. `None` when the local tier could
    /// not take it (a full disk): a client still got the whole, checked stream.
    pub(super) async fn fill(
        &self,
        fill: Fill,
        tx: Option<mpsc::Sender<Result<Bytes, io::Error>>>,
    ) -> Result<Option<EntryRecord>, SharedError> {
        let (_, digest, size) = fill.manifest.names().map_err(SharedError::Damaged)?;
        let store = Arc::clone(&fill.store);
        let staging = match tokio::task::block_in_place(|| store.staging()) {
            Ok(staging) => Some(staging),
            Err(e) => {
                log::warn!("the local tier cannot take {digest} ({e}); streaming it unfilled");
                None
            }
        };
        let Some(staged) = self.pump(digest, size, tx, staging).await? else {
            return Ok(None);
        };
        let Fill {
            key,
            manifest,
            store,
            after,
        } = fill;
        let entry = tokio::task::spawn_blocking(move || {
            let entry = store.adopt(staged, &manifest)?;
            after(&store, &key);
            Ok::<_, SharedError>(entry)
        })
        .await
        .map_err(io_err)??;
        self.0.counters.fills.fetch_add(1, Relaxed);
        log::info!("filled the local tier with {key} from the bucket");
        Ok(Some(entry))
    }

    /// [`Bucket::fill`] for callers that need the entry.
    pub(super) async fn fill_entry(&self, fill: Fill) -> Result<EntryRecord, SharedError> {
        self.fill(fill, None).await?.ok_or_else(|| {
            SharedError::Io(io::Error::other("the local tier could not take the blob"))
        })
    }

    /// Takes the lead of the fill of `key`, or the place of a waiter on the fill under way.
    fn join_fill(&self, key: CacheKey) -> Result<FillLead, watch::Receiver<Option<bool>>> {
        let Ok(mut filling) = self.0.filling.lock() else {
            // A poisoned map only loses the coalescing: this fill leads alone.
            let (done, _) = watch::channel(None);
            return Ok(FillLead {
                bucket: None,
                key,
                done,
            });
        };
        if let Some(rx) = filling.get(&key) {
            return Err(rx.clone());
        }
        let (done, rx) = watch::channel(None);
        filling.insert(key, rx);
        Ok(FillLead {
            bucket: Some(self.clone()),
            key,
            done,
        })
    }

    /// Makes sure the local tier holds the blob of `fill` (verified): filled here, or by the
    /// fill of the same key under way.
    async fn settle(&self, fill: Fill) -> Result<(), SharedError> {
        let (_, digest, size) = fill.manifest.names().map_err(SharedError::Damaged)?;
        let store = Arc::clone(&fill.store);
        if tokio::task::block_in_place(|| store.open_blob(&digest, size)).is_some() {
            return Ok(());
        }
        match self.join_fill(fill.key) {
            Ok(lead) => {
                let result = self.fill_entry(fill).await;
                lead.finish(result.is_ok());
                result.map(|_| ())
            }
            Err(mut rx) => loop {
                if let Some(ok) = *rx.borrow_and_update() {
                    return if ok {
                        Ok(())
                    } else {
                        Err(SharedError::Damaged(format!(
                            "the fill of {digest} this request waited for failed"
                        )))
                    };
                }
                if rx.changed().await.is_err() {
                    return Err(SharedError::Damaged(format!(
                        "the fill of {digest} this request waited for ended"
                    )));
                }
            },
        }
    }
}

/// The lead of one key's fill: tells the waiters how it ended, and leaves the map, when dropped
/// (a fill that was cut off counts as failed).
struct FillLead {
    bucket: Option<Bucket>,
    key: CacheKey,
    done: watch::Sender<Option<bool>>,
}

impl FillLead {
    fn finish(&self, ok: bool) {
        self.done.send_replace(Some(ok));
    }
}

impl Drop for FillLead {
    fn drop(&mut self) {
        if self.done.borrow().is_none() {
            self.done.send_replace(Some(false));
        }
        if let Some(b) = &self.bucket {
            if let Ok(mut f) = b.0.filling.lock() {
                f.remove(&self.key);
            }
        }
    }
}

/// Sends `length` bytes of the local file from `start` into `tx`, a chunk at a time.
async fn send_file_range(
    file: Arc<std::fs::File>,
    start: u64,
    length: u64,
    tx: &mpsc::Sender<Result<Bytes, io::Error>>,
) -> io::Result<()> {
    let mut offset = start;
    let end = start + length;
    while offset < end {
        let len = (end - offset).min(RANGE_CHUNK as u64) as usize;
        let file = Arc::clone(&file);
        let chunk = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)
                .map(|_| Bytes::from(buf))
        })
        .await
        .map_err(io_err)??;
        offset += len as u64;
        if tx.send(Ok(chunk)).await.is_err() {
            break;
        }
    }
    Ok(())
}

impl RemoteReader for Bucket {
    fn read(&self, digest: Digest, size: u64) -> ByteStream {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let this = self.clone();
        self.spawn(async move {
            let err_tx = tx.clone();
            if let Err(e) = this.pump(digest, size, Some(tx), None).await {
                log::warn!("streaming {digest} from the bucket failed: {e}");
                let _ = err_tx.send(Err(io_err(e))).await;
            }
        });
        ByteStream(rx)
    }

    fn read_filling(&self, digest: Digest, size: u64, fill: Fill) -> ByteStream {
        let lead = match self.join_fill(fill.key) {
            Ok(lead) => lead,
            // Another request fills the tier: this one hashes its own stream.
            Err(_) => return self.read(digest, size),
        };
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let this = self.clone();
        self.spawn(async move {
            let err_tx = tx.clone();
            let result = this.fill(fill, Some(tx)).await;
            lead.finish(matches!(result, Ok(Some(_))));
            drop(lead);
            if let Err(e) = result {
                log::warn!("streaming {digest} from the bucket into the local tier failed: {e}");
                let _ = err_tx.send(Err(io_err(e))).await;
            }
        });
        ByteStream(rx)
    }

    fn read_range(&self, start: u64, length: u64, fill: Fill) -> ByteStream {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let this = self.clone();
        self.spawn(async move {
            let store = Arc::clone(&fill.store);
            let named = fill.manifest.names();
            let result = async {
                let (_, digest, size) = named.map_err(io::Error::other)?;
                this.settle(fill).await.map_err(io_err)?;
                let (file, _) = tokio::task::block_in_place(|| store.open_blob(&digest, size))
                    .ok_or_else(|| {
                        io::Error::other(format!("blob {digest} left the local tier"))
                    })?;
                send_file_range(file, start, length, &tx).await
            }
            .await;
            if let Err(e) = result {
                log::warn!("serving a range of a bucket blob failed: {e}");
                let _ = tx.send(Err(e)).await;
            }
        });
        ByteStream(rx)
    }
}
