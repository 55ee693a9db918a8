//! `velox-cache warm FILE --url URL [--concurrency N]`: submits each build request of a
//! JSON-lines file to a running server's build API, a few at a time, shows progress, and ends
//! with a summary. `--url` is checked once before anything is sent (its form, then that a
//! server answers there). Bad lines are reported with their number and counted as failures; the
//! exit status is 1 when anything failed.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};

use crate::builds::BuildRequest;
use crate::config::Config;

#[derive(Default)]
struct Tally {
    hits: usize,
    built: usize,
    failed: usize,
    bytes: u64,
}

impl Tally {
    fn line(&self) -> String {
        format!(
            "{} succeeded ({} hits, {} built), {} failed, {}",
            self.hits + self.built,
            self.hits,
            self.built,
            self.failed,
            human_bytes(self.bytes)
        )
    }
}

fn human_bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if n as f64 >= MIB {
        format!("{:.1} MiB", n as f64 / MIB)
    } else {
        format!("{n} bytes")
    }
}

/// One submission's result: whether it was a hit, and the bytes received.
type Submitted = Result<(bool, u64), String>;

async fn submit(client: &awc::Client, url: &str, token: Option<&str>, body: String) -> Submitted {
    let mut req = client
        .post(url)
        .insert_header(("content-type", "application/json"));
    if let Some(t) = token {
        req = req.insert_header(("authorization", format!("Bearer {t}")));
    }
    let mut resp = req
        .send_body(body)
        .await
        .map_err(|e| format!("cannot reach the server: {e}"))?;
    if resp.status() != 200 {
        let status = resp.status();
        let detail = resp
            .json::<serde_json::Value>()
            .await
            .ok()
            .map(|v| {
                format!(
                    "{}: {}",
                    v["error"].as_str().unwrap_or("error"),
                    v["message"].as_str().unwrap_or("")
                )
            })
            .unwrap_or_default();
        return Err(format!("{status} {detail}"));
    }
    let hit = resp
        .headers()
        .get("x-cache-status")
        .is_some_and(|v| v.as_bytes() == b"HIT");
    let expected = crate::http::content_length(resp.headers());
    let mut bytes = 0u64;
    while let Some(chunk) = resp.next().await {
        bytes += chunk
            .map_err(|e| format!("the download broke off: {e}"))?
            .len() as u64;
    }
    if expected.is_some_and(|n| n != bytes) {
        return Err(format!("the download ended after {bytes} bytes"));
    }
    Ok((hit, bytes))
}

/// Whether a velox-cache answers at `url`: its build route answers a GET with its own 405.
async fn probe(client: &awc::Client, endpoint: &str) -> Result<(), String> {
    let resp = client
        .get(endpoint)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("cannot reach the server at {endpoint}: {e}"))?;
    if resp.status() == 405 || resp.status().is_success() {
        Ok(())
    } else {
        Err(format!(
            "{endpoint} answered {}: is --url a velox-cache's public listener?",
            resp.status()
        ))
    }
}

pub fn run(config: &Config, file: &Path, url: &str, concurrency: usize) -> ExitCode {
    let base = url.trim_end_matches('/');
    let well_formed = base
        .strip_prefix("http://")
        .or_else(|| base.strip_prefix("https://"))
        .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace));
    if !well_formed {
        eprintln!("velox-cache: --url must be an http:// or https:// URL, such as http://127.0.0.1:8080 (got {url:?})");
        return ExitCode::from(2);
    }
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("velox-cache: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let mut jobs = Vec::new();
    let mut tally = Tally::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match BuildRequest::parse(line.as_bytes()) {
            Ok(_) => jobs.push((i + 1, line.to_owned())),
            Err(e) => {
                println!("line {}: not a valid build request: {}", i + 1, e.message);
                tally.failed += 1;
            }
        }
    }
    let endpoint = format!("{base}/_velox/v1/builds");
    let token = config.api_token.clone();
    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let total = jobs.len();
    let requests = total + tally.failed;
    let tally: Result<Tally, String> = actix_web::rt::System::new().block_on(async move {
        let client = awc::Client::builder()
            .timeout(config.build_timeout + Duration::from_secs(30))
            .finish();
        if !jobs.is_empty() {
            probe(&client, &endpoint).await?;
        }
        let bar = if tty {
            let bar = ProgressBar::new(total as u64);
            if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}")
            {
                bar.set_style(style);
            }
            bar
        } else {
            ProgressBar::hidden()
        };
        let mut results = stream::iter(jobs)
            .map(|(n, body)| {
                let (client, endpoint, token) = (&client, &endpoint, token.as_deref());
                async move { (n, submit(client, endpoint, token, body).await) }
            })
            .buffer_unordered(concurrency.max(1));
        while let Some((n, result)) = results.next().await {
            let line = match result {
                Ok((hit, bytes)) => {
                    if hit {
                        tally.hits += 1;
                    } else {
                        tally.built += 1;
                    }
                    tally.bytes += bytes;
                    format!(
                        "line {n}: {} {}",
                        if hit { "HIT" } else { "MISS" },
                        human_bytes(bytes)
                    )
                }
                Err(why) => {
                    tally.failed += 1;
                    format!("line {n}: failed: {why}")
                }
            };
            if tty {
                bar.inc(1);
                bar.set_message(tally.line());
                if line.contains("failed") {
                    bar.println(line);
                }
            } else {
                println!("{line}");
            }
        }
        bar.finish_and_clear();
        Ok(tally)
    });
    let tally = match tally {
        Ok(t) => t,
        Err(why) => {
            eprintln!("velox-cache: {why}; nothing was sent");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{requests} request(s) in {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        tally.line()
    );
    if tally.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
