//! Open blob files kept for the next request of the same blob, so that a hit costs no `open`,
//! `statx` and `close` (three of the six system calls a 1 KiB range needed; BENCHMARKS.md).
//!
//! Never stale, by a sequence counter: every change to blob files happens under the store's write
//! lock, and the counter is raised when that lock is taken and again when it is let go, so it is
//! odd while files may be changing. A handle is cached only when the counter was even and
//! unchanged from before its file was opened until after, and is used only while the counter
//! still has that value. The cache is emptied when the lock is let go, so a handle of an evicted
//! or replaced blob is closed as soon as no download holds it. Changes from outside the process
//! are caught by the link count: a kept file that was unlinked or renamed over (nlink 0) is
//! dropped and the path opened again, with every check of a first open.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::ids::Digest;

/// Kept handles at most: each is a descriptor, and descriptors are budgeted against
/// `max_connections` (the hot set of a cache is a handful of binaries).
const KEPT: usize = 64;

struct Kept {
    file: Arc<File>,
    size: u64,
    modified: SystemTime,
    generation: u64,
}

#[derive(Default)]
pub(super) struct Handles {
    generation: AtomicU64,
    kept: Mutex<HashMap<Digest, Kept>>,
}

impl Handles {
    /// The generation to pass to [`Handles::keep`] after opening a file now.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The kept handle of `digest`, when it is still valid and of `size` bytes.
    pub(super) fn get(&self, digest: &Digest, size: u64) -> Option<(Arc<File>, SystemTime)> {
        let generation = self.generation();
        if generation % 2 == 1 {
            return None;
        }
        let (file, modified) = {
            let kept = self.kept.lock().ok()?;
            let k = kept.get(digest)?;
            if k.generation != generation || k.size != size {
                return None;
            }
            (Arc::clone(&k.file), k.modified)
        };
        // Changes made from outside the process (an operator deleting a blob, an attacker
        // replacing it): a file no longer linked at its path is not the blob any more. One
        // `fstat` on the descriptor, no path walk.
        match file.metadata() {
            Ok(m) if m.nlink() > 0 => Some((file, modified)),
            _ => {
                if let Ok(mut kept) = self.kept.lock() {
                    kept.remove(digest);
                }
                None
            }
        }
    }

    /// Keeps a handle opened after [`Handles::generation`] returned `generation`.
    pub(super) fn keep(
        &self,
        digest: Digest,
        file: &Arc<File>,
        size: u64,
        modified: SystemTime,
        generation: u64,
    ) {
        if generation % 2 == 1 {
            return;
        }
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        // Checked under the cache's lock, which a writer's release also takes: a release that
        // has not happened yet empties the cache after this insert.
        if self.generation() != generation {
            return;
        }
        if kept.len() >= KEPT {
            kept.clear();
        }
        kept.insert(
            digest,
            Kept {
                file: Arc::clone(file),
                size,
                modified,
                generation,
            },
        );
    }

    fn changing(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut kept) = self.kept.lock() {
            kept.clear();
        }
    }
}

/// The store's write lock, held: blob files may change until it is dropped.
pub(crate) struct WriteGuard<'a> {
    _lock: MutexGuard<'a, ()>,
    handles: &'a Handles,
}

impl<'a> WriteGuard<'a> {
    pub(super) fn new(lock: MutexGuard<'a, ()>, handles: &'a Handles) -> Self {
        handles.changing();
        WriteGuard {
            _lock: lock,
            handles,
        }
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.handles.changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file linked at a path in `dir`.
    fn file(dir: &tempfile::TempDir) -> Arc<File> {
        let path = dir.path().join("blob");
        std::fs::write(&path, b"0123456789").expect("write");
        Arc::new(File::open(&path).expect("open"))
    }

    #[test]
    fn an_unlinked_file_is_not_served() {
        let h = Handles::default();
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("blob");
        std::fs::write(&path, b"x").expect("write");
        let f = Arc::new(File::open(&path).expect("open"));
        let d = Digest::from_hex(&"cd".repeat(32)).expect("digest");
        h.keep(d, &f, 1, SystemTime::now(), h.generation());
        assert!(h.get(&d, 1).is_some());
        std::fs::remove_file(&path).expect("rm");
        assert!(h.get(&d, 1).is_none(), "an unlinked blob is gone");
    }

    #[test]
    fn a_handle_is_kept_only_between_changes() {
        let h = Handles::default();
        let lock = Mutex::new(());
        let d = Digest::from_hex(&"ab".repeat(32)).expect("digest");
        let now = SystemTime::now();
        let dir = tempfile::tempdir().expect("dir");
        let file = || file(&dir);

        let g = h.generation();
        h.keep(d, &file(), 10, now, g);
        assert!(h.get(&d, 10).is_some());
        assert!(
            h.get(&d, 11).is_none(),
            "another size is another blob record"
        );

        // Opened before a change, kept after it: refused.
        let g = h.generation();
        drop(WriteGuard::new(lock.lock().expect("lock"), &h));
        assert!(h.get(&d, 10).is_none(), "a change empties the cache");
        h.keep(d, &file(), 10, now, g);
        assert!(
            h.get(&d, 10).is_none(),
            "a handle opened before a change is not kept"
        );

        // Opened while a change is under way: never kept, even after.
        let guard = WriteGuard::new(lock.lock().expect("lock"), &h);
        let g = h.generation();
        h.keep(d, &file(), 10, now, g);
        assert!(h.get(&d, 10).is_none());
        drop(guard);
        assert!(h.get(&d, 10).is_none());
    }
}
