//! Integrity at rest (docs/storage.md): the scrub that re-hashes every blob at a bounded read
//! rate, the quarantine that takes a damaged blob out of service, and the list of damaged files
//! that downloads already under way check, so that no client receives bytes found wrong.
//!
//! A blob is damaged when its bytes no longer hash to its name, when it has the wrong size, or
//! when it is not a regular file (a symlink, a FIFO, a folder). A damaged blob is moved to
//! `quarantine/` (never followed, never deleted: it is evidence) and every entry using it is
//! removed, so the next request for any of them builds the binary again.
//!
//! Crash safety: the move comes first and the index changes after it. A crash between the two
//! leaves entries whose blob is missing, which are not served (the hit path finds no file) and
//! which the start-up pass drops; the scrub itself only reads.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::index::key_of;
use super::{BlobRecord, EntryRecord, Store, StoreError};
use crate::ids::{CacheKey, Digest};

/// What one scrub pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScrubReport {
    /// Blobs whose bytes were read to the end and hashed.
    pub checked: usize,
    pub bytes: u64,
    /// Blobs found damaged (each quarantined, its entries removed).
    pub corrupt: usize,
    /// The pass was stopped before the end.
    pub stopped: bool,
}

/// Opens `path` for reading without following a symlink and without blocking on a FIFO, so that
/// whatever sits at a blob path can be examined before anything trusts it.
pub(super) fn open_nofollow(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// A file's identity and the time its inode last changed, taken after the quarantine moved it.
/// A later file that reuses the inode number has another change time, so it is never mistaken
/// for the damaged one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
        }
    }
}

/// Damaged files, newest last, and a generation that changes whenever one is added: a download
/// compares the generation once per chunk (one atomic load) and looks at the list only when it
/// moved. Bounded: damage is rare, and the oldest findings concern downloads long finished.
static REVOKED: LazyLock<Mutex<Vec<Stamp>>> = LazyLock::new(|| Mutex::new(Vec::new()));
static REVOKED_GENERATION: AtomicU64 = AtomicU64::new(0);
const REVOKED_KEPT: usize = 1024;

/// Changes whenever a file is found damaged; 0 until the first time.
pub fn revocation_generation() -> u64 {
    REVOKED_GENERATION.load(Ordering::Acquire)
}

/// Whether `file` (held open by a download) is one found damaged. A download that gets `true`
/// must stop sending: what it would send next was found wrong.
pub fn is_revoked(file: &File) -> bool {
    let Ok(m) = file.metadata() else {
        return false;
    };
    let stamp = Stamp::of(&m);
    REVOKED.lock().map(|l| l.contains(&stamp)).unwrap_or(false)
}

fn revoke(file: &File) {
    let Ok(m) = file.metadata() else {
        return;
    };
    if let Ok(mut list) = REVOKED.lock() {
        if list.len() >= REVOKED_KEPT {
            list.remove(0);
        }
        list.push(Stamp::of(&m));
    }
    REVOKED_GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// Paces reads to at most `bytes_per_sec`, sleeping in short slices so that a stop request is
/// seen within 50 ms.
pub struct Throttle<'a> {
    bytes_per_sec: f64,
    started: Instant,
    read: u64,
    stop: &'a (dyn Fn() -> bool + Sync),
}

impl<'a> Throttle<'a> {
    pub fn new(bytes_per_sec: f64, stop: &'a (dyn Fn() -> bool + Sync)) -> Self {
        Throttle {
            bytes_per_sec: bytes_per_sec.max(1.0),
            started: Instant::now(),
            read: 0,
            stop,
        }
    }

    /// Accounts for `n` bytes just read and waits until the rate allows more. `false`: stop.
    pub fn pace(&mut self, n: u64) -> bool {
        self.read += n;
        let due = Duration::from_secs_f64(self.read as f64 / self.bytes_per_sec);
        loop {
            if (self.stop)() {
                return false;
            }
            let elapsed = self.started.elapsed();
            if elapsed >= due {
                return true;
            }
            std::thread::sleep((due - elapsed).min(Duration::from_millis(50)));
        }
    }

    pub fn stopped(&self) -> bool {
        (self.stop)()
    }
}

/// Where a pass cut short stopped (the last digest checked), and when the last pass finished
/// (ms), in the `counters` tree.
const SCRUB_CURSOR: &[u8] = b"scrub_cursor";
const SCRUB_DONE: &[u8] = b"scrub_done_ms";

/// Bytes read at a time: small enough that the pacing is smooth at low rates.
const SCRUB_CHUNK: usize = 256 * 1024;

/// What reading a blob found.
enum Check {
    Whole,
    Damaged(File, &'static str),
    /// Damaged, and already taken out of service (a symlink: there is no handle to hold).
    Condemned,
    /// Not there (removed since its record was read) or unreadable: not the scrub's finding.
    Skipped,
    Stopped,
}

impl Store {
    /// Runs `f` whenever a damaged blob is found (the metrics count it there).
    pub fn on_corrupt(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.corrupt_hook.set(Box::new(f));
    }

