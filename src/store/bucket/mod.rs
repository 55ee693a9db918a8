//! The S3-compatible bucket that replicas share (docs/object-storage.md), through `object_store`.
//!
//! ```text
//! <prefix>blobs/sha256/ab/<digest>      the binaries, as in the data dir
//! <prefix>manifests/ab/<key>.json       one manifest per entry
//! <prefix>locks/<key>                   a build under way (lock.rs)
//! <prefix>tombstones/<key>              a key deleted on some replica (tombstone.rs)
//! <prefix>channels/<name>.json          a channel and its releases (channels.rs)
//! <prefix>trust/ab/<digest>.<name>       a blob's signature and provenance (trust.rs)
//! <prefix>variants/ab/<digest>.<coding>  a blob's compressed variants (variants.rs)
//! ```
//!
//! Every request runs on the bucket's own small multi-threaded runtime: object_store's client
//! (reqwest over hyper) keeps its connections on the runtime that made them, and a download that
//! outlives its client (a fill of the local tier) must not be dropped with an actix worker.
//! Downloads reach the HTTP layer through bounded channels (`ByteStream`).
//!
//! Here: the client, its runtime, the layout and the manifests. `transfer.rs` moves blobs,
//! `lock.rs` keeps one build per key, `tombstone.rs` carries deletes to every replica, `seam.rs` is the `SharedStore` the build layer sees.

mod auth;
mod channels;
mod checked;
mod lock;
mod repair;
mod seam;
mod tombstone;
mod transfer;
mod trust;
mod variants;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, GetOptions, ObjectStore, ObjectStoreExt,
    PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion,
};

use super::shared::{SharedError, SharedHealth};
use super::Manifest;
use crate::config::Config;
use crate::ids::{CacheKey, Digest};
pub use crate::metrics::{BucketCounters, BucketOp};
use checked::{Capped, Found};

/// The longest a request that carries no blob may take.
const OP_TIMEOUT: Duration = Duration::from_secs(15);
/// Manifests are small; anything larger is not one.
const MAX_MANIFEST_BYTES: usize = 1024 * 1024;

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
    filling: Mutex<HashMap<CacheKey, tokio::sync::watch::Receiver<Option<bool>>>>,
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

/// Masks any URL in the message: object_store's errors quote the request's, user information
/// from `storage.s3.endpoint` included.
fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(crate::redact::text(&e.to_string()))
}

