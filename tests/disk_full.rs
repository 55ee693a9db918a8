//! A data dir that runs out of space (docs/storage.md, "Disk full"), on a small tmpfs the test
//! mounts, with Velox's output on the ordinary disk: the binary Velox built still reaches every
//! client that asked for it, nothing is stored, the error is counted as a store error, `/readyz`
//! names the state, and `cache.min_free_gb` keeps headroom by evicting.
//!
//! Mounting needs root (CAP_SYS_ADMIN). Where it is impossible each test says so loudly and
//! stops; `ingest_errors_of_a_full_disk_are_told_apart` below still proves, without a mount, that
//! a full disk's errors are told apart from the others.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

/// A tmpfs of a fixed size, unmounted (lazily, so a process still holding a file cannot block
/// it) when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    fn free(&self) -> u64 {
        disk_free(&self.path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn disk_free(path: &Path) -> u64 {
    velox_cache::store::disk_space(path).expect("statvfs").free
}

/// A small disk for the data dir, or `None` after saying loudly why there is none.
fn small_disk(tmp: &Path, size: &str, test: &str) -> Option<Tmpfs> {
    match Tmpfs::mount(&tmp.join("disk"), size) {
        Ok(t) => Some(t),
        Err(why) => {
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPED {test}: cannot mount a tmpfs ({why}).\n\
                 !!! The disk-full behaviour is NOT tested here; run the suite as root\n\
                 !!! with CAP_SYS_ADMIN (a privileged container) to test it.\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            None
        }
    }
}

async fn readyz(s: &Server) -> (u16, serde_json::Value) {
    let r = get(&s.admin_url("/readyz"), &[]).await;
    (r.status, r.json())
}

#[actix_web::test]
async fn a_binary_that_does_not_fit_still_reaches_every_waiter() {
    let tmp = tempfile::tempdir().expect("tmp");
    let Some(disk) = small_disk(
        tmp.path(),
        "8m",
        "a_binary_that_does_not_fit_still_reaches_every_waiter",
    ) else {
        return;
    };
    let artifacts = tmp.path().join("velox-out");
    let velox = FakeVelox::start(&artifacts);
    // The floor off: what fails here is the write itself.
    let opts =
        Options::new(&disk.path, &velox.url, &artifacts).env("VELOX_CACHE_CACHE__MIN_FREE_GB", "0");
    let server = Server::start(&opts);
    velox.set_size(12 * 1024 * 1024);
    velox.set_delay(Duration::from_millis(600));

    // Three clients ask for the same binary at once; one of them asks for a range.
    let url = server.url("/_velox/v1/builds");
    let req = build_request("linux", "amd64");
    let (a, b, c) = tokio::join!(
        post_json(&url, &req, &[]),
        async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            post_json(&url, &req, &[]).await
        },
        async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            post_json(&url, &req, &[("range", "bytes=0-99")]).await
        },
    );
    let built = walk_files(&artifacts);
    assert_eq!(built.len(), 1, "{built:?}");
    let velox_bytes = std::fs::read(&built[0]).expect("Velox's file");
    for r in [&a, &b] {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("x-cache-status"), Some("MISS"));
        assert_eq!(r.header("content-location"), None, "nothing was stored");
        assert_eq!(r.body.len(), velox_bytes.len());
        assert!(r.body == velox_bytes, "the bytes are Velox's");
        assert_eq!(
            r.header("etag"),
            Some(format!("\"{}\"", sha256_hex(&velox_bytes)).as_str())
        );
        assert!(r.header("repr-digest").is_some());
    }
    assert_eq!(c.status, 206);
    assert_eq!(&c.body[..], &velox_bytes[..100]);
    assert_eq!(velox.builds(), 1, "the build was not repeated");
    assert_eq!(velox.calls(), 1);

    // Nothing stored, nothing left over.
    assert!(walk_files(&disk.path.join("blobs")).is_empty());
    assert!(walk_files(&disk.path.join("manifests")).is_empty());
    assert!(walk_files(&disk.path.join("tmp")).is_empty());
    let stats = get(&server.admin_url("/v1/cache/stats"), &[]).await.json();
    assert_eq!(stats["entries"], 0);

    // Counted as a store error, not as a failed build.
    let m = |name: &'static str| metric(&server, name);
    assert_eq!(
        m("velox_cache_store_errors_total{reason=\"full\",tier=\"local\"}").await,
        1.0
    );
    assert_eq!(
        m("velox_cache_store_errors_total{reason=\"io\",tier=\"local\"}").await,
        0.0
    );
    assert_eq!(m("velox_builds_total{status=\"error\"}").await, 0.0);
    assert_eq!(m("velox_builds_total{status=\"success\"}").await, 1.0);
    assert_eq!(m("velox_builds_coalesced_total").await, 2.0);

    // Ready (hits and builds are still served), and saying the disk is full.
    let (status, v) = readyz(&server).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["storage"], "full", "{v}");

    // Asked not to wait, a client cannot be handed the bytes later: its build's status says the
    // binary was not stored.
    let r = post_json(&url, &distinct_request(9), &[("prefer", "respond-async")]).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let status_url = server.url(r.header("location").expect("location"));
    let mut last = serde_json::Value::Null;
    let failed = eventually(Duration::from_secs(20), async || {
        last = get(&status_url, &[]).await.json();
        last["status"] == "failed"
    })
    .await;
    assert!(failed, "{last}");
    assert_eq!(last["error"], "storage_unavailable", "{last}");
    assert_eq!(
        m("velox_cache_store_errors_total{reason=\"full\",tier=\"local\"}").await,
        2.0
    );

    // A binary that fits (another key: build_request's own tag is 7) is stored, and the state
    // clears.
    velox.set_size(1024 * 1024);
    velox.set_delay(Duration::ZERO);
    let small = post_json(&url, &distinct_request(8), &[]).await;
    assert_eq!(small.status, 200);
    assert!(small.header("content-location").is_some());
    let (status, v) = readyz(&server).await;
    assert_eq!((status, v["storage"].as_str()), (200, Some("ok")), "{v}");
    let hit = post_json(&url, &distinct_request(8), &[]).await;
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));

    // A disk that refuses every write: not ready, and named.
    let filler = disk.path.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    assert!(
        disk.free() < 64 * 1024,
        "the tmpfs is not full: {}",
        disk.free()
    );
    let (status, v) = readyz(&server).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["storage"], "full", "{v}");
    assert_eq!(v["ready"], false);
    // Hits still work on a full disk.
    let hit = post_json(&url, &distinct_request(8), &[]).await;
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    std::fs::remove_file(&filler).expect("remove filler");
    // Ready again once the freed space is seen (the compressor may still hold a moment's
    // temporary file, and the space of a deleted file is given back as its last handle closes).
    let mut last = serde_json::Value::Null;
    assert!(
        eventually(Duration::from_secs(10), async || {
            let (status, v) = readyz(&server).await;
            last = v;
            status == 200 && last["storage"] == "ok"
        })
        .await,
        "{last}"
    );
}

