//! Public routes (docs/http-api.md): `POST /_velox/v1/builds`, `GET /_velox/v1/builds/{key}`
//! (in [`super::builds_status`]) and `GET|HEAD /_velox/v1/artifacts/{sha256}`.

use std::time::SystemTime;

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::web::{self, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::StreamExt;

use super::artifact::{self, Blob};
use super::body_timeout;
use super::builds_status;
use super::{AppState, GoProxyClient};
use crate::builds::{BuildRequest, CacheStatus, Served, Started, VeloxClient, MAX_BODY_BYTES};
use crate::error::ApiError;
use crate::ids::Digest;
use crate::store::BlobSource;

/// Registers the public routes. Anything else is for the upstream (or 404 without one).
pub fn configure(cfg: &mut web::ServiceConfig) {
    // Before the artifact route: `{digest}` would take `<sha256>.minisig` too.
    cfg.configure(super::trust::configure);
    // Before `/_velox/v1/builds/{key}`: it would take `events`.
    cfg.configure(super::console::configure);
    cfg.service(
        web::resource("/_velox/v1/builds")
            .route(web::post().to(create_build))
            .route(web::get().to(super::console::list))
            .route(web::head().to(super::console::list))
            .default_service(web::to(|| async {
                ApiError::method_not_allowed("GET, HEAD, POST")
            })),
    )
    .service(
        web::resource("/_velox/v1/builds/{key}")
            .route(web::get().to(builds_status::get_status))
            .default_service(web::to(|| async { ApiError::method_not_allowed("GET") })),
    )
    .service(
        web::resource("/_velox/v1/artifacts/{digest}")
            .route(web::get().to(get_artifact))
            .route(web::head().to(get_artifact))
            .default_service(web::to(|| async {
                ApiError::method_not_allowed("GET, HEAD")
            })),
    )
    .configure(super::channels::configure);
}

/// The answer for a path no route takes.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// Requires the admin scope (docs/access.md): the guard has already checked the routes of the
/// table; this stays for handlers that change things, so that a route missing from the table
/// can never make a change without it. Everything is open while no token exists.
pub(crate) fn check_token(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let caller = crate::auth::caller(req).unwrap_or(crate::auth::Caller::Anonymous);
    state
        .auth
        .permit(crate::auth::table::Need::Admin, &caller, req.path())
}

/// Reads a request body of at most `limit` bytes; more is a 413. The public listener times every
/// body ([`body_timeout::CutStalledBodies`]): one that pauses for more than `request_body_timeout`
/// between two reads is a 408 that closes the connection.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<BytesMut, ApiError> {
    let too_large = || ApiError::payload_too_large("the build request is larger than 1 MiB");
    let declared = super::content_length(req.headers());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            log::info!("{}: {e}", req.path());
            body_timeout::body_error(req, &e)
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `POST /_velox/v1/builds`: builds or hits, and answers with the binary (or 202, see
/// [`serve_build`]).
async fn create_build(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    velox: web::Data<VeloxClient>,
) -> Result<HttpResponse, ApiError> {
    // In proxy mode builds come through the PHP app, which keeps its own auth and rate limits;
    // the build API is for holders of the token only, and without one it is not there at all.
    if state.config.upstream.is_some() && !state.auth.any_tokens() {
        return Err(not_found().await);
    }
    let body = read_body(&req, payload, MAX_BODY_BYTES).await?;
    let (build, dropped) = BuildRequest::parse(&body).map_err(|e| {
        ApiError::invalid_request(e.message).with_request_id(e.request_id.as_deref())
    })?;
    if !dropped.is_empty() {
        log::warn!("dropped fields Velox does not know: {}", dropped.join(", "));
    }
    serve_build(&req, build, &state, &velox, Vec::new()).await
}

/// Answers a validated build request with its binary (docs/http-api.md), from the cache or a build.
/// `extra` headers (the PHP app's, in proxy mode) are copied onto the response. With
/// `Prefer: respond-async` on the client's request, a build that is not cached is answered 202
/// at once ([`builds_status::accepted`]) while it goes on.
pub async fn serve_build(
    req: &HttpRequest,
    build: BuildRequest,
    state: &AppState,
    velox: &VeloxClient,
    extra: Vec<(HeaderName, HeaderValue)>,
) -> Result<HttpResponse, ApiError> {
    let mut build = build;
    // Admission comes before resolution: a full queue refuses the request before any Go module
    // proxy is asked. Tags answered from memory alone cost nothing and need no admission, so a
    // floating request whose binary is cached stays a hit when the queue is full.
    let mut admission = None;
    let resolved = match (&state.resolver, req.app_data::<web::Data<GoProxyClient>>()) {
        (Some(resolver), Some(client)) if build.is_floating() => {
            if resolver.needs_network(&build) {
                admission = Some(state.builds.admit().map_err(|e| {
                    e.to_api_error(&state.config)
                        .with_request_id(build.request_id())
                })?);
            }
            resolver.resolve(&client.0, &mut build).await
        }
        _ => Vec::new(),
    };
    let key = build.cache_key();
    state.builds.note_resolved(key, &resolved);
    let request_id = build.request_id().map(str::to_owned);
    let file_name = build.file_name();
    let ticket = super::tokens::ticket(req, state, &build, key)
        .await
        .map_err(|e| e.with_request_id(request_id.as_deref()))?;
    let served = if builds_status::wants_async(req) {
        match state
            .builds
            .start_as(build, key, velox, admission, ticket)
            .await
        {
            Ok(Started::Hit(served)) => Ok(*served),
            Ok(Started::Building(watch)) => {
                let id = request_id.as_deref();
                return Ok(builds_status::accepted(key, &watch, id, extra, state));
            }
            Err(e) => Err(e),
        }
    } else {
        state
            .builds
            .resolve_as(build, key, velox, admission, ticket)
            .await
    }
    .map_err(|e| {
        e.to_api_error(&state.config)
            .with_request_id(request_id.as_deref())
    })?;
    Ok(binary_response(
        req, served, key, request_id, &resolved, file_name, extra, state,
    ))
}

/// The response carrying `served` (the headers of docs/http-api.md, "Responses that carry a
/// binary"), for the build route and the channel route.
#[allow(clippy::too_many_arguments)]
pub fn binary_response(
    req: &HttpRequest,
    served: Served,
    key: crate::ids::CacheKey,
    request_id: Option<String>,
    resolved: &[crate::builds::resolve::Resolution],
    file_name: String,
    extra: Vec<(HeaderName, HeaderValue)>,
    state: &AppState,
) -> HttpResponse {
    let Served {
        entry,
        source,
        modified,
        status,
        stored,
    } = served;
    let mut headers = extra;
    let mut add = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.push((HeaderName::from_static(name), v));
        }
    };
    match status {
        CacheStatus::Hit => {
            add("x-cache-status", "HIT".into());
            let age = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| (d.as_millis() as u64).saturating_sub(entry.created_ms) / 1000)
                .unwrap_or(0);
            add("x-cache-age", age.to_string());
        }
        CacheStatus::Miss { build_time } => {
            add("x-cache-status", "MISS".into());
            add("x-build-time", format!("{:.3}", build_time.as_secs_f64()));
        }
    }
    if let Some(id) = &request_id {
        add("x-build-request-id", id.clone());
    }
    add("x-velox-cache-key", key.to_hex());
    if let Some(v) = crate::builds::resolve::header_value(resolved) {
        add("x-build-resolved", v);
    }
    let blob = Blob {
        digest: entry.digest,
        size: entry.size,
        modified,
        source,
        file_name,
        stored,
        binary: true,
    };
    artifact::respond(req, blob, headers, false, &state.metrics)
}

