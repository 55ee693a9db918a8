//! Content negotiation of binary answers (docs/compression.md): which stored representation of a
//! binary a request gets — its `zstd` or `gzip` variant, or the binary itself — from
//! `Accept-Encoding` and its q-values (RFC 9110 §12.5.3).
//!
//! The header is parsed by actix-web's `AcceptEncoding`, which drops elements it cannot read
//! (a bad q-value, an empty token): a malformed header never fails the request, it only narrows
//! what is offered, down to the binary itself.
//!
//! Rules:
//! - no `Accept-Encoding` (or one that cannot be read): the binary itself;
//! - a coding is acceptable when named with q > 0 (`x-gzip` is `gzip`); `*` does not select a
//!   compressed coding (a client that lists none by name is not assumed to decode any), it only
//!   sets identity's weight when identity is not named;
//! - among acceptable codings whose variant exists and is smaller than 90 % of the binary, the
//!   highest q wins, ties going to the server's order (zstd, then gzip); identity wins only when
//!   it is named (or `*` is) with a higher q than that coding;
//! - a request with `Range` gets the binary itself: resuming clients count decoded bytes.

use std::fs::File;

use actix_web::http::header::{
    self, AcceptEncoding, ContentEncoding, Encoding as HeaderEncoding, Header, Preference, Quality,
};
use actix_web::HttpRequest;

use crate::store::{Encoding, Store, Variant};

/// The representation chosen: a stored variant, opened.
pub struct Chosen {
    pub encoding: Encoding,
    pub file: File,
    pub variant: Variant,
}

/// The weights a request gives to the server's codings and to identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weights {
    /// Acceptable codings, best first (highest q, then the server's order), each with its q.
    pub codings: Vec<(Encoding, Quality)>,
    /// identity's weight when the request names it (or `*`); `None` when it is only implied.
    pub identity: Option<Quality>,
}

/// The codings `req` accepts, best first. Empty without `Accept-Encoding`.
pub fn weights(req: &HttpRequest) -> Weights {
    let none = Weights {
        codings: Vec::new(),
        identity: None,
    };
    if !req.headers().contains_key(header::ACCEPT_ENCODING) {
        return none;
    }
    let Ok(accept) = AcceptEncoding::parse(req) else {
        return none;
    };
    weights_of(&accept)
}

fn weights_of(accept: &AcceptEncoding) -> Weights {
    let named = |wanted: Encoding| -> Option<Quality> {
        accept
            .0
            .iter()
            .filter(|q| match &q.item {
                Preference::Specific(HeaderEncoding::Known(ContentEncoding::Zstd)) => {
                    wanted == Encoding::Zstd
                }
                Preference::Specific(HeaderEncoding::Known(ContentEncoding::Gzip)) => {
                    wanted == Encoding::Gzip
                }
                Preference::Specific(HeaderEncoding::Unknown(token)) => {
                    wanted == Encoding::Gzip && token.eq_ignore_ascii_case("x-gzip")
                }
                _ => false,
            })
            .map(|q| q.quality)
            // Named twice: the highest weight given counts.
            .max()
    };
    let mut codings: Vec<(Encoding, Quality)> = Encoding::ALL
        .iter()
        .filter_map(|e| named(*e).map(|q| (*e, q)))
        .filter(|(_, q)| *q > Quality::ZERO)
        .collect();
    // Stable: equal weights keep the server's order.
    codings.sort_by_key(|c| std::cmp::Reverse(c.1));
    let identity = accept
        .0
        .iter()
        .filter(|q| {
            matches!(
                q.item,
                Preference::Specific(HeaderEncoding::Known(ContentEncoding::Identity))
            )
        })
        .map(|q| q.quality)
        .max()
        .or_else(|| {
            accept
                .0
                .iter()
                .filter(|q| matches!(q.item, Preference::Any))
                .map(|q| q.quality)
                .max()
        });
    Weights { codings, identity }
}

/// The variant `req` gets for the binary `blob` of `size` bytes, if any: `None` means the binary
/// itself. Opens the file (a sled read, an open, an fstat; never a hash).
pub fn choose(
    req: &HttpRequest,
    store: &Store,
    blob: &crate::ids::Digest,
    size: u64,
) -> Option<Chosen> {
    if req.headers().contains_key(header::RANGE) {
        return None;
    }
    let w = weights(req);
    for (encoding, q) in w.codings {
        if w.identity.is_some_and(|i| i > q) {
            return None;
        }
        let Some((file, variant)) = store.serve_variant(blob, encoding) else {
            continue;
        };
        if variant.size < crate::compress::keep_below(size) {
            return Some(Chosen {
                encoding,
                file,
                variant,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn of(value: &str) -> Weights {
        let req = TestRequest::default()
            .insert_header((header::ACCEPT_ENCODING, value))
            .to_http_request();
        weights(&req)
    }

    fn order(value: &str) -> Vec<&'static str> {
        of(value).codings.iter().map(|(e, _)| e.as_str()).collect()
    }

    #[test]
    fn q_values_order_the_codings_and_ties_go_to_zstd() {
        assert_eq!(order("gzip, zstd"), ["zstd", "gzip"]);
        assert_eq!(order("gzip, deflate, br, zstd"), ["zstd", "gzip"]);
        assert_eq!(order("gzip;q=1, zstd;q=0.5"), ["gzip", "zstd"]);
        assert_eq!(order("zstd;q=0, gzip"), ["gzip"]);
        assert_eq!(order("GZIP"), ["gzip"]);
        assert_eq!(order("x-gzip"), ["gzip"]);
        assert_eq!(
            order("zstd;q=0.2, zstd;q=0.9, gzip;q=0.5"),
            ["zstd", "gzip"]
        );
    }

    #[test]
    fn a_star_selects_no_compressed_coding() {
        assert!(order("*").is_empty());
        assert_eq!(of("*").identity, Some(Quality::MAX));
        assert_eq!(of("gzip, *;q=0").identity, Some(Quality::ZERO));
        assert_eq!(
            of("identity;q=0.5, *;q=0")
                .identity
                .map(|q| q > Quality::ZERO),
            Some(true)
        );
    }

    #[test]
    fn malformed_elements_are_skipped_never_refused() {
        assert_eq!(
            order("zstd;q=2, gzip"),
            ["gzip"],
            "a q above 1 is no q-value"
        );
        assert_eq!(order("zstd;q=abc, gzip;q=0.3"), ["gzip"]);
        assert_eq!(order(",,;, gzip ,"), ["gzip"]);
        assert_eq!(order("zstd;;q=0.5"), Vec::<&str>::new());
        assert!(order("").is_empty());
        assert!(order("bogus/%%%").is_empty());
    }

    #[test]
    fn without_the_header_nothing_is_compressed() {
        let req = TestRequest::default().to_http_request();
        assert_eq!(
            weights(&req),
            Weights {
                codings: Vec::new(),
                identity: None
            }
        );
    }
}
