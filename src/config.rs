//! Configuration (docs/configuration.md): defaults < TOML file < environment < command-line flags, layered by
//! figment; then checked here, so that a bad value stops the start naming its key.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

pub mod duration;
mod load;

pub use load::Loaded;

/// Environment prefix; nested keys use `__` (`VELOX_CACHE_CACHE__MAX_SIZE_GB`).
pub const ENV_PREFIX: &str = "VELOX_CACHE_";
/// The environment variable naming the config file (not a config key itself).
pub const ENV_CONFIG_FILE: &str = "VELOX_CACHE_CONFIG";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvictionPolicy {
    Lru,
    Lfu,
    Fifo,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub max_attempts: u32,
    #[serde(with = "duration")]
    pub initial_delay: Duration,
    #[serde(with = "duration")]
    pub max_delay: Duration,
    pub backoff_multiplier: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
            backoff_multiplier: 2.0,
        }
    }
}

/// Default of `cache.index_snapshot_writes` (docs/storage.md, "Snapshots while running").
pub const INDEX_SNAPSHOT_WRITES: u64 = 100_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub max_size_gb: f64,
    pub max_entries: u64,
    pub max_age_days: f64,
    #[serde(with = "duration")]
    pub cleanup_interval: Duration,
    pub eviction_policy: EvictionPolicy,
    #[serde(with = "duration")]
    pub access_update_interval: Duration,
    /// How long an entry built from floating references (`latest`, a branch) is served before the
    /// request rebuilds; 0 = never served from the cache.
    #[serde(with = "duration")]
    pub floating_ttl: Duration,
    /// How often the scrub re-hashes every blob; 0 turns it off.
    #[serde(with = "duration")]
    pub scrub_interval: Duration,
    /// MB/s (10^6 bytes) the scrub may read.
    pub scrub_rate_mb: f64,
    /// Free space eviction keeps on the data dir's filesystem, in GB (1024³ bytes).
    pub min_free_gb: f64,
    /// Index writes after which the running server snapshots its index (docs/storage.md);
    /// 0 = only at a graceful stop.
    pub index_snapshot_writes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_size_gb: 0.0,
            max_entries: 0,
            max_age_days: 0.0,
            cleanup_interval: Duration::from_secs(3600),
            eviction_policy: EvictionPolicy::Lru,
            access_update_interval: Duration::from_secs(5),
            floating_ttl: Duration::from_secs(30 * 60),
            scrub_interval: Duration::from_secs(24 * 3600),
            scrub_rate_mb: 64.0,
            min_free_gb: 1.0,
            index_snapshot_writes: INDEX_SNAPSHOT_WRITES,
        }
    }
}

/// Resolution of floating plugin tags with a Go module proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResolveConfig {
    /// GOPROXY URL (or GOPROXY's comma-separated list); none = no resolution.
    #[serde(
        deserialize_with = "lenient_opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub goproxy: Option<String>,
    /// How long a resolution is remembered.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// How long one proxy may take to answer before the tag is left unresolved.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// How long all the lookups of one request may take together; tags still unresolved then
    /// stay as asked.
    #[serde(with = "duration")]
    pub deadline: Duration,
    /// Most lookups of one request under way at once.
    pub concurrency: usize,
    /// Module patterns never sent to the proxy, in GOPRIVATE's form; default: `GOPRIVATE`.
    #[serde(
        deserialize_with = "lenient_opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub private: Option<String>,
}

