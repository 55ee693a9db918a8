//! What a channel is made of (docs/channels.md): its definition, its releases, and the record the
//! index keeps (JSON, versioned, so that the same bytes can one day live in a bucket).

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::builds::request::InvalidRequest;
use crate::builds::BuildRequest;
use crate::config::{parse_platform, ChannelConfig, Recipe};
use crate::ids::{CacheKey, Digest};

/// The record's format; a record of another version is refused, not guessed at.
pub const RECORD_VERSION: u32 = 1;

/// Where a channel was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `[channels.<name>]`: read-only through the API.
    File,
    /// `PUT /v1/channels/{name}`.
    Api,
}

/// One platform's binary of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binary {
    pub key: CacheKey,
    pub digest: Digest,
    pub size: u64,
}

/// The binaries built from one resolution of the recipe, one per platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub id: String,
    pub created_ms: u64,
    /// The recipe with every floating tag that was resolved replaced by its version.
    pub recipe: Recipe,
    /// Module → version, for the tags that were resolved.
    pub resolved: BTreeMap<String, String>,
    /// `os/arch` → binary.
    pub binaries: BTreeMap<String, Binary>,
}

/// A channel as the index keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRecord {
    pub version: u32,
    pub name: String,
    pub origin: Origin,
    pub spec: ChannelConfig,
    /// Bumped by every change of the definition: a pre-build started before it does not flip.
    pub generation: u64,
    /// Newest first; the first is the current release.
    pub releases: Vec<Release>,
}

impl ChannelRecord {
    pub fn decode(bytes: &[u8]) -> Result<ChannelRecord, String> {
        let record: ChannelRecord =
            serde_json::from_slice(bytes).map_err(|e| format!("does not decode: {e}"))?;
        if record.version != RECORD_VERSION {
            return Err(format!(
                "is of version {}, this velox-cache reads {RECORD_VERSION}",
                record.version
            ));
        }
        Ok(record)
    }

    pub fn encode(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(self).map_err(|e| format!("cannot encode channel {}: {e}", self.name))
    }

    pub fn current(&self) -> Option<&Release> {
        self.releases.first()
    }

    /// Every key the kept releases use: what the channel pins.
    pub fn pinned_keys(&self) -> Vec<CacheKey> {
        let mut keys: Vec<CacheKey> = self
            .releases
            .iter()
            .flat_map(|r| r.binaries.values().map(|b| b.key))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Keeps at most `spec.keep` releases.
    pub fn trim(&mut self) {
        self.releases.truncate(self.spec.keep.max(1) as usize);
    }
}

/// Whether `bytes` is a record of a version newer than this build reads.
pub fn is_newer(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v["version"].as_u64())
        .is_some_and(|v| v > u64::from(RECORD_VERSION))
}

/// The build request for `recipe` on `platform` (`os/arch`), checked by the build request's own
/// rules (docs/build-requests.md).
pub fn request_for(recipe: &Recipe, platform: &str) -> Result<BuildRequest, InvalidRequest> {
    let mut body = serde_json::to_value(recipe).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut body {
        let (os, arch) = parse_platform(platform).map_err(|message| InvalidRequest {
            message,
            request_id: None,
        })?;
        map.insert("target_platform".into(), json!({"os": os, "arch": arch}));
    }
    let bytes = serde_json::to_vec(&body).map_err(|e| InvalidRequest {
        message: format!("the recipe does not encode: {e}"),
        request_id: None,
    })?;
    BuildRequest::parse(&bytes).map(|(request, _)| request)
}

/// A recipe from a resolved build request (its platform and id left out).
pub fn recipe_of(request: &BuildRequest) -> Recipe {
    use crate::config::{RecipeExclude, RecipePlugin, RecipeReplace};
    Recipe {
        rr_version: request.rr_version.clone(),
        plugins: request
            .plugins
            .iter()
            .map(|p| RecipePlugin {
                module_name: p.module_name.clone(),
                tag: p.tag.clone(),
            })
            .collect(),
        replaces: request
            .replaces
            .iter()
            .map(|r| RecipeReplace {
                old: r.old.clone(),
                new: r.new.clone(),
            })
            .collect(),
        excludes: request
            .excludes
            .iter()
            .map(|e| RecipeExclude {
                module: e.module.clone(),
                version: e.version.clone(),
            })
            .collect(),
        race: request.race,
        debug: request.debug,
    }
}

