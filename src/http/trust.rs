//! Trust routes (docs/signing.md): the public keys, each artifact's minisign signature and its
//! SBOM.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::resource::readable;
use super::AppState;
use crate::error::ApiError;
use crate::ids::Digest;
use crate::trust::service::Signed;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(readable("/_velox/v1/keys", keys))
        .service(readable("/_velox/v1/keys/minisign.pub", public_key))
        .service(readable("/_velox/v1/artifacts/{digest}.minisig", signature))
        .service(readable("/_velox/v1/artifacts/{digest}/sbom", sbom))
        .service(readable(
            "/_velox/v1/artifacts/{digest}/provenance",
            provenance,
        ));
}

/// `GET /_velox/v1/keys`
async fn keys(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .json(state.trust.keys_json())
}

/// `GET /_velox/v1/keys/minisign.pub`
async fn public_key(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let file = state
        .trust
        .public_file()
        .ok_or_else(|| ApiError::not_found("signing is off on this server"))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .content_type("text/plain; charset=utf-8")
        .body(file))
}

/// The bytes of `digest` as a file to read: the local blob, or (a blob only the bucket holds)
/// a copy streamed into `tmp/` — hashed as it streams, cut when it does not hash to its name —
/// deleted when the guard goes. With the entry it was stored for, when one is known.
struct Readable {
    digest: Digest,
    path: std::path::PathBuf,
    file_name: String,
    /// The copy to delete, for a blob read from the bucket.
    temporary: bool,
    origin: Option<crate::store::Manifest>,
}

impl Drop for Readable {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn bucket_failed(digest: &Digest) -> impl Fn(crate::store::shared::SharedError) -> ApiError + '_ {
    move |e| {
        log::error!("the bucket failed for artifact {digest}: {e}");
        let mut err = ApiError::storage_unavailable();
        err.retry_after = Some(5);
        err
    }
}

fn unknown() -> ApiError {
    ApiError::not_found("no artifact has that digest")
}

/// The local blob of `digest`, checked as a download would be (a damaged blob is quarantined
/// here): its path and file name.
fn local_blob(
    state: &AppState,
    digest: &Digest,
) -> Result<Option<(std::path::PathBuf, String)>, ApiError> {
    let record = state.store.blob(digest).map_err(|e| {
        log::error!("blob lookup failed: {e}");
        ApiError::storage_unavailable()
    })?;
    Ok(record.and_then(|record| {
        state.store.open_blob(digest, record.size)?;
        Some((state.store.blob_path(digest), record.file_name))
    }))
}

/// Whether `digest` names a blob here or in the bucket.
async fn known(state: &AppState, digest: &Digest) -> Result<bool, ApiError> {
    if local_blob(state, digest)?.is_some() {
        return Ok(true);
    }
    Ok(state
        .builds
        .shared()
        .open(*digest, false)
        .await
        .map_err(bucket_failed(digest))?
        .is_some())
}

/// The bytes of `digest` to read whole (see [`Readable`]); a 404 when nobody has them.
async fn readable_blob(state: &AppState, digest: Digest) -> Result<Readable, ApiError> {
    if let Some((path, file_name)) = local_blob(state, &digest)? {
        let store = Arc::clone(&state.store);
        let origin = web::block(move || store.origin_of(&digest).map(|(_, m)| m))
            .await
            .map_err(|_| ApiError::internal())?;
        return Ok(Readable {
            digest,
            path,
            file_name,
            temporary: false,
            origin,
        });
    }
    let mut remote = state
        .builds
        .shared()
        .open(digest, true)
        .await
        .map_err(bucket_failed(&digest))?
        .ok_or_else(unknown)?;
    let origin = remote.origin.take().map(|(_, m)| m);
    let readable = Readable {
        digest,
        path: state
            .store
            .tmp_dir()
            .join(format!("{}.trust", uuid::Uuid::new_v4().simple())),
        file_name: remote.file_name.clone(),
        temporary: true,
        origin,
    };
    let size = remote.size;
    let mut file = tokio::fs::File::create(&readable.path).await.map_err(|e| {
        log::error!("cannot copy {digest} from the bucket: {e}");
        ApiError::storage_unavailable()
    })?;
    let mut stream = remote.stream(0, size);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            log::error!("cannot copy {digest} from the bucket: {e}");
            ApiError::storage_unavailable()
        })?;
        file.write_all(&chunk).await.map_err(|e| {
            log::error!("cannot copy {digest} from the bucket: {e}");
            ApiError::storage_unavailable()
        })?;
    }
    file.flush()
        .await
        .map_err(|_| ApiError::storage_unavailable())?;
    Ok(readable)
}

/// `GET /_velox/v1/artifacts/{sha256}.minisig`: made when the binary is stored; for a binary
/// stored before, made at the first request. In S3 mode the bucket keeps one for every replica.
async fn signature(
    digest: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if !state.trust.signing() {
        return Err(ApiError::not_found("signing is off on this server"));
    }
    let digest = Digest::from_hex(&digest).ok_or_else(unknown)?;
    let text = match signature_text(&state, digest).await? {
        Some(text) => text,
        None => return Err(ApiError::not_found("signing is off on this server")),
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
        .content_type("text/plain; charset=utf-8")
        .body(text))
}

fn sign_failed(digest: Digest) -> impl Fn(std::io::Error) -> ApiError {
    move |e| {
        log::error!("cannot sign {digest}: {e}");
        ApiError::storage_unavailable()
    }
}

