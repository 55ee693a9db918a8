//! Asynchronous builds (docs/http-api.md, "Asynchronous builds") through real HTTP: `Prefer:
//! respond-async` answered 202, the status route as JSON and as Server-Sent Events, failures,
//! a hundred watchers of one build and the memory they cost, watchers leaving, the proxy flow
//! with CORS (and in a real headless browser), and `warm` following its builds.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::php::PhpApp;
use support::sse::EventStream;
use support::*;

const ASYNC: (&str, &str) = ("prefer", "respond-async");

async fn status(h: &Harness, key: &str) -> Resp {
    get(&h.url(&format!("/_velox/v1/builds/{key}")), &[]).await
}

/// Polls the status route until it says `want`; panics after 30 s.
async fn wait_status(h: &Harness, key: &str, want: &str) -> Value {
    let mut last = Value::Null;
    let reached = eventually(Duration::from_secs(30), async || {
        let r = status(h, key).await;
        last = if r.status == 200 {
            r.json()
        } else {
            json!({"http": r.status})
        };
        last["status"] == want
    })
    .await;
    assert!(reached, "status never became {want}: {last}");
    last
}

/// Reads the resident memory of a process, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[actix_web::test]
async fn accepted_then_ready_then_the_artifacts_bytes() {
    let h = Harness::start();
    h.velox.hold(true);
    let request = build_request("linux", "amd64");
    // Several preferences, odd case, parameters: parsed per RFC 7240, not matched as a string.
    let prefer = (
        "prefer",
        "wait=100, Respond-Async; foo=\"a,b\", handling=lenient",
    );
    let r = post_json(&h.builds_url(), &request, &[prefer]).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let key = r.header("x-velox-cache-key").expect("key").to_owned();
    assert_eq!(
        r.header("location"),
        Some(format!("/_velox/v1/builds/{key}").as_str())
    );
    assert_eq!(r.header("preference-applied"), Some("respond-async"));
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("x-build-request-id"),
        Some("b66d5617-64dd-419b-a68b-b002938320ab")
    );
    let body = r.json();
    assert_eq!(body["key"], key.as_str());
    assert!(
        body["status"] == "queued" || body["status"] == "building",
        "{body}"
    );
    assert_eq!(body["request_id"], "b66d5617-64dd-419b-a68b-b002938320ab");
    assert!(body["elapsed_ms"].is_u64(), "{body}");
    for absent in ["artifact_url", "size", "digest", "error", "message"] {
        assert!(body.get(absent).is_none(), "{absent} in {body}");
    }

    // Under way: building, with the time so far and one Velox attempt.
    let building = wait_status(&h, &key, "building").await;
    assert_eq!(building["velox_attempts"], 1, "{building}");
    assert!(building["elapsed_ms"].is_u64(), "{building}");
    let s = status(&h, &key).await;
    assert_eq!(s.header("cache-control"), Some("no-store"));
    assert_eq!(s.header("content-type"), Some("application/json"));

    // A second asynchronous request joins the same build: 202 again, still one build.
    let again = post_json(&h.builds_url(), &request, &[ASYNC]).await;
    assert_eq!(again.status, 202);
    h.velox.hold(false);

    let ready = wait_status(&h, &key, "ready").await;
    let digest = ready["digest"].as_str().expect("digest").to_owned();
    assert_eq!(ready["size"], 300 * 1024);
    assert_eq!(
        ready["artifact_url"],
        format!("/_velox/v1/artifacts/{digest}").as_str()
    );
    assert!(ready.get("error").is_none(), "{ready}");
    let artifact = get(&h.url(ready["artifact_url"].as_str().expect("url")), &[]).await;
    assert_eq!(artifact.status, 200);
    assert_eq!(artifact.body.len(), 300 * 1024);
    assert_eq!(sha256_hex(&artifact.body), digest);
    assert_eq!(h.velox.builds(), 1);

    // Cached now: the same request with the same preference gets the binary at once.
    let hit = post_json(&h.builds_url(), &request, &[ASYNC]).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    assert_eq!(hit.header("preference-applied"), None);
    assert_eq!(sha256_hex(&hit.body), digest);
    assert_eq!(h.velox.builds(), 1);
}