/// A release's id: the resolved recipe and the platforms, hashed (32 hex digits). The same
/// resolution gives the same id, on every replica.
pub fn release_id(resolved: &Recipe, platforms: &[String]) -> String {
    let mut platforms: Vec<&String> = platforms.iter().collect();
    platforms.sort();
    // Plugin order does not shape the binary; the request's cache key sorts them too.
    let mut recipe = resolved.clone();
    recipe
        .plugins
        .sort_by(|a, b| (&a.module_name, &a.tag).cmp(&(&b.module_name, &b.tag)));
    recipe
        .replaces
        .sort_by(|a, b| (&a.old, &a.new).cmp(&(&b.old, &b.new)));
    recipe
        .excludes
        .sort_by(|a, b| (&a.module, &a.version).cmp(&(&b.module, &b.version)));
    let canonical = json!({"recipe": recipe, "platforms": platforms});
    let mut h = Sha256::new();
    h.update(b"velox-cache/release/v1\0");
    h.update(canonical.to_string().as_bytes());
    hex::encode(&h.finalize()[..16])
}

pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A release as the channel JSON shows it.
pub fn release_json(release: &Release) -> Value {
    let binaries: serde_json::Map<String, Value> = release
        .binaries
        .iter()
        .map(|(platform, b)| {
            let digest = b.digest.to_hex();
            (
                platform.clone(),
                json!({
                    "key": b.key.to_hex(),
                    "digest": digest,
                    "size": b.size,
                    "artifact_url": format!("/_velox/v1/artifacts/{digest}"),
                    "signature_url": format!("/_velox/v1/artifacts/{digest}.minisig"),
                    "provenance_url": format!("/_velox/v1/artifacts/{digest}/provenance"),
                }),
            )
        })
        .collect();
    json!({
        "id": release.id,
        "created": rfc3339(release.created_ms),
        "resolved": release.resolved,
        "binaries": binaries,
    })
}

/// The channel JSON (docs/channels.md), with `prebuild` as given (the running server's state;
/// `null` offline).
pub fn channel_json(record: &ChannelRecord, prebuild: Value) -> Value {
    json!({
        "name": record.name,
        "origin": record.origin,
        "recipe": record.spec.recipe(),
        "platforms": record.spec.platforms,
        "keep": record.spec.keep,
        "current": record.current().map(release_json),
        "releases": record.releases.iter().map(release_json).collect::<Vec<_>>(),
        "prebuild": prebuild,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RecipePlugin;

    fn recipe(tag: &str) -> Recipe {
        Recipe {
            rr_version: "v2025.1.2".into(),
            plugins: vec![
                RecipePlugin {
                    module_name: "github.com/roadrunner-server/http/v5".into(),
                    tag: tag.into(),
                },
                RecipePlugin {
                    module_name: "github.com/roadrunner-server/grpc/v5".into(),
                    tag: "v5.1.0".into(),
                },
            ],
            replaces: vec![],
            excludes: vec![],
            race: false,
            debug: false,
        }
    }

    #[test]
    fn the_release_id_follows_the_resolution_alone() {
        let p = vec!["linux/amd64".to_string(), "linux/arm64".to_string()];
        let mut reordered = recipe("v5.2.7");
        reordered.plugins.reverse();
        let q = vec!["linux/arm64".to_string(), "linux/amd64".to_string()];
        assert_eq!(
            release_id(&recipe("v5.2.7"), &p),
            release_id(&reordered, &q)
        );
        assert_ne!(
            release_id(&recipe("v5.2.7"), &p),
            release_id(&recipe("v5.2.8"), &p)
        );
        assert_ne!(
            release_id(&recipe("v5.2.7"), &p),
            release_id(&recipe("v5.2.7"), &p[..1])
        );
        assert_eq!(release_id(&recipe("v5.2.7"), &p).len(), 32);
    }

    #[test]
    fn a_recipe_becomes_a_request_per_platform_by_the_build_rules() {
        let r = request_for(&recipe("latest"), "linux/arm64").expect("valid");
        assert_eq!(
            r.target_platform.as_ref().map(|p| p.arch.as_str()),
            Some("arm64")
        );
        assert_eq!(recipe_of(&r), recipe("latest"));
        let mut bad = recipe("latest");
        bad.plugins[0].module_name = "not a module".into();
        assert!(request_for(&bad, "linux/amd64").is_err());
        assert!(request_for(&recipe("latest"), "beos/amd64").is_err());
    }
}
