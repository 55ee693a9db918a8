//! Channel and pin management on the admin listener (docs/channels.md): `PUT`, `DELETE
//! /v1/channels/{name}` (and `GET`, as on the public listener), `POST`, `DELETE
//! /v1/cache/{key}/pin`. Changes need the token when `api_token` is set.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::channels::{channel_error, list, show};
use super::public::check_token;
use super::resource::{readable, resource};
use super::AppState;
use crate::config::ChannelConfig;
use crate::error::ApiError;
use crate::ids::CacheKey;

/// Largest channel definition accepted.
const MAX_DEFINITION_BYTES: usize = 256 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(readable("/v1/channels", list))
        .service(
            resource("/v1/channels/{name}", "GET, HEAD, PUT, DELETE")
                .route(web::get().to(show))
                .route(web::head().to(show))
                .route(web::put().to(put))
                .route(web::delete().to(delete)),
        )
        .service(
            resource("/v1/cache/{key}/pin", "POST, DELETE")
                .route(web::post().to(pin))
                .route(web::delete().to(unpin)),
        );
}

/// The request body, at most [`MAX_DEFINITION_BYTES`] (a 413 JSON error past it, declared or
/// not).
async fn read_capped(req: &HttpRequest, mut payload: web::Payload) -> Result<Vec<u8>, ApiError> {
    use futures_util::StreamExt;
    let too_large = || ApiError::payload_too_large("a channel definition is at most 256 KiB");
    if super::content_length(req.headers()).is_some_and(|n| n > MAX_DEFINITION_BYTES as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::invalid_request(format!("the body was cut: {e}")))?;
        if body.len() + chunk.len() > MAX_DEFINITION_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The definition from a `PUT` body: the file's form (`rr_version`, `plugins`, ...,
/// `platforms`, `keep`), or the channel JSON's (`recipe` holding the recipe; `name` matching
/// the path; the read-only fields of a `GET` ignored), so that a `GET`'s answer can be edited
/// and sent back.
fn definition(name: &str, body: &[u8]) -> Result<ChannelConfig, ApiError> {
    if body.len() > MAX_DEFINITION_BYTES {
        return Err(ApiError::payload_too_large(
            "a channel definition is at most 256 KiB",
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(mut map) = value else {
        return Err(ApiError::invalid_request(
            "a channel definition is a JSON object",
        ));
    };
    if let Some(given) = map.remove("name") {
        if given.as_str() != Some(name) {
            return Err(ApiError::invalid_request(format!(
                "invalid `name`: the body names another channel than the path (`{name}`)"
            )));
        }
    }
    for read_only in ["origin", "current", "releases", "prebuild"] {
        map.remove(read_only);
    }
    if let Some(recipe) = map.remove("recipe") {
        let Value::Object(recipe) = recipe else {
            return Err(ApiError::invalid_request(
                "invalid `recipe`: must be a JSON object",
            ));
        };
        for (k, v) in recipe {
            if map.insert(k.clone(), v).is_some() {
                return Err(ApiError::invalid_request(format!(
                    "invalid `{k}`: given both in `recipe` and beside it"
                )));
            }
        }
    }
    serde_json::from_value(Value::Object(map))
        .map_err(|e| ApiError::invalid_request(format!("invalid channel definition: {e}")))
}

/// `PUT /v1/channels/{name}`: 201 for a new channel, 200 for a changed (or unchanged) one.
async fn put(
    req: HttpRequest,
    name: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_token(&req, &state)?;
    let body = read_capped(&req, payload).await?;
    let spec = definition(&name, &body)?;
    let (record, created) = state
        .channels
        .put(&name, spec)
        .await
        .map_err(channel_error)?;
    let mut resp = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(resp
        .insert_header((
            actix_web::http::header::LOCATION,
            format!("/_velox/v1/channels/{}", record.name),
        ))
        .json(state.channels.json(&record)))
}

/// `DELETE /v1/channels/{name}`: 204. The releases are unpinned; no binary is deleted.
async fn delete(
    req: HttpRequest,
    name: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_token(&req, &state)?;
    state.channels.delete(&name).await.map_err(channel_error)?;
    Ok(HttpResponse::NoContent().finish())
}

fn pin_json(key: &CacheKey, holders: std::collections::BTreeSet<String>) -> Value {
    json!({"key": key.to_hex(), "pinned": !holders.is_empty(), "pins": holders})
}

async fn set_pin(
    req: HttpRequest,
    key: web::Path<String>,
    state: web::Data<AppState>,
    pin: bool,
) -> Result<HttpResponse, ApiError> {
    check_token(&req, &state)?;
    let key =
        CacheKey::from_hex(&key).ok_or_else(|| ApiError::not_found("no entry has that key"))?;
    let st = state.clone();
    let holders = web::block(move || {
        if pin && st.store.lookup(&key)?.is_none() {
            return Ok(None);
        }
        st.store.pin_manually(&key, pin)?;
        st.store.pins(&key).map(Some)
    })
    .await
    .map_err(|_| ApiError::storage_unavailable())?
    .map_err(|e: crate::store::StoreError| {
        log::error!("pin {key}: {e}");
        ApiError::storage_unavailable()
    })?
    .ok_or_else(|| ApiError::not_found("no entry has that key"))?;
    Ok(HttpResponse::Ok().json(pin_json(&key, holders)))
}

/// `POST /v1/cache/{key}/pin`: the entry is never evicted until unpinned.
async fn pin(
    req: HttpRequest,
    key: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    set_pin(req, key, state, true).await
}

/// `DELETE /v1/cache/{key}/pin`: removes the pin made by hand (a channel's stay).
async fn unpin(
    req: HttpRequest,
    key: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    set_pin(req, key, state, false).await
}

#[cfg(test)]
mod tests {
    use super::definition;

    #[test]
    fn a_definition_reads_in_both_forms() {
        let flat = definition(
            "prod",
            br#"{"rr_version": "v2025.1.2", "plugins": [{"module_name": "m", "tag": "latest"}], "keep": 2}"#,
        )
        .expect("flat");
        let nested = definition(
            "prod",
            br#"{"name": "prod", "recipe": {"rr_version": "v2025.1.2", "plugins": [{"module_name": "m", "tag": "latest"}]}, "keep": 2, "current": null, "releases": []}"#,
        )
        .expect("nested");
        assert_eq!(flat, nested);
        for bad in [
            &br#"{"name": "other"}"#[..],
            br#"{"recipe": 1}"#,
            br#"{"rr_version": "a", "recipe": {"rr_version": "b"}}"#,
            br#"{"rr_version": "a", "unknown": 1}"#,
            br#"[]"#,
            b"{",
        ] {
            let e = definition("prod", bad).expect_err("refused");
            assert_eq!(e.code, crate::error::ErrorCode::InvalidRequest, "{e:?}");
        }
    }
}
