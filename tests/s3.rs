//! Replicas sharing a bucket (docs/object-storage.md), through real HTTP: two or three velox-cache
//! processes (the real binary), one stand-in Velox, and moto's S3 server as the bucket.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/moto.rs"]
mod moto;
mod support;

use std::time::Duration;

use cluster::Cluster;
use serde_json::json;
use support::*;

fn builds(s: &Server) -> String {
    s.url("/_velox/v1/builds")
}

async fn read_bytes(s: &Server) -> f64 {
    metric(s, "velox_bucket_read_bytes_total").await
}

#[actix_web::test]
async fn a_miss_on_one_replica_is_a_hit_on_another() {
    let mut c = Cluster::start("one/");
    let (a, b) = (c.replica(), c.replica());
    let req = build_request("linux", "amd64");

    let miss = post_json(&builds(&a), &req, &[]).await;
    assert_eq!(miss.status, 200, "{:?}", miss.body);
    assert_eq!(miss.header("x-cache-status"), Some("MISS"));
    let digest = sha256_hex(&miss.body);
    let key = miss.header("x-velox-cache-key").expect("key").to_owned();
    // MISS is answered only once the bucket holds the blob and the manifest.
    assert_eq!(
        c.objects(&format!("blobs/sha256/{}/", &digest[..2])),
        vec![(
            format!("blobs/sha256/{}/{digest}", &digest[..2]),
            miss.body.len() as u64
        )]
    );
    let manifests = c.objects("manifests/");
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    assert_eq!(
        manifests[0].0,
        format!("manifests/{}/{key}.json", &key[..2])
    );
    // The build lock went with the build.
    assert!(
        eventually(Duration::from_secs(10), async || c
            .objects("locks/")
            .is_empty())
        .await,
        "the build lock stayed: {:?}",
        c.objects("locks/")
    );

    let hit = post_json(&builds(&b), &req, &[]).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    assert_eq!(hit.body, miss.body);
    assert_eq!(hit.header("etag"), miss.header("etag"));
    assert_eq!(hit.header("last-modified"), miss.header("last-modified"));
    assert_eq!(
        hit.header("content-location"),
        miss.header("content-location")
    );
    assert!(hit.header("x-cache-age").is_some());
    assert_eq!(c.velox.calls(), 1, "the second replica called Velox");
    assert!(read_bytes(&b).await >= miss.body.len() as f64);

    // The whole download filled B's local tier: B now serves the key without the bucket.
    let entry = b.admin_url(&format!("/v1/cache/{key}"));
    assert!(
        eventually(Duration::from_secs(10), async || get(&entry, &[])
            .await
            .status
            == 200)
        .await,
        "B's local tier was not filled"
    );
    assert!(
        eventually(Duration::from_secs(10), async || {
            metric(&b, "velox_bucket_fills_total").await == 1.0
        })
        .await
    );
    let before = read_bytes(&b).await;
    let local = post_json(&builds(&b), &req, &[]).await;
    assert_eq!(local.header("x-cache-status"), Some("HIT"));
    assert_eq!(local.body, miss.body);
    assert_eq!(local.header("last-modified"), miss.header("last-modified"));
    assert_eq!(read_bytes(&b).await, before, "a local hit read the bucket");
}

#[actix_web::test]
async fn concurrent_misses_across_replicas_build_once() {
    let mut c = Cluster::start("many/");
    let (a, b) = (c.replica(), c.replica());
    c.velox.set_delay(Duration::from_millis(1500));
    let req = build_request("linux", "arm64");
    let urls: Vec<String> = (0..20)
        .map(|i| builds(if i % 2 == 0 { &a } else { &b }))
        .collect();
    let answers =
        futures_util::future::join_all(urls.iter().map(|u| post_json(u, &req, &[]))).await;
    for r in &answers {
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            r.body, answers[0].body,
            "two different binaries were served"
        );
        assert_eq!(r.header("etag"), answers[0].header("etag"));
    }
    assert_eq!(c.velox.builds(), 1, "Velox built more than once");
    assert_eq!(c.velox.calls(), 1);
    // The replica that lost the race for the lock waited for the other's build.
    let waits = metric(&a, "velox_bucket_lock_waits_total").await
        + metric(&b, "velox_bucket_lock_waits_total").await;
    assert_eq!(waits, 1.0);
}

