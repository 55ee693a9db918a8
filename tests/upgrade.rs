//! Upgrades, backups and restores (docs/operations.md): a data dir written by velox-cache 0.1.0
//! (the committed fixture `tests/fixtures/data-v1`) is served by this build as it is; a backup of
//! `blobs/` and `manifests/` alone, taken while the server runs, restores the cache; and a
//! manifest written by hand from its documented fields is indexed.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use support::server::run;
use support::*;

/// (plugin tag, cache key, digest) of the fixture's two entries.
const FIXTURE: [(&str, &str, &str); 2] = [
    (
        "v5.2.1",
        "e3ccab71a8d3c9b35f97d9bcd46256fd2e9483f16341605f864644f603731fd2",
        "4f1bee5942ab076c3c55218fe6ec2199f2f97b510b8821746d4f5dd8d40b02d4",
    ),
    (
        "v5.2.2",
        "430cbcc987f1fac4ff2c6a5c364498e4e9eb438f25afddef47ec166ef0c37476",
        "97a35f69597676647a34e581ec192fc469cefb82b923d5a7b1d07c9bc3b4972f",
    ),
];

fn fixture_request(tag: &str) -> serde_json::Value {
    json!({
        "request_id": "b66d5617-64dd-419b-a68b-b002938320ab",
        "target_platform": {"os": "linux", "arch": "amd64"},
        "rr_version": "v2025.1.2",
        "plugins": [{"module_name": "github.com/roadrunner-server/http/v5", "tag": tag}]
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            match std::fs::copy(e.path(), &target) {
                Ok(_) => {}
                // Copying a live data dir, a file can go between the listing and the copy (an
                // evicted one deleted by the reaper): skipped, as rsync reports "vanished".
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => panic!("copy {}: {err}", e.path().display()),
            }
        }
    }
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data-v1")
}

#[actix_web::test]
async fn a_data_dir_written_by_0_1_0_is_served_as_it_is() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    copy_dir(&fixture_dir(), &data);
    let artifacts = tmp.path().join("velox-out");
    let velox = FakeVelox::start(&artifacts);
    let server = Server::start(&Options::new(&data, &velox.url, &artifacts));
    for (tag, key, digest) in FIXTURE {
        let r = post_json(&server.url("/_velox/v1/builds"), &fixture_request(tag), &[]).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("x-cache-status"), Some("HIT"), "{tag}");
        assert_eq!(r.header("x-velox-cache-key"), Some(key), "the key changed");
        assert_eq!(r.header("etag"), Some(format!("\"{digest}\"").as_str()));
        assert_eq!(r.body.len(), 4096);
        assert_eq!(sha256_hex(&r.body), digest);
    }
    assert_eq!(velox.calls(), 0);
    let stats = get(&server.admin_url("/v1/cache/stats"), &[]).await.json();
    assert_eq!(stats["entries"], 2);
    let log = server.log_text();
    assert!(
        !log.contains("rebuilding from the manifests") && !log.contains("re-indexing"),
        "the old index was not read as it is:\n{log}"
    );
    let mut server = server;
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(server.pid(), libc::SIGTERM);
    }
    server.wait_success(Duration::from_secs(40));
    let dd = data.display().to_string();
    let (code, out, err) = run(&["cache", "verify", "--data-dir", &dd], &[]);
    assert_eq!(code, 0, "{out}{err}");
}

#[actix_web::test]
async fn blobs_and_manifests_copied_while_serving_restore_the_cache() {
    let mut h = Harness::start_with(|o| o.env("VELOX_CACHE_CACHE__MAX_ENTRIES", "3"));
    let mut bodies = Vec::new();
    for i in 0..5 {
        bodies.push(
            post_json(&h.builds_url(), &distinct_request(i), &[])
                .await
                .body,
        );
    }
    // The two evicted entries' files go a moment after their removal from the index: the
    // backup below is meant to hold the three kept ones only.
    let manifests = h.opts.data_dir.join("manifests");
    assert!(
        eventually(Duration::from_secs(10), async || walk_files(&manifests)
            .len()
            == 3)
        .await,
        "the evicted manifests were not deleted: {:?}",
        walk_files(&manifests)
    );
    // The backup: blobs/ and manifests/ only, copied while the server runs (their files are
    // written once and renamed into place, so a copy never sees half of one).
    let backup = h.tmp.path().join("backup");
    for sub in ["blobs", "manifests"] {
        copy_dir(&h.opts.data_dir.join(sub), &backup.join(sub));
    }
    h.take().kill();
    // The restore: a new data dir holding only the copy.
    let restored = h.tmp.path().join("restored");
    copy_dir(&backup, &restored);
    h.opts.data_dir = restored;
    h.restart();
    assert!(
        eventually(Duration::from_secs(20), async || {
            get(&h.server().admin_url("/v1/cache/stats"), &[])
                .await
                .json()["entries"]
                == 3
        })
        .await,
        "the manifests were not indexed"
    );
    for (i, body) in bodies.iter().enumerate().skip(2) {
        let r = post_json(&h.builds_url(), &distinct_request(i), &[]).await;
        assert_eq!(r.header("x-cache-status"), Some("HIT"), "entry {i}");
        assert_eq!(&r.body, body);
    }
    assert_eq!(h.velox.calls(), 5);
}

#[actix_web::test]
async fn a_manifest_written_from_its_documented_fields_is_indexed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let digest = sha256_hex(&bytes);
    let key = sha256_hex(b"a key from another release");
    let blob = data.join("blobs/sha256").join(&digest[..2]).join(&digest);
    std::fs::create_dir_all(blob.parent().expect("parent")).expect("mkdir");
    std::fs::write(&blob, &bytes).expect("blob");
    let manifest = data
        .join("manifests")
        .join(&key[..2])
        .join(format!("{key}.json"));
    std::fs::create_dir_all(manifest.parent().expect("parent")).expect("mkdir");
    let text = format!(
        r#"{{"version": 1, "key": "{key}", "digest": "{digest}", "size": 10000,
            "created_ms": 1700000000000, "build_ms": 1234, "file_name": "roadrunner-linux-arm64",
            "request": {{"rr_version": "v2025.1.2"}}}}"#
    );
    std::fs::write(&manifest, text).expect("manifest");
    let artifacts = tmp.path().join("velox-out");
    let velox = FakeVelox::start(&artifacts);
    let server = Server::start(&Options::new(&data, &velox.url, &artifacts));
    let entry_url = server.admin_url(&format!("/v1/cache/{key}"));
    assert!(
        eventually(Duration::from_secs(20), async || get(&entry_url, &[])
            .await
            .status
            == 200)
        .await,
        "the manifest was not indexed"
    );
    let entry = get(&entry_url, &[]).await.json();
    assert_eq!(entry["digest"], digest.as_str());
    assert_eq!(entry["size"], 10000);
    assert_eq!(entry["file_name"], "roadrunner-linux-arm64");
    let art = get(&server.url(&format!("/_velox/v1/artifacts/{digest}")), &[]).await;
    assert_eq!(art.status, 200);
    assert!(art.body == bytes);
}
