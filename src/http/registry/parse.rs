//! The registry's input, checked before anything is looked up: the path after `/v2/` (repository
//! name, tag or digest), and the `Accept` header of a manifest request. Grammars are the OCI
//! Distribution Spec's (names, tags, digests).

use crate::oci::Flavor;

/// What a path under `/v2/` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    Manifest {
        name: String,
        reference: Reference,
    },
    Blob {
        name: String,
        digest: Digest,
    },
    Tags {
        name: String,
    },
    /// `/v2/<name>/blobs/uploads/…`: the push side, refused.
    Upload,
    /// Nothing the pull API has.
    Unknown,
}

/// A digest as the registry can look it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    Sha256([u8; 32]),
    /// Well-formed, of an algorithm this registry never makes: nothing has it.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

/// Bad input, named by the spec's error codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    Name(String),
    Digest(String),
    Tag(String),
}

/// Parses the path after `/v2/`.
pub fn route(tail: &str) -> Result<Route, Invalid> {
    if tail.is_empty() {
        return Ok(Route::Base);
    }
    if let Some(name) = tail.strip_suffix("/tags/list") {
        return Ok(Route::Tags {
            name: name_of(name)?,
        });
    }
    if tail.contains("/blobs/uploads") {
        return Ok(Route::Upload);
    }
    if let Some((name, reference)) = tail.rsplit_once("/manifests/") {
        let name = name_of(name)?;
        let reference = if reference.contains(':') {
            Reference::Digest(digest(reference)?)
        } else if is_tag(reference) {
            Reference::Tag(reference.to_owned())
        } else {
            return Err(Invalid::Tag(reference.to_owned()));
        };
        return Ok(Route::Manifest { name, reference });
    }
    if let Some((name, d)) = tail.rsplit_once("/blobs/") {
        let name = name_of(name)?;
        return Ok(Route::Blob {
            name,
            digest: digest(d)?,
        });
    }
    Ok(Route::Unknown)
}

fn name_of(name: &str) -> Result<String, Invalid> {
    if is_name(name) {
        Ok(name.to_owned())
    } else {
        Err(Invalid::Name(name.to_owned()))
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most 255 bytes.
pub fn is_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.split('/').all(is_component)
}

fn is_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Separators between alphanumeric runs: one `.`, one or two `_`, or any number of `-`.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
pub fn is_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes[1..]
            .iter()
            .all(|&b| word(b) || b == b'.' || b == b'-')
}

/// `algorithm:encoded` (`[a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+`); a `sha256` digest must be
/// 64 lowercase hex digits.
pub fn digest(s: &str) -> Result<Digest, Invalid> {
    let bad = || Invalid::Digest(s.to_owned());
    let (algorithm, encoded) = s.split_once(':').ok_or_else(bad)?;
    let algorithm_ok = !algorithm.is_empty()
        && algorithm.split(['+', '.', '_', '-']).all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    let encoded_ok = !encoded.is_empty()
        && encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'=' || b == b'_' || b == b'-');
    if !algorithm_ok || !encoded_ok {
        return Err(bad());
    }
    if algorithm == "sha256" {
        return crate::oci::parse_digest(s)
            .map(Digest::Sha256)
            .ok_or_else(bad);
    }
    Ok(Digest::Other)
}

/// What a manifest request by tag is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// The index (or Docker's manifest list) over the release's platforms.
    Index(Flavor),
    /// A client that takes no index: one platform's manifest (linux/amd64 when there is one).
    Manifest(Flavor),
}

