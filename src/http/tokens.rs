//! Admin routes for access (docs/access.md): `GET`/`POST /v1/tokens`, `DELETE
//! /v1/tokens/{name}`, `POST /v1/signed-urls`; and the build ticket a build request carries
//! (its scope checked when it starts a build, its quota counted, its turn in the queue).

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::resource::resource;
use super::AppState;
use crate::auth::token::{self, Scope, Secret, TokenRecord};
use crate::auth::{unix_now, Caller};
use crate::builds::{BuildRequest, BuildTicket, CacheKey, KeyState};
use crate::error::{ApiError, ErrorCode};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/v1/tokens", "GET, HEAD, POST")
            .route(web::get().to(list))
            .route(web::head().to(list))
            .route(web::post().to(create)),
    )
    .service(resource("/v1/tokens/{name}", "DELETE").route(web::delete().to(revoke)))
    .service(resource("/v1/signed-urls", "POST").route(web::post().to(sign)));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    name: String,
    scope: String,
    #[serde(default)]
    channels: Vec<String>,
    expires_in: Option<String>,
    max_concurrent_builds: Option<u32>,
    builds_per_hour: Option<u32>,
}

fn duration(field: &str, text: &str) -> Result<u64, ApiError> {
    let d = humantime::parse_duration(text).map_err(|e| {
        ApiError::invalid_request(format!(
            "invalid `{field}`: {e} (a duration such as 90d or 1h)"
        ))
    })?;
    if d.as_secs() == 0 {
        return Err(ApiError::invalid_request(format!(
            "invalid `{field}`: must be at least 1s"
        )));
    }
    Ok(d.as_secs())
}

/// `GET /v1/tokens`: every token (revoked ones too), never a secret or its hash.
async fn list(state: web::Data<AppState>) -> HttpResponse {
    let tokens = state.auth.tokens();
    let list: Vec<_> = tokens.records().map(TokenRecord::public_json).collect();
    HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(json!({ "tokens": list }))
}

/// `POST /v1/tokens`: 201 with the token's fields and `token`, the only time the secret is
/// shown. A name in use by a live token is a 409; a revoked one's name may be used again.
async fn create(
    body: web::Json<CreateToken>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    if !token::valid_name(&body.name) {
        return Err(ApiError::invalid_request(
            "invalid `name`: 1 to 64 of letters, digits, `.`, `_` and `-`, starting with a letter or digit",
        ));
    }
    let scope = Scope::parse(&body.scope).ok_or_else(|| {
        ApiError::invalid_request("invalid `scope`: one of `read`, `build`, `admin`")
    })?;
    if body.channels.len() > 64 {
        return Err(ApiError::invalid_request(
            "invalid `channels`: at most 64 globs",
        ));
    }
    if let Some(bad) = body.channels.iter().find(|g| !token::valid_channel_glob(g)) {
        return Err(ApiError::invalid_request(format!(
            "invalid `channels`: `{bad}` is not a channel-name glob"
        )));
    }
    if body.max_concurrent_builds == Some(0) || body.builds_per_hour == Some(0) {
        return Err(ApiError::invalid_request(
            "invalid quota: `max_concurrent_builds` and `builds_per_hour` are at least 1 (leave them out for no limit)",
        ));
    }
    let now = unix_now();
    let expires_at = match &body.expires_in {
        Some(t) => Some(now.saturating_add(duration("expires_in", t)?)),
        None => None,
    };
    let secret = Secret::generate().map_err(|_| {
        log::error!("no randomness for a token");
        ApiError::internal()
    })?;
    let record = TokenRecord {
        name: body.name.clone(),
        hash: secret.hash().to_hex(),
        scope,
        channels: body.channels,
        created_at: now,
        expires_at,
        max_concurrent_builds: body.max_concurrent_builds,
        builds_per_hour: body.builds_per_hour,
        revoked_at: None,
    };
    let kept = record.clone();
    state
        .auth
        .change(move |records| {
            if records
                .iter()
                .any(|r| r.name == kept.name && r.revoked_at.is_none())
            {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "a token named `{}` exists: revoke it first (DELETE /v1/tokens/{})",
                        kept.name, kept.name
                    ),
                ));
            }
            records.retain(|r| r.name != kept.name);
            records.push(kept.clone());
            Ok(())
        })
        .await?;
    log::info!("token `{}` made with scope {scope}", record.name);
    let mut out = record.public_json();
    out["token"] = json!(secret.expose());
    Ok(HttpResponse::Created()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(out))
}

/// `DELETE /v1/tokens/{name}`: 204; the token is refused from now on (on every replica within
/// `auth.refresh`).
async fn revoke(
    name: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    let now = unix_now();
    let target = name.clone();
    state
        .auth
        .change(move |records| {
            match records
                .iter_mut()
                .find(|r| r.name == target && r.revoked_at.is_none())
            {
                Some(r) => {
                    r.revoked_at = Some(now);
                    Ok(())
                }
                None => Err(ApiError::not_found(format!(
                    "no live token is named `{target}`"
                ))),
            }
        })
        .await?;
    log::info!("token `{name}` revoked");
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignRequest {
    path: String,
    expires_in: Option<String>,
}

/// `POST /v1/signed-urls`: `{"url", "expires_at"}` for a GET/HEAD of `path`.
async fn sign(
    body: web::Json<SignRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let (url, expires_at) = signed_url(&state, &body.path, body.expires_in.as_deref())?;
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(json!({"url": url, "expires_at": expires_at})))
}

