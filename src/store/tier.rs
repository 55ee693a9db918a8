//! The data dir as a tier in front of a bucket (docs/object-storage.md): an artifact is staged
//! (copied into `tmp/`, hashed, synced) before it goes to the bucket, and adopted (moved into
//! place, indexed) only once the bucket holds it; a blob fetched from the bucket is adopted the
//! same way, with the entry's creation time taken from its manifest so that every replica reports
//! the same age and `Last-Modified`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

use super::ingest::{place, TempFile, MANIFEST_VERSION};
use super::{EntryRecord, IngestError, Manifest, Store};
use crate::ids::{CacheKey, Digest};

/// A blob in `tmp/`, whole and synced, hashing to `digest`; deleted when dropped unless adopted.
pub struct Staged {
    tmp: TempFile,
    pub digest: Digest,
    pub size: u64,
}

impl Staged {
    pub fn path(&self) -> &Path {
        &self.tmp.path
    }
}

/// A file being written into `tmp/` (by a download), hashed as it grows.
pub struct Staging {
    tmp: TempFile,
    file: File,
    hasher: Sha256,
    size: u64,
}

impl Staging {
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        self.file.write_all(bytes)
    }

    /// Syncs the file and names it by its hash.
    pub fn finish(self) -> io::Result<Staged> {
        self.file.sync_all()?;
        Ok(Staged {
            tmp: self.tmp,
            digest: Digest(self.hasher.finalize().into()),
            size: self.size,
        })
    }
}

impl Manifest {
    /// A manifest for a blob just built here.
    pub fn new(
        key: &CacheKey,
        staged: &Staged,
        file_name: &str,
        request: serde_json::Value,
        build_ms: u64,
    ) -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            key: key.to_hex(),
            digest: staged.digest.to_hex(),
            size: staged.size,
            created_ms: crate::util::now_ms(),
            build_ms,
            file_name: file_name.to_owned(),
            request,
        }
    }

    /// The key, digest and size this manifest names, checked.
    pub fn names(&self) -> Result<(CacheKey, Digest, u64), String> {
        if self.version != MANIFEST_VERSION {
            return Err(format!("manifest version {}", self.version));
        }
        let key = CacheKey::from_hex(&self.key).ok_or("the manifest's key is not a key")?;
        let digest = Digest::from_hex(&self.digest).ok_or("the manifest's digest is not one")?;
        if self.size == 0 {
            return Err("the manifest names an empty blob".into());
        }
        Ok((key, digest, self.size))
    }

    /// When the entry was created, as a time.
    pub fn created(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.created_ms)
    }

    /// The entry record this manifest describes, as a fresh local entry would have it.
    pub fn entry(&self) -> Result<EntryRecord, String> {
        let (_, digest, size) = self.names()?;
        Ok(EntryRecord {
            digest,
            size,
            created_ms: self.created_ms,
            last_access_ms: crate::util::now_ms(),
            access_count: 0,
            build_ms: self.build_ms,
            file_name: self.file_name.clone(),
        })
    }
}

impl Store {
    /// Copies `src` into `tmp/` while hashing it, checks its size and syncs it. Blocks.
    pub fn stage(&self, mut src: File) -> Result<Staged, IngestError> {
        let expected = src.metadata()?.len();
        if expected == 0 {
            return Err(IngestError::Empty);
        }
        let mut out = self.staging()?;
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            out.write(&buf[..n])?;
            if out.size > expected {
                break;
            }
        }
        if out.size != expected {
            return Err(IngestError::SizeChanged {
                expected,
                copied: out.size,
            });
        }
        Ok(out.finish()?)
    }

    /// A new file in `tmp/` to write a blob into.
    pub fn staging(&self) -> io::Result<Staging> {
        let (tmp, file) = self.temp_file("stage")?;
        Ok(Staging {
            tmp,
            file,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Moves `staged` into place as the blob of the entry `manifest` describes, writes the
    /// manifest beside it, and commits the entry to the index (flushed). The manifest must name
    /// the staged bytes. Blocks.
    pub fn adopt(
        &self,
        mut staged: Staged,
        manifest: &Manifest,
    ) -> Result<EntryRecord, IngestError> {
        let (key, digest, size) = manifest
            .names()
            .map_err(|why| io::Error::other(format!("refusing a manifest: {why}")))?;
        if digest != staged.digest || size != staged.size {
            return Err(io::Error::other(format!(
                "the manifest names {} ({} bytes), the staged blob is {} ({} bytes)",
                manifest.digest,
                size,
                staged.digest.to_hex(),
                staged.size
            ))
            .into());
        }
        let entry = manifest.entry().map_err(io::Error::other)?;
        let bytes =
            serde_json::to_vec_pretty(manifest).map_err(|e| io::Error::other(e.to_string()))?;
        // Every replica reports the same `Last-Modified` for the blob: the entry's creation.
        File::open(staged.path())?.set_modified(manifest.created())?;

        let _guard = self.locked()?;
        // A file already at the digest path is not trusted (docs/storage.md): replaced.
        place(&mut staged.tmp, &self.blob_path(&digest))?;
        let (mut mtmp, mut mfile) = self.temp_file("json")?;
        mfile.write_all(&bytes)?;
        mfile.sync_all()?;
        drop(mfile);
        place(&mut mtmp, &self.manifest_path(&key))?;
        if let Some(orphan) = self.commit_entry(&key, &entry, crate::util::now_ms(), true)? {
            self.remove_blob_file(&orphan);
        }
        self.want_variants(&digest);
        Ok(entry)
    }
}
