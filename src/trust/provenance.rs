//! SLSA provenance v1 for a built binary, as an in-toto Statement v1 (SPEC §18).
//!
//! The statement is plain `serde_json`: no in-toto crate knows Statement v1 without pulling in
//! much more than it saves. `docs/provenance.md` defines [`BUILD_TYPE`] and its parameters.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// The in-toto statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// SLSA provenance v1's predicate type.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// What a velox-cache build is: the parameters and what they mean are defined in
/// `docs/provenance.md`, under the heading this anchor names. The version is part of the URI: a
/// change that alters what a parameter means gets a new anchor (`#build-type-v2`), never an edit.
pub const BUILD_TYPE: &str =
    "https://github.com/velox-cache/velox-cache/blob/main/docs/provenance.md#build-type-v1";

/// Everything a provenance statement says about one built binary.
#[derive(Debug, Clone)]
pub struct Provenance<'a> {
    /// The binary's file name (the subject's `name`).
    pub subject_name: &'a str,
    /// The binary's SHA-256, lower-case hex.
    pub digest_hex: &'a str,
    /// Usually [`BUILD_TYPE`].
    pub build_type: &'a str,
    /// The recipe as it was asked for.
    pub external_parameters: Value,
    /// The versions it resolved to.
    pub internal_parameters: Value,
    /// `(uri, digest)`: the uri as [`purl_go`] makes it; the digest a Go module hash (`h1:…`),
    /// `<algorithm>:<hex>` or a bare SHA-256 in hex.
    pub resolved_dependencies: Vec<(String, Option<String>)>,
    /// `signing.builder_id`.
    pub builder_id: &'a str,
    /// velox-cache's version.
    pub builder_version: &'a str,
    /// The Velox server that ran the build. User information in the URL is masked: the
    /// statement is public.
    pub velox_server: &'a str,
    /// The request id.
    pub invocation_id: &'a str,
    pub started_on: SystemTime,
    pub finished_on: SystemTime,
}

/// The in-toto Statement v1 with a SLSA provenance v1 predicate.
///
/// The Velox server goes in `runDetails.builder.builderDependencies`: SLSA v1 keeps
/// `byproducts` for artifacts the build produced besides its output (logs, caches), while the
/// server is part of the build platform that ran the build, which is what builder dependencies
/// describe.
///
/// A time that RFC 3339 cannot show (before 1970 or after 9999) leaves its field out; both are
/// optional in SLSA v1.
pub fn statement(p: &Provenance) -> Value {
    let dependencies: Vec<Value> = p
        .resolved_dependencies
        .iter()
        .map(|(uri, digest)| {
            let mut d = Map::new();
            d.insert("uri".into(), Value::String(uri.clone()));
            if let Some(set) = digest.as_deref().and_then(digest_set) {
                d.insert("digest".into(), Value::Object(set));
            }
            Value::Object(d)
        })
        .collect();
    let mut metadata = Map::new();
    metadata.insert("invocationId".into(), json!(p.invocation_id));
    if let Some(t) = rfc3339(p.started_on) {
        metadata.insert("startedOn".into(), json!(t));
    }
    if let Some(t) = rfc3339(p.finished_on) {
        metadata.insert("finishedOn".into(), json!(t));
    }
    json!({
        "_type": STATEMENT_TYPE,
        "subject": [{"name": p.subject_name, "digest": {"sha256": p.digest_hex}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": p.build_type,
                "externalParameters": p.external_parameters,
                "internalParameters": p.internal_parameters,
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {
                    "id": p.builder_id,
                    "version": {"velox-cache": p.builder_version},
                    "builderDependencies": [
                        {"name": "velox", "uri": crate::redact::url(p.velox_server)}
                    ],
                },
                "metadata": metadata,
            },
        },
    })
}

