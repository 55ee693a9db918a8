//! Recovery and checking (docs/storage.md): the background pass that reconciles the index with the
//! files after a start (or a crash), the rebuild of the index from the manifests, and `verify`,
//! which re-hashes every blob and cross-checks every tree.
//!
//! Neither follows a symbolic link inside the data dir: the folders are walked with what
//! `readdir` and `lstat` say, files are opened with `O_NOFOLLOW`, and a link (or anything but a
//! regular file) where a fan-out folder, a blob or a manifest belongs is moved to `quarantine/`
//! by the pass and reported by `verify`. The pass streams: it holds one page of entries or one
//! folder entry at a time, never a list of the whole cache.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::index::{key_of, tombstone_names};
use super::ingest::MANIFEST_VERSION;
use super::scrub::open_nofollow;
use super::{EntryRecord, Manifest, Store, StoreError};
use crate::ids::{CacheKey, Digest};

/// Entries (or tombstones) read from the index at a time by the pass.
const PAGE: usize = 1024;

/// What a reconciliation changed.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// Entries whose blob was missing or had the wrong size.
    pub dropped_entries: usize,
    /// Entries re-created from their manifest.
    pub reindexed: usize,
    /// Blob files no entry referred to.
    pub orphan_blobs: usize,
    /// Manifests with neither an entry nor a blob.
    pub orphan_manifests: usize,
    /// Manifests of removed entries, named by their tombstone (a crash came between the removal
    /// and the manifest's deletion): deleted, never indexed again.
    pub tombstoned: usize,
    /// Symbolic links, and anything but a regular file, where a fan-out folder, a blob or a
    /// manifest belongs: moved to `quarantine/` without being followed.
    pub not_followed: usize,
}

/// What `verify` found wrong; empty when all is well.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<String>);

/// What a walk of a sharded folder meets, as `readdir` reports it: nothing is followed.
pub(super) enum Item {
    /// A regular file in a fan-out folder.
    File(PathBuf),
    /// A symbolic link (to a fan-out folder or a file), or anything but a regular file inside a
    /// fan-out folder: never followed, never opened.
    Odd(PathBuf, &'static str),
}

/// Why a sharded folder was not walked: it, or a folder above it inside the data dir, is a
/// symbolic link.
pub(super) struct Linked(PathBuf);

impl Linked {
    pub(super) fn describe(&self) -> String {
        format!(
            "{} is a symbolic link; not followed (put the whole data dir where it should be instead)",
            self.0.display()
        )
    }
}

/// Checks that no folder from `root` down to `root/rel` is a symbolic link; `Ok(None)` when the
/// folder does not exist.
fn sharded_root(root: &Path, rel: &str) -> Result<Option<PathBuf>, Linked> {
    let mut dir = root.to_path_buf();
    for part in rel.split('/') {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => return Err(Linked(dir)),
            Ok(m) if m.is_dir() => {}
            _ => return Ok(None),
        }
    }
    Ok(Some(dir))
}

/// Walks the fan-out folders of `root/rel` (`ab/<name>`) without following any symbolic link,
/// giving each item to `f` as it is read: nothing is collected, so a million files cost no
/// memory. Items other than folders and links beside the fan-out folders are ignored.
pub(super) fn walk_sharded(
    root: &Path,
    rel: &str,
    f: &mut dyn FnMut(Item) -> Result<(), StoreError>,
) -> Result<Result<(), Linked>, StoreError> {
    let dir = match sharded_root(root, rel) {
        Ok(Some(d)) => d,
        Ok(None) => return Ok(Ok(())),
        Err(linked) => return Ok(Err(linked)),
    };
    for shard in fs::read_dir(&dir)? {
        let shard = shard?;
        let kind = shard.file_type()?;
        if kind.is_symlink() {
            f(Item::Odd(shard.path(), "is a symbolic link"))?;
            continue;
        }
        if !kind.is_dir() {
            continue;
        }
        let items = match fs::read_dir(shard.path()) {
            Ok(items) => items,
            // Removed (or set aside) since it was listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        for item in items {
            let item = item?;
            let kind = item.file_type()?;
            f(if kind.is_file() {
                Item::File(item.path())
            } else if kind.is_symlink() {
                Item::Odd(item.path(), "is a symbolic link")
            } else {
                Item::Odd(item.path(), "is not a regular file")
            })?;
        }
    }
    Ok(Ok(()))
}

