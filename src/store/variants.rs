//! Compressed variants of blobs (docs/compression.md): a `zstd` and a `gzip` encoding of each
//! binary, made in the background by `crate::compress`, kept as content-addressed files under
//! `<data_dir>/variants/sha256/ab/<digest of the encoded bytes>` and recorded in the sled tree
//! `variants` (blob digest + encoding → the variant's digest and size).
//!
//! A variant is deleted whenever its blob is (`Store::remove_blob_file`, the one place blob files
//! go), its bytes count toward `cache.max_size_gb` and the free-space floor, and it is served
//! only once its bytes were seen to hash to its name since its file last changed: a damaged
//! variant is deleted and made again, never sent.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex};

use sha2::{Digest as _, Sha256};

use super::ingest::{place, TempFile};
use super::scrub::open_nofollow;
use super::{RecordError, Store, StoreError};
use crate::ids::Digest;

/// The folder under the data dir that holds the variant files.
pub const VARIANT_DIR: &str = "variants/sha256";

/// Bytes of every variant file, in the `counters` tree.
pub(super) const COUNTER_VARIANT_BYTES: &[u8] = b"variant_bytes";

const RECORD_V1: u8 = 1;

/// A variant is kept only when smaller than this share of its binary (in thousandths); a
/// larger one saves too little to be worth its bytes, and is never served (SPEC: "smaller than
/// 90 %").
pub const KEEP_BELOW_PERMILLE: u64 = 900;

/// The size below which a variant of a binary of `size` bytes is kept.
pub fn keep_below(size: u64) -> u64 {
    size / 1000 * KEEP_BELOW_PERMILLE + size % 1000 * KEEP_BELOW_PERMILLE / 1000
}

/// A content coding velox-cache makes variants in (RFC 9110 §8.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Zstd,
    Gzip,
}

impl Encoding {
    /// Every coding, in the server's order of preference.
    pub const ALL: [Encoding; 2] = [Encoding::Zstd, Encoding::Gzip];

    /// The token of `Content-Encoding`, and the metrics' label.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
        }
    }

    pub(super) fn tag(self) -> u8 {
        match self {
            Encoding::Gzip => 1,
            Encoding::Zstd => 2,
        }
    }
}

/// A variant file: the digest and size of the encoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub digest: Digest,
    pub size: u64,
}

/// What the index says of one blob's encoding: a variant, or that encoding it saves too little to
/// be worth a file (`None`), so that it is not tried again.
type Recorded = Option<Variant>;

pub(super) fn encode_record(v: &Recorded) -> Vec<u8> {
    let mut out = vec![RECORD_V1];
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            out.extend_from_slice(v.digest.as_bytes());
            out.extend_from_slice(&v.size.to_be_bytes());
        }
    }
    out
}

pub(super) fn decode_record(bytes: &[u8]) -> Result<Recorded, RecordError> {
    let (&version, body) = bytes.split_first().ok_or(RecordError::Empty)?;
    if version != RECORD_V1 {
        return Err(RecordError::UnknownVersion(version));
    }
    match body {
        [0] => Ok(None),
        [1, rest @ ..] if rest.len() == 40 => {
            let digest = Digest::from_slice(&rest[..32]).ok_or(RecordError::Empty)?;
            let mut size = [0u8; 8];
            size.copy_from_slice(&rest[32..]);
            Ok(Some(Variant {
                digest,
                size: u64::from_be_bytes(size),
            }))
        }
        [] => Err(RecordError::Empty),
        _ => Err(RecordError::Trailing(body.len())),
    }
}

pub(super) fn record_key(blob: &Digest, enc: Encoding) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[..32].copy_from_slice(blob.as_bytes());
    k[32] = enc.tag();
    k
}

/// Variant files whose bytes were hashed and found whole, by the file's identity and the time
/// its inode last changed: any write to the file changes that time, so a file damaged through
/// the filesystem is hashed again before it is served. (Damage below the filesystem is the
/// scrub's to find.)
pub(super) type Seen = (u64, u64, i64, i64);
static VERIFIED: LazyLock<Mutex<HashMap<Digest, Seen>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
const VERIFIED_MAX: usize = 4096;

