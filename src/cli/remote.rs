//! `cache stats` and `cache list` for a data dir a running server holds (docs/cli.md): asked of
//! that server's admin listener (`admin_listen`, from the flags, the environment or the file)
//! instead of refused. The server must say it serves this very data dir, so that a command
//! pointed at one dir never prints another's entries.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::healthcheck::reachable;
use crate::config::Config;

/// An entry as `cache list` prints it.
pub struct Line {
    pub key: String,
    pub digest: String,
    pub size: u64,
    pub access_count: u64,
    pub file_name: String,
}

fn base(config: &Config) -> String {
    format!("http://{}", reachable(config.admin_listen))
}

async fn get_json(client: &awc::Client, url: &str) -> Result<Value, String> {
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url} did not answer: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url} answered {}", resp.status()));
    }
    resp.json::<Value>()
        .limit(16 * 1024 * 1024)
        .await
        .map_err(|e| format!("{url} answered something that is not JSON: {e}"))
}

/// Checks that the server's stats are for `data_dir`, and returns them.
async fn stats_for(client: &awc::Client, config: &Config) -> Result<Value, String> {
    let url = format!("{}/v1/cache/stats", base(config));
    let stats = get_json(client, &url).await?;
    let ours = canonical(&config.data_dir);
    match stats["data_dir"].as_str() {
        Some(theirs) if Path::new(theirs) == ours => Ok(stats),
        Some(theirs) => Err(format!(
            "the server at {} serves the data dir {theirs}, not {}; pass the --admin-listen of the server holding it",
            base(config),
            ours.display()
        )),
        None => Err(format!(
            "the server at {} does not say which data dir it serves",
            base(config)
        )),
    }
}

pub fn canonical(dir: &Path) -> std::path::PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Runs `f` with a client that sends `api_token` (when configured) on every request: with
/// `auth.anonymous = "none"` even the stats that identify the server need a token.
fn block_on<T>(
    config: &Config,
    f: impl AsyncFnOnce(&awc::Client) -> Result<T, String>,
) -> Result<T, String> {
    actix_web::rt::System::new().block_on(async move {
        let mut builder = awc::Client::builder().timeout(Duration::from_secs(10));
        if let Some(token) = &config.api_token {
            builder = builder.bearer_auth(token);
        }
        f(&builder.finish()).await
    })
}

/// Entries and bytes, from the server holding the data dir.
pub fn stats(config: &Config) -> Result<(u64, u64), String> {
    block_on(config, async |client| {
        let s = stats_for(client, config).await?;
        match (s["entries"].as_u64(), s["bytes"].as_u64()) {
            (Some(e), Some(b)) => Ok((e, b)),
            _ => Err("the server's stats lack entries or bytes".into()),
        }
    })
}

/// Up to `limit` entries after `after`, in key order, page by page.
pub fn list(config: &Config, after: Option<String>, limit: usize) -> Result<Vec<Line>, String> {
    block_on(config, async |client| {
        stats_for(client, config).await?;
        let mut out = Vec::new();
        let mut after = after;
        while out.len() < limit {
            let page = (limit - out.len()).min(1000);
            let mut url = format!("{}/v1/cache?limit={page}", base(config));
            if let Some(a) = &after {
                url.push_str(&format!("&after={a}"));
            }
            let v = get_json(client, &url).await?;
            let entries = v["entries"].as_array().cloned().unwrap_or_default();
            for e in &entries {
                out.push(Line {
                    key: e["key"].as_str().unwrap_or_default().to_owned(),
                    digest: e["digest"].as_str().unwrap_or_default().to_owned(),
                    size: e["size"].as_u64().unwrap_or(0),
                    access_count: e["access_count"].as_u64().unwrap_or(0),
                    file_name: e["file_name"].as_str().unwrap_or_default().to_owned(),
                });
            }
            match v["next"].as_str() {
                Some(next) if !entries.is_empty() => after = Some(next.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    })
}

/// Every channel's JSON, from the server holding the data dir.
pub fn channels(config: &Config) -> Result<Vec<Value>, String> {
    block_on(config, async |client| {
        stats_for(client, config).await?;
        let v = get_json(client, &format!("{}/v1/channels", base(config))).await?;
        Ok(v["channels"].as_array().cloned().unwrap_or_default())
    })
}

/// One call to the admin listener of the server holding the data dir (after checking that it
/// serves this very dir), with `api_token` as the bearer token when one is configured: its
/// status and JSON body (`Null` for none).
pub fn admin_call(
    config: &Config,
    method: awc::http::Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    block_on(config, async |client| {
        stats_for(client, config).await?;
        let url = format!("{}{path}", base(config));
        let req = client.request(method, &url);
        let sent = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        };
        let mut resp = sent.map_err(|e| format!("{url} did not answer: {e}"))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .body()
            .limit(16 * 1024 * 1024)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|e| format!("{url} answered something that is not JSON: {e}"))?
        };
        Ok((status, value))
    })
}