/// The size of the regular file at `path`; `None` when it is missing or is anything else (a
/// symbolic link is not followed).
pub(super) fn file_size(path: &Path) -> Option<u64> {
    fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

/// Why what is at `path` cannot be a blob or a manifest without being followed: a link, a FIFO,
/// a folder. `None` when it is a regular file or nothing.
pub(super) fn odd_file(path: &Path) -> Option<&'static str> {
    let m = fs::symlink_metadata(path).ok()?;
    if m.file_type().is_symlink() {
        Some("is a symbolic link")
    } else if !m.is_file() {
        Some("is not a regular file")
    } else {
        None
    }
}

pub(super) fn sha256_file(path: &Path) -> io::Result<Digest> {
    let mut f = open_nofollow(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Digest(h.finalize().into()))
}

/// What a manifest file holds, as far as this build can tell.
enum ManifestFile {
    Readable(Box<Manifest>),
    /// Another version's layout: left alone.
    OtherVersion(u32),
    Unreadable,
}

/// Reads the manifest at `path`: a regular file, opened without following a link and without
/// blocking on a FIFO.
fn read_manifest_bytes(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = open_nofollow(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn read_manifest_file(path: &Path) -> ManifestFile {
    let Ok(bytes) = read_manifest_bytes(path) else {
        return ManifestFile::Unreadable;
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return ManifestFile::Unreadable;
    };
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(MANIFEST_VERSION) => {}
        Some(v) => return ManifestFile::OtherVersion(v.try_into().unwrap_or(u32::MAX)),
        None => return ManifestFile::Unreadable,
    }
    match serde_json::from_value(value) {
        Ok(m) => ManifestFile::Readable(Box::new(m)),
        Err(_) => ManifestFile::Unreadable,
    }
}

pub(super) fn read_manifest(path: &Path) -> Option<Manifest> {
    match read_manifest_file(path) {
        ManifestFile::Readable(m) => Some(*m),
        _ => None,
    }
}

fn manifest_entry(m: &Manifest) -> Option<(CacheKey, EntryRecord)> {
    let key = CacheKey::from_hex(&m.key)?;
    let digest = Digest::from_hex(&m.digest)?;
    Some((
        key,
        EntryRecord {
            digest,
            size: m.size,
            created_ms: m.created_ms,
            last_access_ms: m.created_ms,
            access_count: 0,
            build_ms: m.build_ms,
            file_name: m.file_name.clone(),
        },
    ))
}

impl Store {
    /// The manifest of `key`, when it is readable and of this build's version.
    pub fn manifest(&self, key: &CacheKey) -> Option<Manifest> {
        read_manifest(&self.manifest_path(key))
    }

    /// Reconciles the index with the files: drops entries whose blob is missing or short,
    /// re-indexes manifests whose entry is missing but whose blob is whole, deletes blobs and
    /// manifests nothing refers to and manifests their tombstone names, and moves to
    /// `quarantine/` the symbolic links found where blobs, manifests and fan-out folders belong.
    /// Safe while the server runs: each change is made under the store's write lock, against the
    /// index as it is then. Streams: memory does not grow with the number of entries.
    pub fn reconcile(&self) -> Result<ReconcileReport, StoreError> {
        let mut report = ReconcileReport::default();
        // Linked fan-out folders first: the checks of the entries' blobs below look at the last
        // part of each path only.
        for rel in ["blobs/sha256", "manifests"] {
            self.set_aside_linked_shards(rel, &mut report)?;
        }
        self.drop_unbacked_entries(&mut report)?;
        let walked = walk_sharded(&self.root, "manifests", &mut |item| {
            self.reconcile_manifest(item, &mut report)
        })?;
        if let Err(linked) = walked {
            log::error!("the manifests are not reconciled: {}", linked.describe());
        }
        self.flush()?;
        self.clear_spent_tombstones()?;
        let walked = walk_sharded(&self.root, "blobs/sha256", &mut |item| {
            self.reconcile_blob(item, &mut report)
        })?;
        if let Err(linked) = walked {
            log::error!("orphan blobs are not looked for: {}", linked.describe());
        }
        Ok(report)
    }

    /// Moves a fan-out folder of `rel` that is a symbolic link to `quarantine/`.
    fn set_aside_linked_shards(
        &self,
        rel: &str,
        report: &mut ReconcileReport,
    ) -> Result<(), StoreError> {
        let Ok(Some(dir)) = sharded_root(&self.root, rel) else {
            return Ok(());
        };
        for shard in fs::read_dir(&dir)? {
            let shard = shard?;
            if shard.file_type()?.is_symlink() {
                self.set_aside_odd(&shard.path(), "is a symbolic link", report)?;
            }
        }
        Ok(())
    }

    /// Moves `path` (never followed) to `quarantine/`, under the write lock.
    fn set_aside_odd(
        &self,
        path: &Path,
        why: &str,
        report: &mut ReconcileReport,
    ) -> Result<(), StoreError> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("odd");
        let _guard = self.locked()?;
        let aside = self.set_aside(path, name)?;
        log::error!(
            "{} {why}: not followed; moved to {}",
            path.display(),
            aside.display()
        );
        report.not_followed += 1;
        Ok(())
    }

    /// Drops the entries whose blob is not whole, a page of entries at a time. A blob that is a
    /// symbolic link or not a regular file is quarantined with its entries, as the scrub does.
    fn drop_unbacked_entries(&self, report: &mut ReconcileReport) -> Result<(), StoreError> {
        let mut after: Option<CacheKey> = None;
        loop {
            let page = self.list(after.as_ref(), PAGE)?;
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            after = Some(*last);
            for (key, entry) in page {
                let path = self.blob_path(&entry.digest);
                if file_size(&path) == Some(entry.size) {
                    continue;
                }
                if let Some(why) = odd_file(&path) {
                    let removed = self.condemn(&entry.digest, None, why)?;
                    report.not_followed += 1;
                    report.dropped_entries += removed;
                    continue;
                }
                let _guard = self.locked()?;
                let now = self.lookup(&key)?;
                if now.as_ref().is_some_and(|e| e.digest == entry.digest)
                    && file_size(&path) != Some(entry.size)
                {
                    log::warn!("dropping entry {key}: its blob is missing or has the wrong size");
                    self.remove_locked(&key)?;
                    report.dropped_entries += 1;
                }
            }
        }
    }

    /// One item of `manifests/`: re-index what the index lacks, delete what has nothing left
    /// or what a tombstone names.
    fn reconcile_manifest(
        &self,
        item: Item,
        report: &mut ReconcileReport,
    ) -> Result<(), StoreError> {
        let path = match item {
            Item::File(path) => path,
            Item::Odd(path, why) => return self.set_aside_odd(&path, why, report),
        };
        let parsed = match read_manifest_file(&path) {
            ManifestFile::OtherVersion(v) => {
                log::warn!(
                    "leaving the manifest {} alone: its layout is version {v}, this build reads {MANIFEST_VERSION}",
                    path.display()
                );
                return Ok(());
            }
            ManifestFile::Readable(m) => manifest_entry(&m).map(|e| (m, e)),
            ManifestFile::Unreadable => None,
        };
        let Some((manifest, (key, entry))) = parsed else {
            let _guard = self.locked()?;
            // A link or FIFO put there since the folder was read is set aside, never deleted.
            if let Some(why) = odd_file(&path) {
                drop(_guard);
                return self.set_aside_odd(&path, why, report);
            }
            log::warn!("deleting the unreadable manifest {}", path.display());
            fs::remove_file(&path)?;
            report.orphan_manifests += 1;
            return Ok(());
        };
        if path != self.manifest_path(&key) {
            log::warn!(
                "manifest {} is not where its key says; leaving it",
                path.display()
            );
            return Ok(());
        }
        // Indexed already: the common case, checked without the write lock (taking it empties
        // the kept blob handles, and hits would open files again for the whole pass).
        if self.lookup(&key)?.is_some_and(|e| e.digest == entry.digest) {
            return Ok(());
        }
        let _guard = self.locked()?;
        let current = self.lookup(&key)?;
        if current.as_ref().is_some_and(|e| e.digest == entry.digest) {
            return Ok(());
        }
        let tombstone = self.ix()?.tombstones.get(key.0)?;
        if current.is_none()
            && tombstone.is_some_and(|t| tombstone_names(&t, &entry.digest, manifest.created_ms))
        {
            log::info!("deleting the manifest of {key}: the entry was removed before a crash");
            fs::remove_file(&path)?;
            self.clear_tombstone(&key)?;
            report.tombstoned += 1;
            return Ok(());
        }
        if file_size(&self.blob_path(&entry.digest)) == Some(manifest.size) {
            log::info!("re-indexing {key} from its manifest");
            if let Some(orphan) = self.commit_entry(&key, &entry, manifest.created_ms, false)? {
                self.remove_blob_file(&orphan);
            }
            report.reindexed += 1;
        } else if current.is_none() {
            fs::remove_file(&path)?;
            report.orphan_manifests += 1;
        }
        Ok(())
    }

    /// Clears the tombstones whose manifest is gone (deleted after the removal, or just now),
    /// a page at a time.
    fn clear_spent_tombstones(&self) -> Result<(), StoreError> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page: Vec<CacheKey> = {
                let ix = self.ix()?;
                let iter = match &after {
                    Some(k) => ix.tombstones.range((
                        std::ops::Bound::Excluded(k.clone()),
                        std::ops::Bound::Unbounded,
                    )),
                    None => ix.tombstones.iter(),
                };
                let mut page = Vec::new();
                for item in iter.keys().take(PAGE) {
                    page.extend(key_of(&item?));
                }
                page
            };
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.0.to_vec());
            for key in page {
                if fs::symlink_metadata(self.manifest_path(&key)).is_err() {
                    let _guard = self.locked()?;
                    if fs::symlink_metadata(self.manifest_path(&key)).is_err() {
                        self.clear_tombstone(&key)?;
                    }
                }
            }
        }
    }

    /// One item of `blobs/sha256/`: a blob no entry refers to is deleted; a link is set aside
    /// with the entries that name it.
    fn reconcile_blob(&self, item: Item, report: &mut ReconcileReport) -> Result<(), StoreError> {
        let path = match item {
            Item::File(path) => path,
            Item::Odd(path, why) => {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                return match Digest::from_hex(name) {
                    Some(digest) if path == self.blob_path(&digest) => {
                        report.dropped_entries += self.condemn(&digest, None, why)?;
                        report.not_followed += 1;
                        Ok(())
                    }
                    _ => self.set_aside_odd(&path, why, report),
                };
            }
        };
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some(digest) = Digest::from_hex(name) else {
            log::warn!("{} is not a blob name; leaving it", path.display());
            return Ok(());
        };
        if self.ix()?.blobs.get(digest)?.is_some() {
            return Ok(());
        }
        let _guard = self.locked()?;
        if self.ix()?.blobs.get(digest)?.is_none() {
            log::info!("deleting the orphan blob {name}");
            fs::remove_file(&path)?;
            report.orphan_blobs += 1;
        }
        Ok(())
    }

    /// Empties the entry trees and the counters and re-indexes the manifests (`cache
    /// rebuild-index`). The tombstones are still honoured; the records of compressed variants and
    /// image layers are kept (their files are checked before they are served) and their bytes
    /// counted again.
    pub fn rebuild_index(&self) -> Result<ReconcileReport, StoreError> {
        {
            let _guard = self.locked()?;
            let ix = self.ix()?;
            for tree in ix.trees() {
                tree.clear()?;
            }
            self.recount_variant_bytes()?;
            self.recount_layer_bytes()?;
            ix.db.flush()?;
        }
        self.reconcile()
    }
}
