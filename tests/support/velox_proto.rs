//! What the stand-in Velox does with a request body before it builds, written from Velox v3's
//! source (module `velox/v3`, connect-go v1.20.0, protovalidate), not from velox-cache's code:
//! decoding as protojson does, validating as `api/request/v1/request.proto`'s rules do, and the
//! cache hash of `internal/cli/server/server.go`.

use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Deserialize, Clone, Debug, Default)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub arch: String,
}

#[derive(Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Plugin {
    #[serde(default, alias = "moduleName")]
    pub module_name: String,
    #[serde(default)]
    pub tag: String,
}

#[derive(Deserialize, Clone, Debug)]
pub struct Replace {
    #[serde(default)]
    pub new: String,
    #[serde(default)]
    pub old: String,
}

#[derive(Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Exclude {
    #[serde(default)]
    pub module: String,
    #[serde(default)]
    pub version: String,
}

/// `api.request.v1.BuildRequest` (request.proto:17-45).
#[derive(Deserialize, Clone, Debug)]
pub struct Request {
    #[serde(default, alias = "requestId")]
    pub request_id: String,
    #[serde(default, alias = "rrVersion")]
    pub rr_version: String,
    #[serde(default, alias = "forceRebuild")]
    pub force_rebuild: bool,
    #[serde(default, alias = "targetPlatform")]
    pub target_platform: Option<Platform>,
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

const TOP: &[&str] = &[
    "request_id",
    "requestId",
    "rr_version",
    "rrVersion",
    "force_rebuild",
    "forceRebuild",
    "target_platform",
    "targetPlatform",
    "plugins",
    "replaces",
    "excludes",
    "race",
    "debug",
];
const NESTED: &[(&str, &[&str])] = &[
    ("target_platform", &["os", "arch"]),
    ("targetPlatform", &["os", "arch"]),
    ("plugins", &["module_name", "moduleName", "tag"]),
    ("replaces", &["new", "old"]),
    ("excludes", &["module", "version"]),
];

/// Drops members the schema does not define and `null`s (protojson's "absent"), counting the
/// former: connect-go decodes with `protojson.UnmarshalOptions{DiscardUnknown: true}`
/// (codec.go:170-186).
fn discard_unknown(obj: &mut Map<String, Value>, known: &[&str], unknown: &mut usize) {
    obj.retain(|name, value| {
        if !known.contains(&name.as_str()) {
            *unknown += 1;
            return false;
        }
        !value.is_null()
    });
}

/// Decodes a body as connect-go's JSON codec does. Errors are the `invalid_argument` message
/// (`unmarshal message: ...`, protocol_connect.go:1148-1150); the text after the prefix is the
/// stand-in's own, as protojson's wording is not copied. Returns the request and how many
/// unknown members were dropped.
pub fn decode(body: &[u8]) -> Result<(Request, usize), String> {
    if body.is_empty() {
        // codec.go:175-177
        return Err("unmarshal message: zero-length payload is not a valid JSON object".into());
    }
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("unmarshal message: unmarshal into *requestV1.BuildRequest: {e}"))?;
    let Value::Object(root) = &mut value else {
        return Err(
            "unmarshal message: unmarshal into *requestV1.BuildRequest: not an object".into(),
        );
    };
    let mut unknown = 0;
    discard_unknown(root, TOP, &mut unknown);
    for (a, b) in [
        ("request_id", "requestId"),
        ("rr_version", "rrVersion"),
        ("force_rebuild", "forceRebuild"),
        ("target_platform", "targetPlatform"),
    ] {
        if root.contains_key(a) && root.contains_key(b) {
            // protojson refuses a field given under both of its names.
            return Err(format!("unmarshal message: duplicate field {b:?}"));
        }
    }
    for (field, known) in NESTED {
        match root.get_mut(*field) {
            Some(Value::Object(obj)) => discard_unknown(obj, known, &mut unknown),
            Some(Value::Array(items)) => {
                for item in items {
                    if let Value::Object(obj) = item {
                        discard_unknown(obj, known, &mut unknown);
                    }
                }
            }
            _ => {}
        }
    }
    let request = serde_json::from_value(value)
        .map_err(|e| format!("unmarshal message: unmarshal into *requestV1.BuildRequest: {e}"))?;
    Ok((request, unknown))
}

/// protovalidate's `string.uuid` (native_string.go:242): any version, either case.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// `^(v\d+\.\d+\.\d+.*|master|[a-f0-9]{7,40})$` as Go's RE2 reads it: `.` does not match `\n`.
fn rr_version_ok(v: &str) -> bool {
    if v == "master" {
        return true;
    }
    if (7..=40).contains(&v.len()) && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return true;
    }
    let Some(mut rest) = v.strip_prefix('v') else {
        return false;
    };
    for i in 0..3 {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        if i < 2 {
            match rest.strip_prefix('.') {
                Some(r) => rest = r,
                None => return false,
            }
        }
    }
    !rest.contains('\n')
}

