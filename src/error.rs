//! The one error type the HTTP layer answers with: `{"error": "<code>", "message": "...",
//! "request_id": "..."}` as JSON (docs/http-api.md, "Errors").
//!
//! [`ErrorCode`] is the single table of codes and statuses. Lower layers keep their own error
//! types with their causes and name the code they map to; they become an `ApiError` at the edge,
//! where anything internal is logged in full and answered with a generic message.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// Every error code velox-cache answers, with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    ClientTimeout,
    PayloadTooLarge,
    RangeNotSatisfiable,
    /// A bug or a lost task: nothing the client or the disk did.
    Internal,
    BuildFailed,
    VeloxUnavailable,
    UpstreamUnavailable,
    InvalidBuildInstruction,
    Overloaded,
    StorageUnavailable,
    Timeout,
    LoopDetected,
    /// The target's state forbids the change (a pinned entry deleted, a channel of the file
    /// changed through the API).
    Conflict,
    /// A valid credential whose scope does not cover the route, or a bad signed URL.
    Forbidden,
    /// A token's build quota is used up (with `Retry-After`).
    QuotaExceeded,
}

impl ErrorCode {
    /// Every code, for tests and documentation checks.
    #[cfg(test)]
    pub const ALL: [ErrorCode; 19] = [
        ErrorCode::InvalidRequest,
        ErrorCode::Unauthorized,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::ClientTimeout,
        ErrorCode::PayloadTooLarge,
        ErrorCode::RangeNotSatisfiable,
        ErrorCode::Internal,
        ErrorCode::BuildFailed,
        ErrorCode::VeloxUnavailable,
        ErrorCode::UpstreamUnavailable,
        ErrorCode::InvalidBuildInstruction,
        ErrorCode::Overloaded,
        ErrorCode::StorageUnavailable,
        ErrorCode::Timeout,
        ErrorCode::LoopDetected,
        ErrorCode::Conflict,
        ErrorCode::Forbidden,
        ErrorCode::QuotaExceeded,
    ];

    /// The machine-readable code in the JSON body.
    pub fn code(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::ClientTimeout => "client_timeout",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RangeNotSatisfiable => "range_not_satisfiable",
            ErrorCode::Internal => "internal",
            ErrorCode::BuildFailed => "build_failed",
            ErrorCode::VeloxUnavailable => "velox_unavailable",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::InvalidBuildInstruction => "invalid_build_instruction",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::LoopDetected => "loop_detected",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::QuotaExceeded => "quota_exceeded",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::BuildFailed
            | ErrorCode::VeloxUnavailable
            | ErrorCode::UpstreamUnavailable
            | ErrorCode::InvalidBuildInstruction => StatusCode::BAD_GATEWAY,
            ErrorCode::Overloaded | ErrorCode::StorageUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::LoopDetected => StatusCode::LOOP_DETECTED,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub request_id: Option<Box<str>>,
    /// Velox's build logs, for `build_failed`.
    pub logs: Option<Box<str>>,
    /// Seconds, for `overloaded`.
    pub retry_after: Option<u32>,
    /// The methods a route takes, for `method_not_allowed`.
    pub allow: Option<&'static str>,
    /// The representation's size, for `range_not_satisfiable` (`Content-Range: bytes */size`).
    pub unsatisfied_size: Option<u64>,
    /// A status other than the code's own (503 `velox_unavailable` when no builder is up).
    pub status: Option<StatusCode>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logs: Option<&'a str>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            request_id: None,
            logs: None,
            retry_after: None,
            allow: None,
            unsatisfied_size: None,
            status: None,
        }
    }

    /// This error with `status` instead of its code's own.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// The HTTP status it is answered with.
    pub fn http_status(&self) -> StatusCode {
        self.status.unwrap_or_else(|| self.code.status())
    }

    pub fn with_request_id(mut self, id: Option<&str>) -> Self {
        if self.request_id.is_none() {
            self.request_id = id.filter(|s| !s.is_empty()).map(Box::from);
        }
        self
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            ErrorCode::Unauthorized,
            "a valid `Authorization: Bearer <token>` header is required",
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PayloadTooLarge, message)
    }

    pub fn storage_unavailable() -> Self {
        Self::new(
            ErrorCode::StorageUnavailable,
            "the cache storage is not available; try again later",
        )
    }

    pub fn range_not_satisfiable(size: u64) -> Self {
        let mut e = Self::new(
            ErrorCode::RangeNotSatisfiable,
            "the requested range is outside the artifact",
        );
        e.unsatisfied_size = Some(size);
        e
    }

    /// Something that is nobody's fault but the server's; the detail goes to the log only.
    pub fn internal() -> Self {
        Self::new(
            ErrorCode::Internal,
            "velox-cache failed internally; the details are in its log",
        )
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut e = Self::new(
            ErrorCode::MethodNotAllowed,
            format!("this route takes {allow}"),
        );
        e.allow = Some(allow);
        e
    }
}

