//! The cache store (SPEC §10): binaries as content-addressed blob files, one immutable manifest per
//! entry, and every piece of metadata in sled.
//!
//! ```text
//! <data_dir>/meta/                          sled: entries, blobs, lru, lfu, fifo, counters
//! <data_dir>/blobs/sha256/ab/<64 hex>       one file per distinct binary
//! <data_dir>/manifests/ab/<64 hex key>.json one record per entry
//! <data_dir>/tmp/                           files being ingested
//! ```
//!
//! Every call here blocks on disk or sled: callers run them on the blocking pool, except the
//! lookups on the hit path, which are a single in-memory sled read.

mod ingest;
pub mod record;

use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

pub use ingest::{IngestError, Manifest};
pub use record::{BlobRecord, EntryRecord, RecordError};

use crate::build::CacheKey;

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
    #[error("stored record: {0}")]
    Record(#[from] RecordError),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
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

const COUNTER_ENTRIES: &[u8] = b"entries";
const COUNTER_BYTES: &[u8] = b"bytes";

pub struct Store {
    root: PathBuf,
    db: sled::Db,
    entries: sled::Tree,
    blobs: sled::Tree,
    lru: sled::Tree,
    lfu: sled::Tree,
    fifo: sled::Tree,
    counters: sled::Tree,
    /// Serialises the steps that place or remove blob files together with their index updates,
    /// so that a blob is never deleted between being placed and being referenced.
    write_lock: Mutex<()>,
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
        let db = sled::Config::new().path(root.join("meta")).open()?;
        Ok(Store {
            root: root.to_path_buf(),
            entries: db.open_tree("entries")?,
            blobs: db.open_tree("blobs")?,
            lru: db.open_tree("lru")?,
            lfu: db.open_tree("lfu")?,
            fifo: db.open_tree("fifo")?,
            counters: db.open_tree("counters")?,
            db,
            write_lock: Mutex::new(()),
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// `blobs/sha256/ab/<hex>`
    pub fn blob_path(&self, digest: &[u8; 32]) -> PathBuf {
        let hex = hex::encode(digest);
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
        match self.entries.get(key.0)? {
            Some(bytes) => Ok(Some(EntryRecord::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The blob record for `digest`, if any entry uses it.
    pub fn blob(&self, digest: &[u8; 32]) -> Result<Option<BlobRecord>, StoreError> {
        match self.blobs.get(digest)? {
            Some(bytes) => Ok(Some(BlobRecord::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Opens a blob for reading, checking that the file has the size the index says, and returns
    /// it with its mtime (when it was stored). A missing or short file is reported as `None`: the
    /// entry cannot be served.
    pub fn open_blob(&self, digest: &[u8; 32], size: u64) -> Option<(File, SystemTime)> {
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                log::error!("blob {} cannot be opened: {e}", hex::encode(digest));
                return None;
            }
        };
        match file.metadata() {
            Ok(m) if m.is_file() && m.len() == size => {
                let modified = m.modified().unwrap_or_else(|_| SystemTime::now());
                Some((file, modified))
            }
            Ok(m) => {
                log::error!(
                    "blob {} has {} bytes, the index says {size}",
                    hex::encode(digest),
                    m.len()
                );
                None
            }
            Err(e) => {
                log::error!("blob {} cannot be read: {e}", hex::encode(digest));
                None
            }
        }
    }

    pub fn totals(&self) -> Result<Totals, StoreError> {
        let read = |k: &[u8]| -> Result<u64, StoreError> {
            Ok(self.counters.get(k)?.map(|v| be_u64(&v)).unwrap_or(0))
        };
        Ok(Totals {
            entries: read(COUNTER_ENTRIES)?,
            bytes: read(COUNTER_BYTES)?,
        })
    }

    /// Inserts (or replaces) the entry for `key` pointing at the blob `digest`, in one sled
    /// transaction over the entry, the blob references, the eviction trees and the counters, then
    /// flushes. Returns the digest of a blob that no entry uses any more, if the replaced entry
    /// left one; the caller deletes its file.
    fn commit_entry(
        &self,
        key: &CacheKey,
        entry: &EntryRecord,
        stored_ms: u64,
    ) -> Result<Option<[u8; 32]>, StoreError> {
        let entry_bytes = entry.encode()?;
        let trees = (
            &self.entries,
            &self.blobs,
            &self.lru,
            &self.lfu,
            &self.fifo,
            &self.counters,
        );
        let orphan = trees.transaction(|(en, bl, lru, lfu, fifo, ct)| {
            let abort = |e: RecordError| ConflictableTransactionError::Abort(StoreError::from(e));
            let counter =
                |name: &[u8]| -> Result<u64, sled::transaction::UnabortableTransactionError> {
                    Ok(ct.get(name)?.map(|v| be_u64(&v)).unwrap_or(0))
                };
            let mut entries = counter(COUNTER_ENTRIES)?;
            let mut bytes = counter(COUNTER_BYTES)?;
            let mut orphan = None;

            if let Some(old) = en.insert(&key.0, entry_bytes.as_slice())? {
                let old = EntryRecord::decode(&old).map_err(abort)?;
                lru.remove(lru_key(&old, key))?;
                lfu.remove(lfu_key(&old, key))?;
                fifo.remove(fifo_key(&old, key))?;
                if let Some(b) = bl.get(old.digest)? {
                    let mut b = BlobRecord::decode(&b).map_err(abort)?;
                    b.refs = b.refs.saturating_sub(1);
                    if b.refs == 0 && old.digest != entry.digest {
                        bl.remove(&old.digest)?;
                        bytes = bytes.saturating_sub(b.size);
                        orphan = Some(old.digest);
                    } else {
                        bl.insert(&old.digest, b.encode().map_err(abort)?)?;
                    }
                }
            } else {
                entries += 1;
            }

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
            bl.insert(&entry.digest, blob.encode().map_err(abort)?)?;
            lru.insert(lru_key(entry, key), &[])?;
            lfu.insert(lfu_key(entry, key), &[])?;
            fifo.insert(fifo_key(entry, key), &[])?;
            ct.insert(COUNTER_ENTRIES, &entries.to_be_bytes())?;
            ct.insert(COUNTER_BYTES, &bytes.to_be_bytes())?;
            Ok(orphan)
        })?;
        self.db.flush()?;
        Ok(orphan)
    }

    /// Readiness: sled takes a durable write and the data dir takes a file.
    pub fn check_ready(&self) -> Result<(), String> {
        self.counters
            .insert(b"ready_probe", &crate::util::now_ms().to_be_bytes())
            .and_then(|_| self.db.flush())
            .map_err(|e| {
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
        self.db.flush()?;
        Ok(())
    }
}

fn be_u64(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = v.len().min(8);
    b[..n].copy_from_slice(&v[..n]);
    u64::from_be_bytes(b)
}

/// LRU order: last access, then key. The first item is the next victim.
fn lru_key(e: &EntryRecord, key: &CacheKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(40);
    k.extend(e.last_access_ms.to_be_bytes());
    k.extend(key.0);
    k
}

/// LFU order: access count, then last access, then key.
fn lfu_key(e: &EntryRecord, key: &CacheKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(48);
    k.extend(e.access_count.to_be_bytes());
    k.extend(e.last_access_ms.to_be_bytes());
    k.extend(key.0);
    k
}

/// FIFO order: creation, then key.
fn fifo_key(e: &EntryRecord, key: &CacheKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(40);
    k.extend(e.created_ms.to_be_bytes());
    k.extend(key.0);
    k
}
