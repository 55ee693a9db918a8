//! The seam between the local store and what replicas share (docs/object-storage.md).
//!
//! [`SharedStore`] is what the build layer asks about a key or a blob that the local tier does not
//! settle on its own. Two implementations: [`LocalOnly`], a single replica whose data dir is the
//! whole store (nothing is shared, every build lock is granted at once), and
//! [`super::bucket::Bucket`], an S3-compatible bucket that every replica reads and writes, with
//! the data dir as a bounded tier in front of it. The hot path (a local hit) never comes here.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use actix_web::web::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Encoding, EntryRecord, IngestError, Manifest, Store, StoreError};
use crate::ids::{CacheKey, Digest};

/// Why the shared store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// Unreachable, refusing, or answering errors.
    #[error("the bucket failed: {0}")]
    Bucket(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the bucket did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// An object that does not decode or does not match what names it.
    #[error("the bucket holds a damaged object: {0}")]
    Damaged(String),
    #[error("the local tier failed: {0}")]
    Local(#[from] StoreError),
    #[error("the local tier failed: {0}")]
    Ingest(#[from] IngestError),
    #[error("local i/o: {0}")]
    Io(#[from] io::Error),
}

/// What [`SharedStore::claim`] settled: this replica builds, or another one already has.
pub enum Claim {
    /// Call Velox. The lock (if the store has locks) is released when this is dropped.
    Build(BuildLock),
    /// Another replica built the key while this one waited (or just before it asked).
    Built(Manifest),
}

/// A held build lock; dropping it releases the lock in the background.
pub struct BuildLock {
    /// Whatever releases the lock when dropped.
    _held: Option<Box<dyn Send + Sync>>,
}

impl BuildLock {
    /// The lock of a store that needs none.
    pub fn none() -> Self {
        BuildLock { _held: None }
    }

    pub(super) fn held(releaser: Box<dyn Send + Sync>) -> Self {
        BuildLock {
            _held: Some(releaser),
        }
    }
}

/// What the shared store knows of a key the local tier and this replica's builds do not (the
/// status route's question, docs/http-api.md).
#[derive(Debug)]
pub enum Elsewhere {
    /// Another replica built it: its manifest is in the shared store.
    Built(Manifest),
    /// Another replica holds a live build lock on it, taken `elapsed` ago.
    Building { elapsed: std::time::Duration },
    /// Neither.
    Unknown,
}

/// The state `/readyz` reports for the shared store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedHealth {
    /// `storage.backend = "local"`.
    NotConfigured,
    Ok,
    Unreachable,
}

impl SharedHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            SharedHealth::NotConfigured => "not_configured",
            SharedHealth::Ok => "ok",
            SharedHealth::Unreachable => "unreachable",
        }
    }
}

/// What a finished fill of the local tier should do next (enforce the limits, count evictions):
/// the build layer's business, handed down as a hook.
pub type AfterInsert = Arc<dyn Fn(&Store, &CacheKey) + Send + Sync>;

/// A blob to fill into the local tier while it is streamed: the entry it belongs to.
pub struct Fill {
    pub key: CacheKey,
    pub manifest: Manifest,
    pub store: Arc<Store>,
    pub after: AfterInsert,
}

/// A blob that only the shared store holds, ready to stream. Every byte of it is checked
/// against its digest before a client gets it: whole answers hash as they stream and are cut
/// before their last chunk when wrong; ranges are served from the local tier after a verified
/// fill, so they need a `fill`.
pub struct RemoteBlob {
    pub digest: Digest,
    pub size: u64,
    pub modified: SystemTime,
    pub file_name: String,
    pub(super) reader: Arc<dyn RemoteReader>,
    /// Set on a cache hit: a whole-body download also fills the local tier, and a range waits
    /// for that fill.
    pub fill: Option<Fill>,
    /// For a blob found by digest alone: the entry it was stored for, when the shared store
    /// names one whose manifest names this blob (the caller turns it into a `fill`).
    pub origin: Option<(CacheKey, Manifest)>,
}

impl RemoteBlob {
    /// Whether a range of this blob can be served: only from a verified copy in the local tier,
    /// so only when the blob can be filled into it. Without, a `Range` is answered with the
    /// whole (hashed) body, as RFC 9110 §14.2 allows.
    pub fn serves_ranges(&self) -> bool {
        self.fill.is_some()
    }

    /// `length` bytes from `start`. The whole blob streams from the shared store, hashed on the
    /// way (and fills the local tier when a fill is attached); a range is read from the local
    /// tier once the fill has put a verified copy there.
    pub fn stream(self, start: u64, length: u64) -> ByteStream {
        let whole = start == 0 && length == self.size;
        match self.fill {
            Some(fill) if whole => self.reader.read_filling(self.digest, self.size, fill),
            None if whole => self.reader.read(self.digest, self.size),
            Some(fill) => self.reader.read_range(start, length, fill),
            None => {
                // `serves_ranges` said no: the caller should have asked for the whole.
                let (tx, rx) = mpsc::channel(1);
                let _ = tx.try_send(Err(io::Error::other(
                    "a range of a blob that is only in the bucket needs a fill",
                )));
                ByteStream(rx)
            }
        }
    }
}

