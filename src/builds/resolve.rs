//! Resolution of floating plugin tags with the GOPROXY protocol (go.dev/ref/mod, "GOPROXY
//! protocol"), before the cache key is computed: `latest` by `GET <proxy>/<module>/@latest`, any
//! other floating tag by `GET <proxy>/<module>/@v/<tag>.info`, each answering
//! `{"Version": "...", "Time": "..."}`. The request then carries the resolved version, in its key
//! and to Velox, so `latest` and the version it names share one entry and a `latest` that moves is
//! a miss at once.
//!
//! Resolutions are remembered for `resolve.ttl` and coalesced across workers like builds. A proxy
//! that is down, slow (`resolve.timeout`) or answers an error never fails the build: the tag stays
//! as asked and the floating-TTL rule applies. Modules matching `resolve.private` (GOPRIVATE's
//! glob form) are never sent to the proxy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::floating::is_pinned;
use super::BuildRequest;
use crate::config::ResolveConfig;
use crate::metrics::Metrics;

/// `velox_resolve_total{outcome}`.
#[derive(Default)]
pub struct ResolveCounters {
    pub resolved: AtomicU64,
    pub cached: AtomicU64,
    pub private: AtomicU64,
    pub error: AtomicU64,
}

/// One plugin tag that was resolved: `<module>@<asked>=<version>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub module: String,
    pub asked: String,
    pub version: String,
}

/// What one lookup gave, shared with the lookups that waited on it.
type Lookup = Option<Result<String, String>>;
type ModuleTag = (String, String);

/// Shared by every worker: the remembered resolutions, the ones under way, and the settings.
pub struct Resolver {
    proxies: Vec<String>,
    private: Vec<glob::Pattern>,
    ttl: Duration,
    timeout: Duration,
    remembered: Mutex<HashMap<ModuleTag, (Instant, String)>>,
    inflight: Mutex<HashMap<ModuleTag, watch::Receiver<Lookup>>>,
    metrics: Arc<Metrics>,
}

/// A lookup's place in the in-flight map, given back when dropped.
struct Inflight<'a> {
    resolver: &'a Resolver,
    key: &'a ModuleTag,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        if let Ok(mut inflight) = self.resolver.inflight.lock() {
            inflight.remove(self.key);
        }
    }
}

/// A GOPROXY `.info` answer.
#[derive(Deserialize)]
struct Info {
    #[serde(rename = "Version")]
    version: String,
}

/// Most bytes read of a proxy's answer (an `.info` is a few dozen).
const MAX_INFO_BYTES: usize = 64 * 1024;
/// Most remembered resolutions; past it, expired ones are dropped first.
const MAX_REMEMBERED: usize = 4096;

/// GOPROXY's case encoding: each upper-case letter becomes `!` and its lower case, so module
/// paths survive case-insensitive file systems. Other bytes outside the path-safe set are
/// percent-encoded, so a tag such as `feature/x` stays one path element.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        match c {
            'A'..='Z' => {
                out.push('!');
                out.push(c.to_ascii_lowercase());
            }
            'a'..='z' | '0'..='9' | '.' | '-' | '_' | '~' | '+' | '!' => out.push(c),
            _ => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
        }
    }
    out
}

/// A module path escaped element by element (its `/` separators kept).
fn escape_module(module: &str) -> String {
    module.split('/').map(escape).collect::<Vec<_>>().join("/")
}

/// Parses GOPRIVATE's form: comma-separated glob patterns, each matched against the leading
/// path elements of a module path (Go's `module.MatchPrefixPatterns`). Empty entries are skipped.
pub fn parse_private(list: &str) -> Result<Vec<glob::Pattern>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| glob::Pattern::new(p.trim_end_matches('/')).map_err(|e| format!("`{p}`: {e}")))
        .collect()
}

/// Whether `module` matches any pattern: a pattern of n path elements is matched, with
/// `path.Match` semantics (`*` never crosses `/`), against the module's first n elements.
pub fn is_private(patterns: &[glob::Pattern], module: &str) -> bool {
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    patterns.iter().any(|p| {
        let n = p.as_str().split('/').count();
        let elems: Vec<&str> = module.split('/').collect();
        if elems.len() < n {
            return false;
        }
        p.matches_with(&elems[..n].join("/"), opts)
    })
}

