//! The build request (Velox's `api.request.v1.BuildRequest`), its validation (docs/build-requests.md) and its
//! cache key.
//!
//! Parsing is lenient where protojson is (snake_case and lowerCamelCase names, `null` for absent)
//! and strict where Velox is (the same validation rules, and a few more: no control characters,
//! only the canonical UUID form). Fields Velox does not know are dropped here, so they reach
//! neither Velox nor the key. Velox v3 requires a `request_id`; one is made up when it is missing.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::ids::CacheKey;

/// Largest body accepted for a build request.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most plugins (and, by the same reasoning, replaces and excludes) in one request.
pub const MAX_PLUGINS: usize = 256;
/// Longest string field, in bytes.
pub const MAX_STRING_BYTES: usize = 512;

/// Version tag of the canonical key encoding. Changing the encoding means a new tag, so old and
/// new keys can never collide.
const KEY_DOMAIN: &[u8] = b"velox-cache/key/v1\0";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub arch: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Plugin {
    #[serde(default, alias = "moduleName")]
    pub module_name: String,
    #[serde(default)]
    pub tag: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Replace {
    #[serde(default)]
    pub old: String,
    #[serde(default)]
    pub new: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Exclude {
    #[serde(default)]
    pub module: String,
    #[serde(default)]
    pub version: String,
}

/// A validated build request. Construct it with [`BuildRequest::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRequest {
    #[serde(default, alias = "requestId", skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, alias = "forceRebuild")]
    pub force_rebuild: bool,
    #[serde(
        default,
        alias = "targetPlatform",
        skip_serializing_if = "Option::is_none"
    )]
    pub target_platform: Option<Platform>,
    #[serde(default, alias = "rrVersion")]
    pub rr_version: String,
    #[serde(default)]
    pub plugins: Vec<Plugin>,
    #[serde(default)]
    pub replaces: Vec<Replace>,
    #[serde(default)]
    pub excludes: Vec<Exclude>,
    #[serde(default)]
    pub race: bool,
    #[serde(default)]
    pub debug: bool,
}

/// Why a build request was refused. The message is meant for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidRequest {
    pub message: String,
    /// The request id, when the body got far enough to have one.
    pub request_id: Option<String>,
}

impl InvalidRequest {
    fn new(message: impl Into<String>) -> Self {
        InvalidRequest {
            message: message.into(),
            request_id: None,
        }
    }
}

/// Known field names per object, in both spellings.
const TOP_FIELDS: &[&str] = &[
    "request_id",
    "requestId",
    "force_rebuild",
    "forceRebuild",
    "target_platform",
    "targetPlatform",
    "rr_version",
    "rrVersion",
    "plugins",
    "replaces",
    "excludes",
    "race",
    "debug",
];
const PLATFORM_FIELDS: &[&str] = &["os", "arch"];
const PLUGIN_FIELDS: &[&str] = &["module_name", "moduleName", "tag"];
const REPLACE_FIELDS: &[&str] = &["old", "new"];
const EXCLUDE_FIELDS: &[&str] = &["module", "version"];

/// Removes `null` members (protojson's "absent") and members Velox does not know, recording the
/// latter's paths.
fn strip_object(
    obj: &mut Map<String, Value>,
    known: &[&str],
    path: &str,
    dropped: &mut Vec<String>,
) {
    obj.retain(|name, value| {
        if value.is_null() {
            return false;
        }
        if known.contains(&name.as_str()) {
            return true;
        }
        dropped.push(if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        });
        false
    });
}

fn strip_array(
    root: &mut Map<String, Value>,
    field: &str,
    known: &[&str],
    dropped: &mut Vec<String>,
) {
    if let Some(Value::Array(items)) = root.get_mut(field) {
        for (i, item) in items.iter_mut().enumerate() {
            if let Value::Object(obj) = item {
                strip_object(obj, known, &format!("{field}[{i}]"), dropped);
            }
        }
    }
}