/// The reading half of a shared store, as [`RemoteBlob`] needs it.
pub(super) trait RemoteReader: Send + Sync {
    /// The whole blob, hashed as it streams.
    fn read(&self, digest: Digest, size: u64) -> ByteStream;
    /// The whole blob, hashed as it streams, also filling the local tier.
    fn read_filling(&self, digest: Digest, size: u64, fill: Fill) -> ByteStream;
    /// A range, from the local tier once `fill` (or the fill under way) has put it there.
    fn read_range(&self, start: u64, length: u64, fill: Fill) -> ByteStream;
}

/// Where the bytes of a blob come from.
pub enum BlobSource {
    /// The local tier.
    File(Arc<File>),
    /// The shared store only (boxed: it carries a manifest for the fill).
    Remote(Box<RemoteBlob>),
}

/// Chunks of a blob coming from the shared store, through a small bounded channel, so that a
/// download holds a few chunks in memory whatever the client's speed.
pub struct ByteStream(pub(super) mpsc::Receiver<Result<Bytes, io::Error>>);

impl futures_util::Stream for ByteStream {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// What a build produced, for [`SharedStore::ingest`].
pub struct Artifact {
    pub file: File,
    pub key: CacheKey,
    pub file_name: String,
    pub request: serde_json::Value,
    pub build_ms: u64,
    /// `force_rebuild`: the entry replaces whatever the key had, in the bucket too.
    pub replace: bool,
}

/// A record read with the version it was read at, for a conditional write.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub bytes: Vec<u8>,
    pub etag: Option<String>,
}

/// The condition of a channel record's write.
#[derive(Debug, Clone)]
pub enum Expect {
    /// There is none yet.
    Absent,
    /// It is still the version read.
    Etag(String),
    /// Whatever is there (a record read without an ETag).
    Any,
}

/// What replicas share. Calls that go over the network are futures that own what they need;
/// [`SharedStore::ingest`] blocks and runs on the blocking pool like the local ingest it wraps.
pub trait SharedStore: Send + Sync {
    /// The manifest of `key`, when the shared store has one.
    fn find(&self, key: CacheKey) -> BoxFuture<'static, Result<Option<Manifest>, SharedError>>;

    /// Takes the one build of `key` across replicas, or waits (until `deadline`) for the replica
    /// that has it. `force`: a manifest already there does not settle it.
    fn claim(
        &self,
        key: CacheKey,
        force: bool,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Claim, SharedError>>;

    /// Stores a built artifact: in the shared store first, then in the local tier and its index.
    fn ingest(&self, store: &Arc<Store>, artifact: Artifact) -> Result<EntryRecord, SharedError>;

    /// Brings the entry `manifest` describes into the local tier (after another replica's build).
    fn fetch(
        &self,
        store: Arc<Store>,
        manifest: Manifest,
    ) -> BoxFuture<'static, Result<EntryRecord, SharedError>>;

    /// The blob `manifest` names, to stream to a client from the shared store.
    fn remote(&self, manifest: &Manifest) -> Option<RemoteBlob>;

    /// A blob by digest alone (the artifact route), when the shared store has it.
    /// `origin`: also look up the entry the blob was stored for (one more request), for a
    /// download that may fill the local tier; an existence check or a `HEAD` needs none.
    fn open(
        &self,
        digest: Digest,
        origin: bool,
    ) -> BoxFuture<'static, Result<Option<RemoteBlob>, SharedError>>;

    /// A URL that serves the blob without this process, when the store can make one (the
    /// object carries its own `Content-Disposition`).
    fn url(&self, digest: Digest) -> BoxFuture<'static, Result<Option<String>, SharedError>>;

    /// Deletes the manifest of `key` and tells the other replicas to drop their local copies
    /// (a tombstone, docs/object-storage.md); whether there was a manifest.
    fn forget(&self, key: CacheKey) -> BoxFuture<'static, Result<bool, SharedError>>;

    /// What the shared store knows of `key`: built or being built by another replica.
    fn elsewhere(&self, key: CacheKey) -> BoxFuture<'static, Result<Elsewhere, SharedError>>;

    fn health(&self) -> BoxFuture<'static, SharedHealth>;

    /// Whether channels live here (docs/channels.md, "With replicas"); the calls below are
    /// made only when they do.
    fn shares_channels(&self) -> bool {
        false
    }

    /// The record of channel `name`, with its version.
    fn channel_get(
        &self,
        _name: String,
    ) -> BoxFuture<'static, Result<Option<Versioned>, SharedError>> {
        Box::pin(async { Ok(None) })
    }

