//! Build instructions (docs/http-api.md): which upstream answers are ones, their body decoded per its
//! `Content-Encoding` with the decoded size capped, and which of their headers go on the binary
//! (with CORS's `Access-Control-Expose-Headers` extended to velox-cache's own).
//!
//! Decoding uses the codec crates' readers through `Read::take`, not actix-http's `Decoder`,
//! which inflates a whole chunk at once: a small brotli or gzip body could grow to gigabytes
//! before any limit is checked.

use std::io::Read;

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::StatusCode;

use super::end_to_end;

/// A 2xx whose `X-Velox-Build` is `true` or `1`, in any case.
pub fn is_build_instruction(status: StatusCode, headers: &HeaderMap) -> bool {
    status.is_success()
        && headers
            .get("x-velox-build")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Headers of the PHP response that do not go on the binary: `X-Velox-Build`, and those that
/// describe the instruction's body rather than the binary or that velox-cache sets itself
/// (docs/http-api.md). `Content-Disposition` is not among them: the app's wins.
const NOT_COPIED: &[&str] = &[
    "x-velox-build",
    "content-type",
    "content-length",
    "content-encoding",
    "content-range",
    "content-location",
    "content-digest",
    "digest",
    "repr-digest",
    "etag",
    "last-modified",
    "accept-ranges",
    "x-cache-status",
    "x-cache-age",
    "x-build-time",
    "x-build-request-id",
    "x-build-resolved",
    "x-velox-cache-key",
];

/// velox-cache's headers on a binary that a browser app may want to read (docs/http-api.md).
const EXPOSED: &[&str] = &[
    "X-Cache-Status",
    "X-Cache-Age",
    "X-Build-Time",
    "X-Build-Request-ID",
    "X-Build-Resolved",
    "X-Velox-Cache-Key",
    "ETag",
    "Content-Disposition",
    "Content-Location",
    "Repr-Digest",
];

/// The upstream's headers copied onto the binary response, repeated ones kept repeated. When
/// the app answers with CORS (`Access-Control-Allow-Origin`), its `Access-Control-Expose-Headers`
/// gains velox-cache's headers, so that the browser app can read them too.
pub fn copied_headers(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let cors = headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN);
    let mut out: Vec<_> = end_to_end(headers)
        .filter(|(name, _)| !NOT_COPIED.contains(&name.as_str()))
        .filter(|(name, _)| !(cors && *name == header::ACCESS_CONTROL_EXPOSE_HEADERS))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    if cors {
        let mut exposed: Vec<&str> = headers
            .get_all(header::ACCESS_CONTROL_EXPOSE_HEADERS)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        for ours in EXPOSED {
            if !exposed.iter().any(|t| t.eq_ignore_ascii_case(ours)) {
                exposed.push(ours);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&exposed.join(", ")) {
            out.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, v));
        }
    }
    out
}

/// Decodes `body` per the `Content-Encoding` in `headers` (codings applied in order, so undone
/// in reverse). Any stage producing more than `limit` bytes is refused.
pub fn decode(body: &[u8], headers: &HeaderMap, limit: usize) -> Result<Vec<u8>, String> {
    let codings: Vec<String> = headers
        .get_all(header::CONTENT_ENCODING)
        .map(|v| {
            v.to_str()
                .map_err(|_| "has an unreadable Content-Encoding".to_string())
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    let mut data = body.to_vec();
    for coding in codings.iter().rev() {
        data = decode_one(&data, coding, limit)?;
    }
    Ok(data)
}

fn decode_one(data: &[u8], coding: &str, limit: usize) -> Result<Vec<u8>, String> {
    let broken = |e: std::io::Error| format!("cannot be decoded as {coding}: {e}");
    let reader: Box<dyn Read + '_> = match coding {
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(data)),
        // HTTP's deflate is zlib-wrapped; some servers send raw deflate, which clients accept.
        "deflate" if is_zlib(data) => Box::new(flate2::read::ZlibDecoder::new(data)),
        "deflate" => Box::new(flate2::read::DeflateDecoder::new(data)),
        "br" => Box::new(brotli::Decompressor::new(data, 8 * 1024)),
        "zstd" => {
            let mut d = zstd::stream::read::Decoder::with_buffer(data).map_err(broken)?;
            // zstd would allocate a window of up to 128 MiB on a frame's say-so; 8 MiB is plenty
            // for a body capped at 1 MiB.
            d.window_log_max(23).map_err(broken)?;
            Box::new(d)
        }
        other => return Err(format!("has an unsupported Content-Encoding `{other}`")),
    };
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(broken)?;
    if out.len() > limit {
        return Err(format!("decodes to more than {} KiB", limit / 1024));
    }
    Ok(out)
}

