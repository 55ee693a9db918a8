//! The OCI pull API (docs/images.md): `GET`/`HEAD /v2/`, manifests by tag or digest, blobs
//! (layers with Range, configs), and tag lists, for `rr/<channel>` repositories. Served on
//! `registry_listen` and, without an `upstream`, on the public listener. Nothing can be pushed.
//! Errors are the Distribution Spec's `{"errors":[{"code", "message", "detail"}]}`.

pub mod images;
pub mod parse;

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde_json::json;

use self::parse::{Digest, Invalid, Reference, Route, Wanted};
use super::artifact::{self, Blob};
use super::AppState;
use crate::oci::digest_string;
use crate::store::BlobSource;

pub use images::Layers;

const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");

/// Registers `/v2` and everything under it.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v2").to(handle))
        .service(web::resource("/v2/{tail:.*}").to(handle));
}

/// An answer of the Distribution Spec's error table.
#[derive(Debug)]
pub struct RegistryError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl RegistryError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        RegistryError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn name_unknown(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!(
                "no repository `{}`: repositories are rr/<channel>",
                name.escape_debug()
            ),
        )
    }

    pub fn manifest_unknown(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", message)
    }

    fn blob_unknown() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            "no blob has that digest",
        )
    }

    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "storage is unavailable; try again later",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            "the image could not be made; see the server's log",
        )
    }

    fn unsupported() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "this registry is read-only: images are made from channels, nothing can be pushed",
        )
    }

    fn invalid(i: Invalid) -> Self {
        match i {
            Invalid::Name(n) => Self::new(
                StatusCode::BAD_REQUEST,
                "NAME_INVALID",
                format!("`{}` is not a valid repository name", n.escape_debug()),
            ),
            Invalid::Digest(d) => Self::new(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                format!("`{}` is not a valid digest", d.escape_debug()),
            ),
            Invalid::Tag(t) => {
                Self::manifest_unknown(format!("`{}` is not a valid tag", t.escape_debug()))
            }
        }
    }
}

impl ResponseError for RegistryError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status);
        resp.insert_header(API_VERSION);
        match self.status {
            StatusCode::UNAUTHORIZED => {
                resp.insert_header((header::WWW_AUTHENTICATE, "Basic realm=\"velox-cache\""));
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                resp.insert_header((header::ALLOW, "GET, HEAD"));
            }
            _ => {}
        }
        resp.json(json!({"errors": [{"code": self.code, "message": self.message, "detail": {}}]}))
    }
}

/// The Distribution Spec's answer for a request the access guard refused (docs/access.md): 401
/// `UNAUTHORIZED` (with the Basic challenge `docker login` and `skopeo --creds` answer) or 403
/// `DENIED`, with the guard's message.
pub fn refused(error: &crate::error::ApiError) -> HttpResponse {
    let status = error.http_status();
    let code = if status == StatusCode::UNAUTHORIZED {
        "UNAUTHORIZED"
    } else if status == StatusCode::FORBIDDEN {
        "DENIED"
    } else {
        "UNKNOWN"
    };
    let mut resp = RegistryError::new(status, code, error.message.clone()).error_response();
    resp.headers_mut().insert(
        HeaderName::from_static(API_VERSION.0),
        HeaderValue::from_static(API_VERSION.1),
    );
    resp
}

/// Every request under `/v2`: answered, counted by route and status, and marked with the API
/// version header.
async fn handle(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let tail = req.match_info().get("tail").unwrap_or_default().to_owned();
    let route = parse::route(&tail);
    let label = match &route {
        Ok(Route::Base) => "base",
        Ok(Route::Manifest { .. }) | Err(Invalid::Tag(_)) => "manifest",
        Ok(Route::Blob { .. }) | Err(Invalid::Digest(_)) => "blob",
        Ok(Route::Tags { .. }) => "tags",
        _ => "other",
    };
    let mut resp = match answer(&req, &state, route).await {
        Ok(resp) => resp,
        Err(e) => e.error_response(),
    };
    resp.headers_mut().insert(
        HeaderName::from_static(API_VERSION.0),
        HeaderValue::from_static(API_VERSION.1),
    );
    state
        .metrics
        .registry
        .request(label, resp.status().as_u16());
    resp
}

async fn answer(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    route: Result<Route, Invalid>,
) -> Result<HttpResponse, RegistryError> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Err(RegistryError::unsupported());
    }
    match route.map_err(RegistryError::invalid)? {
        Route::Base => Ok(HttpResponse::Ok().json(json!({}))),
        Route::Upload => Err(RegistryError::unsupported()),
        Route::Unknown => Err(RegistryError::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "no such route of the pull API",
        )),
        Route::Tags { name } => {
            let record = images::channel_of(state, &name)?;
            let mut tags: Vec<&str> = Vec::new();
            if record.current().is_some() {
                tags.push("latest");
            }
            tags.extend(record.releases.iter().map(|r| r.id.as_str()));
            Ok(HttpResponse::Ok().json(json!({"name": name, "tags": tags})))
        }
        Route::Manifest { name, reference } => manifest(req, state, &name, reference).await,
        Route::Blob { name, digest } => blob(req, state, &name, digest).await,
    }
}

