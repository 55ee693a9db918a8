//! Damage in the bucket (docs/object-storage.md, "Damage in the bucket"): a blob whose bytes do
//! not hash to its name, or whose size is not the one its entry says, is condemned where it was
//! found: copied to `<prefix>quarantine/sha256/<digest>` for an operator to look at, deleted from
//! its name, counted and logged. With the blob gone, every manifest that names it counts as
//! absent, so the next request for one of its keys builds again and uploads verified bytes in its
//! place (uploads replace, `transfer.rs`), and the key's manifest with them.

use std::sync::atomic::Ordering::Relaxed;

use object_store::ObjectStoreExt;

use super::{bucket_err, Bucket, BucketOp};
use crate::ids::Digest;

impl Bucket {
    /// Moves the blob `digest` aside in the bucket. `why` is what was wrong with it.
    pub(super) async fn condemn(&self, digest: Digest, why: &str) {
        self.0.counters.corrupt.fetch_add(1, Relaxed);
        log::error!(
            "the bucket's blob {digest} {why}: moving it to quarantine; the keys that use it will \
             be built again"
        );
        let from = self.blob_path(&digest);
        let to = self.path(format!("quarantine/sha256/{}", digest.to_hex()));
        match self
            .counted(BucketOp::BlobPut, self.0.s3.copy(&from, &to))
            .await
        {
            Ok(Ok(())) => {}
            // Already moved by another request (or replica) that found the same damage.
            Ok(Err(object_store::Error::NotFound { .. })) => return,
            Ok(Err(e)) => log::warn!(
                "cannot keep a copy of the damaged blob {digest}: {}",
                bucket_err(e)
            ),
            Err(e) => log::warn!("cannot keep a copy of the damaged blob {digest}: {e}"),
        }
        match self
            .counted(BucketOp::BlobDelete, self.0.s3.delete(&from))
            .await
        {
            Ok(Ok(())) | Ok(Err(object_store::Error::NotFound { .. })) => {}
            Ok(Err(e)) => log::error!("cannot delete the damaged blob {digest}: {}", bucket_err(e)),
            Err(e) => log::error!("cannot delete the damaged blob {digest}: {e}"),
        }
        // Its signature and provenance speak for bytes that are no longer there.
        self.delete_trust(digest).await;
        // Its variants encode them.
        self.delete_variants(digest).await;
    }
}
