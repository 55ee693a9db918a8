//! The process's life: graceful stop and restart, SIGKILL right after a MISS, one process per
//! data dir, configuration precedence and refusal of bad values.

mod support;

use std::time::Duration;

use support::server::run;
use support::*;

#[actix_web::test]
async fn sigterm_then_restart_still_hits() {
    let mut h = Harness::start();
    let req = build_request("linux", "amd64");
    let miss = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(miss.status, 200);
    let status = h.take().terminate();
    assert!(status.success(), "graceful stop exited with {status}");
    h.restart();
    let hit = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    assert_eq!(hit.body, miss.body);
    assert_eq!(h.velox.calls(), 1);
}

/// sled's snapshot files (`meta/snap.<lsn>`): sled 0.34 writes one only while opening.
fn snapshots(data_dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("meta"))
        .expect("meta")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("snap.") && !n.ends_with(".generating"))
        .collect();
    names.sort();
    names
}

#[actix_web::test]
async fn a_graceful_stop_writes_the_index_snapshot_and_a_kill_does_not() {
    let mut h = Harness::start();
    let data_dir = h.server().data_dir.clone();
    let first = build_request("linux", "amd64");
    assert_eq!(post_json(&h.builds_url(), &first, &[]).await.status, 200);
    let before = snapshots(&data_dir);
    let status = h.take().terminate();
    assert!(status.success(), "graceful stop exited with {status}");
    let after_stop = snapshots(&data_dir);
    assert_eq!(after_stop.len(), 1, "{after_stop:?}");
    assert_ne!(
        after_stop, before,
        "the stop wrote a snapshot covering this run's writes"
    );

    // Killed: no snapshot from the stop; the next start replays the log and loses nothing.
    h.restart();
    let second = distinct_request(99);
    assert_eq!(post_json(&h.builds_url(), &second, &[]).await.status, 200);
    let at_start = snapshots(&data_dir);
    h.take().kill();
    assert_eq!(snapshots(&data_dir), at_start);
    h.restart();
    for req in [&first, &second] {
        let hit = post_json(&h.builds_url(), req, &[]).await;
        assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    }
    assert_eq!(h.velox.calls(), 2);
}

/// Heavy writing passes `cache.index_snapshot_writes`: the running server snapshots its index
/// (a reopen, requests waiting behind it rather than failing), so that after a SIGKILL the next
/// start replays only what came after that snapshot, and everything written before and after
/// it is there.
#[actix_web::test]
async fn heavy_writing_snapshots_the_index_while_running_and_a_kill_loses_nothing() {
    let mut h = Harness::start_with(|o| {
        o.env("VELOX_CACHE_CACHE__INDEX_SNAPSHOT_WRITES", "40")
            // Every hit is an index write of its own.
            .env("VELOX_CACHE_CACHE__ACCESS_UPDATE_INTERVAL", "0")
    });
    let data_dir = h.server().data_dir.clone();
    let at_start = snapshots(&data_dir);
    let before: Vec<_> = (0..5).map(distinct_request).collect();
    for req in &before {
        let miss = post_json(&h.builds_url(), req, &[]).await;
        assert_eq!(miss.header("x-cache-status"), Some("MISS"));
    }
    // Hits until the snapshot is taken (checked once a second); each one answered meanwhile.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut hits = 0;
    while !h.server().log_text().contains("written while running") {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot after {hits} hits:\n{}",
            h.server().log_text()
        );
        for req in &before {
            let hit = post_json(&h.builds_url(), req, &[]).await;
            assert_eq!(hit.header("x-cache-status"), Some("HIT"), "hit {hits}");
            hits += 1;
        }
    }
    assert!(hits >= 35, "a snapshot after only {hits} hits");
    let running = snapshots(&data_dir);
    assert_eq!(running.len(), 1, "{running:?}");
    assert_ne!(running, at_start, "the snapshot was written while running");
    assert!(metric(h.server(), "velox_cache_index_snapshots_total").await >= 1.0);

    // Written after the snapshot: only this is replayed after the kill.
    let after: Vec<_> = (5..7).map(distinct_request).collect();
    for req in &after {
        let miss = post_json(&h.builds_url(), req, &[]).await;
        assert_eq!(miss.header("x-cache-status"), Some("MISS"));
    }
    let log = h.server().log_text();
    let at_kill = snapshots(&data_dir);
    h.take().kill();
    assert!(
        at_kill == running || log.matches("written while running").count() > 1,
        "the last snapshot at the kill is one taken while running: {at_kill:?}"
    );
    h.restart();
    for req in before.iter().chain(&after) {
        let hit = post_json(&h.builds_url(), req, &[]).await;
        assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    }
    assert_eq!(h.velox.calls(), 7);
}