pub(super) fn seen(m: &fs::Metadata) -> Seen {
    (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
}

/// How making a variant ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Made {
    /// Stored and recorded.
    Stored(Variant),
    /// Recorded as not worth keeping: the encoding saved too little.
    Useless,
    /// The blob left the store meanwhile (or is not one of its blobs): nothing kept.
    BlobGone,
    /// The blob's bytes did not hash to its name: nothing kept (the blob is condemned).
    SourceDamaged,
}

/// How taking in a variant made elsewhere ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adopted {
    /// Checked, stored and recorded.
    Stored(Variant),
    /// Not the blob's variant, or not one worth keeping: why. Nothing kept.
    Refused(String),
    /// The blob left the store meanwhile: nothing kept.
    BlobGone,
}

/// What reading a variant file whole through its decoder found.
pub(super) struct Decoded {
    /// The file's own bytes: their digest and length.
    pub(super) encoded: Variant,
    /// The decoded bytes' digest and length.
    pub(super) decoded: Digest,
    pub(super) decoded_size: u64,
}

/// Reads `file` whole through `decode`, hashing what goes in and what comes out. `Ok(Err(why))`
/// when it does not decode, or has bytes after the end of what decodes.
pub(super) fn decode_hashed(
    file: &File,
    decode: impl FnOnce(&mut dyn Read, &mut dyn Write) -> io::Result<()>,
) -> io::Result<Result<Decoded, String>> {
    let mut input = Hashing {
        inner: io::BufReader::with_capacity(1024 * 1024, file),
        hasher: Sha256::new(),
        count: 0,
    };
    let mut decoded = Hashing {
        inner: io::sink(),
        hasher: Sha256::new(),
        count: 0,
    };
    if let Err(e) = decode(&mut input, &mut decoded) {
        return Ok(Err(format!("does not decode: {e}")));
    }
    // Whatever the decoder left unread belongs to the variant too (and must not be there).
    let unread = io::copy(&mut input, &mut io::sink())?;
    if unread != 0 {
        return Ok(Err(format!("has {unread} bytes after its end")));
    }
    Ok(Ok(Decoded {
        encoded: Variant {
            digest: Digest(input.hasher.finalize().into()),
            size: input.count,
        },
        decoded: Digest(decoded.hasher.finalize().into()),
        decoded_size: decoded.count,
    }))
}

/// A file in the store's `tmp/`, deleted when dropped unless a variant was adopted from it.
pub struct Scratch(TempFile);

impl Scratch {
    pub fn path(&self) -> &std::path::Path {
        &self.0.path
    }
}

/// Counts and hashes what passes through.
pub(super) struct Hashing<T> {
    pub(super) inner: T,
    pub(super) hasher: Sha256,
    pub(super) count: u64,
}

impl<T: Read> Read for Hashing<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl<T: Write> Write for Hashing<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Store {
    /// `variants/sha256/ab/<hex>`
    pub fn variant_path(&self, variant: &Digest) -> PathBuf {
        let hex = variant.to_hex();
        self.root.join(VARIANT_DIR).join(&hex[..2]).join(hex)
    }

