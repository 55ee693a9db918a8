//! The JSON documents of an image: the config, the image manifest and the index (OCI image spec
//! v1.1), or their Docker schema 2 counterparts for clients that accept only those. Each is
//! serialized once from structs in a fixed field order (labels in a `BTreeMap`), so the same facts
//! always give the same bytes, and the bytes made are the ones hashed, kept and served.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{digest_string, sha256, LayerFacts};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Where RoadRunner's sources are (`org.opencontainers.image.source`).
pub const SOURCE: &str = "https://github.com/roadrunner-server/roadrunner";

/// Which family of media types a document uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Oci,
    Docker,
}

impl Flavor {
    pub fn index_type(self) -> &'static str {
        match self {
            Flavor::Oci => OCI_INDEX,
            Flavor::Docker => DOCKER_LIST,
        }
    }

    pub fn manifest_type(self) -> &'static str {
        match self {
            Flavor::Oci => OCI_MANIFEST,
            Flavor::Docker => DOCKER_MANIFEST,
        }
    }

    fn config_type(self) -> &'static str {
        match self {
            Flavor::Oci => OCI_CONFIG,
            Flavor::Docker => DOCKER_CONFIG,
        }
    }

    fn layer_type(self) -> &'static str {
        match self {
            Flavor::Oci => OCI_LAYER,
            Flavor::Docker => DOCKER_LAYER,
        }
    }
}

/// An `os/arch` platform, as channels name them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

impl Platform {
    /// `linux/amd64` → linux, amd64; anything but two non-empty parts is `None`.
    pub fn parse(s: &str) -> Option<Platform> {
        let (os, arch) = s.split_once('/')?;
        if os.is_empty() || arch.is_empty() || arch.contains('/') {
            return None;
        }
        Some(Platform {
            architecture: arch.to_owned(),
            os: os.to_owned(),
        })
    }
}

/// What one platform's image is made of.
#[derive(Debug, Clone)]
pub struct ImageFacts {
    pub platform: Platform,
    pub layer: LayerFacts,
    /// The release id (`org.opencontainers.image.version`).
    pub version: String,
    /// When the release was made, RFC 3339 (`created` and `org.opencontainers.image.created`).
    pub created: String,
}

/// A document made: its bytes, digest and media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub media_type: &'static str,
    pub bytes: Vec<u8>,
    pub digest: [u8; 32],
}

impl Document {
    fn of(media_type: &'static str, value: &impl Serialize) -> Document {
        // Serializing these structs cannot fail (string keys, no floats): an empty body would be
        // caught by every client's digest check anyway.
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        Document {
            media_type,
            digest: sha256(&bytes),
            bytes,
        }
    }

