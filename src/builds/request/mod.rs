//! The build request (Velox's `api.request.v1.BuildRequest`), its validation (docs/build-requests.md) and its
//! cache key.
//!
//! Parsing is lenient where protojson is (snake_case and lowerCamelCase names, `null` for absent)
//! and strict where Velox is (the same validation rules, and a few more: no control characters,
//! only the canonical UUID form). Fields Velox does not know are dropped here, so they reach
//! neither Velox nor the key. Velox v3 requires a `request_id`; one is made up when it is missing.
//!
//! Beside this file: `validate` (the rules) and `key` (the cache key, the file name, the
//! manifest's copy).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod key;
mod validate;

use validate::is_canonical_uuid;

/// Largest body accepted for a build request.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most plugins (and, by the same reasoning, replaces and excludes) in one request.
pub const MAX_PLUGINS: usize = 256;
/// Longest string field, in bytes.
pub const MAX_STRING_BYTES: usize = 512;

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
    /// The request id when it is set and not empty.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref().filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::CacheKey;
    use serde_json::json;

    pub(super) fn base() -> Value {
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

    pub(super) type Edit = (&'static str, Box<dyn Fn(&mut Value)>);

    pub(super) fn parse(v: &Value) -> Result<BuildRequest, InvalidRequest> {
        BuildRequest::parse(&serde_json::to_vec(v).expect("json")).map(|(r, _)| r)
    }

    pub(super) fn key(v: &Value) -> CacheKey {
        parse(v).expect("valid request").cache_key()
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
