//! Public channel routes (docs/channels.md): the list, one channel's JSON, its current binary per
//! platform, and its event stream.

use std::convert::Infallible;

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::Version;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::Stream;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::public::{binary_response, serve_build};
use super::resource::{readable, resource};
use super::AppState;
use crate::builds::VeloxClient;
use crate::channels::{model, ChangeError, ChannelEvent};
use crate::error::ApiError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(readable("/_velox/v1/channels", list))
        .service(readable("/_velox/v1/channels/{name}", show))
        .service(readable("/_velox/v1/channels/{name}/events", events))
        .service(
            resource("/_velox/v1/channels/{name}/{os}/{arch}", "GET, HEAD")
                .route(web::get().to(binary))
                .route(web::head().to(binary)),
        );
}

/// The answer for an error of the channel layer.
pub(super) fn channel_error(e: ChangeError) -> ApiError {
    match e {
        ChangeError::Invalid(field, why) => {
            ApiError::invalid_request(format!("invalid `{field}`: {why}"))
        }
        ChangeError::FromFile(_) => ApiError::new(crate::error::ErrorCode::Conflict, e.to_string()),
        ChangeError::NotFound(_) => ApiError::not_found(e.to_string()),
        ChangeError::TooMany => ApiError::invalid_request(e.to_string()),
        ChangeError::Store(e) => {
            log::error!("channels: {e}");
            ApiError::storage_unavailable()
        }
        ChangeError::Record(why) => {
            log::error!("channels: {why}");
            ApiError::internal()
        }
        ChangeError::Shared(e) => {
            log::error!("channels: {e}");
            let mut err = ApiError::storage_unavailable();
            err.retry_after = Some(5);
            err
        }
        ChangeError::Busy(_) => {
            let mut err = ApiError::new(crate::error::ErrorCode::Conflict, e.to_string());
            err.retry_after = Some(1);
            err
        }
    }
}

fn no_channel(name: &str) -> ApiError {
    ApiError::not_found(format!("no channel is named `{}`", name.escape_debug()))
}

/// `GET /_velox/v1/channels`
pub(super) async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let st = state.clone();
    let records = web::block(move || st.channels.list())
        .await
        .map_err(|_| ApiError::storage_unavailable())?
        .map_err(|e| channel_error(e.into()))?;
    let channels: Vec<Value> = records.iter().map(|r| state.channels.json(r)).collect();
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .json(json!({ "channels": channels })))
}

/// `GET /_velox/v1/channels/{name}`
pub(super) async fn show(
    name: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let record = state
        .channels
        .get(&name)
        .map_err(channel_error)?
        .ok_or_else(|| no_channel(&name))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .json(state.channels.json(&record)))
}

/// `GET|HEAD /_velox/v1/channels/{name}/{os}/{arch}`: the current release's binary, with the
/// artifact's headers but `Cache-Control: no-cache` (the channel moves; its `ETag` revalidates).
/// Without a release yet (or with one made before the platform was added), the platform is
/// built on demand, as `POST /_velox/v1/builds` would (its token, `Prefer: respond-async`).
async fn binary(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    state: web::Data<AppState>,
    velox: web::Data<VeloxClient>,
) -> Result<HttpResponse, ApiError> {
    let (name, os, arch) = path.into_inner();
    let record = state
        .channels
        .get(&name)
        .map_err(channel_error)?
        .ok_or_else(|| no_channel(&name))?;
    let platform = format!("{os}/{arch}");
    if !record.spec.platforms.contains(&platform) {
        return Err(ApiError::not_found(format!(
            "channel `{name}` does not build {}; it builds {}",
            platform.escape_debug(),
            record.spec.platforms.join(", ")
        )));
    }
    let mut extra = vec![
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            HeaderName::from_static("x-velox-channel"),
            HeaderValue::from_str(&name).map_err(|_| no_channel(&name))?,
        ),
    ];
    let current = record
        .current()
        .and_then(|r| Some((r, r.binaries.get(&platform)?)));
    let request = match current {
        Some((release, binary)) => {
            if let Ok(v) = HeaderValue::from_str(&release.id) {
                extra.push((HeaderName::from_static("x-velox-channel-release"), v));
            }
            // The release's own bytes, by key and digest: no request to build, and no floating
            // TTL (the release is a snapshot).
            if let Some(served) = state
                .builds
                .serve_exact(&binary.key, &binary.digest)
                .map_err(|e| e.to_api_error(&state.config))?
            {
                let file_name = served.entry.file_name.clone();
                return Ok(binary_response(
                    &req,
                    served,
                    binary.key,
                    None,
                    &[],
                    file_name,
                    extra,
                    &state,
                ));
            }
            // Gone from this replica's tier (quarantined, or only in the bucket): built or
            // fetched again as a build request would be.
            model::request_for(&release.recipe, &platform)
        }
        None => {
            // A build on demand: for holders of the token when there is one. In proxy mode
            // without one, builds come only through the PHP app: the channel waits for its
            // pre-build.
            if state.config.upstream.is_some() && !state.auth.any_tokens() {
                state.channels.kick();
                let mut err = ApiError::not_found(format!(
                    "channel `{name}` has no release for {platform} yet; it is being pre-built"
                ));
                err.retry_after = Some(10);
                return Err(err);
            }
            // The build scope is checked by `serve_build` once it knows a build starts.
            state.channels.kick();
            model::request_for(&record.spec.recipe(), &platform)
        }
    }
    .map_err(|e| {
        log::error!(
            "channel `{name}`: its recipe is refused on {platform}: {}",
            e.message
        );
        ApiError::internal()
    })?;
    serve_build(&req, request, &state, &velox, extra).await
}

/// `GET /_velox/v1/channels/{name}/events`: Server-Sent Events: `channel` (the channel JSON, at
/// once), then `release` for each flip and `prebuild` for each change of the pre-build's state.
async fn events(
    req: HttpRequest,
    name: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    let receiver = state.channels.subscribe();
    let record = state
        .channels
        .get(&name)
        .map_err(channel_error)?
        .ok_or_else(|| no_channel(&name))?;
    let first = sse("channel", &state.channels.json(&record));
    let mut resp = HttpResponse::Ok();
    resp.insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("x-accel-buffering", "no"));
    let mut stream = resp.streaming(watch(name, first, receiver, state.config.sse_keepalive));
    if req.version() < Version::HTTP_11 {
        stream.head_mut().no_chunking(true);
        stream
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
    }
    Ok(stream)
}

fn sse(kind: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

fn watch(
    name: String,
    first: Bytes,
    receiver: tokio::sync::broadcast::Receiver<ChannelEvent>,
    keepalive: std::time::Duration,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let start = (Some(first), receiver, name);
    futures_util::stream::unfold(start, move |(first, mut rx, name)| async move {
        if let Some(first) = first {
            return Some((Ok(first), (None, rx, name)));
        }
        loop {
            let next = tokio::time::timeout(keepalive, rx.recv()).await;
            match next {
                Err(_) => {
                    return Some((
                        Ok(Bytes::from_static(b": keep-alive\n\n")),
                        (None, rx, name),
                    ))
                }
                Ok(Ok(event)) if event.channel == name => {
                    return Some((Ok(sse(event.kind, &event.data)), (None, rx, name)));
                }
                Ok(Ok(_)) => continue,
                // A watcher that fell behind is told so; it reads the channel JSON again.
                Ok(Err(RecvError::Lagged(n))) => {
                    let data = json!({"missed": n});
                    return Some((Ok(sse("lagged", &data)), (None, rx, name)));
                }
                Ok(Err(RecvError::Closed)) => return None,
            }
        }
    })
}
