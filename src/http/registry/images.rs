//! From a channel's release to the image documents (docs/images.md): the release a tag names
//! (waiting up to `oci.build_wait` for a channel's first release), each linux platform's layer
//! (made once per binary, kept, and made by one request at a time), and the config, manifests
//! and index, kept by digest so they are served by digest byte for byte.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix_web::web;
use futures_util::StreamExt;

use super::RegistryError;
use crate::channels::model::{self, Binary, ChannelRecord, Release};
use crate::http::AppState;
use crate::ids::Digest;
use crate::oci::document::{self, Document, Image};
use crate::oci::{Flavor, ImageFacts, Platform};
use crate::store::images::{discard, LayerRecord};

/// Layers being made, one lock per binary: concurrent first pulls make a layer once.
#[derive(Default)]
pub struct Layers {
    making: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

impl Layers {
    fn lock_for(&self, binary: Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut making = self
            .making
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Locks nobody holds any more are dropped as the map is used.
        making.retain(|_, l| Arc::strong_count(l) > 1);
        Arc::clone(making.entry(binary).or_default())
    }
}

/// The channel of a repository name: `rr/<channel>`.
pub fn channel_of(state: &AppState, name: &str) -> Result<Arc<ChannelRecord>, RegistryError> {
    let unknown = || RegistryError::name_unknown(name);
    let channel = name.strip_prefix("rr/").ok_or_else(unknown)?;
    state
        .channels
        .get(channel)
        .map_err(|e| {
            log::error!("registry: cannot read channel `{channel}`: {e}");
            RegistryError::unavailable()
        })?
        .ok_or_else(unknown)
}

/// The release `tag` names: `latest` is the current one (waited for, at most `oci.build_wait`,
/// when the channel has none yet), any other tag a kept release's id.
pub async fn release_for(
    state: &AppState,
    record: Arc<ChannelRecord>,
    tag: &str,
) -> Result<Release, RegistryError> {
    if tag != "latest" {
        return record
            .releases
            .iter()
            .find(|r| r.id == tag)
            .cloned()
            .ok_or_else(|| {
                RegistryError::manifest_unknown(format!(
                    "channel `{}` keeps no release `{tag}`",
                    record.name
                ))
            });
    }
    if let Some(current) = record.current() {
        return Ok(current.clone());
    }
    let name = record.name.clone();
    let mut events = state.channels.subscribe();
    state.channels.kick();
    let deadline = tokio::time::Instant::now() + state.config.oci.build_wait;
    loop {
        let now = state.channels.get(&name).ok().flatten();
        match now.as_ref().and_then(|r| r.current()) {
            Some(current) => return Ok(current.clone()),
            None if now.is_none() => {
                return Err(RegistryError::name_unknown(&format!("rr/{name}")))
            }
            None => {}
        }
        // Any event (or a lagged receiver) is a reason to look again; the deadline ends it.
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(_)) | Err(_) => {
                return Err(RegistryError::manifest_unknown(format!(
                    "channel `{name}` has no release yet; its build is under way, try again later"
                )))
            }
        }
    }
}

/// The images of `release`, one per linux platform, in platform order.
pub async fn images_of(
    state: &web::Data<AppState>,
    release: &Release,
    flavor: Flavor,
) -> Result<Vec<Image>, RegistryError> {
    let mut images = Vec::new();
    for (platform, binary) in &release.binaries {
        let Some(p) = Platform::parse(platform).filter(|p| p.os == "linux") else {
            continue;
        };
        let layer = layer_for(state, binary).await?;
        let facts = ImageFacts {
            platform: p,
            layer: crate::oci::LayerFacts {
                digest: layer.digest.0,
                size: layer.size,
                diff_id: layer.diff_id.0,
            },
            version: release.id.clone(),
            created: model::rfc3339(release.created_ms),
        };
        images.push(document::image(&facts, flavor));
    }
    if images.is_empty() {
        return Err(RegistryError::manifest_unknown(format!(
            "release `{}` has no linux platform",
            release.id
        )));
    }
    Ok(images)
}

