//! The S3-compatible bucket that replicas share (docs/object-storage.md), through `object_store`.
//!
//! ```text
//! <prefix>blobs/sha256/ab/<digest>      the binaries, as in the data dir
//! <prefix>manifests/ab/<key>.json       one manifest per entry
//! <prefix>locks/<key>                   a build under way (lock.rs)
//! ```
//!
//! Every request runs on the bucket's own small multi-threaded runtime: object_store's client
//! (reqwest over hyper) keeps its connections on the runtime that made them, and a download that
//! outlives its client (a fill of the local tier) must not be dropped with an actix worker.
//! Downloads reach the HTTP layer through bounded channels (`ByteStream`).

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use actix_web::web::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::Method;
use object_store::signer::Signer;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
    WriteMultipart,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use super::counters::{BucketCounters, BucketOp};
use super::shared::{
    Artifact, ByteStream, Claim, Fill, RemoteBlob, RemoteReader, SharedError, SharedHealth,
    SharedStore,
};
use super::{EntryRecord, Manifest, Staged, Staging, Store};
use crate::config::Config;
use crate::ids::{CacheKey, Digest};

/// Blobs up to this size go up in one PUT (with `If-None-Match: *`); larger ones in parts of it.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploading at once: memory per upload stays near `(PARALLEL_PARTS + 1) * PART_SIZE`.
const PARALLEL_PARTS: usize = 2;
/// The longest a request that carries no blob may take.
const OP_TIMEOUT: Duration = Duration::from_secs(15);
/// Chunks in flight between a bucket download and its HTTP response.
const CHANNEL_CHUNKS: usize = 4;
/// How long a presigned artifact URL stays valid.
pub const PRESIGN_TTL: Duration = Duration::from_secs(3600);
/// Manifests are small; anything larger is not one.
const MAX_MANIFEST_BYTES: usize = 2 * 1024 * 1024;
/// Local writes of a download are batched to this size.
const WRITE_BATCH: usize = 1024 * 1024;

/// Owns the bucket's runtime; shuts it down without blocking, so that it may be dropped from
/// inside another runtime (the server's state is dropped in async code).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

pub(super) struct Inner {
    pub(super) s3: AmazonS3,
    prefix: String,
    pub(super) counters: Arc<BucketCounters>,
    /// Who holds a build lock: host, process, and a random part for restarts.
    pub(super) replica: String,
    pub(super) lease: Duration,
    /// 0 unknown, 1 answered, 2 failed: what the last request saw.
    health: AtomicU8,
    /// Keys whose blob is being downloaded into the local tier (one download per key).
    filling: Mutex<HashSet<CacheKey>>,
    handle: tokio::runtime::Handle,
    _runtime: Runtime,
}

/// The bucket; clones share one client and one runtime.
#[derive(Clone)]
pub struct Bucket(pub(super) Arc<Inner>);

/// Aborts a task on the bucket's runtime when the future waiting for it is dropped (a request
/// that timed out, a client that left), so that nothing runs on for nobody.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn replica_id() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates what fits.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown-host".into()
    };
    let tag = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}/{}/{}", std::process::id(), &tag[..8])
}

impl Bucket {
    /// The bucket `config.storage.s3` names, with credentials from the standard AWS environment
    /// (or the instance's or pod's identity). Nothing is sent yet: an unreachable bucket does not
    /// stop the start (`/readyz` reports it).
    pub fn open(config: &Config, counters: Arc<BucketCounters>) -> Result<Bucket, String> {
        let s3cfg = &config.storage.s3;
        let bucket = s3cfg.bucket.clone().unwrap_or_default();
        // reqwest's rustls has no provider of its own in this build: ring, as everywhere else.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = ClientOptions::new()
            .with_allow_http(s3cfg.allow_http)
            .with_connect_timeout(Duration::from_secs(5))
            // A download may take long; one that stalls may not.
            .with_timeout_disabled()
            .with_read_timeout(Duration::from_secs(30));
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_region(&s3cfg.region)
            .with_allow_http(s3cfg.allow_http)
            .with_client_options(client)
            .with_retry(retry);
        if let Some(endpoint) = &s3cfg.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let s3 = builder
            .build()
            .map_err(|e| format!("storage.s3: cannot set up the bucket client: {e}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("velox-bucket")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the bucket's runtime: {e}"))?;
        Ok(Bucket(Arc::new(Inner {
            s3,
            prefix: s3cfg.key_prefix(),
            counters,
            replica: replica_id(),
            lease: config.lock_lease(),
            health: AtomicU8::new(0),
            filling: Mutex::new(HashSet::new()),
            handle: runtime.handle().clone(),
            _runtime: Runtime(Some(runtime)),
        })))
    }

