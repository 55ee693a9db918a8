//! The store in-process, beside the HTTP tests: insert, eviction per policy, blob reference
//! counts, and reconciliation after files were lost or left behind. Modelled on the way disk
//! caches test their LRU (bazel-remote's `cache/disk` tests): fill a small cache, touch some
//! entries, overflow it, and check exactly which ones are gone, on disk as well as in the index.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use velox_cache::config::EvictionPolicy;
use velox_cache::ids::{CacheKey, Digest};
use velox_cache::store::{EvictionReason, Limits, Store};

fn key(n: u8) -> CacheKey {
    CacheKey([n; 32])
}

/// A Velox output file with `bytes`, as the build layer hands it to ingest.
fn artifact(dir: &Path, name: &str, bytes: &[u8]) -> fs::File {
    let path = dir.join(name);
    let mut f = fs::File::create(&path).expect("create artifact");
    f.write_all(bytes).expect("write artifact");
    drop(f);
    fs::File::open(&path).expect("open artifact")
}

fn digest_of(bytes: &[u8]) -> Digest {
    Digest(Sha256::digest(bytes).into())
}

struct Fixture {
    _dir: tempfile::TempDir,
    out: tempfile::TempDir,
    store: Store,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open store");
        Fixture {
            _dir: dir,
            out,
            store,
        }
    }

    /// Ingests `bytes` as the entry for `key(n)`. Waits a little first so that every entry has
    /// its own millisecond in the time-ordered trees.
    fn put(&self, n: u8, bytes: &[u8]) -> Digest {
        std::thread::sleep(Duration::from_millis(3));
        let src = artifact(self.out.path(), &format!("a{n}"), bytes);
        let entry = self
            .store
            .ingest(src, &key(n), "roadrunner", serde_json::json!({"n": n}), 10)
            .expect("ingest");
        assert_eq!(entry.digest, digest_of(bytes));
        entry.digest
    }

    fn touch(&self, n: u8) {
        std::thread::sleep(Duration::from_millis(3));
        self.store.note_hit(&key(n));
        self.store.write_pending_hits().expect("write hits");
    }

    fn present(&self, n: u8) -> bool {
        self.store.lookup(&key(n)).expect("lookup").is_some()
    }

    fn enforce(&self, limits: Limits, protect: Option<u8>) -> Vec<(CacheKey, EvictionReason)> {
        self.store
            .enforce(&limits, protect.map(key).as_ref())
            .expect("enforce")
    }
}

fn count_limit(n: u64, policy: EvictionPolicy) -> Limits {
    Limits {
        max_bytes: 0,
        max_entries: n,
        max_age: Duration::ZERO,
        policy,
        min_free_bytes: 0,
    }
}

#[test]
fn ingest_places_blob_manifest_and_entry() {
    let f = Fixture::new();
    let digest = f.put(1, b"binary one");
    let entry = f.store.lookup(&key(1)).expect("lookup").expect("entry");
    assert_eq!(entry.size, 10);
    assert_eq!(
        fs::read(f.store.blob_path(&digest)).expect("blob"),
        b"binary one"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(f.store.manifest_path(&key(1))).expect("manifest"))
            .expect("json");
    assert_eq!(manifest["version"], 1);
    assert_eq!(manifest["digest"], digest.to_hex());
    assert_eq!(manifest["request"]["n"], 1);
    let totals = f.store.totals().expect("totals");
    assert_eq!((totals.entries, totals.bytes), (1, 10));
    assert!(
        fs::read_dir(f.store.tmp_dir())
            .expect("tmp")
            .next()
            .is_none(),
        "tmp/ is left empty"
    );
}

#[test]
fn lru_evicts_the_least_recently_used() {
    let f = Fixture::new();
    for n in 1..=3 {
        f.put(n, &[n; 100]);
    }
    f.touch(1); // 2 is now the least recently used
    f.put(4, &[4; 100]);
    let evicted = f.enforce(count_limit(3, EvictionPolicy::Lru), Some(4));
    assert_eq!(evicted, vec![(key(2), EvictionReason::Count)]);
    assert!(f.present(1) && !f.present(2) && f.present(3) && f.present(4));
    assert!(!f.store.blob_path(&digest_of(&[2; 100])).exists());
    assert!(!f.store.manifest_path(&key(2)).exists());
}

#[test]
fn lfu_evicts_the_least_frequently_used() {
    let f = Fixture::new();
    for n in 1..=3 {
        f.put(n, &[n; 100]);
    }
    f.touch(1);
    f.touch(1);
    f.touch(2);
    f.touch(3);
    f.touch(3); // counts: 1→2, 2→1, 3→2
    f.put(4, &[4; 100]);
    let evicted = f.enforce(count_limit(3, EvictionPolicy::Lfu), Some(4));
    assert_eq!(evicted, vec![(key(2), EvictionReason::Count)]);
}

#[test]
fn fifo_evicts_the_oldest_whatever_its_hits() {
    let f = Fixture::new();
    for n in 1..=3 {
        f.put(n, &[n; 100]);
    }
    f.touch(1);
    f.touch(1);
    f.put(4, &[4; 100]);
    let evicted = f.enforce(count_limit(2, EvictionPolicy::Fifo), Some(4));
    assert_eq!(
        evicted,
        vec![
            (key(1), EvictionReason::Count),
            (key(2), EvictionReason::Count)
        ]
    );
}

