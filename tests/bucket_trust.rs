//! The bucket is never trusted (docs/object-storage.md, "What the bucket is trusted with"):
//! replicas (the real binary) against moto's S3 server, the bucket tampered with through the S3
//! API as an attacker, a buggy replica or bit rot would. No client ever receives a complete body
//! whose bytes differ from its `ETag`; damage is quarantined and repaired by a rebuild; locks and
//! manifests with absurd fields neither hold a key forever nor reach a header.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/moto.rs"]
mod moto;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cluster::Cluster;
use serde_json::{json, Value};
use support::*;

const BUCKET_CORRUPT: &str = "velox_cache_store_errors_total{reason=\"corrupt\",tier=\"bucket\"}";

fn builds(s: &Server) -> String {
    s.url("/_velox/v1/builds")
}

fn blob_object(digest: &str) -> String {
    format!("blobs/sha256/{}/{digest}", &digest[..2])
}

fn manifest_object(key: &str) -> String {
    format!("manifests/{}/{key}.json", &key[..2])
}

/// What a real client (curl) got: its exit code (0 only for a complete body), the status, the
/// headers and the bytes it wrote.
struct Fetched {
    exit: i32,
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Fetched {
    /// A complete answer whose bytes are not the ones its `ETag` names: what must never happen.
    fn complete_and_wrong(&self) -> bool {
        let etag = self
            .headers
            .lines()
            .find_map(|l| {
                l.strip_prefix("etag: ")
                    .or_else(|| l.strip_prefix("ETag: "))
            })
            .map(|v| v.trim().trim_matches('"').to_owned());
        self.exit == 0 && self.status == 200 && etag.is_some_and(|e| e != sha256_hex(&self.body))
    }
}

fn curl(dir: &Path, name: &str, url: &str, args: &[&str]) -> Fetched {
    let body = dir.join(format!("{name}.body"));
    let headers = dir.join(format!("{name}.headers"));
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-o"])
        .arg(&body)
        .arg("-D")
        .arg(&headers)
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs (scripts/test installs it)");
    let headers = std::fs::read_to_string(&headers).unwrap_or_default();
    let status = headers
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Fetched {
        exit: out.status.code().unwrap_or(-1),
        status,
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
    }
}

/// The request as curl sends it to the build API.
fn post_args(request: &Value) -> Vec<String> {
    vec![
        "-H".into(),
        "content-type: application/json".into(),
        "--data-binary".into(),
        request.to_string(),
    ]
}

/// Builds `request` on a first replica, which then stops: only the bucket holds the binary.
/// Returns the binary, its digest and its cache key.
async fn built_elsewhere(c: &mut Cluster, request: &Value) -> (Vec<u8>, String, String) {
    let a = c.replica();
    let miss = post_json(&builds(&a), request, &[]).await;
    assert_eq!(miss.status, 200, "{:?}", miss.body);
    let digest = miss
        .header("etag")
        .expect("etag")
        .trim_matches('"')
        .to_owned();
    let key = miss.header("x-velox-cache-key").expect("key").to_owned();
    // The build lock goes in the background after the answer; a replica stopped before that
    // would leave it to expire after a whole lease.
    let released = eventually(Duration::from_secs(10), async || {
        c.objects("locks/").is_empty()
    })
    .await;
    assert!(released, "the build lock was not released");
    drop(a);
    (miss.body.to_vec(), digest, key)
}

/// One bit of the blob flipped, its metadata kept (as bit rot would leave it).
fn flip_a_byte(c: &Cluster, digest: &str, key: &str) {
    let object = format!("{}{}", c.prefix, blob_object(digest));
    let mut bytes = c
        .moto
        .get_object(&object)
        .expect("the blob is in the bucket");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    c.moto
        .put_object(&object, &bytes, &[("x-amz-meta-velox-key", key)]);
}

#[actix_web::test]
async fn a_flipped_byte_is_never_served_and_the_key_is_rebuilt() {
    let mut c = Cluster::start("flip/");
    c.velox.set_size(3 * 1024 * 1024 + 5);
    let request = build_request("linux", "amd64");
    let (whole, digest, key) = built_elsewhere(&mut c, &request).await;
    flip_a_byte(&c, &digest, &key);

    let b = c.replica();
    let dir = c.tmp.path().to_path_buf();
    let location = format!("/_velox/v1/artifacts/{digest}");
    let got = curl(&dir, "flipped", &b.url(&location), &[]);
    assert_ne!(got.exit, 0, "curl saw a complete answer:\n{}", got.headers);
    assert!(!got.complete_and_wrong());
    assert!(
        got.body.len() < whole.len(),
        "all {} bytes arrived",
        got.body.len()
    );
    assert_eq!(metric(&b, BUCKET_CORRUPT).await, 1.0);
    assert_eq!(metric(&b, "velox_bucket_corrupt_total").await, 1.0);

    // Quarantined: out of its name, kept aside for a look.
    assert!(c
        .objects("blobs/")
        .iter()
        .all(|(k, _)| !k.ends_with(&digest)));
    assert!(c
        .objects("quarantine/")
        .iter()
        .any(|(k, _)| k.ends_with(&digest)));
    get(&b.url(&location), &[])
        .await
        .assert_error(404, "not_found");
    assert!(
        b.log_text().contains("quarantine"),
        "the damage is logged:\n{}",
        b.log_text()
    );

    // The key is built again, and the bucket holds the right bytes once more.
    let again = post_json(&builds(&b), &request, &[]).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("x-cache-status"), Some("MISS"));
    assert_eq!(sha256_hex(&again.body), digest);
    assert_eq!(c.velox.calls(), 2);
    let repaired = c
        .moto
        .get_object(&format!("{}{}", c.prefix, blob_object(&digest)))
        .expect("the blob is back");
    assert_eq!(sha256_hex(&repaired), digest);

