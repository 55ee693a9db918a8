//! The compressor (docs/compression.md): makes the `zstd` and `gzip` variants of every stored
//! binary, one blob at a time, on a thread of its own at low CPU and I/O priority.
//!
//! Work arrives from the store (a blob stored, a variant found missing or damaged) through
//! [`crate::store::Store::on_variants_wanted`], and at start from a pass that checks every
//! variant and queues every blob still missing one. The queue holds each digest once; its length
//! is `velox_cache_compression_backlog`. Memory is bounded whatever the binary's size: the
//! encoders stream (zstd's window is 8 MiB, RFC 9659's limit for `Content-Encoding: zstd`).

use std::collections::{HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

use crate::ids::Digest;
use crate::metrics::Metrics;
use crate::store::shared::SharedStore;
use crate::store::{Encoding, Made, Store};

mod replicas;
use replicas::{fetched, share};

/// zstd's window: 2^23 = 8 MiB, the most RFC 9659 lets a `Content-Encoding: zstd` sender use.
pub const ZSTD_WINDOW_LOG: u32 = 23;

/// gzip's level. 6, zlib's default, not 9: on Debian's 48 MB `promtool` level 9 saves 1 % more
/// bytes (27.4 % of the binary against 27.6 %) for 2.6 times the CPU; gzip is for clients without
/// zstd, which does better either way.
const GZIP_LEVEL: u32 = 6;

pub use crate::store::{keep_below, KEEP_BELOW_PERMILLE};

/// Bytes compressed first, quickly, to see whether a binary compresses at all: random or
/// already-compressed bytes are then recorded as not worth a variant without a slow pass.
const PROBE_BYTES: usize = 1024 * 1024;

struct Queue {
    order: VecDeque<Digest>,
    queued: HashSet<Digest>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    stop: AtomicBool,
    metrics: Arc<Metrics>,
    /// The bucket, with replicas: variants are taken from it before they are made, and shared
    /// through it once made.
    shared: Option<Arc<dyn SharedStore>>,
}

impl Shared {
    fn push(&self, digest: Digest) {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.queued.insert(digest) {
            q.order.push_back(digest);
            self.metrics
                .compression
                .backlog
                .store(q.order.len() as u64, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    /// The next digest, waiting for one; `None` once stopped.
    fn pop(&self) -> Option<Digest> {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(d) = q.order.pop_front() {
                self.metrics
                    .compression
                    .backlog
                    .store(q.order.len() as u64, Ordering::Relaxed);
                return Some(d);
            }
            q = self.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Marks `digest` done: a later request for it is queued again.
    fn done(&self, digest: &Digest) {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.queued.remove(digest);
    }
}

/// The running compressor; [`Compressor::stop`] ends it.
pub struct Compressor {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Compressor {
    /// Starts the compressor for `store`: registers it for new blobs, then, on its own thread,
    /// checks the variants already stored, queues the blobs missing one, and works the queue.
    /// `shared`: what replicas share, when it shares variants.
    pub fn start(
        store: Arc<Store>,
        zstd_level: i32,
        metrics: Arc<Metrics>,
        shared: Option<Arc<dyn SharedStore>>,
    ) -> Compressor {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                order: VecDeque::new(),
                queued: HashSet::new(),
            }),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            metrics,
            shared: shared.filter(|s| s.shares_variants()),
        });
        let hook = Arc::downgrade(&shared);
        store.on_variants_wanted(move |digest| {
            if let Some(shared) = hook.upgrade() {
                shared.push(digest);
            }
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("velox-compress".into())
            .spawn(move || {
                crate::background::lower_own_priority();
                // On a new index (the old one set aside), the check would take every variant
                // file for one of no stored binary until the start-up pass re-indexes them.
                if !store.wait_until_filled(&worker.stop) {
                    return;
                }
                catch_up(&store, &worker);
                while let Some(digest) = worker.pop() {
                    compress_blob(&store, &worker, &digest, zstd_level);
                    worker.done(&digest);
                }
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                log::error!("cannot start the compressor thread: {e}");
                None
            }
        };
        Compressor {
            shared,
            thread: Mutex::new(thread),
        }
    }

    /// Stops the compressor: a variant being made is abandoned (its temporary file deleted) and
    /// the thread joined. Blocks until then (at most one chunk's encoding).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        {
            let _q = self
                .shared
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.wake.notify_all();
        }
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// At start: every stored variant is checked (hashed) before it is served, and every blob
/// missing a variant is queued.
fn catch_up(store: &Store, shared: &Shared) {
    let started = Instant::now();
    match store.check_variants(&decode) {
        Ok(0) => {}
        Ok(n) => log::warn!("compression: {n} variants were missing, damaged or unused"),
        Err(e) => log::error!("compression: cannot check the stored variants: {e}"),
    }
    match store.blobs_missing_variants() {
        Ok(blobs) => {
            log::info!(
                "compression: variants checked in {:.1}s; {} binaries to compress",
                started.elapsed().as_secs_f64(),
                blobs.len()
            );
            for d in blobs {
                shared.push(d);
            }
        }
        Err(e) => log::error!("compression: cannot list the binaries to compress: {e}"),
    }
}

/// Reads through `inner`, failing once the compressor is stopped, so that a long encoding ends
/// within one chunk. Not with `Interrupted`: `read_to_end` and `io::copy` retry that kind
/// forever, and the stop would then wait on a thread that never ends.
struct Stoppable<'a, R> {
    inner: R,
    stop: &'a AtomicBool,
}

impl<R: Read> Read for Stoppable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(io::Error::other("the compressor is stopping"));
        }
        self.inner.read(buf)
    }
}