    /// Writes the record of channel `name` on the condition `expect`; false when it failed.
    fn channel_put(
        &self,
        _name: String,
        _bytes: Vec<u8>,
        _expect: Expect,
    ) -> BoxFuture<'static, Result<bool, SharedError>> {
        Box::pin(async { Ok(true) })
    }

    fn channel_delete(&self, _name: String) -> BoxFuture<'static, Result<(), SharedError>> {
        Box::pin(async { Ok(()) })
    }

    /// The names of every channel.
    fn channel_names(&self) -> BoxFuture<'static, Result<Vec<String>, SharedError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// A file kept about the blob `digest` for every replica (`minisig`, `provenance.json`:
    /// docs/signing.md), when the shared store has one. Unchecked input: the caller checks it.
    fn trust_get(
        &self,
        _digest: Digest,
        _name: &'static str,
    ) -> BoxFuture<'static, Result<Option<Vec<u8>>, SharedError>> {
        Box::pin(async { Ok(None) })
    }

    /// Keeps `bytes` as `name` of `digest` unless one is kept already; whether this one was.
    fn trust_put(
        &self,
        _digest: Digest,
        _name: &'static str,
        _bytes: Vec<u8>,
    ) -> BoxFuture<'static, Result<bool, SharedError>> {
        Box::pin(async { Ok(true) })
    }

    /// Whether compressed variants are shared here (docs/compression.md, "With replicas"); the
    /// calls below are made only when they are.
    fn shares_variants(&self) -> bool {
        false
    }

    /// Downloads the `enc` variant of `blob` into the existing file `dest` when the shared store
    /// has one of fewer than `max` bytes; its size. Unchecked input: the caller decodes it and
    /// checks it against the blob.
    fn variant_get(
        &self,
        _blob: Digest,
        _enc: Encoding,
        _dest: PathBuf,
        _max: u64,
    ) -> BoxFuture<'static, Result<Option<u64>, SharedError>> {
        Box::pin(async { Ok(None) })
    }

    /// Shares the local variant file `local` of `size` bytes unless a variant of `blob` in `enc`
    /// is shared already; whether this one was.
    fn variant_put(
        &self,
        _blob: Digest,
        _enc: Encoding,
        _local: PathBuf,
        _size: u64,
    ) -> BoxFuture<'static, Result<bool, SharedError>> {
        Box::pin(async { Ok(false) })
    }

    /// Deletes the shared `enc` variant of `blob` (it failed its check).
    fn variant_delete(
        &self,
        _blob: Digest,
        _enc: Encoding,
    ) -> BoxFuture<'static, Result<(), SharedError>> {
        Box::pin(async { Ok(()) })
    }

    /// Whether the token store lives here (docs/access.md, "With replicas"); the calls below
    /// are made only when it does.
    fn shares_auth(&self) -> bool {
        false
    }

    /// The token store, with its version.
    fn auth_get(&self) -> BoxFuture<'static, Result<Option<Versioned>, SharedError>> {
        Box::pin(async { Ok(None) })
    }

    /// Writes the token store on the condition `expect`; false when it failed.
    fn auth_put(
        &self,
        _bytes: Vec<u8>,
        _expect: Expect,
    ) -> BoxFuture<'static, Result<bool, SharedError>> {
        Box::pin(async { Ok(true) })
    }
}

/// One replica alone: the data dir is the store.
pub struct LocalOnly;

impl SharedStore for LocalOnly {
    fn find(&self, _key: CacheKey) -> BoxFuture<'static, Result<Option<Manifest>, SharedError>> {
        Box::pin(async { Ok(None) })
    }

    fn claim(
        &self,
        _key: CacheKey,
        _force: bool,
        _deadline: Instant,
    ) -> BoxFuture<'static, Result<Claim, SharedError>> {
        // In one process the build service's in-flight map already makes one build per key.
        Box::pin(async { Ok(Claim::Build(BuildLock::none())) })
    }

    fn ingest(&self, store: &Arc<Store>, a: Artifact) -> Result<EntryRecord, SharedError> {
        Ok(store.ingest(a.file, &a.key, &a.file_name, a.request, a.build_ms)?)
    }

    fn fetch(
        &self,
        _store: Arc<Store>,
        _manifest: Manifest,
    ) -> BoxFuture<'static, Result<EntryRecord, SharedError>> {
        // `claim` never answers `Built` here, so nothing asks.
        Box::pin(async {
            Err(SharedError::Damaged(
                "the local store has nothing to fetch".into(),
            ))
        })
    }

    fn remote(&self, _manifest: &Manifest) -> Option<RemoteBlob> {
        None
    }

    fn open(
        &self,
        _digest: Digest,
        _origin: bool,
    ) -> BoxFuture<'static, Result<Option<RemoteBlob>, SharedError>> {
        Box::pin(async { Ok(None) })
    }

    fn url(&self, _digest: Digest) -> BoxFuture<'static, Result<Option<String>, SharedError>> {
        Box::pin(async { Ok(None) })
    }

    fn forget(&self, _key: CacheKey) -> BoxFuture<'static, Result<bool, SharedError>> {
        Box::pin(async { Ok(false) })
    }

    fn elsewhere(&self, _key: CacheKey) -> BoxFuture<'static, Result<Elsewhere, SharedError>> {
        Box::pin(async { Ok(Elsewhere::Unknown) })
    }

    fn health(&self) -> BoxFuture<'static, SharedHealth> {
        Box::pin(async { SharedHealth::NotConfigured })
    }
}
