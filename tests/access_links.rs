//! Access for teams (docs/access.md), the parts that are not the scope table (that is
//! tests/access.rs): signed URLs fetched by curl, wget and a link clicked in headless Chromium,
//! and refused once altered or expired; the `token` and `url sign` commands against a running
//! server; build quotas (429 `quota_exceeded` with `Retry-After`) and the fair start order
//! across tokens; a revocation seen by a second replica on one moto bucket.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/moto.rs"]
mod moto;
mod support;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const API: &str = "access-links-api-token-0123456789";
const URL_SECRET: &str = "access-links-url-secret-0123456789";

async fn make_token(s: &Server, fields: Value) -> String {
    create_token(s, API, &fields).await["token"]
        .as_str()
        .expect("token")
        .to_owned()
}

/// Runs `program args…`; its exit status, standard output and standard error.
fn tool(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/test installs it)"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The CLI against the server holding `h`'s data dir, through its admin listener.
fn cli(h: &Harness, args: &[&str]) -> (i32, String, String) {
    let data_dir = h.data_dir_arg();
    let admin = h.server().admin_addr();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--data-dir", &data_dir, "--admin-listen", &admin]);
    server::run(&all, &[("VELOX_CACHE_API_TOKEN", API)])
}

#[actix_web::test]
async fn signed_urls_with_curl_wget_and_chromium_and_the_token_commands() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = Harness::start_with(|o| {
        o.env("VELOX_CACHE_API_TOKEN", API)
            .env("VELOX_CACHE_AUTH__URL_SECRET", URL_SECRET)
            .env("VELOX_CACHE_AUTH__ANONYMOUS", "none")
    });
    let built = post_json(
        &h.builds_url(),
        &build_request("linux", "amd64"),
        &[("authorization", &bearer(API))],
    )
    .await;
    assert_eq!(built.status, 200);
    let digest = sha256_hex(&built.body);
    let path = format!("/_velox/v1/artifacts/{digest}");
    assert_eq!(
        get(&h.url(&path), &[]).await.status,
        401,
        "anonymous = none"
    );

    // POST /v1/signed-urls.
    let r = post_json(
        &h.server().admin_url("/v1/signed-urls"),
        &json!({"path": path, "expires_in": "10m"}),
        &[("authorization", &bearer(API))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let url = v["url"].as_str().expect("url").to_owned();
    let expires_at = v["expires_at"].as_u64().expect("expires_at");
    assert!(
        url.starts_with(&format!("{path}?expires={expires_at}&sig=")),
        "{url}"
    );
    let full = h.url(&url);

    let out = tmp.path().join("curl.bin");
    let (ok, _, err) = tool("curl", &["-fsS", "-o", out.to_str().expect("path"), &full]);
    assert!(ok, "curl: {err}");
    assert_eq!(sha256_hex(&std::fs::read(&out).expect("curl file")), digest);
    let out = tmp.path().join("wget.bin");
    let (ok, _, err) = tool("wget", &["-q", "-O", out.to_str().expect("path"), &full]);
    assert!(ok, "wget: {err}");
    assert_eq!(sha256_hex(&std::fs::read(&out).expect("wget file")), digest);
    assert_eq!(head(&full, &[]).await.status, 200, "HEAD is the GET class");

    // A download link clicked in headless Chromium.
    let out = tmp.path().join("chromium.bin");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/browser/download_link.py"
    );
    let (ok, said, err) = tool("python3", &[script, &full, out.to_str().expect("path")]);
    assert!(ok, "chromium: {said}{err}");
    let said: Value = serde_json::from_str(said.trim()).expect("driver JSON");
    assert_eq!(said["ok"], true, "{said}");
    assert_eq!(said["failure"], Value::Null, "{said}");
    assert_eq!(
        sha256_hex(&std::fs::read(&out).expect("chromium file")),
        digest
    );

    // `velox-cache url sign` asks the running server; its URL fetches the signature.
    let (code, printed, err) = cli(
        &h,
        &["url", "sign", &format!("{path}.minisig"), "--expires", "5m"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(printed.lines().count(), 1, "the URL alone: {printed}");
    let sig_url = h.url(printed.trim());
    let (ok, sig, err) = tool("curl", &["-fsS", &sig_url]);
    assert!(ok, "curl: {err}");
    let want = get(
        &h.url(&format!("{path}.minisig")),
        &[("authorization", &bearer(API))],
    )
    .await;
    assert_eq!(sig.as_bytes(), &want.body[..]);

    // Altered in any part, or used with another method class: 403, and a 403 in Chromium too.
    let (_, query) = url.split_once('?').expect("query");
    let other = format!("/_velox/v1/artifacts/{}", "a".repeat(64));
    let sig = query.split("&sig=").nth(1).expect("sig");
    let mut flipped = sig.to_owned().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).expect("ascii");
    let altered = [
        ("path", format!("{other}?{query}")),
        (
            "expiry",
            url.replace(
                &format!("expires={expires_at}"),
                &format!("expires={}", expires_at + 60),
            ),
        ),
        ("signature", url.replace(sig, &flipped)),
        ("extra parameter", format!("{url}&x=1")),
    ];
    for (what, bad) in &altered {
        let r = get(&h.url(bad), &[]).await;
        let v = r.assert_error(403, "forbidden");
        assert!(
            !v["message"].as_str().unwrap_or_default().is_empty(),
            "{what}"
        );
    }
    for method in ["POST", "DELETE", "PUT"] {
        let (_, code, _) = tool(
            "curl",
            &[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                method,
                &full,
            ],
        );
        assert_eq!(code, "403", "{method} with a GET-class signature");
    }
    let out = tmp.path().join("refused.bin");
    let (_, said, err) = tool(
        "python3",
        &[script, &h.url(&altered[2].1), out.to_str().expect("path")],
    );
    let said: Value = serde_json::from_str(said.trim()).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert!(
        said["ok"] == false || !said["failure"].is_null(),
        "a bad link downloaded: {said}"
    );
    if out.exists() {
        assert_ne!(sha256_hex(&std::fs::read(&out).expect("file")), digest);
    }

    // Expired: 403 with its own message.
    let r = post_json(
        &h.server().admin_url("/v1/signed-urls"),
        &json!({"path": path, "expires_in": "1s"}),
        &[("authorization", &bearer(API))],
    )
    .await;
    let brief = r.json()["url"].as_str().expect("url").to_owned();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let v = get(&h.url(&brief), &[])
        .await
        .assert_error(403, "forbidden");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("expired")),
        "{v}"
    );
    // Paths that cannot be signed: 400.
    let r = post_json(
        &h.server().admin_url("/v1/signed-urls"),
        &json!({"path": "/_velox/v1/builds"}),
        &[("authorization", &bearer(API))],
    )
    .await;
    r.assert_error(400, "invalid_request");

    // The token commands through the admin listener of the running server.
    let (code, secret, err) = cli(
        &h,
        &[
            "token",
            "create",
            "--name",
            "ci",
            "--scope",
            "build",
            "--channels",
            "team-*",
            "--expires",
            "1d",
            "--builds-per-hour",
            "5",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let secret = secret.trim().to_owned();
    assert!(
        secret.starts_with("vxc_") && secret.len() == 47,
        "the secret alone: {secret:?}"
    );
    assert_eq!(
        get(&h.url(&path), &[("authorization", &bearer(&secret))])
            .await
            .status,
        200
    );
    let (code, list, err) = cli(&h, &["token", "list"]);
    assert_eq!(code, 0, "{err}");
    let line = list
        .lines()
        .find(|l| l.starts_with("ci "))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        line.contains("build") && line.contains("live") && line.contains("channels=team-*"),
        "{line}"
    );
    assert!(!list.contains(&secret));
    let (code, _, err) = cli(&h, &["token", "create", "--name", "ci", "--scope", "read"]);
    assert_ne!(code, 0);
    assert!(err.contains("409") && err.contains("exists"), "{err}");
    let (code, _, err) = cli(&h, &["token", "revoke", "ci"]);
    assert_eq!(code, 0, "{err}");
    let (_, list, _) = cli(&h, &["token", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("ci ") && l.contains("revoked")),
        "{list}"
    );
    let v = get(&h.url(&path), &[("authorization", &bearer(&secret))])
        .await
        .assert_error(401, "unauthorized");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("revoked")),
        "{v}"
    );
    let (code, _, err) = cli(&h, &["token", "revoke", "ci"]);
    assert_ne!(code, 0);
    assert!(err.contains("404"), "{err}");

    // No secret in the log, the metrics, or `config`.
    let metrics = get(&h.server().admin_url("/metrics"), &[]).await;
    let (code, shown, _) = server::run(
        &["config"],
        &[
            ("VELOX_CACHE_API_TOKEN", API),
            ("VELOX_CACHE_AUTH__URL_SECRET", URL_SECRET),
        ],
    );
    assert_eq!(code, 0);
    for text in [
        h.server().log_text(),
        String::from_utf8_lossy(&metrics.body).into_owned(),
        shown,
    ] {
        for s in [API, URL_SECRET, secret.as_str()] {
            assert!(!text.contains(s));
        }
    }
    // The access log names the signed requests, their signatures masked.
    let log = h.server().log_text();
    assert!(!log.contains(sig), "a signature in the log");
    assert!(log.contains("&sig=***"), "{log}");
}

