//! The CORS grants the PHP app gave on build instructions, remembered per cache key, so that the
//! build status route (docs/http-api.md, "CORS in proxy mode") answers a browser app on another
//! origin as the app itself would have: its origin when the app allowed it, `*` when the app
//! allowed any, nothing otherwise.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::http::header::{self, HeaderName, HeaderValue};
use tokio::time::Instant;

use crate::builds::CacheKey;

/// How long the origins the PHP app allowed for a key are remembered, from the last grant.
const GRANT_TTL: Duration = Duration::from_secs(3600);
/// Most keys with remembered grants, and most origins per key.
const MAX_GRANTED_KEYS: usize = 10_000;
const MAX_ORIGINS_PER_KEY: usize = 16;

/// The CORS grants the PHP app gave on build instructions, per key: the origins its
/// `Access-Control-Allow-Origin` named (`*` included) and whether it allowed credentials.
#[derive(Default)]
pub struct CorsGrants {
    by_key: Mutex<HashMap<CacheKey, Grants>>,
}

struct Grants {
    at: Instant,
    /// (origin or `*`, credentials allowed)
    origins: Vec<(HeaderValue, bool)>,
}

impl CorsGrants {
    /// Remembers the grant in the instruction's headers, if there is one.
    pub fn grant(&self, key: CacheKey, headers: &[(HeaderName, HeaderValue)]) {
        let find = |name: &HeaderName| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let Some(origin) = find(&header::ACCESS_CONTROL_ALLOW_ORIGIN) else {
            return;
        };
        let credentials = find(&header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let Ok(mut by_key) = self.by_key.lock() else {
            return;
        };
        if by_key.len() >= MAX_GRANTED_KEYS && !by_key.contains_key(&key) {
            by_key.retain(|_, g| g.at.elapsed() < GRANT_TTL);
            if by_key.len() >= MAX_GRANTED_KEYS {
                let oldest = by_key.iter().min_by_key(|(_, g)| g.at).map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    by_key.remove(&oldest);
                }
            }
        }
        let grants = by_key.entry(key).or_insert_with(|| Grants {
            at: Instant::now(),
            origins: Vec::new(),
        });
        grants.at = Instant::now();
        grants.origins.retain(|(o, _)| o != origin);
        if grants.origins.len() >= MAX_ORIGINS_PER_KEY {
            grants.origins.remove(0);
        }
        grants.origins.push((origin.clone(), credentials));
    }

    /// The CORS headers for a status request from `origin` about `key`: its own origin when the
    /// app allowed it (with credentials if allowed), `*` when the app allowed any, else none.
    pub fn headers_for(
        &self,
        key: &CacheKey,
        origin: Option<&HeaderValue>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let Ok(by_key) = self.by_key.lock() else {
            return Vec::new();
        };
        let Some(grants) = by_key.get(key).filter(|g| g.at.elapsed() < GRANT_TTL) else {
            return Vec::new();
        };
        let mut out = vec![(header::VARY, HeaderValue::from_static("Origin"))];
        let exact = origin.and_then(|o| grants.origins.iter().find(|(g, _)| g == o));
        if let Some((origin, credentials)) = exact {
            out.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
            if *credentials {
                out.push((
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                ));
            }
        } else if grants.origins.iter().any(|(g, _)| g == "*") {
            out.push((
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> CacheKey {
        CacheKey([n; 32])
    }

    fn grant(origin: &'static str, credentials: bool) -> Vec<(HeaderName, HeaderValue)> {
        let mut h = vec![(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static(origin),
        )];
        if credentials {
            h.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        h
    }

    fn acao(h: &[(HeaderName, HeaderValue)]) -> Option<&str> {
        h.iter()
            .find(|(n, _)| n == header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .and_then(|(_, v)| v.to_str().ok())
    }

    #[test]
    fn an_origin_is_answered_only_where_the_app_allowed_it() {
        let g = CorsGrants::default();
        g.grant(key(1), &grant("https://app.example", true));
        g.grant(key(1), &grant("https://other.example", false));
        let app = HeaderValue::from_static("https://app.example");
        let evil = HeaderValue::from_static("https://evil.example");
        let h = g.headers_for(&key(1), Some(&app));
        assert_eq!(acao(&h), Some("https://app.example"));
        assert!(h
            .iter()
            .any(|(n, v)| n == header::ACCESS_CONTROL_ALLOW_CREDENTIALS && v == "true"));
        let other = HeaderValue::from_static("https://other.example");
        let h = g.headers_for(&key(1), Some(&other));
        assert_eq!(acao(&h), Some("https://other.example"));
        assert!(!h
            .iter()
            .any(|(n, _)| n == header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
        assert_eq!(acao(&g.headers_for(&key(1), Some(&evil))), None);
        assert_eq!(acao(&g.headers_for(&key(2), Some(&app))), None);
        assert!(g.headers_for(&key(2), Some(&app)).is_empty());
        // An instruction without CORS grants nothing.
        g.grant(key(3), &[]);
        assert!(g.headers_for(&key(3), Some(&app)).is_empty());
    }

    #[test]
    fn a_wildcard_grant_answers_any_origin() {
        let g = CorsGrants::default();
        g.grant(key(1), &grant("*", false));
        let any = HeaderValue::from_static("https://anyone.example");
        assert_eq!(acao(&g.headers_for(&key(1), Some(&any))), Some("*"));
        assert_eq!(acao(&g.headers_for(&key(1), None)), Some("*"));
    }

    #[test]
    fn the_grants_stay_bounded() {
        let g = CorsGrants::default();
        for n in 0..(MAX_ORIGINS_PER_KEY + 4) {
            let o = HeaderValue::from_str(&format!("https://o{n}.example")).expect("value");
            g.grant(key(1), &[(header::ACCESS_CONTROL_ALLOW_ORIGIN, o)]);
        }
        let by_key = g.by_key.lock().expect("lock");
        assert_eq!(by_key[&key(1)].origins.len(), MAX_ORIGINS_PER_KEY);
    }
}