#[actix_web::test]
async fn a_fresh_replica_serves_ranges_from_a_verified_fill() {
    let mut c = Cluster::start("ranges/");
    c.velox.set_size(1024 * 1024 + 17);
    let a = c.replica();
    let miss = post_json(&builds(&a), &build_request("linux", "amd64"), &[]).await;
    assert_eq!(miss.status, 200);
    let location = miss
        .header("content-location")
        .expect("location")
        .to_owned();
    let etag = miss.header("etag").expect("etag").to_owned();
    drop(a);

    // Only the bucket has the blob now. A range is served from a verified copy: the fresh
    // replica fills its tier with the whole blob (hashed), then answers from it.
    let fresh = c.replica();
    let url = fresh.url(&location);
    let head = support::head(&url, &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(miss.body.len().to_string().as_str())
    );
    assert_eq!(
        head.header("content-disposition"),
        Some("attachment; filename=\"roadrunner-linux-amd64\"")
    );
    let manifest_bytes = read_bytes(&fresh).await;
    assert!(
        manifest_bytes < 4096.0,
        "HEAD read the blob: {manifest_bytes}"
    );

    let part = get(&url, &[("range", "bytes=1000-1999")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(&part.body[..], &miss.body[1000..2000]);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 1000-1999/{}", miss.body.len()).as_str())
    );
    assert_eq!(part.header("etag"), Some(etag.as_str()));
    assert_eq!(metric(&fresh, "velox_bucket_fills_total").await, 1.0);
    let read = read_bytes(&fresh).await;
    assert!(
        read >= miss.body.len() as f64 && read < miss.body.len() as f64 + 2.0 * 4096.0,
        "{read} bytes read"
    );

    let tail = get(&url, &[("range", "bytes=-100"), ("if-range", &etag)]).await;
    assert_eq!(tail.status, 206);
    assert_eq!(&tail.body[..], &miss.body[miss.body.len() - 100..]);
    assert_eq!(read_bytes(&fresh).await, read, "read from the local tier");

    let unknown = format!("/_velox/v1/artifacts/{}", "0".repeat(64));
    get(&fresh.url(&unknown), &[])
        .await
        .assert_error(404, "not_found");

    // Through the build API too: a Range on a bucket-only hit waits for the verified fill.
    let other = c.replica();
    let part = post_json(
        &builds(&other),
        &build_request("linux", "amd64"),
        &[("range", "bytes=5-9")],
    )
    .await;
    assert_eq!(part.status, 206);
    assert_eq!(part.header("x-cache-status"), Some("HIT"));
    assert_eq!(&part.body[..], &miss.body[5..10]);
    assert_eq!(metric(&other, "velox_bucket_fills_total").await, 1.0);
    let again = post_json(
        &builds(&other),
        &build_request("linux", "amd64"),
        &[("range", "bytes=10-19")],
    )
    .await;
    assert_eq!(&again.body[..], &miss.body[10..20]);
    assert_eq!(again.header("x-cache-status"), Some("HIT"));
    assert_eq!(c.velox.calls(), 1);
}

#[actix_web::test]
async fn a_killed_lock_holder_is_taken_over_after_the_lease() {
    let mut c = Cluster::start("lease/").with("VELOX_CACHE_STORAGE__S3__LOCK_LEASE", "2s");
    let a = c.replica();
    let b = c.replica();
    // A's call to Velox never ends; the next one builds.
    c.velox
        .script([Behavior::Hang(Duration::from_secs(120)), Behavior::Build]);
    let req = build_request("darwin", "arm64");
    let url = builds(&a);
    let r = req.clone();
    actix_web::rt::spawn(async move {
        let _ = client().post(url).send_json(&r).await;
    });
    assert!(
        eventually(Duration::from_secs(30), async || c.velox.calls() == 1).await,
        "A never called Velox"
    );
    assert_eq!(c.objects("locks/").len(), 1, "A holds no lock");
    a.kill();

    let started = std::time::Instant::now();
    let built = post_json(&builds(&b), &req, &[]).await;
    assert_eq!(
        built.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&built.body)
    );
    assert_eq!(built.header("x-cache-status"), Some("MISS"));
    assert_eq!(c.velox.calls(), 2);
    assert_eq!(metric(&b, "velox_bucket_lock_waits_total").await, 1.0);
    assert_eq!(metric(&b, "velox_bucket_lock_takeovers_total").await, 1.0);
    println!("B built after {:?}", started.elapsed());
    assert!(
        eventually(Duration::from_secs(10), async || c
            .objects("locks/")
            .is_empty())
        .await,
        "B's lock stayed"
    );
}