/// Posts distinct build requests `ns` with `token`, each in its own task; finishing ones push
/// `label` on `order`.
fn submit(
    h: &Harness,
    token: &str,
    label: &'static str,
    ns: std::ops::Range<usize>,
    order: &Arc<Mutex<Vec<&'static str>>>,
) -> Vec<tokio::task::JoinHandle<u16>> {
    ns.map(|n| {
        let (url, auth, order) = (h.builds_url(), bearer(token), Arc::clone(order));
        tokio::task::spawn_local(async move {
            let r = post_json(&url, &distinct_request(n), &[("authorization", &auth)]).await;
            order.lock().expect("order").push(label);
            r.status
        })
    })
    .collect()
}

#[actix_web::test]
async fn quotas_refuse_with_retry_after_and_slots_go_round_robin() {
    let mut h = Harness::start_with(|o| {
        o.env("VELOX_CACHE_API_TOKEN", API)
            .env("VELOX_CACHE_MAX_CONCURRENT_BUILDS", "1")
    });
    let q = make_token(
        h.server(),
        json!({"name": "q", "scope": "build", "max_concurrent_builds": 1, "builds_per_hour": 3}),
    )
    .await;
    // A cached binary, for the hit below.
    let hit = post_json(
        &h.builds_url(),
        &distinct_request(0),
        &[("authorization", &bearer(API))],
    )
    .await;
    assert_eq!(hit.status, 200);

    // One build under way: a second is over the concurrency quota; a hit is not a build.
    h.velox.hold(true);
    let first = submit(&h, &q, "q", 1..2, &Arc::new(Mutex::new(Vec::new())));
    assert!(eventually(Duration::from_secs(10), async || h.velox.in_progress() == 1).await);
    let calls = h.velox.calls();
    let r = post_json(
        &h.builds_url(),
        &distinct_request(2),
        &[("authorization", &bearer(&q))],
    )
    .await;
    r.assert_error(429, "quota_exceeded");
    assert_eq!(r.header("retry-after"), Some("10"));
    assert_eq!(h.velox.calls(), calls, "a refused build reached Velox");
    let r = post_json(
        &h.builds_url(),
        &distinct_request(0),
        &[("authorization", &bearer(&q))],
    )
    .await;
    assert_eq!(r.status, 200, "a hit is not counted");
    h.velox.hold(false);
    for t in first {
        assert_eq!(t.await.expect("task"), 200);
    }
    // Builds per hour: the second and third start; the fourth is refused until the hour ends.
    for n in [2, 3] {
        let r = post_json(
            &h.builds_url(),
            &distinct_request(n),
            &[("authorization", &bearer(&q))],
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let r = post_json(
        &h.builds_url(),
        &distinct_request(4),
        &[("authorization", &bearer(&q))],
    )
    .await;
    let v = r.assert_error(429, "quota_exceeded");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("this hour")),
        "{v}"
    );
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=3600).contains(&retry), "{retry}");

    // Fairness: `bulk` queues 20 builds, then `small` 2, with 1 and then 2 build slots.
    let bulk = make_token(h.server(), json!({"name": "bulk", "scope": "build"})).await;
    let small = make_token(h.server(), json!({"name": "small", "scope": "build"})).await;
    let mut figures = Vec::new();
    for (slots, base) in [(1usize, 100usize), (2, 200)] {
        if slots == 2 {
            // Not a graceful stop: once, on a loaded machine, one outlasted the harness's 40 s
            // here (cause not found yet), and a stop is not what this test is about.
            h.take().kill();
            h.restart_with(|o| o.env("VELOX_CACHE_MAX_CONCURRENT_BUILDS", "2"));
        }
        h.velox.set_delay(Duration::from_millis(150));
        let order = Arc::new(Mutex::new(Vec::new()));
        // Every bulk request waits for a slot (all but the held ones) before small's arrive.
        h.velox.hold(true);
        let mut tasks = submit(&h, &bulk, "bulk", base..base + 20, &order);
        assert!(
            eventually(Duration::from_secs(10), async || h.velox.in_progress()
                == slots)
            .await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        tasks.extend(submit(&h, &small, "small", base + 20..base + 22, &order));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        h.velox.hold(false);
        for t in tasks {
            assert_eq!(t.await.expect("task"), 200);
        }
        let order = order.lock().expect("order").clone();
        let positions: Vec<usize> = order
            .iter()
            .enumerate()
            .filter(|(_, w)| **w == "small")
            .map(|(i, _)| i + 1)
            .collect();
        println!(
            "fairness: {slots} slot(s), 20 bulk + 2 small builds of 150ms: small finished at positions {positions:?} of 22 ({:.1}s)",
            started.elapsed().as_secs_f64()
        );
        // First come, first served would put them at 21 and 22.
        assert_eq!(positions.len(), 2);
        assert!(
            positions[1] <= 2 + 2 * slots + 2,
            "{slots} slots: {positions:?} {order:?}"
        );
        figures.push(positions);
        h.velox.set_delay(Duration::ZERO);
    }
}

