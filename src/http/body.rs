//! Response bodies for blobs: a ranged file stream, and the size-only body HEAD answers with, so
//! that HEAD never reads the file.
//!
//! A chunk already in the page cache is read on the worker thread itself with
//! `preadv2(RWF_NOWAIT)`, which never blocks: it fails with `EAGAIN` when the data would have to
//! come from disk, and only then does the read go to the blocking pool. For the hot artifacts
//! this server exists for, that saves a thread hand-off per chunk.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use actix_web::rt::task::JoinHandle;
use actix_web::web::Bytes;

use crate::ids::Digest;
use crate::metrics::Metrics;

/// Bytes read per chunk: what one download holds in memory at a time.
pub const CHUNK: usize = 64 * 1024;

/// `length` bytes of `file` from `offset`, read in `CHUNK`s with `pread` on the blocking pool.
pub struct FileBody {
    map: Option<Bytes>,
    /// The map is known to be in memory up to here (checked a window at a time).
    resident_until: usize,
    file: Arc<File>,
    offset: u64,
    remaining: u64,
    length: u64,
    pending: Option<JoinHandle<io::Result<Bytes>>>,
    metrics: Arc<Metrics>,
    /// The store's revocation generation last checked (docs/storage.md, "Integrity at rest").
    revocations_seen: u64,
    /// The content coding of the bytes, for `velox_cache_sent_bytes_total{encoding}`.
    encoding: &'static str,
}

impl FileBody {
    /// `digest` names the blob, so that concurrent downloads of one blob share one mapping.
    pub fn new(
        file: Arc<File>,
        digest: Digest,
        offset: u64,
        length: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        let map = if length >= MAP_AT_LEAST {
            shared_map(&file, digest)
        } else {
            None
        };
        FileBody {
            map,
            ..FileBody::unmapped(file, offset, length, metrics)
        }
    }

    /// A body read with `pread` only: for a file that is not a blob of the store (Velox's own,
    /// served when the disk was full), whose bytes the store cannot vouch for under a mapping.
    pub fn unmapped(file: Arc<File>, offset: u64, length: u64, metrics: Arc<Metrics>) -> Self {
        FileBody {
            map: None,
            resident_until: 0,
            file,
            offset,
            remaining: length,
            length,
            pending: None,
            metrics,
            revocations_seen: 0,
            encoding: "identity",
        }
    }

    /// Counts the bytes sent as `encoding` (a compressed variant, docs/compression.md).
    pub fn encoded_as(mut self, encoding: &'static str) -> Self {
        self.encoding = encoding;
        self
    }
}

/// Live mappings by blob digest and file (device, inode). One mapping per blob file, however many
/// download it: a page mapped a thousand times would count a thousand times in the process's
/// RSS. The inode is part of the key because a blob's path may get a new file (an ingest replaces
/// what is there): a download that starts afterwards must read the new file, never a mapping of
/// the old one. An inode number cannot be reused while a mapping of it lives.
type MapKey = (Digest, u64, u64);
static MAPS: LazyLock<Mutex<HashMap<MapKey, Weak<memmap2::Mmap>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The blob's shared mapping, made when no download holds one.
fn shared_map(file: &File, digest: Digest) -> Option<Bytes> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().ok()?;
    let key = (digest, meta.dev(), meta.ino());
    let mut maps = MAPS.lock().ok()?;
    if let Some(map) = maps.get(&key).and_then(Weak::upgrade) {
        return Some(Bytes::from_owner(ArcMap(map)));
    }
    // SAFETY: a blob at its final path is never written or truncated again (it is only
    // unlinked, which leaves a mapping valid), so the mapped bytes cannot change or vanish.
    let map = unsafe { memmap2::Mmap::map(file) }.ok()?;
    let _ = map.advise(memmap2::Advice::Sequential);
    let map = Arc::new(map);
    maps.retain(|_, w| w.strong_count() > 0);
    maps.insert(key, Arc::downgrade(&map));
    Some(Bytes::from_owner(ArcMap(map)))
}

/// Lets `Bytes` own a reference to a shared mapping.
struct ArcMap(Arc<memmap2::Mmap>);

impl AsRef<[u8]> for ArcMap {
    fn as_ref(&self) -> &[u8] {
        &self.0[..]
    }
}

/// Bodies at least this long are sent from a memory map: the chunks are slices of it, so the
/// bytes are copied once (into the connection's write buffer) instead of twice.
const MAP_AT_LEAST: u64 = 1024 * 1024;

/// How far ahead one residency check looks: one `mincore` per 16 chunks.
const RESIDENT_WINDOW: usize = 16 * CHUNK;

