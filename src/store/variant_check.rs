//! Checking compressed variants (docs/compression.md): a variant is served only once its bytes
//! were seen to hash to its name since its file last changed. The compressor checks a blob's
//! variants before making the missing ones, the start-up pass checks them all before any is
//! served, and the scrub hashes them again at its pace; one that is missing, of the wrong size
//! or type, or that does not hash to its name is deleted (and counted as damage), to be made
//! again.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use sha2::{Digest as _, Sha256};

use super::scrub::open_nofollow;
use super::variants::{
    decode_hashed, decode_record, encode_record, keep_below, mark_whole, record_key, seen,
    verified_as, Encoding, Seen, Variant, VARIANT_DIR,
};
use super::{Store, StoreError};
use crate::ids::Digest;

/// The device, inode and change time of what `path` names (not following a link), `None` when
/// nothing is there (or it cannot be examined).
fn identity(path: &std::path::Path) -> Option<Seen> {
    fs::symlink_metadata(path).ok().map(|m| seen(&m))
}

impl Store {
    /// Checks the variants of `blob` that were not seen whole since their file last changed:
    /// each is hashed, and one that is missing, of the wrong size or type, or does not hash to
    /// its name is deleted (and counted as damage when it is there but wrong). Returns how many
    /// went. `force` hashes even those seen whole (the scrub); `pace` is told of every chunk
    /// read and stops the check when it answers false. Blocks for as long as hashing takes.
    pub fn check_variants_of(
        &self,
        blob: &Digest,
        force: bool,
        pace: &mut dyn FnMut(u64) -> bool,
    ) -> Result<usize, StoreError> {
        let mut dropped = 0;
        for enc in Encoding::ALL {
            let Some(variant) = self.variant(blob, enc)? else {
                continue;
            };
            let path = self.variant_path(&variant.digest);
            // What was examined: the file hashed, or what was at the path when it could not be
            // opened. The drop below happens only if that is still what the path holds.
            let mut examined = identity(&path);
            let problem = match open_nofollow(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Some(("is missing", false)),
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    Some(("is a symbolic link", true))
                }
                Err(e) => {
                    log::error!("the variant {} cannot be opened: {e}", variant.digest);
                    Some(("cannot be opened", true))
                }
                Ok(file) => match file.metadata() {
                    Ok(m) if !m.is_file() || m.len() != variant.size => {
                        examined = Some(seen(&m));
                        Some(("is not the file the index describes", true))
                    }
                    Ok(m) => {
                        let stamp = seen(&m);
                        examined = Some(stamp);
                        // Seen whole since its file last changed: not hashed again (but
                        // by the scrub, which looks for damage below the filesystem).
                        let known = !force && self.seen_whole_as(&variant.digest) == Some(stamp);
                        match if known {
                            None
                        } else {
                            Some(hash_file(&file, pace))
                        } {
                            None => None,
                            Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {
                                return Ok(dropped)
                            }
                            Some(Ok(d)) if d == variant.digest => {
                                self.note_whole(&variant.digest, stamp);
                                None
                            }
                            Some(Ok(_)) => Some(("does not hash to its name", true)),
                            Some(Err(e)) => {
                                log::error!("the variant {} cannot be read: {e}", variant.digest);
                                Some(("cannot be read", true))
                            }
                        }
                    }
                    Err(_) => Some(("cannot be examined", true)),
                },
            };
            if let Some((why, damaged)) = problem {
                log::error!(
                    "the {} variant of {blob} ({}) {why}: deleted, to be made again",
                    enc.as_str(),
                    variant.digest
                );
                let _guard = self.locked()?;
                // Only if it is still the recorded one and still the file examined: it may have
                // been made again meanwhile, with the same bytes, so the same record, but a new
                // file (a scrub that read the old one for minutes must not delete it).
                if self.variant(blob, enc)? == Some(variant) && identity(&path) == examined {
                    self.drop_variant(blob, enc)?;
                    dropped += 1;
                    if damaged {
                        self.count_variant_corrupt();
                    }
                }
            }
        }
        Ok(dropped)
    }

    /// Checks every variant not seen whole since its file last changed (at start, before any is
    /// served; the stamps are kept in the index, so a restart hashes only what changed): a record whose blob is gone, or whose file is missing, damaged or
    /// of the wrong size, is dropped (and its blob's variants asked for again); a file under
    /// `variants/` that no record names is deleted, unless it decodes (`decode`) to a stored
    /// binary that has no record of its coding: then it is that binary's variant again (a crash
    /// between placing a variant and recording it, an index rebuilt from the manifests), kept
    /// rather than made again. May hash every variant file: run it in the background. Returns
    /// how many problems were put right.
    pub fn check_variants(&self, decode: Decode<'_>) -> Result<usize, StoreError> {
        let mut fixed = 0;
        let mut hashed = 0u64;
        let mut named = std::collections::HashSet::new();
        let records: Vec<_> = self.ix()?.variants.iter().collect::<Result<Vec<_>, _>>()?;
        for (k, v) in records {
            let (Some(blob), Some(&tag)) = (Digest::from_slice(&k[..k.len().min(32)]), k.get(32))
            else {
                self.ix()?.variants.remove(&k)?;
                fixed += 1;
                continue;
            };
            let Some(enc) = Encoding::ALL.into_iter().find(|e| e.tag() == tag) else {
                self.ix()?.variants.remove(&k)?;
                fixed += 1;
                continue;
            };
            let Ok(recorded) = decode_record(&v) else {
                self.ix()?.variants.remove(&k)?;
                fixed += 1;
                self.want_variants(&blob);
                continue;
            };
            if self.blob(&blob)?.is_none() {
                let _guard = self.locked()?;
                if self.blob(&blob)?.is_none() {
                    self.drop_variant(&blob, enc)?;
                    fixed += 1;
                }
                continue;
            }
            if let Some(variant) = recorded {
                let dropped = self.check_variants_of(&blob, false, &mut |n| {
                    hashed = hashed.saturating_add(n);
                    true
                })?;
                if dropped > 0 {
                    fixed += dropped;
                    self.want_variants(&blob);
                }
                if self.variant(&blob, enc)? == Some(variant) {
                    named.insert(variant.digest);
                }
            }
        }
        log::info!(
            "compression: {} variants checked, {hashed} bytes hashed (the others were seen whole since their files last changed)",
            named.len()
        );
        fixed += self.delete_unnamed_variant_files(&named, decode)?;
        Ok(fixed)
    }

    /// Takes the unnamed variant file `path` back as the variant of the stored binary it decodes
    /// to, when its name is its SHA-256 and that binary has no record of its coding; whether it
    /// did.
    fn readopt(&self, path: &std::path::Path, name: Digest, decode: Decode<'_>) -> bool {
        let Ok(file) = open_nofollow(path) else {
            return false;
        };
        let mut head = [0u8; 4];
        let enc = match file.read_at(&mut head, 0) {
            Ok(4) if head == [0x28, 0xb5, 0x2f, 0xfd] => Encoding::Zstd,
            Ok(n) if n >= 2 && head[..2] == [0x1f, 0x8b] => Encoding::Gzip,
            _ => return false,
        };
        let found = match decode_hashed(&file, |input, output| decode(enc, input, output)) {
            Ok(Ok(found)) if found.encoded.digest == name => found,
            _ => return false,
        };
        let (blob, size) = (found.decoded, found.encoded.size);
        let Ok(_guard) = self.locked() else {
            return false;
        };
        let adopted = (|| -> Result<bool, StoreError> {
            let Some(record) = self.blob(&blob)? else {
                return Ok(false);
            };
            if record.size != found.decoded_size
                || size >= keep_below(record.size)
                || self.ix()?.variants.contains_key(record_key(&blob, enc))?
            {
                return Ok(false);
            }
            let made = Some(Variant { digest: name, size });
            self.ix()?
                .variants
                .insert(record_key(&blob, enc), encode_record(&made))?;
            self.add_variant_bytes(i128::from(size))?;
            self.flush()?;
            if let Ok(m) = file.metadata() {
                self.note_whole(&name, seen(&m));
            }
            Ok(true)
        })();
        match adopted {
            Ok(true) => {
                log::info!(
                    "the unrecorded file {} is the {} variant of {blob}: kept",
                    path.display(),
                    enc.as_str()
                );
                true
            }
            Ok(false) => false,
            Err(e) => {
                log::warn!("cannot record the variant file {}: {e}", path.display());
                false
            }
        }
    }

    fn delete_unnamed_variant_files(
        &self,
        named: &std::collections::HashSet<Digest>,
        decode: Decode<'_>,
    ) -> Result<usize, StoreError> {
        let root = self.root.join(VARIANT_DIR);
        let shards = match fs::read_dir(&root) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let mut deleted = 0;
        for shard in shards.flatten() {
            let Ok(files) = fs::read_dir(shard.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name();
                let digest = name.to_str().and_then(Digest::from_hex);
                if digest.is_some_and(|d| named.contains(&d)) {
                    continue;
                }
                if let Some(d) = digest {
                    if self.readopt(&file.path(), d, decode) {
                        deleted += 1;
                        continue;
                    }
                }
                // Checked again under the lock: a variant may have been placed since the list.
                let _guard = self.locked()?;
                let placed_since = match digest {
                    Some(d) => self.ix()?.variants.iter().values().any(|v| {
                        v.ok()
                            .and_then(|v| decode_record(&v).ok().flatten())
                            .is_some_and(|v| v.digest == d)
                    }),
                    None => false,
                };
                if !placed_since && super::maintain::remove_file_logged(&file.path()) {
                    log::info!("deleted the unused variant file {}", file.path().display());
                    deleted += 1;
                }
            }
        }
        Ok(deleted)
    }
}

