//! Responses that carry a binary (docs/http-api.md): the entity headers, conditional requests
//! (`If-None-Match`, `If-Modified-Since`, `If-Range`), single byte ranges, and HEAD.
//!
//! actix-files' `NamedFile` is not used: its ETag is built from inode and mtime, not content, and
//! it reads the whole file for HEAD. The range grammar comes from the `http-range` crate.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header::{
    self, EntityTag, Header, HeaderName, HeaderValue, HttpDate, IfModifiedSince, IfNoneMatch,
    IfRange,
};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use base64::Engine;
use futures_util::StreamExt;

use super::body::{FileBody, HeadBody};
use crate::error::ApiError;
use crate::ids::Digest;
use crate::metrics::Metrics;
use crate::store::BlobSource;

/// A blob about to be sent.
pub struct Blob {
    pub digest: Digest,
    pub size: u64,
    /// When the blob was stored (the file's mtime).
    pub modified: SystemTime,
    /// The local file, or the bucket (a ranged GET of exactly what is sent).
    pub source: BlobSource,
    pub file_name: String,
    /// A blob of the store. False for Velox's own file served when the disk was full: it has
    /// no artifact URL (no `Content-Location`) and is never memory-mapped, since its bytes are
    /// not the store's to vouch for.
    pub stored: bool,
    /// A RoadRunner binary (docs/compression.md): its answers negotiate `Accept-Encoding` and
    /// carry `X-Binary-SHA256` and `Vary: Accept-Encoding`. False for an image layer, whose
    /// bytes are gzip already and named by their own digest.
    pub binary: bool,
}

/// The representation sent: the binary's own headers, or a variant's (its ETag and
/// `Repr-Digest` are those of the encoded bytes, RFC 9530).
struct Representation {
    pre: Arc<Preformatted>,
    encoding: Option<crate::store::Encoding>,
}

/// What the request asks of the bytes, after conditionals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    NotModified,
    Full,
    Partial { start: u64, length: u64 },
    Unsatisfiable,
}

/// Whole seconds since the epoch: HTTP dates have no finer grain, and `If-Range` compares them
/// exactly.
fn whole_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What every response of one blob repeats, formatted once: the values are functions of the
/// digest and the file's mtime (in whole seconds) alone, so a cached set can never be stale — a
/// blob replaced by an ingest gets a new mtime and so a new key — and nothing needs invalidating.
struct Preformatted {
    etag: EntityTag,
    etag_value: HeaderValue,
    modified: HttpDate,
    modified_value: HeaderValue,
    content_location: HeaderValue,
    repr_digest: HeaderValue,
    /// `Link` to the signature (docs/signing.md).
    link: HeaderValue,
}

/// At most this many blobs' headers are kept; the set is cleared when full (the cost of a miss
/// is a few hundred nanoseconds, so a crude bound is enough).
const PREFORMATTED_MAX: usize = 4096;

type PreformattedKey = (Digest, u64);
static PREFORMATTED: LazyLock<Mutex<HashMap<PreformattedKey, Arc<Preformatted>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn preformat(digest: Digest, modified: HttpDate) -> Option<Preformatted> {
    let hex = digest.to_hex();
    let etag = EntityTag::new_strong(hex.clone());
    let etag_value = HeaderValue::from_str(&etag.to_string()).ok()?;
    let modified_value = HeaderValue::from_str(&modified.to_string()).ok()?;
    let content_location = HeaderValue::from_str(&format!("/_velox/v1/artifacts/{hex}")).ok()?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
    let repr_digest = HeaderValue::from_str(&format!("sha-256=:{b64}:")).ok()?;
    let link = HeaderValue::from_str(&format!(
        "</_velox/v1/artifacts/{hex}.minisig>; rel=\"signature\", </_velox/v1/artifacts/{hex}/provenance>; rel=\"provenance\""
    ))
    .ok()?;
    Some(Preformatted {
        link,
        etag,
        etag_value,
        modified,
        modified_value,
        content_location,
        repr_digest,
    })
}

/// The blob's preformatted headers, from the cache or made now.
fn preformatted(digest: Digest, modified: SystemTime) -> Option<Arc<Preformatted>> {
    let secs = whole_secs(modified);
    let key = (digest, secs);
    // A poisoned lock only costs the cache: the headers are then made for this response alone.
    if let Some(hit) = PREFORMATTED
        .lock()
        .ok()
        .and_then(|cache| cache.get(&key).cloned())
    {
        return Some(hit);
    }
    let modified = HttpDate::from(UNIX_EPOCH + Duration::from_secs(secs));
    let made = Arc::new(preformat(digest, modified)?);
    if let Ok(mut cache) = PREFORMATTED.lock() {
        if cache.len() >= PREFORMATTED_MAX {
            cache.clear();
        }
        cache.insert(key, Arc::clone(&made));
    }
    Some(made)
}