    fn recorded(&self, blob: &Digest, enc: Encoding) -> Result<Option<Recorded>, StoreError> {
        match self.ix()?.variants.get(record_key(blob, enc))? {
            Some(bytes) => Ok(Some(decode_record(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The stored variant of `blob` in `enc`, if there is one.
    pub fn variant(&self, blob: &Digest, enc: Encoding) -> Result<Option<Variant>, StoreError> {
        Ok(self.recorded(blob, enc)?.flatten())
    }

    /// The encodings of `blob` not yet made (none when the blob is not in the store).
    pub fn missing_variants(&self, blob: &Digest) -> Result<Vec<Encoding>, StoreError> {
        if self.blob(blob)?.is_none() {
            return Ok(Vec::new());
        }
        let mut missing = Vec::new();
        for enc in Encoding::ALL {
            if self.recorded(blob, enc)?.is_none() {
                missing.push(enc);
            }
        }
        Ok(missing)
    }

    /// Every blob of the index with an encoding not yet made, in digest order.
    pub fn blobs_missing_variants(&self) -> Result<Vec<Digest>, StoreError> {
        let ix = self.ix()?;
        let mut out = Vec::new();
        for item in ix.blobs.iter() {
            let (k, _) = item?;
            let Some(digest) = Digest::from_slice(&k) else {
                continue;
            };
            let missing = Encoding::ALL
                .iter()
                .map(|enc| ix.variants.contains_key(record_key(&digest, *enc)))
                .any(|r| !matches!(r, Ok(true)));
            if missing {
                out.push(digest);
            }
        }
        Ok(out)
    }

    /// Bytes of every variant file.
    pub fn variant_bytes(&self) -> Result<u64, StoreError> {
        Ok(self
            .ix()?
            .counters
            .get(COUNTER_VARIANT_BYTES)?
            .map(|v| super::index::be_u64(&v))
            .unwrap_or(0))
    }

    /// Bytes of the variant files of `blob` (what removing the blob frees beyond its own size).
    pub(super) fn variant_bytes_of(&self, blob: &Digest) -> u64 {
        Encoding::ALL
            .iter()
            .filter_map(|enc| self.variant(blob, *enc).ok().flatten())
            .map(|v| v.size)
            .sum()
    }

    /// Sets the count of variant bytes from the variant records (after `rebuild-index` cleared
    /// the counters but kept the records).
    pub(super) fn recount_variant_bytes(&self) -> Result<u64, StoreError> {
        let ix = self.ix()?;
        let mut total = 0u64;
        for item in ix.variants.iter() {
            let (_, v) = item?;
            if let Ok(Some(variant)) = decode_record(&v) {
                total = total.saturating_add(variant.size);
            }
        }
        ix.counters
            .insert(COUNTER_VARIANT_BYTES, &total.to_be_bytes())?;
        Ok(total)
    }

    pub(super) fn add_variant_bytes(&self, delta: i128) -> Result<(), StoreError> {
        self.ix()?
            .counters
            .update_and_fetch(COUNTER_VARIANT_BYTES, |old| {
                let was = old.map(super::index::be_u64).unwrap_or(0);
                let now = (i128::from(was) + delta).clamp(0, i128::from(u64::MAX)) as u64;
                Some(now.to_be_bytes().to_vec())
            })?;
        Ok(())
    }

    /// Makes the `enc` variant of `blob`: `encode` reads the blob's bytes and writes the encoded
    /// ones (`size` is the blob's length), or answers false when encoding is not worth it. The input is hashed as it is read and must hash to the
    /// blob's name; the output is hashed as it is written and named by its digest. An output not
    /// smaller than `keep_below` bytes is not kept, only recorded as not worth it. Blocks for as
    /// long as encoding takes.
    pub fn make_variant(
        &self,
        blob: &Digest,
        enc: Encoding,
        keep_below: impl FnOnce(u64) -> u64,
        encode: impl FnOnce(&mut dyn Read, &mut dyn Write, u64) -> io::Result<bool>,
    ) -> Result<Made, StoreError> {
        let Some(record) = self.blob(blob)? else {
            return Ok(Made::BlobGone);
        };
        let src = match open_nofollow(&self.blob_path(blob)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Made::BlobGone),
            Err(e) => return Err(e.into()),
        };
        let meta = src.metadata()?;
        if !meta.is_file() || meta.len() != record.size {
            self.report_damaged(blob, &src, "is not the file the index describes");
            return Ok(Made::SourceDamaged);
        }
        let (mut tmp, out) = self.temp_file(enc.as_str())?;
        let mut input = Hashing {
            inner: io::BufReader::with_capacity(1024 * 1024, &src),
            hasher: Sha256::new(),
            count: 0,
        };
        let mut output = Hashing {
            inner: io::BufWriter::with_capacity(1024 * 1024, out),
            hasher: Sha256::new(),
            count: 0,
        };
        let tried = encode(&mut input, &mut output, record.size)?;
        // Whatever the encoder left unread is read too, so that the whole blob is checked.
        io::copy(&mut input, &mut io::sink())?;
        if input.count != record.size || Digest(input.hasher.finalize().into()) != *blob {
            self.report_damaged(blob, &src, "does not hash to its name");
            return Ok(Made::SourceDamaged);
        }
        let size = output.count;
        let digest = Digest(output.hasher.finalize().into());
        let file = output.inner.into_inner().map_err(|e| e.into_error())?;
        let useful = tried && size < keep_below(record.size);
        if useful {
            file.sync_all()?;
        }
        drop(file);
        let made = useful.then_some(Variant { digest, size });
        self.record_variant(blob, enc, &mut tmp, made)
    }

    /// Takes in a variant made elsewhere (another replica's, from the bucket) that was written
    /// into `scratch`: kept only when its bytes decode (`decode`) to exactly the blob's, hash
    /// for hash and byte for byte, and it is smaller than `keep_below` of the blob. Blocks for as
    /// long as decoding takes.
    pub fn adopt_variant(
        &self,
        blob: &Digest,
        enc: Encoding,
        scratch: Scratch,
        keep_below: impl FnOnce(u64) -> u64,
        decode: impl FnOnce(&mut dyn Read, &mut dyn Write) -> io::Result<()>,
    ) -> Result<Adopted, StoreError> {
        let Scratch(mut tmp) = scratch;
        let Some(record) = self.blob(blob)? else {
            return Ok(Adopted::BlobGone);
        };
        let file = File::open(&tmp.path)?;
        let found = match decode_hashed(&file, decode)? {
            Ok(found) => found,
            Err(why) => return Ok(Adopted::Refused(why)),
        };
        if found.decoded_size != record.size || found.decoded != *blob {
            return Ok(Adopted::Refused(
                "does not decode to the binary's bytes".into(),
            ));
        }
        let Variant { digest, size } = found.encoded;
        if size >= keep_below(record.size) {
            return Ok(Adopted::Refused(format!(
                "has {size} bytes: too many for a variant of {} bytes",
                record.size
            )));
        }
        file.sync_all()?;
        drop(file);
        match self.record_variant(blob, enc, &mut tmp, Some(Variant { digest, size }))? {
            Made::Stored(v) => Ok(Adopted::Stored(v)),
            _ => Ok(Adopted::BlobGone),
        }
    }

    /// A file in `tmp/` for a variant to be written into from elsewhere ([`Store::adopt_variant`]).
    pub fn scratch(&self, enc: Encoding) -> io::Result<Scratch> {
        let (tmp, _file) = self.temp_file(enc.as_str())?;
        Ok(Scratch(tmp))
    }

    /// Records `made` (or that the encoding is not worth a file) as the `enc` variant of `blob`,
    /// moving the file in `tmp` into place when there is one.
    fn record_variant(
        &self,
        blob: &Digest,
        enc: Encoding,
        tmp: &mut TempFile,
        made: Option<Variant>,
    ) -> Result<Made, StoreError> {
        let _guard = self.locked()?;
        // The blob may have gone while it was encoded; its removal took the same lock.
        if self.blob(blob)?.is_none() {
            return Ok(Made::BlobGone);
        }
        let previous = self.recorded(blob, enc)?.flatten();
        if let Some(Variant { digest, .. }) = made {
            let path = self.variant_path(&digest);
            place(tmp, &path)?;
            // Hashed as it was written: whole as of now (the rename changed its inode's time).
            if let Ok(m) = fs::symlink_metadata(&path) {
                self.note_whole(&digest, seen(&m));
            }
        }
        self.ix()?
            .variants
            .insert(record_key(blob, enc), encode_record(&made))?;
        let mut delta = made.map_or(0, |v| i128::from(v.size));
        if let Some(old) = previous.filter(|old| Some(*old) != made) {
            delta -= i128::from(old.size);
            super::maintain::remove_file_logged(&self.variant_path(&old.digest));
        }
        self.add_variant_bytes(delta)?;
        self.flush()?;
        Ok(made.map_or(Made::Useless, Made::Stored))
    }

    /// Deletes the variants of `blob`, records and files. Called as the blob's file goes.
    pub(super) fn forget_variants(&self, blob: &Digest) {
        for enc in Encoding::ALL {
            if let Err(e) = self.drop_variant(blob, enc) {
                log::warn!("cannot forget the {} variant of {blob}: {e}", enc.as_str());
            }
        }
    }

    pub(super) fn drop_variant(&self, blob: &Digest, enc: Encoding) -> Result<(), StoreError> {
        let Some(old) = self.ix()?.variants.remove(record_key(blob, enc))? else {
            return Ok(());
        };
        if let Some(v) = decode_record(&old)? {
            super::maintain::remove_file_logged(&self.variant_path(&v.digest));
            self.add_variant_bytes(-i128::from(v.size))?;
            self.ix()?.variant_seen.remove(v.digest.0)?;
        }
        Ok(())
    }

    /// Opens the `enc` variant of `blob` to serve it: a regular file of the recorded size, seen
    /// whole (hashed to its name) since its file last changed. Never hashes: a variant not yet
    /// seen whole, or missing, is handed to the compressor to check (or make again) and `None`
    /// is returned, so that this request gets another representation. Cheap enough for the hit
    /// path: one sled read, an open and an fstat.
    pub fn serve_variant(&self, blob: &Digest, enc: Encoding) -> Option<(File, Variant)> {
        let variant = self.variant(blob, enc).ok().flatten()?;
        let file = open_nofollow(&self.variant_path(&variant.digest)).ok();
        let whole = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| {
                m.is_file()
                    && m.len() == variant.size
                    && self.seen_whole_as(&variant.digest) == Some(seen(&m))
            });
        match file {
            Some(file) if whole => Some((file, variant)),
            _ => {
                self.want_variants(blob);
                None
            }
        }
    }

    /// Runs `f` with each blob that needs its variants made (a new blob, a damaged variant).
    pub fn on_variants_wanted(&self, f: impl Fn(Digest) + Send + Sync + 'static) {
        let _ = self.variant_hook.set(Box::new(f));
    }

    /// Asks for the variants of `blob` to be made (a no-op unless a compressor listens).
    pub(super) fn want_variants(&self, blob: &Digest) {
        if let Some(hook) = self.variant_hook.get() {
            hook(*blob);
        }
    }

    pub(super) fn count_variant_corrupt(&self) {
        if let Some(hook) = self.corrupt_hook.get() {
            hook();
        }
    }
}

/// The file stamp the variant `digest` was last seen whole in, if any.
pub(super) fn verified_as(digest: &Digest) -> Option<Seen> {
    VERIFIED.lock().ok().and_then(|v| v.get(digest).copied())
}

/// Remembers that the variant `digest` was seen whole in the file of `stamp`.
pub(super) fn mark_whole(digest: &Digest, stamp: Seen) {
    if let Ok(mut v) = VERIFIED.lock() {
        if v.len() >= VERIFIED_MAX {
            v.clear();
        }
        v.insert(*digest, stamp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored bytes of a variant record, version 1. If this test fails, the layout changed: add
    /// a version.
    #[test]
    fn record_v1_bytes_are_stable() {
        let v = Some(Variant {
            digest: Digest([9; 32]),
            size: 0x0102,
        });
        let bytes = encode_record(&v);
        assert_eq!(
            hex::encode(&bytes),
            concat!(
                "0101",
                "0909090909090909090909090909090909090909090909090909090909090909",
                "0000000000000102"
            )
        );
        assert_eq!(decode_record(&bytes).expect("decodes"), v);
        assert_eq!(hex::encode(encode_record(&None)), "0100");
        assert_eq!(decode_record(&[1, 0]).expect("decodes"), None);
        assert!(decode_record(&[2, 0]).is_err());
        assert!(decode_record(&[1, 1, 0]).is_err());
        assert!(decode_record(&[]).is_err());
    }
}
