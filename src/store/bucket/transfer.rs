//! Moving blobs (docs/object-storage.md): uploads of staged blobs (one conditional PUT, or parts),
//! and downloads into a bounded channel, optionally filling the local tier on the way.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use actix_web::web::Bytes;
use futures_util::StreamExt;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, WriteMultipart,
};
use tokio::sync::mpsc;

use super::{bucket_err, io_err, Bucket, BucketOp};
use crate::ids::Digest;
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

impl Bucket {
    /// Uploads a staged blob unless the bucket has it: one PUT with `If-None-Match: *` up to
    /// `PART_SIZE`, a multipart upload above (object_store sends no precondition on a multipart
    /// completion, so two replicas racing on one digest may both write it: the same bytes).
    pub(super) async fn put_blob(
        &self,
        staged_path: std::path::PathBuf,
        digest: Digest,
        size: u64,
        file_name: String,
    ) -> Result<(), SharedError> {
        let path = self.blob_path(&digest);
        match self
            .counted(BucketOp::BlobHead, self.0.s3.head(&path))
            .await?
        {
            Ok(meta) if meta.size == size => return Ok(()),
            Ok(meta) => log::warn!(
                "the bucket's blob {} has {} bytes, not {size}: replacing it",
                digest.to_hex(),
                meta.size
            ),
            Err(_) => {}
        }
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
        let file = Arc::new(std::fs::File::open(&staged_path)?);
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
                mode: PutMode::Create,
                attributes,
                ..Default::default()
            };
            return match self
                .counted(
                    BucketOp::BlobPut,
                    self.0.s3.put_opts(&path, PutPayload::from(bytes), opts),
                )
                .await?
            {
                Ok(_) => {
                    self.0.counters.written(size as usize);
                    Ok(())
                }
                // The same digest is the same bytes: someone else's upload is as good.
                Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(bucket_err(e)),
            };
        }
        let c = &self.0.counters;
        let upload = match self
            .counted(
                BucketOp::BlobPut,
                self.0.s3.put_multipart_opts(
                    &path,
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

    /// Streams `length` bytes from `start` of a blob into `tx` (a ranged GET). With `stage`, the
    /// same bytes go into the local tier, and the last chunk is held back until the whole blob is
    /// known to hash to its name: a client never receives a complete wrong body.
    pub(super) async fn pump(
        &self,
        digest: Digest,
        start: u64,
        length: u64,
        tx: Option<mpsc::Sender<Result<Bytes, io::Error>>>,
        mut stage: Option<Staging>,
    ) -> Result<Option<Staged>, SharedError> {
        let path = self.blob_path(&digest);
        let opts = GetOptions {
            range: Some(GetRange::Bounded(start..start + length)),
            ..Default::default()
        };
        let c = &self.0.counters;
        let mut stream = match self
            .counted(BucketOp::BlobGet, self.0.s3.get_opts(&path, opts))
            .await?
        {
            Ok(r) => r.into_stream(),
            Err(e) => return Err(bucket_err(e)),
        };
        let mut tx = tx;
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
            // With a fill, one chunk is held back (see above); without, none is.
            let mut out = Vec::with_capacity(2);
            if stage.is_some() {
                out.extend(held.replace(chunk));
            } else {
                out.extend(held.take());
                out.push(chunk);
            }
            for bytes in out {
                let Some(sender) = tx.as_ref() else { break };
                if sender.send(Ok(bytes)).await.is_err() {
                    // The client left; a fill goes on without it.
                    tx = None;
                }
            }
            if tx.is_none() && stage.is_none() {
                return Ok(None);
            }
        }
        if got != length {
            return Err(SharedError::Damaged(format!(
                "blob {digest}: {got} bytes of {length} arrived"
            )));
        }
        let staged = match stage {
            Some(mut s) => {
                let done = tokio::task::block_in_place(|| s.write(&batch).and_then(|_| s.finish()));
                match done {
                    Ok(staged) if staged.digest == digest && staged.size == length => Some(staged),
                    Ok(staged) => {
                        c.corrupt.fetch_add(1, Relaxed);
                        return Err(SharedError::Damaged(format!(
                            "the bucket's blob {digest} hashes to {}",
                            staged.digest
                        )));
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
    /// the bytes to `tx` as they come when there is a client.
    pub(super) async fn fill(
        &self,
        fill: Fill,
        tx: Option<mpsc::Sender<Result<Bytes, io::Error>>>,
    ) -> Result<EntryRecord, SharedError> {
        let (_, digest, size) = fill.manifest.names().map_err(SharedError::Damaged)?;
        let store = Arc::clone(&fill.store);
        let staging = tokio::task::block_in_place(|| store.staging())?;
        let staged = self.pump(digest, 0, size, tx, Some(staging)).await?;
        let staged = staged.ok_or_else(|| {
            SharedError::Io(io::Error::other("the local tier could not take the blob"))
        })?;
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
        Ok(entry)
    }
}

impl RemoteReader for Bucket {
    fn read(&self, digest: Digest, start: u64, length: u64) -> ByteStream {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let this = self.clone();
        self.spawn(async move {
            let err_tx = tx.clone();
            if let Err(e) = this.pump(digest, start, length, Some(tx), None).await {
                log::warn!("streaming {digest} from the bucket failed: {e}");
                let _ = err_tx.send(Err(io_err(e))).await;
            }
        });
        ByteStream(rx)
    }

    fn read_filling(&self, digest: Digest, size: u64, fill: Fill) -> ByteStream {
        let first = self.0.filling.lock().is_ok_and(|mut f| f.insert(fill.key));
        if !first {
            return self.read(digest, 0, size);
        }
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let this = self.clone();
        self.spawn(async move {
            let key = fill.key;
            let err_tx = tx.clone();
            if let Err(e) = this.fill(fill, Some(tx)).await {
                log::warn!("streaming {digest} from the bucket into the local tier failed: {e}");
                let _ = err_tx.send(Err(io_err(e))).await;
            }
            if let Ok(mut f) = this.0.filling.lock() {
                f.remove(&key);
            }
        });
        ByteStream(rx)
    }
}