/// Decides the answer from the request's headers. `conditional` enables `If-None-Match` and
/// `If-Modified-Since` (GET and HEAD only); `Range` applies to every method but HEAD.
pub fn plan(
    req: &HttpRequest,
    etag: &EntityTag,
    modified: HttpDate,
    size: u64,
    conditional: bool,
) -> Plan {
    if conditional {
        if req.headers().contains_key(header::IF_NONE_MATCH) {
            match IfNoneMatch::parse(req) {
                Ok(IfNoneMatch::Any) => return Plan::NotModified,
                Ok(IfNoneMatch::Items(tags)) if tags.iter().any(|t| t.weak_eq(etag)) => {
                    return Plan::NotModified
                }
                _ => {}
            }
        } else if let Ok(IfModifiedSince(since)) = IfModifiedSince::parse(req) {
            if SystemTime::from(modified) <= SystemTime::from(since) {
                return Plan::NotModified;
            }
        }
    }
    if req.method() == Method::HEAD || size == 0 {
        return Plan::Full;
    }
    let Some(range) = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
    else {
        return Plan::Full;
    };
    if req.headers().contains_key(header::IF_RANGE) {
        let fresh = match IfRange::parse(req) {
            Ok(IfRange::EntityTag(tag)) => tag.strong_eq(etag),
            Ok(IfRange::Date(date)) => date == modified,
            Err(_) => false,
        };
        if !fresh {
            return Plan::Full;
        }
    }
    let Some(range) = byte_ranges(range) else {
        // An unknown range unit is ignored (RFC 9110 §14.2).
        return Plan::Full;
    };
    match http_range::HttpRange::parse(&range, size) {
        Ok(ranges) if ranges.is_empty() => Plan::Full,
        // Several ranges are answered as one part spanning them all.
        Ok(ranges) => {
            let start = ranges.iter().map(|r| r.start).min().unwrap_or(0);
            let end = ranges
                .iter()
                .map(|r| r.start + r.length)
                .max()
                .unwrap_or(size);
            Plan::Partial {
                start,
                length: end - start,
            }
        }
        Err(http_range::HttpRangeParseError::NoOverlap) => Plan::Unsatisfiable,
        // A malformed range may be ignored (RFC 9110 §14.2); the whole body is the safe answer.
        Err(http_range::HttpRangeParseError::InvalidRange) => Plan::Full,
    }
}

/// The `Range` value with its unit spelled `bytes=`, when the unit is `bytes` in any case (range
/// units are case-insensitive, RFC 9110 §14.1); `None` for another unit. The range parser only
/// knows the lower-case spelling.
fn byte_ranges(value: &str) -> Option<String> {
    let value = value.trim_start();
    let (unit, ranges) = value.split_once('=')?;
    unit.eq_ignore_ascii_case("bytes")
        .then(|| format!("bytes={ranges}"))
}