#[actix_web::test]
async fn a_revocation_reaches_another_replica_within_the_refresh() {
    let mut cluster = cluster::Cluster::start("access/")
        .with("VELOX_CACHE_API_TOKEN", API)
        .with("VELOX_CACHE_AUTH__URL_SECRET", URL_SECRET)
        .with("VELOX_CACHE_AUTH__ANONYMOUS", "none")
        .with("VELOX_CACHE_AUTH__REFRESH", "1s");
    let a = cluster.replica();
    let b = cluster.replica();
    let token = make_token(&a, json!({"name": "shared", "scope": "read"})).await;
    let route = "/_velox/v1/channels";
    let status = |s: &Server| {
        let (url, auth) = (s.url(route), bearer(&token));
        async move { get(&url, &[("authorization", &auth)]).await.status }
    };
    let made = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), async || status(&b).await == 200).await,
        "replica b never honoured the new token:\n{}",
        b.log_text()
    );
    println!(
        "new token honoured by the other replica after {:?}",
        made.elapsed()
    );
    let r = client()
        .delete(a.admin_url("/v1/tokens/shared"))
        .insert_header(("authorization", bearer(API)))
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status().as_u16(), 204);
    let revoked = Instant::now();
    assert_eq!(status(&a).await, 401, "the replica that revoked it");
    assert!(
        eventually(Duration::from_secs(10), async || status(&b).await == 401).await,
        "replica b still honours the revoked token:\n{}",
        b.log_text()
    );
    println!(
        "revocation seen by the other replica after {:?}",
        revoked.elapsed()
    );
    let v = get(&b.url(route), &[("authorization", &bearer(&token))])
        .await
        .assert_error(401, "unauthorized");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("revoked")),
        "{v}"
    );
}