#[actix_web::test]
async fn a_cached_key_is_answered_200_directly() {
    let h = Harness::start();
    let request = build_request("darwin", "arm64");
    let first = post_json(&h.builds_url(), &request, &[]).await;
    assert_eq!(first.status, 200);
    // A range applies as to any binary answer.
    let r = post_json(&h.builds_url(), &request, &[ASYNC, ("range", "bytes=0-9")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, first.body[..10]);
    assert_eq!(r.header("x-cache-status"), Some("HIT"));
    assert_eq!(r.header("location"), None);
    assert_eq!(h.velox.calls(), 1);
}

#[actix_web::test]
async fn unknown_or_malformed_keys_are_404_and_other_methods_405() {
    let h = Harness::start();
    let unknown = "0".repeat(64);
    status(&h, &unknown).await.assert_error(404, "not_found");
    status(&h, "not-a-key").await.assert_error(404, "not_found");
    status(&h, &"a".repeat(63))
        .await
        .assert_error(404, "not_found");
    get(
        &h.url(&format!("/_velox/v1/builds/{unknown}")),
        &[("accept", "text/event-stream")],
    )
    .await
    .assert_error(404, "not_found");
    let r = post_json(
        &h.url(&format!("/_velox/v1/builds/{unknown}")),
        &json!({}),
        &[],
    )
    .await;
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET"));
    // The status route needs no token even when the build API does.
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_API_TOKEN", "secret"));
    let r = post_json(
        &h.builds_url(),
        &build_request("linux", "amd64"),
        &[ASYNC, ("authorization", "Bearer secret")],
    )
    .await;
    assert_eq!(r.status, 202);
    let key = r.header("x-velox-cache-key").expect("key").to_owned();
    wait_status(&h, &key, "ready").await;
    // Without the token, asking for a build is still refused, async or not.
    post_json(&h.builds_url(), &distinct_request(7), &[ASYNC])
        .await
        .assert_error(401, "unauthorized");
}

/// One build in the only slot (held), so that the next one waits in the queue.
fn one_slot(o: Options) -> Options {
    o.env("VELOX_CACHE_MAX_CONCURRENT_BUILDS", "1")
        .env("VELOX_CACHE_RETRY__INITIAL_DELAY", "1s")
        .env("VELOX_CACHE_RETRY__MAX_DELAY", "1s")
}

#[actix_web::test]
async fn events_come_in_order_and_end_with_ready() {
    let h = Harness::start_with(one_slot);
    h.velox.hold(true);
    // Velox's calls in order: the first build's (held); the second build's first attempt, which
    // hangs a while and then fails retryably; its second attempt, which builds.
    h.velox.script([
        Behavior::Build,
        Behavior::Hang(Duration::from_millis(500)),
        Behavior::Build,
    ]);
    // The first build takes the slot and is held; the second waits behind it.
    let blocker = post_json(&h.builds_url(), &distinct_request(1), &[ASYNC]).await;
    assert_eq!(blocker.status, 202);
    // Holding the slot before the next is admitted (admission alone does not order slots).
    let blocker_key = blocker.header("x-velox-cache-key").expect("key");
    wait_status(&h, blocker_key, "building").await;
    let r = post_json(&h.builds_url(), &distinct_request(2), &[ASYNC]).await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["status"], "queued");
    let key = r.header("x-velox-cache-key").expect("key").to_owned();
    let mut events = EventStream::open(&h.url(&format!("/_velox/v1/builds/{key}")), &[]);
    assert_eq!(events.status, 200);
    assert_eq!(events.header("content-type"), Some("text/event-stream"));
    assert_eq!(events.header("cache-control"), Some("no-store"));
    let first = events.next_event().expect("first event");
    assert_eq!(first["status"], "queued", "{first}");
    assert_eq!(first["key"], key.as_str());
    h.velox.hold(false);
    let mut seen = vec![first];
    while let Some(e) = events.next_event() {
        seen.push(e);
    }
    let statuses: Vec<&str> = seen.iter().filter_map(|e| e["status"].as_str()).collect();
    let attempts: Vec<u64> = seen
        .iter()
        .filter(|e| e["status"] == "building")
        .filter_map(|e| e["velox_attempts"].as_u64())
        .collect();
    assert_eq!(
        statuses,
        ["queued", "building", "building", "ready"],
        "{seen:?}"
    );
    assert_eq!(attempts, [1, 2], "{seen:?}");
    let ready = seen.last().expect("last");
    assert!(
        ready["artifact_url"].is_string() && ready["digest"].is_string(),
        "{ready}"
    );
    assert_eq!(ready["size"], 300 * 1024);
    // A stream opened on a ready key sends that one event and ends.
    let mut done = EventStream::open(&h.url(&format!("/_velox/v1/builds/{key}")), &[]);
    assert_eq!(done.next_event().expect("event")["status"], "ready");
    assert!(done.next_event().is_none());
}

