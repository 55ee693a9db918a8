//! Standard Webhooks signatures: the secret's key bytes and the `v1,` signature.

use base64::Engine;
use ring::hmac;

/// Standard Webhooks' prefix for a secret.
const SECRET_PREFIX: &str = "whsec_";
/// The shortest key accepted, in bytes: Standard Webhooks recommends 24 to 64.
pub const MIN_KEY_BYTES: usize = 24;

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`: a Standard Webhooks signature.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    sign_with(&hmac::Key::new(hmac::HMAC_SHA256, key), id, timestamp, body)
}

pub(super) fn sign_with(key: &hmac::Key, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

/// The key bytes of a secret, `whsec_<base64>` or bare base64. The error never quotes the
/// secret.
pub fn parse_secret(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.trim();
    let encoded = encoded.strip_prefix(SECRET_PREFIX).unwrap_or(encoded);
    if encoded.is_empty() {
        return Err("is empty: expected `whsec_` followed by a base64 key".into());
    }
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("is not `whsec_` followed by a base64 key ({e})"))?;
    if key.len() < MIN_KEY_BYTES {
        return Err(format!(
            "is a {}-byte key; at least {MIN_KEY_BYTES} bytes are required \
             (e.g. `whsec_` followed by the output of `openssl rand -base64 32`)",
            key.len()
        ));
    }
    Ok(key)
}
