//! Proxy mode (docs/http-api.md): with `upstream` set, every public request that no `/_velox/` route takes
//! goes to the upstream PHP app. Its answer streams back unchanged, unless it is a build
//! instruction (a 2xx with `X-Velox-Build: true`), which velox-cache answers with the binary.
//!
//! The forwarded request is built by hand: awc's `request_from` collapses repeated headers and
//! copies hop-by-hop ones. Every upstream request goes with `no_decompress` (a pass-through body
//! keeps its bytes and its `Content-Encoding`; instructions are decoded in [`instruction`]),
//! without awc's default headers, and without following redirects.

mod instruction;

use std::cell::Cell;
use std::future::Future;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{self, BodyStream, BoxBody, SizedStream};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode, Version};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use awc::error::{PayloadError, SendRequestError};
use futures_util::StreamExt;
use tokio::time::Instant;

use super::body::HeadBody;
use super::public::{self, serve_build};
use super::{content_length, AppState};
use crate::builds::{BuildRequest, VeloxClient, MAX_BODY_BYTES};
use crate::config::Config;
use crate::error::{ApiError, ErrorCode};

/// One worker's way to the upstream (awc's client is not `Send`).
pub struct Upstream {
    client: awc::Client,
    /// `upstream` without a trailing slash; the request's path and query are appended.
    base: String,
    timeout: Duration,
}

impl Upstream {
    /// `None` when proxy mode is off.
    pub fn new(config: &Config, tls: &Arc<rustls::ClientConfig>) -> Option<Upstream> {
        let base = config.upstream.as_deref()?.trim_end_matches('/').to_owned();
        let connector = awc::Connector::new()
            .rustls_0_23(Arc::clone(tls))
            .timeout(config.upstream_timeout)
            .handshake_timeout(config.upstream_timeout)
            // awc's default of 100 connections per worker would queue requests behind long
            // pass-through downloads; the upstream's own limits apply instead.
            .limit(0);
        let client = awc::Client::builder()
            .connector(connector)
            .disable_redirects()
            // `upstream_timeout` bounds the wait for the head only; see `until_idle`.
            .disable_timeout()
            // No `Date` or `User-Agent` of awc's: the client's go through as they are.
            .no_default_headers()
            .finish();
        Some(Upstream {
            client,
            base,
            timeout: config.upstream_timeout,
        })
    }
}

/// RFC 9110 §7.6.1's hop-by-hop fields, and `Proxy-Connection`, which old clients still send.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// The fields of `headers` that may cross this hop, repeated ones as often as they came: all but
/// the hop-by-hop ones and those the message names in `Connection`.
fn end_to_end(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    headers.iter().filter(move |(name, _)| {
        let name = name.as_str();
        !HOP_BY_HOP.contains(&name) && !named.iter().any(|t| t == name)
    })
}

/// The headers sent upstream: the client's end-to-end ones, and `X-Forwarded-For` (the peer
/// appended to any the client sent), `-Proto` and `-Host` (ours: nothing vouches for a client's).
fn forward_headers(from: &HeaderMap, peer: Option<IpAddr>, proto: &'static str) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(from.len() + 3);
    let mut forwarded_for: Vec<&str> = Vec::new();
    for (name, value) in end_to_end(from) {
        match name.as_str() {
            "x-forwarded-for" => forwarded_for.extend(value.to_str().ok()),
            "x-forwarded-proto" | "x-forwarded-host" => {}
            // actix has answered `Expect: 100-continue` itself, and the body's type below states
            // its length.
            "expect" | "content-length" => {}
            _ => out.append(name.clone(), value.clone()),
        }
    }
    let peer = peer.map(|ip| ip.to_string());
    forwarded_for.extend(peer.as_deref());
    if let Ok(v) = HeaderValue::from_str(&forwarded_for.join(", ")) {
        if !v.is_empty() {
            out.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
    }
    out.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(proto),
    );
    if let Some(host) = from.get(header::HOST) {
        out.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
    out
}

fn upstream_unavailable(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::UpstreamUnavailable, message)
}

fn invalid_instruction(message: impl Into<String>) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidBuildInstruction,
        format!("the upstream's build instruction {}", message.into()),
    )
}

/// Awaits `fut` until it has made no progress for `timeout`; progress is the time kept in
/// `last`, moved on by every chunk of request body sent. So a long upload is not cut short, and
/// an upstream that takes the body and then says nothing is.
async fn until_idle<F: Future>(
    fut: F,
    last: &Cell<Instant>,
    timeout: Duration,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return Some(out),
            _ = tokio::time::sleep_until(last.get() + timeout) => {
                if last.get() + timeout <= Instant::now() {
                    return None;
                }
            }
        }
    }
}

