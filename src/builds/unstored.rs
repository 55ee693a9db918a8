//! A binary Velox built that could not be stored because the disk was full (docs/storage.md,
//! "Disk full"). Rather than throw the build away and have every client retry it, its own file
//! is hashed once and served, from one open handle, to the request that started the build and
//! to every request that waited on it. Nothing of it is kept once they are served.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};

use crate::ids::Digest;
use crate::store::EntryRecord;

#[derive(Debug)]
pub struct Unstored {
    /// Velox's file, opened when the build ended; reads are positional, so clones of it (which
    /// share one file offset) serve concurrent responses without stepping on each other.
    file: File,
    /// What a stored entry would have said: digest, size, name; never committed anywhere.
    pub entry: EntryRecord,
    pub modified: SystemTime,
}

impl Unstored {
    /// Hashes the whole of `file` (Velox's artifact, already checked by `open_artifact`).
    pub fn hash(file: File, file_name: String, build_ms: u64) -> io::Result<Unstored> {
        let meta = file.metadata()?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1024 * 1024];
        let mut offset = 0u64;
        loop {
            let n = match file.read_at(&mut buf, offset) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            offset += n as u64;
        }
        if offset != meta.len() || offset == 0 {
            return Err(io::Error::other(format!(
                "Velox's artifact changed while it was hashed ({} bytes, then {offset})",
                meta.len()
            )));
        }
        let now = crate::util::now_ms();
        Ok(Unstored {
            file,
            entry: EntryRecord {
                digest: Digest(hasher.finalize().into()),
                size: offset,
                created_ms: now,
                last_access_ms: now,
                access_count: 0,
                build_ms,
                file_name,
            },
            modified: meta.modified().unwrap_or_else(|_| SystemTime::now()),
        })
    }

    /// A handle for one response, after checking that the file still has the size it was
    /// hashed at (Velox may clean its output folder up).
    pub fn open(&self) -> io::Result<File> {
        let file = self.file.try_clone()?;
        let len = file.metadata()?.len();
        if len != self.entry.size {
            return Err(io::Error::other(format!(
                "Velox's artifact changed after it was hashed ({} bytes, now {len})",
                self.entry.size
            )));
        }
        Ok(file)
    }
}