    // A fresh replica now gets the whole, right binary from the bucket.
    let fresh = c.replica();
    let ok = curl(&dir, "repaired", &fresh.url(&location), &[]);
    assert_eq!((ok.exit, ok.status), (0, 200), "{}", ok.headers);
    assert_eq!(ok.body, whole);
}

#[actix_web::test]
async fn six_parallel_builds_never_get_a_wrong_whole_body() {
    let mut c = Cluster::start("parallel/");
    c.velox.set_size(2 * 1024 * 1024 + 3);
    let request = build_request("linux", "arm64");
    let (whole, digest, _) = built_elsewhere(&mut c, &request).await;
    // Replaced by a shell script of the same size: every manifest check passes.
    let mut script = b"#!/bin/sh\necho 'not roadrunner'\nexit 0\n".to_vec();
    script.resize(whole.len(), b'#');
    c.moto.put_object(
        &format!("{}{}", c.prefix, blob_object(&digest)),
        &script,
        &[],
    );

    let b = c.replica();
    let dir = c.tmp.path().to_path_buf();
    let url = builds(&b);
    let args = post_args(&request);
    let runs: Vec<_> = (0..6)
        .map(|i| {
            let (dir, url, args) = (dir.clone(), url.clone(), args.clone());
            std::thread::spawn(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                curl(&dir, &format!("parallel-{i}"), &url, &args)
            })
        })
        .collect();
    for run in runs {
        let got = run.join().expect("curl thread");
        assert!(
            !got.complete_and_wrong(),
            "a complete wrong body:\n{}",
            got.headers
        );
        assert!(
            got.exit != 0 || sha256_hex(&got.body) == digest,
            "curl {} with {} bytes:\n{}",
            got.exit,
            got.body.len(),
            got.headers
        );
        assert_ne!(got.body, script, "the script arrived whole");
    }
    assert!(metric(&b, BUCKET_CORRUPT).await >= 1.0);
    // Nothing unverified stayed in the local tier.
    let stats = get(&b.admin_url("/v1/cache/stats"), &[]).await.json();
    assert_eq!(stats["entries"], 0, "{stats}");

    let again = post_json(&builds(&b), &request, &[]).await;
    assert_eq!(again.status, 200);
    assert_eq!(sha256_hex(&again.body), digest);
}