/// Decodes all of its input in a coding into its output (`crate::compress::decode`).
pub type Decode<'a> = &'a dyn Fn(Encoding, &mut dyn Read, &mut dyn Write) -> io::Result<()>;

/// SHA-256 of a whole file, read through `file` with `pread` (its position is left alone).
/// `pace` is told of every chunk; when it answers false the hash stops with `Interrupted`.
fn hash_file(file: &File, pace: &mut dyn FnMut(u64) -> bool) -> io::Result<Digest> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut at = 0u64;
    loop {
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        at += n as u64;
        if !pace(n as u64) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "stopped"));
        }
    }
    Ok(Digest(h.finalize().into()))
}

impl Store {
    /// The file stamp the variant `digest` was last seen whole in: remembered in memory, and in
    /// the index so that a restart does not hash every variant again (a file changed through
    /// the filesystem since has another change time, and is hashed before it is served).
    pub(super) fn seen_whole_as(&self, digest: &Digest) -> Option<Seen> {
        if let Some(stamp) = verified_as(digest) {
            return Some(stamp);
        }
        let kept = self.ix().ok()?.variant_seen.get(digest.0).ok()??;
        let stamp = decode_seen(&kept)?;
        mark_whole(digest, stamp);
        Some(stamp)
    }

    /// Remembers that the variant `digest` was seen whole in the file of `stamp`. Not flushed:
    /// a stamp lost in a crash only costs hashing that variant again.
    pub(super) fn note_whole(&self, digest: &Digest, stamp: Seen) {
        // Known already (every scrub pass sees each variant whole again): no index write.
        if verified_as(digest) == Some(stamp) {
            return;
        }
        mark_whole(digest, stamp);
        let kept = self
            .ix()
            .and_then(|ix| Ok(ix.variant_seen.insert(digest.0, &encode_seen(stamp)[..])?));
        if let Err(e) = kept {
            log::debug!("the stamp of variant {digest} is not kept in the index: {e}");
        }
    }
}