/// The signature of `digest`: kept here, kept in the bucket (when it is one of our keys'), or
/// made now and kept in both.
async fn signature_text(
    state: &web::Data<AppState>,
    digest: Digest,
) -> Result<Option<String>, ApiError> {
    let trust = &state.trust;
    if let Some(text) = trust.kept_signature(&digest).map_err(sign_failed(digest))? {
        if known(state, &digest).await? {
            return Ok(Some(text));
        }
        return Err(unknown());
    }
    let shared = state.builds.shared();
    if let Some(text) = shared_signature(state, digest).await? {
        return Ok(Some(text));
    }
    let blob = readable_blob(state, digest).await?;
    let st = state.clone();
    let made = web::block(move || {
        let key = blob.origin.as_ref().map(|m| m.key.clone());
        let rr_version = blob
            .origin
            .as_ref()
            .and_then(|m| m.request["rr_version"].as_str().map(str::to_owned));
        let file = std::fs::File::open(&blob.path)?;
        let made = st.trust.make_signature(
            std::io::BufReader::with_capacity(1 << 20, &file),
            &Signed {
                digest: &blob.digest,
                file_name: &blob.file_name,
                key: key.as_deref(),
                rr_version: rr_version.as_deref(),
            },
        );
        if let Err(e) = &made {
            if e.kind() == std::io::ErrorKind::InvalidData && !blob.temporary {
                // Damaged at rest: out of service, as the scrub would take it.
                st.store
                    .report_damaged(&blob.digest, &file, "does not hash to its name");
            }
        }
        made
    })
    .await
    .map_err(|_| ApiError::internal())?
    .map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            log::error!("not signing {digest}: {e}");
            unknown()
        } else {
            sign_failed(digest)(e)
        }
    })?;
    let Some(text) = made else {
        return Ok(None);
    };
    // Every replica answers the first signature the bucket kept.
    match shared
        .trust_put(digest, "minisig", text.clone().into_bytes())
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            if let Some(theirs) = shared_signature(state, digest).await? {
                return Ok(Some(theirs));
            }
        }
        Err(e) => log::warn!("cannot keep the signature of {digest} in the bucket: {e}"),
    }
    let st = state.clone();
    web::block(move || st.trust.keep_signature(&digest, &text))
        .await
        .map_err(|_| ApiError::internal())?
        .map(Some)
        .map_err(sign_failed(digest))
}

/// The bucket's signature of `digest`, kept here too, when it is one of our keys' for `digest`.
async fn shared_signature(
    state: &web::Data<AppState>,
    digest: Digest,
) -> Result<Option<String>, ApiError> {
    let found = match state.builds.shared().trust_get(digest, "minisig").await {
        Ok(found) => found,
        Err(e) => {
            log::warn!("cannot read the bucket's signature of {digest}: {e}");
            None
        }
    };
    let Some(text) = found.and_then(|b| String::from_utf8(b).ok()) else {
        return Ok(None);
    };
    if !state.trust.accepts_signature(&digest, &text) {
        log::error!(
            "the bucket's signature of {digest} is not one of this server's keys' for that digest: ignored"
        );
        return Ok(None);
    }
    state
        .trust
        .keep_signature(&digest, &text)
        .map(Some)
        .map_err(sign_failed(digest))
}

/// `GET /_velox/v1/artifacts/{sha256}/sbom`: CycloneDX 1.5 JSON from the Go build information
/// inside the binary.
async fn sbom(
    digest: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let digest = Digest::from_hex(&digest).ok_or_else(unknown)?;
    let blob = readable_blob(&state, digest).await?;
    let bom = web::block(move || -> Result<Option<serde_json::Value>, String> {
        let file_name = blob.file_name.clone();
        let file = std::fs::File::open(&blob.path).map_err(|e| e.to_string())?;
        // SAFETY: blobs are never written in place (a new blob is a new file, renamed in).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| e.to_string())?;
        let info = crate::trust::buildinfo::read(&map)?;
        Ok(info.map(|i| crate::trust::sbom::cyclonedx(&i, &file_name, &digest.to_hex())))
    })
    .await
    .map_err(|_| ApiError::internal())?
    .map_err(|why| {
        log::warn!("the SBOM of {digest} cannot be read: {why}");
        ApiError::not_found(format!(
            "the binary's Go build information cannot be read: {why}"
        ))
    })?
    .ok_or_else(|| {
        ApiError::not_found("the binary holds no Go build information: no SBOM can be made of it")
    })?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
        .content_type("application/vnd.cyclonedx+json; version=1.5")
        .body(bom.to_string()))
}

/// `GET /_velox/v1/artifacts/{sha256}/provenance`: the DSSE envelope made when the binary was
/// built (by this replica, or by another one that kept it in the bucket).
async fn provenance(
    digest: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let digest = Digest::from_hex(&digest).ok_or_else(unknown)?;
    if !known(&state, &digest).await? {
        return Err(unknown());
    }
    let failed = |e: std::io::Error| {
        log::error!("cannot read the provenance of {digest}: {e}");
        ApiError::storage_unavailable()
    };
    let mut envelope = state.trust.provenance(&digest).map_err(failed)?;
    if envelope.is_none() {
        match state.builds.shared().trust_get(digest, "provenance.json").await {
            Ok(Some(bytes)) if state.trust.accepts_provenance(&digest, &bytes) => {
                envelope = Some(state.trust.keep_provenance(&digest, &bytes).map_err(failed)?);
            }
            Ok(Some(_)) => log::error!(
                "the bucket's provenance of {digest} is not signed by one of this server's keys for that digest: ignored"
            ),
            Ok(None) => {}
            Err(e) => log::warn!("cannot read the bucket's provenance of {digest}: {e}"),
        }
    }
    let envelope = envelope.ok_or_else(|| {
        ApiError::not_found(
            "no provenance is kept for this binary: it was built before signing was on, or while signing was off",
        )
    })?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
        .content_type(crate::trust::dsse::MEDIA_TYPE)
        .body(envelope))
}
