//! Ingest (docs/storage.md): copy the file Velox wrote into `tmp/` while hashing it, check its size,
//! fsync, rename it to its digest path (replacing whatever is there), fsync the folder; write the
//! manifest the same way; then commit the entry to sled and flush before anyone is told it exists.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{EntryRecord, Store, StoreError};
use crate::ids::{CacheKey, Digest};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the artifact is empty")]
    Empty,
    #[error("the artifact changed size while it was copied ({expected} bytes, then {copied})")]
    SizeChanged { expected: u64, copied: u64 },
    #[error("i/o while storing the artifact: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The filesystem had no room (`ENOSPC`, `EDQUOT`); see [`IngestError::classified`].
    #[error("no space left to store the artifact: {0}")]
    NoSpace(#[source] io::Error),
}

impl IngestError {
    /// The same error, as [`IngestError::NoSpace`] when its cause is a full filesystem (in a
    /// file write, a rename or sled's own log), so that the caller can tell it from the rest.
    pub fn classified(self) -> IngestError {
        fn full(e: &io::Error) -> bool {
            matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
                || e.kind() == io::ErrorKind::StorageFull
        }
        match self {
            IngestError::Io(e) if full(&e) => IngestError::NoSpace(e),
            IngestError::Store(StoreError::Io(e)) if full(&e) => IngestError::NoSpace(e),
            IngestError::Store(StoreError::Sled(sled::Error::Io(e))) if full(&e) => {
                IngestError::NoSpace(e)
            }
            IngestError::Store(StoreError::DataDir { source, .. }) if full(&source) => {
                IngestError::NoSpace(source)
            }
            other => other,
        }
    }
}

/// The manifest layout this build writes and reads. A manifest of another version is left alone
/// (never deleted, never indexed), so a downgrade cannot destroy a newer version's records.
pub const MANIFEST_VERSION: u32 = 1;

/// The immutable record beside each entry, from which the index can be rebuilt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`] when written by this build.
    pub version: u32,
    pub key: String,
    pub digest: String,
    pub size: u64,
    pub created_ms: u64,
    pub build_ms: u64,
    pub file_name: String,
    /// What was built, as the build layer describes it; the store does not look inside.
    pub request: serde_json::Value,
}

/// A file in `tmp/` that is deleted unless it was moved into place.
pub(super) struct TempFile {
    pub(super) path: PathBuf,
    pub(super) keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` (and its parents), syncing the parent of each folder it creates.
pub(super) fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        ensure_dir(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Renames `tmp` to `dest` and syncs the destination folder.
pub(super) fn place(tmp: &mut TempFile, dest: &Path) -> io::Result<()> {
    let dir = dest
        .parent()
        .ok_or_else(|| io::Error::other("destination has no folder"))?;
    ensure_dir(dir)?;
    fs::rename(&tmp.path, dest)?;
    tmp.keep = true;
    sync_dir(dir)
}

impl Store {
    pub(super) fn temp_file(&self, suffix: &str) -> io::Result<(TempFile, File)> {
        let path = self
            .tmp_dir()
            .join(format!("{}.{suffix}", uuid::Uuid::new_v4().simple()));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((TempFile { path, keep: false }, file))
    }

    /// Stores the artifact read from `src` as the entry for `key`, downloaded as `file_name`, with
    /// `request` (opaque to the store) kept in its manifest. Blocks: run it on the blocking pool.
    /// Returns the committed entry.
    pub fn ingest(
        &self,
        mut src: File,
        key: &CacheKey,
        file_name: &str,
        request: serde_json::Value,
        build_ms: u64,
    ) -> Result<EntryRecord, IngestError> {
        let expected = src.metadata()?.len();
        if expected == 0 {
            return Err(IngestError::Empty);
        }
        let (mut tmp, mut out) = self.temp_file("blob")?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1024 * 1024];
        let mut copied: u64 = 0;
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            copied += n as u64;
            if copied > expected {
                break;
            }
        }
        if copied != expected {
            return Err(IngestError::SizeChanged { expected, copied });
        }
        out.sync_all()?;
        drop(out);
        let digest = Digest(hasher.finalize().into());
        let now = crate::util::now_ms();
        let entry = EntryRecord {
            digest,
            size: copied,
            created_ms: now,
            last_access_ms: now,
            access_count: 0,
            build_ms,
            file_name: file_name.to_owned(),
        };
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            key: key.to_hex(),
            digest: digest.to_hex(),
            size: copied,
            created_ms: now,
            build_ms,
            file_name: entry.file_name.clone(),
            request,
        };
        let manifest_bytes =
            serde_json::to_vec_pretty(&manifest).map_err(|e| io::Error::other(e.to_string()))?;

        let _guard = self.locked()?;
        let blob_path = self.blob_path(&digest);
        // Whatever sits at the digest path is never trusted: it may be damaged, and keeping it
        // would hand its damage to this entry and every later one with the same bytes. The copy
        // just hashed replaces it in one rename (which replaces a symlink itself, never its
        // target); only a folder there has to be moved aside first.
        if fs::symlink_metadata(&blob_path).is_ok_and(|m| m.is_dir()) {
            self.set_aside(&blob_path, &digest.to_hex())?;
        }
        place(&mut tmp, &blob_path)?;
        let (mut mtmp, mut mfile) = self.temp_file("json")?;
        mfile.write_all(&manifest_bytes)?;
        mfile.sync_all()?;
        drop(mfile);
        place(&mut mtmp, &self.manifest_path(key))?;

        if let Some(orphan) = self.commit_entry(key, &entry, now, true)? {
            // Through the one place blob files go, so that its signature and variants go too.
            self.remove_blob_file(&orphan);
        }
        self.want_variants(&digest);
        Ok(entry)
    }
}
