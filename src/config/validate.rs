//! The checks of a loaded configuration that its values alone allow: ranges, URL shapes, one
//! key against another. Checks that need more (reading the CA file, resolving the upstream's
//! name, compiling GOPRIVATE patterns) are made where those are used (`crate::preflight`).

use std::time::Duration;

use super::{Config, ConfigError, PathMap};

impl Config {
    /// What `serve` needs beyond [`Config::validate`]: folders that exist now.
    pub fn validate_for_serving(&self) -> Result<(), ConfigError> {
        self.validate_velox_for_serving()
            .map_err(|(key, why)| ConfigError(format!("invalid value for `{key}`: {why}")))?;
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
        super::channels::validate(&self.channels, &self.prebuild)
            .or_else(|(key, why)| fail(&key, &why))?;
        self.signing
            .validate()
            .or_else(|(key, why)| fail(&key, &why))?;
        self.compression
            .validate()
            .or_else(|(key, why)| fail(&key, &why))?;
        self.validate_velox()
            .or_else(|(key, why)| fail(&key, &why))?;
        self.auth
            .validate()
            .or_else(|(key, why)| fail(&key, &why))?;
        Ok(())
    }
}

pub(super) fn valid_http_url(u: &str) -> bool {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ResolveConfig;

    #[test]
    fn urls() {
        assert!(valid_http_url("http://127.0.0.1:9000"));
        assert!(valid_http_url("https://velox.internal"));
        assert!(!valid_http_url("ftp://x"));
        assert!(!valid_http_url("http://"));
        assert!(!valid_http_url("127.0.0.1:9000"));
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
}
