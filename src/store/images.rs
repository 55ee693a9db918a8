//! What the registry made (docs/images.md), in the sled tree `images`:
//! - `layer:<binary digest>` → the layer made from that binary (its digest, size and diff id);
//!   the layer's bytes are a per-blob file beside the binary's signature
//!   (`signatures/ab/<binary hex>.oci-layer.tar.gz`), so they go whenever the binary goes;
//! - `blob:<layer digest>` → the binary it was made from, to serve it by digest;
//! - `doc:<digest>` → a config, manifest or index document (media type and bytes), kept so that
//!   what was served by tag is served byte for byte by digest.
//!
//! Records are JSON with a version; a record whose layer file is gone is treated as absent (the
//! layer is made again). The bytes of every layer file are counted in the `counters` tree and
//! count toward `cache.max_size_gb` and the free-space floor, as compressed variants do; the
//! layer goes with its binary (`Store::forget_sidecars`), so a pinned binary keeps its layer.

use std::fs;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::ids::Digest;

const RECORD_VERSION: u32 = 1;
/// Bytes of every layer file, in the `counters` tree.
const COUNTER_LAYER_BYTES: &[u8] = b"image_layer_bytes";
/// The suffix of a layer file, beside its binary's other per-blob files.
pub const LAYER_SUFFIX: &str = "oci-layer.tar.gz";

/// A layer made from a binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub version: u32,
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
}

