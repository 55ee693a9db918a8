//! The build API and artifact route through real HTTP against the real binary and a stand-in
//! Velox: hits and misses, headers, ranges, coalescing, keys, force_rebuild, disconnects.

mod support;

use std::time::Duration;

use base64::Engine;
use serde_json::json;
use support::*;

fn velox_file(h: &Harness, resp: &Resp) -> Vec<u8> {
    // The stand-in answers the path it wrote; the bytes served must be exactly that file.
    let mut found = None;
    for entry in walk_files(&h.velox.dir) {
        let bytes = std::fs::read(&entry).expect("read velox output");
        if bytes == resp.body {
            found = Some(bytes);
        }
    }
    found.expect("the served bytes are a file Velox wrote")
}

#[actix_web::test]
async fn miss_then_hit_with_every_header() {
    let h = Harness::start();
    let req = build_request("linux", "amd64");

    let miss = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(miss.status, 200, "{:?}", miss.body);
    let bytes = velox_file(&h, &miss);
    let digest = sha256_hex(&bytes);
    assert_eq!(miss.header("x-cache-status"), Some("MISS"));
    assert_eq!(miss.header("etag"), Some(format!("\"{digest}\"").as_str()));
    assert_eq!(
        miss.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(
        miss.header("content-length"),
        Some(bytes.len().to_string().as_str())
    );
    assert_eq!(miss.header("accept-ranges"), Some("bytes"));
    assert_eq!(
        miss.header("content-disposition"),
        Some("attachment; filename=\"roadrunner-linux-amd64\"")
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(hex::decode(&digest).expect("hex"));
    assert_eq!(
        miss.header("repr-digest"),
        Some(format!("sha-256=:{b64}:").as_str())
    );
    assert_eq!(
        miss.header("content-location"),
        Some(format!("/_velox/v1/artifacts/{digest}").as_str())
    );
    assert_eq!(
        miss.header("x-build-request-id"),
        Some("b66d5617-64dd-419b-a68b-b002938320ab")
    );
    let build_time: f64 = miss
        .header("x-build-time")
        .expect("x-build-time")
        .parse()
        .expect("decimal");
    assert!(build_time >= 0.0);
    let key = miss.header("x-velox-cache-key").expect("key").to_owned();
    assert_eq!(key.len(), 64);
    assert!(miss.header("last-modified").is_some());
    assert!(miss.header("x-cache-age").is_none());

    let hit = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    assert_eq!(hit.body, miss.body);
    assert_eq!(hit.header("etag"), miss.header("etag"));
    assert_eq!(hit.header("x-velox-cache-key"), Some(key.as_str()));
    let age: u64 = hit
        .header("x-cache-age")
        .expect("x-cache-age")
        .parse()
        .expect("seconds");
    assert!(age < 60);
    assert!(hit.header("x-build-time").is_none());
    assert_eq!(h.velox.calls(), 1);

    // The immutable URL serves the same bytes.
    let art = get(
        &h.url(miss.header("content-location").expect("location")),
        &[],
    )
    .await;
    assert_eq!(art.status, 200);
    assert_eq!(art.body, bytes);
    assert_eq!(
        art.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(art.header("etag"), miss.header("etag"));
    assert_eq!(art.header("last-modified"), miss.header("last-modified"));

    // Velox v3 refuses windows targets, and its message reaches the client.
    let mut win_req = build_request("windows", "amd64");
    let refused = post_json(&h.builds_url(), &win_req, &[]).await;
    let v = refused.assert_error(502, "build_failed");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("does not support Windows targets")),
        "{v}"
    );
    // A Velox that does build them (scripted: v3 never does) gets its binary named .exe. The
    // failure above is remembered, so this one skips the memory.
    let exe = h.velox.dir.join("windows-build").join("rr");
    std::fs::create_dir_all(exe.parent().expect("dir")).expect("dir");
    std::fs::write(&exe, vec![7u8; 4096]).expect("write");
    h.velox.script([Behavior::Path(exe.display().to_string())]);
    win_req["force_rebuild"] = json!(true);
    let win = post_json(&h.builds_url(), &win_req, &[]).await;
    assert_eq!(win.status, 200, "{}", String::from_utf8_lossy(&win.body));
    assert_eq!(
        win.header("content-disposition"),
        Some("attachment; filename=\"roadrunner-windows-amd64.exe\"")
    );
    let mut bare = build_request("linux", "amd64");
    bare.as_object_mut()
        .expect("object")
        .remove("target_platform");
    bare.as_object_mut().expect("object").remove("request_id");
    let bare = post_json(&h.builds_url(), &bare, &[]).await;
    assert_eq!(bare.status, 200);
    assert_eq!(
        bare.header("content-disposition"),
        Some("attachment; filename=\"roadrunner\"")
    );
    // No request id: velox-cache made one up for Velox v3, which requires it, and says which.
    let made_up = bare
        .header("x-build-request-id")
        .expect("an id was made up");
    let uuid = uuid::Uuid::parse_str(made_up).expect("a UUID");
    assert_eq!(uuid.get_version_num(), 4);
    assert_eq!(uuid.hyphenated().to_string(), made_up, "canonical form");
    assert_eq!(
        h.velox.requests().last().expect("Velox called")["request_id"],
        made_up
    );
    assert_eq!(h.velox.calls(), 4);
}

#[actix_web::test]
async fn ranges_conditionals_and_head() {
    let h = Harness::start();
    let req = build_request("linux", "amd64");
    let full = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(full.status, 200);
    let n = full.body.len();
    let etag = full.header("etag").expect("etag").to_owned();
    let last_modified = full.header("last-modified").expect("date").to_owned();
    let art = h.url(full.header("content-location").expect("location"));
    let builds = h.builds_url();

    for url in [&builds, &art] {
        let ranged = |range: &'static str, extra: Vec<(&'static str, String)>| {
            let url = url.clone();
            let req = req.clone();
            async move {
                let mut headers = vec![("range", range.to_string())];
                headers.extend(extra);
                let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                if url.ends_with("/builds") {
                    post_json(&url, &req, &hs).await
                } else {
                    get(&url, &hs).await
                }
            }
        };
        // Middle.
        let r = ranged("bytes=100-1123", vec![]).await;
        assert_eq!(r.status, 206, "{url}");
        assert_eq!(r.body, full.body[100..1124]);
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes 100-1123/{n}").as_str())
        );
        assert_eq!(r.header("content-length"), Some("1024"));
        assert_eq!(r.header("etag"), Some(etag.as_str()));
        // Suffix.
        let r = ranged("bytes=-500", vec![]).await;
        assert_eq!(r.status, 206);
        assert_eq!(r.body, full.body[n - 500..]);
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {}-{}/{n}", n - 500, n - 1).as_str())
        );
        // Open-ended.
        let r = ranged("bytes=200000-", vec![]).await;
        assert_eq!(r.status, 206);
        assert_eq!(r.body, full.body[200000..]);
        // If-Range with the ETag: the range applies; with the date too.
        let r = ranged("bytes=0-9", vec![("if-range", etag.clone())]).await;
        assert_eq!(r.status, 206);
        assert_eq!(r.body, full.body[..10]);
        let r = ranged("bytes=0-9", vec![("if-range", last_modified.clone())]).await;
        assert_eq!(r.status, 206);
        // Stale If-Range: the whole binary.
        let r = ranged("bytes=0-9", vec![("if-range", "\"0000\"".to_string())]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, full.body);
        let r = ranged(
            "bytes=0-9",
            vec![("if-range", "Tue, 01 Jan 2019 00:00:00 GMT".to_string())],
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), n);
        // Unsatisfiable.
        let r = ranged("bytes=999999999-", vec![]).await;
        assert_eq!(r.status, 416);
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes */{n}").as_str())
        );
    }

    // HEAD: the headers, no body.
    let r = head(&art, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(n.to_string().as_str()));
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert!(r.body.is_empty());
    // If-None-Match: 304, also in a list and weak.
    for inm in [etag.clone(), format!("\"x\", W/{etag}"), "*".to_string()] {
        let r = get(&art, &[("if-none-match", &inm)]).await;
        assert_eq!(r.status, 304, "{inm}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), Some(etag.as_str()));
    }
    let r = get(&art, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(r.status, 200);

    // Unknown or malformed digests are 404 JSON.
    get(
        &h.url(&format!("/_velox/v1/artifacts/{}", "0".repeat(64))),
        &[],
    )
    .await
    .assert_error(404, "not_found");
    get(&h.url("/_velox/v1/artifacts/xyz"), &[])
        .await
        .assert_error(404, "not_found");
}

#[actix_web::test]
async fn head_does_not_read_the_file() {
    // Without the compressor, which would read the blob in the background as the signature does.
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_COMPRESSION__ENABLED", "false"));
    h.velox.set_size(32 * 1024 * 1024);
    let full = post_json(&h.builds_url(), &build_request("linux", "amd64"), &[]).await;
    assert_eq!(full.status, 200);
    let art = h.url(full.header("content-location").expect("location"));
    // The build's own signature reads the whole file once, in the background, right after the
    // answer: let it finish, so that what is measured below is the HEADs alone.
    let digest = sha256_hex(&full.body);
    let signature = h
        .opts
        .data_dir
        .join(format!("signatures/{}/{digest}.minisig", &digest[..2]));
    let signed = eventually(Duration::from_secs(30), async || signature.exists()).await;
    assert!(signed, "the build was signed");
    let before = metric(h.server(), "velox_download_bytes_total").await;
    for _ in 0..20 {
        let r = head(&art, &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-length"),
            Some((32 * 1024 * 1024).to_string().as_str())
        );
    }
    let after = metric(h.server(), "velox_download_bytes_total").await;
    assert_eq!(before, after, "HEAD read blob bytes");
    // Reading the process's own I/O counters: 20 HEADs of 32 MiB read far less than one MiB.
    let io = std::fs::read_to_string(format!("/proc/{}/io", h.server().pid())).unwrap_or_default();
    let rchar = |io: &str| -> u64 {
        io.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let before_io = rchar(&io);
    for _ in 0..5 {
        head(&art, &[]).await;
    }
    let io = std::fs::read_to_string(format!("/proc/{}/io", h.server().pid())).unwrap_or_default();
    if before_io > 0 {
        assert!(
            rchar(&io) - before_io < 1024 * 1024,
            "HEAD read {} bytes",
            rchar(&io) - before_io
        );
    }
}

#[actix_web::test]
async fn fifty_concurrent_identical_misses_call_velox_once() {
    let h = Harness::start();
    h.velox.set_delay(Duration::from_millis(800));
    let req = build_request("linux", "arm64");
    let url = h.builds_url();
    let all = futures_util::future::join_all((0..50).map(|_| post_json(&url, &req, &[]))).await;
    assert_eq!(h.velox.calls(), 1);
    let first = &all[0].body;
    for r in &all {
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-cache-status"), Some("MISS"));
        assert_eq!(&r.body, first);
    }
    assert!(metric(h.server(), "velox_builds_coalesced_total").await >= 1.0);
}

#[actix_web::test]
async fn key_covers_every_shaping_field() {
    let h = Harness::start();
    let base = build_request("linux", "amd64");
    let url = h.builds_url();
    assert_eq!(post_json(&url, &base, &[]).await.status, 200);
    let mut reordered = base.clone();
    reordered["plugins"]
        .as_array_mut()
        .expect("array")
        .reverse();
    reordered["request_id"] = json!("");
    let r = post_json(&url, &reordered, &[]).await;
    assert_eq!(r.header("x-cache-status"), Some("HIT"));
    assert_eq!(h.velox.calls(), 1);

    let variants: Vec<(&str, serde_json::Value)> = vec![
        ("race", json!({"race": true})),
        ("debug", json!({"debug": true})),
        (
            "replace",
            json!({"replaces": [{"old": "github.com/a/b", "new": "github.com/c/b@v1.2.3"}]}),
        ),
        (
            "exclude",
            json!({"excludes": [{"module": "github.com/x/y", "version": "v0.1.0"}]}),
        ),
        (
            "platform",
            json!({"target_platform": {"os": "darwin", "arch": "arm64"}}),
        ),
        ("version", json!({"rr_version": "v2025.1.3"})),
    ];
    for (i, (name, patch)) in variants.into_iter().enumerate() {
        let mut v = base.clone();
        for (k, val) in patch.as_object().expect("object") {
            v[k] = val.clone();
        }
        let r = post_json(&url, &v, &[]).await;
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.header("x-cache-status"), Some("MISS"), "{name}");
        assert_eq!(h.velox.calls(), 2 + i, "{name}");
    }
}

#[actix_web::test]
async fn force_rebuild_replaces_the_entry() {
    let h = Harness::start();
    let req = build_request("linux", "amd64");
    let first = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(first.status, 200);
    let mut forced = req.clone();
    forced["force_rebuild"] = json!(true);
    let second = post_json(&h.builds_url(), &forced, &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-cache-status"), Some("MISS"));
    assert_eq!(h.velox.calls(), 2);
    assert_eq!(h.velox.requests()[1]["force_rebuild"], json!(true));
    // The stand-in's rebuild gives new bytes; the entry now serves them.
    assert_ne!(second.body, first.body);
    let third = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(third.header("x-cache-status"), Some("HIT"));
    assert_eq!(third.body, second.body);
    assert_eq!(h.velox.calls(), 2);
    // The old blob had no other entry: it is gone.
    get(
        &h.url(first.header("content-location").expect("location")),
        &[],
    )
    .await
    .assert_error(404, "not_found");
}

#[actix_web::test]
async fn a_build_survives_its_client() {
    let h = Harness::start();
    h.velox.set_delay(Duration::from_millis(1500));
    let req = build_request("linux", "amd64");
    let url = h.builds_url();
    // The client gives up long before the build ends.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(300), post_json(&url, &req, &[])).await;
    assert!(
        gave_up.is_err(),
        "the build answered too fast for this test"
    );
    assert!(
        eventually(Duration::from_secs(10), async || {
            metric(h.server(), "velox_builds_total{status=\"success\"}").await >= 1.0
        })
        .await,
        "the build did not finish"
    );
    let r = post_json(&url, &req, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-cache-status"), Some("HIT"));
    assert_eq!(h.velox.calls(), 1);
    // velox-cache's own call to Velox was not cut with its client: Velox built once, to the end.
    assert_eq!(h.velox.builds(), 1);
    assert_eq!(h.velox.killed(), 0);
}

#[actix_web::test]
async fn large_artifacts_are_served_exactly() {
    // Past the size at which bodies are sent from a memory map, with ranges that cross chunks.
    let h = Harness::start();
    h.velox.set_size(5 * 1024 * 1024 + 12345);
    let full = post_json(&h.builds_url(), &build_request("linux", "amd64"), &[]).await;
    assert_eq!(full.status, 200);
    let bytes = velox_file(&h, &full);
    assert_eq!(
        sha256_hex(&bytes),
        full.header("etag").expect("etag").trim_matches('"')
    );
    let art = h.url(full.header("content-location").expect("location"));
    assert_eq!(get(&art, &[]).await.body, bytes);
    let n = bytes.len();
    for (start, end) in [
        (0, 65535),
        (65_000, 70_000),
        (1_000_000, 3_500_000),
        (n - 70_000, n - 1),
    ] {
        let r = get(&art, &[("range", &format!("bytes={start}-{end}"))]).await;
        assert_eq!(r.status, 206);
        assert_eq!(r.body, bytes[start..=end], "{start}-{end}");
    }
    let r = get(&art, &[("range", "bytes=5000000-")]).await;
    assert_eq!(r.body, bytes[5_000_000..]);
}
