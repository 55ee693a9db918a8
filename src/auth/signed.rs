//! Signed URLs (docs/access.md, "Signed URLs"): `PATH?expires=<unix>&sig=<base64url>` where
//! `sig` is HMAC-SHA256 over the method class, the path and the expiry, with `auth.url_secret`.
//! Checked with `ring::hmac::verify` (constant time).

use base64::Engine as _;
use ring::hmac;

/// The longest a signed URL may live.
pub const MAX_LIFETIME_SECS: u64 = 366 * 24 * 3600;

/// Why a signed URL is refused (all answered 403).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Malformed,
    NotSignable,
    Expired,
    BadSignature,
}

impl Refused {
    pub fn message(&self) -> &'static str {
        match self {
            Refused::Malformed => "the signed URL is malformed (`expires` and `sig` are both needed, once each)",
            Refused::NotSignable => "signed URLs are valid for GET and HEAD of artifacts, signatures, provenance, SBOMs and channel binaries only",
            Refused::Expired => "the signed URL has expired",
            Refused::BadSignature => "the signed URL's signature does not match: it was altered or signed with another key",
        }
    }
}

/// The key of signed URLs.
pub struct UrlKey(hmac::Key);

impl UrlKey {
    pub fn new(secret: &[u8]) -> UrlKey {
        UrlKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    fn message(path: &str, expires: u64) -> String {
        // One method class: a URL for GET is good for HEAD too.
        format!("GET\n{path}\n{expires}")
    }

    /// The query string (`expires=…&sig=…`) of `path`, valid until `expires` (unix seconds).
    pub fn sign(&self, path: &str, expires: u64) -> String {
        let tag = hmac::sign(&self.0, Self::message(path, expires).as_bytes());
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref());
        format!("expires={expires}&sig={sig}")
    }

    /// Checks a request's `path` and raw `query` at `now` (unix seconds).
    pub fn verify(&self, path: &str, query: &str, now: u64) -> Result<(), Refused> {
        let (mut expires, mut sig) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match k {
                "expires" => &mut expires,
                "sig" => &mut sig,
                // Any other parameter would be outside the signature: refused, not ignored.
                _ => return Err(Refused::Malformed),
            };
            if slot.replace(v).is_some() {
                return Err(Refused::Malformed);
            }
        }
        let (Some(expires), Some(sig)) = (expires, sig) else {
            return Err(Refused::Malformed);
        };
        if expires.is_empty() || !expires.bytes().all(|b| b.is_ascii_digit()) || expires.len() > 19
        {
            return Err(Refused::Malformed);
        }
        let expires: u64 = expires.parse().map_err(|_| Refused::Malformed)?;
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| Refused::BadSignature)?;
        if !super::table::signable(path) {
            return Err(Refused::NotSignable);
        }
        hmac::verify(&self.0, Self::message(path, expires).as_bytes(), &tag)
            .map_err(|_| Refused::BadSignature)?;
        if now >= expires {
            return Err(Refused::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_url_checks_only_as_made_and_only_until_it_expires() {
        let key = UrlKey::new(b"0123456789abcdef0123");
        let path = format!("/_velox/v1/artifacts/{}", "ab".repeat(32));
        let q = key.sign(&path, 1000);
        assert_eq!(key.verify(&path, &q, 999), Ok(()));
        assert_eq!(key.verify(&path, &q, 1000), Err(Refused::Expired));
        let other = format!("/_velox/v1/artifacts/{}", "cd".repeat(32));
        assert_eq!(key.verify(&other, &q, 1), Err(Refused::BadSignature));
        let later = q.replace("expires=1000", "expires=2000");
        assert_eq!(key.verify(&path, &later, 1), Err(Refused::BadSignature));
        assert_eq!(
            key.verify(&path, &format!("{q}&x=1"), 1),
            Err(Refused::Malformed)
        );
        assert_eq!(key.verify(&path, "expires=5", 1), Err(Refused::Malformed));
        let wrong_key = UrlKey::new(b"another secret of 16+");
        assert_eq!(wrong_key.verify(&path, &q, 1), Err(Refused::BadSignature));
        let mut flipped = q.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).expect("ascii");
        assert_eq!(key.verify(&path, &flipped, 1), Err(Refused::BadSignature));
        assert_eq!(
            key.verify("/_velox/v1/builds", &key.sign("/_velox/v1/builds", 9), 1),
            Err(Refused::NotSignable)
        );
    }
}