#[actix_web::test]
async fn a_failed_build_is_reported_by_the_status_and_its_event() {
    let h = Harness::start_with(one_slot);
    h.velox.hold(true);
    // The first build (held) succeeds; the second, waiting behind it, fails.
    h.velox
        .script([Behavior::Build, Behavior::Code("internal")]);
    let blocker = post_json(&h.builds_url(), &distinct_request(1), &[ASYNC]).await;
    assert_eq!(blocker.status, 202);
    // Holding the slot before the next is admitted (admission alone does not order slots).
    let blocker_key = blocker.header("x-velox-cache-key").expect("key");
    wait_status(&h, blocker_key, "building").await;
    let request = distinct_request(2);
    let r = post_json(&h.builds_url(), &request, &[ASYNC]).await;
    assert_eq!(r.status, 202);
    let key = r.header("x-velox-cache-key").expect("key").to_owned();
    let mut events = EventStream::open(&h.url(&format!("/_velox/v1/builds/{key}")), &[]);
    assert_eq!(events.next_event().expect("event")["status"], "queued");
    h.velox.hold(false);
    let mut last = Value::Null;
    while let Some(e) = events.next_event() {
        last = e;
    }
    assert_eq!(last["status"], "failed", "{last}");
    assert_eq!(last["error"], "build_failed");
    assert_eq!(last["message"], "scripted internal");
    assert_eq!(last["request_id"], "b66d5617-64dd-419b-a68b-b002938320ab");
    let polled = status(&h, &key).await;
    assert_eq!(polled.status, 200);
    let polled = polled.json();
    assert_eq!(polled["status"], "failed");
    assert_eq!(polled["error"], "build_failed");
    assert!(polled.get("artifact_url").is_none(), "{polled}");
    // Remembered: the same request is refused at once, with or without the preference.
    let calls = h.velox.calls();
    post_json(&h.builds_url(), &request, &[ASYNC])
        .await
        .assert_error(502, "build_failed");
    assert_eq!(h.velox.calls(), calls);

    // A failure not remembered for builds (Velox unavailable) is still reported to pollers, and
    // the next request builds again.
    let request = distinct_request(3);
    h.velox.script([
        Behavior::Status(503),
        Behavior::Status(503),
        Behavior::Status(503),
    ]);
    let r = post_json(&h.builds_url(), &request, &[ASYNC]).await;
    assert_eq!(r.status, 202);
    let key = r.header("x-velox-cache-key").expect("key").to_owned();
    let failed = wait_status(&h, &key, "failed").await;
    assert_eq!(failed["error"], "velox_unavailable", "{failed}");
    let r = post_json(&h.builds_url(), &request, &[ASYNC]).await;
    assert_eq!(r.status, 202);
    wait_status(&h, &key, "ready").await;
}