#[actix_web::test]
async fn ranges_come_from_a_verified_copy() {
    let mut c = Cluster::start("ranges/");
    c.velox.set_size(1024 * 1024 + 17);
    let (whole, digest, key) = built_elsewhere(&mut c, &build_request("linux", "amd64")).await;
    let location = format!("/_velox/v1/artifacts/{digest}");
    let dir = c.tmp.path().to_path_buf();

    // A good blob: the range is served after a verified fill of the local tier.
    let b = c.replica();
    let part = get(&b.url(&location), &[("range", "bytes=1000-1999")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(&part.body[..], &whole[1000..2000]);
    assert_eq!(metric(&b, "velox_bucket_fills_total").await, 1.0);
    // The whole blob once, and its manifest (which the blob's metadata names).
    let read = metric(&b, "velox_bucket_read_bytes_total").await;
    assert!(
        read >= whole.len() as f64 && read < whole.len() as f64 + 4096.0,
        "{read}"
    );
    let tail = get(&b.url(&location), &[("range", "bytes=-100")]).await;
    assert_eq!(&tail.body[..], &whole[whole.len() - 100..]);
    assert_eq!(
        metric(&b, "velox_bucket_read_bytes_total").await,
        read,
        "the second range came from the local tier"
    );

    // A damaged blob: no byte of a range leaves.
    flip_a_byte(&c, &digest, &key);
    let fresh = c.replica();
    let got = curl(
        &dir,
        "range-damaged",
        &fresh.url(&location),
        &["-H", "range: bytes=0-99"],
    );
    assert_ne!(got.exit, 0, "{}", got.headers);
    assert!(
        got.body.is_empty(),
        "{} bytes of a damaged blob",
        got.body.len()
    );
    assert_eq!(metric(&fresh, BUCKET_CORRUPT).await, 1.0);
    // The replica that had filled its tier before the damage still serves its verified copy.
    let local = get(&b.url(&location), &[("range", "bytes=0-99")]).await;
    assert_eq!(&local.body[..], &whole[..100]);
}

#[actix_web::test]
async fn a_blob_that_names_no_entry_is_served_whole_for_a_range() {
    let c = Cluster::start("orphan/");
    // Written by hand (or by an older replica): no `velox-key` metadata, no manifest.
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let digest = sha256_hex(&bytes);
    c.moto.put_object(
        &format!("{}{}", c.prefix, blob_object(&digest)),
        &bytes,
        &[],
    );
    let mut c = c;
    let b = c.replica();
    let url = b.url(&format!("/_velox/v1/artifacts/{digest}"));
    let r = get(&url, &[("range", "bytes=10-19")]).await;
    assert_eq!(r.status, 200, "a range of unverifiable bytes");
    assert_eq!(&r.body[..], &bytes[..]);

    // Replaced by something else of another size: never a complete answer.
    c.moto.put_object(
        &format!("{}{}", c.prefix, blob_object(&digest)),
        b"#!/bin/sh\nrm -rf /\n",
        &[],
    );
    let got = curl(c.tmp.path(), "script", &url, &[]);
    assert_ne!(got.exit, 0, "{}", got.headers);
    assert!(!got.complete_and_wrong());
    assert!(got.body.is_empty());
}

#[actix_web::test]
async fn a_lock_with_an_absurd_expiry_is_taken_over_after_one_lease() {
    let mut c = Cluster::start("lock/")
        .with("VELOX_CACHE_STORAGE__S3__LOCK_LEASE", "2s")
        .with("VELOX_CACHE_BUILD_TIMEOUT", "60s");
    let request = build_request("linux", "amd64");
    let (_, digest, key) = built_elsewhere(&mut c, &request).await;
    c.moto
        .delete(&format!("{}{}", c.prefix, manifest_object(&key)));
    c.moto
        .delete(&format!("{}{}", c.prefix, blob_object(&digest)));
    // Held "until the year 300 000" by a replica whose clock is as far ahead.
    let far = 9_000_000_000_000_000u64;
    let lock = json!({"key": key, "replica": "evil/1/x", "acquired_ms": far, "expires_ms": far});
    c.moto.put_object(
        &format!("{}locks/{key}", c.prefix),
        lock.to_string().as_bytes(),
        &[],
    );

    let b = c.replica();
    let started = std::time::Instant::now();
    let r = post_json(&builds(&b), &request, &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(sha256_hex(&r.body), digest);
    assert_eq!(metric(&b, "velox_bucket_lock_takeovers_total").await, 1.0);
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "waited {:?} for a lock of one 2 s lease",
        started.elapsed()
    );
}

#[actix_web::test]
async fn manifests_with_absurd_fields_reach_no_header() {
    let mut c = Cluster::start("absurd/");
    let request = build_request("linux", "amd64");
    let (whole, _, key) = built_elsewhere(&mut c, &request).await;
    let object = format!("{}{}", c.prefix, manifest_object(&key));
    let good: Value =
        serde_json::from_slice(&c.moto.get_object(&object).expect("manifest")).expect("json");

    let mut evil = good.clone();
    evil["created_ms"] = json!(9_000_000_000_000_000u64);
    evil["build_ms"] = json!(u64::MAX);
    evil["file_name"] = json!("rr\"\r\nX-Injected: yes\r\n\r\n<html>");
    c.moto.put_object(&object, evil.to_string().as_bytes(), &[]);
    let b = c.replica();
    let hit = post_json(&builds(&b), &request, &[]).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    assert_eq!(&hit.body[..], &whole[..]);
    assert!(hit.header("x-injected").is_none());
    // The whole download filled the local tier (committed just after the last byte went out);
    // the digest's URL names the blob by the manifest's (cleaned) name.
    let filled = eventually(Duration::from_secs(10), async || {
        get(&b.admin_url(&format!("/v1/cache/{key}")), &[])
            .await
            .status
            == 200
    })
    .await;
    assert!(filled, "{}", b.log_text());
    let digest = sha256_hex(&whole);
    let by_digest = get(&b.url(&format!("/_velox/v1/artifacts/{digest}")), &[]).await;
    assert_eq!(by_digest.status, 200);
    assert!(by_digest.header("x-injected").is_none());
    assert_eq!(
        by_digest.header("content-disposition"),
        Some("attachment; filename=\"rr___X-Injected__yes_____html_\"")
    );
    let modified = hit.header("last-modified").expect("last-modified");
    let modified: actix_web::http::header::HttpDate = modified.parse().expect("a date");
    assert!(std::time::SystemTime::from(modified) <= std::time::SystemTime::now());
    assert_eq!(hit.header("x-cache-age"), Some("0"));
    assert_eq!(c.velox.calls(), 1);

    // A size no blob has, and a manifest far too large: both as if absent, rebuilt, replaced.
    for (n, bad) in [
        {
            let mut m = good.clone();
            m["size"] = json!(1u64 << 50);
            m.to_string().into_bytes()
        },
        {
            let mut m = good.clone();
            m["request"] = json!({"padding": "x".repeat(3 * 1024 * 1024)});
            m.to_string().into_bytes()
        },
    ]
    .into_iter()
    .enumerate()
    {
        c.moto.put_object(&object, &bad, &[]);
        let fresh = c.replica();
        let r = post_json(&builds(&fresh), &request, &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-cache-status"), Some("MISS"), "case {n}");
        assert_eq!(&r.body[..], &whole[..]);
        assert_eq!(c.velox.calls(), 2 + n);
        let now: Value =
            serde_json::from_slice(&c.moto.get_object(&object).expect("manifest")).expect("json");
        assert_eq!(now["size"], json!(whole.len()), "case {n}: replaced");
        assert!(fresh.log_text().contains("damaged"), "case {n}");
    }
}

#[actix_web::test]
async fn a_newer_manifest_is_never_overwritten() {
    let mut c = Cluster::start("newer/");
    let request = build_request("linux", "amd64");
    let (whole, _, key) = built_elsewhere(&mut c, &request).await;
    let object = format!("{}{}", c.prefix, manifest_object(&key));
    let newer = json!({"version": 2, "key": key, "blob": {"whatever": "a later layout has"}});
    c.moto
        .put_object(&object, newer.to_string().as_bytes(), &[]);

    let b = c.replica();
    let r = post_json(&builds(&b), &request, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-cache-status"), Some("MISS"));
    assert_eq!(&r.body[..], &whole[..]);
    let mut forced = request.clone();
    forced["force_rebuild"] = json!(true);
    let r = post_json(&builds(&b), &forced, &[]).await;
    assert_eq!(r.status, 200);
    let now: Value =
        serde_json::from_slice(&c.moto.get_object(&object).expect("manifest")).expect("json");
    assert_eq!(now, newer, "an older replica overwrote a newer manifest");
    // This replica still serves its own build from its tier.
    let hit = post_json(&builds(&b), &request, &[]).await;
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
}