#[actix_web::test]
async fn sigkill_right_after_a_miss_keeps_the_entry() {
    let mut h = Harness::start();
    for round in 0..3 {
        let req = distinct_request(round);
        let miss = post_json(&h.builds_url(), &req, &[]).await;
        assert_eq!(miss.header("x-cache-status"), Some("MISS"));
        // No pause: the entry must already be durable when the MISS is answered.
        h.take().kill();
        h.restart();
        let hit = post_json(&h.builds_url(), &req, &[]).await;
        assert_eq!(hit.header("x-cache-status"), Some("HIT"), "round {round}");
        assert_eq!(hit.body, miss.body);
        assert_eq!(
            sha256_hex(&hit.body),
            hit.header("etag").expect("etag").trim_matches('"')
        );
    }
    assert_eq!(h.velox.calls(), 3);
}

#[actix_web::test]
async fn sigterm_lets_a_download_finish() {
    let mut h = Harness::start();
    h.velox.set_size(48 * 1024 * 1024);
    let req = build_request("linux", "amd64");
    let miss = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(miss.status, 200);
    let art = h.url(miss.header("content-location").expect("location"));
    // Start a download, read its head, then ask the server to stop while it is under way.
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish();
    let mut resp = client.get(&art).send().await.expect("response head");
    assert_eq!(resp.status(), 200);
    let server = h.take();
    let pid = server.pid();
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let body = resp
        .body()
        .limit(64 * 1024 * 1024)
        .await
        .expect("the download finished");
    assert_eq!(body, miss.body);
    let mut server = server;
    server.wait_success(Duration::from_secs(40));
}

/// A SIGTERM (or SIGHUP) that arrives the moment the listeners are up, before the server has
/// settled (a pod deleted while it starts, logrotate's SIGHUP at a bad time), is acted on once
/// the server runs: a graceful stop with status 0, never the signal's default action (death).
#[actix_web::test]
async fn a_signal_the_moment_the_listeners_are_up_is_handled_not_fatal() {
    let mut h = Harness::start();
    let mut opts = h.opts.clone();
    let _ = h.take().terminate();
    for round in 0..4 {
        let mut server = Server::start(&opts);
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(server.pid(), libc::SIGTERM);
        }
        server.wait_success(Duration::from_secs(40));
        assert!(server.log_text().contains("stopped"), "round {round}");
    }
    opts.data_dir = h.tmp.path().join("data-hup");
    let mut server = Server::start(&opts);
    // SAFETY: as above.
    unsafe {
        libc::kill(server.pid(), libc::SIGHUP);
    }
    assert_eq!(get(&server.admin_url("/healthz"), &[]).await.status, 200);
    // SAFETY: as above.
    unsafe {
        libc::kill(server.pid(), libc::SIGTERM);
    }
    // Dead of the SIGHUP, it would have ended with "signal: 1".
    server.wait_success(Duration::from_secs(40));
}

#[actix_web::test]
async fn one_data_dir_one_process() {
    let h = Harness::start();
    let second = Server::try_start(&h.opts);
    let log = match second {
        Ok(_) => panic!("a second server started on the same data dir"),
        Err(log) => log,
    };
    let dir = h.opts.data_dir.display().to_string();
    assert!(log.contains(&dir) && log.contains("in use"), "{log}");
    // Another data dir is fine, side by side.
    let mut other = h.opts.clone();
    other.data_dir = h.tmp.path().join("data2");
    let s2 = Server::start(&other);
    assert_eq!(get(&s2.admin_url("/healthz"), &[]).await.status, 200);
}