#[test]
fn size_limit_evicts_until_the_bytes_fit_and_never_the_protected_entry() {
    let f = Fixture::new();
    for n in 1..=4 {
        f.put(n, &[n; 1000]);
    }
    let limits = Limits {
        max_bytes: 2500,
        max_entries: 0,
        max_age: Duration::ZERO,
        policy: EvictionPolicy::Fifo,
        min_free_bytes: 0,
    };
    let evicted = f.enforce(limits, Some(1));
    assert_eq!(
        evicted,
        vec![
            (key(2), EvictionReason::Size),
            (key(3), EvictionReason::Size)
        ]
    );
    assert!(f.present(1) && f.present(4));
    assert_eq!(f.store.totals().expect("totals").bytes, 2000);
}

#[test]
fn age_limit_removes_expired_entries() {
    let f = Fixture::new();
    f.put(1, b"old");
    std::thread::sleep(Duration::from_millis(1000));
    f.put(2, b"new");
    let created = |n| {
        f.store
            .lookup(&key(n))
            .expect("lookup")
            .expect("entry")
            .created_ms
    };
    // A limit that falls halfway between the two creations, however long the puts took.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let midpoint = (created(1) + created(2)) / 2;
    let limits = Limits {
        max_bytes: 0,
        max_entries: 0,
        max_age: Duration::from_millis(now - midpoint),
        policy: EvictionPolicy::Lru,
        min_free_bytes: 0,
    };
    assert_eq!(f.enforce(limits, None), vec![(key(1), EvictionReason::Age)]);
    assert!(f.present(2));
}

#[test]
fn a_shared_blob_goes_only_with_its_last_entry() {
    let f = Fixture::new();
    let d = f.put(1, b"same bytes");
    assert_eq!(f.put(2, b"same bytes"), d);
    assert_eq!(f.store.blob(&d).expect("blob").expect("record").refs, 2);
    let totals = f.store.totals().expect("totals");
    assert_eq!(
        (totals.entries, totals.bytes),
        (2, 10),
        "one blob counted once"
    );

    f.store.remove(&key(1)).expect("remove");
    assert_eq!(f.store.blob(&d).expect("blob").expect("record").refs, 1);
    assert!(f.store.blob_path(&d).exists());
    f.store.remove(&key(2)).expect("remove");
    assert!(f.store.blob(&d).expect("blob").is_none());
    assert!(!f.store.blob_path(&d).exists());
    assert_eq!(f.store.totals().expect("totals").bytes, 0);
}

#[test]
fn replacing_an_entry_releases_its_old_blob() {
    let f = Fixture::new();
    let old = f.put(1, b"first build");
    let new = f.put(1, b"second build");
    assert_ne!(old, new);
    assert!(!f.store.blob_path(&old).exists());
    assert!(f.store.blob(&old).expect("blob").is_none());
    let totals = f.store.totals().expect("totals");
    assert_eq!((totals.entries, totals.bytes), (1, 12));
}

#[test]
fn reconcile_repairs_what_the_files_say() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let lost;
    let orphan_blob;
    {
        let store = Store::open(dir.path()).expect("open");
        let put = |n: u8, bytes: &[u8]| {
            store
                .ingest(
                    artifact(out.path(), &format!("a{n}"), bytes),
                    &key(n),
                    "roadrunner",
                    serde_json::json!({}),
                    1,
                )
                .expect("ingest")
                .digest
        };
        put(1, b"kept");
        lost = put(2, b"blob will vanish");
        put(3, b"index will forget");
        // Entry 3 leaves the index but keeps its files, as after a crash before the commit.
        let manifest = fs::read(store.manifest_path(&key(3))).expect("manifest");
        let blob = fs::read(store.blob_path(&digest_of(b"index will forget"))).expect("blob");
        store.remove(&key(3)).expect("remove");
        fs::create_dir_all(store.manifest_path(&key(3)).parent().expect("dir")).expect("dir");
        fs::write(store.manifest_path(&key(3)), manifest).expect("manifest back");
        let b3 = store.blob_path(&digest_of(b"index will forget"));
        fs::create_dir_all(b3.parent().expect("dir")).expect("dir");
        fs::write(b3, blob).expect("blob back");
        // A blob nothing refers to.
        orphan_blob = store.blob_path(&digest_of(b"orphan"));
        fs::create_dir_all(orphan_blob.parent().expect("dir")).expect("dir");
        fs::write(&orphan_blob, b"orphan").expect("orphan");
        fs::remove_file(store.blob_path(&lost)).expect("lose a blob");
        store.flush().expect("flush");
    }
    let store = Store::open(dir.path()).expect("reopen");
    let report = store.reconcile().expect("reconcile");
    assert_eq!(report.dropped_entries, 1, "{report:?}");
    assert_eq!(report.reindexed, 1, "{report:?}");
    assert_eq!(report.orphan_blobs, 1, "{report:?}");
    assert!(store.lookup(&key(1)).expect("lookup").is_some());
    assert!(store.lookup(&key(2)).expect("lookup").is_none());
    assert!(store.lookup(&key(3)).expect("lookup").is_some());
    assert!(!orphan_blob.exists());
    assert!(store.verify().expect("verify").0.is_empty());
}

#[test]
fn a_manifest_of_another_version_is_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let path = store.manifest_path(&key(9));
    fs::create_dir_all(path.parent().expect("dir")).expect("dir");
    let future = serde_json::json!({"version": 2, "key": key(9).to_hex(), "layout": "new"});
    fs::write(&path, future.to_string()).expect("write");
    let report = store.reconcile().expect("reconcile");
    assert_eq!(report.orphan_manifests, 0, "{report:?}");
    assert!(
        path.exists(),
        "a newer version's manifest survives an older binary"
    );
    assert!(store.lookup(&key(9)).expect("lookup").is_none());
}

#[test]
fn a_second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = Store::open(dir.path()).expect("open");
    let second = Store::open(dir.path());
    let Err(e) = second else {
        panic!("a second store opened the same data dir");
    };
    assert!(e.to_string().contains("in use"), "{e}");
}
