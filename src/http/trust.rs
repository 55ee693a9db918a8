//! Trust routes (docs/signing.md): the public keys, each artifact's minisign signature and its
//! SBOM.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::resource::readable;
use super::AppState;
use crate::error::ApiError;
use crate::ids::Digest;
use crate::trust::service::Signed;

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

/// The local blob of `digest`: its path, size and file name, or a 404.
fn local_blob(
    state: &AppState,
    digest: &str,
) -> Result<(Digest, std::path::PathBuf, String), ApiError> {
    let not_found = || ApiError::not_found("no artifact has that digest");
    let digest = Digest::from_hex(digest).ok_or_else(not_found)?;
    let record = state
        .store
        .blob(&digest)
        .map_err(|e| {
            log::error!("blob lookup failed: {e}");
            ApiError::storage_unavailable()
        })?
        .ok_or_else(not_found)?;
    // Opened (and checked) as a download would be: a damaged blob is quarantined here.
    state
        .store
        .open_blob(&digest, record.size)
        .ok_or_else(not_found)?;
    Ok((digest, state.store.blob_path(&digest), record.file_name))
}

/// `GET /_velox/v1/artifacts/{sha256}.minisig`: made at the first request and kept.
async fn signature(
    digest: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if !state.trust.signing() {
        return Err(ApiError::not_found("signing is off on this server"));
    }
    let (digest, path, file_name) = local_blob(&state, &digest)?;
    let st = state.clone();
    let text = web::block(move || {
        st.trust.signature(
            &path,
            &Signed {
                digest: &digest,
                file_name: &file_name,
                key: None,
                rr_version: None,
            },
        )
    })
    .await
    .map_err(|_| ApiError::internal())?
    .map_err(|e| {
        log::error!("cannot sign {digest}: {e}");
        ApiError::storage_unavailable()
    })?
    .ok_or_else(|| ApiError::not_found("signing is off on this server"))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
        .content_type("text/plain; charset=utf-8")
        .body(text))
}

/// `GET /_velox/v1/artifacts/{sha256}/sbom`: CycloneDX 1.5 JSON from the Go build information
/// inside the binary.
async fn sbom(
    digest: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (digest, path, file_name) = local_blob(&state, &digest)?;
    let bom = web::block(move || -> Result<Option<serde_json::Value>, String> {
        let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
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

/// `GET /_velox/v1/artifacts/{sha256}/provenance`: the DSSE envelope made when this replica
/// built the binary.
async fn provenance(
    digest: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (digest, _, _) = local_blob(&state, &digest)?;
    let st = state.clone();
    let envelope = web::block(move || st.trust.provenance(&digest))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(|e| {
            log::error!("cannot read the provenance of {digest}: {e}");
            ApiError::storage_unavailable()
        })?
        .ok_or_else(|| {
            ApiError::not_found(
                "no provenance is kept for this binary: it was built before signing was on, by another replica, or while signing was off",
            )
        })?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
        .content_type(crate::trust::dsse::MEDIA_TYPE)
        .body(envelope))
}
