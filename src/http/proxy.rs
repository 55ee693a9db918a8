//! Proxy mode (docs/http-api.md): with `upstream` set, every public request that no `/_velox/` route takes
//! goes to the upstream PHP app. Its answer streams back unchanged, unless it is a build
//! instruction (a 2xx with `X-Velox-Build: true`), which velox-cache answers with the binary.
//!
//! The upstream is reached with hyper ([`client`]), which relays every framing RFC 9112 §6.3
//! allows; which headers cross the hop is [`headers`]' business; build instructions are decoded in
//! [`instruction`].

mod client;
mod headers;
mod instruction;

use std::rc::Rc;
use std::sync::atomic::Ordering;

use actix_web::body::{self, BodyStream, SizedStream};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode, Version};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

pub use self::client::Upstream;
use self::client::{Answer, Progress, Relay, Upload};
use self::headers::{end_to_end, Hop};
use super::body::HeadBody;
use super::public::{self, serve_build};
use super::{content_length, AppState};
use crate::builds::{BuildRequest, VeloxClient, MAX_BODY_BYTES};
use crate::error::{ApiError, ErrorCode};

fn invalid_instruction(message: impl Into<String>) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidBuildInstruction,
        format!("the upstream's build instruction {}", message.into()),
    )
}

/// How a proxied request ended, for `velox_proxy_requests_total`.
enum Outcome {
    Passed(HttpResponse),
    Build(HttpResponse),
}

/// The public listener's default service: forwards to the upstream, or answers 404 without one
/// (and for any `/_velox/` path no route took).
pub async fn forward(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    velox: web::Data<VeloxClient>,
    upstream: web::Data<Option<Upstream>>,
) -> HttpResponse {
    let path = req.path();
    let upstream = match upstream.get_ref() {
        Some(u) if !(path == "/_velox" || path.starts_with("/_velox/")) => u,
        _ => return public::not_found().await.error_response(),
    };
    let metrics = &state.metrics;
    let outcome = if headers::has_looped(req.headers()) {
        Err(ApiError::new(
            ErrorCode::LoopDetected,
            "this request has already passed through velox-cache: `upstream` leads back to it",
        ))
    } else {
        proxy(&req, payload, &state, &velox, upstream).await
    };
    match outcome {
        Ok(Outcome::Passed(resp)) => {
            metrics.proxy_passed.fetch_add(1, Ordering::Relaxed);
            resp
        }
        Ok(Outcome::Build(resp)) => {
            metrics.proxy_build.fetch_add(1, Ordering::Relaxed);
            resp
        }
        Err(e) => {
            metrics.proxy_error.fetch_add(1, Ordering::Relaxed);
            log::warn!("{} {}: {e}", req.method(), req.path());
            // An upload that stalled past `request_body_timeout` is the client's doing, whatever
            // the upstream made of the cut body: 408, and the connection closed.
            if super::body_timeout::stalled(&req) {
                return super::body_timeout::client_timeout().error_response();
            }
            e.error_response()
        }
    }
}

async fn proxy(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    velox: &VeloxClient,
    upstream: &Upstream,
) -> Result<Outcome, ApiError> {
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let peer = req.peer_addr().map(|a| a.ip().to_canonical());
    let hop = Hop {
        peer,
        trusted: peer.is_some_and(|ip| {
            state
                .config
                .trusted_proxies
                .iter()
                .any(|net| net.contains(&ip))
        }),
        proto: if req.app_config().secure() {
            "https"
        } else {
            "http"
        },
        version: req.version(),
    };
    let bodiless_headers = headers::forward_headers(req.headers(), &hop);
    let mut headers = bodiless_headers.clone();

    // The client's framing is kept: its Content-Length, or chunked; no body when it sent none.
    let progress = Rc::new(Progress::default());
    let body = if req.headers().contains_key(header::TRANSFER_ENCODING) {
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        Upload::stream(payload, None, Rc::clone(&progress))
    } else if let Some(length) = content_length(req.headers()) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        if length == 0 {
            Upload::none()
        } else {
            Upload::stream(payload, Some(length), Rc::clone(&progress))
        }
    } else {
        Upload::none()
    };
    let method = req.method();
    let mut answer = upstream
        .send(method, path_and_query, &headers, body, &progress)
        .await?;
    if method == Method::HEAD && instruction::is_build_instruction(answer.status, &answer.headers) {
        // A HEAD answer has no body to read the instruction from. HEAD stands for GET without
        // the body (RFC 9110 §9.3.2): ask again with GET; the binary's headers answer the HEAD.
        answer = upstream
            .send(
                &Method::GET,
                path_and_query,
                &bodiless_headers,
                Upload::none(),
                &Progress::default(),
            )
            .await?;
    }
    if instruction::is_build_instruction(answer.status, &answer.headers) {
        take_over(req, answer, state, velox, upstream)
            .await
            .map(Outcome::Build)
    } else {
        Ok(Outcome::Passed(pass_through(req, answer)))
    }
}

