//! The bucket as the build layer sees it: [`SharedStore`] over the bucket's operations.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use object_store::signer::{Method, Signer};
use object_store::{Attribute, GetOptions, ObjectStore, ObjectStoreExt};
use tokio::time::Instant;

use super::checked::{Found, MAX_BLOB_BYTES};
use super::transfer::KEY_METADATA;
use super::{bucket_err, Bucket, BucketOp};
use crate::ids::{CacheKey, Digest};
use crate::store::shared::{
    Artifact, Claim, Elsewhere, Expect, Fill, RemoteBlob, SharedError, SharedHealth, SharedStore,
    Versioned,
};
use crate::store::{Encoding, EntryRecord, Manifest, Store};

/// How long a presigned artifact URL stays valid.
pub const PRESIGN_TTL: Duration = Duration::from_secs(3600);

/// `t`, or now when `t` is in the future (a bucket's clock, or a hand-made date).
fn clamp_past(t: SystemTime) -> SystemTime {
    t.min(SystemTime::now())
}

impl Bucket {
    /// The entry a blob found by digest was stored for: `key`'s manifest, when it is usable and
    /// names this very blob (the object's metadata is only a hint: anyone may have written it).
    async fn origin(
        &self,
        key: CacheKey,
        digest: Digest,
        size: u64,
    ) -> Result<Option<(CacheKey, Manifest)>, SharedError> {
        let Some((Found::Usable(manifest), _)) = self.get_manifest(key).await? else {
            return Ok(None);
        };
        Ok(match manifest.names() {
            Ok((_, d, n)) if d == digest && n == size => Some((key, manifest)),
            _ => None,
        })
    }
}