#[actix_web::test]
async fn min_free_gb_is_a_floor_kept_by_evicting() {
    let tmp = tempfile::tempdir().expect("tmp");
    let Some(disk) = small_disk(tmp.path(), "8m", "min_free_gb_is_a_floor_kept_by_evicting") else {
        return;
    };
    let artifacts = tmp.path().join("velox-out");
    let velox = FakeVelox::start(&artifacts);
    velox.set_size(1024 * 1024);
    // 3.5 MiB of the 8 MiB kept free, in fractions of a GB as an operator would write it.
    let floor = 3.5 * 1024.0 * 1024.0;
    let floor_gb = format!("{}", floor / (1024.0 * 1024.0 * 1024.0));
    let opts = Options::new(&disk.path, &velox.url, &artifacts)
        .env("VELOX_CACHE_CACHE__MIN_FREE_GB", &floor_gb);
    let mut server = Server::start(&opts);
    let url = server.url("/_velox/v1/builds");
    let mut keys = Vec::new();
    for i in 0..8 {
        let r = post_json(&url, &distinct_request(i), &[]).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("x-cache-status"), Some("MISS"));
        keys.push(r.header("x-velox-cache-key").expect("key").to_owned());
        // The floor holds once the MISS is answered. The slack is the log and sled's own
        // pages, written after the enforcement.
        assert!(
            disk.free() as f64 >= floor - 256.0 * 1024.0,
            "after build {i}: {} bytes free, floor {floor}",
            disk.free()
        );
    }
    let stats = get(&server.admin_url("/v1/cache/stats"), &[]).await.json();
    let entries = stats["entries"].as_u64().expect("entries");
    assert!(
        (1..8).contains(&entries),
        "{entries} entries: the floor evicted nothing"
    );
    eprintln!(
        "floor of {floor} bytes on an 8 MiB tmpfs: {entries} of 8 one-MiB entries kept, {} bytes free",
        disk.free()
    );
    let evicted = metric(
        &server,
        "velox_cache_evictions_total{reason=\"free_space\"}",
    )
    .await;
    assert_eq!(evicted as u64, 8 - entries);
    // The newest entry is kept; the oldest went first (LRU, never hit).
    let last = get(&server.admin_url(&format!("/v1/cache/{}", keys[7])), &[]).await;
    assert_eq!(last.status, 200);
    let first = get(&server.admin_url(&format!("/v1/cache/{}", keys[0])), &[]).await;
    assert_eq!(first.status, 404);
    assert_eq!(
        metric(
            &server,
            "velox_cache_store_errors_total{reason=\"full\",tier=\"local\"}"
        )
        .await,
        0.0
    );
    let (status, v) = readyz(&server).await;
    assert_eq!((status, v["storage"].as_str()), (200, Some("ok")), "{v}");
    assert!(metric(&server, "velox_cache_disk_free_bytes").await > 0.0);
    assert_eq!(
        metric(&server, "velox_cache_min_free_bytes").await,
        floor.floor()
    );

    // A floor larger than the disk: the start-up pass evicts everything it can, and /readyz
    // says the headroom is low.
    assert!(server.terminate_ok());
    let opts = opts.env("VELOX_CACHE_CACHE__MIN_FREE_GB", "0.01");
    server = Server::start(&opts);
    assert!(
        eventually(Duration::from_secs(20), async || {
            get(&server.admin_url("/v1/cache/stats"), &[]).await.json()["entries"] == 0
        })
        .await,
        "the start-up pass did not enforce the floor"
    );
    let (status, v) = readyz(&server).await;
    assert_eq!((status, v["storage"].as_str()), (200, Some("low")), "{v}");
}