impl Resolver {
    /// `None` when no proxy is configured: nothing is resolved.
    pub fn new(config: &ResolveConfig, metrics: Arc<Metrics>) -> Result<Option<Resolver>, String> {
        let Some(list) = config.goproxy.as_deref() else {
            return Ok(None);
        };
        // GOPROXY's list form: proxies tried in order; `direct` and `off` mean nothing here.
        let proxies: Vec<String> = list
            .split([',', '|'])
            .map(str::trim)
            .filter(|p| !p.is_empty() && *p != "direct" && *p != "off")
            .map(|p| p.trim_end_matches('/').to_owned())
            .collect();
        if proxies.is_empty() {
            return Ok(None);
        }
        let private = match &config.private {
            Some(list) => parse_private(list)?,
            None => Vec::new(),
        };
        Ok(Some(Resolver {
            proxies,
            private,
            ttl: config.ttl,
            timeout: config.timeout,
            remembered: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            metrics,
        }))
    }

    /// Resolves every floating plugin tag of `request` in place, and returns what it changed.
    /// Pinned tags are not looked at; failures leave the tag as asked (and are counted).
    pub async fn resolve(
        &self,
        client: &awc::Client,
        request: &mut BuildRequest,
    ) -> Vec<Resolution> {
        let mut out = Vec::new();
        for plugin in request.plugins.iter_mut() {
            if is_pinned(&plugin.tag) {
                continue;
            }
            if is_private(&self.private, &plugin.module_name) {
                self.metrics.resolve.private.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let asked = plugin.tag.clone();
            match self.lookup(client, &plugin.module_name, &asked).await {
                Ok(version) => {
                    if version != asked {
                        out.push(Resolution {
                            module: plugin.module_name.clone(),
                            asked,
                            version: version.clone(),
                        });
                        plugin.tag = version;
                    }
                }
                Err(why) => {
                    self.metrics.resolve.error.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "cannot resolve {}@{asked} with the Go module proxy ({why}); the floating TTL applies",
                        plugin.module_name
                    );
                }
            }
        }
        out
    }

    fn remembered(&self, key: &ModuleTag) -> Option<String> {
        let map = self.remembered.lock().ok()?;
        let (at, version) = map.get(key)?;
        (at.elapsed() < self.ttl).then(|| version.clone())
    }

    fn remember(&self, key: ModuleTag, version: String) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut map) = self.remembered.lock() {
            if map.len() >= MAX_REMEMBERED {
                let ttl = self.ttl;
                map.retain(|_, (at, _)| at.elapsed() < ttl);
                if map.len() >= MAX_REMEMBERED {
                    map.clear();
                }
            }
            map.insert(key, (Instant::now(), version));
        }
    }

    /// One tag's version: remembered, joined to a lookup under way, or fetched now.
    async fn lookup(
        &self,
        client: &awc::Client,
        module: &str,
        tag: &str,
    ) -> Result<String, String> {
        let key = (module.to_owned(), tag.to_owned());
        if let Some(v) = self.remembered(&key) {
            self.metrics.resolve.cached.fetch_add(1, Ordering::Relaxed);
            return Ok(v);
        }
        let (mut rx, leader) = {
            let mut inflight = self
                .inflight
                .lock()
                .map_err(|_| "the resolver's lock is poisoned".to_string())?;
            match inflight.get(&key) {
                Some(rx) => (rx.clone(), None),
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(key.clone(), rx.clone());
                    (rx, Some(tx))
                }
            }
        };
        if let Some(tx) = leader {
            // Whether the fetch ends or this request goes away mid-fetch, the key leaves the
            // in-flight map, so a later lookup starts afresh instead of joining a dead one.
            let _slot = Inflight {
                resolver: self,
                key: &key,
            };
            let outcome = self.fetch(client, module, tag).await;
            if let Ok(v) = &outcome {
                self.remember(key.clone(), v.clone());
            }
            let _ = tx.send(Some(outcome.clone()));
            if outcome.is_ok() {
                self.metrics
                    .resolve
                    .resolved
                    .fetch_add(1, Ordering::Relaxed);
            }
            return outcome;
        }
        // A follower: the leader's outcome, or its absence if the leader went away.
        let waited = rx
            .wait_for(Option::is_some)
            .await
            .map(|outcome| outcome.clone());
        match waited {
            Ok(outcome) => {
                let outcome = outcome.unwrap_or_else(|| Err("no outcome".into()));
                if outcome.is_ok() {
                    self.metrics.resolve.cached.fetch_add(1, Ordering::Relaxed);
                }
                outcome
            }
            Err(_) => Err("the lookup this one waited on was abandoned".into()),
        }
    }

    /// Asks each proxy in turn; the first `Version` wins.
    async fn fetch(&self, client: &awc::Client, module: &str, tag: &str) -> Result<String, String> {
        let path = if tag == "latest" {
            format!("{}/@latest", escape_module(module))
        } else {
            format!("{}/@v/{}.info", escape_module(module), escape(tag))
        };
        let mut last = String::from("no proxy answered");
        for base in &self.proxies {
            let url = format!("{base}/{path}");
            // What messages show: GOPROXY may hold a user name and password.
            let shown = crate::redact::url(&url);
            let call = async {
                let mut resp = client
                    .get(&url)
                    .timeout(self.timeout)
                    .send()
                    .await
                    .map_err(|e| format!("{shown}: {e}"))?;
                let status = resp.status();
                let body = resp
                    .body()
                    .limit(MAX_INFO_BYTES)
                    .await
                    .map_err(|e| format!("{shown}: {e}"))?;
                if !status.is_success() {
                    return Err(format!("{shown} answered {status}"));
                }
                let info: Info = serde_json::from_slice(&body)
                    .map_err(|e| format!("{shown} answered no version: {e}"))?;
                if info.version.is_empty() || info.version.len() > 512 {
                    return Err(format!("{shown} answered an unusable version"));
                }
                if info.version.chars().any(char::is_control) {
                    return Err(format!(
                        "{shown} answered a version with control characters"
                    ));
                }
                Ok(info.version)
            };
            match tokio::time::timeout(self.timeout, call).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("{shown} did not answer within {:?}", self.timeout),
            }
        }
        Err(last)
    }
}

