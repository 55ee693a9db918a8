//! Files about a blob that every replica serves alike (docs/signing.md, "With replicas"): its
//! minisign signature and its provenance envelope, at `<prefix>trust/ab/<digest>.<name>`. Each
//! is written once (a create: the first replica's stays, so every replica answers the same
//! bytes) and goes when the blob is condemned. What is read here is input like any object: the
//! caller checks a signature's key before serving it.

use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutMode};

use super::checked::{self, Capped};
use super::{bucket_err, Bucket, BucketOp};
use crate::ids::Digest;
use crate::store::shared::SharedError;

/// The names of the files kept about a blob.
pub const TRUST_FILES: [&str; 2] = ["minisig", "provenance.json"];
/// A signature is a few hundred bytes and an envelope a few KiB; anything larger is not one.
const MAX_TRUST_BYTES: usize = 1024 * 1024;

impl Bucket {
    fn trust_path(&self, digest: &Digest, name: &str) -> Path {
        let hex = digest.to_hex();
        self.path(format!("trust/{}/{hex}.{name}", &hex[..2]))
    }

    pub(super) async fn get_trust(
        &self,
        digest: Digest,
        name: &'static str,
    ) -> Result<Option<Vec<u8>>, SharedError> {
        let path = self.trust_path(&digest, name);
        let got = self
            .counted(BucketOp::TrustGet, async {
                let got = self.0.s3.get_opts(&path, GetOptions::default()).await?;
                Ok(checked::read_capped(got, MAX_TRUST_BYTES).await)
            })
            .await?;
        match got {
            Ok(Ok(bytes)) => {
                self.0.counters.read(bytes.len());
                Ok(Some(bytes))
            }
            Ok(Err(Capped::TooLarge(cap))) => Err(SharedError::Damaged(format!(
                "the bucket's {name} of {digest} is larger than {cap} bytes"
            ))),
            Ok(Err(Capped::Store(object_store::Error::NotFound { .. })))
            | Err(object_store::Error::NotFound { .. }) => Ok(None),
            Ok(Err(Capped::Store(e))) | Err(e) => Err(bucket_err(e)),
        }
    }

    /// Writes `name` of `digest` unless one is there; whether this write made it.
    pub(super) async fn put_trust(
        &self,
        digest: Digest,
        name: &'static str,
        bytes: Vec<u8>,
    ) -> Result<bool, SharedError> {
        let path = self.trust_path(&digest, name);
        self.put_json(BucketOp::TrustPut, &path, bytes, PutMode::Create)
            .await
    }

    /// Deletes every file kept about `digest` (its blob was condemned).
    pub(super) async fn delete_trust(&self, digest: Digest) {
        for name in TRUST_FILES {
            let path = self.trust_path(&digest, name);
            match self
                .counted(BucketOp::TrustDelete, self.0.s3.delete(&path))
                .await
            {
                Ok(Ok(())) | Ok(Err(object_store::Error::NotFound { .. })) => {}
                Ok(Err(e)) => log::warn!(
                    "cannot delete the {name} of the condemned blob {digest}: {}",
                    bucket_err(e)
                ),
                Err(e) => {
                    log::warn!("cannot delete the {name} of the condemned blob {digest}: {e}")
                }
            }
        }
    }
}