/// Fills `disk` to the last byte with a file at `path`: large blocks, then smaller ones, so that
/// not even a page is left.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    for size in [64 * 1024, 4096, 512, 1] {
        let block = vec![0u8; size];
        while f.write_all(&block).is_ok() {}
    }
    let _ = f.sync_all();
}

/// Probes `/readyz` until sled itself has refused a write: its log's last page had room for a
/// few probes after the data dir had none. `None` when it never did.
async fn until_the_index_fails(server: &Server) -> Option<serde_json::Value> {
    for _ in 0..2000 {
        let (status, v) = readyz(server).await;
        if status == 503 && v["storage_error"] == "the metadata database does not take writes" {
            return Some(v);
        }
    }
    None
}

/// What the reopen is for, pinned on sled itself: once a write to its log failed for lack of
/// space, an open `Db` refuses every later write even after the space is back, and a `Db` opened
/// anew takes them, with what was flushed before.
#[test]
fn sled_refuses_writes_after_a_full_disk_until_reopened() {
    let tmp = tempfile::tempdir().expect("tmp");
    let Some(disk) = small_disk(
        tmp.path(),
        "4m",
        "sled_refuses_writes_after_a_full_disk_until_reopened",
    ) else {
        return;
    };
    let meta = disk.path.join("meta");
    let db = sled::Config::new().path(&meta).open().expect("open");
    db.insert(b"before", b"kept").expect("insert");
    db.flush().expect("flush");
    let filler = disk.path.join("filler");
    fill(&filler);
    let mut refused = None;
    for i in 0u32..100_000 {
        if let Err(e) = db
            .insert(i.to_be_bytes(), &[0u8; 64][..])
            .and_then(|_| db.flush())
        {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("sled never refused a write on a full disk");
    eprintln!("sled on a full disk: {refused}");
    std::fs::remove_file(&filler).expect("remove filler");
    assert!(disk.free() > 1024 * 1024);
    let again = db.insert(b"after", b"x").and_then(|_| db.flush());
    assert!(again.is_err(), "sled took a write again without a reopen");
    drop(db);
    let db = reopened(&meta);
    db.insert(b"after", b"x").expect("insert after the reopen");
    db.flush().expect("flush after the reopen");
    assert_eq!(
        db.get(b"before").expect("get").as_deref(),
        Some(&b"kept"[..])
    );
}

/// sled's lock on its files outlives a dropped `Db` for a moment (its threads let go last).
fn reopened(path: &Path) -> sled::Db {
    for _ in 0..250 {
        match sled::Config::new().path(path).open() {
            Ok(db) => return db,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("cannot reopen sled: {e}"),
        }
    }
    panic!("sled's lock was never let go");
}

#[actix_web::test]
async fn the_index_takes_writes_again_when_the_disk_frees_up_without_a_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let Some(disk) = small_disk(
        tmp.path(),
        "16m",
        "the_index_takes_writes_again_when_the_disk_frees_up_without_a_restart",
    ) else {
        return;
    };
    let artifacts = tmp.path().join("velox-out");
    let velox = FakeVelox::start(&artifacts);
    velox.set_size(1024 * 1024);
    let opts = Options::new(&disk.path, &velox.url, &artifacts)
        .env("VELOX_CACHE_CACHE__MIN_FREE_GB", "0")
        .env("VELOX_CACHE_CACHE__ACCESS_UPDATE_INTERVAL", "100ms");
    let server = Server::start(&opts);
    let url = server.url("/_velox/v1/builds");
    let pid = server.pid();

    // One binary stored while there is room.
    let first = post_json(&url, &distinct_request(1), &[]).await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert!(first.header("content-location").is_some());
    let hit = post_json(&url, &distinct_request(1), &[]).await;
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));

    // The disk fills until sled's own log is refused.
    let filler = disk.path.join("filler");
    fill(&filler);
    let failed = until_the_index_fails(&server).await;
    let failed =
        failed.unwrap_or_else(|| panic!("sled never refused a write:\n{}", server.log_text()));
    assert_eq!(failed["storage"], "full", "{failed}");
    assert_eq!(failed["index"], "failed", "{failed}");
    assert_eq!(failed["ready"], false, "{failed}");

    // Builds cannot be stored, but a cached binary is still served.
    let r = post_json(&url, &distinct_request(2), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-cache-status"), Some("MISS"));
    assert_eq!(r.header("content-location"), None, "nothing was stored");
    for _ in 0..3 {
        let hit = post_json(&url, &distinct_request(1), &[]).await;
        assert_eq!(hit.status, 200);
        assert_eq!(hit.header("x-cache-status"), Some("HIT"));
        assert_eq!(hit.body.len(), 1024 * 1024);
    }
    // Still not recovered while the disk is full: nothing to reopen onto.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, v) = readyz(&server).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["index"], "failed", "{v}");
    assert_eq!(get(&server.admin_url("/healthz"), &[]).await.status, 200);

    // Space comes back: the index is reopened by the running process.
    std::fs::remove_file(&filler).expect("remove filler");
    let mut last = serde_json::Value::Null;
    let back = eventually(Duration::from_secs(20), async || {
        let (status, v) = readyz(&server).await;
        last = v;
        status == 200
    })
    .await;
    assert!(back, "{last}\n{}", server.log_text());
    assert_eq!(last["storage"], "ok", "{last}");
    assert_eq!(last["index"], "ok", "{last}");
    assert_eq!(
        metric(&server, "velox_cache_index_reopens_total{result=\"ok\"}").await,
        1.0
    );

    // A new build is stored again, and hit.
    let stored = post_json(&url, &distinct_request(3), &[]).await;
    assert_eq!(
        stored.status,
        200,
        "{}",
        String::from_utf8_lossy(&stored.body)
    );
    assert_eq!(stored.header("x-cache-status"), Some("MISS"));
    assert!(stored.header("content-location").is_some(), "stored");
    let key = stored.header("x-velox-cache-key").expect("key").to_owned();
    let hit = post_json(&url, &distinct_request(3), &[]).await;
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    let list = get(&server.admin_url("/v1/cache"), &[]).await.json();
    assert!(list.to_string().contains(&key), "{list}");
    // The entry stored before the disk filled is still there and served.
    let hit = post_json(&url, &distinct_request(1), &[]).await;
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    assert_eq!(server.pid(), pid);
    assert_eq!(get(&server.admin_url("/healthz"), &[]).await.status, 200);
}

