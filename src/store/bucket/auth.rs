//! The token store in the bucket (docs/access.md, "With replicas"): `<prefix>auth/tokens.json`,
//! the JSON each replica keeps in its data dir. Every change is a conditional write on the ETag
//! the writer read (or a create when it read nothing), as for channel records, so two replicas
//! changing tokens at once cannot lose either change.

use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, PutMode, UpdateVersion};

use super::checked::{self, Capped};
use super::{bucket_err, Bucket, BucketOp};
use crate::store::shared::{Expect, SharedError, Versioned};

/// Thousands of tokens fit in far less.
const MAX_TOKENS_BYTES: usize = 4 * 1024 * 1024;

impl Bucket {
    fn auth_path(&self) -> Path {
        self.path("auth/tokens.json".to_string())
    }

    pub(super) async fn get_auth(&self) -> Result<Option<Versioned>, SharedError> {
        let path = self.auth_path();
        let got = self
            .counted(BucketOp::AuthGet, async {
                let got = self.0.s3.get_opts(&path, GetOptions::default()).await?;
                let etag = got.meta.e_tag.clone();
                match checked::read_capped(got, MAX_TOKENS_BYTES).await {
                    Ok(bytes) => Ok(Ok((bytes, etag))),
                    Err(Capped::TooLarge(cap)) => Ok(Err(cap)),
                    Err(Capped::Store(e)) => Err(e),
                }
            })
            .await?;
        match got {
            Ok(Ok((bytes, etag))) => {
                self.0.counters.read(bytes.len());
                Ok(Some(Versioned {
                    bytes: bytes.to_vec(),
                    etag,
                }))
            }
            Ok(Err(cap)) => Err(SharedError::Damaged(format!(
                "the token store is larger than {cap} bytes"
            ))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(bucket_err(e)),
        }
    }

    pub(super) async fn put_auth(
        &self,
        bytes: Vec<u8>,
        expect: Expect,
    ) -> Result<bool, SharedError> {
        let mode = match expect {
            Expect::Absent => PutMode::Create,
            Expect::Etag(e_tag) => PutMode::Update(UpdateVersion {
                e_tag: Some(e_tag),
                version: None,
            }),
            Expect::Any => PutMode::Overwrite,
        };
        self.put_json(BucketOp::AuthPut, &self.auth_path(), bytes, mode)
            .await
    }
}
