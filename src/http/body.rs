//! Response bodies for blobs: a ranged file stream that reads on the blocking pool, and the
//! size-only body HEAD answers with, so that HEAD never reads the file.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use actix_web::rt::task::JoinHandle;
use actix_web::web::Bytes;

use crate::metrics::Metrics;

/// Bytes read per chunk: what one download holds in memory at a time.
pub const CHUNK: usize = 64 * 1024;

/// `length` bytes of `file` from `offset`, read in `CHUNK`s with `pread` on the blocking pool.
pub struct FileBody {
    file: Arc<File>,
    offset: u64,
    remaining: u64,
    length: u64,
    pending: Option<JoinHandle<io::Result<Bytes>>>,
    metrics: Arc<Metrics>,
}

impl FileBody {
    pub fn new(file: File, offset: u64, length: u64, metrics: Arc<Metrics>) -> Self {
        FileBody {
            file: Arc::new(file),
            offset,
            remaining: length,
            length,
            pending: None,
            metrics,
        }
    }
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
        let pending = this.pending.get_or_insert_with(|| {
            let file = Arc::clone(&this.file);
            let (offset, len) = (this.offset, this.remaining.min(CHUNK as u64) as usize);
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
        let n = chunk.len() as u64;
        this.offset += n;
        this.remaining -= n.min(this.remaining);
        this.metrics.download_bytes.fetch_add(n, Ordering::Relaxed);
        Poll::Ready(Some(Ok(chunk)))
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
