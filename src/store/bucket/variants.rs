//! Compressed variants shared by replicas (docs/compression.md, "With replicas"): the `zstd` and
//! `gzip` encodings of a blob at `<prefix>variants/ab/<blob digest>.<coding>`, named by the blob
//! they encode so that any replica holding the blob can find them. The first replica to make one
//! uploads it; the others download it instead of spending minutes of CPU on the same bytes, and
//! every replica then serves the same bytes under the same `ETag`.
//!
//! What is read here is input: a download is capped at the size the caller allows, and the
//! caller decodes it and checks the decoded bytes against the blob's digest before serving it.

use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{Attribute, Attributes, GetOptions, ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

use super::{bucket_err, Bucket, BucketOp};
use crate::ids::Digest;
use crate::store::shared::SharedError;
use crate::store::Encoding;

impl Bucket {
    fn variant_path(&self, blob: &Digest, enc: Encoding) -> Path {
        let hex = blob.to_hex();
        self.path(format!("variants/{}/{hex}.{}", &hex[..2], enc.as_str()))
    }

    /// Downloads the `enc` variant of `blob` into the file `dest`, when the bucket has one of at
    /// most `max` bytes; its size. A larger object is refused before its bytes are read.
    pub(super) async fn get_variant(
        &self,
        blob: Digest,
        enc: Encoding,
        dest: std::path::PathBuf,
        max: u64,
    ) -> Result<Option<u64>, SharedError> {
        let path = self.variant_path(&blob, enc);
        let got = match self
            .counted(
                BucketOp::BlobGet,
                self.0.s3.get_opts(&path, GetOptions::default()),
            )
            .await?
        {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(bucket_err(e)),
        };
        if got.meta.size >= max {
            return Err(SharedError::Damaged(format!(
                "the bucket's {} variant of {blob} has {} bytes, not fewer than {max}",
                enc.as_str(),
                got.meta.size
            )));
        }
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&dest)
            .await?;
        let mut stream = got.into_stream();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                self.0.counters.error(BucketOp::BlobGet);
                bucket_err(e)
            })?;
            size += chunk.len() as u64;
            if size >= max {
                return Err(SharedError::Damaged(format!(
                    "the bucket's {} variant of {blob} is longer than it said",
                    enc.as_str()
                )));
            }
            self.0.counters.read(chunk.len());
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        Ok(Some(size))
    }

    /// Uploads the local variant file `local` as the `enc` variant of `blob`, unless the bucket
    /// has one already (another replica's, which stays: every replica then serves the same
    /// bytes); whether this one was uploaded.
    pub(super) async fn put_variant(
        &self,
        blob: Digest,
        enc: Encoding,
        local: std::path::PathBuf,
        size: u64,
    ) -> Result<bool, SharedError> {
        let path = self.variant_path(&blob, enc);
        match self
            .counted(BucketOp::BlobHead, self.0.s3.head(&path))
            .await?
        {
            Ok(_) => return Ok(false),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(bucket_err(e)),
        }
        // No `Content-Encoding` on the object: an HTTP client that decodes what it downloads
        // would hand back the binary instead of the variant.
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, "application/octet-stream".into());
        self.upload_file(&path, local, size, attributes).await?;
        Ok(true)
    }

    /// Deletes the `enc` variant of `blob` (it failed its check, or its blob was condemned).
    pub(super) async fn delete_variant(
        &self,
        blob: Digest,
        enc: Encoding,
    ) -> Result<(), SharedError> {
        let path = self.variant_path(&blob, enc);
        match self
            .counted(BucketOp::BlobDelete, self.0.s3.delete(&path))
            .await?
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(bucket_err(e)),
        }
    }

    /// Deletes every variant of the condemned blob `blob`.
    pub(super) async fn delete_variants(&self, blob: Digest) {
        for enc in Encoding::ALL {
            if let Err(e) = self.delete_variant(blob, enc).await {
                log::warn!(
                    "cannot delete the {} variant of the condemned blob {blob}: {e}",
                    enc.as_str()
                );
            }
        }
    }
}
