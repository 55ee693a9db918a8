//! Configuration (docs/configuration.md): defaults < TOML file < environment < command-line flags, layered by
//! figment; then checked here, so that a bad value stops the start naming its key.
//!
//! This is the bottom layer: it parses and checks values and imports nothing of the builds, the
//! store, the HTTP layer or the metrics. Checks that need to read a file or resolve a name are
//! made by `crate::preflight`, which the binary hands to [`Config::load_checked`].
//!
//! The sections live beside this file: `sections` (cache, retry, resolve), `storage` (the
//! bucket), `validate` (the checks), `lenient` (deserializers for values from the environment),
//! `load` (figment's layering) and `duration`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

mod auth;
mod channels;
mod compression;
pub mod duration;
mod lenient;
mod load;
mod oci;
mod sections;
mod signing;
mod storage;
mod validate;
mod velox;

use lenient::{
    cidr_list, cidr_strings, lenient_opt_path, lenient_opt_string, lenient_path, lenient_string,
};

pub use load::Loaded;

/// Environment prefix; nested keys use `__` (`VELOX_CACHE_CACHE__MAX_SIZE_GB`).
pub const ENV_PREFIX: &str = "VELOX_CACHE_";
/// The environment variable naming the config file (not a config key itself).
pub const ENV_CONFIG_FILE: &str = "VELOX_CACHE_CONFIG";

pub use auth::{Anonymous, AuditConfig, AuthConfig};
pub use channels::{
    parse_platform, valid_channel_name, ChannelConfig, PrebuildConfig, Recipe, RecipeExclude,
    RecipePlugin, RecipeReplace, MAX_CHANNELS,
};
pub use compression::{CompressionConfig, ZSTD_LEVEL};
pub use oci::OciConfig;
pub use sections::{
    CacheConfig, EvictionPolicy, ResolveConfig, RetryConfig, INDEX_SNAPSHOT_WRITES,
};
pub use signing::{SigningConfig, BUILDER_ID};
pub use storage::{S3Config, StorageBackend, StorageConfig};
pub use velox::{BuilderSpec, ServerEntry, ServerTable, VeloxConfig};

/// The effective configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    #[serde(deserialize_with = "lenient_path")]
    pub data_dir: PathBuf,
    #[serde(
        deserialize_with = "lenient_opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub upstream: Option<String>,
    #[serde(with = "duration")]
    pub upstream_timeout: Duration,
    /// PEM file of extra CAs trusted for https upstreams and Velox (private CAs).
    #[serde(
        deserialize_with = "lenient_opt_path",
        skip_serializing_if = "Option::is_none"
    )]
    pub upstream_ca_file: Option<PathBuf>,
    #[serde(deserialize_with = "lenient_string")]
    pub server_url: String,
    #[serde(deserialize_with = "lenient_path")]
    pub artifact_root: PathBuf,
    #[serde(
        deserialize_with = "lenient_opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub path_map: Option<String>,
    #[serde(with = "duration")]
    pub build_timeout: Duration,
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    pub max_concurrent_builds: usize,
    pub max_queued_builds: usize,
    #[serde(with = "duration")]
    pub failure_ttl: Duration,
    #[serde(
        deserialize_with = "lenient_opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub api_token: Option<String>,
    pub retry: RetryConfig,
    pub cache: CacheConfig,
    pub resolve: ResolveConfig,
    /// Load balancers in front of velox-cache, whose forwarding headers are believed: CIDRs or
    /// addresses, a list in the file, comma-separated in the environment.
    #[serde(deserialize_with = "cidr_list", serialize_with = "cidr_strings")]
    pub trusted_proxies: Vec<IpNet>,
    /// Silence after which an event stream of the build status route gets a comment line, so
    /// that proxies do not cut it as idle. Advanced; mainly for tests.
    #[serde(with = "duration")]
    pub sse_keepalive: Duration,
    /// The longest a request body may pause between two reads (docs/http-api.md).
    #[serde(with = "duration")]
    pub request_body_timeout: Duration,
    /// Connections the public listener holds at once; none: 80 % of the open-file limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    pub storage: StorageConfig,
    /// Named recipes (docs/channels.md); those of the file are read-only through the API.
    pub channels: std::collections::BTreeMap<String, ChannelConfig>,
    pub prebuild: PrebuildConfig,
    /// The key that signs binaries and provenance (docs/signing.md).
    pub signing: SigningConfig,
    /// A listener for the OCI pull API alone (docs/images.md); none by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_listen: Option<SocketAddr>,
    /// `[oci]` (docs/images.md).
    pub oci: OciConfig,
    /// Compressed variants of stored binaries (docs/compression.md).
    pub compression: CompressionConfig,
    /// The pool of Velox builders (docs/builders.md).
    pub velox: VeloxConfig,
    /// Tokens, signed URLs (docs/access.md).
    pub auth: AuthConfig,
    /// The audit log (docs/access.md).
    pub audit: AuditConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9180)),
            data_dir: PathBuf::from("./data"),
            upstream: None,
            upstream_timeout: Duration::from_secs(60),
            upstream_ca_file: None,
            server_url: "http://127.0.0.1:9000".into(),
            artifact_root: std::env::temp_dir(),
            path_map: None,
            build_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(180),
            max_concurrent_builds: 4,
            max_queued_builds: 64,
            failure_ttl: Duration::from_secs(60),
            api_token: None,
            retry: RetryConfig::default(),
            cache: CacheConfig::default(),
            resolve: ResolveConfig::default(),
            trusted_proxies: Vec::new(),
            sse_keepalive: Duration::from_secs(15),
            request_body_timeout: Duration::from_secs(30),
            max_connections: None,
            storage: StorageConfig::default(),
            channels: Default::default(),
            prebuild: PrebuildConfig::default(),
            signing: SigningConfig::default(),
            registry_listen: None,
            oci: OciConfig::default(),
            compression: CompressionConfig::default(),
            velox: VeloxConfig::default(),
            auth: AuthConfig::default(),
            audit: AuditConfig::default(),
        }
    }
}

