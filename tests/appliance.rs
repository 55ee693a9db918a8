//! The appliance and the operator's tools: the Dockerfile's environment, `healthcheck`, `warm`,
//! and the migration table from the Go middleware's configuration.

mod support;

use std::collections::HashMap;
use std::path::Path;

use support::server::run;
use support::*;

/// The `ENV` of the Dockerfile's last stage, as key/value pairs.
fn dockerfile_env() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"))
        .expect("Dockerfile");
    let last_stage = text.rsplit("\nFROM ").next().expect("a stage");
    // Join continuation lines, then read every `ENV` instruction.
    let joined = last_stage.replace("\\\n", " ");
    let mut env = Vec::new();
    for line in joined.lines() {
        let Some(rest) = line.trim().strip_prefix("ENV ") else {
            continue;
        };
        for pair in rest.split_whitespace() {
            let (k, v) = pair.split_once('=').expect("ENV key=value");
            env.push((k.to_owned(), v.trim_matches('"').to_owned()));
        }
    }
    env
}

#[actix_web::test]
async fn dockerfile_environment_serves_and_healthcheck_tells() {
    let env = dockerfile_env();
    let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert!(keys.contains(&"VELOX_CACHE_DATA_DIR"), "{keys:?}");
    assert!(keys.contains(&"VELOX_CACHE_LISTEN"), "{keys:?}");
    assert!(keys.contains(&"VELOX_CACHE_ADMIN_LISTEN"), "{keys:?}");
    // The image's environment, with the data dir and the ports swapped for temp ones (the image
    // binds all interfaces; here the same shape, on loopback).
    let mut h = Harness::start_with(|o| {
        let data_dir = o.data_dir.display().to_string();
        o.envs(env.iter().map(|(k, v)| {
            let v = match k.as_str() {
                "VELOX_CACHE_DATA_DIR" => data_dir.clone(),
                "VELOX_CACHE_LISTEN" | "VELOX_CACHE_ADMIN_LISTEN" => {
                    assert!(
                        v.starts_with("0.0.0.0:"),
                        "{k}={v}: must be reachable through a published port"
                    );
                    "127.0.0.1:0".to_owned()
                }
                _ => v.clone(),
            };
            (k, v)
        }))
    });
    let r = h.post(&build_request("linux", "amd64")).await;
    assert_eq!(r.status, 200);
    let admin = h.server().admin_addr();
    let (code, out, err) = run(&["healthcheck", "--admin-listen", &admin], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ready"));
    // Through the image's own variable, as the HEALTHCHECK sees it.
    let (code, _, _) = run(&["healthcheck"], &[("VELOX_CACHE_ADMIN_LISTEN", &admin)]);
    assert_eq!(code, 0);
    h.take().kill();
    let (code, out, _) = run(&["healthcheck", "--admin-listen", &admin], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not ready"), "{out}");
}

#[actix_web::test]
async fn warm_counts_hits_builds_failures_and_bad_lines() {
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_API_TOKEN", "warm-token"));
    // Line 5 repeats line 1.
    let mut lines = request_lines([0, 1, 2, 3, 0]);
    lines.push("{this is not json".to_owned()); // line 6
    lines.push(String::new());
    lines.extend(request_lines([99])); // line 8: fails
                                       // warm submits every line before any build ends, so outcomes are set up before it runs:
                                       // request 0 is cached (lines 1 and 5 are hits) and request 99's failure is remembered
                                       // (line 8 is refused at once).
    let f = write_lines(&h.tmp.path().join("requests.jsonl"), &lines);
    let url = h.url("");
    let auth = [("authorization", "Bearer warm-token")];
    let cached = post_json(&h.builds_url(), &distinct_request(0), &auth).await;
    assert_eq!(cached.status, 200);
    h.velox.script([Behavior::Code("internal")]);
    post_json(&h.builds_url(), &distinct_request(99), &auth)
        .await
        .assert_error(502, "build_failed");
    let (code, out, err) = run(
        &["warm", &f, "--url", &url, "--concurrency", "1"],
        &[("VELOX_CACHE_API_TOKEN", "warm-token")],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("line 6: not a valid build request"), "{out}");
    assert!(out.contains("line 8: failed: 502"), "{out}");
    assert!(
        out.contains("7 request(s)") && out.contains("5 succeeded (2 hits, 3 built), 2 failed"),
        "{out}"
    );
    // Not a terminal: plain lines, no control characters from a progress bar.
    assert!(!out.contains('\u{1b}') && !out.contains('\r'), "{out:?}");
    let counts: HashMap<&str, usize> = ["HIT", "MISS"]
        .iter()
        .map(|s| {
            (
                *s,
                out.lines()
                    .filter(|l| l.contains(&format!(": {s} ")))
                    .count(),
            )
        })
        .collect();
    assert_eq!(counts["HIT"], 2, "{out}");
    assert_eq!(counts["MISS"], 3, "{out}");
    // Without the token, every request is refused: all fail.
    let (code, out, _) = run(&["warm", &f, "--url", &url], &[]);
    assert_eq!(code, 1);
    assert!(out.contains("401"), "{out}");
    // An unreadable file is a usage error.
    let (code, _, err) = run(&["warm", "/nonexistent.jsonl", "--url", &url], &[]);
    assert_eq!(code, 2, "{err}");
}

/// Every key under `velox:` in the Go middleware's configuration example.
fn middleware_keys(readme: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut inside = false;
    for line in readme.lines() {
        if line.trim_end() == "velox:" {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if indent == 0 {
            break;
        }
        let Some((name, _)) = trimmed.split_once(':') else {
            continue;
        };
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let mut path: Vec<&str> = stack.iter().map(|(_, n)| n.as_str()).collect();
        path.push(name);
        keys.push(path.join("."));
        stack.push((indent, name.to_owned()));
    }
    keys
}

/// The `velox:` section of the Go middleware's `.rr.yaml` example (its README, "Configuration"),
/// carried here so that the test stands alone: every key a user of the middleware may have set.
const MIDDLEWARE_EXAMPLE: &str = r#"
http:
  address: '0.0.0.0:8080'
  middleware:
    - velox

velox:
  server_url: "http://127.0.0.1:9000"
  build_timeout: "5m"
  request_timeout: "180s"
  retry:
    max_attempts: 3
    initial_delay: "1s"
    max_delay: "10s"
    backoff_multiplier: 2.0
  cache:
    enabled: true
    directory: "/var/cache/velox"
    max_size_gb: 50
    max_entries: 1000
    max_age_days: 30
    cleanup_interval: "1h"
    eviction_policy: "lru"
    access_update_interval: "5m"
"#;

#[test]
fn migration_table_covers_every_middleware_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let keys = middleware_keys(MIDDLEWARE_EXAMPLE);
    assert!(keys.len() >= 15, "the example was not read: {keys:?}");
    assert!(
        keys.contains(&"cache.eviction_policy".to_owned()),
        "{keys:?}"
    );
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !readme.contains(&format!("| `velox.{k}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "README's migration table lacks: {missing:?}"
    );
}

/// What a graceful stop may take: open downloads get 30 s (docs/operations.md, "Stopping").
const DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

#[test]
fn stop_grace_periods_outlast_the_drain() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Docker Compose: the velox-cache service's stop_grace_period.
    let compose =
        std::fs::read_to_string(root.join("examples/docker-compose.yml")).expect("compose");
    let service = compose
        .split("\n  velox-cache:\n")
        .nth(1)
        .expect("a velox-cache service");
    let grace = service
        .lines()
        .find_map(|l| l.trim().strip_prefix("stop_grace_period:"))
        .expect("stop_grace_period on the velox-cache service");
    let grace = humantime::parse_duration(grace.trim()).expect("a duration");
    assert!(grace > DRAIN, "stop_grace_period {grace:?}");
    // systemd: the unit's stop timeout, and no restart loop on a refused configuration.
    let unit = std::fs::read_to_string(root.join("examples/velox-cache.service")).expect("unit");
    let timeout = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec");
    let timeout = humantime::parse_duration(timeout.trim()).expect("a duration");
    assert!(timeout > DRAIN, "TimeoutStopSec {timeout:?}");
    assert!(unit.lines().any(|l| l == "RestartPreventExitStatus=2"));
    // And systemd itself accepts the unit (with the binary under test as its ExecStart).
    if let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    {
        if out.status.success() {
            let tmp = tempfile::tempdir().expect("tmp");
            let path = tmp.path().join("velox-cache.service");
            std::fs::write(
                &path,
                unit.replace("/usr/local/bin/velox-cache", support::server::BIN),
            )
            .expect("write");
            let out = std::process::Command::new("systemd-analyze")
                .arg("verify")
                .arg(&path)
                .output()
                .expect("systemd-analyze");
            let text = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && text.trim().is_empty(), "{text}");
        }
    }
}