/// The signed form of `path` (default lifetime 1 hour).
fn signed_url(
    state: &AppState,
    path: &str,
    expires_in: Option<&str>,
) -> Result<(String, u64), ApiError> {
    if path.contains(['?', '#']) || !crate::auth::table::signable(path) {
        return Err(ApiError::invalid_request(
            "invalid `path`: signed URLs are made for /_velox/v1/artifacts/<sha256> (and its .minisig, /provenance, /sbom) and /_velox/v1/channels/<name>/<os>/<arch>, without a query",
        ));
    }
    let secs = match expires_in {
        Some(t) => duration("expires_in", t)?,
        None => 3600,
    };
    if secs > crate::auth::signed::MAX_LIFETIME_SECS {
        return Err(ApiError::invalid_request(
            "invalid `expires_in`: at most 366 days",
        ));
    }
    let expires_at = unix_now().saturating_add(secs);
    let query = state
        .auth
        .url_key()
        .map_err(|why| ApiError::new(crate::error::ErrorCode::Conflict, why))?
        .sign(path, expires_at);
    Ok((format!("{path}?{query}"), expires_at))
}

/// Whether a build request for `key` would start a Velox build now (not a hit, not a build
/// under way, not a failure remembered, not in the bucket).
async fn would_start(state: &AppState, build: &BuildRequest, key: CacheKey) -> bool {
    if build.force_rebuild {
        return true;
    }
    match state.builds.state(&key) {
        Ok(Some(KeyState::InFlight(_) | KeyState::Ready(_) | KeyState::Failed(..))) => false,
        _ => !matches!(state.builds.shared().find(key).await, Ok(Some(_))),
    }
}

/// The ticket of a build request: whose turn it takes in the build queue and what happens when
/// it starts and ends. A caller below the build scope may only hit; a token with a quota is
/// counted when it starts a build. Requests the guard did not identify (the PHP app's build
/// instructions) are the app's business: no check.
pub async fn ticket(
    req: &HttpRequest,
    state: &AppState,
    build: &BuildRequest,
    key: CacheKey,
) -> Result<BuildTicket, ApiError> {
    let Some(caller) = crate::auth::caller(req) else {
        return Ok(proxied(state, key));
    };
    let quota = match &caller {
        Caller::Token(t) if t.max_concurrent_builds.is_some() || t.builds_per_hour.is_some() => {
            Some(Arc::clone(t))
        }
        _ => None,
    };
    let mut hold = None;
    let checked = state.auth.may_build(&caller).is_err() || quota.is_some();
    if checked && would_start(state, build, key).await {
        state.auth.may_build(&caller)?;
        if let Some(t) = &quota {
            hold = Some(state.auth.quotas.begin(t, unix_now())?);
        }
    }
    Ok(audited(state, key, caller.who(), hold))
}

fn proxied(state: &AppState, key: CacheKey) -> BuildTicket {
    audited(state, key, "php-app", None)
}

fn audited(
    state: &AppState,
    key: CacheKey,
    who: &str,
    hold: Option<crate::auth::quota::QuotaHold>,
) -> BuildTicket {
    let owner: Arc<str> = Arc::from(who);
    if !state.auth.audit.enabled() {
        return BuildTicket {
            owner,
            on_start: None,
            on_end: hold.map(|h| Box::new(move |_: &'static str| drop(h)) as Box<_>),
        };
    }
    let (a1, a2) = (Arc::clone(&state.auth), Arc::clone(&state.auth));
    let (w1, w2) = (Arc::clone(&owner), Arc::clone(&owner));
    BuildTicket {
        owner,
        on_start: Some(Box::new(move || {
            a1.audit
                .write("build_started", json!({"who": &*w1, "key": key.to_hex()}));
        })),
        on_end: Some(Box::new(move |outcome| {
            drop(hold);
            a2.audit.write(
                "build_finished",
                json!({"who": &*w2, "key": key.to_hex(), "outcome": outcome}),
            );
        })),
    }
}

/// The signed URL of `path`, for the CLI's offline `url sign` (same rules as the route).
pub fn offline_signed_url(
    key: &crate::auth::signed::UrlKey,
    path: &str,
    secs: u64,
) -> Result<(String, u64), String> {
    if path.contains(['?', '#']) || !crate::auth::table::signable(path) {
        return Err(format!("{path} cannot be signed: signed URLs are made for /_velox/v1/artifacts/<sha256> (and its .minisig, /provenance, /sbom) and /_velox/v1/channels/<name>/<os>/<arch>"));
    }
    let expires_at = unix_now().saturating_add(secs);
    Ok((format!("{path}?{}", key.sign(path, expires_at)), expires_at))
}
