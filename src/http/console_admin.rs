//! The operator's console on the admin listener (docs/console.md): `GET /` (a redirect),
//! `GET /ui/` and its files, and the admin JSON the page reads: `/v1/builds`,
//! `/v1/builds/events`, `/v1/history`, `/v1/console`, `/v1/cache/search`, `/v1/cache/pinned`.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::cache_admin::view;
use super::console::{events, index, list, redirect, script, style};
use super::resource::readable;
use super::AppState;
use crate::error::ApiError;
use crate::ids::CacheKey;
use crate::store::EntryRecord;

/// Entries a search looks at, at most: past it the answer says it is incomplete.
const SEARCH_SCAN: usize = 20_000;
const SEARCH_PAGE: usize = 1_000;

/// Registered before `cache_admin`, whose `/v1/cache/{key}` would take `search` and `pinned`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(readable("/", redirect("/ui/")))
        .service(readable("/ui", redirect("/ui/")))
        .service(readable("/ui/", index))
        .service(readable("/ui/console.js", script))
        .service(readable("/ui/console.css", style))
        .service(readable("/v1/builds", list))
        .service(readable("/v1/builds/events", events))
        .service(readable("/v1/history", history))
        .service(readable("/v1/console", console))
        .service(readable("/v1/cache/search", search))
        .service(readable("/v1/cache/pinned", pinned));
}

fn storage(e: crate::store::StoreError) -> ApiError {
    log::error!("console: {e}");
    ApiError::storage_unavailable()
}

/// `GET /v1/history`: hits, misses and bytes served per minute over the last hour.
async fn history(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(state.history.json(&state.metrics, crate::util::now_ms()))
}

/// `GET /v1/console`: what the page needs to write commands for the public listener (its
/// address as bound, the signing keys) and which optional admin routes this server has
/// (`builders`: `GET /v1/builders`), so that the page asks only for what exists.
async fn console(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let listen = state
        .public_addr
        .get()
        .copied()
        .unwrap_or(state.config.listen);
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .json(json!({
            "public_listen": listen.to_string(),
            "public_port": listen.port(),
            "keys": state.trust.keys_json(),
            "builders": req.resource_map().has_resource("/v1/builders"),
        }))
}

#[derive(Deserialize)]
struct Search {
    q: Option<String>,
    limit: Option<usize>,
}

/// The recipe an entry was built from, from its manifest: `rr_version` and plugins.
fn recipe(state: &AppState, key: &CacheKey) -> (Value, Vec<(String, String)>) {
    let Some(manifest) = state.store.manifest(key) else {
        return (Value::Null, Vec::new());
    };
    let plugins = manifest.request["plugins"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let s = |f: &str| p[f].as_str().unwrap_or_default().to_string();
                    (s("module_name"), s("tag"))
                })
                .collect()
        })
        .unwrap_or_default();
    (manifest.request["rr_version"].clone(), plugins)
}

fn entry_json(
    state: &AppState,
    key: &CacheKey,
    e: &EntryRecord,
    recipe: (Value, Vec<(String, String)>),
) -> Value {
    let mut v = view(state, key, e);
    v["rr_version"] = recipe.0;
    v["plugins"] = recipe
        .1
        .into_iter()
        .map(|(m, t)| json!({"module_name": m, "tag": t}))
        .collect();
    v
}

/// `GET /v1/cache/search?q=&limit=`: entries whose key, digest or a plugin's module or tag
/// contains `q` (case-insensitive; every entry when empty), in key order, each with its
/// `rr_version` and plugins. Looks at the first 20,000 entries at most (`complete` says
/// whether it saw them all).
async fn search(
    state: web::Data<AppState>,
    query: web::Query<Search>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid_request(
            "`limit` must be between 1 and 500",
        ));
    }
    let q = query.q.as_deref().unwrap_or("").trim().to_lowercase();
    if q.len() > 256 {
        return Err(ApiError::invalid_request("`q` is at most 256 characters"));
    }
    let st = state.clone();
    let (found, complete) = web::block(move || -> Result<(Vec<Value>, bool), ApiError> {
        let mut found = Vec::new();
        let mut after: Option<CacheKey> = None;
        let mut scanned = 0;
        loop {
            let page = st
                .store
                .list(after.as_ref(), SEARCH_PAGE)
                .map_err(storage)?;
            let Some((last, _)) = page.last() else {
                return Ok((found, true));
            };
            after = Some(*last);
            for (key, e) in &page {
                scanned += 1;
                let named =
                    q.is_empty() || key.to_hex().contains(&q) || e.digest.to_hex().contains(&q);
                let recipe = recipe(&st, key);
                let by_plugin = !named
                    && recipe.1.iter().any(|(m, t)| {
                        m.to_lowercase().contains(&q) || t.to_lowercase().contains(&q)
                    });
                if named || by_plugin {
                    found.push(entry_json(&st, key, e, recipe));
                    if found.len() == limit {
                        return Ok((found, false));
                    }
                }
            }
            if page.len() < SEARCH_PAGE {
                return Ok((found, true));
            }
            if scanned >= SEARCH_SCAN {
                return Ok((found, false));
            }
        }
    })
    .await
    .map_err(|_| ApiError::storage_unavailable())??;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({"entries": found, "complete": complete})))
}

/// `GET /v1/cache/pinned`: every pinned entry with what holds it (`manual`, or the channel).
async fn pinned(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let st = state.clone();
    let entries = web::block(move || -> Result<Vec<Value>, ApiError> {
        let mut out = Vec::new();
        for (key, holders) in st.store.pinned().map_err(storage)? {
            let mut v = match st.store.lookup(&key).map_err(storage)? {
                Some(e) => entry_json(&st, &key, &e, recipe(&st, &key)),
                None => json!({"key": key.to_hex(), "digest": null}),
            };
            v["pins"] = json!(holders);
            out.push(v);
        }
        Ok(out)
    })
    .await
    .map_err(|_| ApiError::storage_unavailable())??;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "entries": entries })))
}