#[actix_web::test]
async fn admin_health_readiness_metrics() {
    let h = Harness::start();
    let s = h.server();
    let r = get(&s.admin_url("/healthz"), &[]).await;
    assert_eq!(r.status, 200);
    let r = get(&s.admin_url("/readyz"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["ready"], true);
    assert_eq!(r.json()["index"], "ok");
    assert_eq!(r.json()["velox_last_call"], "not_called_yet");
    post_json(&h.builds_url(), &build_request("linux", "amd64"), &[]).await;
    post_json(&h.builds_url(), &build_request("linux", "amd64"), &[]).await;
    assert_eq!(
        get(&s.admin_url("/readyz"), &[]).await.json()["velox_last_call"],
        "answered"
    );
    assert_eq!(metric(s, "velox_cache_hits_total").await, 1.0);
    assert_eq!(metric(s, "velox_cache_misses_total").await, 1.0);
    assert_eq!(metric(s, "velox_cache_entries_count").await, 1.0);
    assert_eq!(metric(s, "velox_cache_size_bytes").await, 300.0 * 1024.0);
    assert_eq!(
        metric(s, "velox_builds_total{status=\"success\"}").await,
        1.0
    );
    assert_eq!(metric(s, "velox_build_duration_seconds_count").await, 1.0);
    assert!(metric(s, "velox_cache_lookup_duration_seconds_count").await >= 2.0);
    assert!(metric(s, "velox_download_bytes_total").await >= 2.0 * 300.0 * 1024.0);
    // The admin routes are not on the public listener.
    get(&h.url("/metrics"), &[])
        .await
        .assert_error(404, "not_found");

    // A data dir that stops taking files makes the server not ready.
    let tmp = s.data_dir.join("tmp");
    // The compressor may be writing a variant's temporary file in it: try again until it is gone.
    assert!(
        eventually(Duration::from_secs(10), async || std::fs::remove_dir_all(
            &tmp
        )
        .is_ok()
            || !tmp.exists())
        .await,
        "cannot remove {}",
        tmp.display()
    );
    let r = get(&s.admin_url("/readyz"), &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["ready"], false);
    // The index still takes writes: nothing to reopen, and the process stays live.
    assert_eq!(r.json()["index"], "ok");
    assert_eq!(get(&s.admin_url("/healthz"), &[]).await.status, 200);
    assert!(!r.json()["storage"]
        .as_str()
        .unwrap_or("")
        .contains(&*s.data_dir.to_string_lossy()));
    std::fs::create_dir(&tmp).expect("restore tmp");
    assert_eq!(get(&s.admin_url("/readyz"), &[]).await.status, 200);
}

#[test]
fn config_precedence_file_env_flag() {
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("velox-cache.toml");
    std::fs::write(
        &file,
        r#"
listen = "127.0.0.1:1111"
server_url = "http://file:9000"
max_queued_builds = 7
api_token = "from-file"
[cache]
max_size_gb = 1.5
eviction_policy = "lfu"
[retry]
max_attempts = 5
"#,
    )
    .expect("write");
    let f = file.to_str().expect("utf-8");
    // File only.
    let (code, out, err) = run(&["config", "--config", f], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listen = \"127.0.0.1:1111\""), "{out}");
    assert!(out.contains("server_url = \"http://file:9000\""), "{out}");
    assert!(out.contains("max_queued_builds = 7"), "{out}");
    assert!(out.contains("max_size_gb = 1.5"), "{out}");
    assert!(out.contains("eviction_policy = \"lfu\""), "{out}");
    assert!(out.contains("max_attempts = 5"), "{out}");
    assert!(
        out.contains("build_timeout = \"5m\""),
        "default kept: {out}"
    );
    assert!(!out.contains("from-file"), "token not masked: {out}");
    assert!(out.contains("api_token = \"********\""), "{out}");
    // Env beats file; the file named by the environment works too.
    let env = [
        ("VELOX_CACHE_CONFIG", f),
        ("VELOX_CACHE_LISTEN", "127.0.0.1:2222"),
        ("VELOX_CACHE_SERVER_URL", "http://env:9000"),
        ("VELOX_CACHE_CACHE__MAX_SIZE_GB", "3"),
        ("VELOX_CACHE_RETRY__MAX_ATTEMPTS", "2"),
        ("VELOX_CACHE_API_TOKEN", "12345"),
    ];
    let (code, out, err) = run(&["config"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listen = \"127.0.0.1:2222\""), "{out}");
    assert!(out.contains("server_url = \"http://env:9000\""), "{out}");
    assert!(out.contains("max_size_gb = 3.0"), "{out}");
    assert!(out.contains("max_attempts = 2"), "{out}");
    assert!(out.contains("max_queued_builds = 7"), "{out}");
    assert!(!out.contains("12345"), "{out}");
    // Flag beats env.
    let (code, out, err) = run(
        &[
            "config",
            "--listen",
            "127.0.0.1:3333",
            "--server-url",
            "http://flag:9000",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listen = \"127.0.0.1:3333\""), "{out}");
    assert!(out.contains("server_url = \"http://flag:9000\""), "{out}");
}

/// A case: its name, environment, extra arguments, and the key the error must name.
type Case = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<&'static str>,
    &'static str,
);

