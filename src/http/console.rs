//! The console (docs/console.md): one page for people, embedded in the binary, on both
//! listeners (`/_velox/ui/` on the public one, `/ui/` on the admin one), and the public build
//! routes it reads: `GET /_velox/v1/builds` (builds under way, last failures) and
//! `GET /_velox/v1/builds/events` (Server-Sent Events of builds started, finished, failed).

use std::convert::Infallible;
use std::sync::OnceLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Version;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::Stream;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tokio::sync::broadcast::error::RecvError;

use super::resource::readable;
use super::AppState;
use crate::builds::activity::BuildEvent;

/// Nothing but the page's own files; no inline script or style, no frames, no forms elsewhere.
pub(super) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'; object-src 'none'";

/// One embedded file of the page.
pub(super) struct Asset {
    bytes: &'static [u8],
    content_type: &'static str,
    etag: OnceLock<String>,
}

impl Asset {
    const fn new(bytes: &'static [u8], content_type: &'static str) -> Asset {
        Asset {
            bytes,
            content_type,
            etag: OnceLock::new(),
        }
    }

    fn etag(&self) -> &str {
        self.etag.get_or_init(|| {
            let sum = Sha256::digest(self.bytes);
            format!("\"{}\"", hex::encode(&sum[..16]))
        })
    }

    /// The file, or 304 when the client holds it (`If-None-Match`); revalidated on every use,
    /// since a new binary brings new files under the same names.
    fn respond(&self, req: &HttpRequest) -> HttpResponse {
        let etag = self.etag();
        let held = req
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
        let mut resp = if held {
            HttpResponse::NotModified()
        } else {
            HttpResponse::Ok()
        };
        resp.insert_header((header::ETAG, etag))
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .insert_header((header::REFERRER_POLICY, "no-referrer"))
            .insert_header((header::X_FRAME_OPTIONS, "DENY"));
        if held {
            return resp.finish();
        }
        resp.content_type(self.content_type).body(self.bytes)
    }
}

pub(super) static INDEX: Asset = Asset::new(
    include_bytes!("../../assets/console/index.html"),
    "text/html; charset=utf-8",
);
pub(super) static SCRIPT: Asset = Asset::new(
    include_bytes!("../../assets/console/console.js"),
    "text/javascript; charset=utf-8",
);
pub(super) static STYLE: Asset = Asset::new(
    include_bytes!("../../assets/console/console.css"),
    "text/css; charset=utf-8",
);

pub(super) async fn index(req: HttpRequest) -> HttpResponse {
    INDEX.respond(&req)
}

pub(super) async fn script(req: HttpRequest) -> HttpResponse {
    SCRIPT.respond(&req)
}

pub(super) async fn style(req: HttpRequest) -> HttpResponse {
    STYLE.respond(&req)
}

/// A permanent redirect to `to` (the page lives in a folder so its files load relatively).
pub(super) fn redirect(to: &'static str) -> impl Fn() -> std::future::Ready<HttpResponse> + Clone {
    move || {
        std::future::ready(
            HttpResponse::PermanentRedirect()
                .insert_header((header::LOCATION, to))
                .finish(),
        )
    }
}

/// The console's files and the build events on the public listener; registered before
/// `/_velox/v1/builds/{key}` (which would take `events`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(readable("/_velox/ui", redirect("/_velox/ui/")))
        .service(readable("/_velox/ui/", index))
        .service(readable("/_velox/ui/console.js", script))
        .service(readable("/_velox/ui/console.css", style))
        .service(readable("/_velox/v1/builds/events", events));
}

/// `GET /_velox/v1/builds` (and `/v1/builds` on the admin listener): the builds under way and
/// the last failures.
pub(super) async fn list(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(state.builds.activity().json())
}

/// `GET /_velox/v1/builds/events` (and `/v1/builds/events` on the admin listener):
/// Server-Sent Events: `builds` (the list, at once), then `started`, `finished` and `failed`
/// per build, `lagged` when the watcher fell behind, and a comment line every
/// `sse_keepalive`.
pub(super) async fn events(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let activity = state.builds.activity();
    let receiver = activity.subscribe();
    let first = sse("builds", &activity.json());
    let mut resp = HttpResponse::Ok();
    resp.insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("x-accel-buffering", HeaderValue::from_static("no")));
    let mut stream = resp.streaming(watch(first, receiver, state.config.sse_keepalive));
    if req.version() < Version::HTTP_11 {
        stream.head_mut().no_chunking(true);
        stream
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
    }
    stream
}

fn sse(kind: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

fn watch(
    first: Bytes,
    receiver: tokio::sync::broadcast::Receiver<BuildEvent>,
    keepalive: std::time::Duration,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    futures_util::stream::unfold((Some(first), receiver), move |(first, mut rx)| async move {
        if let Some(first) = first {
            return Some((Ok(first), (None, rx)));
        }
        let item = match tokio::time::timeout(keepalive, rx.recv()).await {
            Err(_) => Bytes::from_static(b": keep-alive\n\n"),
            Ok(Ok(event)) => sse(event.kind, &event.data),
            // A watcher that fell behind reads the list again.
            Ok(Err(RecvError::Lagged(n))) => sse("lagged", &json!({ "missed": n })),
            Ok(Err(RecvError::Closed)) => return None,
        };
        Some((Ok(item), (None, rx)))
    })
}
