//! Floating references through HTTP (docs/build-requests.md, "Floating references"): `latest`
//! and branches resolved with a stand-in Go module proxy before keying, the floating TTL when
//! they cannot be, and pinned requests left alone.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::goproxy::{GoProxy, Mode};
use support::process::{daemon, free_port};
use support::*;

const HTTP: &str = "github.com/roadrunner-server/http/v5";

fn floating_request(module: &str, tag: &str) -> Value {
    json!({
        "request_id": "b66d5617-64dd-419b-a68b-b002938320ab",
        "target_platform": {"os": "linux", "arch": "amd64"},
        "rr_version": "v2025.1.2",
        "plugins": [{"module_name": module, "tag": tag}]
    })
}

fn with_proxy(proxy: &GoProxy) -> impl FnOnce(Options) -> Options + '_ {
    move |o| o.env("VELOX_CACHE_RESOLVE__GOPROXY", &proxy.url)
}

/// The plugin tags Velox was asked to build, per call.
fn tags_sent(h: &Harness) -> Vec<String> {
    h.velox
        .requests()
        .iter()
        .map(|r| r["plugins"][0]["tag"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[actix_web::test]
async fn latest_and_the_version_it_names_are_one_build() {
    let proxy = GoProxy::start();
    proxy.set_latest(HTTP, "v5.2.7");
    let h = Harness::start_with(with_proxy(&proxy));

    let first = post_json(&h.builds_url(), &floating_request(HTTP, "latest"), &[]).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.header("x-cache-status"), Some("MISS"));
    assert_eq!(
        first.header("x-build-resolved"),
        Some(format!("{HTTP}@latest=v5.2.7").as_str())
    );
    assert_eq!(
        tags_sent(&h),
        vec!["v5.2.7"],
        "Velox gets the resolved version"
    );

    let pinned = post_json(&h.builds_url(), &floating_request(HTTP, "v5.2.7"), &[]).await;
    assert_eq!(pinned.header("x-cache-status"), Some("HIT"));
    assert_eq!(pinned.body, first.body);
    assert_eq!(
        pinned.header("x-velox-cache-key"),
        first.header("x-velox-cache-key")
    );
    assert_eq!(pinned.header("x-build-resolved"), None);

    // The resolution is remembered: a second `latest` asks the proxy nothing.
    let again = post_json(&h.builds_url(), &floating_request(HTTP, "latest"), &[]).await;
    assert_eq!(again.header("x-cache-status"), Some("HIT"));
    assert_eq!(proxy.asked_for(HTTP), 1, "{:?}", proxy.asked());
    assert_eq!(h.velox.builds(), 1);
    assert_eq!(
        metric(h.server(), "velox_resolve_total{outcome=\"resolved\"}").await,
        1.0
    );
    assert_eq!(
        metric(h.server(), "velox_resolve_total{outcome=\"cached\"}").await,
        1.0
    );
}

#[actix_web::test]
async fn a_moved_latest_is_a_miss_at_once() {
    let proxy = GoProxy::start();
    proxy.set_latest(HTTP, "v5.2.7");
    // Resolutions remembered for no time: every request asks the proxy.
    let h = Harness::start_with(|o| with_proxy(&proxy)(o).env("VELOX_CACHE_RESOLVE__TTL", "1ms"));

    let old = post_json(&h.builds_url(), &floating_request(HTTP, "latest"), &[]).await;
    assert_eq!(old.header("x-cache-status"), Some("MISS"));
    proxy.set_latest(HTTP, "v5.2.8");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let new = post_json(&h.builds_url(), &floating_request(HTTP, "latest"), &[]).await;
    assert_eq!(new.status, 200);
    assert_eq!(new.header("x-cache-status"), Some("MISS"));
    assert_eq!(
        new.header("x-build-resolved"),
        Some(format!("{HTTP}@latest=v5.2.8").as_str())
    );
    assert_ne!(new.body, old.body, "the new version's binary");
    assert_eq!(tags_sent(&h), vec!["v5.2.7", "v5.2.8"]);
}

#[actix_web::test]
async fn branches_resolve_through_info_and_capitals_are_escaped() {
    let proxy = GoProxy::start();
    let module = "github.com/BurntSushi/Toml-Plugin";
    let pseudo = "v0.0.0-20250130120000-0123456789ab";
    proxy.set_query(module, "master", pseudo);
    let h = Harness::start_with(with_proxy(&proxy));

    let resp = post_json(&h.builds_url(), &floating_request(module, "master"), &[]).await;
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    assert_eq!(
        resp.header("x-build-resolved"),
        Some(format!("{module}@master={pseudo}").as_str())
    );
    assert_eq!(
        proxy.asked(),
        vec!["github.com/!burnt!sushi/!toml-!plugin/@v/master.info".to_owned()]
    );
    assert_eq!(tags_sent(&h), vec![pseudo]);
}

#[actix_web::test]
async fn private_modules_are_never_sent_to_the_proxy() {
    let proxy = GoProxy::start();
    proxy.set_latest("github.com/acme/secret", "v1.0.0");
    let h = Harness::start_with(|o| {
        with_proxy(&proxy)(o).env("VELOX_CACHE_RESOLVE__PRIVATE", "github.com/acme/*")
    });
    let resp = post_json(
        &h.builds_url(),
        &floating_request("github.com/acme/secret", "latest"),
        &[],
    )
    .await;
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    assert_eq!(resp.header("x-build-resolved"), None);
    assert!(proxy.asked().is_empty(), "{:?}", proxy.asked());
    assert_eq!(tags_sent(&h), vec!["latest"], "Velox resolves it itself");
    assert_eq!(
        metric(h.server(), "velox_resolve_total{outcome=\"private\"}").await,
        1.0
    );
    // Unresolved, it is still a floating entry: a hit inside the TTL.
    let hit = post_json(
        &h.builds_url(),
        &floating_request("github.com/acme/secret", "latest"),
        &[],
    )
    .await;
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
}

/// A proxy that is down, failing or hanging never fails the build.
#[actix_web::test]
async fn a_failing_proxy_falls_back_to_the_ttl() {
    for mode in [Mode::Fail, Mode::Hang] {
        let proxy = GoProxy::start();
        proxy.set_latest(HTTP, "v5.2.7");
        proxy.set_mode(mode);
        let h = Harness::start_with(|o| {
            with_proxy(&proxy)(o).env("VELOX_CACHE_RESOLVE__TIMEOUT", "300ms")
        });
        let started = std::time::Instant::now();
        let resp = post_json(&h.builds_url(), &floating_request(HTTP, "latest"), &[]).await;
        assert_eq!(resp.status, 200, "{mode:?}: {:?}", resp.body);
        assert_eq!(resp.header("x-build-resolved"), None);
        assert_eq!(tags_sent(&h), vec!["latest"], "{mode:?}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{mode:?}: the proxy's timeout bounds the wait"
        );
        assert_eq!(
            metric(h.server(), "velox_resolve_total{outcome=\"error\"}").await,
            1.0,
            "{mode:?}"
        );
    }
    // A proxy that is not there at all.
    let gone = {
        let p = GoProxy::start();
        p.url.clone()
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_RESOLVE__GOPROXY", &gone));
    let resp = post_json(&h.builds_url(), &floating_request(HTTP, "latest"), &[]).await;
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    assert_eq!(tags_sent(&h), vec!["latest"]);
}

#[actix_web::test]
async fn without_a_proxy_floating_entries_expire_after_the_ttl() {
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_CACHE__FLOATING_TTL", "1500ms"));
    let req = floating_request(HTTP, "latest");
    let first = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(first.header("x-cache-status"), Some("MISS"));
    let inside = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(inside.header("x-cache-status"), Some("HIT"));
    assert_eq!(h.velox.builds(), 1);
    let key = first.header("x-velox-cache-key").expect("key");
    let entry = get(&h.server().admin_url(&format!("/v1/cache/{key}")), &[]).await;
    assert_eq!(
        entry.json()["floating"],
        json!(true),
        "marked in the admin API"
    );

    tokio::time::sleep(Duration::from_millis(1600)).await;
    let past = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(past.status, 200);
    assert_eq!(past.header("x-cache-status"), Some("MISS"));
    assert_eq!(h.velox.builds(), 2);
    let sent = h.velox.requests();
    assert_eq!(sent[0]["force_rebuild"], json!(false));
    assert_eq!(
        sent[1]["force_rebuild"],
        json!(true),
        "Velox's own cache may hold the old resolution"
    );
    // The entry was replaced: the next request inside the TTL is a hit on the new bytes.
    let after = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(after.header("x-cache-status"), Some("HIT"));
    assert_eq!(after.body, past.body);
}

#[actix_web::test]
async fn floating_ttl_zero_never_serves_floating_builds_from_the_cache() {
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_CACHE__FLOATING_TTL", "0s"));
    let req = floating_request(HTTP, "master");
    for _ in 0..2 {
        let resp = post_json(&h.builds_url(), &req, &[]).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-cache-status"), Some("MISS"));
    }
    assert_eq!(h.velox.builds(), 2);

    // rr_version = "master" floats too.
    let mut rr = floating_request(HTTP, "v5.2.7");
    rr["rr_version"] = json!("master");
    post_json(&h.builds_url(), &rr, &[]).await;
    let again = post_json(&h.builds_url(), &rr, &[]).await;
    assert_eq!(again.header("x-cache-status"), Some("MISS"));
}

#[actix_web::test]
async fn pinned_requests_never_ask_the_proxy_nor_expire() {
    let proxy = GoProxy::start();
    proxy.set_latest(HTTP, "v5.2.9");
    let h =
        Harness::start_with(|o| with_proxy(&proxy)(o).env("VELOX_CACHE_CACHE__FLOATING_TTL", "0s"));
    let req = build_request("linux", "amd64");
    let miss = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(miss.header("x-cache-status"), Some("MISS"));
    let hit = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    assert!(proxy.asked().is_empty(), "{:?}", proxy.asked());
    let key = hit.header("x-velox-cache-key").expect("key");
    let entry = get(&h.server().admin_url(&format!("/v1/cache/{key}")), &[]).await;
    assert_eq!(entry.json()["floating"], json!(false));
    assert_eq!(h.velox.builds(), 1);
}

#[actix_web::test]
async fn concurrent_floating_requests_resolve_and_build_once() {
    let proxy = GoProxy::start();
    proxy.set_latest(HTTP, "v5.2.7");
    let h = Harness::start_with(with_proxy(&proxy));
    h.velox.set_delay(Duration::from_millis(300));
    let url = h.builds_url();
    let req = floating_request(HTTP, "latest");
    let all = futures_util::future::join_all((0..10).map(|_| post_json(&url, &req, &[]))).await;
    let first = &all[0].body;
    for r in &all {
        assert_eq!(r.status, 200);
        assert_eq!(&r.body, first);
    }
    assert_eq!(h.velox.builds(), 1);
    assert_eq!(proxy.asked_for(HTTP), 1, "{:?}", proxy.asked());
}

/// The GOPROXY protocol is designed so that a plain directory of files served by any web server
/// is a proxy. Python's `http.server` (HTTP/1.0, nothing of ours) serving such a directory.
#[actix_web::test]
async fn a_directory_served_by_a_plain_web_server_is_a_proxy() {
    let root = tempfile::tempdir().expect("tempdir");
    let module_dir = root.path().join("github.com/!burnt!sushi/toml");
    std::fs::create_dir_all(module_dir.join("@v")).expect("dirs");
    let info = r#"{"Version":"v1.4.0","Time":"2024-06-01T00:00:00Z"}"#;
    std::fs::write(module_dir.join("@latest"), info).expect("latest");
    std::fs::write(module_dir.join("@v/v1.4.0.info"), info).expect("info");
    std::fs::write(module_dir.join("@v/list"), "v1.4.0\n").expect("list");
    let port = free_port();
    let mut cmd = std::process::Command::new("python3");
    cmd.args([
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        &port.to_string(),
        "-d",
    ])
    .arg(root.path());
    let log = tempfile::tempdir().expect("log dir");
    let _server = daemon("python3 -m http.server", cmd, &log.path().join("log"), port);
    let url = format!("http://127.0.0.1:{port}");
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_RESOLVE__GOPROXY", &url));
    let module = "github.com/BurntSushi/toml";
    let resp = post_json(&h.builds_url(), &floating_request(module, "latest"), &[]).await;
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    assert_eq!(
        resp.header("x-build-resolved"),
        Some(format!("{module}@latest=v1.4.0").as_str())
    );
    assert_eq!(tags_sent(&h), vec!["v1.4.0"]);
}

/// `n` floating plugins of distinct modules, each asking for `latest`.
fn many_floating(n: usize) -> (Vec<String>, Value) {
    let modules: Vec<String> = (0..n)
        .map(|i| format!("github.com/roadrunner-server/plugin{i:03}/v5"))
        .collect();
    let plugins: Vec<Value> = modules
        .iter()
        .map(|m| json!({"module_name": m, "tag": "latest"}))
        .collect();
    let mut req = floating_request(HTTP, "latest");
    req["plugins"] = Value::Array(plugins);
    (modules, req)
}

/// 256 floating plugins against a proxy that takes 400 ms per answer: the lookups run at most
/// `resolve.concurrency` at once and stop at `resolve.deadline`, so the request costs about the
/// deadline (not 256 × the per-call timeout) and a bounded number of proxy calls. The bound on
/// calls needs no clock: each of the 4 lanes starts a call only after its last one took 400 ms,
/// so within 1 s a lane starts at most 3.
#[actix_web::test]
async fn many_floating_plugins_against_a_slow_proxy_are_bounded() {
    let proxy = GoProxy::start();
    let (modules, req) = many_floating(256);
    for (i, m) in modules.iter().enumerate() {
        proxy.set_latest(m, &format!("v5.{i}.0"));
    }
    proxy.set_mode(Mode::Slow(Duration::from_millis(400)));
    let h = Harness::start_with(|o| {
        with_proxy(&proxy)(o)
            .env("VELOX_CACHE_RESOLVE__CONCURRENCY", "4")
            .env("VELOX_CACHE_RESOLVE__DEADLINE", "1s")
    });
    let started = std::time::Instant::now();
    let resp = post_json(&h.builds_url(), &req, &[]).await;
    let took = started.elapsed();
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    let calls = proxy.asked().len();
    assert!((1..=12).contains(&calls), "{calls} proxy calls");
    assert!(
        proxy.max_concurrent() <= 4,
        "{} calls at once",
        proxy.max_concurrent()
    );
    assert!(
        took < Duration::from_secs(30),
        "sanity: {took:?}, far from 256 × 3 s"
    );

    // What was resolved is what Velox got; the rest stays as asked.
    let sent = &h.velox.requests()[0]["plugins"];
    let resolved: Vec<String> = resp
        .header("x-build-resolved")
        .map(|v| v.split(", ").map(str::to_owned).collect())
        .unwrap_or_default();
    assert!(resolved.len() <= 8, "{resolved:?}");
    let pinned: Vec<String> = sent
        .as_array()
        .expect("plugins")
        .iter()
        .filter(|p| p["tag"] != "latest")
        .map(|p| {
            format!(
                "{}@latest={}",
                p["module_name"].as_str().unwrap_or(""),
                p["tag"].as_str().unwrap_or("")
            )
        })
        .collect();
    let mut sorted = resolved.clone();
    sorted.sort();
    let mut pinned_sorted = pinned.clone();
    pinned_sorted.sort();
    assert_eq!(sorted, pinned_sorted);
    assert_eq!(
        metric(h.server(), "velox_resolve_total{outcome=\"error\"}").await,
        (256 - resolved.len()) as f64
    );
}

/// A module path that Go would refuse is a 400 naming the plugin, before any lookup or build.
#[actix_web::test]
async fn a_bad_module_path_is_refused_before_any_lookup() {
    let proxy = GoProxy::start();
    let h = Harness::start_with(with_proxy(&proxy));
    for bad in [
        "github.com/roadrunner-server/../http",
        "github.com//http",
        "github.com/road runner/http",
        "github.com/http%2F..",
        "/github.com/http",
        "localhost/http",
    ] {
        let mut req = floating_request(HTTP, "latest");
        req["plugins"]
            .as_array_mut()
            .expect("plugins")
            .push(json!({"module_name": bad, "tag": "latest"}));
        let resp = post_json(&h.builds_url(), &req, &[]).await;
        let v = resp.assert_error(400, "invalid_request");
        let message = v["message"].as_str().unwrap_or("");
        assert!(
            message.contains("`plugins[1].module_name`") && message.contains("Go module path"),
            "{bad}: {message}"
        );
        assert_eq!(
            v["request_id"],
            json!("b66d5617-64dd-419b-a68b-b002938320ab")
        );
    }
    assert!(proxy.asked().is_empty(), "{:?}", proxy.asked());
    assert_eq!(h.velox.calls(), 0);
}

/// A failed lookup is remembered for a while: the next request leaves the tag as asked without
/// asking the proxy again. Remembered no longer than `resolve.ttl`.
#[actix_web::test]
async fn failed_lookups_are_remembered_briefly() {
    let proxy = GoProxy::start();
    let (modules, req) = many_floating(3);
    for m in &modules {
        proxy.set_latest(m, "v5.0.0");
    }
    proxy.set_mode(Mode::Fail);
    let h = Harness::start_with(with_proxy(&proxy));
    let first = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.header("x-build-resolved"), None);
    assert_eq!(proxy.asked().len(), 3, "{:?}", proxy.asked());
    // The proxy is back, but the failures are still remembered.
    proxy.set_mode(Mode::Normal);
    let second = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-cache-status"), Some("HIT"));
    assert_eq!(second.header("x-build-resolved"), None);
    assert_eq!(proxy.asked().len(), 3, "asked again: {:?}", proxy.asked());
    assert_eq!(
        metric(h.server(), "velox_resolve_total{outcome=\"error\"}").await,
        6.0
    );

    // With `resolve.ttl` shorter than the failure memory, failures last no longer than it.
    let proxy = GoProxy::start();
    let (modules, req) = many_floating(3);
    for m in &modules {
        proxy.set_latest(m, "v5.0.0");
    }
    proxy.set_mode(Mode::Fail);
    let h = Harness::start_with(|o| with_proxy(&proxy)(o).env("VELOX_CACHE_RESOLVE__TTL", "1ms"));
    post_json(&h.builds_url(), &req, &[]).await;
    proxy.set_mode(Mode::Normal);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(again.status, 200);
    assert_eq!(proxy.asked().len(), 6, "{:?}", proxy.asked());
    let header = again.header("x-build-resolved").unwrap_or("");
    assert_eq!(header.split(", ").count(), 3, "{header}");
}

/// `X-Build-Resolved` stays under its cap and says how many it left out; the status JSON of the
/// key lists them all.
#[actix_web::test]
async fn the_resolved_header_is_capped_and_the_status_lists_all() {
    let proxy = GoProxy::start();
    let (modules, req) = many_floating(256);
    for (i, m) in modules.iter().enumerate() {
        proxy.set_latest(m, &format!("v5.{i}.0"));
    }
    // A deadline no loaded test machine reaches: every tag is resolved.
    let h =
        Harness::start_with(|o| with_proxy(&proxy)(o).env("VELOX_CACHE_RESOLVE__DEADLINE", "60s"));
    let resp = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    let header = resp.header("x-build-resolved").expect("resolved");
    assert!(header.len() <= 2048, "{} bytes", header.len());
    let parts: Vec<&str> = header.split(", ").collect();
    let (last, kept) = parts.split_last().expect("entries");
    assert!(!kept.is_empty());
    assert_eq!(*last, format!("+{} more", 256 - kept.len()));
    for (i, entry) in kept.iter().enumerate() {
        assert_eq!(*entry, format!("{}@latest=v5.{i}.0", modules[i]));
    }

    let key = resp.header("x-velox-cache-key").expect("key");
    let status = get(&h.url(&format!("/_velox/v1/builds/{key}")), &[]).await;
    assert_eq!(status.status, 200);
    let v = status.json();
    assert_eq!(v["status"], "ready");
    let listed = v["resolved"].as_array().expect("resolved");
    assert_eq!(listed.len(), 256);
    for (i, r) in listed.iter().enumerate() {
        assert_eq!(
            *r,
            json!({"module": modules[i], "asked": "latest", "version": format!("v5.{i}.0")})
        );
    }
    assert_eq!(proxy.asked().len(), 256);

    // A pinned request has nothing resolved: no header, no `resolved`.
    let pinned = post_json(&h.builds_url(), &build_request("linux", "amd64"), &[]).await;
    assert_eq!(pinned.header("x-build-resolved"), None);
    let key = pinned.header("x-velox-cache-key").expect("key");
    let status = get(&h.url(&format!("/_velox/v1/builds/{key}")), &[]).await;
    assert!(status.json().get("resolved").is_none(), "{:?}", status.body);
}

/// Admission comes before resolution: with the queue full, a floating request that would ask the
/// proxy is refused without asking it, while one resolved from memory is still a hit.
#[actix_web::test]
async fn a_full_queue_refuses_before_any_lookup() {
    let proxy = GoProxy::start();
    proxy.set_latest(HTTP, "v5.2.7");
    proxy.set_latest("github.com/roadrunner-server/grpc/v5", "v5.1.0");
    let h = Harness::start_with(|o| {
        with_proxy(&proxy)(o)
            .env("VELOX_CACHE_MAX_CONCURRENT_BUILDS", "1")
            .env("VELOX_CACHE_MAX_QUEUED_BUILDS", "0")
    });
    let warm = post_json(&h.builds_url(), &floating_request(HTTP, "latest"), &[]).await;
    assert_eq!(warm.header("x-cache-status"), Some("MISS"));
    assert_eq!(proxy.asked().len(), 1);
    // The warm-up build gives its place back just after answering.
    let stats = h.server().admin_url("/v1/cache/stats");
    assert!(
        eventually(Duration::from_secs(10), async || {
            get(&stats, &[]).await.json()["builds_in_flight"] == 0
        })
        .await
    );

    h.velox.hold(true);
    let url = h.builds_url();
    let busy = actix_web::rt::spawn(async move {
        post_json(&url, &build_request("linux", "arm64"), &[]).await
    });
    let server = h.server();
    assert!(
        eventually(Duration::from_secs(10), async || {
            metric(server, "velox_builds_active").await == 1.0
        })
        .await,
        "the blocking build was not admitted"
    );
    let refused = post_json(
        &h.builds_url(),
        &floating_request("github.com/roadrunner-server/grpc/v5", "latest"),
        &[],
    )
    .await;
    let v = refused.assert_error(503, "overloaded");
    assert_eq!(
        v["request_id"],
        json!("b66d5617-64dd-419b-a68b-b002938320ab")
    );
    assert!(refused.header("retry-after").is_some());
    assert_eq!(proxy.asked().len(), 1, "{:?}", proxy.asked());

    let hit = post_json(&h.builds_url(), &floating_request(HTTP, "latest"), &[]).await;
    assert_eq!(hit.status, 200, "{:?}", hit.body);
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));

    h.velox.hold(false);
    assert_eq!(busy.await.expect("busy").status, 200);
    // The refused request gave its place back: once the blocking build has left, the queue
    // takes the request.
    let url = h.builds_url();
    let mut later = None;
    let admitted = eventually(Duration::from_secs(10), async || {
        let resp = post_json(
            &url,
            &floating_request("github.com/roadrunner-server/grpc/v5", "latest"),
            &[],
        )
        .await;
        let ok = resp.status == 200;
        later = Some(resp);
        ok
    })
    .await;
    let later = later.expect("asked");
    assert!(admitted, "{:?}", later.body);
    assert_eq!(
        later.header("x-build-resolved"),
        Some("github.com/roadrunner-server/grpc/v5@latest=v5.1.0")
    );
}