    /// Runs `fut` on the bucket's runtime; dropping the returned future aborts it.
    pub(super) fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, SharedError>> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, SharedError>> {
        let task = AbortOnDrop(self.0.handle.spawn(fut));
        Box::pin(async move {
            let mut task = task;
            match (&mut task.0).await {
                Ok(r) => r,
                Err(e) => Err(SharedError::Io(io_err(format!("bucket task: {e}")))),
            }
        })
    }

    pub(super) fn spawn(
        &self,
        fut: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        self.0.handle.spawn(fut)
    }

    /// Blocks the calling (blocking-pool) thread on `fut`, run on the bucket's runtime.
    fn block_on<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, SharedError>> + Send + 'static,
    ) -> Result<T, SharedError> {
        let task = self.run(fut);
        self.0.handle.block_on(task)
    }

    fn path(&self, rest: String) -> Path {
        Path::from(format!("{}{rest}", self.0.prefix))
    }

    pub(super) fn blob_path(&self, d: &Digest) -> Path {
        let hex = d.to_hex();
        self.path(format!("blobs/sha256/{}/{hex}", &hex[..2]))
    }

    fn manifest_path(&self, k: &CacheKey) -> Path {
        let hex = k.to_hex();
        self.path(format!("manifests/{}/{hex}.json", &hex[..2]))
    }

    pub(super) fn lock_path(&self, k: &CacheKey) -> Path {
        self.path(format!("locks/{}", k.to_hex()))
    }

    /// Counts a request and what came of it. A missing object, an existing one and a failed
    /// precondition are answers; anything else is an error, and so is no answer in `OP_TIMEOUT`.
    pub(super) async fn counted<T>(
        &self,
        op: BucketOp,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> Result<object_store::Result<T>, SharedError> {
        let c = &self.0.counters;
        c.request(op);
        let answer = match tokio::time::timeout(OP_TIMEOUT, fut).await {
            Ok(answer) => answer,
            Err(_) => {
                c.error(op);
                self.0.health.store(2, Relaxed);
                return Err(SharedError::Timeout(OP_TIMEOUT));
            }
        };
        match answer {
            Ok(v) => {
                self.0.health.store(1, Relaxed);
                Ok(Ok(v))
            }
            Err(
                e @ (object_store::Error::NotFound { .. }
                | object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }
                | object_store::Error::NotModified { .. }),
            ) => {
                self.0.health.store(1, Relaxed);
                Ok(Err(e))
            }
            Err(e) => {
                c.error(op);
                self.0.health.store(2, Relaxed);
                log::warn!("bucket {}: {e}", op.as_str());
                Err(SharedError::Bucket(Box::new(e)))
            }
        }
    }

    pub(super) async fn get_manifest(
        &self,
        key: CacheKey,
    ) -> Result<Option<Manifest>, SharedError> {
        let path = self.manifest_path(&key);
        let got = match self
            .counted(BucketOp::ManifestGet, async {
                self.0
                    .s3
                    .get_opts(&path, GetOptions::default())
                    .await?
                    .bytes()
                    .await
            })
            .await?
        {
            Ok(bytes) => bytes,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(SharedError::Bucket(Box::new(e))),
        };
        self.0.counters.read(got.len());
        let decoded = (got.len() <= MAX_MANIFEST_BYTES)
            .then(|| serde_json::from_slice::<Manifest>(&got).ok())
            .flatten()
            .filter(|m| m.names().is_ok_and(|(k, _, _)| k == key));
        if decoded.is_none() {
            // Rebuilt as if absent; the new manifest then replaces it.
            log::error!("the manifest of {key} in the bucket is damaged; ignoring it");
        }
        Ok(decoded)
    }

    /// The manifest of `key` when the blob it names is in the bucket too. Lifecycle rules may
    /// expire a blob before a manifest that names it (a re-upload of existing bytes does not make
    /// the blob younger): such a manifest counts as absent, and the next build replaces it.
    pub(super) async fn usable_manifest(
        &self,
        key: CacheKey,
    ) -> Result<Option<Manifest>, SharedError> {
        let Some(manifest) = self.get_manifest(key).await? else {
            return Ok(None);
        };
        let Ok((_, digest, size)) = manifest.names() else {
            return Ok(None);
        };
        let path = self.blob_path(&digest);
        match self
            .counted(BucketOp::BlobHead, self.0.s3.head(&path))
            .await?
        {
            Ok(meta) if meta.size == size => Ok(Some(manifest)),
            Ok(_) | Err(_) => {
                log::warn!("the bucket's manifest of {key} names blob {digest}, which is missing or of another size; treating the key as not built");
                Ok(None)
            }
        }
    }

    /// Writes the manifest; `replace` overwrites one already there. Without it, an existing
    /// manifest wins and is returned.
    async fn put_manifest(
        &self,
        key: CacheKey,
        manifest: Manifest,
        replace: bool,
    ) -> Result<Option<Manifest>, SharedError> {
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(io_err)?;
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, "application/json".into());
        let opts = PutOptions {
            mode: if replace {
                PutMode::Overwrite
            } else {
                PutMode::Create
            },
            attributes,
            ..Default::default()
        };
        let n = bytes.len();
        let path = self.manifest_path(&key);
        match self
            .counted(
                BucketOp::ManifestPut,
                self.0.s3.put_opts(&path, PutPayload::from(bytes), opts),
            )
            .await?
        {
            Ok(_) => {
                self.0.counters.written(n);
                Ok(None)
            }
            Err(object_store::Error::AlreadyExists { .. }) => {
                match self.usable_manifest(key).await? {
                    Some(theirs) => Ok(Some(theirs)),
                    // Damaged, or naming a blob that is gone: ours replaces it.
                    None => Box::pin(self.put_manifest(key, manifest, true)).await,
                }
            }
            Err(e) => Err(SharedError::Bucket(Box::new(e))),
        }
    }

    /// Uploads a staged blob unless the bucket has it: one PUT with `If-None-Match: *` up to
    /// `PART_SIZE`, a multipart upload above (object_store sends no precondition on a multipart
    /// completion, so two replicas racing on one digest may both write it: the same bytes).
    async fn put_blob(
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
                Err(e) => Err(SharedError::Bucket(Box::new(e))),
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
            Err(e) => return Err(SharedError::Bucket(Box::new(e))),
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
                    .map_err(|e| SharedError::Bucket(Box::new(e)))?;
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
                Err(SharedError::Bucket(Box::new(e)))
            }
        }
    }

    /// Streams `length` bytes from `start` of a blob into `tx` (a ranged GET). With `stage`, the
    /// same bytes go into the local tier, and the last chunk is held back until the whole blob is
    /// known to hash to its name: a client never receives a complete wrong body.
    async fn pump(
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
            Err(e) => return Err(SharedError::Bucket(Box::new(e))),
        };
        let mut tx = tx;
        let mut held: Option<Bytes> = None;
        let mut batch: Vec<u8> = Vec::new();
        let mut got = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                c.error(BucketOp::BlobGet);
                SharedError::Bucket(Box::new(e))
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
    async fn fill(
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

    async fn probe(&self) -> SharedHealth {
        let path = self.path(".velox-cache-probe".into());
        match self
            .counted(BucketOp::BlobHead, self.0.s3.head(&path))
            .await
        {
            Ok(_) => SharedHealth::Ok,
            Err(_) => SharedHealth::Unreachable,
        }
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

impl SharedStore for Bucket {
    fn find(&self, key: CacheKey) -> BoxFuture<'static, Result<Option<Manifest>, SharedError>> {
        let this = self.clone();
        self.run(async move { this.usable_manifest(key).await })
    }

    fn claim(
        &self,
        key: CacheKey,
        force: bool,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Claim, SharedError>> {
        let this = self.clone();
        self.run(async move { this.claim_build(key, force, deadline).await })
    }

    fn ingest(&self, store: &Arc<Store>, a: Artifact) -> Result<EntryRecord, SharedError> {
        let staged = store.stage(a.file)?;
        let manifest = Manifest::new(&a.key, &staged, &a.file_name, a.request, a.build_ms);
        let this = self.clone();
        let (path, digest, size) = (staged.path().to_path_buf(), staged.digest, staged.size);
        let file_name = a.file_name.clone();
        let (key, replace) = (a.key, a.replace);
        let started = std::time::Instant::now();
        let theirs = self.block_on(async move {
            this.put_blob(path, digest, size, file_name).await?;
            this.put_manifest(key, manifest.clone(), replace)
                .await
                .map(|theirs| (theirs, manifest))
        })?;
        log::info!(
            "stored {key} in the bucket ({size} bytes) in {} ms",
            started.elapsed().as_millis()
        );
        match theirs {
            (None, ours) => Ok(store.adopt(staged, &ours)?),
            // Another replica wrote this key's manifest first: the bucket's is the truth.
            (Some(theirs), _) if theirs.digest == staged.digest.to_hex() => {
                Ok(store.adopt(staged, &theirs)?)
            }
            (Some(theirs), _) => {
                drop(staged);
                let this = self.clone();
                let fill = Fill {
                    key,
                    manifest: theirs,
                    store: Arc::clone(store),
                    after: Arc::new(|_, _| {}),
                };
                self.block_on(async move { this.fill(fill, None).await })
            }
        }
    }

    fn fetch(
        &self,
        store: Arc<Store>,
        manifest: Manifest,
    ) -> BoxFuture<'static, Result<EntryRecord, SharedError>> {
        let this = self.clone();
        let key = manifest.names().map(|(k, _, _)| k);
        self.run(async move {
            let key = key.map_err(SharedError::Damaged)?;
            let fill = Fill {
                key,
                manifest,
                store,
                after: Arc::new(|_, _| {}),
            };
            this.fill(fill, None).await
        })
    }

    fn remote(&self, manifest: &Manifest) -> Option<RemoteBlob> {
        let (_, digest, size) = manifest.names().ok()?;
        Some(RemoteBlob {
            digest,
            size,
            modified: manifest.created(),
            file_name: manifest.file_name.clone(),
            reader: Arc::new(self.clone()),
            fill: None,
        })
    }

    fn open(&self, digest: Digest) -> BoxFuture<'static, Result<Option<RemoteBlob>, SharedError>> {
        let this = self.clone();
        self.run(async move {
            let path = this.blob_path(&digest);
            let opts = GetOptions {
                head: true,
                ..Default::default()
            };
            let got = match this
                .counted(BucketOp::BlobHead, this.0.s3.get_opts(&path, opts))
                .await?
            {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(SharedError::Bucket(Box::new(e))),
            };
            let file_name = got
                .attributes
                .get(&Attribute::ContentDisposition)
                .and_then(|v| {
                    let v: &str = v.as_ref();
                    v.split("filename=\"")
                        .nth(1)?
                        .split('"')
                        .next()
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| "roadrunner".into());
            Ok(Some(RemoteBlob {
                digest,
                size: got.meta.size,
                modified: SystemTime::from(got.meta.last_modified),
                file_name,
                reader: Arc::new(this.clone()),
                fill: None,
            }))
        })
    }

    fn url(
        &self,
        digest: Digest,
        _file_name: String,
    ) -> BoxFuture<'static, Result<Option<String>, SharedError>> {
        let this = self.clone();
        self.run(async move {
            let path = this.blob_path(&digest);
            let signed = this
                .counted(
                    BucketOp::Presign,
                    this.0.s3.signed_url(Method::GET, &path, PRESIGN_TTL),
                )
                .await?
                .map_err(|e| SharedError::Bucket(Box::new(e)))?;
            Ok(Some(signed.to_string()))
        })
    }

    fn forget(&self, key: CacheKey) -> BoxFuture<'static, Result<bool, SharedError>> {
        let this = self.clone();
        self.run(async move {
            let path = this.manifest_path(&key);
            match this
                .counted(BucketOp::ManifestGet, this.0.s3.head(&path))
                .await?
            {
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(SharedError::Bucket(Box::new(e))),
            }
            this.counted(BucketOp::ManifestDelete, this.0.s3.delete(&path))
                .await?
                .map_err(|e| SharedError::Bucket(Box::new(e)))?;
            Ok(true)
        })
    }

    fn health(&self) -> BoxFuture<'static, SharedHealth> {
        let this = self.clone();
        let probe = self.run(async move { Ok(this.probe().await) });
        Box::pin(async move { probe.await.unwrap_or(SharedHealth::Unreachable) })
    }
}