/// Encodes all of `input` into `output` as `enc`.
pub fn encode(
    enc: Encoding,
    input: &mut dyn Read,
    output: &mut dyn Write,
    size: u64,
    zstd_level: i32,
) -> io::Result<()> {
    match enc {
        Encoding::Zstd => {
            let mut e = zstd::stream::write::Encoder::new(output, zstd_level)?;
            e.set_pledged_src_size(Some(size))?;
            // Explicit: from level 16 zstd would otherwise pick a larger window for a large
            // input, which browsers refuse under `Content-Encoding: zstd`.
            e.window_log(ZSTD_WINDOW_LOG)?;
            e.long_distance_matching(false)?;
            e.include_checksum(true)?;
            copy(input, &mut e)?;
            e.finish()?;
        }
        Encoding::Gzip => {
            // No name and mtime 0: the same bytes make the same variant.
            let mut e = flate2::GzBuilder::new()
                .mtime(0)
                .write(output, flate2::Compression::new(GZIP_LEVEL));
            copy(input, &mut e)?;
            e.finish()?;
        }
    }
    Ok(())
}

/// `io::copy` with a buffer of our size.
fn copy(input: &mut dyn Read, output: &mut dyn Write) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        output.write_all(&buf[..n])?;
    }
}

/// Whether the first bytes of `input` compress below the keeping threshold at zstd's fastest
/// level (a probe; the real variants compress better).
fn worth_trying(input: &mut dyn Read) -> io::Result<bool> {
    let mut head = Vec::with_capacity(PROBE_BYTES);
    input.take(PROBE_BYTES as u64).read_to_end(&mut head)?;
    if head.is_empty() {
        return Ok(false);
    }
    let packed = zstd::bulk::compress(&head, 1)?;
    Ok((packed.len() as u64) < keep_below(head.len() as u64))
}

