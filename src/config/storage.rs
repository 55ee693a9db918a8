//! `[storage]`: where blobs and manifests live besides the data dir (docs/object-storage.md).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lenient::{lenient_opt_string, lenient_string};
use super::validate::valid_http_url;
use super::{Config, ConfigError};

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
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