impl Default for ResolveConfig {
    fn default() -> Self {
        ResolveConfig {
            goproxy: None,
            ttl: Duration::from_secs(300),
            timeout: Duration::from_secs(3),
            deadline: Duration::from_secs(10),
            concurrency: 8,
            private: std::env::var("GOPRIVATE")
                .ok()
                .filter(|v| !v.trim().is_empty()),
        }
    }
}

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
    /// the environment and the flags, and checks it. Warnings (environment variables that name
    /// no key) go to the log; [`Config::load_checked`] hands them back instead.
    pub fn load(config_file: Option<&Path>, flags: &FlagOverrides) -> Result<Config, ConfigError> {
        let loaded = Config::load_checked(config_file, flags, false)?;
        for w in &loaded.warnings {
            log::warn!("{w}");
        }
        Ok(loaded.config)
    }

    /// As [`Config::load`], with the warnings returned; `serving` adds the checks that only
    /// matter to a server (folders that must exist).
    pub fn load_checked(
        config_file: Option<&Path>,
        flags: &FlagOverrides,
        serving: bool,
    ) -> Result<Loaded, ConfigError> {
        load::load(config_file, flags, serving)
    }

    /// What `serve` needs beyond [`Config::validate`]: folders that exist now.
    pub fn validate_for_serving(&self) -> Result<(), ConfigError> {
        if !self.artifact_root.is_dir() {
            return Err(ConfigError(format!(
                "invalid value for `artifact_root`: the folder {} does not exist (or is not a folder); Velox's artifacts must resolve inside it",
                self.artifact_root.display()
            )));
        }
        Ok(())
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail =
            |key: &str, why: &str| Err(ConfigError(format!("invalid value for `{key}`: {why}")));
        if self.build_timeout < Duration::from_secs(1) {
            return fail("build_timeout", "must be at least 1s");
        }
        if self.request_timeout < Duration::from_secs(1) {
            return fail("request_timeout", "must be at least 1s");
        }
        if self.upstream_timeout.is_zero() {
            return fail("upstream_timeout", "must be more than 0");
        }
        if self.max_concurrent_builds == 0 {
            return fail("max_concurrent_builds", "must be at least 1");
        }
        if let Some(u) = &self.upstream {
            if !valid_http_url(u) {
                return fail(
                    "upstream",
                    "must be an http:// or https:// URL, such as http://127.0.0.1:8081",
                );
            }
        }
        if !valid_http_url(&self.server_url) {
            return fail(
                "server_url",
                "must be an http:// or https:// URL, such as http://velox:9000",
            );
        }
        if let Some(ca) = &self.upstream_ca_file {
            // Read now so that a bad file stops the start naming the key, not the first request.
            if let Err(why) = crate::tls::load_ca_file(ca) {
                return fail("upstream_ca_file", &why);
            }
        }
        if let Some(pm) = &self.path_map {
            if PathMap::parse(pm).is_none() {
                return fail("path_map", "must be FROM=TO with two absolute paths");
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return fail("data_dir", "must not be empty");
        }
        if self.artifact_root.as_os_str().is_empty() {
            return fail("artifact_root", "must not be empty");
        }
        if let Some(t) = &self.api_token {
            if t.is_empty() {
                return fail("api_token", "must not be empty when set");
            }
            // Clients send it in `Authorization: Bearer <token>`; a space, a control character
            // (often a newline left over from a secret file) or non-ASCII would never match.
            if !t.bytes().all(|b| b.is_ascii_graphic()) {
                return fail(
                    "api_token",
                    "must be visible ASCII characters only: it holds a space, a control character \
                     (a trailing newline?) or a non-ASCII character",
                );
            }
        }
        let r = &self.retry;
        if r.max_attempts == 0 {
            return fail("retry.max_attempts", "must be at least 1");
        }
        if r.max_delay < r.initial_delay {
            return fail("retry.max_delay", "must be at least retry.initial_delay");
        }
        if !(r.backoff_multiplier.is_finite() && r.backoff_multiplier >= 1.0) {
            return fail(
                "retry.backoff_multiplier",
                "must be a number of at least 1.0",
            );
        }
        let c = &self.cache;
        if !(c.max_size_gb.is_finite() && c.max_size_gb >= 0.0) {
            return fail("cache.max_size_gb", "must be a number of at least 0");
        }
        if !(c.max_age_days.is_finite() && c.max_age_days >= 0.0) {
            return fail("cache.max_age_days", "must be a number of at least 0");
        }
        if !(c.min_free_gb.is_finite() && c.min_free_gb >= 0.0) {
            return fail("cache.min_free_gb", "must be a number of at least 0");
        }
        if let Some(p) = &self.resolve.goproxy {
            let usable = p
                .split([',', '|'])
                .map(str::trim)
                .all(|e| e.is_empty() || e == "direct" || e == "off" || valid_http_url(e));
            if !usable {
                return fail(
                    "resolve.goproxy",
                    "must be an http:// or https:// URL, or a GOPROXY list of them",
                );
            }
        }
        if self.resolve.timeout.is_zero() {
            return fail("resolve.timeout", "must be more than 0");
        }
        if self.resolve.deadline.is_zero() {
            return fail("resolve.deadline", "must be more than 0");
        }
        if !(1..=64).contains(&self.resolve.concurrency) {
            return fail("resolve.concurrency", "must be a number from 1 to 64");
        }
        if let Some(p) = &self.resolve.private {
            if let Err(why) = crate::builds::resolve::parse_private(p) {
                return fail(
                    "resolve.private",
                    &format!("a pattern does not parse: {why}"),
                );
            }
        }
        if let Some(u) = &self.upstream {
            if upstream_is_listen(u, self.listen) {
                let why = format!(
                    "`{}` is velox-cache's own `listen` address ({}): every request would come \
                     back to velox-cache; point it at the PHP app",
                    crate::redact::url(u),
                    self.listen
                );
                return fail("upstream", &why);
            }
        }
        if self.sse_keepalive < Duration::from_millis(100) {
            return fail("sse_keepalive", "must be at least 100ms");
        }
        if !(c.scrub_rate_mb.is_finite() && c.scrub_rate_mb > 0.0) {
            return fail("cache.scrub_rate_mb", "must be a number above 0");
        }
        if self.request_body_timeout.is_zero() {
            return fail("request_body_timeout", "must be more than 0");
        }
        if self.max_connections == Some(0) {
            return fail("max_connections", "must be at least 1");
        }
        self.storage.validate()?;
        Ok(())
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
        shown.upstream = shown.upstream.as_deref().map(redact::url);
        // A GOPROXY list holds several URLs.
        shown.resolve.goproxy = shown.resolve.goproxy.as_deref().map(redact::text);
        shown.storage.s3.endpoint = shown.storage.s3.endpoint.as_deref().map(redact::url);
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

/// Where blobs and manifests live besides the data dir (docs/object-storage.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// The data dir only: one replica.
    #[default]
    Local,
    /// An S3-compatible bucket shared by every replica; the data dir is a local tier in front.
    S3,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    pub s3: S3Config,
}

/// The bucket. Credentials are deliberately absent: they come from the standard AWS environment
/// (`AWS_ACCESS_KEY_ID`, ...) or the instance's or pod's identity, never from this file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    #[serde(
        deserialize_with = "lenient_opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub bucket: Option<String>,
    /// None: `AWS_REGION` (or `AWS_DEFAULT_REGION`), as EKS and ECS set it; else `us-east-1`.
    #[serde(
        deserialize_with = "lenient_opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub region: Option<String>,
    /// None: AWS itself. MinIO, Ceph RGW, R2 and the like: their URL.
    #[serde(
        deserialize_with = "lenient_opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub endpoint: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub prefix: String,
    pub allow_http: bool,
    /// Artifact downloads answered with 307 to a presigned URL.
    pub redirect: bool,
    /// How long a build lock holds; none = `build_timeout` + 30 s.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub lock_lease: Option<Duration>,
    /// How often a replica looks for keys deleted on another one; none = 10 s.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub tombstone_poll: Option<Duration>,
    // Named only to be refused with a useful message (see `StorageConfig::validate`).
    #[serde(skip_serializing)]
    access_key_id: Option<toml::Value>,
    #[serde(skip_serializing)]
    secret_access_key: Option<toml::Value>,
    #[serde(skip_serializing)]
    session_token: Option<toml::Value>,
    #[serde(skip_serializing)]
    token: Option<toml::Value>,
}