/// The error of a failed bucket request, with its URLs masked (see [`io_err`]).
pub(super) fn bucket_err(e: object_store::Error) -> SharedError {
    SharedError::Bucket(Box::new(crate::redact::Redacted::of(&e)))
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
            .with_region(s3cfg.effective_region())
            .with_allow_http(s3cfg.allow_http)
            .with_client_options(client)
            .with_retry(retry);
        if let Some(endpoint) = &s3cfg.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let s3 = builder.build().map_err(|e| {
            let e = crate::redact::Redacted::of(&e);
            format!("storage.s3: cannot set up the bucket client: {e}")
        })?;
        log::info!(
            "storage: bucket {bucket:?} in {}{}, prefix {:?}",
            s3cfg.effective_region(),
            s3cfg
                .endpoint
                .as_deref()
                .map(|e| format!(" at {}", crate::redact::url(e)))
                .unwrap_or_default(),
            s3cfg.key_prefix()
        );
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
            filling: Mutex::new(HashMap::new()),
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

    pub(super) fn path(&self, rest: String) -> Path {
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
                let e = bucket_err(e);
                log::warn!("bucket {}: {e}", op.as_str());
                Err(e)
            }
        }
    }

    /// The manifest of `key` as the bucket holds it, read with a size cap and checked as input
    /// (`checked.rs`), with the ETag it was read at.
    pub(super) async fn get_manifest(
        &self,
        key: CacheKey,
    ) -> Result<Option<(Found, Option<String>)>, SharedError> {
        let path = self.manifest_path(&key);
        let got = match self
            .counted(BucketOp::ManifestGet, async {
                let got = self.0.s3.get_opts(&path, GetOptions::default()).await?;
                let etag = got.meta.e_tag.clone();
                match checked::read_capped(got, MAX_MANIFEST_BYTES).await {
                    Ok(bytes) => Ok(Ok((bytes, etag))),
                    Err(Capped::TooLarge(cap)) => Ok(Err(cap)),
                    Err(Capped::Store(e)) => Err(e),
                }
            })
            .await?
        {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(bucket_err(e)),
        };
        let found = match got {
            Ok((bytes, etag)) => {
                self.0.counters.read(bytes.len());
                (checked::check_manifest(&bytes, key), etag)
            }
            Err(cap) => (Found::Damaged(format!("larger than {cap} bytes")), None),
        };
        match &found.0 {
            Found::Usable(_) => {}
            Found::Newer(v) => log::warn!(
                "the manifest of {key} in the bucket is of version {v}, newer than this build \
                 reads; leaving it alone"
            ),
            // Rebuilt as if absent; the new manifest then replaces it.
            Found::Damaged(why) => {
                log::error!("the manifest of {key} in the bucket is damaged ({why}); ignoring it")
            }
        }
        Ok(Some(found))
    }

    /// The manifest of `key` when the blob it names is in the bucket too, of the size it says.
    /// Lifecycle rules may expire a blob before a manifest that names it (a re-upload of existing
    /// bytes does not make the blob younger), and a damaged blob is quarantined (`repair.rs`):
    /// such a manifest counts as absent, and the next build replaces it.
    pub(super) async fn usable_manifest(
        &self,
        key: CacheKey,
    ) -> Result<Option<Manifest>, SharedError> {
        let Some((Found::Usable(manifest), _)) = self.get_manifest(key).await? else {
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

    /// Writes the manifest; `replace` overwrites a usable one already there. Without it, an
    /// existing usable manifest wins and is returned. A damaged one is replaced (on the ETag it
    /// was read at, so that a manifest another replica writes meanwhile is not lost); one of a
    /// newer version is never overwritten: the entry then lives in this replica's tier alone.
    async fn put_manifest(
        &self,
        key: CacheKey,
        manifest: Manifest,
        replace: bool,
    ) -> Result<Option<Manifest>, SharedError> {
        // Three rounds at most: each lost race means another replica wrote meanwhile. A
        // replacement looks first (a newer manifest stays), then writes on what it saw.
        let mut mode = if replace { None } else { Some(PutMode::Create) };
        for _ in 0..3 {
            if let Some(mode) = mode.take() {
                if self.write_manifest(key, &manifest, mode).await?.is_ok() {
                    return Ok(None);
                }
            }
            // Created already, or changed since it was read: look at what is there.
            let Some((found, etag)) = self.get_manifest(key).await? else {
                mode = Some(PutMode::Create);
                continue;
            };
            match found {
                Found::Newer(_) => return Ok(None),
                Found::Usable(theirs) if !replace && self.blob_matches(&theirs).await? => {
                    return Ok(Some(theirs))
                }
                // Damaged, naming a blob that is gone, or ours replaces it anyway.
                Found::Usable(_) | Found::Damaged(_) => {
                    mode = Some(match etag {
                        Some(e_tag) => PutMode::Update(UpdateVersion {
                            e_tag: Some(e_tag),
                            version: None,
                        }),
                        None => PutMode::Overwrite,
                    });
                }
            }
        }
        Err(SharedError::Damaged(format!(
            "the manifest of {key} kept changing while it was written"
        )))
    }

    /// One conditional write of a manifest; `Err(())` when the condition failed.
    async fn write_manifest(
        &self,
        key: CacheKey,
        manifest: &Manifest,
        mode: PutMode,
    ) -> Result<Result<(), ()>, SharedError> {
        let bytes = serde_json::to_vec_pretty(manifest).map_err(io_err)?;
        let path = self.manifest_path(&key);
        let written = self
            .put_json(BucketOp::ManifestPut, &path, bytes, mode)
            .await?;
        Ok(if written { Ok(()) } else { Err(()) })
    }

    /// One conditional write of a small JSON object (a manifest, a channel record): `Ok(false)`
    /// when the condition failed (the object exists, or changed since it was read).
    pub(super) async fn put_json(
        &self,
        op: BucketOp,
        path: &Path,
        bytes: Vec<u8>,
        mode: PutMode,
    ) -> Result<bool, SharedError> {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, "application/json".into());
        let opts = PutOptions {
            mode,
            attributes,
            ..Default::default()
        };
        let n = bytes.len();
        match self
            .counted(op, self.0.s3.put_opts(path, PutPayload::from(bytes), opts))
            .await?
        {
            Ok(_) => {
                self.0.counters.written(n);
                Ok(true)
            }
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }
                | object_store::Error::NotFound { .. },
            ) => Ok(false),
            Err(e) => Err(bucket_err(e)),
        }
    }

    /// Whether the blob `manifest` names is in the bucket, of its size.
    async fn blob_matches(&self, manifest: &Manifest) -> Result<bool, SharedError> {
        let Ok((_, digest, size)) = manifest.names() else {
            return Ok(false);
        };
        let path = self.blob_path(&digest);
        Ok(matches!(
            self.counted(BucketOp::BlobHead, self.0.s3.head(&path)).await?,
            Ok(meta) if meta.size == size
        ))
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
