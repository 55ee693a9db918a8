//! Admin routes (docs/http-api.md), on the loopback listener: `/healthz`, `/readyz`, `/metrics`;
//! a wrong method on any admin route is a 405 JSON naming the right ones.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::builds::VeloxHealth;
use crate::error::ApiError;
use crate::store::shared::SharedHealth;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(readable("/healthz", healthz))
        .service(readable("/readyz", readyz))
        .service(readable("/metrics", metrics))
        .configure(super::cache_admin::configure);
}

/// A resource whose other methods answer 405 JSON naming `allow`.
pub(super) fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        ApiError::method_not_allowed(allow)
    }))
}

/// A read-only resource: `GET` and `HEAD` (monitors probe with either), 405 for the rest.
pub(super) fn readable<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    resource(path, "GET, HEAD")
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
}

/// `GET /healthz`: 200 while the process serves.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when sled takes a write and the data dir a file, else 503.
async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let storage = web::block(move || store.check_ready())
        .await
        .map_err(|_| ApiError::storage_unavailable())?;
    let velox = match state.builds.velox_health() {
        VeloxHealth::Unknown => "not_called_yet",
        VeloxHealth::Answered => "answered",
        VeloxHealth::Unreachable => "unreachable",
    };
    let ready = storage.is_ok();
    // The bucket's state is reported, not required: with the bucket down, local hits are still
    // served, and every replica shares the bucket, so failing readiness would take all of them
    // out of the load balancer at once.
    let bucket = state.builds.shared().health().await;
    let mut body = json!({
        "ready": ready,
        "storage": storage.err().unwrap_or_else(|| "ok".into()),
        "velox_last_call": velox,
    });
    if bucket != SharedHealth::NotConfigured {
        body["bucket"] = json!(bucket.as_str());
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(HttpResponse::build(status).json(body))
}

/// `GET /metrics`: Prometheus text.
async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let totals = state
        .store
        .totals()
        .map_err(|e| log::error!("cannot read the cache totals: {e}"))
        .ok();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render(totals))
}