/// `X-Build-Resolved: <module>@<asked>=<resolved>, ...`
pub fn header_value(resolutions: &[Resolution]) -> Option<String> {
    if resolutions.is_empty() {
        return None;
    }
    Some(
        resolutions
            .iter()
            .map(|r| format!("{}@{}={}", r.module, r.asked, r.version))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_encoding_as_the_protocol_says() {
        // go.dev/ref/mod: "github.com/Azure/azure-sdk-for-go" is served as
        // "github.com/!azure/azure-sdk-for-go".
        assert_eq!(
            escape_module("github.com/Azure/azure-sdk-for-go"),
            "github.com/!azure/azure-sdk-for-go"
        );
        assert_eq!(
            escape_module("github.com/BurntSushi/toml"),
            "github.com/!burnt!sushi/toml"
        );
        assert_eq!(escape("v1.0.0-RC1"), "v1.0.0-!r!c1");
        assert_eq!(escape("feature/x"), "feature%2Fx");
    }

    #[test]
    fn goprivate_patterns_match_leading_elements() {
        let p =
            parse_private("*.corp.example.com,rsc.io/private, github.com/acme/*").expect("valid");
        assert!(is_private(&p, "git.corp.example.com/xyzzy"));
        assert!(is_private(&p, "rsc.io/private"));
        assert!(is_private(&p, "rsc.io/private/quux"));
        assert!(is_private(&p, "github.com/acme/plugin/v2"));
        assert!(!is_private(&p, "rsc.io/public"));
        assert!(!is_private(&p, "github.com/roadrunner-server/http/v5"));
        assert!(!is_private(&p, "corp.example.com"));
        assert!(parse_private("[").is_err());
        assert!(parse_private("").expect("empty").is_empty());
    }

    #[test]
    fn resolved_header() {
        let r = vec![
            Resolution {
                module: "github.com/a/b".into(),
                asked: "latest".into(),
                version: "v1.2.3".into(),
            },
            Resolution {
                module: "github.com/c/d".into(),
                asked: "master".into(),
                version: "v0.0.0-20250101000000-abcdefabcdef".into(),
            },
        ];
        assert_eq!(
            header_value(&r).as_deref(),
            Some("github.com/a/b@latest=v1.2.3, github.com/c/d@master=v0.0.0-20250101000000-abcdefabcdef")
        );
        assert_eq!(header_value(&[]), None);
    }
}