/// How a proxied request ended, for `velox_proxy_requests_total`.
enum Answer {
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
    match proxy(&req, payload, &state, &velox, upstream).await {
        Ok(Answer::Passed(resp)) => {
            metrics.proxy_passed.fetch_add(1, Ordering::Relaxed);
            resp
        }
        Ok(Answer::Build(resp)) => {
            metrics.proxy_build.fetch_add(1, Ordering::Relaxed);
            resp
        }
        Err(e) => {
            metrics.proxy_error.fetch_add(1, Ordering::Relaxed);
            log::warn!("{} {}: {e}", req.method(), req.path());
            e.error_response()
        }
    }
}

/// What awc answers with when asked not to decompress.
type UpstreamResponse = awc::ClientResponse<actix_web::dev::Decompress<actix_web::dev::Payload>>;

async fn proxy(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    velox: &VeloxClient,
    upstream: &Upstream,
) -> Result<Answer, ApiError> {
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path_and_query}", upstream.base);
    let proto = if req.app_config().secure() {
        "https"
    } else {
        "http"
    };
    let headers = forward_headers(req.headers(), req.peer_addr().map(|a| a.ip()), proto);

    let last = Rc::new(Cell::new(Instant::now()));
    let sent = Rc::clone(&last);
    let payload = payload.inspect(move |_| sent.set(Instant::now()));
    // A client's Content-Length is kept (awc would send any stream chunked), chunked stays
    // chunked, and a request without a body gets none.
    let body = if req.headers().contains_key(header::TRANSFER_ENCODING) {
        BoxBody::new(BodyStream::new(payload))
    } else if let Some(length) = content_length(req.headers()) {
        BoxBody::new(SizedStream::new(length, payload))
    } else {
        BoxBody::new(body::None::new())
    };
    let method = req.method().clone();
    let mut resp = send(upstream, method.clone(), &url, headers.clone(), body, &last).await?;
    let mut sent_method = method;
    if sent_method == Method::HEAD
        && instruction::is_build_instruction(resp.status(), resp.headers())
    {
        // A HEAD answer has no body to read the instruction from. HEAD stands for GET without
        // the body (RFC 9110 §9.3.2): ask again with GET; the binary's headers answer the HEAD.
        sent_method = Method::GET;
        let none = BoxBody::new(body::None::new());
        let last = Cell::new(Instant::now());
        resp = send(upstream, Method::GET, &url, headers, none, &last).await?;
    }
    if close_delimited(&sent_method, &resp) {
        return Err(upstream_unavailable(
            "the upstream application ended its answer by closing the connection, without \
             Content-Length or chunked encoding, which velox-cache cannot relay whole \
             (PHP's built-in server does this; RoadRunner, nginx and Apache do not)",
        ));
    }
    if instruction::is_build_instruction(resp.status(), resp.headers()) {
        take_over(req, resp, state, velox, upstream.timeout)
            .await
            .map(Answer::Build)
    } else {
        Ok(Answer::Passed(pass_through(req, resp)))
    }
}

/// Sends one request upstream and waits for the head, for at most `upstream_timeout` of
/// inactivity (see [`until_idle`]; `last` moves on as the body is sent).
async fn send(
    upstream: &Upstream,
    method: Method,
    url: &str,
    headers: HeaderMap,
    body: BoxBody,
    last: &Cell<Instant>,
) -> Result<UpstreamResponse, ApiError> {
    let mut request = upstream.client.request(method, url).no_decompress();
    *request.headers_mut() = headers;
    match until_idle(request.send_body(body), last, upstream.timeout).await {
        Some(Ok(resp)) => Ok(resp),
        Some(Err(SendRequestError::Body(e))) => Err(ApiError::invalid_request(format!(
            "cannot read the request body: {e}"
        ))),
        Some(Err(e)) => {
            log::warn!("upstream {}: {e}", upstream.base);
            Err(upstream_unavailable(
                "the upstream application cannot be reached",
            ))
        }
        None => Err(upstream_unavailable(format!(
            "the upstream application did not answer within {}",
            humantime::format_duration(upstream.timeout)
        ))),
    }
}