#[actix_web::test]
async fn with_the_bucket_down_local_hits_are_served_and_misses_are_503() {
    let mut c = Cluster::start("down/");
    let a = c.replica();
    let req = build_request("linux", "amd64");
    let miss = post_json(&builds(&a), &req, &[]).await;
    assert_eq!(miss.status, 200);
    let ready = get(&a.admin_url("/readyz"), &[]).await;
    assert_eq!(ready.json()["bucket"], "ok", "{:?}", ready.json());

    // Every bucket counter is exported from the start, at 0 until something happens.
    assert_eq!(
        metric(&a, "velox_bucket_errors_total{op=\"presign\"}").await,
        0.0
    );
    assert_eq!(
        metric(&a, "velox_bucket_errors_total{op=\"manifest_get\"}").await,
        0.0
    );

    c.moto.stop();
    let hit = post_json(&builds(&a), &req, &[]).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    assert_eq!(hit.body, miss.body);
    let artifact = get(&a.url(miss.header("content-location").expect("cl")), &[]).await;
    assert_eq!(artifact.status, 200);

    let other = post_json(&builds(&a), &build_request("darwin", "arm64"), &[]).await;
    other.assert_error(503, "storage_unavailable");
    assert!(other.header("retry-after").is_some());
    assert_eq!(c.velox.calls(), 1, "Velox was called without a bucket");
    let unknown = format!("/_velox/v1/artifacts/{}", "1".repeat(64));
    get(&a.url(&unknown), &[])
        .await
        .assert_error(503, "storage_unavailable");

    let key = miss.header("x-velox-cache-key").expect("key");
    let del = client()
        .delete(a.admin_url(&format!("/v1/cache/{key}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(del.status(), 503, "deleted without reaching the bucket");
    let ready = get(&a.admin_url("/readyz"), &[]).await;
    assert_eq!(ready.status, 200, "local hits are still served");
    assert_eq!(ready.json()["bucket"], "unreachable");
    assert!(metric(&a, "velox_bucket_errors_total{op=\"manifest_get\"}").await >= 1.0);
}

/// Peak resident memory of `pid` in KiB since the last reset.
fn peak_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

fn reset_peak(pid: i32) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak RSS");
    peak_kib(pid)
}

#[actix_web::test]
async fn a_large_artifact_goes_up_in_parts_with_bounded_memory() {
    let mut c = Cluster::start("large/");
    let (a, b) = (c.replica(), c.replica());
    // Warm both replicas' workers and allocators on a small build.
    let small = post_json(&builds(&a), &build_request("linux", "386"), &[]).await;
    assert_eq!(small.status, 200);
    assert_eq!(
        post_json(&builds(&b), &build_request("linux", "386"), &[])
            .await
            .status,
        200
    );
    let size = 64 * 1024 * 1024 + 123;
    c.velox.set_size(size);
    let req = build_request("linux", "amd64");

    // A one-byte range, so that A's answer is not a 64 MiB memory map: what is measured is the
    // copy into the data dir and the upload.
    let before = reset_peak(a.pid());
    let miss = post_json(&builds(&a), &req, &[("range", "bytes=0-0")]).await;
    assert_eq!(
        miss.status,
        206,
        "{:?}",
        String::from_utf8_lossy(&miss.body)
    );
    let upload_peak = peak_kib(a.pid()).saturating_sub(before);
    let digest = miss
        .header("etag")
        .expect("etag")
        .trim_matches('"')
        .to_owned();
    assert_eq!(
        c.objects(&format!("blobs/sha256/{}/{digest}", &digest[..2])),
        vec![(
            format!("blobs/sha256/{}/{digest}", &digest[..2]),
            size as u64
        )]
    );
    assert_eq!(
        metric(&a, "velox_bucket_multipart_uploads_total").await,
        1.0
    );

    // B streams it from the bucket (and fills its own tier on the way).
    let before = reset_peak(b.pid());
    let hit = post_json(&builds(&b), &req, &[]).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    assert_eq!(hit.body.len(), size);
    assert_eq!(sha256_hex(&hit.body), digest);
    let download_peak = peak_kib(b.pid()).saturating_sub(before);
    println!("64 MiB: upload peak +{upload_peak} KiB, bucket download peak +{download_peak} KiB");
    // Buffering the binary whole would take 64 MiB; parts in flight take a few of 8 MiB.
    assert!(upload_peak < 40 * 1024, "upload RSS grew {upload_peak} KiB");
    assert!(
        download_peak < 16 * 1024,
        "download RSS grew {download_peak} KiB"
    );
}

#[actix_web::test]
async fn redirect_answers_307_to_a_url_that_serves_the_bytes() {
    let mut c = Cluster::start("cdn/").with("VELOX_CACHE_STORAGE__S3__REDIRECT", "true");
    let a = c.replica();
    let miss = post_json(&builds(&a), &build_request("linux", "amd64"), &[]).await;
    assert_eq!(miss.status, 200);
    let location = miss.header("content-location").expect("cl").to_owned();
    let etag = miss.header("etag").expect("etag").to_owned();

    let moved = get(&a.url(&location), &[]).await;
    assert_eq!(moved.status, 307);
    let target = moved.header("location").expect("a Location").to_owned();
    assert!(target.starts_with(&c.moto.endpoint()), "{target}");
    assert!(
        target.contains("X-Amz-Signature="),
        "not presigned: {target}"
    );
    // The presigned URL serves the bytes to a client with no credentials at all.
    let fetched = get(&target, &[]).await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.body, miss.body);

    let same = get(&a.url(&location), &[("if-none-match", &etag)]).await;
    assert_eq!(same.status, 304);
    let head = support::head(&a.url(&location), &[]).await;
    assert_eq!(head.status, 200, "HEAD is answered here");
    let unknown = format!("/_velox/v1/artifacts/{}", "2".repeat(64));
    get(&a.url(&unknown), &[])
        .await
        .assert_error(404, "not_found");

    // A replica that never stored the blob redirects too.
    let fresh = c.replica();
    let moved = get(&fresh.url(&location), &[]).await;
    assert_eq!(moved.status, 307);
    let fetched = get(moved.header("location").expect("location"), &[]).await;
    assert_eq!(fetched.body, miss.body);
}

#[actix_web::test]
async fn force_rebuild_replaces_the_manifest_and_delete_removes_it() {
    let mut c = Cluster::start("force/");
    let (a, b) = (c.replica(), c.replica());
    let req = build_request("linux", "amd64");
    let first = post_json(&builds(&a), &req, &[]).await;
    assert_eq!(first.status, 200);

    let mut forced = req.clone();
    forced["force_rebuild"] = json!(true);
    let second = post_json(&builds(&b), &forced, &[]).await;
    assert_eq!(second.header("x-cache-status"), Some("MISS"));
    assert_ne!(
        second.body, first.body,
        "the stand-in builds new bytes each time"
    );
    assert_eq!(c.velox.calls(), 2);

    // The bucket's manifest names the new build: a fresh replica serves it.
    let third = c.replica();
    let hit = post_json(&builds(&third), &req, &[]).await;
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    assert_eq!(hit.body, second.body);

    // DELETE on one replica removes the bucket's manifest (and that replica's entry); the
    // blobs stay for the bucket's lifecycle rules.
    let key = first.header("x-velox-cache-key").expect("key").to_owned();
    let del = client()
        .delete(a.admin_url(&format!("/v1/cache/{key}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(del.status(), 200);
    assert!(
        c.objects("manifests/").is_empty(),
        "{:?}",
        c.objects("manifests/")
    );
    assert_eq!(c.objects("blobs/").len(), 2);
    let fourth = c.replica();
    let rebuilt = post_json(&builds(&fourth), &req, &[]).await;
    assert_eq!(rebuilt.header("x-cache-status"), Some("MISS"));
    assert_eq!(c.velox.calls(), 3);
    // Deleting what only the bucket has (the new manifest, from a replica without the entry).
    let gone = client()
        .delete(b.admin_url(&format!("/v1/cache/{key}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(gone.status(), 200);
    assert!(c.objects("manifests/").is_empty());
}

#[test]
fn bucket_settings_are_checked_and_credentials_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\naccess_key_id = \"AKIA\"\n",
    )
    .expect("write");
    let conf = file.to_string_lossy().into_owned();
    let (code, _, err) = server::run(&["config", "--config", &conf], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("storage.s3.access_key_id"), "{err}");
    assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");

    let (code, _, err) = server::run(&["config"], &[("VELOX_CACHE_STORAGE__BACKEND", "s3")]);
    assert_eq!(code, 2);
    assert!(err.contains("storage.s3.bucket"), "{err}");

    let (code, _, err) = server::run(
        &["config"],
        &[
            ("VELOX_CACHE_STORAGE__BACKEND", "s3"),
            ("VELOX_CACHE_STORAGE__S3__BUCKET", "b"),
            ("VELOX_CACHE_STORAGE__S3__ENDPOINT", "http://127.0.0.1:9000"),
        ],
    );
    assert_eq!(code, 2);
    assert!(err.contains("storage.s3.allow_http"), "{err}");

    let (code, out, err) = server::run(
        &["config"],
        &[
            ("VELOX_CACHE_STORAGE__BACKEND", "s3"),
            ("VELOX_CACHE_STORAGE__S3__BUCKET", "b"),
            ("VELOX_CACHE_BUILD_TIMEOUT", "1m"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("backend = \"s3\""), "{out}");
}

#[actix_web::test]
async fn a_manifest_whose_blob_expired_is_rebuilt() {
    let mut c = Cluster::start("expired/");
    let a = c.replica();
    let req = build_request("linux", "amd64");
    let first = post_json(&builds(&a), &req, &[]).await;
    assert_eq!(first.status, 200);
    // A lifecycle rule removed the blob but not (yet) the manifest naming it.
    let digest = sha256_hex(&first.body);
    c.moto.delete(&format!(
        "{}blobs/sha256/{}/{digest}",
        c.prefix,
        &digest[..2]
    ));
    assert!(c.objects("blobs/").is_empty());

    let fresh = c.replica();
    let rebuilt = post_json(&builds(&fresh), &req, &[]).await;
    assert_eq!(rebuilt.status, 200);
    assert_eq!(rebuilt.header("x-cache-status"), Some("MISS"));
    assert_eq!(c.velox.calls(), 2);
    // The new manifest replaced the dangling one: another fresh replica hits.
    let hit = post_json(&builds(&c.replica()), &req, &[]).await;
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    assert_eq!(hit.body, rebuilt.body);
}

#[actix_web::test]
async fn evicting_from_the_local_tier_keeps_the_bucket() {
    let mut c = Cluster::start("tier/").with("VELOX_CACHE_CACHE__MAX_ENTRIES", "1");
    let a = c.replica();
    let (one, two) = (
        build_request("linux", "amd64"),
        build_request("linux", "arm64"),
    );
    let first = post_json(&builds(&a), &one, &[]).await;
    assert_eq!(first.header("x-cache-status"), Some("MISS"));
    let second = post_json(&builds(&a), &two, &[]).await;
    assert_eq!(second.header("x-cache-status"), Some("MISS"));
    // The local tier holds one entry; the bucket still holds both.
    let key = first.header("x-velox-cache-key").expect("key");
    let entry = get(&a.admin_url(&format!("/v1/cache/{key}")), &[]).await;
    assert_eq!(entry.status, 404, "the first entry was not evicted locally");
    assert_eq!(
        metric(&a, "velox_cache_evictions_total{reason=\"count\"}").await,
        1.0
    );
    assert_eq!(c.objects("manifests/").len(), 2);
    assert_eq!(c.objects("blobs/").len(), 2);
    // So the evicted key is still a hit, from the bucket, without Velox.
    let again = post_json(&builds(&a), &one, &[]).await;
    assert_eq!(again.header("x-cache-status"), Some("HIT"));
    assert_eq!(again.body, first.body);
    assert_eq!(c.velox.calls(), 2);
}
