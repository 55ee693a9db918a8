//! The guards every listener's app wraps (docs/access.md): each request's route is looked up in
//! [`table::need`], its credential (a bearer token, a Basic password, or a signed URL's query)
//! checked, and the [`Caller`] left in the request for its handler. Refusals are §6's JSON;
//! denials, admin changes and binary downloads go to the audit log.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{HttpMessage, HttpRequest, ResponseError};
use serde_json::{json, Value};

use super::table::{self, Listener, Need};
use super::{unix_now, Auth, Caller};
use crate::http::AppState;

/// The guard of the public listener.
pub async fn guard_public(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    guard(Listener::Public, req, next).await
}

/// The guard of the admin listener.
pub async fn guard_admin(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    guard(Listener::Admin, req, next).await
}

/// The guard of the registry listener (`registry_listen`).
pub async fn guard_registry(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    guard(Listener::Registry, req, next).await
}

/// The caller the guard found; `None` on routes that need nothing (requests forwarded to the
/// PHP app: their build instructions are the app's decision, under its own auth).
pub fn caller(req: &HttpRequest) -> Option<Caller> {
    req.extensions().get::<Caller>().cloned()
}

/// The token of an `Authorization` value: `Bearer <token>` (scheme in any case), or the
/// password of `Basic` credentials (any user name: `docker login`, `skopeo --creds`).
pub fn credential(value: &[u8]) -> Option<String> {
    use base64::Engine as _;
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim_matches(' ');
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return (!password.is_empty()).then(|| password.to_owned());
    }
    None
}

fn has_signature(query: &str) -> bool {
    query
        .split('&')
        .any(|p| p == "sig" || p.starts_with("sig="))
}

/// Who sent `req`, or why it is refused.
fn identify(auth: &Auth, req: &ServiceRequest, now: u64) -> Result<Caller, crate::error::ApiError> {
    if has_signature(req.query_string()) {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Err(super::forbidden(
                super::signed::Refused::NotSignable.message(),
            ));
        }
        return auth
            .url_key()
            .map_err(super::forbidden)?
            .verify(req.path(), req.query_string(), now)
            .map(|()| Caller::SignedUrl)
            .map_err(|why| super::forbidden(why.message()));
    }
    auth.identify(
        req.headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
        now,
    )
}

fn client(auth: &Auth, req: &ServiceRequest) -> Value {
    let peer = req.peer_addr().map(|a| a.ip());
    let xff = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    super::audit::client_addr(peer, xff, auth.trusted_proxies())
        .map(|ip| Value::from(ip.to_string()))
        .unwrap_or(Value::Null)
}

async fn guard(
    listener: Listener,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<actix_web::web::Data<AppState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let auth = Arc::clone(&state.auth);
    let listener = if listener == Listener::Public && state.config.upstream.is_some() {
        Listener::PublicProxy
    } else {
        listener
    };
    let need = table::need(listener, req.method(), req.path());
    if need == Need::Open {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let caller = identify(&auth, &req, unix_now())
        .and_then(|c| auth.permit(need, &c, req.path()).map(|()| c));
    let caller = match caller {
        Ok(c) => c,
        Err(e) => {
            if auth.audit.enabled() {
                auth.audit.write(
                    "denied",
                    json!({
                        "who": who_claimed(&req),
                        "client": client(&auth, &req),
                        "method": req.method().as_str(),
                        "path": req.path(),
                        "status": e.code.status().as_u16(),
                        "error": e.code.code(),
                    }),
                );
            }
            // The registry's clients read the Distribution Spec's errors and its challenge.
            let registry = listener == Listener::Registry
                || (listener == Listener::Public && table::is_registry_path(req.path()));
            let resp = if registry {
                crate::http::registry::refused(&e)
            } else {
                e.error_response()
            };
            return Ok(req.into_response(resp));
        }
    };
    req.extensions_mut().insert(caller.clone());
    if !auth.audit.enabled() {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let method = req.method().clone();
    let path = req.path().to_owned();
    let addr = client(&auth, &req);
    let res = next.call(req).await?.map_into_boxed_body();
    let status = res.status().as_u16();
    let read = method == Method::GET || method == Method::HEAD;
    if listener == Listener::Admin && !read {
        let event = if path.starts_with("/v1/tokens") {
            "token"
        } else if path == "/v1/signed-urls" {
            "signed_url"
        } else {
            "admin"
        };
        auth.audit.write(
            event,
            json!({"who": caller.who(), "client": addr, "method": method.as_str(),
                   "path": path, "status": status}),
        );
        return Ok(res);
    }
    let binary = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/octet-stream");
    if !binary && status != 304 {
        return Ok(res);
    }
    let digest = res
        .headers()
        .get("x-binary-sha256")
        .or_else(|| res.headers().get(header::ETAG))
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_owned());
    let line = json!({"who": caller.who(), "client": addr, "method": method.as_str(),
                      "path": path, "status": status, "digest": digest});
    Ok(res.map_body(move |_, body| {
        BoxBody::new(Counted {
            inner: body,
            sent: 0,
            auth,
            line: Some(line),
        })
    }))
}

/// The name a refused request claimed, for the audit log: a token's name when its hash is
/// known, never what was sent.
fn who_claimed(req: &ServiceRequest) -> &'static str {
    if has_signature(req.query_string()) {
        "signed-url"
    } else if req.headers().contains_key(header::AUTHORIZATION) {
        "refused-token"
    } else {
        "anonymous"
    }
}

/// A binary's body, counted as it goes out; the download's audit line is written when it ends
/// (or the client goes away), with the bytes actually sent.
struct Counted {
    inner: BoxBody,
    sent: u64,
    auth: Arc<Auth>,
    line: Option<Value>,
}

impl MessageBody for Counted {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.inner.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &polled {
            this.sent += chunk.len() as u64;
        }
        polled
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(mut line) = self.line.take() {
            line["bytes"] = Value::from(self.sent);
            self.auth.audit.write("download", line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::credential;

    #[test]
    fn bearer_and_basic_credentials() {
        assert_eq!(credential(b"Bearer abc").as_deref(), Some("abc"));
        assert_eq!(credential(b"bearer  abc ").as_deref(), Some("abc"));
        // user:secret
        assert_eq!(
            credential(b"Basic dXNlcjpzZWNyZXQ=").as_deref(),
            Some("secret")
        );
        assert_eq!(credential(b"Basic !!!"), None);
        assert_eq!(credential(b"Bearer"), None);
        assert_eq!(credential(b"Digest x"), None);
    }
}