impl BuildRequest {
    /// Parses and validates a JSON body. Returns the request and the paths of the fields that were
    /// dropped because Velox would not know them.
    pub fn parse(body: &[u8]) -> Result<(BuildRequest, Vec<String>), InvalidRequest> {
        if body.len() > MAX_BODY_BYTES {
            return Err(InvalidRequest::new(
                "the build request is larger than 1 MiB",
            ));
        }
        let mut value: Value = serde_json::from_slice(body)
            .map_err(|e| InvalidRequest::new(format!("the body is not valid JSON: {e}")))?;
        let Value::Object(root) = &mut value else {
            return Err(InvalidRequest::new(
                "the build request must be a JSON object",
            ));
        };
        let mut dropped = Vec::new();
        strip_object(root, TOP_FIELDS, "", &mut dropped);
        for name in ["target_platform", "targetPlatform"] {
            if let Some(Value::Object(obj)) = root.get_mut(name) {
                strip_object(obj, PLATFORM_FIELDS, name, &mut dropped);
            }
        }
        strip_array(root, "plugins", PLUGIN_FIELDS, &mut dropped);
        strip_array(root, "replaces", REPLACE_FIELDS, &mut dropped);
        strip_array(root, "excludes", EXCLUDE_FIELDS, &mut dropped);
        // A request id, even from an otherwise broken body, lets the error carry it.
        // Only a well-formed id is echoed: anything else may be long or hold control characters.
        let request_id = ["request_id", "requestId"]
            .iter()
            .find_map(|n| root.get(*n).and_then(Value::as_str))
            .filter(|id| is_canonical_uuid(id))
            .map(str::to_owned);
        for (a, b) in [
            ("request_id", "requestId"),
            ("force_rebuild", "forceRebuild"),
            ("target_platform", "targetPlatform"),
            ("rr_version", "rrVersion"),
        ] {
            if root.contains_key(a) && root.contains_key(b) {
                return Err(InvalidRequest {
                    message: format!("the fields `{a}` and `{b}` are the same field given twice"),
                    request_id,
                });
            }
        }
        let mut req: BuildRequest = serde_json::from_value(value).map_err(|e| InvalidRequest {
            message: format!("the build request is malformed: {e}"),
            request_id: request_id.clone(),
        })?;
        req.validate().map_err(|message| InvalidRequest {
            message,
            request_id,
        })?;
        // Velox v3 refuses an absent or empty id (`string.uuid_empty`); the caller learns the one
        // made up here from `X-Build-Request-ID` and error bodies.
        if req.request_id().is_none() {
            req.request_id = Some(uuid::Uuid::new_v4().to_string());
        }
        Ok((req, dropped))
    }

    /// The rules Velox applies, checked here so that Velox is never called with a request it would
    /// refuse.
    fn validate(&self) -> Result<(), String> {
        // Every string goes through here: a control character (a `\n` in `rr_version`, say)
        // would otherwise reach Velox's command lines and logs.
        let check_len = |name: &str, s: &str| {
            if s.len() > MAX_STRING_BYTES {
                Err(format!("`{name}` is longer than {MAX_STRING_BYTES} bytes"))
            } else if s.chars().any(char::is_control) {
                Err(format!("`{name}` holds a control character"))
            } else {
                Ok(())
            }
        };
        let non_empty = |name: &str, s: &str| {
            if s.trim().is_empty() {
                Err(format!("`{name}` is required"))
            } else {
                check_len(name, s)
            }
        };
        if let Some(id) = &self.request_id {
            check_len("request_id", id)?;
            if !id.is_empty() && !is_canonical_uuid(id) {
                return Err(
                    "`request_id` must be empty or a UUID in its canonical 8-4-4-4-12 hex form"
                        .into(),
                );
            }
        }
        non_empty("rr_version", &self.rr_version)?;
        if !valid_rr_version(&self.rr_version) {
            return Err(
                "`rr_version` must be a version (v1.2.3...), `master`, or a commit hash of 7 to 40 hex digits"
                    .into(),
            );
        }
        if let Some(p) = &self.target_platform {
            check_len("target_platform.os", &p.os)?;
            check_len("target_platform.arch", &p.arch)?;
        }
        if self.plugins.is_empty() {
            return Err("`plugins` must list at least one plugin".into());
        }
        for (name, n) in [
            ("plugins", self.plugins.len()),
            ("replaces", self.replaces.len()),
            ("excludes", self.excludes.len()),
        ] {
            if n > MAX_PLUGINS {
                return Err(format!(
                    "`{name}` has {n} items; at most {MAX_PLUGINS} are allowed"
                ));
            }
        }
        for (i, p) in self.plugins.iter().enumerate() {
            non_empty(&format!("plugins[{i}].module_name"), &p.module_name)?;
            // Before any Go module proxy or Velox sees it: the path becomes part of URLs.
            super::modpath::check_module_path(&p.module_name).map_err(|why| {
                format!(
                    "`plugins[{i}].module_name` ({:?}) is not a Go module path: {why}",
                    p.module_name
                )
            })?;
            non_empty(&format!("plugins[{i}].tag"), &p.tag)?;
        }
        for (i, r) in self.replaces.iter().enumerate() {
            non_empty(&format!("replaces[{i}].old"), &r.old)?;
            non_empty(&format!("replaces[{i}].new"), &r.new)?;
        }
        for (i, e) in self.excludes.iter().enumerate() {
            non_empty(&format!("excludes[{i}].module"), &e.module)?;
            non_empty(&format!("excludes[{i}].version"), &e.version)?;
        }
        Ok(())
    }