/// An in-toto DigestSet for one dependency digest: a Go module hash `h1:<base64>` becomes
/// `dirHash` in hex (in-toto's encoding of the same hash), `<alg>:<hex>` becomes `{alg: hex}`,
/// 64 hex digits alone a `sha256`. Anything else gives no digest rather than a wrong one.
fn digest_set(digest: &str) -> Option<Map<String, Value>> {
    let is_hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let (alg, value) = match digest.split_once(':') {
        Some(("h1", b64)) => {
            let raw = B64.decode(b64).ok().filter(|r| r.len() == 32)?;
            ("dirHash".to_string(), hex::encode(raw))
        }
        Some((alg, hex)) if !alg.is_empty() && is_hex(hex) => {
            (alg.to_ascii_lowercase(), hex.to_ascii_lowercase())
        }
        None if digest.len() == 64 && is_hex(digest) => {
            ("sha256".to_string(), digest.to_ascii_lowercase())
        }
        _ => return None,
    };
    let mut set = Map::new();
    set.insert(alg, Value::String(value));
    Some(set)
}

/// RFC 3339 in UTC to the second, or None when `t` is outside what it can show (humantime
/// panics there).
fn rfc3339(t: SystemTime) -> Option<String> {
    const YEAR_10000: u64 = 253_402_300_800;
    let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
    (secs < YEAR_10000).then(|| humantime::format_rfc3339_seconds(t).to_string())
}

/// A Go module as a package URL: `pkg:golang/<namespace>/<name>@<version>`.
///
/// The purl spec's golang type lower-cases the namespace and name and percent-encodes each path
/// segment and the version (a `+incompatible` version keeps its `+` as `%2B`); empty segments
/// are dropped. The exact module path, with its case, is in the statement's parameters.
pub fn purl_go(module: &str, version: &str) -> String {
    let path: Vec<String> = module
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_encode(&s.to_lowercase()))
        .collect();
    let mut purl = format!("pkg:golang/{}", path.join("/"));
    if !version.is_empty() {
        purl.push('@');
        purl.push_str(&percent_encode(version));
    }
    purl
}

/// Every byte outside RFC 3986's unreserved set as `%XX` (upper case), as the purl spec asks.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn purl_go_follows_the_golang_type() {
        assert_eq!(
            purl_go("github.com/roadrunner-server/roadrunner/v2025", "v2025.1.2"),
            "pkg:golang/github.com/roadrunner-server/roadrunner/v2025@v2025.1.2"
        );
        assert_eq!(
            purl_go("github.com/BurntSushi/toml", "v1.3.2"),
            "pkg:golang/github.com/burntsushi/toml@v1.3.2"
        );
        assert_eq!(
            purl_go("github.com/x/y", "v2.0.0+incompatible"),
            "pkg:golang/github.com/x/y@v2.0.0%2Bincompatible"
        );
        assert_eq!(
            purl_go("example.com/a b//c/", "v0.0.0-20240101000000-abcdef012345"),
            "pkg:golang/example.com/a%20b/c@v0.0.0-20240101000000-abcdef012345"
        );
        assert_eq!(purl_go("example.com/m", ""), "pkg:golang/example.com/m");
        assert_eq!(
            purl_go("example.com/ü", "v1"),
            "pkg:golang/example.com/%C3%BC@v1"
        );
    }

    #[test]
    fn dependency_digests_become_digest_sets() {
        // in-toto's own example: the h1 hash of github.com/marklodato/go-hello-world@v0.0.1.
        let set = digest_set("h1:Khu2En+0gcYPZ2kuIihfswbzxv/mIHXgzPZ018Oty48=").expect("h1");
        assert_eq!(
            set["dirHash"],
            "2a1bb6127fb481c60f67692e22285fb306f3c6ffe62075e0ccf674d7c3adcb8f"
        );
        let hex64 = "AB".repeat(32);
        assert_eq!(digest_set(&hex64).expect("bare")["sha256"], "ab".repeat(32));
        assert_eq!(digest_set("sha512:00ff").expect("alg")["sha512"], "00ff");
        for bad in ["h1:notbase64!", "h1:AAAA", "sha256:xyz", ":00", "abc", ""] {
            assert!(digest_set(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn times_outside_rfc3339_are_left_out_not_a_panic() {
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)).as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
        assert_eq!(rfc3339(UNIX_EPOCH - Duration::from_secs(1)), None);
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(253_402_300_800)),
            None
        );
    }
}