impl SharedStore for Bucket {
    fn find(&self, key: CacheKey) -> BoxFuture<'static, Result<Option<Manifest>, SharedError>> {
        let this = self.clone();
        self.run(async move { this.usable_manifest(key).await })
    }

    fn claim(
        &self,
        key: CacheKey,
        force: bool,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Claim, SharedError>> {
        let this = self.clone();
        self.run(async move { this.claim_build(key, force, deadline).await })
    }

    fn ingest(&self, store: &Arc<Store>, a: Artifact) -> Result<EntryRecord, SharedError> {
        let staged = store.stage(a.file)?;
        let manifest = Manifest::new(&a.key, &staged, &a.file_name, a.request, a.build_ms);
        let this = self.clone();
        let (path, digest, size) = (staged.path().to_path_buf(), staged.digest, staged.size);
        let file_name = a.file_name.clone();
        let (key, replace) = (a.key, a.replace);
        let started = std::time::Instant::now();
        let theirs = self.block_on(async move {
            this.put_blob(path, digest, size, file_name, key).await?;
            this.put_manifest(key, manifest.clone(), replace)
                .await
                .map(|theirs| (theirs, manifest))
        })?;
        log::info!(
            "stored {key} in the bucket ({size} bytes) in {} ms",
            started.elapsed().as_millis()
        );
        match theirs {
            (None, ours) => Ok(store.adopt(staged, &ours)?),
            // Another replica wrote this key's manifest first: the bucket's is the truth.
            (Some(theirs), _) if theirs.digest == staged.digest.to_hex() => {
                Ok(store.adopt(staged, &theirs)?)
            }
            (Some(theirs), _) => {
                drop(staged);
                let this = self.clone();
                let fill = Fill {
                    key,
                    manifest: theirs,
                    store: Arc::clone(store),
                    after: Arc::new(|_, _| {}),
                };
                self.block_on(async move { this.fill_entry(fill).await })
            }
        }
    }

    fn fetch(
        &self,
        store: Arc<Store>,
        manifest: Manifest,
    ) -> BoxFuture<'static, Result<EntryRecord, SharedError>> {
        let this = self.clone();
        let key = manifest.names().map(|(k, _, _)| k);
        self.run(async move {
            let key = key.map_err(SharedError::Damaged)?;
            let fill = Fill {
                key,
                manifest,
                store,
                after: Arc::new(|_, _| {}),
            };
            this.fill_entry(fill).await
        })
    }

    fn remote(&self, manifest: &Manifest) -> Option<RemoteBlob> {
        let (_, digest, size) = manifest.names().ok()?;
        Some(RemoteBlob {
            digest,
            size,
            modified: manifest.created(),
            file_name: manifest.file_name.clone(),
            reader: Arc::new(self.clone()),
            fill: None,
            origin: None,
        })
    }

    fn open(
        &self,
        digest: Digest,
        origin: bool,
    ) -> BoxFuture<'static, Result<Option<RemoteBlob>, SharedError>> {
        let this = self.clone();
        self.run(async move {
            let path = this.blob_path(&digest);
            let opts = GetOptions {
                head: true,
                ..Default::default()
            };
            let got = match this
                .counted(BucketOp::BlobHead, this.0.s3.get_opts(&path, opts))
                .await?
            {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(bucket_err(e)),
            };
            let size = got.meta.size;
            if size == 0 || size > MAX_BLOB_BYTES {
                log::error!("the bucket's blob {digest} has {size} bytes; not serving it");
                return Ok(None);
            }
            // What the object says of itself is input: the name is cleaned, the date clamped.
            let file_name = got
                .attributes
                .get(&Attribute::ContentDisposition)
                .and_then(|v| {
                    let v: &str = v.as_ref();
                    v.split("filename=\"").nth(1)?.split('"').next()
                })
                .map(crate::util::clean_file_name)
                .unwrap_or_else(|| "roadrunner".into());
            let modified = clamp_past(SystemTime::from(got.meta.last_modified));
            let origin = match got
                .attributes
                .get(&Attribute::Metadata(KEY_METADATA.into()))
                .and_then(|v| CacheKey::from_hex(v.as_ref()))
            {
                Some(key) if origin => this.origin(key, digest, size).await?,
                _ => None,
            };
            Ok(Some(RemoteBlob {
                digest,
                size,
                modified,
                file_name,
                reader: Arc::new(this.clone()),
                fill: None,
                origin,
            }))
        })
    }

    fn url(&self, digest: Digest) -> BoxFuture<'static, Result<Option<String>, SharedError>> {
        let this = self.clone();
        self.run(async move {
            let path = this.blob_path(&digest);
            let signed = this
                .counted(
                    BucketOp::Presign,
                    this.0.s3.signed_url(Method::GET, &path, PRESIGN_TTL),
                )
                .await?
                .map_err(bucket_err)?;
            Ok(Some(signed.to_string()))
        })
    }

    fn forget(&self, key: CacheKey) -> BoxFuture<'static, Result<bool, SharedError>> {
        let this = self.clone();
        self.run(async move {
            // The tombstone first: once the manifest is gone nothing else tells the replicas
            // that still hold the key. A failure here changes nothing (the caller says 503).
            this.put_tombstone(key).await?;
            let path = this.manifest_path(&key);
            match this
                .counted(BucketOp::ManifestGet, this.0.s3.head(&path))
                .await?
            {
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(bucket_err(e)),
            }
            this.counted(BucketOp::ManifestDelete, this.0.s3.delete(&path))
                .await?
                .map_err(bucket_err)?;
            Ok(true)
        })
    }

    fn elsewhere(&self, key: CacheKey) -> BoxFuture<'static, Result<Elsewhere, SharedError>> {
        let this = self.clone();
        self.run(async move {
            // The lock first: a build writes its manifest before it releases its lock, so a
            // build that ends between the two looks is seen as built, never as unknown.
            if let Some(elapsed) = this.build_elsewhere(key).await? {
                return Ok(Elsewhere::Building { elapsed });
            }
            Ok(match this.usable_manifest(key).await? {
                Some(m) => Elsewhere::Built(m),
                None => Elsewhere::Unknown,
            })
        })
    }

    fn health(&self) -> BoxFuture<'static, SharedHealth> {
        let this = self.clone();
        let probe = self.run(async move { Ok(this.probe().await) });
        Box::pin(async move { probe.await.unwrap_or(SharedHealth::Unreachable) })
    }

    fn shares_channels(&self) -> bool {
        true
    }

    fn channel_get(
        &self,
        name: String,
    ) -> BoxFuture<'static, Result<Option<Versioned>, SharedError>> {
        let this = self.clone();
        self.run(async move { this.get_channel(&name).await })
    }

    fn channel_put(
        &self,
        name: String,
        bytes: Vec<u8>,
        expect: Expect,
    ) -> BoxFuture<'static, Result<bool, SharedError>> {
        let this = self.clone();
        self.run(async move { this.put_channel(&name, bytes, expect).await })
    }

    fn channel_delete(&self, name: String) -> BoxFuture<'static, Result<(), SharedError>> {
        let this = self.clone();
        self.run(async move { this.delete_channel(&name).await })
    }

    fn channel_names(&self) -> BoxFuture<'static, Result<Vec<String>, SharedError>> {
        let this = self.clone();
        self.run(async move { this.channel_names().await })
    }

    fn trust_get(
        &self,
        digest: Digest,
        name: &'static str,
    ) -> BoxFuture<'static, Result<Option<Vec<u8>>, SharedError>> {
        let this = self.clone();
        self.run(async move { this.get_trust(digest, name).await })
    }

    fn trust_put(
        &self,
        digest: Digest,
        name: &'static str,
        bytes: Vec<u8>,
    ) -> BoxFuture<'static, Result<bool, SharedError>> {
        let this = self.clone();
        self.run(async move { this.put_trust(digest, name, bytes).await })
    }

    fn shares_variants(&self) -> bool {
        true
    }

    fn variant_get(
        &self,
        blob: Digest,
        enc: Encoding,
        dest: std::path::PathBuf,
        max: u64,
    ) -> BoxFuture<'static, Result<Option<u64>, SharedError>> {
        let this = self.clone();
        self.run(async move { this.get_variant(blob, enc, dest, max).await })
    }

    fn variant_put(
        &self,
        blob: Digest,
        enc: Encoding,
        local: std::path::PathBuf,
        size: u64,
    ) -> BoxFuture<'static, Result<bool, SharedError>> {
        let this = self.clone();
        self.run(async move { this.put_variant(blob, enc, local, size).await })
    }

    fn variant_delete(
        &self,
        blob: Digest,
        enc: Encoding,
    ) -> BoxFuture<'static, Result<(), SharedError>> {
        let this = self.clone();
        self.run(async move { this.delete_variant(blob, enc).await })
    }

    fn shares_auth(&self) -> bool {
        true
    }

    fn auth_get(&self) -> BoxFuture<'static, Result<Option<Versioned>, SharedError>> {
        let this = self.clone();
        self.run(async move { this.get_auth().await })
    }

    fn auth_put(
        &self,
        bytes: Vec<u8>,
        expect: Expect,
    ) -> BoxFuture<'static, Result<bool, SharedError>> {
        let this = self.clone();
        self.run(async move { this.put_auth(bytes, expect).await })
    }
}
