//! Pinned and floating references (docs/build-requests.md, "Floating references").
//!
//! A tag is pinned when it names one fixed source tree: a semantic version (`v1.2.3`, with
//! optional pre-release and build parts, which covers Go's pseudo-versions
//! `v0.0.0-20240102150405-abcdef123456` and `+incompatible`), or a commit hash of 7 to 40 hex
//! digits. Everything else floats: `latest` ("whatever `go mod tidy` resolves" in Velox's
//! builder), branch names (`master`, `main`, `develop`), a bare major (`v5`), a version without
//! its `v`. A request with any floating part is floating.

use super::BuildRequest;

/// Whether `tag` names one fixed source tree.
pub fn is_pinned(tag: &str) -> bool {
    is_semver(tag) || is_commit_hash(tag)
}

/// 7 to 40 lowercase hex digits (Velox's rule for `rr_version` hashes; Go's short hashes).
fn is_commit_hash(tag: &str) -> bool {
    (7..=40).contains(&tag.len()) && tag.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `vMAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]` per semver.org 2.0 (as Go's `golang.org/x/mod/semver`
/// takes it, with the leading `v`): numbers without leading zeros, dot-separated identifiers of
/// `[0-9A-Za-z-]`, numeric pre-release identifiers without leading zeros.
fn is_semver(tag: &str) -> bool {
    let Some(rest) = tag.strip_prefix('v') else {
        return false;
    };
    let (rest, build) = match rest.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (rest, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() != 3 || !parts.iter().all(|p| is_number(p)) {
        return false;
    }
    if let Some(pre) = pre {
        let ok = pre.split('.').all(|id| {
            is_identifier(id) && (!id.bytes().all(|b| b.is_ascii_digit()) || is_number(id))
        });
        if !ok {
            return false;
        }
    }
    if let Some(build) = build {
        if !build.split('.').all(is_identifier) {
            return false;
        }
    }
    true
}

/// A decimal number without leading zeros.
fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl BuildRequest {
    /// Whether any part of the request floats: `rr_version` or a plugin tag.
    pub fn is_floating(&self) -> bool {
        !is_pinned(&self.rr_version) || self.plugins.iter().any(|p| !is_pinned(&p.tag))
    }
}

/// Whether a request kept in a manifest (`BuildRequest::manifest_payload`) floats; `None` when
/// the payload is not a request this build reads.
pub fn payload_is_floating(payload: &serde_json::Value) -> Option<bool> {
    serde_json::from_value::<BuildRequest>(payload.clone())
        .ok()
        .map(|r| r.is_floating())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tags as they appear in RoadRunner plugin requests (velox.toml files, velox-app, the
    /// plugins' own release pages), and what each is.
    const TAGS: &[(&str, bool)] = &[
        // Releases of roadrunner-server plugins and RoadRunner itself.
        ("v5.2.7", true),
        ("v5.0.0", true),
        ("v4.1.0", true),
        ("v2025.1.2", true),
        ("v2024.3.5", true),
        ("v2023.3.12", true),
        // Pre-releases as the plugins tag them.
        ("v5.0.0-beta.1", true),
        ("v5.0.0-rc.2", true),
        ("v2025.1.0-alpha.1", true),
        ("v2024.1.0-beta.5", true),
        // Go pseudo-versions (an untagged commit) and +incompatible majors.
        ("v0.0.0-20240102150405-abcdef123456", true),
        ("v5.2.8-0.20250130121212-0123456789ab", true),
        ("v2.0.0+incompatible", true),
        // Commit hashes.
        ("abcdef1", true),
        ("a1b2c3d4e5f60718293a4b5c6d7e8f9012345678", true),
        // Moving references.
        ("latest", false),
        ("master", false),
        ("main", false),
        ("develop", false),
        ("feature/otel-tracing", false),
        ("v5", false),
        ("v5.2", false),
        ("5.2.7", false),
        ("v05.2.7", false),
        ("v5.2.7-", false),
        ("v5.2.7-beta.01", false),
        ("ABCDEF1", false),
        ("abc12", false),
        ("", false),
    ];

    #[test]
    fn tag_table() {
        for (tag, pinned) in TAGS {
            assert_eq!(is_pinned(tag), *pinned, "{tag:?}");
        }
    }

    fn request(rr: &str, tags: &[&str]) -> BuildRequest {
        let plugins: Vec<serde_json::Value> = tags
            .iter()
            .enumerate()
            .map(
                |(i, t)| serde_json::json!({"module_name": format!("github.com/p/p{i}"), "tag": t}),
            )
            .collect();
        let body = serde_json::json!({"rr_version": rr, "plugins": plugins});
        BuildRequest::parse(body.to_string().as_bytes())
            .expect("valid request")
            .0
    }

    #[test]
    fn manifest_payloads_keep_the_classification() {
        let floating = request("v2025.1.2", &["latest"]);
        let pinned = request("v2025.1.2", &["v5.2.7"]);
        assert_eq!(
            payload_is_floating(&floating.manifest_payload()),
            Some(true)
        );
        assert_eq!(payload_is_floating(&pinned.manifest_payload()), Some(false));
        assert_eq!(payload_is_floating(&serde_json::json!([1])), None);
    }

    #[test]
    fn one_floating_part_makes_the_request_floating() {
        assert!(!request("v2025.1.2", &["v5.2.7", "v5.1.0"]).is_floating());
        assert!(request("v2025.1.2", &["v5.2.7", "latest"]).is_floating());
        assert!(request("master", &["v5.2.7"]).is_floating());
        assert!(!request("abcdef1", &["v5.2.7"]).is_floating());
    }
}