    /// How long until the next scrub pass is due, `interval` after the last one finished. A pass
    /// cut short (by a stop or a crash) is due at once and goes on where it was; a data dir never
    /// scrubbed counts from now. Kept in the index, so that restarts more frequent than the
    /// interval do not put the scrub off for ever.
    pub fn scrub_wait(&self, interval: Duration) -> Result<Duration, StoreError> {
        let ix = self.ix()?;
        if ix.counters.get(SCRUB_CURSOR)?.is_some() {
            return Ok(Duration::ZERO);
        }
        let now = crate::util::now_ms();
        let done = match ix.counters.get(SCRUB_DONE)? {
            Some(v) => super::index::be_u64(&v),
            None => {
                ix.counters.insert(SCRUB_DONE, &now.to_be_bytes())?;
                now
            }
        };
        let due = done.saturating_add(interval.as_millis() as u64);
        Ok(Duration::from_millis(due.saturating_sub(now)))
    }

    /// One scrub pass over every blob the index knows (from where a pass cut short stopped),
    /// re-hashed at the pace `throttle` allows. Blocks for as long as that takes: run it on the
    /// blocking pool.
    pub fn scrub(&self, throttle: &mut Throttle<'_>) -> Result<ScrubReport, StoreError> {
        let mut report = ScrubReport::default();
        let cursor = self.ix()?.counters.get(SCRUB_CURSOR)?;
        let mut from = match cursor {
            Some(c) if !c.is_empty() => std::ops::Bound::Excluded(c.to_vec()),
            _ => {
                // An empty cursor marks a pass under way from the start: cut before its first
                // blob is done, it is still due at once.
                self.ix()?.counters.insert(SCRUB_CURSOR, &[])?;
                std::ops::Bound::Unbounded
            }
        };
        loop {
            if throttle.stopped() {
                report.stopped = true;
                break;
            }
            // The index is looked up afresh for each blob: a pass holds no handle on it for its
            // whole length, so that a reopen (docs/storage.md, "Disk full") never waits for it.
            let next = self
                .ix()?
                .blobs
                .range((from.clone(), std::ops::Bound::Unbounded))
                .next();
            let Some(item) = next else { break };
            let (k, v) = item?;
            from = std::ops::Bound::Excluded(k.to_vec());
            let (Some(digest), Ok(record)) = (Digest::from_slice(&k), BlobRecord::decode(&v))
            else {
                log::error!("scrub: the blob record {} does not decode", hex::encode(&k));
                continue;
            };
            match self.check_blob(&digest, record.size, throttle) {
                Check::Whole => {
                    report.checked += 1;
                    report.bytes += record.size;
                    // Its compressed variants too (docs/compression.md), at the same pace.
                    match self.check_variants_of(&digest, true, &mut |n| throttle.pace(n)) {
                        Ok(0) => {}
                        Ok(n) => {
                            report.corrupt += n;
                            self.want_variants(&digest);
                        }
                        Err(e) => log::error!("scrub: the variants of {digest}: {e}"),
                    }
                }
                Check::Damaged(file, why) => {
                    report.checked += 1;
                    report.corrupt += 1;
                    self.condemn(&digest, Some(&file), why)?;
                }
                Check::Condemned => report.corrupt += 1,
                Check::Skipped => {}
                Check::Stopped => {
                    report.stopped = true;
                    break;
                }
            }
            // Not flushed: after a crash, a few blobs are checked twice.
            self.ix()?
                .counters
                .insert(SCRUB_CURSOR, digest.as_bytes())?;
        }
        if !report.stopped {
            let ix = self.ix()?;
            ix.counters.remove(SCRUB_CURSOR)?;
            ix.counters
                .insert(SCRUB_DONE, &crate::util::now_ms().to_be_bytes())?;
        }
        Ok(report)
    }

