//! Files other layers keep about one blob, named by its digest (docs/signing.md): its minisign
//! signature, its provenance and its image layer (docs/images.md), under `<data_dir>/signatures/ab/<digest>.*`. They go when the
//! blob goes, whatever removes it (eviction, deletion, a replaced entry, the scrub's quarantine):
//! a signature never outlives the bytes it speaks for.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::Manifest;
use super::Store;
use crate::ids::CacheKey;
use crate::ids::Digest;

/// The folder under the data dir that holds the per-blob files.
pub const SIDECAR_DIR: &str = "signatures";

impl Store {
    /// The fan-out folder where the files about `digest` are kept.
    pub fn sidecar_dir(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join(SIDECAR_DIR).join(&hex[..2])
    }

    /// Deletes every file kept about `digest` (`<digest>.<anything>`). Called once its blob has
    /// left the data dir.
    pub(super) fn forget_sidecars(&self, digest: &Digest) {
        self.forget_image_layer(digest);
        let dir = self.sidecar_dir(digest);
        let prefix = format!("{}.", digest.to_hex());
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                log::warn!("cannot list {}: {e}", dir.display());
                return;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(&prefix) {
                match fs::remove_file(entry.path()) {
                    Ok(()) => log::debug!("deleted {}", entry.path().display()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => log::warn!("cannot delete {}: {e}", entry.path().display()),
                }
            }
        }
    }

    /// Deletes the blob file of `digest`, and the files kept about it and its compressed
    /// variants; whether the blob went.
    pub(super) fn remove_blob_file(&self, digest: &Digest) -> bool {
        self.forget_sidecars(digest);
        self.forget_variants(digest);
        super::maintain::remove_file_logged(&self.blob_path(digest))
    }

    /// [`Store::remove_blob_file`] for a caller that holds the write lock and can delete later:
    /// the blob file is renamed into `tmp/` (one metadata change) and its path returned, for the
    /// caller to delete once it has let the lock go; deleting a large file takes milliseconds
    /// (BENCHMARKS.md), and inserts wait for the lock. A crash before that deletion leaves the
    /// file in `tmp/`, which every start empties. `None` when the blob was not there, or could
    /// not be renamed and was deleted here.
    pub(super) fn retire_blob_file(&self, digest: &Digest) -> Option<PathBuf> {
        self.forget_sidecars(digest);
        self.forget_variants(digest);
        let from = self.blob_path(digest);
        let to = self.tmp_dir().join(format!("retired-{}", digest.to_hex()));
        match fs::rename(&from, &to) {
            Ok(()) => Some(to),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                log::debug!(
                    "cannot move {} aside ({e}); deleting it now",
                    from.display()
                );
                super::maintain::remove_file_logged(&from);
                None
            }
        }
    }

    /// An entry stored for `digest` and its manifest, found by walking the index (the first
    /// request for the signature of a blob stored before signing existed needs its key and
    /// RoadRunner version; it happens once per blob).
    pub fn origin_of(&self, digest: &Digest) -> Option<(CacheKey, Manifest)> {
        let mut after = None;
        loop {
            let page = match self.list(after.as_ref(), 1024) {
                Ok(page) => page,
                Err(e) => {
                    log::warn!("cannot walk the index for the entry of {digest}: {e}");
                    return None;
                }
            };
            let last = page.last().map(|(k, _)| *k);
            for (key, entry) in page {
                if entry.digest == *digest {
                    if let Some(m) = super::recover::read_manifest(&self.manifest_path(&key)) {
                        return Some((key, m));
                    }
                }
            }
            after = Some(last?);
        }
    }
}
