//! Which headers cross the proxy (docs/http-api.md, "Forwarding"): hop-by-hop fields stop here in
//! both directions; the forwarding fields are rebuilt according to `trusted_proxies`; `Via` marks
//! the hop, so that a request coming round again is recognised.

use std::net::IpAddr;

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::Version;

/// RFC 9110 §7.6.1's hop-by-hop fields, and `Proxy-Connection`, which old clients still send.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// The `received-by` of velox-cache's `Via` entry.
pub const VIA_PSEUDONYM: &str = "velox-cache";

/// Fields that claim who the client is, besides `X-Forwarded-*`. RoadRunner's `proxy_ip_parser`
/// reads `X-Real-IP` and `True-Client-IP` as well as `X-Forwarded-For` and `Forwarded`, so a
/// client must not bring its own through velox-cache either.
const CLIENT_CLAIMS: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "cf-connecting-ip",
];

/// The fields of `headers` that may cross this hop, repeated ones as often as they came: all but
/// the hop-by-hop ones and those the message names in `Connection`.
pub fn end_to_end(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    headers.iter().filter(move |(name, _)| {
        let name = name.as_str();
        !HOP_BY_HOP.contains(&name) && !named.iter().any(|t| t == name)
    })
}

/// Whether the request already passed through a velox-cache: one of its `Via` entries
/// (`protocol received-by [comment]`, RFC 9110 §7.6.3) was received by `velox-cache`.
pub fn has_looped(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::VIA)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|entry| entry.split_whitespace().nth(1))
        .any(|by| by.eq_ignore_ascii_case(VIA_PSEUDONYM))
}

/// What velox-cache knows of the hop a request came over.
pub struct Hop {
    /// The peer's address (IPv4-mapped IPv6 addresses as IPv4).
    pub peer: Option<IpAddr>,
    /// The peer is one of `trusted_proxies`: its forwarding fields are believed.
    pub trusted: bool,
    /// The scheme the request arrived by.
    pub proto: &'static str,
    /// The request's HTTP version, for `Via`.
    pub version: Version,
}

fn is_forwarding_claim(name: &str) -> bool {
    name.starts_with("x-forwarded-") || CLIENT_CLAIMS.contains(&name)
}