/// The answer `accept` (every `Accept` header, joined) asks for. `Ok(None)`: the client accepts
/// none of the manifest types. `Err`: the header is malformed (an item that is not a media
/// range, a `q` that is not a number from 0 to 1).
pub fn negotiate(accept: Option<&str>) -> Result<Option<Wanted>, String> {
    use crate::oci::document::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(Some(Wanted::Index(Flavor::Oci)));
    };
    let mut taken: Vec<String> = Vec::new();
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let range = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        if range.is_empty() {
            continue;
        }
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+*".contains(&b))
        };
        match range.split_once('/') {
            Some((t, s)) if token(t) && token(s) => {}
            _ => return Err(format!("`{}` is not a media range", range.escape_debug())),
        }
        let mut q = 1.0f64;
        for p in parts {
            if let Some((k, v)) = p.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    q = v
                        .trim()
                        .parse()
                        .ok()
                        .filter(|q: &f64| (0.0..=1.0).contains(q))
                        .ok_or_else(|| {
                            format!("`{}` is not a quality value", v.trim().escape_debug())
                        })?;
                }
            }
        }
        if q > 0.0 {
            taken.push(range);
        }
    }
    let has = |t: &str| taken.iter().any(|x| x == t);
    let any = has("*/*") || has("application/*");
    Ok(if any || has(OCI_INDEX) {
        Some(Wanted::Index(Flavor::Oci))
    } else if has(DOCKER_LIST) {
        Some(Wanted::Index(Flavor::Docker))
    } else if has(OCI_MANIFEST) {
        Some(Wanted::Manifest(Flavor::Oci))
    } else if has(DOCKER_MANIFEST) {
        Some(Wanted::Manifest(Flavor::Docker))
    } else {
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn routes() {
        assert_eq!(route(""), Ok(Route::Base));
        assert_eq!(
            route("rr/prod/manifests/latest"),
            Ok(Route::Manifest {
                name: "rr/prod".into(),
                reference: Reference::Tag("latest".into())
            })
        );
        assert!(matches!(
            route(&format!("rr/prod/manifests/{D}")),
            Ok(Route::Manifest {
                reference: Reference::Digest(Digest::Sha256(_)),
                ..
            })
        ));
        assert!(matches!(
            route(&format!("rr/prod/blobs/{D}")),
            Ok(Route::Blob {
                digest: Digest::Sha256(_),
                ..
            })
        ));
        assert_eq!(
            route("rr/prod/tags/list"),
            Ok(Route::Tags {
                name: "rr/prod".into()
            })
        );
        assert_eq!(route("rr/prod/blobs/uploads/"), Ok(Route::Upload));
        assert_eq!(route("rr/prod/elsewhere"), Ok(Route::Unknown));
    }

    #[test]
    fn bad_names_tags_and_digests_are_named() {
        for name in [
            "RR/prod",
            "rr//prod",
            "rr/prod-",
            "-rr",
            "rr/pr..od",
            "rr/a___b",
            "",
        ] {
            assert!(!is_name(name), "{name}");
        }
        for name in ["rr/prod", "a/b-c/d__e", "rr/prod.v2", "rr/a---b"] {
            assert!(is_name(name), "{name}");
        }
        assert_eq!(
            route("rr/Prod/manifests/latest"),
            Err(Invalid::Name("rr/Prod".into()))
        );
        assert_eq!(
            route("rr/prod/manifests/.latest"),
            Err(Invalid::Tag(".latest".into()))
        );
        assert!(!is_tag(&"a".repeat(129)));
        assert!(is_tag(&"a".repeat(128)));
        for d in [
            "sha256:abc",
            "sha256:",
            ":abc",
            "sha256:ZZ",
            &D.to_uppercase(),
            "sha256:0123!",
        ] {
            assert!(matches!(digest(d), Err(Invalid::Digest(_))), "{d}");
        }
        assert_eq!(digest("sha512:abcdef"), Ok(Digest::Other));
        assert!(matches!(
            route("rr/prod/blobs/sha256:short"),
            Err(Invalid::Digest(_))
        ));
    }

    #[test]
    fn accept_negotiation() {
        use crate::oci::document::*;
        let w = |a: &str| negotiate(Some(a));
        assert_eq!(negotiate(None), Ok(Some(Wanted::Index(Flavor::Oci))));
        assert_eq!(w("*/*"), Ok(Some(Wanted::Index(Flavor::Oci))));
        assert_eq!(
            w(&format!("{DOCKER_MANIFEST}, {DOCKER_LIST}")),
            Ok(Some(Wanted::Index(Flavor::Docker)))
        );
        assert_eq!(
            w(&format!("{DOCKER_MANIFEST}, {OCI_INDEX};q=0.5")),
            Ok(Some(Wanted::Index(Flavor::Oci)))
        );
        assert_eq!(
            w(DOCKER_MANIFEST),
            Ok(Some(Wanted::Manifest(Flavor::Docker)))
        );
        assert_eq!(w(OCI_MANIFEST), Ok(Some(Wanted::Manifest(Flavor::Oci))));
        assert_eq!(
            w(&format!("{OCI_INDEX};q=0, {DOCKER_LIST}")),
            Ok(Some(Wanted::Index(Flavor::Docker)))
        );
        assert_eq!(w("text/html"), Ok(None));
        assert!(w("not a media type").is_err());
        assert!(w("application/json;q=2").is_err());
        assert!(w("application/json;q=x").is_err());
    }
}
