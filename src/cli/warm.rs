//! `velox-cache warm FILE --url URL [--concurrency N]`: submits each build request of a
//! JSON-lines file to a running server's build API, a few at a time, shows progress, and ends
//! with a summary. `--url` is checked once before anything is sent (its form, then that a
//! server answers there). Bad lines are reported with their number and counted as failures; the
//! exit status is 1 when anything failed.
//!
//! Requests go with `Prefer: respond-async`: a build answers 202 at once and is followed by
//! polling its status with backoff, so a warm-up of many builds holds no connection open while
//! they run (docs/http-api.md, "Asynchronous builds").

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_util::stream::{self, FuturesUnordered};
use futures_util::StreamExt;
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

/// One request's result: whether it was a hit, and the binary's size.
type Submitted = Result<(bool, u64), String>;

/// How a submission was answered.
enum Answer {
    /// 200: the binary, received whole.
    Binary { hit: bool, bytes: u64 },
    /// 202: the build goes on; its status is at this URL.
    Accepted(String),
}

/// The JSON error's `error: message`, or nothing.
async fn error_detail<S>(resp: &mut awc::ClientResponse<S>) -> String
where
    S: futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>> + Unpin,
{
    resp.json::<serde_json::Value>()
        .await
        .ok()
        .map(|v| {
            format!(
                "{}: {}",
                v["error"].as_str().unwrap_or("error"),
                v["message"].as_str().unwrap_or("")
            )
        })
        .unwrap_or_default()
}

/// POSTs one build request asking not to wait. `503 overloaded` is tried again after its
/// `Retry-After` until `give_up`.
async fn submit(
    client: &awc::Client,
    base: &str,
    token: Option<&str>,
    body: String,
    give_up: Instant,
) -> Result<Answer, String> {
    let url = format!("{base}/_velox/v1/builds");
    loop {
        let mut req = client
            .post(&url)
            .insert_header(("content-type", "application/json"))
            .insert_header(("prefer", "respond-async"));
        if let Some(t) = token {
            req = req.insert_header(("authorization", format!("Bearer {t}")));
        }
        let mut resp = req
            .send_body(body.clone())
            .await
            .map_err(|e| format!("cannot reach the server: {e}"))?;
        let status = resp.status();
        if status == 202 {
            let location = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .ok_or("the server answered 202 without a Location")?;
            return Ok(Answer::Accepted(format!("{base}{location}")));
        }
        if status == 503 {
            let wait = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let detail = error_detail(&mut resp).await;
            if let Some(secs) = wait.filter(|_| detail.starts_with("overloaded")) {
                let wait = Duration::from_secs(secs.clamp(1, 60));
                if Instant::now() + wait < give_up {
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            return Err(format!("{status} {detail}"));
        }
        if status != 200 {
            return Err(format!("{status} {}", error_detail(&mut resp).await));
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
        return Ok(Answer::Binary { hit, bytes });
    }
}

/// Polls a build's status until it is `ready` (its size) or `failed`, waiting 2 s first (the
/// server's `Retry-After`), then half as long again each time, up to 10 s between polls.
async fn follow(client: &awc::Client, status_url: &str, give_up: Instant) -> Result<u64, String> {
    let mut delay = Duration::from_secs(2);
    let mut unreachable = 0;
    loop {
        if Instant::now() + delay > give_up {
            return Err("the build did not finish in time".into());
        }
        tokio::time::sleep(delay).await;
        delay = delay.mul_f64(1.5).min(Duration::from_secs(10));
        let mut resp = match client
            .get(status_url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
        {
            Ok(resp) => resp,
            // A server restarting or a moment of network trouble is no verdict on the build.
            Err(e) if unreachable < 5 => {
                unreachable += 1;
                log::debug!("polling {}: {e}", crate::redact::url(status_url));
                continue;
            }
            Err(e) => return Err(format!("cannot reach the server: {e}")),
        };
        unreachable = 0;
        if resp.status() != 200 {
            let status = resp.status();
            return Err(format!("{status} {}", error_detail(&mut resp).await));
        }
        let v: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| format!("the build status is not JSON: {e}"))?;
        match v["status"].as_str() {
            Some("ready") => return Ok(v["size"].as_u64().unwrap_or(0)),
            Some("failed") => {
                return Err(format!(
                    "{}: {}",
                    v["error"].as_str().unwrap_or("failed"),
                    v["message"].as_str().unwrap_or("")
                ))
            }
            _ => {}
        }
    }
}

/// Counts one line's result and shows it.
fn record(tally: &mut Tally, bar: &ProgressBar, tty: bool, n: usize, result: Submitted) {
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

/// Whether a server answers at `base` at all: one check before anything is sent, so that a
/// wrong `--url` is one message and not one failure per line.
async fn probe(client: &awc::Client, base: &str) -> Result<(), String> {
    let url = format!("{base}/_velox/v1/builds");
    client
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map(drop)
        .map_err(|e| {
            let url = crate::redact::url(&url);
            format!("cannot reach the server at {url}: {e}")
        })
}

pub fn run(config: &Config, file: &Path, url: &str, concurrency: usize) -> ExitCode {
    let trimmed = url.trim_end_matches('/');
    let well_formed = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace));
    if !well_formed {
        eprintln!(
            "velox-cache: --url must be an http:// or https:// URL, such as http://127.0.0.1:8080 (got {:?})",
            crate::redact::url(url)
        );
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
    let base = trimmed.to_owned();
    let token = config.api_token.clone();
    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let total = jobs.len();
    let requests = total + tally.failed;
    let tally: Result<Tally, String> = actix_web::rt::System::new().block_on(async move {
        // A hit's download may take a while; polls and 202s are quick.
        let client = awc::Client::builder()
            .timeout(config.build_timeout + Duration::from_secs(30))
            .finish();
        if total > 0 {
            probe(&client, &base).await?;
        }
        let give_up = Instant::now() + config.build_timeout + Duration::from_secs(30);
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
        // Every request is submitted (a few at a time); each 202 is then followed on its own,
        // while the remaining submissions go on.
        let mut submissions = stream::iter(jobs)
            .map(|(n, body)| {
                let (client, base, token) = (&client, &base, token.as_deref());
                async move { (n, submit(client, base, token, body, give_up).await) }
            })
            .buffer_unordered(concurrency.max(1));
        let mut follows = FuturesUnordered::new();
        loop {
            tokio::select! {
                Some((n, answer)) = submissions.next() => match answer {
                    Ok(Answer::Binary { hit, bytes }) => {
                        record(&mut tally, &bar, tty, n, Ok((hit, bytes)));
                    }
                    Ok(Answer::Accepted(status_url)) => {
                        let client = &client;
                        follows.push(async move {
                            (n, follow(client, &status_url, give_up).await.map(|size| (false, size)))
                        });
                    }
                    Err(why) => record(&mut tally, &bar, tty, n, Err(why)),
                },
                Some((n, result)) = follows.next() => record(&mut tally, &bar, tty, n, result),
                else => break,
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