/// The rules of request.proto:17-67, every violation collected in field order (protovalidate's
/// fail-fast is off, validate.go:106-108), worded as `ValidationError.Error()` words them
/// (validation_error.go:29-47, violation.go:52-76).
pub fn validate(r: &Request) -> Result<(), String> {
    let mut v: Vec<String> = Vec::new();
    let required = "value is required";
    if r.request_id.is_empty() {
        v.push("request_id: value is empty, which is not a valid UUID".into());
    } else if !is_uuid(&r.request_id) {
        v.push("request_id: must be a valid UUID".into());
    }
    if r.rr_version.is_empty() {
        v.push(format!("rr_version: {required}"));
    } else if !rr_version_ok(&r.rr_version) {
        v.push("rr_version: rr_version must be a semantic version starting with 'v' (e.g., v2025.1.0), 'master', or a git commit SHA (7-40 hex characters)".into());
    }
    if r.plugins.is_empty() {
        v.push(format!("plugins: {required}"));
    }
    for (i, p) in r.plugins.iter().enumerate() {
        if p.module_name.is_empty() {
            v.push(format!("plugins[{i}].module_name: {required}"));
        }
        if p.tag.is_empty() {
            v.push(format!("plugins[{i}].tag: {required}"));
        }
    }
    for (i, p) in r.replaces.iter().enumerate() {
        if p.new.is_empty() {
            v.push(format!("replaces[{i}].new: {required}"));
        }
        if p.old.is_empty() {
            v.push(format!("replaces[{i}].old: {required}"));
        }
    }
    for (i, e) in r.excludes.iter().enumerate() {
        if e.module.is_empty() {
            v.push(format!("excludes[{i}].module: {required}"));
        }
        if e.version.is_empty() {
            v.push(format!("excludes[{i}].version: {required}"));
        }
    }
    match v.len() {
        0 => Ok(()),
        1 => Err(format!("validation error: {}", v[0])),
        _ => Err(format!(
            "validation errors:{}",
            v.iter().map(|s| format!("\n - {s}")).collect::<String>()
        )),
    }
}

/// Go's `runtime.GOOS`/`runtime.GOARCH` of this host, which Velox puts in place of a missing
/// `target_platform` before hashing (server.go:79-82).
pub fn host_platform() -> Platform {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    Platform {
        os: std::env::consts::OS.into(),
        arch: arch.into(),
    }
}

/// The cache hash (server.go:148-165): FNV-1a 64 over the fields that shape the binary, plugins
/// sorted by (module_name, tag), replaces by `old` only (a stable sort), excludes by (module,
/// version); `request_id` and `force_rebuild` left out; lower-case hex without zero padding.
/// Velox hashes a deterministic protobuf encoding; the stand-in hashes a JSON one of the same
/// fields, so the hashes differ from Velox's but collide exactly when Velox's do.
pub fn hash(r: &Request) -> String {
    let platform = r.target_platform.clone().unwrap_or_default();
    let mut plugins = r.plugins.clone();
    plugins.sort();
    let mut replaces = r.replaces.clone();
    replaces.sort_by(|a, b| a.old.cmp(&b.old));
    let mut excludes = r.excludes.clone();
    excludes.sort();
    let encoded = serde_json::json!([
        r.rr_version,
        [platform.os, platform.arch],
        plugins
            .iter()
            .map(|p| [&p.module_name, &p.tag])
            .collect::<Vec<_>>(),
        replaces
            .iter()
            .map(|p| [&p.old, &p.new])
            .collect::<Vec<_>>(),
        excludes
            .iter()
            .map(|e| [&e.module, &e.version])
            .collect::<Vec<_>>(),
        r.race,
        r.debug,
    ])
    .to_string();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in encoded.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:x}")
}

/// The message of a failed `go` step (builder/gomod.go:16-19, 54, 70-75): stderr goes to an 8 KiB
/// ring buffer that keeps the last 8192 bytes; stdout is not included.
pub fn go_failure(stage: &str, stderr: &str) -> String {
    let bytes = stderr.as_bytes();
    let tail = &bytes[bytes.len().saturating_sub(8192)..];
    format!(
        "building plugins: {stage}: go failed: exit status 1\n--- stderr (last {} bytes) ---\n{}",
        tail.len(),
        String::from_utf8_lossy(tail)
    )
}
