//! The HTTP layer: the public listener (build API, artifacts) and the admin listener (health,
//! readiness, metrics). Handlers turn lower-layer errors into [`crate::error::ApiError`].

pub(crate) mod admin;
pub mod artifact;
pub(crate) mod body;
pub mod body_timeout;
pub(crate) mod builders_admin;
pub(crate) mod builds_status;
pub(crate) mod cache_admin;
pub(crate) mod channels;
pub(crate) mod channels_admin;
pub(crate) mod console;
pub(crate) mod console_admin;
pub(crate) mod cors_grants;
pub(crate) mod negotiate;
pub(crate) mod prefer;
pub(crate) mod proxy;
pub(crate) mod public;
pub mod registry;
mod resource;
pub(crate) mod tokens;
pub(crate) mod trust;

use std::sync::Arc;

use actix_web::http::header::{self, HeaderMap};

use crate::builds::resolve::Resolver;
use crate::builds::BuildService;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;

/// Everything the handlers share, built once and handed to every worker.
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub builds: Arc<BuildService>,
    pub metrics: Arc<Metrics>,
    /// Resolution of floating plugin tags, when `resolve.goproxy` is set.
    pub resolver: Option<Arc<Resolver>>,
    /// Named recipes and their releases (docs/channels.md).
    pub channels: Arc<crate::channels::Channels>,
    /// Webhook deliveries, for the metrics.
    pub webhook_stats: Arc<crate::webhook::WebhookStats>,
    /// The signing key, and what it signed (docs/signing.md).
    pub trust: Arc<crate::trust::service::Trust>,
    /// The PHP app's CORS grants per key, for the build status route.
    pub async_cors: cors_grants::CorsGrants,
    /// The last hour of traffic per minute, for the console (docs/console.md).
    pub history: Arc<crate::metrics::History>,
    /// The public listener's address once bound (port 0 resolved), for the console's commands.
    pub public_addr: Arc<std::sync::OnceLock<std::net::SocketAddr>>,
    /// Image layers being made (docs/images.md).
    pub images: Arc<registry::Layers>,
    /// The pool of Velox builders (docs/builders.md).
    pub builders: Arc<crate::builds::pool::Pool>,
    /// Tokens, signed URLs, quotas and the audit log (docs/access.md).
    pub auth: Arc<crate::auth::Auth>,
}

/// The worker's HTTP client for the Go module proxy (awc's client is not `Send`).
pub struct GoProxyClient(pub awc::Client);

/// The `Content-Length` a message declares, when it declares a valid one.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}
