//! Channels through HTTP (docs/channels.md): named recipes pre-built at start and again when a
//! floating tag moves on the Go module proxy, their binaries at stable URLs, pinned against
//! eviction, changed through the admin API, watched as Server-Sent Events; a failed pre-build
//! and a SIGKILL during one leave the current release as it was.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::goproxy::{GoProxy, Mode};
use support::sse::EventStream;
use support::*;

const HTTP: &str = "github.com/roadrunner-server/http/v5";
const GRPC: &str = "github.com/roadrunner-server/grpc/v5";

/// A config file with channel `prod`: `http` at `latest`, `grpc` pinned, two platforms.
fn prod_config(dir: &Path, extra: &str) -> String {
    let path = dir.join("velox-cache.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[channels.prod]
rr_version = "v2025.1.2"
plugins = [{{ module_name = "{HTTP}", tag = "latest" }}, {{ module_name = "{GRPC}", tag = "v5.1.0" }}]
platforms = ["linux/amd64", "linux/arm64"]
keep = 2
{extra}
"#
        ),
    )
    .expect("config file");
    path.display().to_string()
}

/// Options for a server that resolves with `proxy`, forgets resolutions at once and polls
/// every second.
fn channel_options(o: Options, proxy: &GoProxy, config: &str) -> Options {
    o.env("VELOX_CACHE_CONFIG", config)
        .env("VELOX_CACHE_RESOLVE__GOPROXY", &proxy.url)
        .env("VELOX_CACHE_RESOLVE__TTL", "0s")
        .env("VELOX_CACHE_PREBUILD__POLL", "1s")
}

fn start(proxy: &GoProxy, extra: &str) -> Harness {
    start_with(proxy, extra, |o| o)
}

fn start_with(proxy: &GoProxy, extra: &str, f: impl FnOnce(Options) -> Options) -> Harness {
    let dir = tempfile::tempdir().expect("tmp");
    let config = prod_config(dir.path(), extra);
    let h = Harness::start_with(|o| f(channel_options(o, proxy, &config)));
    // The config file must outlive the harness's restarts.
    std::mem::forget(dir);
    h
}

