//! A CycloneDX 1.5 JSON SBOM of a Go binary, from its embedded build information.
//!
//! The SBOM is a pure function of the build information, the file name and the digest: no clock,
//! no randomness. Its serial number is a UUID (version 8, RFC 9562) made from the SHA-256 digest,
//! so the same bytes give the same serial number, and it carries no timestamp. What CycloneDX
//! has no field for (Go's `h1:` checksums, replacements, build settings) goes into `properties`
//! under names that start with `velox-cache:go:`; docs/sbom.md lists them.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::buildinfo::{BuildInfo, Module};

/// The prefix of every property this SBOM defines.
pub const PROPERTY_PREFIX: &str = "velox-cache:go:";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Bom<'a> {
    bom_format: &'static str,
    spec_version: &'static str,
    serial_number: String,
    version: u32,
    metadata: Metadata<'a>,
    components: Vec<Component<'a>>,
    dependencies: Vec<Dependency>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    tools: Tools,
    component: Component<'a>,
}

#[derive(Serialize)]
struct Tools {
    components: Vec<Tool>,
}

#[derive(Serialize)]
struct Tool {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
struct Component<'a> {
    #[serde(rename = "bom-ref")]
    bom_ref: String,
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    hashes: Vec<Hash<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    purl: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    properties: Vec<Property>,
}