fn encode_seen((dev, ino, ctime, nsec): Seen) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..8].copy_from_slice(&dev.to_be_bytes());
    out[8..16].copy_from_slice(&ino.to_be_bytes());
    out[16..24].copy_from_slice(&ctime.to_be_bytes());
    out[24..].copy_from_slice(&nsec.to_be_bytes());
    out
}

fn decode_seen(bytes: &[u8]) -> Option<Seen> {
    let part = |i: usize| -> Option<[u8; 8]> { bytes.get(i * 8..i * 8 + 8)?.try_into().ok() };
    if bytes.len() != 32 {
        return None;
    }
    Some((
        u64::from_be_bytes(part(0)?),
        u64::from_be_bytes(part(1)?),
        i64::from_be_bytes(part(2)?),
        i64::from_be_bytes(part(3)?),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::variants::Made;
    use super::super::EntryRecord;
    use super::*;
    use crate::ids::CacheKey;

    /// A store of one binary with a (made-up) zstd variant: its first half.
    fn store_with_variant() -> (tempfile::TempDir, Store, Digest, Variant) {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("data")).expect("open");
        let bytes: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 31 % 251) as u8).collect();
        let digest = Digest(Sha256::digest(&bytes).into());
        let key = CacheKey([1; 32]);
        for (path, data) in [
            (store.blob_path(&digest), &bytes[..]),
            (store.manifest_path(&key), &b"{}"[..]),
        ] {
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(&path, data).expect("write");
        }
        let entry = EntryRecord {
            digest,
            size: bytes.len() as u64,
            created_ms: 1_000,
            last_access_ms: 1_000,
            access_count: 1,
            build_ms: 1,
            file_name: "rr".into(),
        };
        store.bulk_index(&[(key, entry)]).expect("index");
        let made = store
            .make_variant(
                &digest,
                Encoding::Zstd,
                |n| n,
                |input, output, _| {
                    let mut all = Vec::new();
                    input.read_to_end(&mut all)?;
                    output.write_all(&all[..all.len() / 2])?;
                    Ok(true)
                },
            )
            .expect("make");
        let Made::Stored(variant) = made else {
            panic!("not stored: {made:?}");
        };
        (dir, store, digest, variant)
    }

    /// The scrub hashes a damaged variant for as long as its pace allows; the compressor may
    /// make it again meanwhile, byte for byte the same (so the same record) but a new file. The
    /// check must delete what it read, not the good file now in its place.
    #[test]
    fn a_check_keeps_the_variant_made_again_while_it_read_the_damaged_one() {
        let (_dir, store, digest, variant) = store_with_variant();
        let path = store.variant_path(&variant.digest);
        let good = fs::read(&path).expect("read");
        let mut bad = good.clone();
        bad[10] ^= 0xff;
        fs::write(&path, &bad).expect("damage");

        let mut remade = false;
        let dropped = store
            .check_variants_of(&digest, true, &mut |_| {
                if !remade {
                    let fresh = path.with_extension("remade");
                    fs::write(&fresh, &good).expect("write");
                    fs::rename(&fresh, &path).expect("rename");
                    remade = true;
                }
                true
            })
            .expect("check");
        assert!(remade);
        assert_eq!(dropped, 0, "the good file made meanwhile was deleted");
        assert_eq!(
            store.variant(&digest, Encoding::Zstd).expect("variant"),
            Some(variant)
        );
        assert_eq!(fs::read(&path).expect("still there"), good);

        // Damage that stays is still found and dropped.
        fs::write(&path, &bad).expect("damage");
        let dropped = store
            .check_variants_of(&digest, true, &mut |_| true)
            .expect("check");
        assert_eq!(dropped, 1);
        assert_eq!(
            store.variant(&digest, Encoding::Zstd).expect("variant"),
            None
        );
        assert!(!path.exists());
    }
}