async fn channel(h: &Harness, name: &str) -> Value {
    let r = get(&h.url(&format!("/_velox/v1/channels/{name}")), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Waits until channel `name`'s current release is not `not` (any release when `None`).
async fn flipped(h: &Harness, name: &str, not: Option<&str>) -> Value {
    let mut last = Value::Null;
    let ok = eventually(Duration::from_secs(30), async || {
        last = channel(h, name).await;
        match last["current"]["id"].as_str() {
            Some(id) => Some(id) != not,
            None => false,
        }
    })
    .await;
    assert!(ok, "no release flipped: {last}\n{}", h.server().log_text());
    last
}

async fn prebuild_state(h: &Harness, name: &str, state: &str) -> Value {
    let mut last = Value::Null;
    let ok = eventually(Duration::from_secs(30), async || {
        last = channel(h, name).await;
        last["prebuild"]["state"] == state
    })
    .await;
    assert!(ok, "never {state}: {last}\n{}", h.server().log_text());
    last
}

#[actix_web::test]
async fn a_channel_is_prebuilt_at_start_and_again_when_latest_moves() {
    let proxy = GoProxy::start();
    proxy.set_latest(HTTP, "v5.2.7");
    let h = start(&proxy, "");

    // Built at start for both platforms, without any request.
    let first = flipped(&h, "prod", None).await;
    assert_eq!(h.velox.builds(), 2, "one build per platform");
    let current = &first["current"];
    assert_eq!(current["resolved"][HTTP], "v5.2.7", "{first}");
    assert_eq!(first["platforms"], json!(["linux/amd64", "linux/arm64"]));
    assert_eq!(first["origin"], "file");
    let amd = current["binaries"]["linux/amd64"].clone();
    let arm = current["binaries"]["linux/arm64"].clone();
    assert_ne!(amd["digest"], arm["digest"]);
    let mut tags: Vec<String> = h
        .velox
        .requests()
        .iter()
        .map(|r| r["plugins"].to_string())
        .collect();
    tags.dedup();
    assert!(
        tags.iter()
            .all(|t| t.contains("v5.2.7") && !t.contains("latest")),
        "Velox builds the resolved version: {tags:?}"
    );

    // The channel URL: the current binary, revalidated, ranged, pointing at its artifact.
    let url = h.url("/_velox/v1/channels/prod/linux/amd64");
    let r = get(&url, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-cache-status"), Some("HIT"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(sha256_hex(&r.body), amd["digest"].as_str().expect("digest"));
    assert_eq!(
        r.header("content-location"),
        amd["artifact_url"].as_str(),
        "{amd}"
    );
    let minisig = get(
        &h.url(amd["signature_url"].as_str().expect("signature_url")),
        &[],
    )
    .await;
    assert_eq!(minisig.status, 200, "the release's signature");
    assert_eq!(r.header("x-velox-channel-release"), current["id"].as_str());
    let signature = format!(
        "</_velox/v1/artifacts/{}.minisig>; rel=\"signature\"",
        amd["digest"].as_str().expect("digest")
    );
    assert!(
        r.header("link").is_some_and(|l| l.starts_with(&signature)),
        "{:?}",
        r.header("link")
    );
    let etag = r.header("etag").expect("etag").to_owned();
    let not_modified = get(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(not_modified.status, 304);
    let range = get(&url, &[("range", "bytes=10-19")]).await;
    assert_eq!(range.status, 206);
    assert_eq!(&range.body[..], &r.body[10..20]);
    let headed = head(&url, &[]).await;
    assert_eq!(headed.status, 200);
    assert_eq!(
        headed.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert!(headed.body.is_empty());
    let old_body = r.body.clone();

    // The tag moves: a new release without any request, then a hit on the new binary.
    let mut events = EventStream::open(&h.url("/_velox/v1/channels/prod/events"), &[]);
    assert_eq!(events.status, 200);
    assert_eq!(events.header("content-type"), Some("text/event-stream"));
    let (name, snapshot) = events.next_named().expect("the channel at once");
    assert_eq!(name, "channel");
    assert_eq!(snapshot["current"]["id"], current["id"]);
    proxy.set_latest(HTTP, "v5.2.8");
    let second = flipped(&h, "prod", current["id"].as_str()).await;
    assert_eq!(h.velox.builds(), 4);
    assert_eq!(second["current"]["resolved"][HTTP], "v5.2.8");
    let kinds: Vec<(String, Value)> = (0..3).filter_map(|_| events.next_named()).collect();
    let names: Vec<&str> = kinds.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["prebuild", "release", "prebuild"], "{kinds:?}");
    assert_eq!(kinds[0].1["state"], "building");
    assert_eq!(kinds[1].1["id"], second["current"]["id"]);
    assert_eq!(kinds[2].1["state"], "idle");

    let r = get(&url, &[]).await;
    assert_eq!(r.header("x-cache-status"), Some("HIT"));
    assert_ne!(r.body, old_body, "the new release's binary");
    assert_eq!(
        sha256_hex(&r.body),
        second["current"]["binaries"]["linux/amd64"]["digest"]
            .as_str()
            .expect("digest")
    );
    assert_eq!(h.velox.builds(), 4, "the request after the flip is a hit");
    // The revalidation of the old binary now gets the new one.
    let moved = get(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(moved.status, 200);

    // The old release: still kept, still served by its immutable URL.
    let releases = second["releases"].as_array().expect("releases");
    assert_eq!(releases.len(), 2);
    assert_eq!(releases[1]["id"], current["id"]);
    let old = get(&h.url(amd["artifact_url"].as_str().expect("url")), &[]).await;
    assert_eq!(old.status, 200);
    assert_eq!(old.body, old_body);
    assert!(old
        .header("cache-control")
        .is_some_and(|c| c.contains("immutable")));

    // A third move: `keep = 2` lets the first release go (unpinned, not deleted).
    proxy.set_latest(HTTP, "v5.2.9");
    let third = flipped(&h, "prod", second["current"]["id"].as_str()).await;
    let ids: Vec<&Value> = third["releases"]
        .as_array()
        .expect("releases")
        .iter()
        .map(|r| &r["id"])
        .collect();
    assert_eq!(ids, vec![&third["current"]["id"], &second["current"]["id"]]);
    let first_key = amd["key"].as_str().expect("key");
    let entry = h.admin_json(&format!("/v1/cache/{first_key}")).await;
    assert_eq!(entry["pins"], json!([]), "{entry}");
    let kept_key = third["current"]["binaries"]["linux/amd64"]["key"]
        .as_str()
        .expect("key");
    let entry = h.admin_json(&format!("/v1/cache/{kept_key}")).await;
    assert_eq!(entry["pins"], json!(["channel:prod"]), "{entry}");

    assert_eq!(
        metric(
            h.server(),
            "velox_channel_releases_total{outcome=\"flipped\"}"
        )
        .await,
        3.0
    );
    let pinned = metric(h.server(), "velox_cache_pinned_bytes").await;
    assert_eq!(
        pinned,
        (4 * r.body.len()) as f64,
        "two releases, two platforms"
    );
    metric(
        h.server(),
        "velox_channel_release_age_seconds{channel=\"prod\"}",
    )
    .await;
    let list = get(&h.url("/_velox/v1/channels"), &[]).await.json();
    assert_eq!(list["channels"][0]["name"], "prod");
}

#[actix_web::test]
async fn pinned_binaries_survive_eviction_pressure() {
    let proxy = GoProxy::start();
    proxy.set_latest(HTTP, "v5.2.7");
    let mut h = start(&proxy, "");
    let first = flipped(&h, "prod", None).await;
    h.stop();
    h.restart_with(|o| o.env("VELOX_CACHE_CACHE__MAX_ENTRIES", "1"));

    // Four user builds with room for one entry: they evict each other, never the channel's.
    for n in 1..=4 {
        let r = h.post(&distinct_request(n)).await;
        assert_eq!(r.status, 200);
    }
    let stats = h.admin_json("/v1/cache/stats").await;
    assert_eq!(
        stats["entries"], 3,
        "two pinned and the last build: {stats}"
    );
    for platform in ["linux/amd64", "linux/arm64"] {
        let r = get(&h.url(&format!("/_velox/v1/channels/prod/{platform}")), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-cache-status"), Some("HIT"), "{platform}");
        let key = first["current"]["binaries"][platform]["key"]
            .as_str()
            .expect("key");
        assert_eq!(r.header("x-velox-cache-key"), Some(key));
    }

    // A pin by hand: the last user build stays through more pressure.
    let last = h.post(&distinct_request(4)).await;
    assert_eq!(last.header("x-cache-status"), Some("HIT"));
    let key = last.header("x-velox-cache-key").expect("key").to_owned();
    let pin_url = h.server().admin_url(&format!("/v1/cache/{key}/pin"));
    let pinned = post_json(&pin_url, &json!({}), &[]).await;
    assert_eq!(
        pinned.status,
        200,
        "{}",
        String::from_utf8_lossy(&pinned.body)
    );
    assert_eq!(pinned.json()["pins"], json!(["manual"]));
    for n in 5..=6 {
        assert_eq!(h.post(&distinct_request(n)).await.status, 200);
    }
    assert_eq!(
        h.post(&distinct_request(4)).await.header("x-cache-status"),
        Some("HIT")
    );
    assert_eq!(h.admin_json("/v1/cache/stats").await["entries"], 4);

    // A pinned entry is not deleted; unpinned, it is.
    let entry_url = h.server().admin_url(&format!("/v1/cache/{key}"));
    let refused = client().delete(&entry_url).send().await.expect("sent");
    assert_eq!(refused.status().as_u16(), 409);
    let channel_key = first["current"]["binaries"]["linux/amd64"]["key"]
        .as_str()
        .expect("key");
    let refused = client()
        .delete(h.server().admin_url(&format!("/v1/cache/{channel_key}")))
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status().as_u16(), 409);
    let unpinned = client().delete(&pin_url).send().await.expect("sent");
    assert_eq!(unpinned.status().as_u16(), 200);
    let deleted = client().delete(&entry_url).send().await.expect("sent");
    assert_eq!(deleted.status().as_u16(), 200);
    // A channel's pin is not the operator's to remove by hand.
    let channel_pin = h
        .server()
        .admin_url(&format!("/v1/cache/{channel_key}/pin"));
    let mut r = client().delete(&channel_pin).send().await.expect("sent");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["pins"], json!(["channel:prod"]));
    // Pinning what is not there is a 404.
    let unknown = post_json(
        &h.server()
            .admin_url(&format!("/v1/cache/{}/pin", "ab".repeat(32))),
        &json!({}),
        &[],
    )
    .await;
    unknown.assert_error(404, "not_found");
}

#[actix_web::test]
async fn a_failed_prebuild_keeps_the_current_release() {
    let proxy = GoProxy::start();
    proxy.set_latest(HTTP, "v5.2.7");
    // Failed builds are not remembered, so that the retry after the outage builds at once.
    let h = start_with(&proxy, "", |o| o.env("VELOX_CACHE_FAILURE_TTL", "0s"));
    let first = flipped(&h, "prod", None).await;
    let id = first["current"]["id"].clone();

    // Velox fails the new release's build, round after round.
    h.velox
        .script((0..1000).map(|_| Behavior::Fail("plugin does not compile".into())));
    proxy.set_latest(HTTP, "v5.2.8");
    let failed = prebuild_state(&h, "prod", "failed").await;
    assert_eq!(failed["current"]["id"], id, "{failed}");
    assert!(
        failed["prebuild"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("linux/amd64")),
        "{failed}"
    );
    let r = get(&h.url("/_velox/v1/channels/prod/linux/amd64"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-velox-channel-release"),
        id.as_str(),
        "the old release is served"
    );
    // Told once, however many rounds fail the same way (polls are 1 s apart).
    let calls = h.velox.calls();
    let retried = eventually(Duration::from_secs(10), async || {
        h.velox.calls() >= calls + 2
    })
    .await;
    assert!(retried, "every round tries again");
    let failures = "velox_channel_releases_total{outcome=\"failed\"}";
    assert_eq!(
        metric(h.server(), failures).await,
        1.0,
        "{}",
        h.server().log_text()
    );
    assert_eq!(channel(&h, "prod").await["current"]["id"], id);

    // The Go module proxy goes down: the resolution fails, the release stays.
    proxy.set_mode(Mode::Fail);
    let down = eventually(Duration::from_secs(20), async || {
        let c = channel(&h, "prod").await;
        c["prebuild"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("did not resolve"))
    })
    .await;
    assert!(down, "{}", channel(&h, "prod").await);
    assert_eq!(channel(&h, "prod").await["current"]["id"], id);
    assert_eq!(metric(h.server(), failures).await, 2.0, "a new failure");

    // Back up (and Velox building again): the new release flips, the failure is over.
    h.velox.clear_script();
    proxy.set_mode(Mode::Normal);
    let second = flipped(&h, "prod", id.as_str()).await;
    assert_eq!(second["current"]["resolved"][HTTP], "v5.2.8");
    prebuild_state(&h, "prod", "idle").await;
}

#[actix_web::test]
async fn sigkill_during_a_prebuild_loses_nothing() {
    let proxy = GoProxy::start();
    proxy.set_latest(HTTP, "v5.2.7");
    let mut h = start(&proxy, "");
    let first = flipped(&h, "prod", None).await;
    let id = first["current"]["id"].as_str().expect("id").to_owned();

    h.velox.hold(true);
    proxy.set_latest(HTTP, "v5.2.8");
    let building = eventually(Duration::from_secs(20), async || h.velox.in_progress() > 0).await;
    assert!(building, "{}", h.server().log_text());
    prebuild_state(&h, "prod", "building").await;
    h.take().kill();

    // Nothing of the half-built release is current; the old one is served at once (Velox still
    // holds every build, so the start's pre-build cannot have finished).
    h.restart_with(|o| o.env("VELOX_CACHE_PREBUILD__POLL", "0"));
    let after = channel(&h, "prod").await;
    assert_eq!(after["current"]["id"], id.as_str(), "{after}");
    assert_eq!(after["releases"].as_array().map(Vec::len), Some(1));
    for platform in ["linux/amd64", "linux/arm64"] {
        let r = get(&h.url(&format!("/_velox/v1/channels/prod/{platform}")), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-cache-status"), Some("HIT"), "{platform}");
        assert_eq!(r.header("x-velox-channel-release"), Some(id.as_str()));
        assert_eq!(
            sha256_hex(&r.body),
            first["current"]["binaries"][platform]["digest"]
                .as_str()
                .expect("digest")
        );
    }
    h.velox.hold(false);
    // The start's own pre-build finishes the new release (poll = 0: only once at start).
    let second = flipped(&h, "prod", Some(&id)).await;
    assert_eq!(second["current"]["resolved"][HTTP], "v5.2.8");
    assert_eq!(second["releases"][1]["id"], id.as_str());
    for platform in ["linux/amd64", "linux/arm64"] {
        let r = get(&h.url(&format!("/_velox/v1/channels/prod/{platform}")), &[]).await;
        assert_eq!(r.header("x-cache-status"), Some("HIT"), "{platform}");
    }
}

#[actix_web::test]
async fn channels_are_defined_changed_and_deleted_through_the_admin_api() {
    let proxy = GoProxy::start();
    proxy.set_latest(HTTP, "v5.2.7");
    let h = start(&proxy, "");
    flipped(&h, "prod", None).await;
    let admin = |p: &str| h.server().admin_url(p);
    let put = |path: String, body: Value| async move {
        let mut r = client()
            .put(&path)
            .insert_header(("content-type", "application/json"))
            .send_body(serde_json::to_vec(&body).expect("json"))
            .await
            .expect("sent");
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        (status, body)
    };
    let workers = json!({
        "rr_version": "v2025.1.2",
        "plugins": [{"module_name": HTTP, "tag": "v5.2.7"}],
        "platforms": ["linux/amd64"],
        "keep": 1
    });

    // Bad input: 400 naming the field, and nothing written.
    for (name, body, field) in [
        ("Workers", workers.clone(), "name"),
        (
            "workers",
            json!({"platforms": ["beos/amd64"]}),
            "platforms[0]",
        ),
        ("workers", json!({"platforms": []}), "platforms"),
        ("workers", json!({"keep": 0}), "keep"),
        (
            "workers",
            json!({"rr_version": "v2025.1.2", "plugins": [{"module_name": "not a module", "tag": "v1.0.0"}]}),
            "recipe",
        ),
        (
            "workers",
            json!({"rr_version": "v2025.1.2", "plugin": []}),
            "plugin",
        ),
    ] {
        let (status, err) = put(admin(&format!("/v1/channels/{name}")), body).await;
        assert_eq!(status, 400, "{name}: {err}");
        assert_eq!(err["error"], "invalid_request");
        assert!(
            err["message"].as_str().is_some_and(|m| m.contains(field)),
            "{field}: {err}"
        );
    }
    let huge = json!({"rr_version": "x".repeat(300 * 1024)});
    let (status, err) = put(admin("/v1/channels/workers"), huge).await;
    assert_eq!(status, 413, "{err}");
    assert_eq!(err["error"], "payload_too_large");
    let (status, err) = put(admin("/v1/channels/prod"), workers.clone()).await;
    assert_eq!(status, 409, "a file channel is read-only: {err}");
    assert_eq!(err["error"], "conflict");
    let listed = get(&h.url("/_velox/v1/channels"), &[]).await.json();
    assert_eq!(listed["channels"].as_array().map(Vec::len), Some(1));

    // Defined: built at once, served; defined again unchanged: 200.
    let (status, created) = put(admin("/v1/channels/workers"), workers.clone()).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["origin"], "api");
    let built = flipped(&h, "workers", None).await;
    let key = built["current"]["binaries"]["linux/amd64"]["key"]
        .as_str()
        .expect("key")
        .to_owned();
    let (status, _) = put(admin("/v1/channels/workers"), workers.clone()).await;
    assert_eq!(status, 200);
    // A GET's answer can be edited and sent back.
    let mut edited = channel(&h, "workers").await;
    edited["platforms"] = json!(["linux/amd64", "darwin/arm64"]);
    let (status, changed) = put(admin("/v1/channels/workers"), edited).await;
    assert_eq!(status, 200, "{changed}");
    let both = eventually(Duration::from_secs(30), async || {
        let c = channel(&h, "workers").await;
        c["current"]["binaries"]["darwin/arm64"].is_object()
    })
    .await;
    assert!(both, "{}", channel(&h, "workers").await);
    let unknown = get(&h.url("/_velox/v1/channels/workers/windows/amd64"), &[]).await;
    unknown.assert_error(404, "not_found");
    get(&h.url("/_velox/v1/channels/nope/linux/amd64"), &[])
        .await
        .assert_error(404, "not_found");

    // Deleted: its binaries are unpinned, not deleted.
    let gone = client()
        .delete(admin("/v1/channels/workers"))
        .send()
        .await
        .expect("sent");
    assert_eq!(gone.status().as_u16(), 204);
    let entry = h.admin_json(&format!("/v1/cache/{key}")).await;
    assert_eq!(entry["key"], key.as_str(), "{entry}");
    assert_eq!(entry["pins"], json!([]), "{entry}");
    get(&h.url("/_velox/v1/channels/workers"), &[])
        .await
        .assert_error(404, "not_found");
    let again = client()
        .delete(admin("/v1/channels/workers"))
        .send()
        .await
        .expect("sent");
    assert_eq!(again.status().as_u16(), 404);
    let file = client()
        .delete(admin("/v1/channels/prod"))
        .send()
        .await
        .expect("sent");
    assert_eq!(file.status().as_u16(), 409);
}

#[actix_web::test]
async fn a_channel_without_a_release_builds_on_demand() {
    let proxy = GoProxy::start();
    proxy.set_latest(HTTP, "v5.2.7");
    // Pre-builds only at start, and none can finish before the request: Velox is slow.
    let h = start(&proxy, "[prebuild]\npoll = \"0\"\n");
    h.velox.set_delay(Duration::from_millis(1500));
    let (status, _) = {
        let mut r = client()
            .put(h.server().admin_url("/v1/channels/edge"))
            .insert_header(("content-type", "application/json"))
            .send_body(
                serde_json::to_vec(&json!({
                    "rr_version": "v2025.1.2",
                    "plugins": [{"module_name": HTTP, "tag": "latest"}],
                    "platforms": ["linux/amd64"]
                }))
                .expect("json"),
            )
            .await
            .expect("sent");
        (r.status().as_u16(), r.body().await.expect("body"))
    };
    assert_eq!(status, 201);
    let asynchronous = get(
        &h.url("/_velox/v1/channels/edge/linux/amd64"),
        &[("prefer", "respond-async")],
    )
    .await;
    assert_eq!(
        asynchronous.status,
        202,
        "{}",
        String::from_utf8_lossy(&asynchronous.body)
    );
    assert!(asynchronous.header("location").is_some());
    let r = get(&h.url("/_velox/v1/channels/edge/linux/amd64"), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(
        r.header("x-build-resolved"),
        Some(format!("{HTTP}@latest=v5.2.7").as_str())
    );
    let c = flipped(&h, "edge", None).await;
    assert_eq!(
        c["current"]["binaries"]["linux/amd64"]["digest"].as_str(),
        Some(sha256_hex(&r.body).as_str()),
        "the pre-build and the request share one build"
    );
}

#[test]
fn a_bad_channel_in_the_file_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().expect("tmp");
    for (body, key) in [
        (
            "[channels.prod]\nrr_version = \"v2025.1.2\"\nplatforms = [\"linux/amd64\", \"linux/z80\"]\n",
            "channels.prod.platforms[1]",
        ),
        ("[channels.Prod]\nrr_version = \"v2025.1.2\"\n", "channels.Prod"),
        (
            "[channels.prod]\nrr_version = \"v2025.1.2\"\nplugins = [{ module_name = \"bad module\", tag = \"v1.0.0\" }]\n",
            "channels.prod",
        ),
        ("[channels.prod]\nrr_version = \"v2025.1.2\"\nkeep = 0\n", "channels.prod.keep"),
        (
            "[prebuild]\nwebhook_url = \"http://127.0.0.1:1/hook\"\n",
            "prebuild.webhook_secret",
        ),
        (
            "[prebuild]\nwebhook_url = \"http://127.0.0.1:1/hook\"\nwebhook_secret = \"whsec_***\"\n",
            "prebuild.webhook_secret",
        ),
    ] {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, body).expect("write");
        let (code, _out, err) = server::run(
            &["config", "--config", path.to_str().expect("utf-8")],
            &[],
        );
        assert_eq!(code, 2, "{body}: {err}");
        assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
    }
}

#[actix_web::test]
async fn channel_list_and_show_work_offline_and_through_the_server() {
    let proxy = GoProxy::start();
    proxy.set_latest(HTTP, "v5.2.7");
    let mut h = start(&proxy, "");
    let c = flipped(&h, "prod", None).await;
    let id = c["current"]["id"].as_str().expect("id").to_owned();
    let data_dir = format!("--data-dir={}", h.data_dir_arg());
    let admin = format!("--admin-listen={}", h.server().admin_addr());

    let (code, out, err) = server::run(&["channel", "list", &data_dir, &admin], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("prod") && out.contains(&id), "{out}");
    let (code, out, err) = server::run(&["channel", "show", "prod", &data_dir, &admin], &[]);
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(shown["current"]["id"], id.as_str());
    assert_eq!(
        shown["prebuild"]["state"], "idle",
        "the running server's state"
    );

    h.stop();
    let (code, out, err) = server::run(&["channel", "show", "prod", &data_dir], &[]);
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(shown["current"]["id"], id.as_str());
    assert_eq!(shown["prebuild"], Value::Null, "nothing runs offline");
    let (code, _out, err) = server::run(&["channel", "show", "nope", &data_dir], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("nope"), "{err}");
}

/// Standard Webhooks' signature, computed here on its own (HMAC-SHA256 with ring).
fn expected_signature(key: &[u8], id: &str, ts: &str, body: &[u8]) -> String {
    use base64::Engine;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut signed = format!("{id}.{ts}.").into_bytes();
    signed.extend_from_slice(body);
    let tag = ring::hmac::sign(&key, &signed);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

#[actix_web::test]
async fn flips_and_failures_reach_the_webhook_signed() {
    use base64::Engine;
    use support::webhook_sink::WebhookSink;
    let sink = WebhookSink::start();
    // The receiver is down for the first attempt: the delivery is retried.
    sink.fail_next(1, 503);
    let key = [7u8; 32];
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let proxy = GoProxy::start();
    proxy.set_latest(HTTP, "v5.2.7");
    let extra = format!(
        "[prebuild]\npoll = \"1s\"\nwebhook_url = \"{}\"\nwebhook_secret = \"{secret}\"\n",
        sink.url()
    );
    let h = start_with(&proxy, &extra, |o| o.env("VELOX_CACHE_FAILURE_TTL", "0s"));
    let first = flipped(&h, "prod", None).await;

    let got = sink.wait_for(2, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 2, "a failed attempt, then the delivery");
    let (failed, delivered) = (&got[0], &got[1]);
    assert_eq!(failed.header("webhook-id"), delivered.header("webhook-id"));
    let id = delivered.header("webhook-id").expect("webhook-id");
    let ts = delivered
        .header("webhook-timestamp")
        .expect("webhook-timestamp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let sent: u64 = ts.parse().expect("unix seconds");
    assert!(now.abs_diff(sent) < 30, "{ts}");
    assert_eq!(
        delivered.header("webhook-signature"),
        Some(expected_signature(&key, id, ts, &delivered.body).as_str())
    );
    assert_ne!(
        delivered.header("webhook-signature"),
        Some(expected_signature(&[8u8; 32], id, ts, &delivered.body).as_str()),
        "another key does not verify"
    );
    let event = delivered.json();
    assert_eq!(event["type"], "channel.release.flipped");
    assert_eq!(event["data"]["channel"], "prod");
    assert_eq!(event["data"]["release"]["id"], first["current"]["id"]);

    // A failed pre-build is told too; the build itself never waited for the receiver.
    sink.hold();
    h.velox
        .script([Behavior::Fail("plugin does not compile".into())]);
    proxy.set_latest(HTTP, "v5.2.8");
    prebuild_state(&h, "prod", "failed").await;
    sink.release();
    let got = sink.wait_for(3, Duration::from_secs(15)).await;
    let last = got
        .iter()
        .map(|r| r.json())
        .find(|e| e["type"] == "channel.prebuild.failed")
        .unwrap_or_else(|| {
            panic!(
                "no failure told: {:?}",
                got.iter().map(|r| r.json()).collect::<Vec<_>>()
            )
        });
    assert!(last["data"]["error"]
        .as_str()
        .is_some_and(|e| e.contains("does not compile")));
    assert_eq!(
        metric(
            h.server(),
            "velox_channel_webhooks_total{outcome=\"retried\"}"
        )
        .await,
        1.0
    );
    // Counted once the receiver's answer is read, which can be just after the sink saw it.
    assert!(
        eventually(Duration::from_secs(10), async || metric(
            h.server(),
            "velox_channel_webhooks_total{outcome=\"delivered\"}"
        )
        .await
            >= 2.0)
        .await,
        "deliveries not counted"
    );
}

#[actix_web::test]
async fn a_prebuild_waits_behind_user_builds() {
    let proxy = GoProxy::start();
    proxy.set_latest(HTTP, "v5.2.7");
    let h = start_with(&proxy, "", |o| {
        o.env("VELOX_CACHE_MAX_CONCURRENT_BUILDS", "1")
    });
    let first = flipped(&h, "prod", None).await;
    let calls = h.velox.calls();

    // A user's build holds the only slot.
    h.velox.hold(true);
    let url = h.builds_url();
    let user =
        actix_web::rt::spawn(async move { post_json(&url, &distinct_request(77), &[]).await });
    let started = eventually(Duration::from_secs(10), async || h.velox.in_progress() == 1).await;
    assert!(started);
    proxy.set_latest(HTTP, "v5.2.8");
    // Two polls later the pre-build has resolved the new release but called Velox for nothing.
    prebuild_state(&h, "prod", "building").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        h.velox.calls(),
        calls + 1,
        "only the user's build reached Velox"
    );
    assert_eq!(
        channel(&h, "prod").await["current"]["id"],
        first["current"]["id"]
    );

    // The user's build ends; the pre-build follows.
    h.velox.hold(false);
    let answered = user.await.expect("the user's request");
    assert_eq!(answered.status, 200);
    let second = flipped(&h, "prod", first["current"]["id"].as_str()).await;
    assert_eq!(second["current"]["resolved"][HTTP], "v5.2.8");
    let requests = h.velox.requests();
    let at = |tag: &str| {
        requests
            .iter()
            .position(|r| r["plugins"].to_string().contains(&format!("\"{tag}\"")))
            .unwrap_or_else(|| panic!("no build of {tag}: {requests:?}"))
    };
    let (user_at, prebuild_at) = (at("v5.2.77"), at("v5.2.8"));
    assert!(user_at < prebuild_at, "{requests:?}");
}

/// `PUT /v1/channels/{name}` with `body`; the status.
async fn define(h: &Harness, name: &str, body: &Value) -> u16 {
    client()
        .put(h.server().admin_url(&format!("/v1/channels/{name}")))
        .insert_header(("content-type", "application/json"))
        .send_body(serde_json::to_vec(body).expect("json"))
        .await
        .expect("sent")
        .status()
        .as_u16()
}

/// Garbage over every file of the sled index under `data_dir`.
fn damage_index(data_dir: &Path) {
    fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                files(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut found = Vec::new();
    files(&data_dir.join("meta"), &mut found);
    assert!(!found.is_empty(), "no sled files");
    for f in &found {
        let len = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0).max(4096);
        let garbage: Vec<u8> = (0..len).map(|i| (i * 7919 % 251) as u8).collect();
        std::fs::write(f, garbage).expect("overwrite");
    }
}

/// A damaged index is set aside and rebuilt from the manifests (docs/storage.md); the channels
/// defined through the API, every channel's releases and the pins made by hand come back from
/// their copies beside it (docs/channels.md, "Crash safety"), so nothing is built again.
#[actix_web::test]
async fn an_api_channel_its_release_and_a_manual_pin_survive_a_damaged_index() {
    let proxy = GoProxy::start();
    proxy.set_latest(HTTP, "v5.2.7");
    let mut h = start(&proxy, "");
    let prod = flipped(&h, "prod", None).await;
    let workers = json!({
        "rr_version": "v2025.1.2",
        "plugins": [{"module_name": HTTP, "tag": "v5.2.7"}],
        "platforms": ["linux/amd64"],
        "keep": 1
    });
    assert_eq!(define(&h, "workers", &workers).await, 201);
    let built = flipped(&h, "workers", None).await;
    let key = built["current"]["binaries"]["linux/amd64"]["key"]
        .as_str()
        .expect("key")
        .to_owned();
    let user = h.post(&distinct_request(3)).await;
    assert_eq!(user.header("x-cache-status"), Some("MISS"));
    let user_key = user.header("x-velox-cache-key").expect("key").to_owned();
    let pin_url = h.server().admin_url(&format!("/v1/cache/{user_key}/pin"));
    assert_eq!(post_json(&pin_url, &json!({}), &[]).await.status, 200);
    let entries = h.admin_json("/v1/cache/stats").await["entries"].clone();
    let calls = h.velox.calls();

    h.stop();
    damage_index(&h.opts.data_dir);
    h.restart();
    let log = h.server().log_text();
    assert!(log.contains("rebuilding from the manifests"), "{log}");
    assert!(
        log.contains("restored 2 channels and 1 manual pins"),
        "{log}"
    );
    // The manifests are re-indexed in the background.
    assert!(
        eventually(Duration::from_secs(20), async || {
            h.admin_json("/v1/cache/stats").await["entries"] == entries
        })
        .await,
        "the entries did not come back"
    );
    let back = channel(&h, "workers").await;
    assert_eq!(back["origin"], "api", "{back}");
    assert_eq!(back["current"]["id"], built["current"]["id"], "{back}");
    assert_eq!(
        channel(&h, "prod").await["current"]["id"],
        prod["current"]["id"]
    );
    let r = get(&h.url("/_velox/v1/channels/workers/linux/amd64"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-velox-cache-key"), Some(key.as_str()));
    let pinned = get(&h.server().admin_url(&format!("/v1/cache/{key}")), &[])
        .await
        .json();
    assert_eq!(pinned["pins"], json!(["channel:workers"]), "{pinned}");
    let manual = get(&h.server().admin_url(&format!("/v1/cache/{user_key}")), &[])
        .await
        .json();
    assert_eq!(manual["pins"], json!(["manual"]), "{manual}");
    assert_eq!(h.velox.calls(), calls, "something was built again");

    // A channel deleted through the API stays deleted after the next damage.
    let deleted = client()
        .delete(h.server().admin_url("/v1/channels/workers"))
        .send()
        .await
        .expect("sent");
    assert_eq!(deleted.status().as_u16(), 204);
    h.stop();
    damage_index(&h.opts.data_dir);
    h.restart();
    assert_eq!(
        get(&h.url("/_velox/v1/channels/workers"), &[]).await.status,
        404
    );
}

/// A channel's platforms build at once, as many as `prebuild.max_concurrent` allows and never
/// more (docs/channels.md, "Pre-building").
#[actix_web::test]
async fn a_channels_platforms_build_at_once_within_prebuild_max_concurrent() {
    let proxy = GoProxy::start();
    proxy.set_latest(HTTP, "v5.2.7");
    let h = start(&proxy, "\n[prebuild]\nmax_concurrent = 2\n");
    flipped(&h, "prod", None).await;
    h.velox.hold(true);
    let workers = json!({
        "rr_version": "v2025.1.2",
        "plugins": [{"module_name": HTTP, "tag": "v5.2.7"}],
        "platforms": ["linux/amd64", "linux/arm64", "darwin/arm64"],
    });
    assert_eq!(define(&h, "workers", &workers).await, 201);
    assert!(
        eventually(Duration::from_secs(20), async || h.velox.in_progress() == 2).await,
        "two platforms were not building at once: {} in progress",
        h.velox.in_progress()
    );
    // The third waits for a slot, however long the first two take.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        h.velox.in_progress(),
        2,
        "more builds than prebuild.max_concurrent"
    );
    h.velox.hold(false);
    let released = flipped(&h, "workers", None).await;
    let binaries = released["current"]["binaries"].as_object().map(|b| b.len());
    assert_eq!(binaries, Some(3), "{released}");
}

/// A webhook event still pending when the server stops is sent by the next start, under its
/// own `webhook-id` and body (docs/webhooks.md, "Delivery guarantees").
#[actix_web::test]
async fn a_webhook_event_pending_at_a_stop_is_delivered_after_the_restart() {
    use support::webhook_sink::WebhookSink;
    let down = WebhookSink::start();
    down.fail_next(1000, 503);
    let up = WebhookSink::start();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let proxy = GoProxy::start();
    proxy.set_latest(HTTP, "v5.2.7");
    let mut h = start_with(&proxy, "", |o| {
        o.env("VELOX_CACHE_PREBUILD__WEBHOOK_URL", &down.url())
            .env("VELOX_CACHE_PREBUILD__WEBHOOK_SECRET", secret)
    });
    flipped(&h, "prod", None).await;
    let refused = down.wait_for(1, Duration::from_secs(15)).await;
    let id = refused[0].header("webhook-id").expect("id").to_owned();
    assert_eq!(refused[0].json()["type"], "channel.release.flipped");
    h.stop();

    h.restart_with(|o| o.env("VELOX_CACHE_PREBUILD__WEBHOOK_URL", &up.url()));
    let got = up.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(got[0].header("webhook-id"), Some(id.as_str()), "{got:?}");
    assert_eq!(got[0].body, refused[0].body);
    let log = h.server().log_text();
    assert!(
        log.contains("1 events left pending by the last run are sent again"),
        "{log}"
    );
    // Delivered: not kept for a third start.
    assert!(
        eventually(Duration::from_secs(10), async || {
            std::fs::read_dir(h.opts.data_dir.join("webhooks"))
                .map(|d| d.count() == 0)
                .unwrap_or(false)
        })
        .await
    );
}
