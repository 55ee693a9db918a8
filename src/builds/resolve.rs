//! Resolution of floating plugin tags with the GOPROXY protocol (go.dev/ref/mod, "GOPROXY
//! protocol"), before the cache key is computed: `latest` by `GET <proxy>/<module>/@latest`, any
//! other floating tag by `GET <proxy>/<module>/@v/<tag>.info`, each answering
//! `{"Version": "...", "Time": "..."}`. The request then carries the resolved version, in its key
//! and to Velox, so `latest` and the version it names share one entry and a `latest` that moves is
//! a miss at once.
//!
//! Resolutions are remembered for `resolve.ttl` and coalesced across workers like builds. A proxy
//! that is down, slow (`resolve.timeout`) or answers an error never fails the build: the tag stays
//! as asked and the floating-TTL rule applies; the failure is remembered for [`FAILURE_MEMORY`]
//! (at most `resolve.ttl`), so the next requests do not ask again at once. Modules matching
//! `resolve.private` (GOPRIVATE's glob form) are never sent to the proxy.
//!
//! One request's lookups run at most `resolve.concurrency` at a time, and all of them together
//! within `resolve.deadline`: tags still unresolved then stay as asked. So a request of 256
//! floating plugins against a proxy that hangs costs at most `resolve.deadline`, and at most
//! `resolve.concurrency` × (⌊deadline / timeout⌋ + 1) calls per proxy in the list.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use super::floating::is_pinned;
use super::BuildRequest;
use crate::config::ResolveConfig;
use crate::metrics::Metrics;

/// How long a failed lookup is remembered (never longer than `resolve.ttl`): requests in that
/// window leave the tag as asked without asking the proxy again.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(30);

/// The most bytes of `X-Build-Resolved`; past it the header ends in `+N more` (the status JSON
/// has the full list).
pub const MAX_HEADER_BYTES: usize = 2048;

