//! The cache store (docs/storage.md): binaries as content-addressed blob files, one immutable manifest per
//! entry, and every piece of metadata in sled.
//!
//! ```text
//! <data_dir>/meta/                          sled: entries, blobs, lru, lfu, fifo, counters, tombstones
//! <data_dir>/blobs/sha256/ab/<64 hex>       one file per distinct binary
//! <data_dir>/manifests/ab/<64 hex key>.json one record per entry
//! <data_dir>/tmp/                           files being ingested
//! ```
//!
//! Every call here blocks on disk or sled: callers run them on the blocking pool, except the
//! lookups on the hit path, which are a single in-memory sled read.

mod bucket;
mod evict;
mod handles;
pub mod images;
mod index;
mod ingest;
mod kept;
mod maintain;
pub mod pins;
pub mod record;
mod recover;
mod reopen;
mod scrub;
pub mod shared;
mod sidecars;
mod tier;
mod variant_check;
mod variants;
mod verify;

use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::SystemTime;

use std::collections::HashMap;

use sled::transaction::TransactionError;

pub use index::PendingHits;
pub use ingest::{IngestError, Manifest};
pub use maintain::{disk_space, DiskSpace, EvictionReason, Limits};
pub use record::{BlobRecord, EntryRecord, RecordError};
pub use recover::{Problems, ReconcileReport};
pub use reopen::{IndexState, FULL_BELOW, REOPEN_ATTEMPTS, SNAPSHOT_AFTER_WRITES};
pub use scrub::{is_revoked, revocation_generation, ScrubReport, Throttle};
pub use sidecars::SIDECAR_DIR;

pub use bucket::{Bucket, BucketCounters, BucketOp};
pub use shared::{BlobSource, SharedStore};
pub use tier::{Staged, Staging};
pub use variants::{
    keep_below, Adopted, Encoding, Made, Scratch, Variant, KEEP_BELOW_PERMILLE, VARIANT_DIR,
};

use index::{be_u64, COUNTER_BYTES, COUNTER_ENTRIES};

use crate::ids::{CacheKey, Digest};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the data dir {0} is in use by another velox-cache process")]
    Locked(PathBuf),
    #[error("cannot prepare the data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("the index is damaged: {0}")]
    Corrupt(String),
    #[error("stored record: {0}")]
    Record(#[from] RecordError),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The index was closed to be reopened, and the reopen failed (docs/storage.md, "Disk full").
    #[error("the index is closed: reopening it failed")]
    Closed,
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

/// Totals kept in the `counters` tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub entries: u64,
    pub bytes: u64,
}

/// The sled database and its trees, replaced whole when the index is reopened ([`reopen`]).
pub(super) struct Index {
    db: sled::Db,
    entries: sled::Tree,
    blobs: sled::Tree,
    lru: sled::Tree,
    lfu: sled::Tree,
    fifo: sled::Tree,
    counters: sled::Tree,
    /// Entries removed whose manifest may not be deleted yet ([`index`]).
    tombstones: sled::Tree,
    /// Pinned keys and their holders; channel records and the keys they pin ([`pins`]).
    pins: sled::Tree,
    channels: sled::Tree,
    channel_keys: sled::Tree,
    /// Image layers, documents and what they were made from ([`images`]).
    images: sled::Tree,
    /// Compressed variants of blobs ([`variants`]).
    variants: sled::Tree,
    /// The file stamp each variant was last seen whole in, so that a restart need not hash
    /// them again ([`variant_check`]).
    variant_seen: sled::Tree,
}

impl Index {
    fn new(db: sled::Db) -> Result<Index, StoreError> {
        Ok(Index {
            entries: db.open_tree("entries")?,
            blobs: db.open_tree("blobs")?,
            lru: db.open_tree("lru")?,
            lfu: db.open_tree("lfu")?,
            fifo: db.open_tree("fifo")?,
            counters: db.open_tree("counters")?,
            tombstones: db.open_tree("tombstones")?,
            pins: db.open_tree("pins")?,
            channels: db.open_tree("channels")?,
            channel_keys: db.open_tree("channel_keys")?,
            images: db.open_tree("images")?,
            variants: db.open_tree("variants")?,
            variant_seen: db.open_tree("variant_seen")?,
            db,
        })
    }
}