impl StorageConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, why: &str| {
            Err(ConfigError(format!(
                "invalid value for `storage.{key}`: {why}"
            )))
        };
        let s3 = &self.s3;
        for (name, value) in [
            ("access_key_id", &s3.access_key_id),
            ("secret_access_key", &s3.secret_access_key),
            ("session_token", &s3.session_token),
            ("token", &s3.token),
        ] {
            if value.is_some() {
                return fail(
                    &format!("s3.{name}"),
                    "credentials are never read from the configuration; set AWS_ACCESS_KEY_ID, \
                     AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) in the environment, or use the \
                     instance's or pod's identity",
                );
            }
        }
        if self.backend == StorageBackend::Local {
            if s3.redirect {
                return fail("s3.redirect", "needs storage.backend = \"s3\"");
            }
            return Ok(());
        }
        if s3.bucket.as_deref().is_none_or(|b| b.trim().is_empty()) {
            return fail("s3.bucket", "must be set when storage.backend is \"s3\"");
        }
        if s3.region.as_deref().is_some_and(|r| r.trim().is_empty()) {
            return fail("s3.region", "must not be empty");
        }
        if let Some(e) = &s3.endpoint {
            if !valid_http_url(e) {
                return fail("s3.endpoint", "must be an http:// or https:// URL");
            }
            if e.starts_with("http://") && !s3.allow_http {
                return fail(
                    "s3.endpoint",
                    "is http://; set storage.s3.allow_http = true to allow a bucket without TLS",
                );
            }
        }
        let prefix = s3.prefix.trim_matches('/');
        if !prefix.is_empty() && object_store::path::Path::parse(prefix).is_err() {
            return fail(
                "s3.prefix",
                "must be a path of non-empty segments without `.` or `..`",
            );
        }
        if s3.lock_lease.is_some_and(|l| l < Duration::from_secs(1)) {
            return fail("s3.lock_lease", "must be at least 1s");
        }
        if s3
            .tombstone_poll
            .is_some_and(|p| p < Duration::from_secs(1) || p > Duration::from_secs(3600))
        {
            return fail("s3.tombstone_poll", "must be between 1s and 1h");
        }
        Ok(())
    }
}