/// One plugin tag that was resolved: `<module>@<asked>=<version>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    deadline: Duration,
    concurrency: usize,
    remembered: Mutex<HashMap<ModuleTag, (Instant, String)>>,
    /// Lookups that failed lately, with when.
    failed: Mutex<HashMap<ModuleTag, Instant>>,
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
            deadline: config.deadline,
            concurrency: config.concurrency.max(1),
            remembered: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            metrics,
        }))
    }

    /// Whether resolving `request` would ask a proxy anything: some floating, non-private tag
    /// is neither remembered nor a failure remembered. A request that would not is resolved
    /// from memory alone, without being admitted first.
    pub fn needs_network(&self, request: &BuildRequest) -> bool {
        request.plugins.iter().any(|p| {
            if is_pinned(&p.tag) || is_private(&self.private, &p.module_name) {
                return false;
            }
            let key = (p.module_name.clone(), p.tag.clone());
            self.remembered(&key).is_none() && self.failed_lately(&key).is_none()
        })
    }

    /// The plugins of `request` (as `module@tag`) whose tags are still floating and that this
    /// resolver would have resolved: not private. After [`Resolver::resolve`], these are the
    /// lookups that failed.
    pub fn unresolved(&self, request: &BuildRequest) -> Vec<String> {
        request
            .plugins
            .iter()
            .filter(|p| !is_pinned(&p.tag) && !is_private(&self.private, &p.module_name))
            .map(|p| format!("{}@{}", p.module_name, p.tag))
            .collect()
    }

    /// Resolves every floating plugin tag of `request` in place, and returns what it changed.
    /// Pinned tags are not looked at; failures leave the tag as asked (and are counted). At most
    /// `resolve.concurrency` lookups run at once, and those not done by `resolve.deadline` are
    /// abandoned.
    pub async fn resolve(
        &self,
        client: &awc::Client,
        request: &mut BuildRequest,
    ) -> Vec<Resolution> {
        let deadline = Instant::now() + self.deadline;
        let mut todo = Vec::new();
        for (i, plugin) in request.plugins.iter().enumerate() {
            if is_pinned(&plugin.tag) {
                continue;
            }
            if is_private(&self.private, &plugin.module_name) {
                self.metrics.resolve.private.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            todo.push((i, plugin.module_name.clone(), plugin.tag.clone()));
        }
        let asked = todo.len();
        let mut found: Vec<Option<Result<String, String>>> = vec![None; request.plugins.len()];
        let mut finished = 0;
        {
            let mut lookups = futures_util::stream::iter(todo)
                .map(
                    |(i, module, tag)| async move { (i, self.lookup(client, &module, &tag).await) },
                )
                .buffer_unordered(self.concurrency);
            // Dropping the stream at the deadline drops the lookups under way with it.
            while let Ok(Some((i, outcome))) =
                tokio::time::timeout_at(deadline, lookups.next()).await
            {
                found[i] = Some(outcome);
                finished += 1;
            }
        }
        let mut out = Vec::new();
        let (mut failed, mut first_failure) = (0usize, None);
        for (plugin, outcome) in request.plugins.iter_mut().zip(found) {
            match outcome {
                Some(Ok(version)) if version != plugin.tag => {
                    out.push(Resolution {
                        module: plugin.module_name.clone(),
                        asked: std::mem::replace(&mut plugin.tag, version.clone()),
                        version,
                    });
                }
                Some(Err(why)) => {
                    failed += 1;
                    first_failure.get_or_insert_with(|| {
                        format!("{}@{}: {why}", plugin.module_name, plugin.tag)
                    });
                }
                // Unfinished, or resolved to the tag as asked.
                Some(Ok(_)) | None => {}
            }
        }
        let unfinished = asked - finished;
        let errors = failed + unfinished;
        if errors > 0 {
            self.metrics
                .resolve
                .error
                .fetch_add(errors as u64, Ordering::Relaxed);
            log::warn!(
                "{errors} of {asked} floating tag(s) not resolved with the Go module proxy \
                 ({failed} failed, {unfinished} not done within {:?}{}); the floating TTL applies",
                self.deadline,
                first_failure
                    .map(|f| format!("; first failure: {f}"))
                    .unwrap_or_default()
            );
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
        if let Ok(mut failed) = self.failed.lock() {
            failed.remove(&key);
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

    /// How long failures are remembered: [`FAILURE_MEMORY`], never longer than a success.
    fn failure_memory(&self) -> Duration {
        FAILURE_MEMORY.min(self.ttl)
    }

    /// When `key`'s last lookup failed, if that is still remembered.
    fn failed_lately(&self, key: &ModuleTag) -> Option<Instant> {
        let map = self.failed.lock().ok()?;
        let at = *map.get(key)?;
        (at.elapsed() < self.failure_memory()).then_some(at)
    }

    fn remember_failure(&self, key: ModuleTag) {
        let memory = self.failure_memory();
        if memory.is_zero() {
            return;
        }
        if let Ok(mut map) = self.failed.lock() {
            if map.len() >= MAX_REMEMBERED {
                map.retain(|_, at| at.elapsed() < memory);
                if map.len() >= MAX_REMEMBERED {
                    map.clear();
                }
            }
            map.insert(key, Instant::now());
        }
    }

    /// One tag's version: remembered, a failure remembered, joined to a lookup under way, or
    /// fetched now.
    async fn lookup(
        &self,
        client: &awc::Client,
        module: &str,
        tag: &str,
    ) -> Result<String, String> {
        let key = (module.to_owned(), tag.to_owned());
        loop {
            if let Some(v) = self.remembered(&key) {
                self.metrics.resolve.cached.fetch_add(1, Ordering::Relaxed);
                return Ok(v);
            }
            if let Some(at) = self.failed_lately(&key) {
                return Err(format!(
                    "the lookup failed {}s ago; not asked again for {}s",
                    at.elapsed().as_secs(),
                    self.failure_memory().saturating_sub(at.elapsed()).as_secs()
                ));
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
                // Whether the fetch ends or this request goes away mid-fetch (its deadline), the
                // key leaves the in-flight map, so a later lookup starts afresh instead of
                // joining a dead one.
                let _slot = Inflight {
                    resolver: self,
                    key: &key,
                };
                let outcome = self.fetch(client, module, tag).await;
                match &outcome {
                    Ok(v) => {
                        self.remember(key.clone(), v.clone());
                        self.metrics
                            .resolve
                            .resolved
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => self.remember_failure(key.clone()),
                }
                let _ = tx.send(Some(outcome.clone()));
                return outcome;
            }
            // A follower: the leader's outcome. A leader that went away (its request's deadline
            // passed) left none: this lookup tries again, under its own deadline.
            let waited = rx
                .wait_for(Option::is_some)
                .await
                .map(|outcome| outcome.clone());
            if let Ok(outcome) = waited {
                let outcome = outcome.unwrap_or_else(|| Err("no outcome".into()));
                if outcome.is_ok() {
                    self.metrics.resolve.cached.fetch_add(1, Ordering::Relaxed);
                }
                return outcome;
            }
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

/// `X-Build-Resolved: <module>@<asked>=<resolved>, ...`, at most [`MAX_HEADER_BYTES`]: past it,
/// as many whole entries as fit and then `+N more` as the last entry (the status JSON lists all).
pub fn header_value(resolutions: &[Resolution]) -> Option<String> {
    if resolutions.is_empty() {
        return None;
    }
    let entries: Vec<String> = resolutions
        .iter()
        .map(|r| format!("{}@{}={}", r.module, r.asked, r.version))
        .collect();
    let full = entries.join(", ");
    if full.len() <= MAX_HEADER_BYTES {
        return Some(full);
    }
    // Room kept for the marker: ", +NNNNN more".
    const MARKER_ROOM: usize = 16;
    let mut out = String::new();
    let mut kept = 0;
    for entry in &entries {
        let sep = if out.is_empty() { 0 } else { 2 };
        if out.len() + sep + entry.len() > MAX_HEADER_BYTES - MARKER_ROOM {
            break;
        }
        if sep > 0 {
            out.push_str(", ");
        }
        out.push_str(entry);
        kept += 1;
    }
    if !out.is_empty() {
        out.push_str(", ");
    }
    out.push_str(&format!("+{} more", entries.len() - kept));
    Some(out)
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

    #[test]
    fn the_resolved_header_is_capped_and_says_how_many_are_left_out() {
        let r: Vec<Resolution> = (0..256)
            .map(|i| Resolution {
                module: format!("github.com/roadrunner-server/plugin{i:03}/v5"),
                asked: "latest".into(),
                version: "v5.2.7".into(),
            })
            .collect();
        let v = header_value(&r).expect("a header");
        assert!(v.len() <= MAX_HEADER_BYTES, "{}", v.len());
        let parts: Vec<&str> = v.split(", ").collect();
        let (last, kept) = parts.split_last().expect("entries");
        assert_eq!(*last, format!("+{} more", 256 - kept.len()));
        assert!(kept.len() > 10, "as many as fit: {}", kept.len());
        for (i, entry) in kept.iter().enumerate() {
            assert_eq!(
                *entry,
                format!("github.com/roadrunner-server/plugin{i:03}/v5@latest=v5.2.7")
            );
        }
        // Just under the cap: whole, no marker.
        let fits: Vec<Resolution> = r[..kept.len()].to_vec();
        assert!(!header_value(&fits).expect("a header").contains("more"));
    }
}