    /// The cache key: SHA-256 of a versioned, length-prefixed canonical encoding of exactly the
    /// fields that shape the binary. Plugins, replaces and excludes are sorted; `request_id` and
    /// `force_rebuild` are left out.
    pub fn cache_key(&self) -> CacheKey {
        let mut h = Sha256::new();
        h.update(KEY_DOMAIN);
        let mut put = |s: &str| {
            h.update((s.len() as u32).to_be_bytes());
            h.update(s.as_bytes());
        };
        put(&self.rr_version);
        match &self.target_platform {
            None => put("\u{0}none"),
            Some(p) => {
                put("\u{0}platform");
                put(&p.os);
                put(&p.arch);
            }
        }
        let mut plugins: Vec<&Plugin> = self.plugins.iter().collect();
        plugins.sort();
        put(&format!("\u{0}plugins:{}", plugins.len()));
        for p in plugins {
            put(&p.module_name);
            put(&p.tag);
        }
        let mut replaces: Vec<&Replace> = self.replaces.iter().collect();
        replaces.sort();
        put(&format!("\u{0}replaces:{}", replaces.len()));
        for r in replaces {
            put(&r.old);
            put(&r.new);
        }
        let mut excludes: Vec<&Exclude> = self.excludes.iter().collect();
        excludes.sort();
        put(&format!("\u{0}excludes:{}", excludes.len()));
        for e in excludes {
            put(&e.module);
            put(&e.version);
        }
        put(if self.race {
            "\u{0}race:1"
        } else {
            "\u{0}race:0"
        });
        put(if self.debug {
            "\u{0}debug:1"
        } else {
            "\u{0}debug:0"
        });
        CacheKey(h.finalize().into())
    }

    /// The download name: `roadrunner-<os>-<arch>`, `.exe` for windows, `roadrunner` without a
    /// platform. Characters that could break a header are replaced.
    pub fn file_name(&self) -> String {
        match &self.target_platform {
            None => "roadrunner".to_owned(),
            Some(p) if p.os.is_empty() && p.arch.is_empty() => "roadrunner".to_owned(),
            Some(p) => {
                let clean = |s: &str| -> String {
                    s.chars()
                        .map(|c| {
                            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                                c
                            } else {
                                '_'
                            }
                        })
                        .collect()
                };
                let exe = if p.os.eq_ignore_ascii_case("windows") {
                    ".exe"
                } else {
                    ""
                };
                format!("roadrunner-{}-{}{exe}", clean(&p.os), clean(&p.arch))
            }
        }
    }

    /// What the manifest keeps of the request: everything that shaped the binary, without the
    /// per-call `request_id` and `force_rebuild`.
    pub fn manifest_payload(&self) -> serde_json::Value {
        let kept = BuildRequest {
            request_id: None,
            force_rebuild: false,
            ..self.clone()
        };
        serde_json::to_value(kept).unwrap_or(Value::Null)
    }

    /// The request id when it is set and not empty.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref().filter(|s| !s.is_empty())
    }
}