/// Statuses that never carry a body (RFC 9110 §6.4.1).
fn bodiless(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Whether an answer's body runs to the connection's close (RFC 9112 §6.3: HTTP/1.1, neither
/// Content-Length nor Transfer-Encoding). awc reads such a body as empty (actix/actix-web#2287),
/// so relaying it would cut it silently; it is refused instead. HTTP/1.0 answers awc reads whole.
fn close_delimited(method: &Method, resp: &UpstreamResponse) -> bool {
    let status = resp.status();
    resp.version() == Version::HTTP_11
        && method != Method::HEAD
        && !bodiless(status)
        && !resp.headers().contains_key(header::CONTENT_LENGTH)
        && !resp.headers().contains_key(header::TRANSFER_ENCODING)
}

/// Relays the upstream's answer as it comes: never buffered whole, never decoded.
fn pass_through(req: &HttpRequest, resp: UpstreamResponse) -> HttpResponse {
    let status = resp.status();
    let length = content_length(resp.headers());
    let mut out = HttpResponse::build(status);
    for (name, value) in end_to_end(resp.headers()) {
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
        out.body(SizedStream::new(n, resp))
    } else {
        out.body(BodyStream::new(resp))
    }
}

/// Answers a build instruction with the binary: reads and decodes its body (at most 1 MiB,
/// within `upstream_timeout`), parses it as a build request, and hands it to [`serve_build`] with
/// the upstream's other headers.
async fn take_over(
    req: &HttpRequest,
    mut resp: UpstreamResponse,
    state: &AppState,
    velox: &VeloxClient,
    timeout: Duration,
) -> Result<HttpResponse, ApiError> {
    let raw = match tokio::time::timeout(timeout, resp.body().limit(MAX_BODY_BYTES)).await {
        Ok(Ok(raw)) => raw,
        Ok(Err(PayloadError::Overflow)) => return Err(invalid_instruction("is larger than 1 MiB")),
        Ok(Err(e)) => {
            log::warn!("reading a build instruction: {e}");
            return Err(upstream_unavailable(
                "the upstream application broke off its answer",
            ));
        }
        Err(_) => {
            return Err(upstream_unavailable(format!(
                "the upstream application did not finish its answer within {}",
                humantime::format_duration(timeout)
            )))
        }
    };
    // Inline: the output is capped at 1 MiB, a few milliseconds of work at worst.
    let json =
        instruction::decode(&raw, resp.headers(), MAX_BODY_BYTES).map_err(invalid_instruction)?;
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
    let extra = instruction::copied_headers(resp.headers());
    serve_build(req, build, state, velox, extra).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        m
    }

    fn values<'a>(m: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        m.get_all(name).filter_map(|v| v.to_str().ok()).collect()
    }

    #[test]
    fn forwarded_headers_keep_repeats_and_drop_hop_by_hop() {
        let from = map(&[
            ("host", "public.example"),
            ("accept", "text/html"),
            ("accept", "application/json"),
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "hop"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("expect", "100-continue"),
            ("content-length", "12"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2, 10.0.0.3"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed.example"),
        ]);
        let out = forward_headers(&from, Some("192.0.2.7".parse().expect("ip")), "http");
        assert_eq!(values(&out, "accept"), ["text/html", "application/json"]);
        assert_eq!(values(&out, "host"), ["public.example"]);
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "upgrade",
            "proxy-authorization",
            "proxy-connection",
            "transfer-encoding",
            "expect",
            "content-length",
        ] {
            assert!(!out.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(
            values(&out, "x-forwarded-for"),
            ["10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7"]
        );
        assert_eq!(values(&out, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&out, "x-forwarded-host"), ["public.example"]);
    }

    #[test]
    fn forwarded_for_starts_with_the_peer() {
        let out = forward_headers(&map(&[]), Some("::1".parse().expect("ip")), "https");
        assert_eq!(values(&out, "x-forwarded-for"), ["::1"]);
        assert_eq!(values(&out, "x-forwarded-proto"), ["https"]);
        assert!(!out.contains_key("x-forwarded-host"));
    }

    #[actix_web::test]
    async fn idle_timeout_waits_while_the_body_moves() {
        let last = Rc::new(Cell::new(Instant::now()));
        let timeout = Duration::from_millis(200);
        // Progress every 50 ms for 600 ms: three timeouts' worth, never idle for one.
        let mover = Rc::clone(&last);
        let work = async move {
            for _ in 0..12 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                mover.set(Instant::now());
            }
            "done"
        };
        assert_eq!(until_idle(work, &last, timeout).await, Some("done"));
        let stalled = std::future::pending::<()>();
        assert_eq!(until_idle(stalled, &last, timeout).await, None);
    }
}