#[test]
fn invalid_values_exit_2_naming_the_key() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cases: Vec<Case> = vec![
        (
            "policy",
            vec![("VELOX_CACHE_CACHE__EVICTION_POLICY", "random")],
            vec![],
            "cache.eviction_policy",
        ),
        (
            "build_timeout",
            vec![("VELOX_CACHE_BUILD_TIMEOUT", "500ms")],
            vec![],
            "build_timeout",
        ),
        (
            "request_timeout",
            vec![("VELOX_CACHE_REQUEST_TIMEOUT", "forever")],
            vec![],
            "request_timeout",
        ),
        (
            "attempts",
            vec![("VELOX_CACHE_RETRY__MAX_ATTEMPTS", "0")],
            vec![],
            "retry.max_attempts",
        ),
        (
            "max_delay",
            vec![("VELOX_CACHE_RETRY__MAX_DELAY", "10ms")],
            vec![],
            "retry.max_delay",
        ),
        (
            "multiplier",
            vec![("VELOX_CACHE_RETRY__BACKOFF_MULTIPLIER", "0.5")],
            vec![],
            "retry.backoff_multiplier",
        ),
        (
            "size",
            vec![("VELOX_CACHE_CACHE__MAX_SIZE_GB", "-1")],
            vec![],
            "cache.max_size_gb",
        ),
        (
            "entries",
            vec![("VELOX_CACHE_CACHE__MAX_ENTRIES", "many")],
            vec![],
            "cache.max_entries",
        ),
        (
            "concurrency",
            vec![("VELOX_CACHE_MAX_CONCURRENT_BUILDS", "0")],
            vec![],
            "max_concurrent_builds",
        ),
        (
            "listen flag",
            vec![],
            vec!["--listen", "not-an-address"],
            "listen",
        ),
        (
            "server_url",
            vec![("VELOX_CACHE_SERVER_URL", "velox:9000")],
            vec![],
            "server_url",
        ),
        (
            "upstream",
            vec![],
            vec!["--upstream", "ftp://x"],
            "upstream",
        ),
        ("path_map", vec![], vec!["--path-map", "tmp=/x"], "path_map"),
        (
            "artifact_root that does not exist",
            vec![("VELOX_CACHE_ARTIFACT_ROOT", "/nonexistent/velox-out")],
            vec![],
            "artifact_root",
        ),
        (
            "min_free_gb",
            vec![("VELOX_CACHE_CACHE__MIN_FREE_GB", "-0.5")],
            vec![],
            "cache.min_free_gb",
        ),
        (
            "bare duration",
            vec![("VELOX_CACHE_FAILURE_TTL", "60")],
            vec![],
            "failure_ttl",
        ),
        (
            "zero build_timeout",
            vec![("VELOX_CACHE_BUILD_TIMEOUT", "0")],
            vec![],
            "build_timeout",
        ),
    ];
    for (name, env, args, key) in cases {
        let mut all = vec!["serve", "--data-dir"];
        let dd = tmp.path().join("never").display().to_string();
        all.push(&dd);
        all.extend(args);
        let (code, _out, err) = run(&all, &env);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(err.contains(&format!("`{key}`")), "{name}: {err}");
    }
    // Unknown keys in the file, at the top and nested.
    for (text, key) in [
        ("lisen = \"x\"\n", "lisen"),
        ("[cache]\nmax_sise_gb = 1\n", "cache.max_sise_gb"),
    ] {
        let file = tmp.path().join("bad.toml");
        std::fs::write(&file, text).expect("write");
        let (code, _out, err) = run(&["config", "--config", file.to_str().expect("utf-8")], &[]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(&format!("`{key}`")), "{err}");
    }
    let (code, _out, err) = run(
        &["config", "--config", "/nonexistent/velox-cache.toml"],
        &[],
    );
    assert_eq!(code, 2, "{err}");
}

#[test]
fn checks_beyond_the_values_name_the_key_and_its_source() {
    // `resolve.private` is compiled as the resolver will compile it, before anything starts.
    let (code, out, err) = run(&["config"], &[("VELOX_CACHE_RESOLVE__PRIVATE", "[")]);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("`resolve.private`"), "{err}");
    assert!(err.contains("VELOX_CACHE_RESOLVE__PRIVATE"), "{err}");
    let (code, out, err) = run(
        &["config"],
        &[("VELOX_CACHE_RESOLVE__PRIVATE", "github.com/acme/*")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#"private = "github.com/acme/*""#), "{out}");
}
