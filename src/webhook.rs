//! Placeholder until the webhook delivery lands (same interface).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

#[derive(Default)]
pub struct WebhookStats {
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
}

#[derive(Clone)]
pub struct Webhook {
    _stats: Arc<WebhookStats>,
}

impl Webhook {
    pub fn new(
        _url: &str,
        _secret: &str,
        _tls: Arc<rustls::ClientConfig>,
        stats: Arc<WebhookStats>,
    ) -> Result<Webhook, String> {
        Ok(Webhook { _stats: stats })
    }

    pub fn send(&self, _event_type: &str, _data: serde_json::Value) {}
}

/// The key of a `whsec_<base64>` secret (or bare base64).
pub fn parse_secret(secret: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    match base64::engine::general_purpose::STANDARD.decode(b64) {
        Ok(key) if !key.is_empty() => Ok(key),
        _ => Err("must be whsec_ followed by base64 (Standard Webhooks' form)".into()),
    }
}