/// Checks the variants `digest` has, then makes those it lacks.
fn compress_blob(store: &Store, shared: &Shared, digest: &Digest, zstd_level: i32) {
    if let Err(e) = store.check_variants_of(digest, false, &mut |_| true) {
        log::error!("compression: cannot check the variants of {digest}: {e}");
    }
    let missing = match store.missing_variants(digest) {
        Ok(m) => m,
        Err(e) => {
            log::error!("compression: cannot read the variants of {digest}: {e}");
            return;
        }
    };
    for enc in missing {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let started = Instant::now();
        if fetched(store, shared, digest, enc, started) {
            continue;
        }
        let stop = &shared.stop;
        let made = store.make_variant(digest, enc, keep_below, |input, output, size| {
            let mut input = Stoppable { inner: input, stop };
            // The probe's bytes are read again by the encoder: the store hands a fresh reader
            // only once, so the probe reads its own copy of the head.
            let mut head = Vec::new();
            (&mut input)
                .take(PROBE_BYTES as u64)
                .read_to_end(&mut head)?;
            if !worth_trying(&mut head.as_slice())? {
                return Ok(false);
            }
            let mut whole = head.as_slice().chain(&mut input);
            encode(enc, &mut whole, output, size, zstd_level).map(|()| true)
        });
        let took = started.elapsed();
        let c = &shared.metrics.compression;
        match made {
            Ok(Made::Stored(v)) => {
                c.made(enc.as_str(), "stored", took);
                log::info!(
                    "compression: {} variant of {digest} made in {:.1}s: {} bytes",
                    enc.as_str(),
                    took.as_secs_f64(),
                    v.size
                );
                share(store, shared, digest, enc, v);
            }
            Ok(Made::Useless) => {
                c.made(enc.as_str(), "useless", took);
                log::info!(
                    "compression: {digest} does not compress enough with {}: served as it is",
                    enc.as_str()
                );
            }
            Ok(Made::BlobGone) => return,
            Ok(Made::SourceDamaged) => {
                log::error!("compression: {digest} is damaged; not compressed");
                return;
            }
            Err(e) if shared.stop.load(Ordering::Relaxed) => {
                log::info!("compression: stopped while making a variant of {digest} ({e})");
                return;
            }
            Err(e) => {
                c.made(enc.as_str(), "error", took);
                log::error!(
                    "compression: cannot make the {} variant of {digest}: {e}",
                    enc.as_str()
                );
            }
        }
    }
}