/// `GET|HEAD /_velox/v1/artifacts/{sha256}`: the immutable blob, from the local tier or (with
/// `storage.backend = "s3"`) the bucket; with `storage.s3.redirect`, a GET is answered with 307 to
/// a presigned URL of the bucket's object.
async fn get_artifact(
    req: HttpRequest,
    digest: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::not_found("no artifact has that digest");
    let digest = Digest::from_hex(&digest).ok_or_else(not_found)?;
    let record = state.store.blob(&digest).map_err(|e| {
        log::error!("blob lookup failed: {e}");
        ApiError::storage_unavailable()
    })?;
    let shared = state.builds.shared();
    let bucket_failed = |e: crate::store::shared::SharedError| {
        log::error!("the bucket failed for artifact {digest}: {e}");
        let mut err = ApiError::storage_unavailable();
        err.retry_after = Some(5);
        err
    };
    if state.config.storage.s3.redirect && req.method() == actix_web::http::Method::GET {
        return redirect(&req, digest, record.as_ref(), &state).await;
    }
    let local = record.and_then(|record| {
        let (file, modified) = state.store.open_blob(&digest, record.size)?;
        Some(Blob {
            digest,
            size: record.size,
            modified,
            source: BlobSource::File(file),
            file_name: record.file_name,
            stored: true,
            binary: true,
        })
    });
    let blob = match local {
        Some(blob) => blob,
        None => {
            let mut remote = shared
                .open(digest, req.method() != actix_web::http::Method::HEAD)
                .await
                .map_err(bucket_failed)?
                .ok_or_else(not_found)?;
            if let Some((key, manifest)) = remote.origin.take() {
                remote.fill = Some(state.builds.fill(key, manifest));
            }
            Blob {
                digest,
                size: remote.size,
                modified: remote.modified,
                file_name: remote.file_name.clone(),
                source: BlobSource::Remote(Box::new(remote)),
                stored: true,
                binary: true,
            }
        }
    };
    Ok(artifact::respond(
        &req,
        blob,
        Vec::new(),
        true,
        &state.metrics,
    ))
}

/// 307 to a presigned URL of the bucket's object (a CDN may stand in front of the bucket). A
/// conditional request that matches is still answered here (304), and an unknown digest is 404.
async fn redirect(
    req: &HttpRequest,
    digest: Digest,
    record: Option<&crate::store::BlobRecord>,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let bucket_failed = |e: crate::store::shared::SharedError| {
        log::error!("the bucket failed for artifact {digest}: {e}");
        let mut err = ApiError::storage_unavailable();
        err.retry_after = Some(5);
        err
    };
    let shared = state.builds.shared();
    if record.is_none() {
        shared
            .open(digest, false)
            .await
            .map_err(bucket_failed)?
            .ok_or_else(|| ApiError::not_found("no artifact has that digest"))?;
    }
    let etag = header::EntityTag::new_strong(digest.to_hex());
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some()
        .then(|| <header::IfNoneMatch as header::Header>::parse(req).ok())
        .flatten()
        .is_some_and(|inm| match inm {
            header::IfNoneMatch::Any => true,
            header::IfNoneMatch::Items(tags) => tags.iter().any(|t| t.weak_eq(&etag)),
        });
    if matches {
        return Ok(HttpResponse::NotModified()
            .insert_header(header::ETag(etag))
            .finish());
    }
    let url = shared
        .url(digest)
        .await
        .map_err(bucket_failed)?
        .ok_or_else(ApiError::internal)?;
    Ok(HttpResponse::TemporaryRedirect()
        .insert_header((header::LOCATION, url))
        .insert_header(header::ETag(etag))
        // The URL expires; whoever caches this answer must not outlive it.
        .insert_header((header::CACHE_CONTROL, "private, max-age=60"))
        .finish())
}