/// The headers sent upstream: the client's end-to-end ones (less `Expect`, which actix has
/// answered, and `Content-Length`, which the body states), with the forwarding fields
/// (docs/http-api.md): from a trusted peer, its `X-Forwarded-For` with the peer appended and the
/// rest as they came; from any other, only what velox-cache saw itself. Then `Via`.
pub fn forward_headers(from: &HeaderMap, hop: &Hop) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(from.len() + 4);
    let mut forwarded_for: Vec<&str> = Vec::new();
    for (name, value) in end_to_end(from) {
        match name.as_str() {
            "x-forwarded-for" if hop.trusted => forwarded_for.extend(value.to_str().ok()),
            n if !hop.trusted && is_forwarding_claim(n) => {}
            "expect" | "content-length" | "x-forwarded-for" => {}
            _ => out.append(name.clone(), value.clone()),
        }
    }
    let peer = hop.peer.map(|ip| ip.to_string());
    forwarded_for.extend(peer.as_deref());
    if let Ok(v) = HeaderValue::from_str(&forwarded_for.join(", ")) {
        if !v.is_empty() {
            out.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
    }
    let proto = HeaderName::from_static("x-forwarded-proto");
    if !out.contains_key(&proto) {
        out.insert(proto, HeaderValue::from_static(hop.proto));
    }
    let forwarded_host = HeaderName::from_static("x-forwarded-host");
    if !out.contains_key(&forwarded_host) {
        if let Some(host) = from.get(header::HOST) {
            out.insert(forwarded_host, host.clone());
        }
    }
    // The received protocol is the client's (RFC 9110 §7.6.3); earlier entries stay first.
    let via = if hop.version == Version::HTTP_10 {
        HeaderValue::from_static("1.0 velox-cache")
    } else {
        HeaderValue::from_static("1.1 velox-cache")
    };
    out.append(header::VIA, via);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        m
    }

    fn values<'a>(m: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        m.get_all(name).filter_map(|v| v.to_str().ok()).collect()
    }

    fn hop(trusted: bool) -> Hop {
        Hop {
            peer: Some("192.0.2.7".parse().expect("ip")),
            trusted,
            proto: "http",
            version: Version::HTTP_11,
        }
    }

    const CLAIMS: &[(&str, &str)] = &[
        ("x-forwarded-for", "10.0.0.1"),
        ("x-forwarded-for", "10.0.0.2, 10.0.0.3"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "lb.example"),
        ("x-forwarded-port", "443"),
        ("forwarded", "for=10.0.0.1;proto=https"),
        ("x-real-ip", "10.0.0.1"),
        ("true-client-ip", "10.0.0.1"),
    ];

    fn with_claims(extra: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = map(extra);
        for (k, v) in CLAIMS {
            m.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn forwarded_headers_keep_repeats_and_drop_hop_by_hop() {
        let from = map(&[
            ("host", "public.example"),
            ("accept", "text/html"),
            ("accept", "application/json"),
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "hop"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("expect", "100-continue"),
            ("content-length", "12"),
        ]);
        let out = forward_headers(&from, &hop(false));
        assert_eq!(values(&out, "accept"), ["text/html", "application/json"]);
        assert_eq!(values(&out, "host"), ["public.example"]);
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "upgrade",
            "proxy-authorization",
            "proxy-connection",
            "transfer-encoding",
            "expect",
            "content-length",
        ] {
            assert!(!out.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(values(&out, "via"), ["1.1 velox-cache"]);
    }

    #[test]
    fn an_untrusted_peer_cannot_claim_an_address() {
        let out = forward_headers(&with_claims(&[("host", "public.example")]), &hop(false));
        assert_eq!(values(&out, "x-forwarded-for"), ["192.0.2.7"]);
        assert_eq!(values(&out, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&out, "x-forwarded-host"), ["public.example"]);
        for gone in [
            "x-forwarded-port",
            "forwarded",
            "x-real-ip",
            "true-client-ip",
        ] {
            assert!(!out.contains_key(gone), "{gone} was forwarded");
        }
    }

    #[test]
    fn a_trusted_peer_is_appended_to_and_its_claims_kept() {
        let out = forward_headers(&with_claims(&[("host", "public.example")]), &hop(true));
        assert_eq!(
            values(&out, "x-forwarded-for"),
            ["10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7"]
        );
        assert_eq!(values(&out, "x-forwarded-proto"), ["https"]);
        assert_eq!(values(&out, "x-forwarded-host"), ["lb.example"]);
        assert_eq!(values(&out, "x-forwarded-port"), ["443"]);
        assert_eq!(values(&out, "forwarded"), ["for=10.0.0.1;proto=https"]);
        assert_eq!(values(&out, "x-real-ip"), ["10.0.0.1"]);
        // A trusted peer that sent no claims gets velox-cache's own.
        let bare = forward_headers(&map(&[("host", "h.example")]), &hop(true));
        assert_eq!(values(&bare, "x-forwarded-for"), ["192.0.2.7"]);
        assert_eq!(values(&bare, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&bare, "x-forwarded-host"), ["h.example"]);
    }

    #[test]
    fn via_is_appended_with_the_clients_version() {
        let from = map(&[("via", "1.1 lb.example")]);
        let mut h = hop(false);
        h.version = Version::HTTP_10;
        let out = forward_headers(&from, &h);
        assert_eq!(values(&out, "via"), ["1.1 lb.example", "1.0 velox-cache"]);
        assert!(
            !out.contains_key("x-forwarded-host"),
            "no Host, none made up"
        );
    }

    #[test]
    fn loops_are_recognised_by_the_via_entry() {
        for looped in [
            "1.1 velox-cache",
            "1.0 velox-cache",
            "HTTP/1.1 Velox-Cache (note)",
            "1.1 lb.example, 1.1 velox-cache",
        ] {
            assert!(has_looped(&map(&[("via", looped)])), "{looped}");
        }
        for fine in ["1.1 lb.example", "1.1 velox-cache-2", "velox-cache", ""] {
            assert!(!has_looped(&map(&[("via", fine)])), "{fine}");
        }
        assert!(!has_looped(&HeaderMap::new()));
    }
}