impl Config {
    /// How long a build lock in the bucket holds before another replica may take it over.
    pub fn lock_lease(&self) -> Duration {
        self.storage
            .s3
            .lock_lease
            .unwrap_or(self.build_timeout + Duration::from_secs(30))
    }
}

impl S3Config {
    /// How often a replica looks for keys deleted on another one (docs/object-storage.md).
    pub fn tombstone_poll(&self) -> Duration {
        self.tombstone_poll.unwrap_or(Duration::from_secs(10))
    }

    /// The bucket's region: the configured one, else the AWS environment's, else `us-east-1`.
    pub fn effective_region(&self) -> String {
        self.region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| "us-east-1".into())
    }

    /// The prefix as object keys start with it: empty, or segments ending in `/`.
    pub fn key_prefix(&self) -> String {
        let p = self.prefix.trim_matches('/');
        if p.is_empty() {
            String::new()
        } else {
            format!("{p}/")
        }
    }
}

fn valid_http_url(u: &str) -> bool {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace))
}

/// Whether connecting to `upstream` would reach the `listen` socket: the same port, and one of
/// the upstream host's addresses is the listen address or, when that is unspecified
/// (`0.0.0.0`, `[::]`), any address of this host. Names are resolved only when the ports match.
fn upstream_is_listen(upstream: &str, listen: SocketAddr) -> bool {
    let Ok(uri) = upstream.parse::<http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    if port != listen.port() {
        return false;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(addrs) = (host, port).to_socket_addrs() else {
        return false;
    };
    addrs.map(|a| a.ip().to_canonical()).any(|ip| {
        // Connecting to an unspecified address reaches this host's loopback.
        let ip = match ip {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        match listen.ip().to_canonical() {
            // An IPv6 wildcard takes IPv4 connections too (Linux's default, bindv6only=0).
            IpAddr::V4(any) if any.is_unspecified() => ip.is_ipv4() && is_own(ip),
            IpAddr::V6(any) if any.is_unspecified() => is_own(ip),
            bound => ip == bound,
        }
    })
}

/// Whether `ip` is an address of this host: only those can be bound.
fn is_own(ip: IpAddr) -> bool {
    ip.is_loopback() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Accepts any scalar as a string: the environment cannot say `"1234"` is text and not a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    S(String),
    I(i64),
    U(u64),
    F(f64),
    B(bool),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Scalar::S(s) => s,
            Scalar::I(i) => i.to_string(),
            Scalar::U(u) => u.to_string(),
            Scalar::F(f) => f.to_string(),
            Scalar::B(b) => b.to_string(),
        }
    }
}

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Scalar::deserialize(d).map(Scalar::into_string)
}

