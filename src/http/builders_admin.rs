//! The pool of Velox builders on the admin listener (docs/builders.md): `GET /v1/builders`,
//! `POST /v1/builders/{id}/drain` and `POST /v1/builders/{id}/enable`.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::public::check_token;
use super::resource::{readable, resource};
use super::AppState;
use crate::error::ApiError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(readable("/v1/builders", list))
        .service(resource("/v1/builders/{id}/drain", "POST").route(web::post().to(drain)))
        .service(resource("/v1/builders/{id}/enable", "POST").route(web::post().to(enable)));
}

fn unknown(id: &str) -> ApiError {
    // The id is echoed only when it could be one: it comes from the request's path.
    let shown = if id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic()) {
        format!("no builder is named `{id}`")
    } else {
        "no builder has that id".to_owned()
    };
    ApiError::not_found(format!("{shown}; GET /v1/builders lists them"))
}

/// `GET /v1/builders`: every builder with its state, load and counts.
async fn list(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(state.builders.view())
}

/// `POST /v1/builders/{id}/drain`: the builder finishes its builds and takes no new ones.
async fn drain(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    check_token(&req, &state)?;
    let view = state.builders.drain(&id).ok_or_else(|| unknown(&id))?;
    Ok(HttpResponse::Ok().json(view))
}

/// `POST /v1/builders/{id}/enable`: the builder takes builds again (when it is up).
async fn enable(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    check_token(&req, &state)?;
    let view = state.builders.enable(&id).ok_or_else(|| unknown(&id))?;
    Ok(HttpResponse::Ok().json(view))
}