pub struct Store {
    root: PathBuf,
    /// The index, behind a lock taken for writing only to reopen it; `None` after a reopen that
    /// failed. Everyone else holds the lock just long enough to clone the `Arc` ([`Store::ix`]).
    index: RwLock<Option<Arc<Index>>>,
    /// Whether sled refused a write, and how reopening it went ([`reopen`]).
    health: reopen::IndexHealth,
    /// Serialises the steps that place or remove blob files together with their index updates,
    /// so that a blob is never deleted between being placed and being referenced.
    write_lock: Mutex<()>,
    /// Open blob files for the next hit ([`handles`]).
    handles: handles::Handles,
    /// Hits counted in memory, written in batches (docs/storage.md).
    pending: Mutex<HashMap<CacheKey, PendingHits>>,
    /// Held while a batch of hits is written: one taken from `pending` but not yet in the index
    /// is waited for by the next writer (an eviction writes the hits before it decides).
    hits_writer: Mutex<()>,
    /// Told of every damaged blob found (see [`Store::on_corrupt`]).
    corrupt_hook: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Told of every blob whose compressed variants should be made ([`variants`]).
    variant_hook: OnceLock<Box<dyn Fn(Digest) + Send + Sync>>,
    /// Told when evicted entries' files wait for [`Store::reap_evictions`] ([`evict`]).
    evictions_hook: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Evicted entries whose files wait for a flush ([`evict`]).
    waiting_evictions: Mutex<evict::Evictions>,
    /// The variant and layer bytes of those, still on disk but no longer counted by the limits.
    leaving_variant_bytes: std::sync::atomic::AtomicU64,
    /// Orders the index's channel and pin writes with their copies beside it ([`kept`]).
    kept_lock: Mutex<()>,
    /// Whether the index holds what the data dir holds: false from the creation of a new index
    /// until the start-up pass has re-indexed the manifests ([`Store::wait_until_filled`]).
    filled: (Mutex<bool>, std::sync::Condvar),
    /// Held for the life of the process: one process owns a data dir.
    _lock: File,
}

fn dir_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::DataDir {
        path: path.to_path_buf(),
        source,
    }
}