/// The CLI on `data_dir` with no server running (`args`, then `--data-dir`).
fn offline(args: &[&str], data_dir: &str) -> (i32, String, String) {
    let mut all = args.to_vec();
    all.extend(["--data-dir", data_dir]);
    server::run(&all, &[])
}

/// `token create` without a server (docs/access.md, "Quotas and fairness") refuses a quota of 0
/// as `POST /v1/tokens` does, instead of storing a quota of 1.
#[actix_web::test]
async fn offline_token_create_refuses_a_quota_of_zero_as_the_route_does() {
    let mut h = Harness::start_with(|o| o.env("VELOX_CACHE_API_TOKEN", API));
    let r = post_json(
        &h.server().admin_url("/v1/tokens"),
        &json!({"name": "ci", "scope": "build", "max_concurrent_builds": 0}),
        &[("authorization", &bearer(API))],
    )
    .await;
    r.assert_error(400, "invalid_request");
    h.take().terminate();
    let data_dir = h.data_dir_arg();
    for flag in ["--max-concurrent-builds", "--builds-per-hour"] {
        let (code, out, err) = offline(
            &[
                "token", "create", "--name", "ci", "--scope", "build", flag, "0",
            ],
            &data_dir,
        );
        assert_ne!(code, 0, "{out}");
        assert!(out.is_empty(), "no secret for a refused token: {out}");
        assert!(err.contains(flag) && err.contains("at least 1"), "{err}");
    }
    let (code, list, err) = offline(&["token", "list"], &data_dir);
    assert_eq!(code, 0, "{err}");
    assert!(!list.lines().any(|l| l.starts_with("ci ")), "{list}");
    // A quota of 1 is a quota of 1.
    let (code, _, err) = offline(
        &[
            "token",
            "create",
            "--name",
            "ci",
            "--scope",
            "build",
            "--builds-per-hour",
            "1",
        ],
        &data_dir,
    );
    assert_eq!(code, 0, "{err}");
    let (_, list, _) = offline(&["token", "list"], &data_dir);
    assert!(
        list.lines()
            .any(|l| l.starts_with("ci ") && l.contains("live")),
        "{list}"
    );
}