#[actix_web::test]
async fn an_index_that_cannot_be_reopened_fails_healthz() {
    let tmp = tempfile::tempdir().expect("tmp");
    let Some(disk) = small_disk(
        tmp.path(),
        "16m",
        "an_index_that_cannot_be_reopened_fails_healthz",
    ) else {
        return;
    };
    let artifacts = tmp.path().join("velox-out");
    let velox = FakeVelox::start(&artifacts);
    velox.set_size(64 * 1024);
    let opts =
        Options::new(&disk.path, &velox.url, &artifacts).env("VELOX_CACHE_CACHE__MIN_FREE_GB", "0");
    let server = Server::start(&opts);
    let url = server.url("/_velox/v1/builds");
    let stored = post_json(&url, &distinct_request(1), &[]).await;
    assert!(stored.header("content-location").is_some());

    let filler = disk.path.join("filler");
    fill(&filler);
    let failed = until_the_index_fails(&server).await;
    assert!(
        failed.is_some(),
        "sled never refused a write:\n{}",
        server.log_text()
    );
    // While the process runs, its index folder is taken away and a file put in its place: no
    // index can be opened there.
    let meta = disk.path.join("meta");
    let moved = disk.path.join("meta.moved");
    std::fs::rename(&meta, &moved).expect("move the index away");
    std::fs::write(&meta, b"").expect("a file where the index was");
    std::fs::remove_file(&filler).expect("remove filler");

    // Space is back but every reopen fails: after the attempts, /healthz fails with the JSON
    // error shape, so that an orchestrator restarts the process.
    let mut last = None;
    let unhealthy = eventually(Duration::from_secs(20), async || {
        let r = get(&server.admin_url("/healthz"), &[]).await;
        let failing = r.status == 503;
        last = Some(r);
        failing
    })
    .await;
    let r = last.expect("asked");
    assert!(unhealthy, "{r:?}\n{}", server.log_text());
    let v = r.assert_error(503, "storage_unavailable");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("restart")),
        "{v}"
    );
    let (status, v) = readyz(&server).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["index"], "unrecoverable", "{v}");
    assert_eq!(v["ready"], false, "{v}");
    assert!(metric(&server, "velox_cache_index_reopens_total{result=\"error\"}").await >= 3.0);
    assert_eq!(
        metric(&server, "velox_cache_index_reopens_total{result=\"ok\"}").await,
        0.0
    );
    let log = server.log_text();
    assert!(log.contains("cannot reopen the index"), "{log}");
    // With no index there is nothing to serve from: requests get a clear error, not a rebuild.
    let builds = velox.builds();
    post_json(&url, &distinct_request(1), &[])
        .await
        .assert_error(503, "storage_unavailable");
    assert_eq!(velox.builds(), builds);

    // The attempts go on: with the index back in place, one succeeds and the process is healthy
    // again, with its entry.
    std::fs::remove_file(&meta).expect("remove the file");
    std::fs::rename(&moved, &meta).expect("put the index back");
    let healthy = eventually(Duration::from_secs(20), async || {
        get(&server.admin_url("/healthz"), &[]).await.status == 200
    })
    .await;
    assert!(healthy, "{}", server.log_text());
    let (status, v) = readyz(&server).await;
    assert_eq!((status, v["index"].as_str()), (200, Some("ok")), "{v}");
    let hit = post_json(&url, &distinct_request(1), &[]).await;
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
}