#[actix_web::test]
async fn a_hundred_watchers_of_one_build_cost_little_memory() {
    const WATCHERS: usize = 100;
    let h = Harness::start();
    h.velox.hold(true);
    let r = post_json(&h.builds_url(), &build_request("linux", "amd64"), &[ASYNC]).await;
    assert_eq!(r.status, 202);
    let key = r.header("x-velox-cache-key").expect("key").to_owned();
    wait_status(&h, &key, "building").await;
    let url = h.url(&format!("/_velox/v1/builds/{key}"));
    // One watcher first, so that the code paths and buffers of a stream exist before measuring.
    let mut warm = EventStream::open(&url, &[]);
    assert_eq!(warm.next_event().expect("event")["status"], "building");
    let pid = h.server().pid();
    let before = rss_kib(pid);
    let mut watchers: Vec<EventStream> = (0..WATCHERS)
        .map(|_| EventStream::open(&url, &[]))
        .collect();
    for w in &mut watchers {
        assert_eq!(w.status, 200);
        assert_eq!(w.next_event().expect("event")["status"], "building");
    }
    let after = rss_kib(pid);
    let per_watcher = after.saturating_sub(before) as f64 / WATCHERS as f64;
    println!(
        "RSS with {WATCHERS} SSE watchers: {before} KiB before, {after} KiB after: {per_watcher:.1} KiB per watcher"
    );
    // A watcher is two channel receivers and a connection's buffers, not a task polling.
    assert!(per_watcher < 128.0, "{per_watcher:.1} KiB per watcher");
    h.velox.hold(false);
    for w in watchers.iter_mut().chain(std::iter::once(&mut warm)) {
        assert_eq!(w.next_event().expect("ready event")["status"], "ready");
        assert!(w.next_event().is_none());
    }
    assert_eq!(h.velox.builds(), 1);
}

#[actix_web::test]
async fn a_watcher_leaving_leaves_the_build_running() {
    let h = Harness::start();
    h.velox.hold(true);
    let request = build_request("linux", "arm64");
    let r = post_json(&h.builds_url(), &request, &[ASYNC]).await;
    assert_eq!(r.status, 202);
    let key = r.header("x-velox-cache-key").expect("key").to_owned();
    wait_status(&h, &key, "building").await;
    let url = h.url(&format!("/_velox/v1/builds/{key}"));
    let mut events = EventStream::open(&url, &[]);
    assert_eq!(events.next_event().expect("event")["status"], "building");
    // Every client is gone: the one that asked (answered 202) and the only watcher.
    drop(events);
    h.velox.hold(false);
    let ready = wait_status(&h, &key, "ready").await;
    let hit = post_json(&h.builds_url(), &request, &[]).await;
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    assert_eq!(
        sha256_hex(&hit.body),
        ready["digest"].as_str().expect("digest")
    );
    assert_eq!(h.velox.builds(), 1);
}

#[actix_web::test]
async fn a_quiet_stream_gets_keep_alive_comments() {
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_SSE_KEEPALIVE", "200ms"));
    h.velox.hold(true);
    let r = post_json(&h.builds_url(), &build_request("linux", "amd64"), &[ASYNC]).await;
    let key = r.header("x-velox-cache-key").expect("key").to_owned();
    // Building and held: nothing changes until the release.
    wait_status(&h, &key, "building").await;
    let mut events = EventStream::open(&h.url(&format!("/_velox/v1/builds/{key}")), &[]);
    events.set_timeout(Duration::from_secs(5));
    assert!(events.next_event().is_some());
    events.next_comment();
    events.next_comment();
    h.velox.hold(false);
    events.set_timeout(Duration::from_secs(30));
    assert_eq!(events.next_event().expect("ready")["status"], "ready");
    assert!(events.comments >= 2);
}

/// The PHP app, and a server proxying to it.
fn proxied(f: impl FnOnce(Options) -> Options) -> (PhpApp, Harness) {
    let php = PhpApp::start();
    let upstream = php.url.clone();
    let h = Harness::start_with(|o| f(o.env("VELOX_CACHE_UPSTREAM", &upstream)));
    (php, h)
}

fn generate() -> Value {
    json!({
        "target_os": "linux",
        "target_arch": "amd64",
        "plugins": [{"module_name": "github.com/roadrunner-server/http/v5", "tag": "v5.2.7"}]
    })
}

fn acao(r: &Resp) -> Option<&str> {
    r.header("access-control-allow-origin")
}

