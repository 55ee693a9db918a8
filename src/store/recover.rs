//! Recovery and checking (docs/storage.md): the background pass that reconciles the index with the
//! files after a start (or a crash), the rebuild of the index from the manifests, and `verify`,
//! which re-hashes every blob and cross-checks every tree.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::index::{be_u64, fifo_key, key_of, lfu_key, lru_key, COUNTER_BYTES, COUNTER_ENTRIES};
use super::ingest::MANIFEST_VERSION;
use super::{BlobRecord, EntryRecord, Manifest, Store, StoreError};
use crate::ids::{CacheKey, Digest};

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
}

/// What `verify` found wrong; empty when all is well.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<String>);

/// The files of a two-level sharded folder (`ab/<name>`).
fn sharded_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let shards = match fs::read_dir(dir) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for shard in shards {
        let shard = shard?.path();
        if !shard.is_dir() {
            continue;
        }
        for item in fs::read_dir(&shard)? {
            let path = item?.path();
            if path.is_file() {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn file_size(path: &Path) -> Option<u64> {
    fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

fn sha256_file(path: &Path) -> io::Result<Digest> {
    let mut f = File::open(path)?;
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

fn read_manifest_file(path: &Path) -> ManifestFile {
    let Ok(bytes) = fs::read(path) else {
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

fn read_manifest(path: &Path) -> Option<Manifest> {
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
    /// manifests nothing refers to. Safe while the server runs: each change is made under the
    /// store's write lock, against the index as it is then.
    pub fn reconcile(&self) -> Result<ReconcileReport, StoreError> {
        let mut report = ReconcileReport::default();

        // Entries whose blob is not whole.
        let mut keys = Vec::new();
        for item in self.ix()?.entries.iter() {
            let (k, v) = item?;
            if let Some(key) = key_of(&k) {
                keys.push((key, EntryRecord::decode(&v)?));
            }
        }
        for (key, entry) in keys {
            if file_size(&self.blob_path(&entry.digest)) == Some(entry.size) {
                continue;
            }
            let _guard = self.locked()?;
            let now = self.lookup(&key)?;
            if now.as_ref().is_some_and(|e| e.digest == entry.digest)
                && file_size(&self.blob_path(&entry.digest)) != Some(entry.size)
            {
                log::warn!("dropping entry {key}: its blob is missing or has the wrong size");
                self.remove_locked(&key)?;
                report.dropped_entries += 1;
            }
        }

        // Manifests: re-index what the index lacks, delete what has nothing left.
        for path in sharded_files(&self.root.join("manifests"))? {
            let parsed = match read_manifest_file(&path) {
                ManifestFile::OtherVersion(v) => {
                    log::warn!(
                        "leaving the manifest {} alone: its layout is version {v}, this build reads {MANIFEST_VERSION}",
                        path.display()
                    );
                    continue;
                }
                ManifestFile::Readable(m) => manifest_entry(&m).map(|e| (m, e)),
                ManifestFile::Unreadable => None,
            };
            let Some((manifest, (key, entry))) = parsed else {
                log::warn!("deleting the unreadable manifest {}", path.display());
                let _guard = self.locked()?;
                fs::remove_file(&path)?;
                report.orphan_manifests += 1;
                continue;
            };
            if path != self.manifest_path(&key) {
                log::warn!(
                    "manifest {} is not where its key says; leaving it",
                    path.display()
                );
                continue;
            }
            // Indexed already: the common case, checked without the write lock (taking it
            // empties the kept blob handles, and hits would open files again for the whole pass).
            if self.lookup(&key)?.is_some_and(|e| e.digest == entry.digest) {
                continue;
            }
            let _guard = self.locked()?;
            let current = self.lookup(&key)?;
            if current.as_ref().is_some_and(|e| e.digest == entry.digest) {
                continue;
            }
            if file_size(&self.blob_path(&entry.digest)) == Some(manifest.size) {
                log::info!("re-indexing {key} from its manifest");
                if let Some(orphan) = self.commit_entry(&key, &entry, manifest.created_ms, false)? {
                    let _ = fs::remove_file(self.blob_path(&orphan));
                }
                report.reindexed += 1;
            } else if current.is_none() {
                fs::remove_file(&path)?;
                report.orphan_manifests += 1;
            }
        }
        self.flush()?;

        // Blobs no entry refers to.
        for path in sharded_files(&self.root.join("blobs/sha256"))? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let Some(digest) = Digest::from_hex(name) else {
                log::warn!("{} is not a blob name; leaving it", path.display());
                continue;
            };
            if self.ix()?.blobs.get(digest)?.is_some() {
                continue;
            }
            let _guard = self.locked()?;
            if self.ix()?.blobs.get(digest)?.is_none() {
                log::info!("deleting the orphan blob {name}");
                fs::remove_file(&path)?;
                report.orphan_blobs += 1;
            }
        }
        Ok(report)
    }

    /// Empties every tree and re-indexes the manifests (`cache rebuild-index`).
    pub fn rebuild_index(&self) -> Result<ReconcileReport, StoreError> {
        {
            let _guard = self.locked()?;
            let ix = self.ix()?;
            for tree in ix.trees() {
                tree.clear()?;
            }
            ix.db.flush()?;
        }
        self.reconcile()
    }

    /// Re-hashes every blob and cross-checks entries, blob references, eviction trees, counters
    /// and manifests.
    pub fn verify(&self) -> Result<Problems, StoreError> {
        let ix = self.ix()?;
        let mut p = Vec::new();
        let mut entries: HashMap<CacheKey, EntryRecord> = HashMap::new();
        for item in ix.entries.iter() {
            let (k, v) = item?;
            match (key_of(&k), EntryRecord::decode(&v)) {
                (Some(key), Ok(e)) if k.len() == 32 => {
                    entries.insert(key, e);
                }
                _ => p.push(format!("entry {} does not decode", hex::encode(&k))),
            }
        }
        let mut refs: HashMap<Digest, u64> = HashMap::new();
        for (key, e) in &entries {
            *refs.entry(e.digest).or_default() += 1;
            if ix.lru.get(lru_key(e, key))?.is_none() {
                p.push(format!("entry {key} is missing from the LRU tree"));
            }
            if ix.lfu.get(lfu_key(e, key))?.is_none() {
                p.push(format!("entry {key} is missing from the LFU tree"));
            }
            if ix.fifo.get(fifo_key(e, key))?.is_none() {
                p.push(format!("entry {key} is missing from the FIFO tree"));
            }
            match read_manifest(&self.manifest_path(key)) {
                None => p.push(format!("entry {key} has no readable manifest")),
                Some(m) => {
                    if m.key != key.to_hex() || m.digest != e.digest.to_hex() || m.size != e.size {
                        p.push(format!("entry {key} disagrees with its manifest"));
                    }
                }
            }
        }
        type Position = fn(&EntryRecord, &CacheKey) -> Vec<u8>;
        let orders: [(&str, &sled::Tree, Position); 3] = [
            ("LRU", &ix.lru, lru_key),
            ("LFU", &ix.lfu, lfu_key),
            ("FIFO", &ix.fifo, fifo_key),
        ];
        for (name, tree, position) in orders {
            for item in tree.iter().keys() {
                let item = item?;
                let ok = key_of(&item)
                    .and_then(|k| entries.get(&k).map(|e| position(e, &k)))
                    .is_some_and(|expect| expect == item.as_ref());
                if !ok {
                    p.push(format!(
                        "the {name} tree has a stale item {}",
                        hex::encode(&item)
                    ));
                }
            }
        }
        let mut bytes = 0u64;
        for item in ix.blobs.iter() {
            let (k, v) = item?;
            let Ok(rec) = BlobRecord::decode(&v) else {
                p.push(format!("blob record {} does not decode", hex::encode(&k)));
                continue;
            };
            let Some(digest) = Digest::from_slice(&k) else {
                p.push(format!("blob record key {} is malformed", hex::encode(&k)));
                continue;
            };
            bytes += rec.size;
            let name = digest.to_hex();
            if refs.remove(&digest) != Some(rec.refs) {
                p.push(format!("blob {name} has the wrong reference count"));
            }
            let path = self.blob_path(&digest);
            match file_size(&path) {
                None => p.push(format!("blob {name} is missing")),
                Some(n) if n != rec.size => {
                    p.push(format!("blob {name} has {n} bytes, not {}", rec.size))
                }
                Some(_) => match sha256_file(&path) {
                    Ok(h) if h == digest => {}
                    Ok(_) => p.push(format!("blob {name} does not hash to its name")),
                    Err(e) => p.push(format!("blob {name} cannot be read: {e}")),
                },
            }
        }
        for digest in refs.keys() {
            p.push(format!(
                "blob {} is used by an entry but has no record",
                digest.to_hex()
            ));
        }
        for path in sharded_files(&self.root.join("blobs/sha256"))? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            match Digest::from_hex(name) {
                Some(d) if ix.blobs.get(d)?.is_some() => {}
                _ => p.push(format!("blob file {name} is not referenced")),
            }
        }
        for path in sharded_files(&self.root.join("manifests"))? {
            let key = read_manifest(&path).and_then(|m| CacheKey::from_hex(&m.key));
            if !key.is_some_and(|k| entries.contains_key(&k)) {
                p.push(format!("manifest {} has no entry", path.display()));
            }
        }
        let counters = ix
            .counters
            .get(COUNTER_ENTRIES)?
            .map(|v| be_u64(&v))
            .unwrap_or(0);
        if counters != entries.len() as u64 {
            p.push(format!(
                "the entries counter says {counters}, there are {}",
                entries.len()
            ));
        }
        let counted = ix
            .counters
            .get(COUNTER_BYTES)?
            .map(|v| be_u64(&v))
            .unwrap_or(0);
        if counted != bytes {
            p.push(format!(
                "the bytes counter says {counted}, the blobs hold {bytes}"
            ));
        }
        Ok(Problems(p))
    }
}
