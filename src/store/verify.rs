//! `velox-cache cache verify` (docs/cli.md): re-hashes every blob and cross-checks entries, blob
//! references, eviction trees, counters, manifests and tombstones. Reads only; follows no
//! symbolic link inside the data dir (a link is reported, never opened).

use std::collections::HashMap;

use super::index::{
    be_u64, fifo_key, key_of, lfu_key, lru_key, tombstone_names, COUNTER_BYTES, COUNTER_ENTRIES,
};
use super::recover::{
    file_size, odd_file, read_manifest, sha256_file, walk_sharded, Item, Problems,
};
use super::{BlobRecord, EntryRecord, Store, StoreError};
use crate::ids::{CacheKey, Digest};

impl Store {
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
            if let Some(why) = odd_file(&path) {
                p.push(format!("blob {name} {why} (not followed)"));
                continue;
            }
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
        let walked = walk_sharded(&self.root, "blobs/sha256", &mut |item| {
            match item {
                Item::File(path) => {
                    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    match Digest::from_hex(name) {
                        Some(d) if ix.blobs.get(d)?.is_some() => {}
                        _ => p.push(format!("blob file {name} is not referenced")),
                    }
                }
                Item::Odd(path, why) => {
                    let blob = path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .and_then(Digest::from_hex)
                        .filter(|d| path == self.blob_path(d));
                    match blob {
                        // A blob with a record: reported above.
                        Some(d) if ix.blobs.get(d)?.is_some() => {}
                        _ => p.push(format!("{} {why} (not followed)", path.display())),
                    }
                }
            }
            Ok(())
        })?;
        if let Err(linked) = walked {
            p.push(linked.describe());
        }
        let walked = walk_sharded(&self.root, "manifests", &mut |item| {
            match item {
                Item::File(path) => {
                    let m = read_manifest(&path);
                    let key = m.as_ref().and_then(|m| CacheKey::from_hex(&m.key));
                    if key.is_some_and(|k| entries.contains_key(&k)) {
                        return Ok(());
                    }
                    let removed = match (key, m) {
                        (Some(k), Some(m)) => {
                            let t = ix.tombstones.get(k.0)?;
                            let digest = Digest::from_hex(&m.digest);
                            t.zip(digest)
                                .is_some_and(|(t, d)| tombstone_names(&t, &d, m.created_ms))
                        }
                        _ => false,
                    };
                    p.push(if removed {
                        format!(
                            "manifest {} belongs to a removed entry (the start-up pass deletes it)",
                            path.display()
                        )
                    } else {
                        format!("manifest {} has no entry", path.display())
                    });
                }
                Item::Odd(path, why) => p.push(format!("{} {why} (not followed)", path.display())),
            }
            Ok(())
        })?;
        if let Err(linked) = walked {
            p.push(linked.describe());
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
