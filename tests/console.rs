//! The console (docs/console.md): its files and headers, the JSON and Server-Sent Events routes
//! it reads (builds under way and failed, the last hour of traffic, entry search, pins), and the
//! page itself in headless Chromium (Debian's `chromium`, driven by Python Playwright through
//! `tests/browser/console_driver.py`): it renders what the test created, shows a build started
//! by another client without a reload, deletes an entry with the typed token (and shows the
//! server's error for a wrong one), keeps a plugin named like markup as text, logs no console
//! error and asks nothing of anyone but its own two listeners. Screenshots at 1280 and 360 px
//! go under the target dir (`tmp/console/`), never into the repository.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::sse::EventStream;
use support::*;

const XSS: &str = "<img src=x onerror=alert(1)>";
const TOKEN: &str = "console-admin-token";
const ASYNC: (&str, &str) = ("prefer", "respond-async");

fn with_tag(tag: &str) -> Value {
    let mut v = build_request("linux", "amd64");
    v["plugins"][0]["tag"] = json!(tag);
    v
}

async fn send(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> Resp {
    let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client().request(method, url);
    if let Some(t) = token {
        req = req.insert_header(("authorization", format!("Bearer {t}")));
    }
    let mut res = match body {
        Some(b) => req
            .insert_header(("content-type", "application/json"))
            .send_body(serde_json::to_vec(&b).expect("json"))
            .await
            .expect("sent"),
        None => req.send().await.expect("sent"),
    };
    let body = res.body().limit(64 << 20).await.expect("body");
    Resp {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body,
    }
}

/// Builds `req` synchronously (with the token) and returns its cache key.
async fn built(h: &Harness, req: &Value) -> String {
    let auth = format!("Bearer {TOKEN}");
    let r = post_json(&h.builds_url(), req, &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.header("x-velox-cache-key")
        .expect("x-velox-cache-key")
        .to_owned()
}

/// The next event of `stream` that is not `lagged`, as (name, data).
fn next(stream: &mut EventStream) -> (String, Value) {
    stream.next_named().expect("an event")
}

#[actix_web::test]
async fn the_pages_files_carry_a_strict_csp_and_revalidate() {
    let h = Harness::start();
    for (base, page) in [
        (h.url(""), "/_velox/ui/"),
        (h.server().admin_url(""), "/ui/"),
    ] {
        let r = get(&format!("{base}{page}"), &[]).await;
        assert_eq!(r.status, 200, "{page}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        let csp = r.header("content-security-policy").expect("csp");
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        let html = String::from_utf8_lossy(&r.body);
        // No inline script and nothing from elsewhere.
        assert!(html.contains(r#"<script src="console.js" defer></script>"#));
        assert!(!html.contains("http://") && !html.contains("https://"));
        let etag = r.header("etag").expect("etag").to_owned();
        let again = get(&format!("{base}{page}"), &[("if-none-match", &etag)]).await;
        assert_eq!(again.status, 304);
        assert!(again.body.is_empty());
        for (file, kind) in [
            ("console.js", "text/javascript; charset=utf-8"),
            ("console.css", "text/css; charset=utf-8"),
        ] {
            let r = get(&format!("{base}{page}{file}"), &[]).await;
            assert_eq!(r.status, 200, "{file}");
            assert_eq!(r.header("content-type"), Some(kind));
            assert!(r.header("etag").is_some());
        }
    }
    let moved = get(&h.url("/_velox/ui"), &[]).await;
    assert_eq!(moved.status, 308);
    assert_eq!(moved.header("location"), Some("/_velox/ui/"));
    for path in ["/", "/ui"] {
        let moved = get(&h.server().admin_url(path), &[]).await;
        assert_eq!(moved.status, 308, "{path}");
        assert_eq!(moved.header("location"), Some("/ui/"));
    }
    // An unknown file of the page is the usual JSON 404, and the page's files take no POST.
    get(&h.url("/_velox/ui/nope.js"), &[])
        .await
        .assert_error(404, "not_found");
    let r = send("POST", &h.url("/_velox/ui/"), None, None).await;
    r.assert_error(405, "method_not_allowed");
}

#[actix_web::test]
async fn builds_under_way_and_failed_are_listed_and_streamed() {
    let h = Harness::start();
    let mut events = EventStream::open(&h.url("/_velox/v1/builds/events"), &[]);
    assert_eq!(events.status, 200);
    assert_eq!(events.header("content-type"), Some("text/event-stream"));
    let (name, first) = next(&mut events);
    assert_eq!(name, "builds");
    assert_eq!(first, json!({"running": [], "failures": []}));
    let mut admin_events = EventStream::open(&h.server().admin_url("/v1/builds/events"), &[]);
    assert_eq!(next(&mut admin_events).0, "builds");

    // A build under way: in the list with its recipe and elapsed time, and as `started`.
    h.velox.hold(true);
    let r = post_json(&h.builds_url(), &with_tag("v5.2.9"), &[ASYNC]).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let key = r.json()["key"].as_str().expect("key").to_owned();
    let (name, started) = next(&mut events);
    assert_eq!(name, "started");
    assert_eq!(started["key"], key.as_str());
    assert_eq!(started["rr_version"], "v2025.1.2");
    assert_eq!(started["platform"], "linux/amd64");
    assert_eq!(started["plugins"][0]["tag"], "v5.2.9");
    assert_eq!(next(&mut admin_events).0, "started");
    let list = get(&h.url("/_velox/v1/builds"), &[]).await.json();
    assert_eq!(list["running"][0]["key"], key.as_str(), "{list}");
    assert!(list["running"][0]["elapsed_seconds"].as_f64().is_some());
    assert_eq!(
        h.admin_json("/v1/builds").await["running"][0]["key"],
        key.as_str()
    );
    h.velox.hold(false);
    let (name, finished) = next(&mut events);
    assert_eq!(name, "finished", "{finished}");
    assert_eq!(finished["key"], key.as_str());
    assert_eq!(finished["stored"], true);
    assert_eq!(finished["digest"].as_str().map(str::len), Some(64));
    assert_eq!(
        get(&h.url("/_velox/v1/builds"), &[]).await.json()["running"],
        json!([])
    );

    // A failed build: `failed` with the compiler's message, and in the list of failures.
    h.velox
        .script([Behavior::Fail(format!("main.go:1: undefined: {XSS}"))]);
    let r = post_json(&h.builds_url(), &with_tag(XSS), &[]).await;
    r.assert_error(502, "build_failed");
    assert_eq!(next(&mut events).0, "started");
    let (name, failed) = next(&mut events);
    assert_eq!(name, "failed", "{failed}");
    assert_eq!(failed["error"], "build_failed");
    assert_eq!(failed["plugins"][0]["tag"], XSS);
    assert!(
        failed["message"]
            .as_str()
            .is_some_and(|l| l.contains(&format!("undefined: {XSS}"))),
        "{failed}"
    );
    let list = get(&h.url("/_velox/v1/builds"), &[]).await.json();
    assert_eq!(list["failures"][0]["key"], failed["key"], "{list}");
    assert_eq!(list["running"], json!([]));

    // The list is read-only.
    let r = send("DELETE", &h.url("/_velox/v1/builds/events"), None, None).await;
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

#[actix_web::test]
async fn the_last_hour_counts_hits_misses_and_bytes_served() {
    let h = Harness::start();
    let before = h.admin_json("/v1/history").await;
    assert_eq!(before["hit_ratio"], Value::Null, "{before}");
    let r = h.post(&with_tag("v5.2.9")).await;
    assert_eq!(r.status, 200);
    let size = r.body.len() as u64;
    let again = h.post(&with_tag("v5.2.9")).await;
    assert_eq!(again.status, 200);
    let v = h.admin_json("/v1/history").await;
    assert_eq!(v["misses"], 1, "{v}");
    assert_eq!(v["hits"], 1, "{v}");
    assert_eq!(v["bytes"], 2 * size, "{v}");
    assert_eq!(v["hit_ratio"], 0.5);
    let minutes = v["minutes"].as_array().expect("minutes");
    assert!(!minutes.is_empty() && minutes.len() <= 60, "{v}");
    let summed: u64 = minutes.iter().filter_map(|m| m["bytes"].as_u64()).sum();
    assert_eq!(summed, 2 * size);
    assert!(minutes[0]["minute"]
        .as_str()
        .is_some_and(|m| m.ends_with(":00Z")));
}

#[actix_web::test]
async fn entries_are_searched_by_key_digest_and_plugin_and_pins_listed() {
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_API_TOKEN", TOKEN));
    let a = built(&h, &with_tag("v5.2.9")).await;
    let mut other = with_tag("v5.2.9");
    other["plugins"][1]["module_name"] = json!("github.com/roadrunner-server/kv/v5");
    let b = built(&h, &other).await;
    let search = |q: &str| {
        let url = h
            .server()
            .admin_url(&format!("/v1/cache/search?q={}", urlencode(q)));
        async move { get(&url, &[]).await }
    };
    let keys = |v: &Value| -> Vec<String> {
        v["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| e["key"].as_str().expect("key").to_owned())
            .collect()
    };
    let all = search("").await.json();
    assert_eq!(keys(&all).len(), 2, "{all}");
    assert_eq!(all["complete"], true);
    let by_plugin = search("KV/v5").await.json();
    assert_eq!(keys(&by_plugin), vec![b.clone()], "{by_plugin}");
    assert_eq!(by_plugin["entries"][0]["rr_version"], "v2025.1.2");
    assert_eq!(
        by_plugin["entries"][0]["plugins"][1]["module_name"],
        "github.com/roadrunner-server/kv/v5"
    );
    assert_eq!(keys(&search(&a[..10]).await.json()), vec![a.clone()]);
    let digest = all["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["key"] == a.as_str())
        .and_then(|e| e["digest"].as_str())
        .expect("digest")
        .to_owned();
    let by_digest = search(&digest.to_uppercase()).await.json();
    assert!(keys(&by_digest).contains(&a), "{by_digest}");
    assert!(keys(&search("nothing-like-this").await.json()).is_empty());
    // Bad input: a clear 400, nothing changed.
    for q in ["limit=0", "limit=501", "limit=x"] {
        get(&h.server().admin_url(&format!("/v1/cache/search?{q}")), &[])
            .await
            .assert_error(400, "invalid_request");
    }
    let long = "a".repeat(300);
    search(&long).await.assert_error(400, "invalid_request");

    assert_eq!(h.admin_json("/v1/cache/pinned").await["entries"], json!([]));
    let pin = h.server().admin_url(&format!("/v1/cache/{a}/pin"));
    assert_eq!(send("POST", &pin, Some(TOKEN), None).await.status, 200);
    let pinned = h.admin_json("/v1/cache/pinned").await;
    assert_eq!(keys(&pinned), vec![a.clone()], "{pinned}");
    assert_eq!(pinned["entries"][0]["pins"], json!(["manual"]));
    assert_eq!(pinned["entries"][0]["digest"], digest.as_str());

    let c = h.admin_json("/v1/console").await;
    assert_eq!(
        c["public_port"].as_u64(),
        h.url("").rsplit(':').next().and_then(|p| p.parse().ok())
    );
    assert!(c["keys"]["current"]["minisign"].is_string(), "{c}");
    // Whether the builders' route exists on this server (a pool of Velox builders adds it).
    let builders = get(&h.server().admin_url("/v1/builders"), &[]).await.status == 200;
    assert_eq!(c["builders"], builders, "{c}");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Headless Chromium through `tests/browser/console_driver.py`: one JSON command a line.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

impl Browser {
    fn start() -> Browser {
        let driver = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/browser/console_driver.py"
        );
        let mut child = Command::new("python3")
            .arg(driver)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs (scripts/test installs playwright and chromium)");
        let stdin = child.stdin.take().expect("stdin");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        Browser { child, stdin, out }
    }

    /// Sends `cmd` and returns the answer, which must be `ok`.
    fn call(&mut self, cmd: Value) -> Value {
        let answer = self.try_call(&cmd);
        assert_eq!(answer["ok"], true, "{cmd} failed: {answer}");
        answer
    }

    fn try_call(&mut self, cmd: &Value) -> Value {
        writeln!(self.stdin, "{cmd}").expect("the driver takes a command");
        self.stdin.flush().expect("flush");
        let mut line = String::new();
        self.out.read_line(&mut line).expect("the driver answers");
        assert!(
            !line.is_empty(),
            "the driver stopped (is Python's playwright installed? scripts/test installs it)"
        );
        serde_json::from_str(&line).expect("a JSON answer")
    }

    fn text(&mut self, selector: &str) -> String {
        self.call(json!({"cmd": "text", "selector": selector}))["text"]
            .as_str()
            .expect("text")
            .to_owned()
    }

    fn count(&mut self, selector: &str) -> u64 {
        self.call(json!({"cmd": "count", "selector": selector}))["count"]
            .as_u64()
            .expect("count")
    }

    fn wait(&mut self, selector: &str, text: &str) {
        self.call(json!({"cmd": "wait", "selector": selector, "text": text}));
    }

    /// Screenshots of the page at 1280 and 360 px, under the target dir.
    fn screenshots(&mut self, name: &str) -> Vec<PathBuf> {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let mut out = Vec::new();
        for width in [1280, 360] {
            self.call(json!({"cmd": "viewport", "width": width, "height": 900}));
            let path = dir.join(format!("{name}-{width}.png"));
            self.call(json!({"cmd": "screenshot", "path": path}));
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            assert!(len > 1000, "{} is {len} bytes", path.display());
            out.push(path);
        }
        self.call(json!({"cmd": "viewport", "width": 1280, "height": 900}));
        out
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "close"}));
        let _ = self.stdin.flush();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[actix_web::test]
async fn the_console_in_headless_chromium() {
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_API_TOKEN", TOKEN));
    let public = h.url("");
    let admin = h.server().admin_url("");
    let port = public.rsplit(':').next().expect("port").to_owned();

    // What the pages must show: a channel and an entry, made through the API.
    let entry = built(&h, &with_tag("v5.2.9")).await;
    let channel = json!({
        "rr_version": "v2025.1.2",
        "plugins": [{"module_name": "github.com/roadrunner-server/http/v5", "tag": "v5.2.8"}],
        "platforms": ["linux/amd64"],
        "keep": 1
    });
    let r = send(
        "PUT",
        &format!("{admin}/v1/channels/web"),
        Some(TOKEN),
        Some(channel),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let released = eventually(Duration::from_secs(30), async || {
        let c = get(&format!("{public}/_velox/v1/channels/web"), &[]).await;
        c.json()["current"]["binaries"]["linux/amd64"].is_object()
    })
    .await;
    assert!(released, "the channel got no release");

    let mut b = Browser::start();

    // The public page: the channel with its commands.
    let opened = b.call(json!({"cmd": "open", "url": format!("{public}/_velox/ui/")}));
    b.wait("[data-channel=web]", "curl -fLo rr");
    let card = b.text("[data-channel=web]");
    assert!(
        card.contains(&format!(
            "curl -fLo rr {public}/_velox/v1/channels/web/linux/amd64"
        )),
        "{card}"
    );
    assert!(
        card.contains(&format!(
            "COPY --from=127.0.0.1:{port}/rr/web:latest /usr/bin/rr /usr/local/bin/rr"
        )),
        "{card}"
    );
    assert!(card.contains("minisign -Vm rr -P RW"), "{card}");
    assert!(card.contains("v5.2.8"), "{card}");
    assert!(card.contains("pre-build: idle"), "{card}");
    let shots = b.screenshots("public");

    // A build started by another client appears without a reload, then its failure with the
    // compiler's message; markup in its plugin's tag and in that message stays text.
    h.velox.hold(true);
    h.velox
        .script([Behavior::Fail(format!("main.go:1: undefined: {XSS}"))]);
    let auth = format!("Bearer {TOKEN}");
    let r = post_json(
        &h.builds_url(),
        &with_tag(XSS),
        &[ASYNC, ("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    b.wait("#running [data-key]", XSS);
    assert!(b.text("#running").contains("RoadRunner v2025.1.2"));
    h.velox.hold(false);
    b.wait("#failures [data-key]", "build_failed");
    b.wait("#failures [data-key]", &format!("undefined: {XSS}"));
    assert_eq!(b.count("#running [data-key]"), 0);
    assert_eq!(b.count("img"), 0, "markup from a build became an element");

    // The admin page: the same, plus the entry; a wrong token shows the server's error and
    // deletes nothing; the right one deletes the entry on the server.
    let admin_opened = b.call(json!({"cmd": "open", "url": format!("{admin}/ui/")}));
    b.wait("[data-channel=web]", "curl -fLo rr");
    assert!(b
        .text("[data-channel=web]")
        .contains(&format!("{public}/_velox/v1/channels/web/linux/amd64")));
    let row = format!("#entries tr[data-key='{entry}']");
    b.wait(&row, "v2025.1.2");
    b.wait("#failures [data-key]", XSS);
    b.wait("#traffic-summary", "served");
    b.wait("#disk", "headroom");
    // The builders' section is shown exactly when the server has the route.
    let builders = get(&format!("{admin}/v1/builders"), &[]).await.status == 200;
    assert_eq!(
        b.count("#builders-section:not([hidden])"),
        u64::from(builders)
    );
    let admin_shots = b.screenshots("admin");

    // Clean so far; from here the wrong token's 401 is logged by Chromium itself.
    let report = b.call(json!({"cmd": "report"}));
    assert_eq!(report["console_errors"], json!([]), "{report}");
    let delete = format!("{row} [data-action=delete]");
    b.call(json!({"cmd": "fill", "selector": "#token", "text": "not-the-token"}));
    b.call(json!({"cmd": "press", "selector": "#token", "key": "Enter"}));
    b.wait("#token-state", "token set");
    // Keyboard only: focus the button, Enter to arm it, Enter to confirm.
    b.call(json!({"cmd": "press", "selector": delete, "key": "Enter"}));
    b.call(json!({"cmd": "press", "selector": delete, "key": "Enter"}));
    b.wait("#notice", "401");
    let notice = b.text("#notice");
    assert!(notice.contains("unauthorized"), "{notice}");
    assert!(!notice.contains("not-the-token"), "{notice}");
    assert_eq!(
        get(&format!("{admin}/v1/cache/{entry}"), &[]).await.status,
        200
    );
    b.call(json!({"cmd": "fill", "selector": "#token", "text": TOKEN}));
    b.call(json!({"cmd": "click", "selector": "#token-form button[type=submit]"}));
    // Pin and unpin by the row's buttons, checked on the server.
    b.call(json!({"cmd": "click", "selector": format!("{row} [data-action=pin]")}));
    b.wait("#notice", "pinned");
    b.wait("#pins", &entry[..12]);
    let pins = get(&format!("{admin}/v1/cache/{entry}"), &[]).await.json();
    assert_eq!(pins["pins"], json!(["manual"]), "{pins}");
    b.call(json!({"cmd": "click", "selector": format!("{row} [data-action=unpin]")}));
    b.wait("#notice", "unpinned");
    b.wait(&format!("{row} [data-action=pin]"), "Pin");
    let pins = get(&format!("{admin}/v1/cache/{entry}"), &[]).await.json();
    assert_eq!(pins["pins"], json!([]), "{pins}");
    b.call(json!({"cmd": "click", "selector": delete}));
    b.call(json!({"cmd": "click", "selector": delete}));
    b.wait("#notice", "deleted");
    b.call(json!({"cmd": "wait_gone", "selector": row}));
    get(&format!("{admin}/v1/cache/{entry}"), &[])
        .await
        .assert_error(404, "not_found");
    assert!(!b.text("body").contains(TOKEN), "the page shows the token");

    // Search narrows the entries: nothing matches an unknown plugin.
    b.call(json!({"cmd": "fill", "selector": "#search", "text": "no-such-plugin"}));
    b.wait("#entries tbody", "no entry matches");

    let report = b.call(json!({"cmd": "report"}));
    // Chromium logs every 4xx answer to a fetch as "Failed to load resource"; the wrong token's
    // 401 is the only such line, and the page's own code logged nothing.
    assert_eq!(
        report["console_errors"],
        json!([{
            "text": "Failed to load resource: the server responded with a status of 401 (Unauthorized)",
            "url": format!("{admin}/v1/cache/{entry}"),
        }]),
        "{report}"
    );
    assert_eq!(report["page_errors"], json!([]), "{report}");
    assert_eq!(report["dialogs"], json!([]), "{report}");
    let requests = report["requests"].as_array().expect("requests");
    assert!(requests.len() > 10, "{report}");
    for url in requests {
        let url = url.as_str().expect("url");
        assert!(
            url.starts_with(&format!("{public}/")) || url.starts_with(&format!("{admin}/")),
            "a request left the two listeners: {url}"
        );
    }
    // For BENCHMARKS.md: the page's weight and its time to first render.
    let weight: u64 = report["bytes"]
        .as_object()
        .expect("bytes")
        .iter()
        .filter(|(u, _)| u.starts_with(&public))
        .filter_map(|(_, n)| n.as_u64())
        .sum();
    assert!(weight > 0);
    eprintln!(
        "console: page weight {weight} bytes (html+css+js, uncompressed); first contentful paint {} ms, first render with data {} ms (public), {} ms (admin); screenshots {:?} {:?}",
        opened["first_paint_ms"], opened["rendered_ms"], admin_opened["rendered_ms"], shots, admin_shots
    );
}
