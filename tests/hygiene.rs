//! Store hygiene through the real binary (docs/storage.md): a removal cut by SIGKILL between its
//! index commit and its manifest's deletion stays removed (the tombstone); the start-up pass and
//! `velox-cache cache verify` follow no symbolic link planted in the data dir; the admin list
//! reads the index alone; an evicted entry's files go after the answer, and a SIGKILL around
//! that leaves the victim whole or gone.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::server::run;
use support::*;

const PAUSE: &str = "VELOX_TEST_PAUSE_AFTER_REMOVAL";

fn manifest_path(data_dir: &Path, key: &str) -> PathBuf {
    data_dir
        .join("manifests")
        .join(&key[..2])
        .join(format!("{key}.json"))
}

fn blob_path(data_dir: &Path, digest: &str) -> PathBuf {
    data_dir
        .join("blobs/sha256")
        .join(&digest[..2])
        .join(digest)
}

/// The key and digest of a MISS.
async fn store(h: &Harness, req: &Value) -> (String, String) {
    let miss = post_json(&h.builds_url(), req, &[]).await;
    assert_eq!(miss.header("x-cache-status"), Some("MISS"));
    let key = miss.header("x-velox-cache-key").expect("key").to_owned();
    let digest = miss
        .header("etag")
        .expect("etag")
        .trim_matches('"')
        .to_owned();
    (key, digest)
}

/// Stops the server (SIGKILL when `kill`), starts it again and waits for its start-up pass.
/// Returns what the new process logged (the log file is appended to).
async fn restart(h: &mut Harness, kill: bool) -> String {
    let old = h.server().log_text().len();
    let server = h.take();
    if kill {
        server.kill();
    } else {
        server.terminate();
    }
    h.restart();
    let server = h.server();
    let new = || server.log_text().get(old..).unwrap_or_default().to_owned();
    assert!(
        eventually(Duration::from_secs(30), async || {
            new().contains("start-up pass: the limits evicted")
        })
        .await,
        "the start-up pass did not end:\n{}",
        new()
    );
    new()
}

async fn entry_status(h: &Harness, key: &str) -> u16 {
    get(&h.server().admin_url(&format!("/v1/cache/{key}")), &[])
        .await
        .status
}

