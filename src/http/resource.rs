//! Route building shared by the admin listener's modules (`admin`, `cache_admin`): a resource
//! whose other methods answer 405 JSON naming the right ones.

use actix_web::web;

use crate::error::ApiError;

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