/// Whether every page of `bytes` (a slice of a mapping) is in memory, so that touching it cannot
/// block the worker on the disk. A chunk that is not is read on the blocking pool instead, which
/// also brings it into the page cache.
fn resident(bytes: &[u8]) -> bool {
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => return false,
    };
    let start = bytes.as_ptr() as usize;
    let aligned = start & !(page - 1);
    let span = start + bytes.len() - aligned;
    let mut pages = vec![0u8; span.div_ceil(page)];
    // SAFETY: `[aligned, aligned + span)` lies within one live mapping (the page holding the
    // slice's first byte through the one holding its last), and `pages` has one byte per page.
    let rc = unsafe { libc::mincore(aligned as *mut libc::c_void, span, pages.as_mut_ptr()) };
    rc == 0 && pages.iter().all(|p| p & 1 == 1)
}

/// Reads what of `[offset, offset + len)` is in the page cache without blocking. `None` when
/// nothing is (or the kernel cannot tell): the caller reads on the blocking pool instead.
fn read_cached(file: &File, offset: u64, len: usize) -> io::Result<Option<Bytes>> {
    use std::os::fd::AsRawFd;
    // Not zeroed: the kernel writes the bytes, and only those it wrote are kept.
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let iov = libc::iovec {
        iov_base: buf.spare_capacity_mut().as_mut_ptr().cast(),
        iov_len: len,
    };
    let Ok(off) = libc::off_t::try_from(offset) else {
        return Ok(None);
    };
    // SAFETY: `iov` points at `buf`, which is `len` bytes, alive and exclusively ours for the
    // call; the descriptor belongs to `file`, which outlives the call.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EAGAIN)
            | Some(libc::EOPNOTSUPP)
            | Some(libc::ENOSYS)
            | Some(libc::EINVAL) => Ok(None),
            _ => Err(err),
        };
    }
    if n == 0 {
        return Ok(None);
    }
    // SAFETY: preadv2 initialised the first `n` bytes (n <= len = capacity).
    unsafe { buf.set_len((n as usize).min(len)) };
    Ok(Some(Bytes::from(buf)))
}

fn read_chunk(file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    if filled == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the blob is shorter than its index says",
        ));
    }
    buf.truncate(filled);
    Ok(Bytes::from(buf))
}

impl MessageBody for FileBody {
    type Error = io::Error;

    fn size(&self) -> BodySize {
        BodySize::Sized(self.length)
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        // A blob found damaged while this download runs: stop rather than send what was found
        // wrong. The client sees the body end short of its Content-Length.
        let generation = crate::store::revocation_generation();
        if generation != this.revocations_seen {
            this.revocations_seen = generation;
            if crate::store::is_revoked(&this.file) {
                this.remaining = 0;
                return Poll::Ready(Some(Err(io::Error::other(
                    "the blob was found damaged during the download",
                ))));
            }
        }
        let len = this.remaining.min(CHUNK as u64) as usize;
        // Without the disk: a resident slice of the map, or a page-cache read. Otherwise the
        // blocking pool reads the chunk.
        if this.pending.is_none() {
            let start = this.offset as usize;
            match &this.map {
                Some(map) if start + len <= map.len() => {
                    if start + len > this.resident_until {
                        let window = (start + RESIDENT_WINDOW).min(map.len());
                        if resident(&map[start..window]) {
                            this.resident_until = window;
                        }
                    }
                    if start + len <= this.resident_until {
                        let chunk = map.slice(start..start + len);
                        return Poll::Ready(Some(Ok(this.advance(chunk))));
                    }
                }
                _ => match read_cached(&this.file, this.offset, len) {
                    Ok(Some(chunk)) => return Poll::Ready(Some(Ok(this.advance(chunk)))),
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Some(Err(e))),
                },
            }
        }
        let pending = this.pending.get_or_insert_with(|| {
            let file = Arc::clone(&this.file);
            let offset = this.offset;
            actix_web::rt::task::spawn_blocking(move || read_chunk(&file, offset, len))
        });
        let result = match Pin::new(pending).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        this.pending = None;
        let chunk = match result {
            Ok(Ok(chunk)) => chunk,
            Ok(Err(e)) => return Poll::Ready(Some(Err(e))),
            Err(e) => return Poll::Ready(Some(Err(io::Error::other(e.to_string())))),
        };
        Poll::Ready(Some(Ok(this.advance(chunk))))
    }
}

impl FileBody {
    /// Accounts for a chunk about to be sent.
    fn advance(&mut self, chunk: Bytes) -> Bytes {
        let n = (chunk.len() as u64).min(self.remaining);
        self.offset += n;
        self.remaining -= n;
        self.metrics.download_bytes.fetch_add(n, Ordering::Relaxed);
        self.metrics.compression.sent(self.encoding, n);
        chunk
    }
}

/// A body that reports `size` bytes and ends at once: HEAD's headers without reading the file.
pub struct HeadBody(pub u64);

impl MessageBody for HeadBody {
    type Error = io::Error;

    fn size(&self) -> BodySize {
        BodySize::Sized(self.0)
    }

    fn poll_next(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Poll::Ready(None)
    }
}