/// Decodes all of `input` (`enc`-encoded) into `output`, as strictly as a browser: zstd frames
/// with a window of at most 8 MiB and their checksums, one gzip member; nothing after the end.
pub fn decode(enc: Encoding, input: &mut dyn Read, output: &mut dyn Write) -> io::Result<()> {
    match enc {
        Encoding::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(input)?;
            d.window_log_max(ZSTD_WINDOW_LOG)?;
            copy(&mut d, output)
        }
        Encoding::Gzip => {
            let mut d = flate2::bufread::GzDecoder::new(io::BufReader::new(input));
            copy(&mut d, output)?;
            let mut rest = d.into_inner();
            let mut byte = [0u8; 1];
            if rest.read(&mut byte)? != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bytes after the gzip member",
                ));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_zstd(b: &[u8]) -> Vec<u8> {
        zstd::stream::decode_all(b).expect("decodes")
    }

    /// A stop ends the probe's `read_to_end` and the encoding at once (with `Interrupted` both
    /// retried forever and the server never exited).
    #[test]
    fn a_stop_ends_every_read_of_a_stoppable_source() {
        let stop = AtomicBool::new(true);
        let data = vec![7u8; 1 << 20];
        let mut input = Stoppable {
            inner: data.as_slice(),
            stop: &stop,
        };
        let mut head = Vec::new();
        assert!((&mut input).take(1000).read_to_end(&mut head).is_err());
        assert!(encode(Encoding::Zstd, &mut input, &mut Vec::new(), 1 << 20, 3).is_err());
        assert!(encode(Encoding::Gzip, &mut input, &mut Vec::new(), 1 << 20, 3).is_err());
    }

    #[test]
    fn both_codings_round_trip_and_zstds_window_is_8_mib() {
        let data: Vec<u8> = (0..3_000_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut z = Vec::new();
        encode(
            Encoding::Zstd,
            &mut data.as_slice(),
            &mut z,
            data.len() as u64,
            19,
        )
        .expect("zstd");
        assert_eq!(decode_zstd(&z), data);
        // A decoder limited to an 8 MiB window (what browsers allow) reads it.
        let mut d = zstd::stream::read::Decoder::new(z.as_slice()).expect("decoder");
        d.window_log_max(ZSTD_WINDOW_LOG).expect("limit");
        let mut out = Vec::new();
        d.read_to_end(&mut out).expect("within 8 MiB");
        assert_eq!(out, data);
        let mut g = Vec::new();
        encode(
            Encoding::Gzip,
            &mut data.as_slice(),
            &mut g,
            data.len() as u64,
            19,
        )
        .expect("gzip");
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(g.as_slice())
            .read_to_end(&mut out)
            .expect("gunzip");
        assert_eq!(out, data);
    }

    #[test]
    fn random_bytes_are_not_worth_trying() {
        let mut random = vec![0u8; 200_000];
        for b in random.iter_mut() {
            *b = fastrand::u8(..);
        }
        assert!(!worth_trying(&mut random.as_slice()).expect("probe"));
        let text = b"roadrunner ".repeat(20_000);
        assert!(worth_trying(&mut text.as_slice()).expect("probe"));
    }

    #[test]
    fn the_keeping_threshold_is_ninety_percent() {
        assert_eq!(keep_below(1000), 900);
        assert_eq!(keep_below(10), 9);
        assert!(keep_below(u64::MAX) > u64::MAX / 10 * 8, "no overflow");
    }

    /// What a replica takes from the bucket is decoded as strictly as a browser would: what
    /// velox-cache makes decodes; a larger zstd window, bytes after the end, a truncated or
    /// damaged stream do not.
    #[test]
    fn decoding_is_as_strict_as_a_browser() {
        let data: Vec<u8> = (0..12_000_000u32)
            .map(|i| (i % 7 + i / 4096 % 5) as u8)
            .collect();
        for enc in Encoding::ALL {
            let mut encoded = Vec::new();
            encode(
                enc,
                &mut data.as_slice(),
                &mut encoded,
                data.len() as u64,
                3,
            )
            .expect("encode");
            let mut out = Vec::new();
            decode(enc, &mut encoded.as_slice(), &mut out).expect("decodes");
            assert_eq!(out, data, "{enc:?}");

            let mut trailing = encoded.clone();
            trailing.extend_from_slice(b"trailing garbage");
            assert!(
                decode(enc, &mut trailing.as_slice(), &mut io::sink()).is_err(),
                "{enc:?}: bytes after the end"
            );
            let truncated = &encoded[..encoded.len() - 10];
            assert!(
                decode(enc, &mut &truncated[..], &mut io::sink()).is_err(),
                "{enc:?}: truncated"
            );
            let mut flipped = encoded.clone();
            let at = flipped.len() / 2;
            flipped[at] ^= 0x55;
            let mut out = Vec::new();
            let r = decode(enc, &mut flipped.as_slice(), &mut out);
            assert!(
                r.is_err() || out != data,
                "{enc:?}: a flipped byte went unnoticed"
            );
        }
        // A zstd frame with a 16 MiB window (what level 19 picks for a large input without the
        // limit) is refused, as browsers refuse it.
        let mut wide = Vec::new();
        let mut e = zstd::stream::write::Encoder::new(&mut wide, 3).expect("encoder");
        e.window_log(24).expect("window");
        e.set_pledged_src_size(Some(data.len() as u64))
            .expect("size");
        e.write_all(&data).expect("write");
        e.finish().expect("finish");
        assert!(decode(Encoding::Zstd, &mut wide.as_slice(), &mut io::sink()).is_err());
    }
}