impl LayerRecord {
    pub fn new(digest: [u8; 32], size: u64, diff_id: [u8; 32]) -> LayerRecord {
        LayerRecord {
            version: RECORD_VERSION,
            digest: Digest(digest),
            size,
            diff_id: Digest(diff_id),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct BlobOf {
    version: u32,
    binary: Digest,
}

#[derive(Debug, Serialize, Deserialize)]
struct DocRecord {
    version: u32,
    media_type: String,
    body: String,
}

fn key(prefix: &[u8], digest: &[u8; 32]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(digest);
    k
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("an image record does not decode: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value)
        .map_err(|e| StoreError::Corrupt(format!("an image record does not encode: {e}")))
}

impl Store {
    /// Where the layer made from `binary` is kept.
    pub fn layer_path(&self, binary: &Digest) -> PathBuf {
        self.sidecar_dir(binary)
            .join(format!("{}.{LAYER_SUFFIX}", binary.to_hex()))
    }

    /// The layer made from `binary`, when it is recorded and its file is whole.
    pub fn image_layer(&self, binary: &Digest) -> Result<Option<LayerRecord>, StoreError> {
        let Some(bytes) = self.ix()?.images.get(key(b"layer:", &binary.0))? else {
            return Ok(None);
        };
        let record: LayerRecord = decode(&bytes)?;
        if record.version != RECORD_VERSION {
            return Ok(None);
        }
        match fs::metadata(self.layer_path(binary)) {
            Ok(m) if m.is_file() && m.len() == record.size => Ok(Some(record)),
            _ => Ok(None),
        }
    }

    /// Places the layer file `made` (in `tmp/`, synced) for `binary` and records it.
    pub fn put_image_layer(
        &self,
        binary: &Digest,
        made: &std::path::Path,
        record: LayerRecord,
    ) -> Result<(), StoreError> {
        let path = self.layer_path(binary);
        let placed = path
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::rename(made, &path))
            .and_then(|()| path.parent().map_or(Ok(()), super::ingest::sync_dir));
        placed.map_err(StoreError::Io)?;
        let ix = self.ix()?;
        let old = ix
            .images
            .insert(key(b"layer:", &binary.0), encode(&record)?)?;
        // A record left by a layer whose file went outside this code: its bytes are gone too.
        let old_size = old
            .and_then(|o| decode::<LayerRecord>(&o).ok())
            .map_or(0, |o| o.size);
        self.add_layer_bytes(i128::from(record.size) - i128::from(old_size))?;
        ix.images.insert(
            key(b"blob:", &record.digest.0),
            encode(&BlobOf {
                version: RECORD_VERSION,
                binary: *binary,
            })?,
        )?;
        ix.images.flush()?;
        Ok(())
    }

    /// Bytes of every layer file.
    pub fn image_layer_bytes(&self) -> Result<u64, StoreError> {
        Ok(self
            .ix()?
            .counters
            .get(COUNTER_LAYER_BYTES)?
            .map(|v| super::index::be_u64(&v))
            .unwrap_or(0))
    }

    /// Bytes of the layer made from `binary` (what removing the binary frees beyond its own
    /// size).
    pub(super) fn image_layer_bytes_of(&self, binary: &Digest) -> u64 {
        self.image_layer(binary)
            .ok()
            .flatten()
            .map_or(0, |r| r.size)
    }

    /// Sets the count of layer bytes from the layer records (after `rebuild-index` cleared the
    /// counters but kept the records).
    pub(super) fn recount_layer_bytes(&self) -> Result<u64, StoreError> {
        let ix = self.ix()?;
        let mut total = 0u64;
        for item in ix.images.scan_prefix(b"layer:") {
            let (_, v) = item?;
            if let Ok(record) = decode::<LayerRecord>(&v) {
                total = total.saturating_add(record.size);
            }
        }
        ix.counters
            .insert(COUNTER_LAYER_BYTES, &total.to_be_bytes())?;
        Ok(total)
    }

    fn add_layer_bytes(&self, delta: i128) -> Result<(), StoreError> {
        self.ix()?
            .counters
            .update_and_fetch(COUNTER_LAYER_BYTES, |old| {
                let was = old.map(super::index::be_u64).unwrap_or(0);
                let now = (i128::from(was) + delta).clamp(0, i128::from(u64::MAX)) as u64;
                Some(now.to_be_bytes().to_vec())
            })?;
        Ok(())
    }

    /// Forgets the layer made from `binary` (its records and its bytes in the count); its file
    /// is deleted with the binary's other per-blob files. Called as the binary's file goes.
    pub(super) fn forget_image_layer(&self, binary: &Digest) {
        let forgotten = (|| -> Result<(), StoreError> {
            let ix = self.ix()?;
            let Some(old) = ix.images.remove(key(b"layer:", &binary.0))? else {
                return Ok(());
            };
            let record: LayerRecord = decode(&old)?;
            ix.images.remove(key(b"blob:", &record.digest.0))?;
            self.add_layer_bytes(-i128::from(record.size))?;
            Ok(())
        })();
        if let Err(e) = forgotten {
            log::warn!("cannot forget the image layer of {binary}: {e}");
        }
    }

    /// The binary a layer of digest `layer` was made from, and the layer, when both are here.
    pub fn layer_by_digest(
        &self,
        layer: &[u8; 32],
    ) -> Result<Option<(Digest, LayerRecord)>, StoreError> {
        let Some(bytes) = self.ix()?.images.get(key(b"blob:", layer))? else {
            return Ok(None);
        };
        let of: BlobOf = decode(&bytes)?;
        Ok(self
            .image_layer(&of.binary)?
            .filter(|r| r.digest.0 == *layer)
            .map(|r| (of.binary, r)))
    }

    /// Keeps a document made (once: the bytes first kept for a digest are the ones served).
    pub fn put_image_doc(
        &self,
        digest: &[u8; 32],
        media_type: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let ix = self.ix()?;
        let k = key(b"doc:", digest);
        if ix.images.contains_key(&k)? {
            return Ok(());
        }
        let body = String::from_utf8(bytes.to_vec())
            .map_err(|_| StoreError::Corrupt("an image document is not UTF-8".into()))?;
        let record = DocRecord {
            version: RECORD_VERSION,
            media_type: media_type.to_owned(),
            body,
        };
        ix.images.insert(k, encode(&record)?)?;
        ix.images.flush()?;
        Ok(())
    }

    /// A document kept under `digest`: its media type and bytes.
    pub fn image_doc(&self, digest: &[u8; 32]) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let Some(bytes) = self.ix()?.images.get(key(b"doc:", digest))? else {
            return Ok(None);
        };
        let record: DocRecord = decode(&bytes)?;
        Ok(Some((record.media_type, record.body.into_bytes())))
    }
}

/// Removes a layer file left in `tmp/` by a make that failed.
pub fn discard(path: &std::path::Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            log::warn!("cannot remove {}: {e}", path.display());
        }
    }
}
