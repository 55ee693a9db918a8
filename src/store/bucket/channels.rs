//! Channel records in the bucket (docs/channels.md, "With replicas"): `<prefix>channels/<name>.json`,
//! the same JSON each replica's index keeps. Every change is a conditional write on the ETag
//! the writer read (or a create when it read nothing), so two replicas changing one channel at
//! once cannot lose either change: the one that loses reads again and decides again.

use futures_util::TryStreamExt;
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutMode, UpdateVersion};

use super::checked::{self, Capped};
use super::{bucket_err, Bucket, BucketOp};
use crate::store::shared::{Expect, SharedError, Versioned};

/// A channel record is a few KiB; anything larger is not one.
const MAX_CHANNEL_BYTES: usize = 1024 * 1024;
/// Most channels listed.
const MAX_CHANNELS_LISTED: usize = 10_000;

impl Bucket {
    fn channel_path(&self, name: &str) -> Path {
        self.path(format!("channels/{name}.json"))
    }

    pub(super) async fn get_channel(&self, name: &str) -> Result<Option<Versioned>, SharedError> {
        let path = self.channel_path(name);
        let got = self
            .counted(BucketOp::ChannelGet, async {
                let got = self.0.s3.get_opts(&path, GetOptions::default()).await?;
                let etag = got.meta.e_tag.clone();
                match checked::read_capped(got, MAX_CHANNEL_BYTES).await {
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
                "the record of channel `{name}` is larger than {cap} bytes"
            ))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(bucket_err(e)),
        }
    }

    /// Writes the record of `name` on the condition `expect`; `Ok(false)` when the condition
    /// failed (another replica wrote first).
    pub(super) async fn put_channel(
        &self,
        name: &str,
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
        self.put_json(BucketOp::ChannelPut, &self.channel_path(name), bytes, mode)
            .await
    }

    pub(super) async fn delete_channel(&self, name: &str) -> Result<(), SharedError> {
        let path = self.channel_path(name);
        match self
            .counted(BucketOp::ChannelDelete, self.0.s3.delete(&path))
            .await?
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(bucket_err(e)),
        }
    }

    /// The names of the channels in the bucket. Objects there that do not name a channel
    /// (`<name>.json`) are skipped.
    pub(super) async fn channel_names(&self) -> Result<Vec<String>, SharedError> {
        let under = self.path("channels".into());
        let listed = self
            .counted(BucketOp::ChannelList, async {
                let mut stream = self.0.s3.list(Some(&under));
                let mut out = Vec::new();
                while let Some(meta) = stream.try_next().await? {
                    if out.len() >= MAX_CHANNELS_LISTED {
                        break;
                    }
                    out.push(meta);
                }
                Ok(out)
            })
            .await?
            .map_err(bucket_err)?;
        let mut names: Vec<String> = listed
            .iter()
            .filter_map(|meta| meta.location.filename()?.strip_suffix(".json"))
            .filter(|n| crate::config::valid_channel_name(n))
            .map(str::to_owned)
            .collect();
        names.sort();
        Ok(names)
    }
}