/// A document's answer: its bytes, media type and digest.
fn document(media_type: &str, bytes: Vec<u8>, digest: &[u8; 32]) -> HttpResponse {
    let d = digest_string(digest);
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, media_type.to_owned()))
        .insert_header(("docker-content-digest", d.clone()))
        .insert_header((header::ETAG, format!("\"{d}\"")))
        .body(bytes)
}

async fn manifest(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    name: &str,
    reference: Reference,
) -> Result<HttpResponse, RegistryError> {
    let record = images::channel_of(state, name)?;
    let tag = match reference {
        Reference::Digest(Digest::Other) => {
            return Err(RegistryError::manifest_unknown(
                "no manifest has that digest",
            ))
        }
        Reference::Digest(Digest::Sha256(d)) => {
            let doc = |d: &[u8; 32]| {
                state.store.image_doc(d).map_err(|e| {
                    log::error!("registry: {e}");
                    RegistryError::unavailable()
                })
            };
            let mut found = doc(&d)?;
            // Served by tag elsewhere (another replica) or before the index was set aside.
            if found.is_none() && images::derive(state, &record, &d).await? {
                found = doc(&d)?;
            }
            return match found {
                Some((media_type, bytes)) if is_manifest_type(&media_type) => {
                    Ok(document(&media_type, bytes, &d))
                }
                _ => Err(RegistryError::manifest_unknown(
                    "no manifest has that digest",
                )),
            };
        }
        Reference::Tag(tag) => tag,
    };
    let accept: Vec<&str> = req
        .headers()
        .get_all(header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .collect();
    let accept = (!accept.is_empty()).then(|| accept.join(","));
    let wanted = parse::negotiate(accept.as_deref())
        .map_err(|why| {
            RegistryError::new(
                StatusCode::BAD_REQUEST,
                "UNSUPPORTED",
                format!("the Accept header is malformed: {why}"),
            )
        })?
        .ok_or_else(|| {
            RegistryError::manifest_unknown(
                "no manifest of a media type the client accepts: this registry serves OCI and Docker schema 2 manifests and indexes",
            )
        })?;
    let release = images::release_for(state, record, &tag).await?;
    let flavor = match wanted {
        Wanted::Index(f) | Wanted::Manifest(f) => f,
    };
    let images = images::images_of(state, &release, flavor).await?;
    let mut docs: Vec<_> = images
        .iter()
        .flat_map(|i| [i.config.clone(), i.manifest.clone()])
        .collect();
    let served = match wanted {
        Wanted::Index(_) => crate::oci::document::index(&images, flavor),
        Wanted::Manifest(_) => images
            .iter()
            .find(|i| i.platform.architecture == "amd64")
            .or(images.first())
            .map(|i| i.manifest.clone())
            .ok_or_else(|| RegistryError::manifest_unknown("no image"))?,
    };
    docs.push(served.clone());
    images::keep(state, docs).await?;
    Ok(document(served.media_type, served.bytes, &served.digest))
}

fn is_manifest_type(media_type: &str) -> bool {
    use crate::oci::document::*;
    [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].contains(&media_type)
}

async fn blob(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    name: &str,
    digest: Digest,
) -> Result<HttpResponse, RegistryError> {
    let record = images::channel_of(state, name)?;
    let Digest::Sha256(d) = digest else {
        return Err(RegistryError::blob_unknown());
    };
    let store_failed = |e: crate::store::StoreError| {
        log::error!("registry: {e}");
        RegistryError::unavailable()
    };
    let mut derived = false;
    let (binary, layer) = loop {
        if let Some((media_type, bytes)) = state.store.image_doc(&d).map_err(store_failed)? {
            if !is_manifest_type(&media_type) {
                return Ok(document("application/octet-stream", bytes, &d));
            }
        }
        if let Some(found) = state.store.layer_by_digest(&d).map_err(store_failed)? {
            break found;
        }
        // Made elsewhere (another replica) or before the index was set aside: made again here
        // from the channel's releases, once.
        if derived || !images::derive(state, &record, &d).await? {
            return Err(RegistryError::blob_unknown());
        }
        derived = true;
    };
    let path = state.store.layer_path(&binary);
    let file = std::fs::File::open(&path).map_err(|_| RegistryError::blob_unknown())?;
    let modified = file
        .metadata()
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| std::time::SystemTime::now());
    let blob = Blob {
        digest: layer.digest,
        size: layer.size,
        modified,
        source: BlobSource::File(std::sync::Arc::new(file)),
        file_name: "layer.tar.gz".into(),
        stored: false,
        binary: false,
    };
    let extra = vec![(
        HeaderName::from_static("docker-content-digest"),
        HeaderValue::from_str(&digest_string(&d)).map_err(|_| RegistryError::internal())?,
    )];
    Ok(artifact::respond(req, blob, extra, true, &state.metrics))
}

/// The answer for a path outside `/v2` on the registry listener.
pub async fn not_found(state: web::Data<AppState>) -> HttpResponse {
    state.metrics.registry.request("other", 404);
    let mut resp = RegistryError::new(
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
        "this listener serves the OCI pull API under /v2/ only",
    )
    .error_response();
    resp.headers_mut().insert(
        HeaderName::from_static(API_VERSION.0),
        HeaderValue::from_static(API_VERSION.1),
    );
    resp
}