    fn descriptor(&self, platform: Option<Platform>) -> Descriptor {
        Descriptor {
            media_type: self.media_type,
            digest: digest_string(&self.digest),
            size: self.bytes.len() as u64,
            platform,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: &'static str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    entrypoint: [&'static str; 1],
    cmd: [&'static str; 1],
    labels: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
struct RootFs {
    r#type: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct History {
    created: String,
    created_by: &'static str,
}

#[derive(Serialize)]
struct Config {
    created: String,
    architecture: String,
    os: String,
    config: RunConfig,
    rootfs: RootFs,
    history: [History; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    media_type: &'static str,
    config: Descriptor,
    layers: [Descriptor; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<Descriptor>,
}

/// One platform's image: its config and its manifest.
#[derive(Debug, Clone)]
pub struct Image {
    pub platform: Platform,
    pub config: Document,
    pub manifest: Document,
}

/// The config and manifest of one platform's image in `flavor`'s media types. The config's
/// bytes are the same in both flavors (only the media type naming it differs).
pub fn image(facts: &ImageFacts, flavor: Flavor) -> Image {
    let labels = BTreeMap::from([
        ("org.opencontainers.image.created", facts.created.clone()),
        ("org.opencontainers.image.source", SOURCE.to_owned()),
        ("org.opencontainers.image.version", facts.version.clone()),
    ]);
    let config = Document::of(
        flavor.config_type(),
        &Config {
            created: facts.created.clone(),
            architecture: facts.platform.architecture.clone(),
            os: facts.platform.os.clone(),
            config: RunConfig {
                entrypoint: ["/usr/bin/rr"],
                cmd: ["serve"],
                labels,
            },
            rootfs: RootFs {
                r#type: "layers",
                diff_ids: vec![digest_string(&facts.layer.diff_id)],
            },
            history: [History {
                created: facts.created.clone(),
                created_by: "velox-cache: usr/bin/rr",
            }],
        },
    );
    let layer = Descriptor {
        media_type: flavor.layer_type(),
        digest: digest_string(&facts.layer.digest),
        size: facts.layer.size,
        platform: None,
    };
    let manifest = Document::of(
        flavor.manifest_type(),
        &Manifest {
            schema_version: 2,
            media_type: flavor.manifest_type(),
            config: config.descriptor(None),
            layers: [layer],
        },
    );
    Image {
        platform: facts.platform.clone(),
        config,
        manifest,
    }
}

/// The index (or Docker manifest list) over `images`, in their order.
pub fn index(images: &[Image], flavor: Flavor) -> Document {
    Document::of(
        flavor.index_type(),
        &Index {
            schema_version: 2,
            media_type: flavor.index_type(),
            manifests: images
                .iter()
                .map(|i| i.manifest.descriptor(Some(i.platform.clone())))
                .collect(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn facts(arch: &str) -> ImageFacts {
        ImageFacts {
            platform: Platform::parse(&format!("linux/{arch}")).expect("platform"),
            layer: LayerFacts {
                digest: sha256(arch.as_bytes()),
                size: 1234,
                diff_id: sha256(b"tar"),
            },
            version: "0123456789abcdef0123456789abcdef".into(),
            created: "2026-12-03T10:00:00Z".into(),
        }
    }

    #[test]
    fn documents_are_stable_and_link_by_digest() {
        let a = image(&facts("amd64"), Flavor::Oci);
        let again = image(&facts("amd64"), Flavor::Oci);
        assert_eq!(a.manifest, again.manifest);
        assert_eq!(a.config, again.config);
        let config: Value = serde_json::from_slice(&a.config.bytes).expect("json");
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["config"]["Entrypoint"][0], "/usr/bin/rr");
        assert_eq!(config["config"]["Cmd"][0], "serve");
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.version"],
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            digest_string(&sha256(b"tar"))
        );
        let manifest: Value = serde_json::from_slice(&a.manifest.bytes).expect("json");
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], OCI_MANIFEST);
        assert_eq!(
            manifest["config"]["digest"],
            digest_string(&a.config.digest)
        );
        assert_eq!(manifest["config"]["size"], a.config.bytes.len());
        assert_eq!(manifest["layers"][0]["mediaType"], OCI_LAYER);
        assert_eq!(manifest["layers"][0]["size"], 1234);

        let b = image(&facts("arm64"), Flavor::Oci);
        let idx = index(&[a.clone(), b], Flavor::Oci);
        let v: Value = serde_json::from_slice(&idx.bytes).expect("json");
        assert_eq!(v["mediaType"], OCI_INDEX);
        assert_eq!(
            v["manifests"][0]["digest"],
            digest_string(&a.manifest.digest)
        );
        assert_eq!(v["manifests"][0]["platform"]["architecture"], "amd64");
        assert_eq!(v["manifests"][1]["platform"]["architecture"], "arm64");
        assert_eq!(idx.digest, sha256(&idx.bytes));
    }

    #[test]
    fn docker_flavor_uses_docker_types_and_the_same_config_bytes() {
        let oci = image(&facts("amd64"), Flavor::Oci);
        let docker = image(&facts("amd64"), Flavor::Docker);
        assert_eq!(oci.config.bytes, docker.config.bytes);
        assert_ne!(oci.manifest.digest, docker.manifest.digest);
        let m: Value = serde_json::from_slice(&docker.manifest.bytes).expect("json");
        assert_eq!(m["mediaType"], DOCKER_MANIFEST);
        assert_eq!(m["config"]["mediaType"], DOCKER_CONFIG);
        assert_eq!(m["layers"][0]["mediaType"], DOCKER_LAYER);
        let list = index(&[docker], Flavor::Docker);
        let v: Value = serde_json::from_slice(&list.bytes).expect("json");
        assert_eq!(v["mediaType"], DOCKER_LIST);
    }

    #[test]
    fn platforms_need_two_parts() {
        assert!(Platform::parse("linux/amd64").is_some());
        for bad in ["linux", "/amd64", "linux/", "linux/arm/v7", ""] {
            assert!(Platform::parse(bad).is_none(), "{bad}");
        }
    }
}