/// Velox's (protovalidate's) UUID rule: `^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`,
/// any version, either case. `uuid::Uuid::try_parse` also takes `urn:uuid:`, braces and the bare
/// 32-digit form, which Velox refuses.
fn is_canonical_uuid(id: &str) -> bool {
    id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// `^(v\d+\.\d+\.\d+.*|master|[a-f0-9]{7,40})$`
fn valid_rr_version(v: &str) -> bool {
    if v == "master" {
        return true;
    }
    if (7..=40).contains(&v.len()) && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return true;
    }
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let mut rest = rest;
    for i in 0..3 {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        if i < 2 {
            let Some(r) = rest.strip_prefix('.') else {
                return false;
            };
            rest = r;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "request_id": "b66d5617-64dd-419b-a68b-b002938320ab",
            "force_rebuild": false,
            "target_platform": {"os": "linux", "arch": "amd64"},
            "rr_version": "v2025.1.2",
            "plugins": [
                {"module_name": "github.com/roadrunner-server/http/v5", "tag": "v5.2.7"},
                {"module_name": "github.com/roadrunner-server/grpc/v5", "tag": "v5.1.0"}
            ],
            "replaces": [{"old": "github.com/a/b", "new": "github.com/c/b@v1.2.3"}],
            "excludes": [{"module": "github.com/x/y", "version": "v0.1.0"}],
            "race": false,
            "debug": false
        })
    }

    type Edit = (&'static str, Box<dyn Fn(&mut Value)>);

    fn parse(v: &Value) -> Result<BuildRequest, InvalidRequest> {
        BuildRequest::parse(&serde_json::to_vec(v).expect("json")).map(|(r, _)| r)
    }

    fn key(v: &Value) -> CacheKey {
        parse(v).expect("valid request").cache_key()
    }

    #[test]
    fn plugin_order_never_changes_the_key() {
        let a = base();
        let mut b = base();
        b["plugins"].as_array_mut().expect("array").reverse();
        assert_eq!(key(&a), key(&b));
        let mut c = base();
        c["replaces"] = json!([{"old": "z", "new": "z2"}, {"old": "a", "new": "a2"}]);
        let mut d = base();
        d["replaces"] = json!([{"old": "a", "new": "a2"}, {"old": "z", "new": "z2"}]);
        assert_eq!(key(&c), key(&d));
    }

    #[test]
    fn request_id_and_force_rebuild_are_not_in_the_key() {
        let a = base();
        let mut b = base();
        b["request_id"] = json!("");
        b["force_rebuild"] = json!(true);
        assert_eq!(key(&a), key(&b));
    }

    #[test]
    fn every_shaping_field_changes_the_key() {
        let k0 = key(&base());
        let edits: Vec<Edit> = vec![
            (
                "version",
                Box::new(|v| v["rr_version"] = json!("v2025.1.3")),
            ),
            (
                "os",
                Box::new(|v| v["target_platform"]["os"] = json!("windows")),
            ),
            (
                "arch",
                Box::new(|v| v["target_platform"]["arch"] = json!("arm64")),
            ),
            (
                "no platform",
                Box::new(|v| v["target_platform"] = Value::Null),
            ),
            ("race", Box::new(|v| v["race"] = json!(true))),
            ("debug", Box::new(|v| v["debug"] = json!(true))),
            (
                "plugin tag",
                Box::new(|v| v["plugins"][0]["tag"] = json!("v5.2.8")),
            ),
            (
                "plugin gone",
                Box::new(|v| {
                    v["plugins"].as_array_mut().expect("array").pop();
                }),
            ),
            (
                "replace new",
                Box::new(|v| v["replaces"][0]["new"] = json!("github.com/c/b@v1.2.4")),
            ),
            ("replace gone", Box::new(|v| v["replaces"] = json!([]))),
            (
                "exclude version",
                Box::new(|v| v["excludes"][0]["version"] = json!("v0.1.1")),
            ),
            ("exclude gone", Box::new(|v| v["excludes"] = json!([]))),
        ];
        let mut seen = std::collections::HashSet::new();
        seen.insert(k0);
        for (name, edit) in edits {
            let mut v = base();
            edit(&mut v);
            assert!(seen.insert(key(&v)), "{name} did not change the key");
        }
    }

    #[test]
    fn absent_platform_differs_from_an_empty_one() {
        let mut a = base();
        a["target_platform"] = Value::Null;
        let mut b = base();
        b["target_platform"] = json!({"os": "", "arch": ""});
        assert_ne!(key(&a), key(&b));
    }

    #[test]
    fn field_boundaries_cannot_be_shifted() {
        let mut a = base();
        a["plugins"] = json!([{"module_name": "example.com/ab", "tag": "c"}]);
        let mut b = base();
        b["plugins"] = json!([{"module_name": "example.com/a", "tag": "bc"}]);
        assert_ne!(key(&a), key(&b));
    }

    #[test]
    fn camel_case_is_the_same_request() {
        let camel = json!({
            "requestId": "b66d5617-64dd-419b-a68b-b002938320ab",
            "targetPlatform": {"os": "linux", "arch": "amd64"},
            "rrVersion": "v2025.1.2",
            "plugins": [
                {"moduleName": "github.com/roadrunner-server/grpc/v5", "tag": "v5.1.0"},
                {"moduleName": "github.com/roadrunner-server/http/v5", "tag": "v5.2.7"}
            ],
            "replaces": [{"old": "github.com/a/b", "new": "github.com/c/b@v1.2.3"}],
            "excludes": [{"module": "github.com/x/y", "version": "v0.1.0"}]
        });
        assert_eq!(key(&camel), key(&base()));
    }

    #[test]
    fn unknown_fields_are_dropped_and_reported() {
        let mut v = base();
        v["plugins"][0]["replace"] = json!("github.com/foo/bar");
        v["extra"] = json!(1);
        let (req, dropped) =
            BuildRequest::parse(&serde_json::to_vec(&v).expect("json")).expect("valid");
        assert_eq!(
            dropped,
            vec!["extra".to_string(), "plugins[0].replace".to_string()]
        );
        assert_eq!(req.cache_key(), key(&base()));
    }

    #[test]
    fn validation_rules() {
        let cases: Vec<Edit> = vec![
            ("no version", Box::new(|v| v["rr_version"] = Value::Null)),
            (
                "bad version",
                Box::new(|v| v["rr_version"] = json!("2025.1.2")),
            ),
            ("short hash", Box::new(|v| v["rr_version"] = json!("abc12"))),
            (
                "upper hash",
                Box::new(|v| v["rr_version"] = json!("ABCDEF12")),
            ),
            ("empty plugins", Box::new(|v| v["plugins"] = json!([]))),
            (
                "empty tag",
                Box::new(|v| v["plugins"][0]["tag"] = json!("")),
            ),
            (
                "no module",
                Box::new(|v| v["plugins"][0]["module_name"] = Value::Null),
            ),
            (
                "bad id",
                Box::new(|v| v["request_id"] = json!("not-a-uuid")),
            ),
            ("replace", Box::new(|v| v["replaces"][0]["new"] = json!(""))),
            (
                "exclude",
                Box::new(|v| v["excludes"][0]["module"] = json!("")),
            ),
            (
                "long",
                Box::new(|v| v["plugins"][0]["tag"] = json!("x".repeat(513))),
            ),
            ("type", Box::new(|v| v["race"] = json!("yes"))),
            (
                "module path",
                Box::new(|v| v["plugins"][1]["module_name"] = json!("github.com/a/../b")),
            ),
            (
                "too many",
                Box::new(|v| {
                    v["plugins"] = Value::Array(
                        (0..300)
                            .map(|i| json!({"module_name": format!("example.com/m{i}"), "tag": "v1"}))
                            .collect(),
                    )
                }),
            ),
        ];
        for (name, edit) in cases {
            let mut v = base();
            edit(&mut v);
            assert!(parse(&v).is_err(), "{name} was accepted");
        }
        for ok in [
            "v1.2.3",
            "v2025.1.2-rc.1",
            "master",
            "abcdef0",
            &"a".repeat(40),
        ] {
            let mut v = base();
            v["rr_version"] = json!(ok);
            assert!(parse(&v).is_ok(), "{ok} was refused");
        }
        assert!(BuildRequest::parse(b"[1]").is_err());
        assert!(BuildRequest::parse(b"{").is_err());
    }

    #[test]
    fn a_bad_module_path_names_the_plugin() {
        let mut v = base();
        v["plugins"][1]["module_name"] = json!("github.com/x//y");
        let err = parse(&v).expect_err("invalid");
        assert_eq!(
            err.message,
            "`plugins[1].module_name` (\"github.com/x//y\") is not a Go module path: double slash"
        );
    }

    #[test]
    fn errors_carry_the_request_id() {
        let mut v = base();
        v["plugins"] = json!([]);
        let err = parse(&v).expect_err("invalid");
        assert_eq!(
            err.request_id.as_deref(),
            Some("b66d5617-64dd-419b-a68b-b002938320ab")
        );
    }

    #[test]
    fn file_names() {
        let mut v = base();
        assert_eq!(
            parse(&v).expect("valid").file_name(),
            "roadrunner-linux-amd64"
        );
        v["target_platform"] = json!({"os": "windows", "arch": "amd64"});
        assert_eq!(
            parse(&v).expect("valid").file_name(),
            "roadrunner-windows-amd64.exe"
        );
        v["target_platform"] = Value::Null;
        assert_eq!(parse(&v).expect("valid").file_name(), "roadrunner");
        // Control characters are refused outright; quotes and spaces are replaced.
        v["target_platform"] = json!({"os": "li\"nux; x", "arch": "amd64"});
        assert_eq!(
            parse(&v).expect("valid").file_name(),
            "roadrunner-li_nux__x-amd64"
        );
    }

    #[test]
    fn only_the_canonical_uuid_form_is_accepted() {
        let id = "b66d5617-64dd-419b-a68b-b002938320ab";
        for bad in [
            format!("urn:uuid:{id}"),
            format!("{{{id}}}"),
            id.replace('-', ""),
            format!(" {id}"),
            id.replacen('-', "+", 1),
            format!("{}g", &id[..35]),
        ] {
            let mut v = base();
            v["request_id"] = json!(bad);
            let err = parse(&v).expect_err(&bad);
            assert!(err.message.contains("request_id"), "{bad}: {err}");
            // A malformed id is not echoed back.
            assert_eq!(err.request_id, None, "{bad}");
        }
        let mut v = base();
        v["request_id"] = json!(id.to_uppercase());
        assert!(parse(&v).is_ok(), "upper case is a UUID to Velox too");
    }

    #[test]
    fn no_string_may_hold_a_control_character() {
        let cases: Vec<Edit> = vec![
            (
                "rr_version",
                Box::new(|v| v["rr_version"] = json!("v2025.1.2\nrm -rf /")),
            ),
            (
                "os",
                Box::new(|v| v["target_platform"]["os"] = json!("linux\u{0}")),
            ),
            (
                "arch",
                Box::new(|v| v["target_platform"]["arch"] = json!("amd\t64")),
            ),
            (
                "module",
                Box::new(|v| v["plugins"][0]["module_name"] = json!("github.com/a\r/b")),
            ),
            (
                "tag",
                Box::new(|v| v["plugins"][0]["tag"] = json!("v1.0.0\u{7f}")),
            ),
            (
                "replace",
                Box::new(|v| v["replaces"][0]["old"] = json!("a\u{85}b")),
            ),
            (
                "exclude",
                Box::new(|v| v["excludes"][0]["version"] = json!("v0.1.0\u{1b}[31m")),
            ),
        ];
        for (name, edit) in cases {
            let mut v = base();
            edit(&mut v);
            let err = parse(&v).expect_err(name);
            assert!(err.message.contains("control character"), "{name}: {err}");
        }
    }

    #[test]
    fn a_missing_request_id_is_made_up() {
        for id in [Value::Null, json!("")] {
            let mut v = base();
            v["request_id"] = id.clone();
            let a = parse(&v).expect("valid");
            let b = parse(&v).expect("valid");
            let made = a.request_id().expect("an id was made up");
            assert!(is_canonical_uuid(made), "{made}");
            assert_eq!(
                uuid::Uuid::parse_str(made).expect("uuid").get_version_num(),
                4
            );
            assert_ne!(a.request_id(), b.request_id(), "each request gets its own");
            assert_eq!(a.cache_key(), key(&base()), "{id}");
        }
        let given = parse(&base()).expect("valid");
        assert_eq!(
            given.request_id(),
            Some("b66d5617-64dd-419b-a68b-b002938320ab")
        );
    }
}