fn lenient_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Scalar>::deserialize(d)?.map(Scalar::into_string))
}

fn lenient_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    lenient_string(d).map(PathBuf::from)
}

fn lenient_opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(lenient_opt_string(d)?.map(PathBuf::from))
}

/// `trusted_proxies`: a list, or one comma-separated string (the environment's form). Each item
/// is a CIDR or a single address; host bits below the prefix are ignored, as nginx does.
fn cidr_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        One(String),
        Many(Vec<String>),
    }
    let items = match Given::deserialize(d)? {
        Given::One(s) => s.split(',').map(str::to_owned).collect(),
        Given::Many(v) => v,
    };
    let mut nets = Vec::new();
    for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let net = item
            .parse::<IpNet>()
            .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "`{item}` is neither a CIDR (like 10.0.0.0/8) nor an IP address"
                ))
            })?;
        nets.push(net.trunc());
    }
    Ok(nets)
}

fn cidr_strings<S: serde::Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(nets.iter().map(|n| n.to_string()))
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
    fn urls() {
        assert!(valid_http_url("http://127.0.0.1:9000"));
        assert!(valid_http_url("https://velox.internal"));
        assert!(!valid_http_url("ftp://x"));
        assert!(!valid_http_url("http://"));
        assert!(!valid_http_url("127.0.0.1:9000"));
    }

    #[test]
    fn an_upstream_that_is_the_listen_address_is_a_loop() {
        let listen = |s: &str| s.parse::<SocketAddr>().expect("addr");
        for (upstream, bound) in [
            ("http://127.0.0.1:8080", "127.0.0.1:8080"),
            ("http://127.0.0.1:8080/", "0.0.0.0:8080"),
            ("http://localhost:8080/app", "0.0.0.0:8080"),
            ("http://0.0.0.0:8080", "127.0.0.1:8080"),
            ("http://[::1]:8080", "[::]:8080"),
            ("http://127.0.0.1:8080", "[::]:8080"),
            ("http://127.0.0.1", "0.0.0.0:80"),
            ("https://127.0.0.1", "0.0.0.0:443"),
        ] {
            assert!(
                upstream_is_listen(upstream, listen(bound)),
                "{upstream} vs {bound}"
            );
        }
        for (upstream, bound) in [
            ("http://127.0.0.1:8081", "0.0.0.0:8080"),
            ("http://127.0.0.1:8080", "127.0.0.2:8080"),
            ("http://[::1]:8080", "0.0.0.0:8080"),
            ("http://192.0.2.1:8080", "0.0.0.0:8080"),
            ("https://127.0.0.1", "0.0.0.0:80"),
            ("http://no-such-host.invalid:8080", "0.0.0.0:8080"),
        ] {
            assert!(
                !upstream_is_listen(upstream, listen(bound)),
                "{upstream} vs {bound}"
            );
        }
    }

    #[test]
    fn bucket_prefixes_end_in_one_slash() {
        let mut s3 = S3Config::default();
        assert_eq!(s3.key_prefix(), "");
        for p in ["velox", "velox/", "/velox/", "velox//"] {
            s3.prefix = p.into();
            assert_eq!(s3.key_prefix(), "velox/", "{p:?}");
        }
        s3.prefix = "a/b".into();
        assert_eq!(s3.key_prefix(), "a/b/");
    }

    #[test]
    fn resolution_bounds_are_checked() {
        let refused = |edit: fn(&mut ResolveConfig)| {
            let mut c = Config::default();
            edit(&mut c.resolve);
            c.validate().expect_err("refused").0
        };
        assert!(refused(|r| r.deadline = Duration::ZERO).contains("`resolve.deadline`"));
        assert!(refused(|r| r.concurrency = 0).contains("`resolve.concurrency`"));
        assert!(refused(|r| r.concurrency = 65).contains("`resolve.concurrency`"));
    }

    #[test]
    fn defaults_are_valid_and_render() {
        let c = Config::default();
        c.validate().expect("defaults are valid");
        let t = c.to_masked_toml();
        assert!(t.contains("build_timeout = \"5m\""), "{t}");
    }
}