/// Values given on the command line; only those present override.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_root: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_map: Option<String>,
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// A `FROM=TO` prefix rewrite of the paths Velox returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathMap {
    pub from: PathBuf,
    pub to: PathBuf,
}

impl PathMap {
    pub fn parse(s: &str) -> Option<PathMap> {
        let (from, to) = s.split_once('=')?;
        let (from, to) = (Path::new(from.trim()), Path::new(to.trim()));
        if !from.is_absolute() || !to.is_absolute() {
            return None;
        }
        Some(PathMap {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        })
    }

    /// Rewrites `path` when it lies under `from` (compared by whole components).
    pub fn apply(&self, path: &Path) -> PathBuf {
        match path.strip_prefix(&self.from) {
            Ok(rest) => self.to.join(rest),
            Err(_) => path.to_path_buf(),
        }
    }
}

impl Config {
    /// Loads the configuration from the file named by `config_file` (or `VELOX_CACHE_CONFIG`),
    /// the environment and the flags, and checks its values. Warnings (environment variables that
    /// name no key) go to the log; [`Config::load_checked`] hands them back instead.
    pub fn load(config_file: Option<&Path>, flags: &FlagOverrides) -> Result<Config, ConfigError> {
        let loaded = Config::load_checked(config_file, flags, false, &|_| Ok(()))?;
        for w in &loaded.warnings {
            log::warn!("{w}");
        }
        Ok(loaded.config)
    }

    /// As [`Config::load`], with the warnings returned; `serving` adds the checks that only
    /// matter to a server (folders that must exist), and `checks` those of the layers above that
    /// need more than the values (the binary passes `crate::preflight::check`). A failure of
    /// either names the key and where its value came from, as a bad value's does.
    pub fn load_checked(
        config_file: Option<&Path>,
        flags: &FlagOverrides,
        serving: bool,
        checks: &dyn Fn(&Config) -> Result<(), ConfigError>,
    ) -> Result<Loaded, ConfigError> {
        load::load(config_file, flags, serving, checks)
    }

    pub fn path_map(&self) -> Option<PathMap> {
        self.path_map.as_deref().and_then(PathMap::parse)
    }

    /// The configuration as TOML, with the token masked, and the user names and passwords (and
    /// secret query values) in its URLs too (`crate::redact`).
    pub fn to_masked_toml(&self) -> String {
        use crate::redact;
        let mut shown = self.clone();
        if shown.api_token.is_some() {
            shown.api_token = Some("********".into());
        }
        shown.server_url = redact::url(&shown.server_url);
        shown.velox.servers = self.masked_servers();
        shown.upstream = shown.upstream.as_deref().map(redact::url);
        // A GOPROXY list holds several URLs.
        shown.resolve.goproxy = shown.resolve.goproxy.as_deref().map(redact::text);
        shown.storage.s3.endpoint = shown.storage.s3.endpoint.as_deref().map(redact::url);
        shown.prebuild.webhook_url = shown.prebuild.webhook_url.as_deref().map(redact::url);
        if shown.prebuild.webhook_secret.is_some() {
            shown.prebuild.webhook_secret = Some("********".into());
        }
        if shown.auth.url_secret.is_some() {
            shown.auth.url_secret = Some("********".into());
        }
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_map_rewrites_whole_components() {
        let pm = PathMap::parse("/tmp=/srv/velox").expect("valid");
        assert_eq!(
            pm.apply(Path::new("/tmp/abc/roadrunner")),
            Path::new("/srv/velox/abc/roadrunner")
        );
        assert_eq!(
            pm.apply(Path::new("/tmpx/roadrunner")),
            Path::new("/tmpx/roadrunner")
        );
        assert!(PathMap::parse("relative=/x").is_none());
        assert!(PathMap::parse("/x").is_none());
    }

    #[test]
    fn defaults_are_valid_and_render() {
        let c = Config::default();
        c.validate().expect("defaults are valid");
        let t = c.to_masked_toml();
        assert!(t.contains("build_timeout = \"5m\""), "{t}");
    }
}