/// RFC 1950's header: method 8 (deflate), and the check bits.
fn is_zlib(data: &[u8]) -> bool {
    matches!(data, [cmf, flg, ..] if cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const JSON: &[u8] = br#"{"rr_version":"v2025.1.2","plugins":[{"module_name":"m","tag":"v1"}]}"#;

    fn encoded(coding: &'static str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
        m
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    }

    fn brotli(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(data).expect("br");
        }
        out
    }

    #[test]
    fn decodes_every_coding() {
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(JSON).expect("zlib");
        let zlib = zlib.finish().expect("zlib");
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        raw.write_all(JSON).expect("deflate");
        let raw = raw.finish().expect("deflate");
        let zstd = zstd::encode_all(JSON, 3).expect("zstd");
        for (coding, body) in [
            ("gzip", gzip(JSON)),
            ("GZIP", gzip(JSON)),
            ("deflate", zlib),
            ("deflate", raw),
            ("br", brotli(JSON)),
            ("zstd", zstd),
            ("identity", JSON.to_vec()),
        ] {
            assert_eq!(
                decode(&body, &encoded(coding), 1024).as_deref(),
                Ok(JSON),
                "{coding}"
            );
        }
        assert_eq!(decode(JSON, &HeaderMap::new(), 1024).as_deref(), Ok(JSON));
    }

    #[test]
    fn stacked_codings_are_undone_in_reverse() {
        let body = brotli(&gzip(JSON));
        assert_eq!(
            decode(&body, &encoded("gzip, br"), 1024).as_deref(),
            Ok(JSON)
        );
    }

    #[test]
    fn refuses_bombs_garbage_and_unknown_codings() {
        let zeros = vec![0u8; 8 * 1024 * 1024];
        for (coding, body) in [
            ("gzip", gzip(&zeros)),
            ("br", brotli(&zeros)),
            ("zstd", zstd::encode_all(&zeros[..], 3).expect("zstd")),
        ] {
            assert!(body.len() < 64 * 1024, "{coding}: {}", body.len());
            let err = decode(&body, &encoded(coding), 1024 * 1024).expect_err(coding);
            assert!(err.contains("more than 1024 KiB"), "{coding}: {err}");
        }
        assert!(decode(b"not gzip", &encoded("gzip"), 1024)
            .expect_err("garbage")
            .contains("cannot be decoded as gzip"));
        assert!(decode(JSON, &encoded("compress"), 1024)
            .expect_err("unknown")
            .contains("unsupported Content-Encoding `compress`"));
    }

    #[test]
    fn only_successful_true_or_one_is_an_instruction() {
        let with = |v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(
                HeaderName::from_static("x-velox-build"),
                HeaderValue::from_static(v),
            );
            m
        };
        for v in ["true", "TRUE", "True", "1", " true "] {
            assert!(is_build_instruction(StatusCode::OK, &with(v)), "{v}");
        }
        assert!(is_build_instruction(StatusCode::CREATED, &with("1")));
        for v in ["false", "0", "yes", ""] {
            assert!(!is_build_instruction(StatusCode::OK, &with(v)), "{v}");
        }
        assert!(!is_build_instruction(StatusCode::FORBIDDEN, &with("true")));
        assert!(!is_build_instruction(StatusCode::FOUND, &with("true")));
        assert!(!is_build_instruction(StatusCode::OK, &HeaderMap::new()));
    }

    #[test]
    fn cors_answers_expose_our_headers_too() {
        let mut m = HeaderMap::new();
        for (k, v) in [
            ("access-control-allow-origin", "https://app.example"),
            ("access-control-expose-headers", "X-App, etag"),
            ("access-control-expose-headers", "X-Other"),
        ] {
            m.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = copied_headers(&m);
        let exposed: Vec<&str> = out
            .iter()
            .filter(|(n, _)| n == header::ACCESS_CONTROL_EXPOSE_HEADERS)
            .filter_map(|(_, v)| v.to_str().ok())
            .collect();
        assert_eq!(
            exposed,
            [
                "X-App, etag, X-Other, X-Cache-Status, X-Cache-Age, X-Build-Time, \
              X-Build-Request-ID, X-Build-Resolved, X-Velox-Cache-Key, Content-Disposition, Content-Location, \
              Repr-Digest"
            ]
        );
        // Without CORS nothing is added, and an app's list passes as it is.
        let mut plain = HeaderMap::new();
        plain.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("X-App"),
        );
        let out = copied_headers(&plain);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, "X-App");
    }

    #[test]
    fn copies_the_apps_headers_but_not_the_instructions() {
        let mut m = HeaderMap::new();
        for (k, v) in [
            ("x-velox-build", "true"),
            ("content-type", "application/json"),
            ("content-length", "99"),
            ("content-encoding", "gzip"),
            ("etag", "\"php\""),
            ("x-cache-status", "HIT"),
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("content-disposition", "attachment; filename=\"rr\""),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("cache-control", "private"),
            ("x-app", "velox-app"),
        ] {
            m.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let mut names: Vec<String> = copied_headers(&m)
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("?")))
            .collect();
        // Names come in the map's order; a stable sort keeps the two cookies' own order.
        names.sort_by(|a, b| a.split(':').next().cmp(&b.split(':').next()));
        assert_eq!(
            names,
            [
                "cache-control: private",
                "content-disposition: attachment; filename=\"rr\"",
                "set-cookie: a=1",
                "set-cookie: b=2",
                "x-app: velox-app",
            ]
        );
    }
}
