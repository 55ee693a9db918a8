//! The cache as an operator leaves it running (docs/http-api.md's admin routes, docs/metrics.md, docs/storage.md, docs/cli.md): eviction per
//! policy, size and age limits, access statistics across restarts, crash loops, a corrupt index,
//! orphans, and the offline `cache` commands.

mod support;

use std::time::Duration;

use support::server::run;
use support::*;

fn key(r: &Resp) -> String {
    r.header("x-velox-cache-key").expect("cache key").to_owned()
}

/// What `velox-cache cache ARGS --data-dir DD` exits with and prints.
fn cache_cmd(args: &[&str], dd: &str) -> (i32, String, String) {
    let mut all = vec!["cache"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--data-dir", dd]);
    run(&all, &[])
}

/// Garbage over every file of the sled database under `data_dir`; how many files there were.
fn damage_index(data_dir: &std::path::Path) -> usize {
    let files = walk_files(&data_dir.join("meta"));
    for e in &files {
        let len = std::fs::metadata(e).map(|m| m.len()).unwrap_or(0).max(4096);
        let garbage: Vec<u8> = (0..len).map(|i| (i * 7919 % 251) as u8).collect();
        std::fs::write(e, garbage).expect("overwrite");
    }
    files.len()
}

/// DELETE of one entry on the admin listener, with the token if one is given; the status.
async fn delete_entry(h: &Harness, key: &str, token: Option<&str>) -> u16 {
    let mut r = client().delete(h.server().admin_url(&format!("/v1/cache/{key}")));
    if let Some(t) = token {
        r = r.insert_header(("authorization", format!("Bearer {t}")));
    }
    r.send().await.expect("sent").status().as_u16()
}

async fn present(h: &Harness, key: &str) -> bool {
    let r = get(&h.server().admin_url(&format!("/v1/cache/{key}")), &[]).await;
    match r.status {
        200 => true,
        404 => false,
        s => panic!("unexpected {s}"),
    }
}

/// Waits (up to 10 s) until the cache holds `n` entries.
async fn entries_reach(h: &Harness, n: u64) -> bool {
    let server = h.server();
    eventually(Duration::from_secs(10), async || {
        metric(server, "velox_cache_entries_count").await == n as f64
    })
    .await
}

/// Builds distinct requests 0..n and returns their keys.
async fn build_n(h: &Harness, n: usize) -> Vec<String> {
    let mut keys = Vec::new();
    for i in 0..n {
        let r = h.post(&distinct_request(i)).await;
        assert_eq!(r.header("x-cache-status"), Some("MISS"));
        keys.push(key(&r));
        // Distinct milliseconds keep the scripted order unambiguous.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    keys
}

async fn hit(h: &Harness, i: usize, times: usize) {
    for _ in 0..times {
        let r = h.post(&distinct_request(i)).await;
        assert_eq!(r.header("x-cache-status"), Some("HIT"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs a scripted sequence with `max_entries = 3`, then a fourth build, and returns which of
/// the first three keys survived.
async fn scripted(policy: &str, hits: &[(usize, usize)]) -> (Vec<bool>, Harness) {
    let h = Harness::start_with(|o| {
        o.env("VELOX_CACHE_CACHE__MAX_ENTRIES", "3")
            .env("VELOX_CACHE_CACHE__EVICTION_POLICY", policy)
    });
    let keys = build_n(&h, 3).await;
    for (i, n) in hits {
        hit(&h, *i, *n).await;
    }
    let r = h.post(&distinct_request(3)).await;
    assert_eq!(r.header("x-cache-status"), Some("MISS"));
    assert!(
        present(&h, &key(&r)).await,
        "the new entry was its own victim"
    );
    let mut alive = Vec::new();
    for k in &keys {
        alive.push(present(&h, k).await);
    }
    (alive, h)
}

#[actix_web::test]
async fn lru_evicts_the_least_recently_hit() {
    // 0 and 2 are hit after 1 was built: 1 is least recently used.
    let (alive, h) = scripted("lru", &[(0, 1), (2, 1)]).await;
    assert_eq!(alive, vec![true, false, true]);
    assert_eq!(
        metric(h.server(), "velox_cache_evictions_total{reason=\"count\"}").await,
        1.0
    );
    assert_eq!(metric(h.server(), "velox_cache_entries_count").await, 3.0);
}

#[actix_web::test]
async fn lfu_evicts_the_least_frequently_hit() {
    // 1 was hit once, 0 and 2 twice, and 1's hit is the most recent: LRU would keep it.
    let (alive, _h) = scripted("lfu", &[(0, 2), (2, 2), (1, 1)]).await;
    assert_eq!(alive, vec![true, false, true]);
}

#[actix_web::test]
async fn fifo_evicts_the_oldest() {
    // 0 is hit most and most recently, and still goes first.
    let (alive, _h) = scripted("fifo", &[(1, 1), (2, 1), (0, 3)]).await;
    assert_eq!(alive, vec![false, true, true]);
}

#[actix_web::test]
async fn size_limit_holds_after_every_insert() {
    // 300 KiB binaries; the limit holds two of them.
    let limit_gb = 700.0 * 1024.0 / (1024.0 * 1024.0 * 1024.0);
    let h =
        Harness::start_with(|o| o.env("VELOX_CACHE_CACHE__MAX_SIZE_GB", &format!("{limit_gb}")));
    let limit = (limit_gb * 1024.0 * 1024.0 * 1024.0) as u64;
    for i in 0..5 {
        let r = h.post(&distinct_request(i)).await;
        assert_eq!(r.status, 200);
        let stats = h.admin_json("/v1/cache/stats").await;
        assert!(stats["bytes"].as_u64().expect("bytes") <= limit, "{stats}");
        assert!(stats["entries"].as_u64().expect("entries") <= 2, "{stats}");
    }
    assert_eq!(
        metric(h.server(), "velox_cache_evictions_total{reason=\"size\"}").await,
        3.0
    );
    assert_eq!(
        metric(h.server(), "velox_cache_size_bytes").await,
        2.0 * 300.0 * 1024.0
    );
}

#[actix_web::test]
async fn age_limit_expires_entries() {
    // 0.00006 days is 5.2 s (room for two builds on a loaded machine before the first check);
    // the cleanup runs every 200 ms.
    let h = Harness::start_with(|o| {
        o.env("VELOX_CACHE_CACHE__MAX_AGE_DAYS", "0.00006")
            .env("VELOX_CACHE_CACHE__CLEANUP_INTERVAL", "200ms")
    });
    let keys = build_n(&h, 2).await;
    assert!(present(&h, &keys[0]).await);
    let server = h.server();
    let expired = eventually(Duration::from_secs(20), async || {
        metric(server, "velox_cache_entries_count").await == 0.0
    })
    .await;
    assert!(expired, "entries did not expire");
    // The counter follows the removals (it is bumped once the cleanup pass returns).
    let server = h.server();
    assert!(
        eventually(Duration::from_secs(5), async || {
            metric(server, "velox_cache_evictions_total{reason=\"age\"}").await == 2.0
        })
        .await,
        "two age evictions were not counted"
    );
    // Their blobs went with them: at once out of the index, from the disk once the reaper has
    // seen the removal on disk (a moment later).
    let r = get(
        &h.url(&format!("/_velox/v1/artifacts/{}", "0".repeat(64))),
        &[],
    )
    .await;
    assert_eq!(r.status, 404);
    let blobs_dir = h.server().data_dir.join("blobs");
    assert!(
        eventually(Duration::from_secs(10), async || walk_files(&blobs_dir)
            .is_empty())
        .await,
        "blobs left after the age evictions: {:?}",
        walk_files(&blobs_dir)
    );
}

#[actix_web::test]
async fn access_statistics_survive_a_graceful_restart() {
    // The default interval (5 s) is longer than the test: only the stop's last batch writes them.
    let mut h = Harness::start();
    let keys = build_n(&h, 2).await;
    hit(&h, 0, 4).await;
    hit(&h, 1, 1).await;
    let mut before = Vec::new();
    for k in &keys {
        before.push(h.admin_json(&format!("/v1/cache/{k}")).await);
    }
    assert_eq!(before[0]["access_count"], 4);
    assert_eq!(before[1]["access_count"], 1);
    h.stop();
    h.restart();
    for (k, b) in keys.iter().zip(&before) {
        let after = h.admin_json(&format!("/v1/cache/{k}")).await;
        assert_eq!(after["access_count"], b["access_count"], "{after}");
        assert_eq!(after["last_access_at"], b["last_access_at"], "{after}");
    }
    // Order survives too: under LRU with room for two, a third build evicts entry 0 (hit
    // before entry 1's last hit).
    h.stop();
    h.restart_with(|o| o.env("VELOX_CACHE_CACHE__MAX_ENTRIES", "2"));
    h.post(&distinct_request(9)).await;
    assert!(!present(&h, &keys[0]).await);
    assert!(present(&h, &keys[1]).await);
}

#[actix_web::test]
async fn admin_cache_routes() {
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_API_TOKEN", "tok"));
    let auth = [("authorization", "Bearer tok")];
    let mut keys = Vec::new();
    for i in 0..5 {
        let r = post_json(&h.builds_url(), &distinct_request(i), &auth).await;
        keys.push(key(&r));
    }
    keys.sort();
    let admin = |p: &str| h.server().admin_url(p);
    // Pagination by key.
    let page1 = get(&admin("/v1/cache?limit=2"), &[]).await.json();
    let got: Vec<&str> = page1["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["key"].as_str().expect("key"))
        .collect();
    assert_eq!(got, vec![keys[0].as_str(), keys[1].as_str()]);
    let next = page1["next"].as_str().expect("next").to_owned();
    let page2 = get(&admin(&format!("/v1/cache?limit=2&after={next}")), &[])
        .await
        .json();
    assert_eq!(page2["entries"][0]["key"], keys[2]);
    let page3 = get(&admin(&format!("/v1/cache?limit=2&after={}", keys[3])), &[])
        .await
        .json();
    assert_eq!(page3["entries"].as_array().expect("entries").len(), 1);
    assert!(page3["next"].is_null());
    get(&admin("/v1/cache?after=zz"), &[])
        .await
        .assert_error(400, "invalid_request");
    get(&admin("/v1/cache?limit=0"), &[])
        .await
        .assert_error(400, "invalid_request");
    // Stats.
    let stats = get(&admin("/v1/cache/stats"), &[]).await.json();
    assert_eq!(stats["entries"], 5);
    assert_eq!(stats["bytes"], 5 * 300 * 1024);
    assert_eq!(stats["policy"], "lru");
    assert_eq!(stats["misses"], 5);
    assert_eq!(stats["builds_in_flight"], 0);
    // One entry.
    let one = get(&admin(&format!("/v1/cache/{}", keys[0])), &[])
        .await
        .json();
    assert_eq!(one["size"], 300 * 1024);
    get(&admin(&format!("/v1/cache/{}", "f".repeat(64))), &[])
        .await
        .assert_error(404, "not_found");
    // DELETE needs the token.
    assert_eq!(delete_entry(&h, &keys[0], None).await, 401);
    assert_eq!(delete_entry(&h, &keys[0], Some("tok")).await, 200);
    assert!(!present(&h, &keys[0]).await);
    assert_eq!(delete_entry(&h, &keys[0], Some("tok")).await, 404);
    assert_eq!(
        metric(h.server(), "velox_cache_evictions_total{reason=\"manual\"}").await,
        1.0
    );
    // Cleanup runs the limits now (none set: nothing goes); it takes the token too.
    let r = client()
        .post(admin("/v1/cache/cleanup"))
        .insert_header(("authorization", "Bearer tok"))
        .send_body("")
        .await
        .expect("sent")
        .json::<serde_json::Value>()
        .await
        .expect("json");
    assert_eq!(r["evicted"], 0);
    assert_eq!(r["entries"], 4);
}

#[actix_web::test]
async fn shared_blobs_go_with_their_last_entry() {
    // Two keys, one set of bytes: the stand-in answers the same file for both.
    let h = Harness::start();
    let first = h.post(&distinct_request(1)).await;
    // Point the second build at the first build's file.
    let dir = std::fs::read_dir(&h.velox.dir)
        .expect("dir")
        .flatten()
        .next()
        .expect("one build")
        .path();
    h.velox
        .script([Behavior::Path(dir.join("rr").display().to_string())]);
    let second = h.post(&distinct_request(2)).await;
    assert_eq!(second.header("etag"), first.header("etag"));
    assert_ne!(key(&first), key(&second));
    let stats = h.admin_json("/v1/cache/stats").await;
    assert_eq!(stats["entries"], 2);
    assert_eq!(stats["bytes"], 300 * 1024, "one blob, counted once");
    let art = h.url(first.header("content-location").expect("location"));
    assert_eq!(delete_entry(&h, &key(&first), None).await, 200);
    assert_eq!(get(&art, &[]).await.status, 200, "the blob is still used");
    assert_eq!(delete_entry(&h, &key(&second), None).await, 200);
    assert_eq!(
        get(&art, &[]).await.status,
        404,
        "the last entry took the blob"
    );
}

#[actix_web::test]
async fn corrupt_index_is_rebuilt_from_manifests() {
    let mut h = Harness::start();
    let mut bodies = Vec::new();
    for i in 0..4 {
        bodies.push(h.post(&distinct_request(i)).await.body);
    }
    h.stop();
    assert!(damage_index(&h.opts.data_dir) > 0, "no sled files found");
    h.restart();
    let server = h.server();
    assert_eq!(get(&server.admin_url("/readyz"), &[]).await.status, 200);
    assert!(
        eventually(Duration::from_secs(20), async || {
            get(&server.admin_url("/v1/cache/stats"), &[]).await.json()["entries"] == 4
        })
        .await,
        "the index was not rebuilt"
    );
    for (i, body) in bodies.iter().enumerate() {
        let r = h.post(&distinct_request(i)).await;
        assert_eq!(r.header("x-cache-status"), Some("HIT"));
        assert_eq!(&r.body, body);
    }
    assert_eq!(h.velox.calls(), 4);
    assert!(h
        .server()
        .log_text()
        .contains("rebuilding from the manifests"));
    let aside = std::fs::read_dir(&h.opts.data_dir)
        .expect("dir")
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("meta.corrupt-"));
    assert!(aside, "the damaged index was not kept aside");
}

#[actix_web::test]
async fn orphans_are_cleaned_at_start() {
    let mut h = Harness::start();
    let kept = h.post(&distinct_request(1)).await;
    h.stop();
    let data = h.opts.data_dir.clone();
    let orphan_hex = "ab".repeat(32);
    let orphan = data.join("blobs/sha256/ab").join(&orphan_hex);
    std::fs::create_dir_all(orphan.parent().expect("parent")).expect("dir");
    std::fs::write(&orphan, b"nobody refers to me").expect("write");
    std::fs::write(data.join("tmp/leftover.blob"), b"half a binary").expect("write");
    let stray_manifest = data
        .join("manifests/cd")
        .join(format!("{}.json", "cd".repeat(32)));
    std::fs::create_dir_all(stray_manifest.parent().expect("parent")).expect("dir");
    std::fs::write(&stray_manifest, b"{not a manifest").expect("write");
    h.restart();
    assert!(
        !data.join("tmp/leftover.blob").exists(),
        "tmp/ was not emptied before the listeners opened"
    );
    assert!(
        eventually(Duration::from_secs(10), async || !orphan.exists()
            && !stray_manifest.exists())
        .await,
        "orphans survived the start-up pass"
    );
    let r = h.post(&distinct_request(1)).await;
    assert_eq!(r.header("x-cache-status"), Some("HIT"));
    assert_eq!(r.body, kept.body);
}

#[actix_web::test]
async fn entries_whose_blob_vanished_are_dropped() {
    let mut h = Harness::start();
    let r = h.post(&distinct_request(1)).await;
    let digest = r.header("etag").expect("etag").trim_matches('"').to_owned();
    h.stop();
    std::fs::remove_file(
        h.opts
            .data_dir
            .join("blobs/sha256")
            .join(&digest[..2])
            .join(&digest),
    )
    .expect("remove blob");
    h.restart();
    assert!(
        entries_reach(&h, 0).await,
        "the entry without a blob was kept"
    );
    // And a request for it builds again rather than failing.
    let again = h.post(&distinct_request(1)).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("x-cache-status"), Some("MISS"));
}

async fn try_post(url: &str, body: &serde_json::Value) -> Option<Resp> {
    let mut res = client()
        .post(url)
        .timeout(Duration::from_secs(10))
        .insert_header(("content-type", "application/json"))
        .send_body(serde_json::to_vec(body).ok()?)
        .await
        .ok()?;
    let body = res.body().limit(16 * 1024 * 1024).await.ok()?;
    Some(Resp {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body,
    })
}

#[actix_web::test]
async fn crash_loop_serves_only_whole_binaries() {
    let mut h = Harness::start_with(|o| {
        o.env("VELOX_CACHE_CACHE__MAX_ENTRIES", "3")
            .env("VELOX_CACHE_CACHE__ACCESS_UPDATE_INTERVAL", "50ms")
    });
    h.velox.set_delay(Duration::from_millis(30));
    let mut served = 0usize;
    let mut cut = 0usize;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..20 {
        let url = h.builds_url();
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let url = url.clone();
                actix_web::rt::spawn(async move {
                    let mut ok = Vec::new();
                    for i in 0..50 {
                        let n = (c * 7 + i * 3 + round) % 6;
                        match try_post(&url, &distinct_request(n)).await {
                            Some(r) => ok.push(r),
                            None => break,
                        }
                    }
                    ok
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20 + rand(250))).await;
        h.take().kill();
        for c in clients {
            for r in c.await.expect("client task") {
                let declared = r
                    .header("content-length")
                    .and_then(|v| v.parse::<usize>().ok());
                if r.status == 200 && declared != Some(r.body.len()) {
                    // Cut off by the kill: an interrupted transfer, not a wrong byte.
                    cut += 1;
                } else if r.status == 200 {
                    let etag = r.header("etag").expect("etag").trim_matches('"').to_owned();
                    assert_eq!(
                        sha256_hex(&r.body),
                        etag,
                        "round {round}: bytes do not match the ETag"
                    );
                    served += 1;
                } else {
                    assert!(
                        (502..=504).contains(&r.status),
                        "round {round}: {}",
                        r.status
                    );
                }
            }
        }
        h.restart();
        // Right after a restart, everything served is whole.
        for n in 0..6 {
            let r = h.post(&distinct_request(n)).await;
            assert_eq!(r.status, 200, "round {round}");
            let etag = r.header("etag").expect("etag").trim_matches('"').to_owned();
            assert_eq!(sha256_hex(&r.body), etag);
        }
    }
    assert!(served > 0, "no client was ever served");
    eprintln!("crash loop: {served} whole responses checked, {cut} cut off by a kill");
    // Let the start-up pass finish (a graceful stop joins it), then check the data dir offline.
    h.stop();
    let dd = h.data_dir_arg();
    let (code, out, err) = cache_cmd(&["verify"], &dd);
    assert_eq!(code, 0, "verify found problems:\n{out}\n{err}");
    assert!(out.starts_with("ok:"), "{out}");
}

#[actix_web::test]
async fn cache_commands_offline() {
    let mut h = Harness::start();
    let mut keys = Vec::new();
    for i in 0..3 {
        keys.push(key(&h.post(&distinct_request(i)).await));
    }
    let dd = h.data_dir_arg();
    // While the server holds the data dir, the commands that change or re-hash it refuse with
    // a clear message.
    let (code, _out, err) = cache_cmd(&["verify"], &dd);
    assert_ne!(code, 0);
    assert!(err.contains(&dd) && err.contains("running server"), "{err}");
    h.stop();

    let (code, out, _) = cache_cmd(&["stats"], &dd);
    assert_eq!(code, 0);
    assert!(out.contains("entries: 3"), "{out}");
    let (code, out, _) = cache_cmd(&["list"], &dd);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 3);
    let (code, out, _) = cache_cmd(&["verify"], &dd);
    assert_eq!(code, 0, "{out}");

    // A flipped byte in a blob is found.
    let blob = walk_files(&h.opts.data_dir.join("blobs"))
        .into_iter()
        .next()
        .expect("a blob");
    let mut bytes = std::fs::read(&blob).expect("read");
    bytes[1000] ^= 0xff;
    std::fs::write(&blob, &bytes).expect("write");
    let (code, out, _) = cache_cmd(&["verify"], &dd);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not hash to its name"), "{out}");
    bytes[1000] ^= 0xff;
    std::fs::write(&blob, &bytes).expect("write");

    // Purge one; rebuild the index from the manifests.
    let (code, out, _) = cache_cmd(&["purge", &keys[0]], &dd);
    assert_eq!(code, 0, "{out}");
    let (code, _, _) = cache_cmd(&["purge", &keys[0]], &dd);
    assert_eq!(code, 1);
    let (code, out, _) = cache_cmd(&["rebuild-index"], &dd);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("re-indexed 2 entries"), "{out}");
    let (code, out, _) = cache_cmd(&["verify"], &dd);
    assert_eq!(code, 0, "{out}");
    h.restart();
    let r = h.post(&distinct_request(1)).await;
    assert_eq!(r.header("x-cache-status"), Some("HIT"));
}

#[actix_web::test]
async fn limits_are_enforced_by_the_start_up_pass() {
    // Five entries under no limit, then a crash: the data dir is over the limits the next run
    // has, as after a crash between an insert and its eviction.
    let mut h = Harness::start();
    let keys = build_n(&h, 5).await;
    h.take().kill();
    h.opts = h
        .opts
        .clone()
        .env("VELOX_CACHE_CACHE__MAX_ENTRIES", "3")
        .env("VELOX_CACHE_CACHE__CLEANUP_INTERVAL", "1h");
    h.restart();
    // Without waiting for cleanup_interval, and without a request.
    assert!(
        entries_reach(&h, 3).await,
        "the start-up pass left the cache over its limit"
    );
    // Counted once the pass has evicted them all.
    let server = h.server();
    assert!(
        eventually(Duration::from_secs(10), async || {
            metric(server, "velox_cache_evictions_total{reason=\"count\"}").await == 2.0
        })
        .await,
        "the evictions were not counted"
    );
    // LRU, none hit: the oldest two went.
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(present(&h, k).await, i >= 2, "entry {i}");
    }
    assert!(h
        .server()
        .log_text()
        .contains("start-up pass: the limits evicted 2"));
}

#[actix_web::test]
async fn offline_commands_refuse_what_is_not_a_data_dir() {
    let tmp = tempfile::tempdir().expect("tmp");
    let typo = tmp.path().join("dta");
    let t = typo.display().to_string();
    for action in ["stats", "list", "verify", "rebuild-index"] {
        let (code, out, err) = cache_cmd(&[action], &t);
        assert_eq!(code, 2, "{action}: {out}{err}");
        assert!(err.contains(&t) && err.contains("does not exist"), "{err}");
        assert!(!typo.exists(), "{action} created the data dir");
    }
    // A folder that is not a data dir (a home directory, say) is refused and left alone.
    let other = tmp.path().join("home");
    std::fs::create_dir(&other).expect("dir");
    std::fs::write(other.join("notes.txt"), b"mine").expect("write");
    let o = other.display().to_string();
    let (code, _, err) = cache_cmd(&["stats"], &o);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a velox-cache data dir"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&other).expect("dir").flatten().collect();
    assert_eq!(left.len(), 1, "the folder was written to");
}

#[actix_web::test]
async fn offline_stats_rebuild_a_damaged_index_from_the_manifests() {
    let mut h = Harness::start();
    build_n(&h, 3).await;
    h.stop();
    damage_index(&h.opts.data_dir);
    let dd = h.data_dir_arg();
    let (code, out, err) = cache_cmd(&["stats"], &dd);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("entries: 3"),
        "reported as empty: {out}\n{err}"
    );
    assert!(err.contains("re-indexed 3 entries"), "{err}");
    let (code, out, _) = cache_cmd(&["verify"], &dd);
    assert_eq!(code, 0, "{out}");
    h.restart();
    let r = h.post(&distinct_request(2)).await;
    assert_eq!(r.header("x-cache-status"), Some("HIT"));
}

#[actix_web::test]
async fn stats_and_list_ask_the_server_that_holds_the_data_dir() {
    let h = Harness::start();
    let mut keys = build_n(&h, 3).await;
    keys.sort();
    hit(&h, 0, 2).await;
    let dd = h.data_dir_arg();
    let admin = h.server().admin_addr();
    let (code, out, err) = cache_cmd(&["stats", "--admin-listen", &admin], &dd);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("entries: 3"), "{out}");
    assert!(out.contains(&format!("bytes: {}", 3 * 300 * 1024)), "{out}");
    assert!(err.contains("held by a running server"), "{err}");
    // The admin address from the environment works as well as the flag.
    let (code, out, _) = run(
        &["cache", "list", "--data-dir", &dd],
        &[("VELOX_CACHE_ADMIN_LISTEN", &admin)],
    );
    assert_eq!(code, 0);
    let listed: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(listed, keys, "{out}");
    // Paging through the server, as offline.
    let (_, out, _) = cache_cmd(
        &[
            "list",
            "--admin-listen",
            &admin,
            "--limit",
            "1",
            "--after",
            &keys[0],
        ],
        &dd,
    );
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with(&keys[1]), "{out}");
    // A server of another data dir is not taken for this one's.
    let mut other = h.opts.clone();
    other.data_dir = h.tmp.path().join("data2");
    let s2 = Server::start(&other);
    let admin2 = s2.admin_addr();
    let (code, out, err) = cache_cmd(&["stats", "--admin-listen", &admin2], &dd);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("serves the data dir"), "{err}");
    assert!(!out.contains("entries"), "{out}");
}