    fn check_blob(&self, digest: &Digest, size: u64, throttle: &mut Throttle<'_>) -> Check {
        let path = self.blob_path(digest);
        let mut file = match open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                // No handle to revoke: nothing opens a blob through a symlink.
                return match self.condemn(digest, None, "is a symbolic link") {
                    Ok(_) => Check::Condemned,
                    Err(e) => {
                        log::error!("scrub: cannot quarantine {digest}: {e}");
                        Check::Skipped
                    }
                };
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Check::Skipped,
            Err(e) => {
                log::error!("scrub: blob {digest} cannot be opened: {e}");
                return Check::Skipped;
            }
        };
        match file.metadata() {
            Ok(m) if !m.is_file() => return Check::Damaged(file, "is not a regular file"),
            Ok(m) if m.len() != size => return Check::Damaged(file, "has the wrong size"),
            Ok(_) => {}
            Err(e) => {
                log::error!("scrub: blob {digest} cannot be examined: {e}");
                return Check::Skipped;
            }
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; SCRUB_CHUNK];
        let mut read: u64 = 0;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // A read error on a blob is damage the disk reports itself.
                    log::error!("scrub: blob {digest} cannot be read: {e}");
                    return Check::Damaged(file, "cannot be read");
                }
            };
            hasher.update(&buf[..n]);
            read += n as u64;
            if !throttle.pace(n as u64) {
                return Check::Stopped;
            }
        }
        if read != size {
            return Check::Damaged(file, "has the wrong size");
        }
        if Digest(hasher.finalize().into()) != *digest {
            return Check::Damaged(file, "does not hash to its name");
        }
        Check::Whole
    }

    /// Takes a damaged blob out of service: moves it to `quarantine/` and removes every entry
    /// using it, under the write lock so that no ingest interleaves. `held` is the handle the
    /// damage was seen through (none for a symlink): the file is moved only if it is still the
    /// one at the blob path (an ingest may have replaced it with a good copy meanwhile), and
    /// downloads of it are stopped either way. Returns how many entries went.
    pub(super) fn condemn(
        &self,
        digest: &Digest,
        held: Option<&File>,
        why: &str,
    ) -> Result<usize, StoreError> {
        let path = self.blob_path(digest);
        let _guard = self.locked()?;
        let there = match fs::symlink_metadata(&path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let same = match (held, &there) {
            (Some(file), Some(there)) => {
                let m = file.metadata()?;
                m.dev() == there.dev() && m.ino() == there.ino()
            }
            (None, Some(there)) => !there.is_file(),
            (_, None) => false,
        };
        if !same {
            // Whoever moved it aside counted it (or an ingest put a good copy in its place):
            // one damaged file is counted once, however many readers met it.
            if let Some(file) = held {
                log::error!("blob {digest} {why}; it was already replaced");
                revoke(file);
            }
            return Ok(0);
        }
        let aside = self.set_aside(&path, &digest.to_hex())?;
        self.forget_sidecars(digest);
        if let Some(file) = held {
            revoke(file);
        }
        let removed = self.drop_entries_of(digest)?;
        log::error!(
            "blob {digest} {why}: moved to {} and {removed} entr{} removed; the next request for {} builds it again",
            aside.display(),
            if removed == 1 { "y" } else { "ies" },
            if removed == 1 { "it" } else { "them" },
        );
        self.count_corrupt();
        Ok(removed)
    }

    /// Takes the blob `digest` out of service because a reader found that `file` (its handle
    /// on the blob) does not hash to its name, as the scrub would: quarantined, entries removed.
    pub fn report_damaged(&self, digest: &Digest, file: &File, why: &str) {
        if let Err(e) = self.condemn(digest, Some(file), why) {
            log::error!("cannot quarantine the blob {digest}: {e}");
        }
    }

    fn count_corrupt(&self) {
        if let Some(hook) = self.corrupt_hook.get() {
            hook();
        }
    }

    /// Moves whatever is at `path` (a file, a symlink, a FIFO, a folder: never followed) into
    /// `quarantine/`, under a name that never overwrites an earlier finding. A filesystem that
    /// cannot take the move gets the file deleted instead: out of service is what matters.
    pub(super) fn set_aside(
        &self,
        path: &Path,
        name: &str,
    ) -> Result<std::path::PathBuf, StoreError> {
        let dir = self.root.join("quarantine");
        super::ingest::ensure_dir(&dir)?;
        let aside = dir.join(format!("{name}.{}", uuid::Uuid::new_v4().simple()));
        match fs::rename(path, &aside) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                log::error!(
                    "cannot move {} to the quarantine ({e}); deleting it",
                    path.display()
                );
                match fs::symlink_metadata(path) {
                    Ok(m) if m.is_dir() => fs::remove_dir_all(path)?,
                    _ => fs::remove_file(path)?,
                }
                return Ok(path.to_path_buf());
            }
            Err(e) => return Err(e.into()),
        }
        super::ingest::sync_dir(&dir)?;
        if let Some(parent) = path.parent() {
            super::ingest::sync_dir(parent)?;
        }
        Ok(aside)
    }

    /// Removes every entry whose blob is `digest` (the caller holds the write lock). The blob's
    /// reference count says how many to look for, so the scan stops as soon as all are found.
    fn drop_entries_of(&self, digest: &Digest) -> Result<usize, StoreError> {
        let refs = self.blob(digest)?.map(|b| b.refs).unwrap_or(0);
        let mut keys: Vec<CacheKey> = Vec::new();
        if refs > 0 {
            for item in self.ix()?.entries.iter() {
                let (k, v) = item?;
                let Some(key) = key_of(&k) else { continue };
                if EntryRecord::decode(&v).is_ok_and(|e| e.digest == *digest) {
                    keys.push(key);
                    if keys.len() as u64 >= refs {
                        break;
                    }
                }
            }
        }
        for key in &keys {
            self.remove_locked(key)?;
        }
        Ok(keys.len())
    }
}
