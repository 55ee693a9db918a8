//! Cache inspection and management on the admin listener (docs/http-api.md): `/v1/cache`,
//! `/v1/cache/stats`, `/v1/cache/{key}` (GET, DELETE) and `/v1/cache/cleanup`.

use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::public::check_token;
use super::resource::{readable, resource};
use super::AppState;
use crate::error::ApiError;
use crate::ids::CacheKey;
use crate::store::{EntryRecord, EvictionReason, Limits, StoreError};

pub fn configure(cfg: &mut web::ServiceConfig) {
    // The fixed paths first: `{key}` would take `stats` and `cleanup` too.
    cfg.service(readable("/v1/cache", list))
        .service(readable("/v1/cache/stats", stats))
        .service(resource("/v1/cache/cleanup", "POST").route(web::post().to(cleanup)))
        .service(
            resource("/v1/cache/{key}", "GET, HEAD, DELETE")
                .route(web::get().to(show))
                .route(web::head().to(show))
                .route(web::delete().to(delete)),
        );
}

fn storage(e: StoreError) -> ApiError {
    log::error!("cache admin: {e}");
    ApiError::storage_unavailable()
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// An entry as JSON from its index record alone, with the hits not yet written counted in.
pub(super) fn view(state: &AppState, key: &CacheKey, e: &EntryRecord) -> Value {
    let pending = state.store.pending_hits(key);
    let digest = e.digest.to_hex();
    json!({
        "key": key.to_hex(),
        "digest": digest,
        "size": e.size,
        "file_name": e.file_name,
        "created_at": rfc3339(e.created_ms),
        "last_access_at": rfc3339(e.last_access_ms.max(pending.last_ms)),
        "access_count": e.access_count + pending.count,
        "build_seconds": e.build_ms as f64 / 1000.0,
        "url": format!("/_velox/v1/artifacts/{digest}"),
        "pins": state.store.pins(key).unwrap_or_default(),
    })
}

fn parse_key(s: &str) -> Result<CacheKey, ApiError> {
    CacheKey::from_hex(s).ok_or_else(|| ApiError::not_found("no entry has that key"))
}

#[derive(Deserialize)]
struct Page {
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /v1/cache?limit=&after=`: entries in key order; `next` is the `after` of the next page.
/// Reads the index alone (a page costs no file per entry): the `floating` marker, which only
/// the manifest holds, is given by `GET /v1/cache/{key}`.
async fn list(
    state: web::Data<AppState>,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    let limit = page.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid_request(
            "`limit` must be between 1 and 1000",
        ));
    }
    let after = match &page.after {
        Some(a) => Some(CacheKey::from_hex(a).ok_or_else(|| {
            ApiError::invalid_request("`after` must be a cache key (64 hex digits)")
        })?),
        None => None,
    };
    let st = state.clone();
    let items = web::block(move || st.store.list(after.as_ref(), limit))
        .await
        .map_err(|_| ApiError::storage_unavailable())?
        .map_err(storage)?;
    let next = (items.len() == limit)
        .then(|| items.last().map(|(k, _)| k.to_hex()))
        .flatten();
    let entries: Vec<Value> = items.iter().map(|(k, e)| view(&state, k, e)).collect();
    Ok(HttpResponse::Ok().json(json!({"entries": entries, "next": next})))
}

/// `GET /v1/cache/stats`
async fn stats(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let totals = state.store.totals().map_err(storage)?;
    let m = &state.metrics;
    let hits = m.hits.get();
    let misses = m.misses.load(Ordering::Relaxed);
    let c = &state.config.cache;
    let ratio = if hits + misses == 0 {
        0.0
    } else {
        hits as f64 / (hits + misses) as f64
    };
    Ok(HttpResponse::Ok().json(json!({
        "entries": totals.entries,
        "bytes": totals.bytes,
        "limits": {
            "max_size_gb": c.max_size_gb,
            "max_bytes": Limits::from(c).max_bytes,
            "max_entries": c.max_entries,
            "max_age_days": c.max_age_days,
        },
        "policy": c.eviction_policy,
        "hits": hits,
        "misses": misses,
        "hit_ratio": ratio,
        "builds_in_flight": state.builds.in_flight(),
        // Lets `velox-cache cache stats` check that it asked the server of its own data dir.
        "data_dir": std::fs::canonicalize(&state.config.data_dir)
            .unwrap_or_else(|_| state.config.data_dir.clone()),
    })))
}

/// `GET /v1/cache/{key}`
async fn show(
    state: web::Data<AppState>,
    key: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = parse_key(&key)?;
    let entry = state
        .store
        .lookup(&key)
        .map_err(storage)?
        .ok_or_else(|| ApiError::not_found("no entry has that key"))?;
    let mut body = view(&state, &key, &entry);
    // Built from `latest` or a branch: served only for `cache.floating_ttl`.
    body["floating"] = json!(state
        .store
        .manifest(&key)
        .and_then(|m| crate::builds::floating::payload_is_floating(&m.request)));
    // Its compressed variants (docs/compression.md): `null` until made, or when the coding
    // saves too little to be kept.
    let mut variants = serde_json::Map::new();
    for enc in crate::store::Encoding::ALL {
        let v = state.store.variant(&entry.digest, enc).map_err(storage)?;
        variants.insert(
            enc.as_str().to_owned(),
            v.map_or(
                Value::Null,
                |v| json!({"digest": v.digest.to_hex(), "size": v.size}),
            ),
        );
    }
    body["variants"] = Value::Object(variants);
    Ok(HttpResponse::Ok().json(body))
}

/// `DELETE /v1/cache/{key}`: removes the entry, and its blob when no other entry uses it. With a
/// bucket, its manifest there goes first (the bucket's blob stays: lifecycle rules govern it).
async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    key: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    check_token(&req, &state)?;
    let key = parse_key(&key)?;
    // A pinned entry is a channel's release or an operator's decision: it is unpinned first
    // (a channel's pins go with its release or the channel).
    let pins = state.store.pins(&key).map_err(storage)?;
    if !pins.is_empty() {
        let holders: Vec<String> = pins.into_iter().collect();
        return Err(ApiError::new(
            crate::error::ErrorCode::Conflict,
            format!(
                "the entry is pinned ({}): unpin it first (DELETE /v1/cache/{key}/pin), or delete or change the channel",
                holders.join(", ")
            ),
        ));
    }
    let in_bucket = state.builds.shared().forget(key).await.map_err(|e| {
        log::error!("cache admin: deleting the manifest of {key} in the bucket failed: {e}");
        let mut err = ApiError::storage_unavailable();
        err.retry_after = Some(5);
        err
    })?;
    let st = state.clone();
    let removed = web::block(move || st.store.remove(&key))
        .await
        .map_err(|_| ApiError::storage_unavailable())?
        .map_err(storage)?;
    match removed {
        Some(entry) => {
            state.metrics.evicted(EvictionReason::Manual);
            log::info!("deleted {key} on request");
            Ok(HttpResponse::Ok()
                .json(json!({"deleted": key.to_hex(), "digest": entry.digest.to_hex()})))
        }
        None if in_bucket => {
            log::info!("deleted the bucket's manifest of {key} on request");
            Ok(HttpResponse::Ok().json(json!({"deleted": key.to_hex(), "digest": null})))
        }
        None => Err(ApiError::not_found("no entry has that key")),
    }
}

/// `POST /v1/cache/cleanup`: enforces the age, size and count limits now.
async fn cleanup(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    check_token(&req, &state)?;
    let st = state.clone();
    let evicted = web::block(move || {
        crate::background::cleanup(&st.store, &Limits::from(&st.config.cache), &st.metrics)
    })
    .await
    .map_err(|_| ApiError::storage_unavailable())?;
    let totals = state.store.totals().map_err(storage)?;
    Ok(HttpResponse::Ok().json(json!({
        "evicted": evicted,
        "entries": totals.entries,
        "bytes": totals.bytes,
    })))
}