/// Statuses that never carry a body (RFC 9110 §6.4.1).
fn bodiless(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Relays the upstream's answer as it comes: never buffered whole, never decoded. A body of
/// known length keeps it; one of unknown length (chunked, or ended by the upstream's close) goes
/// chunked, or to an HTTP/1.0 client, which knows no chunked encoding, ended by our close.
fn pass_through(req: &HttpRequest, answer: Answer) -> HttpResponse {
    let Answer {
        status,
        headers,
        body: incoming,
    } = answer;
    let length = content_length(&headers);
    let mut out = HttpResponse::build(status);
    for (name, value) in end_to_end(&headers) {
        // The body type below states the length; a 304 has no body, and keeps the upstream's.
        if name == header::CONTENT_LENGTH && status != StatusCode::NOT_MODIFIED {
            continue;
        }
        out.append_header((name.clone(), value.clone()));
    }
    if req.method() == Method::HEAD {
        match length {
            Some(n) if !bodiless(status) => out.body(HeadBody(n)),
            _ => out.body(body::None::new()),
        }
    } else if bodiless(status) {
        out.body(body::None::new())
    } else if let Some(n) = length {
        out.body(SizedStream::new(n, Relay(incoming)))
    } else if req.version() < Version::HTTP_11 {
        out.force_close();
        let mut resp = out.body(BodyStream::new(Relay(incoming)));
        resp.head_mut().no_chunking(true);
        resp
    } else {
        out.body(BodyStream::new(Relay(incoming)))
    }
}

/// Answers a build instruction with the binary: reads and decodes its body (at most 1 MiB,
/// within `upstream_timeout`, to the upstream's close if that is how it ends), parses it as a
/// build request, and hands it to [`serve_build`] with the upstream's other headers.
async fn take_over(
    req: &HttpRequest,
    answer: Answer,
    state: &AppState,
    velox: &VeloxClient,
    upstream: &Upstream,
) -> Result<HttpResponse, ApiError> {
    let Answer { headers, body, .. } = answer;
    let raw = upstream
        .read_limited(body, MAX_BODY_BYTES)
        .await?
        .ok_or_else(|| invalid_instruction("is larger than 1 MiB"))?;
    // Inline: the output is capped at 1 MiB, a few milliseconds of work at worst.
    let json = instruction::decode(&raw, &headers, MAX_BODY_BYTES).map_err(invalid_instruction)?;
    if serde_json::from_slice::<serde::de::IgnoredAny>(&json).is_err() {
        return Err(invalid_instruction("is not JSON"));
    }
    // JSON that breaks docs/build-requests.md's rules is the request's fault, as on the build API: a 400.
    let (build, dropped) = BuildRequest::parse(&json).map_err(|e| {
        ApiError::invalid_request(e.message).with_request_id(e.request_id.as_deref())
    })?;
    if !dropped.is_empty() {
        log::warn!("dropped fields Velox does not know: {}", dropped.join(", "));
    }
    let extra = instruction::copied_headers(&headers);
    serve_build(req, build, state, velox, extra).await
}