fn quarantined(data_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data_dir.join("quarantine"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[actix_web::test]
async fn a_removal_cut_by_sigkill_before_its_manifest_goes_stays_removed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let marker = tmp.path().join("paused");
    let mut h = Harness::start_with(|o| o.env(PAUSE, &marker.display().to_string()));
    let req = build_request("linux", "amd64");
    let (key, _) = store(&h, &req).await;
    let manifest = manifest_path(&h.opts.data_dir, &key);
    assert!(manifest.is_file());

    // The DELETE commits the removal, then pauses before the manifest's deletion: SIGKILL there.
    let url = h.server().admin_url(&format!("/v1/cache/{key}"));
    let pending = actix_web::rt::spawn(async move {
        let _ = client().delete(url).send().await;
    });
    assert!(
        eventually(Duration::from_secs(20), async || marker.exists()).await,
        "the removal never reached the pause"
    );
    assert!(manifest.is_file(), "paused before the manifest's deletion");
    assert_eq!(
        entry_status(&h, &key).await,
        404,
        "the index change is committed"
    );
    // Killed there. Without the tombstone, the start-up pass indexed that manifest again.
    h.opts.env.retain(|(k, _)| k != PAUSE);
    let log = restart(&mut h, true).await;
    pending.abort();
    assert_eq!(
        entry_status(&h, &key).await,
        404,
        "the removed entry came back"
    );
    assert!(
        !manifest.exists(),
        "the pass left the condemned manifest:\n{log}"
    );
    assert!(log.contains("tombstoned: 1"), "{log}");

    // Stored again, the key is not condemned by the old removal, even after another crash.
    let again = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(again.header("x-cache-status"), Some("MISS"));
    restart(&mut h, true).await;
    let hit = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    assert_eq!(h.velox.calls(), 2);
    h.take().terminate();
    let dd = h.opts.data_dir.display().to_string();
    let (code, out, err) = run(&["cache", "verify", "--data-dir", &dd], &[]);
    assert_eq!(code, 0, "{out}{err}");
}

/// Whether `key`'s manifest and `digest`'s blob are both present (`Some(true)`), both gone
/// (`Some(false)`), or one without the other (`None`).
fn files_of(data_dir: &Path, key: &str, digest: &str) -> Option<bool> {
    let manifest = manifest_path(data_dir, key).exists();
    let blob = blob_path(data_dir, digest).exists();
    (manifest == blob).then_some(manifest)
}

/// Whether `key`'s manifest and `digest`'s blob are both gone within 10 s.
async fn files_go(data_dir: &Path, key: &str, digest: &str) -> bool {
    eventually(Duration::from_secs(10), async || {
        files_of(data_dir, key, digest) == Some(false)
    })
    .await
}

/// Evictions leave the index on the MISS's path and their files go after it (docs/storage.md,
/// "Limits and eviction"). However a SIGKILL falls around that, each victim ends whole or gone
/// and the limits hold after the next start.
#[actix_web::test]
async fn an_evicted_entrys_files_go_after_the_answer_and_survive_a_sigkill_whole_or_not_at_all() {
    let mut h = Harness::start_with(|o| o.env("VELOX_CACHE_CACHE__MAX_ENTRIES", "1"));
    let dd = h.opts.data_dir.clone();
    let (first, first_digest) = store(&h, &distinct_request(0)).await;
    let (mut kept, mut kept_digest) = store(&h, &distinct_request(1)).await;
    assert_eq!(
        entry_status(&h, &first).await,
        404,
        "evicted from the index"
    );
    assert!(
        files_go(&dd, &first, &first_digest).await,
        "the victim's manifest and blob were not deleted"
    );
    for (round, i) in (2..5).enumerate() {
        // Each MISS evicts the entry before it; the SIGKILL comes at once, or a little later.
        let (new, new_digest) = store(&h, &distinct_request(i)).await;
        tokio::time::sleep(Duration::from_millis([0, 5, 50][round])).await;
        let log = restart(&mut h, true).await;
        assert_ne!(
            files_of(&dd, &kept, &kept_digest),
            None,
            "round {round}: a manifest without its blob or a blob without its manifest:\n{log}"
        );
        // Whether the eviction reached the disk or not, the pass leaves the newest entry alone.
        assert!(
            files_go(&dd, &kept, &kept_digest).await,
            "round {round}: the victim's files stayed:\n{log}"
        );
        assert_eq!(entry_status(&h, &kept).await, 404, "round {round}");
        let hit = post_json(&h.builds_url(), &distinct_request(i), &[]).await;
        assert_eq!(hit.header("x-cache-status"), Some("HIT"), "round {round}");
        assert_eq!(sha256_hex(&hit.body), new_digest, "round {round}");
        (kept, kept_digest) = (new, new_digest);
    }
    let stats = h.admin_json("/v1/cache/stats").await;
    assert_eq!(stats["entries"], 1, "{stats}");
    h.take().terminate();
    let dd = dd.display().to_string();
    let (code, out, err) = run(&["cache", "verify", "--data-dir", &dd], &[]);
    assert_eq!(code, 0, "{out}{err}");
}

#[actix_web::test]
async fn a_removal_deletes_its_manifest_and_its_tombstone() {
    let mut h = Harness::start();
    let req = build_request("linux", "amd64");
    let (key, digest) = store(&h, &req).await;
    let deleted = client()
        .delete(h.server().admin_url(&format!("/v1/cache/{key}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 200);
    assert!(!manifest_path(&h.opts.data_dir, &key).exists());
    assert!(!blob_path(&h.opts.data_dir, &digest).exists());
    // The blob went through tmp/ (renamed under the write lock, deleted after it): gone too.
    // Only the retired file is looked for: the compressor may be writing a variant of the same
    // blob into tmp/ at this moment (it found it before the removal and drops it after).
    let left: Vec<_> = std::fs::read_dir(h.opts.data_dir.join("tmp"))
        .expect("tmp")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("retired-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Nothing was left for the pass: no manifest to delete, no entry back.
    let log = restart(&mut h, true).await;
    assert!(log.contains("tombstoned: 0"), "{log}");
    assert_eq!(entry_status(&h, &key).await, 404);
}

/// Builds until three entries have blobs in three different fan-out folders and keys in three
/// different ones (and none of them `ee`, kept for the planted manifest).
async fn three_apart(h: &Harness) -> Vec<(String, String, Value)> {
    let mut picked: Vec<(String, String, Value)> = Vec::new();
    for n in 0..40 {
        let req = distinct_request(n);
        let (key, digest) = store(h, &req).await;
        let apart = picked
            .iter()
            .all(|(k, d, _)| k[..2] != key[..2] && d[..2] != digest[..2]);
        if apart && &key[..2] != "ee" {
            picked.push((key, digest, req));
        }
        if picked.len() == 3 {
            return picked;
        }
    }
    panic!("no three entries apart in 40 builds");
}

#[actix_web::test]
async fn the_start_up_pass_and_verify_follow_no_symlink() {
    let mut h = Harness::start();
    let picked = three_apart(&h).await;
    let [(key_a, digest_a, req_a), (key_b, digest_b, req_b), (key_c, _, _)] =
        <[(String, String, Value); 3]>::try_from(picked).expect("three");
    let old_log = h.server().log_text().len();
    h.take().terminate();
    let dd = h.opts.data_dir.clone();
    let outside = h.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).expect("outside");

    // A: its blob's fan-out folder moved outside and linked back.
    let shard_a = dd.join("blobs/sha256").join(&digest_a[..2]);
    let moved_a = outside.join("shard-a");
    std::fs::rename(&shard_a, &moved_a).expect("move shard");
    std::os::unix::fs::symlink(&moved_a, &shard_a).expect("link shard");
    // B: its blob swapped for a link to a copy outside, the right size and bytes.
    let blob_b = blob_path(&dd, &digest_b);
    let copy_b = outside.join("blob-b");
    std::fs::rename(&blob_b, &copy_b).expect("move blob");
    std::os::unix::fs::symlink(&copy_b, &blob_b).expect("link blob");
    // X: a manifest outside, naming C's blob under a key of its own, linked into manifests/.
    let key_x = "ee".repeat(32);
    let mut planted: Value =
        serde_json::from_slice(&std::fs::read(manifest_path(&dd, &key_c)).expect("manifest c"))
            .expect("json");
    planted["key"] = Value::String(key_x.clone());
    let manifest_x_outside = outside.join("manifest-x.json");
    std::fs::write(&manifest_x_outside, planted.to_string()).expect("write");
    let manifest_x = manifest_path(&dd, &key_x);
    std::fs::create_dir_all(manifest_x.parent().expect("dir")).expect("dir");
    std::os::unix::fs::symlink(&manifest_x_outside, &manifest_x).expect("link manifest");
    let targets: Vec<(PathBuf, Vec<u8>)> = [&moved_a.join(&digest_a), &copy_b, &manifest_x_outside]
        .iter()
        .map(|p| (p.to_path_buf(), std::fs::read(p).expect("target")))
        .collect();

    // verify reports each link and opens none.
    let dds = dd.display().to_string();
    let (code, out, err) = run(&["cache", "verify", "--data-dir", &dds], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!(
            "{} is a symbolic link (not followed)",
            shard_a.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "blob {digest_b} is a symbolic link (not followed)"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{} is a symbolic link (not followed)",
            manifest_x.display()
        )),
        "{out}"
    );

    // The start-up pass sets each link aside, and drops the entries that named them.
    h.restart();
    let server = h.server();
    let log = || {
        server
            .log_text()
            .get(old_log..)
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        eventually(Duration::from_secs(30), async || {
            log().contains("start-up pass: the limits evicted")
        })
        .await,
        "{}",
        log()
    );
    assert!(log().contains("not_followed: 3"), "{}", log());
    assert_eq!(
        entry_status(&h, &key_a).await,
        404,
        "A's blob was behind a link"
    );
    assert_eq!(entry_status(&h, &key_b).await, 404, "B's blob was a link");
    assert_eq!(entry_status(&h, &key_c).await, 200);
    assert_eq!(
        entry_status(&h, &key_x).await,
        404,
        "a linked manifest was indexed"
    );
    let aside = quarantined(&dd);
    assert_eq!(aside.len(), 3, "{aside:?}");
    for p in &aside {
        let m = std::fs::symlink_metadata(p).expect("stat");
        assert!(m.file_type().is_symlink(), "{p:?} is not the link itself");
    }
    for (p, bytes) in &targets {
        assert_eq!(
            &std::fs::read(p).expect("target"),
            bytes,
            "{p:?} was changed"
        );
    }
    // A and B are built again.
    assert_eq!(store(&h, &req_a).await.0, key_a);
    assert_eq!(store(&h, &req_b).await.0, key_b);
    h.take().terminate();
    let (code, out, err) = run(&["cache", "verify", "--data-dir", &dds], &[]);
    assert_eq!(code, 0, "{out}{err}");
}

#[actix_web::test]
async fn the_admin_list_reads_the_index_alone() {
    let h = Harness::start();
    let (key, digest) = store(&h, &build_request("linux", "amd64")).await;
    // A manifest that could not be read without blocking: the list never opens it.
    let manifest = manifest_path(&h.opts.data_dir, &key);
    std::fs::remove_file(&manifest).expect("rm manifest");
    let c = std::ffi::CString::new(manifest.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let list = tokio::time::timeout(
        Duration::from_secs(10),
        get(&h.server().admin_url("/v1/cache"), &[]),
    )
    .await
    .expect("the list must not wait on a manifest");
    assert_eq!(list.status, 200);
    let entries = list.json()["entries"].as_array().cloned().expect("entries");
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e["key"], key.as_str());
    assert_eq!(e["digest"], digest.as_str());
    assert_eq!(e["access_count"], 0);
    assert!(e.get("floating").is_none(), "{e}");
    // One entry still says whether it is floating, from its manifest; unreadable here.
    let one = tokio::time::timeout(
        Duration::from_secs(10),
        get(&h.server().admin_url(&format!("/v1/cache/{key}")), &[]),
    )
    .await
    .expect("a FIFO manifest must not block");
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["floating"], Value::Null);
}