impl Store {
    /// Opens (creating if needed) the store in `root`. Does nothing that grows with the number of
    /// entries: takes the lock, empties `tmp/`, opens sled.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        fs::create_dir_all(root).map_err(dir_err(root))?;
        let lock_path = root.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(dir_err(root))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(StoreError::Locked(root.to_path_buf())),
            Err(TryLockError::Error(e)) => return Err(dir_err(root)(e)),
        }
        for sub in ["blobs/sha256", "manifests", "tmp"] {
            fs::create_dir_all(root.join(sub)).map_err(dir_err(root))?;
        }
        let tmp = root.join("tmp");
        for item in fs::read_dir(&tmp).map_err(dir_err(&tmp))? {
            let path = item.map_err(dir_err(&tmp))?.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            if let Err(e) = removed {
                log::warn!("cannot remove the leftover {}: {e}", path.display());
            }
        }
        let (db, created) = open_meta(root)?;
        let store = Store {
            root: root.to_path_buf(),
            index: RwLock::new(Some(Arc::new(Index::new(db)?))),
            health: reopen::IndexHealth::new(),
            write_lock: Mutex::new(()),
            handles: handles::Handles::default(),
            pending: Mutex::new(HashMap::new()),
            hits_writer: Mutex::new(()),
            corrupt_hook: OnceLock::new(),
            variant_hook: OnceLock::new(),
            evictions_hook: OnceLock::new(),
            waiting_evictions: Mutex::new(evict::Evictions::default()),
            leaving_variant_bytes: std::sync::atomic::AtomicU64::new(0),
            kept_lock: Mutex::new(()),
            filled: (Mutex::new(!created), std::sync::Condvar::new()),
            _lock: lock,
        };
        if created {
            // A new index (the old one damaged and set aside, or deleted): the channels and
            // manual pins kept beside it come back before anything reads it ([`kept`]).
            store.restore_kept()?;
        }
        Ok(store)
    }

    /// Said by the start-up pass once it has ended (whether or not it succeeded): a new index
    /// now holds the entries of the manifests on disk.
    pub fn start_up_pass_done(&self) {
        *self.filled.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.filled.1.notify_all();
    }

    /// Waits until the index holds what the data dir holds: at once unless the index was created
    /// by this open, then until [`Store::start_up_pass_done`]. Work that judges files by the index
    /// (the check of the compressed variants, which deletes the files it cannot place) must not
    /// run on a new index still empty. Returns false if `stop` was set first.
    pub fn wait_until_filled(&self, stop: &std::sync::atomic::AtomicBool) -> bool {
        let mut filled = self.filled.0.lock().unwrap_or_else(PoisonError::into_inner);
        while !*filled {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return false;
            }
            filled = self
                .filled
                .1
                .wait_timeout(filled, std::time::Duration::from_millis(100))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// The index as it is now. The lock is held only to clone the `Arc`: a caller must not hold
    /// the returned handle while it calls back into the store, nor for long (a reopen waits for
    /// every handle to be let go).
    pub(super) fn ix(&self) -> Result<Arc<Index>, StoreError> {
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(Arc::clone)
            .ok_or(StoreError::Closed)
    }

    /// Takes the write lock (see the field).
    pub(super) fn locked(&self) -> Result<handles::WriteGuard<'_>, StoreError> {
        let lock = self
            .write_lock
            .lock()
            .map_err(|_| StoreError::Corrupt("write lock poisoned".into()))?;
        Ok(handles::WriteGuard::new(lock, &self.handles))
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// `blobs/sha256/ab/<hex>`
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join("blobs/sha256").join(&hex[..2]).join(hex)
    }

    /// `manifests/ab/<key hex>.json`
    pub fn manifest_path(&self, key: &CacheKey) -> PathBuf {
        let hex = key.to_hex();
        self.root
            .join("manifests")
            .join(&hex[..2])
            .join(format!("{hex}.json"))
    }

    /// The entry for `key`, if any.
    pub fn lookup(&self, key: &CacheKey) -> Result<Option<EntryRecord>, StoreError> {
        match self.ix()?.entries.get(key.0)? {
            Some(bytes) => Ok(Some(EntryRecord::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The blob record for `digest`, if any entry uses it.
    pub fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>, StoreError> {
        match self.ix()?.blobs.get(digest)? {
            Some(bytes) => Ok(Some(BlobRecord::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Opens a blob for reading, checking that it is a regular file (opened without following a
    /// symlink) of the size the index says, and returns it with its mtime (when it was stored).
    /// `None` when the entry cannot be served: the caller builds it again. A blob that is a
    /// symlink, not a regular file, or of the wrong size is damaged: it is quarantined on the spot
    /// and its entries removed (docs/storage.md, "Integrity at rest").
    pub fn open_blob(&self, digest: &Digest, size: u64) -> Option<(Arc<File>, SystemTime)> {
        if let Some(kept) = self.handles.get(digest, size) {
            return Some(kept);
        }
        let generation = self.handles.generation();
        let path = self.blob_path(digest);
        let condemn = |held: Option<&File>, why: &str| {
            if let Err(e) = self.condemn(digest, held, why) {
                log::error!("cannot quarantine the blob {digest}: {e}");
            }
        };
        let file = match scrub::open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                condemn(None, "is a symbolic link");
                return None;
            }
            Err(e) => {
                log::error!("blob {} cannot be opened: {e}", digest.to_hex());
                return None;
            }
        };
        match file.metadata() {
            Ok(m) if !m.is_file() => {
                condemn(Some(&file), "is not a regular file");
                None
            }
            Ok(m) if m.len() == size => {
                let modified = m.modified().unwrap_or_else(|_| SystemTime::now());
                let file = Arc::new(file);
                self.handles
                    .keep(*digest, &file, size, modified, generation);
                Some((file, modified))
            }
            Ok(m) => {
                let why = format!("has {} bytes where the index says {size}", m.len());
                condemn(Some(&file), &why);
                None
            }
            Err(e) => {
                log::error!("blob {} cannot be read: {e}", digest.to_hex());
                None
            }
        }
    }

    pub fn totals(&self) -> Result<Totals, StoreError> {
        let ix = self.ix()?;
        let read = |k: &[u8]| -> Result<u64, StoreError> {
            Ok(ix.counters.get(k)?.map(|v| be_u64(&v)).unwrap_or(0))
        };
        Ok(Totals {
            entries: read(COUNTER_ENTRIES)?,
            bytes: read(COUNTER_BYTES)?,
        })
    }

    /// Readiness: sled takes a durable write and the data dir takes a file.
    pub fn check_ready(&self) -> Result<(), String> {
        self.probe_index().map_err(|e| {
            log::error!("readiness: sled refused a write: {e}");
            "the metadata database does not take writes".to_string()
        })?;
        let probe = self
            .tmp_dir()
            .join(format!("ready-{}", uuid::Uuid::new_v4()));
        fs::write(&probe, b"ok")
            .and_then(|_| fs::remove_file(&probe))
            .map_err(|e| {
                log::error!("readiness: the data dir refused a file: {e}");
                "the data dir is not writable".to_string()
            })
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        let flushed = self.ix()?.db.flush();
        self.noted(flushed)?;
        Ok(())
    }
}

/// Opens the index in `<root>/meta` with every check of a start: a damaged one is set aside and
/// a new one started, for the reconciliation to re-index the manifests.
/// Also says whether the index was created by this open (none there, or the damaged one set
/// aside).
fn open_meta(root: &Path) -> Result<(sled::Db, bool), StoreError> {
    let meta = root.join("meta");
    let existed = meta.exists();
    match open_index_waiting(&meta) {
        Ok(db) => Ok((db, !existed)),
        Err(e) if !is_damage(&e) => Err(e),
        Err(e) => {
            // The cache survives its index: set the damaged one aside, start a new one, and
            // let the background pass re-index the manifests.
            let aside = root.join(format!("meta.corrupt-{}", crate::util::now_ms()));
            log::error!(
                "the index in {} cannot be opened ({e}); moving it to {} and rebuilding from the manifests",
                meta.display(),
                aside.display()
            );
            if meta.exists() {
                fs::rename(&meta, &aside).map_err(dir_err(root))?;
            }
            Ok((open_index(&meta)?, true))
        }
    }
}

const TREES: [&str; 7] = [
    "entries",
    "blobs",
    "lru",
    "lfu",
    "fifo",
    "counters",
    "tombstones",
];

/// Opens sled and reads the first item of every tree, so that a damaged index is found now and
/// not on the first request. sled may panic on damaged files: that counts as an error.
fn open_index(path: &Path) -> Result<sled::Db, StoreError> {
    let path = path.to_path_buf();
    let opened = std::panic::catch_unwind(move || -> Result<sled::Db, StoreError> {
        let db = sled::Config::new().path(path).open()?;
        for name in TREES {
            let tree = db.open_tree(name)?;
            tree.first()?;
            tree.last()?;
        }
        let counters = db.open_tree("counters")?;
        for name in [COUNTER_ENTRIES, COUNTER_BYTES] {
            if let Some(v) = counters.get(name)? {
                if v.len() != 8 {
                    return Err(StoreError::Corrupt("a counter has the wrong length".into()));
                }
            }
        }
        Ok(db)
    });
    match opened {
        Ok(result) => result,
        Err(_) => Err(StoreError::Corrupt("sled panicked while opening".into())),
    }
}

/// sled's own lock on its files can outlive a `Db` dropped a moment ago in this process (its
/// flusher thread lets go last): wait for it a little rather than mistake it for damage.
fn open_index_waiting(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match open_index(path) {
            Err(StoreError::Sled(sled::Error::Io(e)))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Whether an open failure means the files are damaged (set them aside and rebuild) rather than
/// something an operator must fix (permissions, a full disk, a lock), where the index is kept.
fn is_damage(e: &StoreError) -> bool {
    match e {
        StoreError::Corrupt(_) | StoreError::Record(_) => true,
        StoreError::Sled(sled::Error::Corruption { .. })
        | StoreError::Sled(sled::Error::ReportableBug(_))
        | StoreError::Sled(sled::Error::Unsupported(_)) => true,
        StoreError::Sled(sled::Error::Io(io)) => matches!(
            io.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
        ),
        _ => false,
    }
}