#[actix_web::test]
async fn the_proxy_flow_with_prefer_from_the_client_is_cors_readable() {
    let (php, h) = proxied(|o| o);
    h.velox.hold(true);
    let origin = php.url.clone();
    let generate_url = h.url("/async/generate");
    let r = post_json(&generate_url, &generate(), &[ASYNC, ("origin", &origin)]).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let key = r.header("x-velox-cache-key").expect("key").to_owned();
    let location = format!("/_velox/v1/builds/{key}");
    assert_eq!(r.header("location"), Some(location.as_str()));
    assert_eq!(r.header("preference-applied"), Some("respond-async"));
    // The app's CORS grant, and its other headers, are on the 202.
    assert_eq!(acao(&r), Some(origin.as_str()));
    assert_eq!(r.header("x-app"), Some("velox-app"));
    assert_eq!(r.header("x-velox-build"), None);
    let exposed: Vec<String> = r
        .header("access-control-expose-headers")
        .expect("expose headers")
        .split(',')
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    for name in [
        "location",
        "retry-after",
        "preference-applied",
        "x-velox-cache-key",
    ] {
        assert!(
            exposed.iter().any(|t| t == name),
            "{name} not in {exposed:?}"
        );
    }
    let request_id = r.json()["request_id"]
        .as_str()
        .expect("the app's id")
        .to_owned();

    // The status, for the origin the app allowed; not for another one.
    let s = get(&h.url(&location), &[("origin", &origin)]).await;
    assert_eq!(s.status, 200);
    assert_eq!(acao(&s), Some(origin.as_str()));
    assert_eq!(s.json()["request_id"], request_id.as_str());
    let evil = get(&h.url(&location), &[("origin", "http://evil.example")]).await;
    assert_eq!(evil.status, 200);
    assert_eq!(acao(&evil), None);
    // The events too.
    let mut events = EventStream::open(&h.url(&location), &[("Origin", &origin)]);
    assert_eq!(
        events.header("access-control-allow-origin"),
        Some(origin.as_str())
    );
    assert_eq!(events.next_event().expect("event")["status"], "building");
    h.velox.hold(false);
    assert_eq!(events.next_event().expect("event")["status"], "ready");
    assert!(events.next_event().is_none());

    // Cached: the same instruction answers with the binary, as usual.
    let hit = post_json(&generate_url, &generate(), &[ASYNC, ("origin", &origin)]).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    // Without the preference the proxy waits for the build, as before.
    let mut other = generate();
    other["target_arch"] = json!("arm64");
    let waited = post_json(&generate_url, &other, &[]).await;
    assert_eq!(waited.status, 200);
    assert_eq!(waited.header("x-cache-status"), Some("MISS"));

    // An app that allows any origin: `*` on the status for anyone.
    let mut third = generate();
    third["target_os"] = json!("windows");
    let r = post_json(&h.url("/async/generate?cors=any"), &third, &[ASYNC]).await;
    assert_eq!(r.status, 202);
    assert_eq!(acao(&r), Some("*"));
    let key = r.header("x-velox-cache-key").expect("key");
    let s = get(
        &h.url(&format!("/_velox/v1/builds/{key}")),
        &[("origin", "http://anyone.example")],
    )
    .await;
    assert_eq!(acao(&s), Some("*"));
}