/// Makes again, from the releases `record` keeps (the current one first), the documents and
/// layers of each release in both flavors, until one of them has `wanted` for digest; keeps
/// what it made; whether `wanted` was found. A client may ask one server by digest for what
/// another one served by tag (replicas behind a load balancer, or an index set aside): the
/// documents are made from the release alone, so every server makes the same bytes. A release
/// whose binaries are gone is passed over; a storage failure is an error.
pub async fn derive(
    state: &web::Data<AppState>,
    record: &ChannelRecord,
    wanted: &[u8; 32],
) -> Result<bool, RegistryError> {
    for release in &record.releases {
        for flavor in [Flavor::Oci, Flavor::Docker] {
            let images = match images_of(state, release, flavor).await {
                Ok(images) => images,
                Err(e) if e.status == actix_web::http::StatusCode::NOT_FOUND => break,
                Err(e) => return Err(e),
            };
            // A layer is found by its own record, kept as it was made.
            let found = images
                .iter()
                .any(|i| i.config.digest == *wanted || i.manifest.digest == *wanted)
                || state
                    .store
                    .layer_by_digest(wanted)
                    .map_err(|e| {
                        log::error!("registry: {e}");
                        RegistryError::unavailable()
                    })?
                    .is_some();
            let mut docs: Vec<_> = images
                .iter()
                .flat_map(|i| [i.config.clone(), i.manifest.clone()])
                .collect();
            let index = document::index(&images, flavor);
            let found = found || index.digest == *wanted;
            docs.push(index);
            keep(state, docs).await?;
            if found {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Keeps `docs` by digest (once each), off the executor.
pub async fn keep(state: &web::Data<AppState>, docs: Vec<Document>) -> Result<(), RegistryError> {
    let st = state.clone();
    web::block(move || {
        for d in &docs {
            st.store.put_image_doc(&d.digest, d.media_type, &d.bytes)?;
        }
        Ok::<(), crate::store::StoreError>(())
    })
    .await
    .map_err(|_| RegistryError::unavailable())?
    .map_err(|e| {
        log::error!("registry: cannot keep image documents: {e}");
        RegistryError::unavailable()
    })
}

/// The layer of `binary`: the one kept, or one made now (once, whoever asks at the same time).
pub async fn layer_for(
    state: &web::Data<AppState>,
    binary: &Binary,
) -> Result<LayerRecord, RegistryError> {
    let store_failed = |e: crate::store::StoreError| {
        log::error!("registry: the image index failed: {e}");
        RegistryError::unavailable()
    };
    if let Some(layer) = state
        .store
        .image_layer(&binary.digest)
        .map_err(store_failed)?
    {
        return Ok(layer);
    }
    let lock = state.images.lock_for(binary.digest);
    let _held = lock.lock().await;
    if let Some(layer) = state
        .store
        .image_layer(&binary.digest)
        .map_err(store_failed)?
    {
        return Ok(layer);
    }
    let (source, spooled) = binary_file(state, binary).await?;
    let st = state.clone();
    let (digest, size) = (binary.digest, binary.size);
    let started = Instant::now();
    let made = web::block(move || -> Result<LayerRecord, String> {
        let out_path = st.store.tmp_dir().join(format!(
            "layer-{}-{}",
            digest.to_hex(),
            uuid::Uuid::new_v4()
        ));
        let result = (|| {
            let input = File::open(&source).map_err(|e| format!("cannot open the binary: {e}"))?;
            let out = File::create(&out_path).map_err(|e| format!("cannot write a layer: {e}"))?;
            let mut out = BufWriter::with_capacity(1 << 20, out);
            let facts = crate::oci::build_layer(
                BufReader::with_capacity(1 << 20, input),
                size,
                &digest.0,
                &mut out,
                crate::oci::layer::LEVEL,
            )
            .map_err(|e| format!("cannot make the layer: {e}"))?;
            out.flush()
                .map_err(|e| format!("cannot write a layer: {e}"))?;
            out.get_ref()
                .sync_all()
                .map_err(|e| format!("cannot write a layer: {e}"))?;
            let record = LayerRecord::new(facts.digest, facts.size, facts.diff_id);
            st.store
                .put_image_layer(&digest, &out_path, record)
                .map_err(|e| format!("cannot keep the layer: {e}"))?;
            Ok(record)
        })();
        discard(&out_path);
        if spooled {
            discard(&source);
        }
        result
    })
    .await
    .map_err(|_| RegistryError::unavailable())?;
    match made {
        Ok(record) => {
            state.metrics.registry.layer_built(started.elapsed());
            log::info!(
                "made the image layer of {digest} ({} bytes) in {:.2}s",
                record.size,
                started.elapsed().as_secs_f64()
            );
            Ok(record)
        }
        Err(why) => {
            log::error!("registry: binary {digest}: {why}");
            Err(RegistryError::internal())
        }
    }
}

/// A local file holding the binary: its blob, or (with replicas, when only the bucket has it) a
/// copy spooled from the bucket, which also fills the local tier. Whether it was spooled.
async fn binary_file(
    state: &web::Data<AppState>,
    binary: &Binary,
) -> Result<(std::path::PathBuf, bool), RegistryError> {
    let gone = || {
        RegistryError::manifest_unknown(format!(
            "the binary {} of this release is no longer stored",
            binary.digest
        ))
    };
    if state.store.open_blob(&binary.digest, binary.size).is_some() {
        return Ok((state.store.blob_path(&binary.digest), false));
    }
    let mut remote = state
        .builds
        .shared()
        .open(binary.digest, true)
        .await
        .map_err(|e| {
            log::error!("registry: the bucket failed for {}: {e}", binary.digest);
            RegistryError::unavailable()
        })?
        .ok_or_else(gone)?;
    if let Some((key, manifest)) = remote.origin.take() {
        remote.fill = Some(state.builds.fill(key, manifest));
    }
    let size = remote.size;
    let path = state.store.tmp_dir().join(format!(
        "spool-{}-{}",
        binary.digest.to_hex(),
        uuid::Uuid::new_v4()
    ));
    let mut stream = remote.stream(0, size);
    let mut out = tokio::fs::File::create(&path).await.map_err(|e| {
        log::error!("registry: cannot spool {}: {e}", binary.digest);
        RegistryError::unavailable()
    })?;
    while let Some(chunk) = stream.next().await {
        let written = match chunk {
            Ok(bytes) => tokio::io::AsyncWriteExt::write_all(&mut out, &bytes).await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            log::error!(
                "registry: cannot read {} from the bucket: {e}",
                binary.digest
            );
            discard(&path);
            return Err(RegistryError::unavailable());
        }
    }
    Ok((path, true))
}