/// Builds the response for `blob`. `extra` headers go on every status (a `Content-Disposition`
/// among them replaces ours: in proxy mode the PHP app's wins); `immutable` adds the artifact
/// route's `Cache-Control`.
pub fn respond(
    req: &HttpRequest,
    blob: Blob,
    extra: Vec<(HeaderName, HeaderValue)>,
    immutable: bool,
    metrics: &Arc<Metrics>,
) -> HttpResponse {
    let pre = match preformatted(blob.digest, blob.modified) {
        Some(pre) => pre,
        None => {
            log::error!("the headers of blob {} could not be formatted", blob.digest);
            return actix_web::ResponseError::error_response(&ApiError::internal());
        }
    };
    // The representation (docs/compression.md): a compressed variant when the request accepts
    // one that is stored; its own ETag, Repr-Digest and length then.
    let state = req.app_data::<actix_web::web::Data<super::AppState>>();
    let compressing = blob.binary && state.is_some_and(|s| s.config.compression.enabled);
    let chosen = match (state, &blob.source) {
        (Some(state), BlobSource::File(_)) if compressing && blob.stored => {
            super::negotiate::choose(req, &state.store, &blob.digest, blob.size)
        }
        _ => None,
    };
    let binary = blob.digest;
    let (blob, rep) = match chosen {
        Some(c) => match preformatted(c.variant.digest, blob.modified) {
            Some(rep) => (
                Blob {
                    digest: c.variant.digest,
                    size: c.variant.size,
                    source: BlobSource::File(Arc::new(c.file)),
                    ..blob
                },
                Representation {
                    pre: rep,
                    encoding: Some(c.encoding),
                },
            ),
            None => (
                blob,
                Representation {
                    pre: Arc::clone(&pre),
                    encoding: None,
                },
            ),
        },
        None => (
            blob,
            Representation {
                pre: Arc::clone(&pre),
                encoding: None,
            },
        ),
    };
    let conditional = matches!(*req.method(), Method::GET | Method::HEAD);
    let plan = match plan(req, &rep.pre.etag, pre.modified, blob.size, conditional) {
        // Bytes only the bucket holds are sent only once checked: a range needs a verified copy
        // in the local tier first, so without a way to fill it the whole body goes, hashed.
        Plan::Partial { .. } if matches!(&blob.source, BlobSource::Remote(r) if !r.serves_ranges()) => {
            Plan::Full
        }
        plan => plan,
    };

    let status = match plan {
        Plan::NotModified => StatusCode::NOT_MODIFIED,
        Plan::Full => StatusCode::OK,
        Plan::Partial { .. } => StatusCode::PARTIAL_CONTENT,
        Plan::Unsatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
    };
    let mut resp = HttpResponse::build(status);
    resp.insert_header((header::ETAG, rep.pre.etag_value.clone()))
        .insert_header((header::LAST_MODIFIED, pre.modified_value.clone()))
        .insert_header((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")));
    // On every answer of a binary route, compression on or off: what a shared cache stored
    // while it was on must still be told apart (SPEC §21: on identity answers too).
    if blob.binary {
        if let Ok(v) = HeaderValue::from_str(&binary.to_hex()) {
            resp.insert_header((HeaderName::from_static("x-binary-sha256"), v));
        }
        resp.append_header((header::VARY, HeaderValue::from_static("accept-encoding")));
    }
    if blob.stored {
        resp.insert_header((header::CONTENT_LOCATION, pre.content_location.clone()));
        let signing = req
            .app_data::<actix_web::web::Data<super::AppState>>()
            .is_some_and(|s| s.trust.signing());
        if signing {
            resp.append_header((header::LINK, pre.link.clone()));
        }
    }
    if immutable {
        resp.insert_header((
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        ));
    }
    let own_disposition = !extra
        .iter()
        .any(|(name, _)| name == header::CONTENT_DISPOSITION);
    for (name, value) in extra {
        resp.append_header((name, value));
    }
    match plan {
        Plan::NotModified => resp.finish(),
        Plan::Unsatisfiable => {
            let err = ApiError::range_not_satisfiable(blob.size);
            resp.insert_header((header::CONTENT_RANGE, format!("bytes */{}", blob.size)))
                .insert_header((header::CONTENT_TYPE, "application/json"))
                .body(err.json_body())
        }
        Plan::Full | Plan::Partial { .. } => {
            entity_headers(&mut resp, &blob, &rep.pre, own_disposition);
            if let Some(enc) = rep.encoding {
                resp.insert_header((
                    header::CONTENT_ENCODING,
                    HeaderValue::from_static(enc.as_str()),
                ));
            }
            let (start, length) = match plan {
                Plan::Partial { start, length } => {
                    resp.insert_header((
                        header::CONTENT_RANGE,
                        format!("bytes {start}-{}/{}", start + length - 1, blob.size),
                    ));
                    (start, length)
                }
                _ => (0, blob.size),
            };
            if req.method() == Method::HEAD {
                return resp.body(HeadBody(length));
            }
            match blob.source {
                BlobSource::File(file) if !blob.stored => {
                    resp.body(FileBody::unmapped(file, start, length, Arc::clone(metrics)))
                }
                BlobSource::File(file) => resp.body(
                    FileBody::new(file, blob.digest, start, length, Arc::clone(metrics))
                        .encoded_as(rep.encoding.map_or("identity", |e| e.as_str())),
                ),
                BlobSource::Remote(remote) => {
                    let metrics = Arc::clone(metrics);
                    let counted = remote.stream(start, length).inspect(move |chunk| {
                        if let Ok(bytes) = chunk {
                            metrics.download_bytes.fetch_add(
                                bytes.len() as u64,
                                std::sync::atomic::Ordering::Relaxed,
                            );
                            metrics.compression.sent("identity", bytes.len() as u64);
                        }
                    });
                    resp.body(actix_web::body::SizedStream::new(length, counted))
                }
            }
        }
    }
}

fn entity_headers(
    resp: &mut HttpResponseBuilder,
    blob: &Blob,
    pre: &Preformatted,
    disposition: bool,
) {
    resp.insert_header((
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    ))
    .insert_header((
        HeaderName::from_static("repr-digest"),
        pre.repr_digest.clone(),
    ));
    if disposition {
        resp.insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{}\"", blob.file_name),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::byte_ranges;

    #[test]
    fn the_bytes_unit_is_matched_in_any_case() {
        assert_eq!(byte_ranges("bytes=0-9").as_deref(), Some("bytes=0-9"));
        assert_eq!(byte_ranges("BYTES=0-9").as_deref(), Some("bytes=0-9"));
        assert_eq!(byte_ranges("Bytes=-5").as_deref(), Some("bytes=-5"));
        assert_eq!(byte_ranges("items=0-9"), None);
        assert_eq!(byte_ranges("bytes 0-9"), None);
    }
}