#[derive(Serialize)]
struct Hash<'a> {
    alg: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct Property {
    name: String,
    value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Dependency {
    #[serde(rename = "ref")]
    reference: String,
    depends_on: Vec<String>,
}

/// The SBOM of the binary `file_name` whose SHA-256 is `digest_hex` (lower-case hex, as the
/// artifact routes name it).
pub fn cyclonedx(info: &BuildInfo, file_name: &str, digest_hex: &str) -> Value {
    let binary_ref = format!("sha256:{digest_hex}");

    let mut properties = vec![property("version", &info.go_version)];
    if !info.path.is_empty() {
        properties.push(property("package", &info.path));
    }
    if !info.main.path.is_empty() {
        properties.push(property("module", &info.main.path));
    }
    properties.extend(module_properties(&info.main));
    for (key, value) in &info.settings {
        properties.push(property(&format!("build:{key}"), value));
    }
    let binary = Component {
        bom_ref: binary_ref.clone(),
        kind: "application",
        name: file_name,
        version: non_empty(&info.main.version),
        hashes: vec![Hash {
            alg: "SHA-256",
            content: digest_hex,
        }],
        purl: (!info.main.path.is_empty()).then(|| purl(&info.main.path, &info.main.version)),
        properties,
    };

    let components: Vec<Component<'_>> = info
        .deps
        .iter()
        .map(|dep| Component {
            bom_ref: module_ref(dep),
            kind: "library",
            name: &dep.path,
            version: non_empty(&dep.version),
            hashes: Vec::new(),
            purl: Some(purl(&dep.path, &dep.version)),
            properties: module_properties(dep),
        })
        .collect();

    let bom = Bom {
        bom_format: "CycloneDX",
        spec_version: "1.5",
        serial_number: serial_number(digest_hex),
        version: 1,
        metadata: Metadata {
            tools: Tools {
                components: vec![Tool {
                    kind: "application",
                    name: "velox-cache",
                    version: env!("CARGO_PKG_VERSION"),
                }],
            },
            component: binary,
        },
        dependencies: vec![Dependency {
            reference: binary_ref,
            depends_on: components.iter().map(|c| c.bom_ref.clone()).collect(),
        }],
        components,
    };
    // Plain data with string keys: serializing it cannot fail.
    serde_json::to_value(bom).unwrap_or(Value::Null)
}

/// A module's `bom-ref`: its path as Go wrote it (a purl lower-cases it, so two paths that differ
/// only in case would share a purl but not a reference).
fn module_ref(module: &Module) -> String {
    format!("go:{}@{}", module.path, module.version)
}

/// `h1:` sum and replacement, as properties.
fn module_properties(module: &Module) -> Vec<Property> {
    let mut properties = Vec::new();
    if let Some(sum) = &module.sum {
        properties.push(property("h1", sum));
    }
    if let Some(replace) = &module.replace {
        properties.push(property("replace:path", &replace.path));
        if !replace.version.is_empty() {
            properties.push(property("replace:version", &replace.version));
        }
        if let Some(sum) = &replace.sum {
            properties.push(property("replace:h1", sum));
        }
    }
    properties
}

fn property(name: &str, value: &str) -> Property {
    Property {
        name: format!("{PROPERTY_PREFIX}{name}"),
        value: value.to_string(),
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// `pkg:golang/<module path>@<version>` by the purl spec's golang type: the namespace and name
/// (the module path) lower-cased, each segment percent-encoded, the version percent-encoded
/// (`+incompatible` becomes `%2Bincompatible`). No version for `(devel)` or an empty one: those
/// name no published version.
pub fn purl(path: &str, version: &str) -> String {
    let mut out = String::from("pkg:golang/");
    let lower = path.to_lowercase();
    for (i, segment) in lower.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        percent_encode(segment, &mut out);
    }
    if !version.is_empty() && version != "(devel)" {
        out.push('@');
        percent_encode(version, &mut out);
    }
    out
}

fn percent_encode(s: &str, out: &mut String) {
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

/// `urn:uuid:` of a version 8 UUID whose bits are the first 16 bytes of
/// SHA-256("velox-cache sbom" || digest).
fn serial_number(digest_hex: &str) -> String {
    let hash = Sha256::new()
        .chain_update(b"velox-cache sbom\0")
        .chain_update(digest_hex.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash[..16]);
    let uuid = uuid::Builder::from_custom_bytes(bytes).into_uuid();
    format!("urn:uuid:{uuid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(path: &str, version: &str, sum: Option<&str>) -> Module {
        Module {
            path: path.to_string(),
            version: version.to_string(),
            sum: sum.map(str::to_string),
            replace: None,
        }
    }

    fn sample() -> BuildInfo {
        let mut replaced = module("example.com/orig", "v1.0.0", None);
        replaced.replace = Some(Box::new(module(
            "example.com/fork",
            "v1.1.0",
            Some("h1:f="),
        )));
        BuildInfo {
            go_version: "go1.22.1".to_string(),
            path: "example.com/app/cmd/app".to_string(),
            main: module("example.com/app", "(devel)", None),
            deps: vec![
                module("github.com/Foo/Bar", "v2.0.0+incompatible", Some("h1:b=")),
                replaced,
            ],
            settings: vec![("-ldflags".to_string(), "-X main.v=1".to_string())],
        }
    }

    #[test]
    fn purls_follow_the_golang_type() {
        assert_eq!(
            purl("github.com/Foo/Bar", "v1.2.3"),
            "pkg:golang/github.com/foo/bar@v1.2.3"
        );
        assert_eq!(
            purl("example.com/x", "v2.0.0+incompatible"),
            "pkg:golang/example.com/x@v2.0.0%2Bincompatible"
        );
        assert_eq!(
            purl("example.com/app", "(devel)"),
            "pkg:golang/example.com/app"
        );
        assert_eq!(purl("example.com/app", ""), "pkg:golang/example.com/app");
        assert_eq!(
            purl("example.com/a b", "v1"),
            "pkg:golang/example.com/a%20b@v1"
        );
    }

    #[test]
    fn the_same_input_gives_the_same_bytes_and_another_digest_another_serial() {
        let info = sample();
        let digest = "ab".repeat(32);
        let one = serde_json::to_string(&cyclonedx(&info, "rr", &digest)).expect("json");
        let two = serde_json::to_string(&cyclonedx(&info, "rr", &digest)).expect("json");
        assert_eq!(one, two);
        let serial = |d: &str| cyclonedx(&info, "rr", d)["serialNumber"].clone();
        assert_ne!(serial(&digest), serial(&"cd".repeat(32)));
        let serial = serial(&digest);
        let serial = serial.as_str().expect("string");
        // Version 8 and the RFC 9562 variant.
        assert_eq!(serial.len(), "urn:uuid:".len() + 36);
        assert_eq!(&serial[23..24], "8", "{serial}");
        assert!(matches!(&serial[28..29], "8" | "9" | "a" | "b"), "{serial}");
    }

    #[test]
    fn modules_settings_and_replacements_become_components_and_properties() {
        let bom = cyclonedx(&sample(), "rr-linux", &"ab".repeat(32));
        let binary = &bom["metadata"]["component"];
        assert_eq!(binary["name"], "rr-linux");
        assert_eq!(binary["version"], "(devel)");
        assert_eq!(binary["purl"], "pkg:golang/example.com/app");
        assert_eq!(binary["hashes"][0]["content"], "ab".repeat(32));
        let props = binary["properties"].as_array().expect("properties");
        assert!(props
            .contains(&serde_json::json!({"name": "velox-cache:go:version", "value": "go1.22.1"})));
        assert!(props.contains(
            &serde_json::json!({"name": "velox-cache:go:build:-ldflags", "value": "-X main.v=1"})
        ));
        let components = bom["components"].as_array().expect("components");
        assert_eq!(
            components[0]["purl"],
            "pkg:golang/github.com/foo/bar@v2.0.0%2Bincompatible"
        );
        assert_eq!(components[0]["name"], "github.com/Foo/Bar");
        assert_eq!(
            components[1]["properties"][0]["name"],
            "velox-cache:go:replace:path"
        );
        assert_eq!(components[1]["properties"][2]["value"], "h1:f=");
        let deps = &bom["dependencies"][0];
        assert_eq!(deps["ref"], binary["bom-ref"]);
        assert_eq!(deps["dependsOn"].as_array().map(Vec::len), Some(2));
        assert!(bom["metadata"].get("timestamp").is_none());
    }
}