trait TerminateOk {
    fn terminate_ok(&mut self) -> bool;
}

impl TerminateOk for Server {
    /// SIGTERM and a clean exit, leaving `self` to be replaced.
    fn terminate_ok(&mut self) -> bool {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        self.wait_exit(Duration::from_secs(40)).success()
    }
}

/// Without a mount: the errors of a full disk are the ones the disk-full path takes, and others
/// are not. (The mount tests above show the path itself.)
#[test]
fn ingest_errors_of_a_full_disk_are_told_apart() {
    use std::io;
    use velox_cache::store::{IngestError, StoreError};
    let full = |e: IngestError| matches!(e.classified(), IngestError::NoSpace(_));
    assert!(full(IngestError::Io(io::Error::from_raw_os_error(
        libc::ENOSPC
    ))));
    assert!(full(IngestError::Io(io::Error::from_raw_os_error(
        libc::EDQUOT
    ))));
    let sled_full = sled::Error::Io(io::Error::from_raw_os_error(libc::ENOSPC));
    assert!(full(IngestError::Store(StoreError::Sled(sled_full))));
    assert!(!full(IngestError::Io(io::Error::from_raw_os_error(
        libc::EIO
    ))));
    assert!(!full(IngestError::Io(io::Error::from_raw_os_error(
        libc::EROFS
    ))));
    assert!(!full(IngestError::Empty));
    // A real full device says ENOSPC, and that is what the write path sees.
    let err = std::fs::write("/dev/full", b"x").expect_err("/dev/full takes nothing");
    assert!(full(IngestError::Io(err)));
}