impl ApiError {
    /// The JSON body, for responses that carry more headers than [`ResponseError`] sets.
    pub fn json_body(&self) -> Vec<u8> {
        let body = Body {
            error: self.code.code(),
            message: &self.message,
            request_id: self.request_id.as_deref(),
            logs: self.logs.as_deref(),
        };
        serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"error\":\"internal\"}".to_vec())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.http_status().as_u16(),
            self.code.code(),
            self.message
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.http_status()
    }

    fn error_response(&self) -> HttpResponse {
        let json = self.json_body();
        let mut resp = HttpResponse::build(self.http_status());
        resp.insert_header((header::CONTENT_TYPE, "application/json"))
            .insert_header((header::CACHE_CONTROL, "no-store"));
        if let Some(secs) = self.retry_after {
            resp.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if self.code == ErrorCode::Unauthorized {
            resp.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        if let Some(allow) = self.allow {
            resp.insert_header((header::ALLOW, HeaderValue::from_static(allow)));
        }
        if let Some(size) = self.unsatisfied_size {
            resp.insert_header((header::CONTENT_RANGE, format!("bytes */{size}")));
        }
        if self.code == ErrorCode::ClientTimeout {
            // The rest of a stalled body may still come: the connection cannot carry another
            // request (docs/http-api.md, "Connections and slow clients").
            resp.force_close();
        }
        resp.body(json)
    }
}

impl actix_web::Responder for ApiError {
    type Body = actix_web::body::BoxBody;

    fn respond_to(self, _req: &actix_web::HttpRequest) -> HttpResponse {
        self.error_response()
    }
}

/// Extractor settings whose refusals (a bad query string, path segment or JSON body) answer with
/// this JSON instead of actix's plain text. Both listeners' apps take them.
pub fn json_extractor_errors(cfg: &mut actix_web::web::ServiceConfig) {
    use actix_web::web::{JsonConfig, PathConfig, QueryConfig};
    cfg.app_data(QueryConfig::default().error_handler(|e, _| {
        ApiError::invalid_request(format!("invalid query string: {e}")).into()
    }))
    .app_data(
        PathConfig::default()
            .error_handler(|e, _| ApiError::not_found(format!("invalid path: {e}")).into()),
    )
    .app_data(
        JsonConfig::default().error_handler(|e, _| {
            ApiError::invalid_request(format!("invalid JSON body: {e}")).into()
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_an_error_status_and_a_unique_name() {
        let mut names = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(names.insert(code.code()), "{code:?} repeats a name");
            let s = code.status();
            assert!(s.is_client_error() || s.is_server_error(), "{code:?}: {s}");
        }
    }

    #[test]
    fn the_json_body_names_the_code() {
        let resp = ApiError::range_not_satisfiable(10).error_response();
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(
            resp.headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok()),
            Some("bytes */10")
        );
        assert_eq!(
            resp.headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
    }
}