/// Text of the element `id` in a DOM dump, with HTML's escapes undone.
fn element_text(dom: &str, id: &str) -> String {
    let open = format!("id=\"{id}\">");
    let start = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no #{id} in {dom}"))
        + open.len();
    let end = start + dom[start..].find("</").expect("closing tag");
    dom[start..end]
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[actix_web::test]
async fn a_browser_on_another_origin_runs_the_whole_flow() {
    let (php, h) = proxied(|o| o);
    // Long enough that the page sees the build under way before it is ready.
    h.velox.set_delay(Duration::from_millis(1500));
    let page = format!("{}/async/page?velox={}", php.url, h.url(""));
    let profile = tempfile::tempdir().expect("profile dir");
    let mut chromium = std::process::Command::new("chromium");
    chromium
        .args(["--headless=new", "--no-sandbox", "--disable-gpu"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        // The dump waits for the page's work (network included) up to this much virtual time.
        .arg("--virtual-time-budget=60000")
        .arg("--dump-dom")
        .arg(&page)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let child = chromium.spawn().unwrap_or_else(|e| {
        panic!("cannot start `chromium` ({e}): apt-get install chromium (scripts/test does)")
    });
    let out = actix_web::rt::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("chromium ran");
    let dom = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(&element_text(&dom, "result"))
        .unwrap_or_else(|e| panic!("no result ({e}): {dom}"));
    assert!(result.get("error").is_none(), "{result}");
    assert_eq!(result["status"], 202, "{result}");
    let key = result["cache_key"]
        .as_str()
        .expect("key readable cross-origin");
    assert_eq!(
        result["location"],
        format!("/_velox/v1/builds/{key}").as_str()
    );
    assert_eq!(result["retry_after"], "2");
    assert_eq!(result["preference_applied"], "respond-async");
    let events = result["events"].as_array().expect("events");
    let last = events.last().expect("an event");
    assert_eq!(last["status"], "ready", "{result}");
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|e| e["status"] == "queued" || e["status"] == "building"),
        "{result}"
    );
    assert_eq!(result["polled"]["status"], "ready");
    assert_eq!(result["binary_status"], 200);
    assert_eq!(result["binary_size"], 300 * 1024);
    assert_eq!(result["binary_sha256"], last["digest"]);
    assert_eq!(h.velox.builds(), 1);
}

#[actix_web::test]
async fn warm_submits_everything_then_follows() {
    let h = Harness::start();
    h.velox.hold(true);
    // Four builds run (held) and two wait for a slot; the last call to Velox fails.
    h.velox
        .script(std::iter::repeat_n(Behavior::Build, 5).chain([Behavior::Code("internal")]));
    let file = h.tmp.path().join("release.jsonl");
    let lines: Vec<String> = (0..6)
        .map(|i| serde_json::to_string(&distinct_request(i)).expect("json"))
        .collect();
    std::fs::write(&file, lines.join("\n")).expect("write");
    let (f, url) = (file.display().to_string(), h.url(""));
    let warm = std::thread::spawn(move || {
        server::run(&["warm", &f, "--url", &url, "--concurrency", "2"], &[])
    });
    // With builds held, clients waiting on their builds at concurrency 2 would leave at most 2
    // admitted: all 6 are, so no submission waits for its build.
    let stats = h.server().admin_url("/v1/cache/stats");
    let all_in = eventually(Duration::from_secs(20), async || {
        get(&stats, &[]).await.json()["builds_in_flight"] == 6
    })
    .await;
    assert!(all_in, "{}", get(&stats, &[]).await.json());
    h.velox.hold(false);
    let (code, out, err) = actix_web::rt::task::spawn_blocking(move || warm.join())
        .await
        .expect("join")
        .expect("warm ran");
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("5 succeeded (0 hits, 5 built), 1 failed"),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.contains(": MISS ")).count(),
        5,
        "{out}"
    );
    // The failure is known from the build's status, which carries no HTTP status.
    assert_eq!(
        out.lines()
            .filter(|l| l.contains(": failed: build_failed: scripted internal"))
            .count(),
        1,
        "{out}"
    );
    assert_eq!(h.velox.builds(), 5);
}

#[actix_web::test]
async fn curl_follows_the_events_over_http_1_0_and_1_1() {
    let h = Harness::start();
    let r = post_json(&h.builds_url(), &build_request("linux", "amd64"), &[ASYNC]).await;
    assert_eq!(r.status, 202);
    let key = r.header("x-velox-cache-key").expect("key").to_owned();
    let url = h.url(&format!("/_velox/v1/builds/{key}"));
    for version in ["--http1.0", "--http1.1"] {
        let out = std::process::Command::new("curl")
            .args(["-si", "-N", "--max-time", "30", version])
            .args(["-H", "Accept: text/event-stream", &url])
            .output()
            .expect("curl runs");
        assert!(out.status.success(), "{version}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        // HTTP/1.0 has no chunked encoding: that stream ends with the connection.
        assert_eq!(
            head.contains("transfer-encoding: chunked"),
            version == "--http1.1",
            "{version}: {head}"
        );
        let last = body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .next_back()
            .expect("an event");
        let last: Value = serde_json::from_str(last).expect("json");
        assert_eq!(last["status"], "ready", "{version}: {body}");
    }
}

#[test]
fn a_too_short_keep_alive_stops_the_start_naming_the_key() {
    let (code, _, err) = server::run(&["config"], &[("VELOX_CACHE_SSE_KEEPALIVE", "10ms")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sse_keepalive"), "{err}");
    let (code, out, err) = server::run(&["config"], &[("VELOX_CACHE_SSE_KEEPALIVE", "30s")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sse_keepalive = \"30s\""), "{out}");
}
