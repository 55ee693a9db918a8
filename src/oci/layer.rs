//! The image layer: a gzip'd tar of `usr/`, `usr/bin/` and `usr/bin/rr`, made deterministically
//! (fixed order, mtimes, owners and modes; no gzip timestamp or file name) so that the same binary
//! gives the same bytes on every run of the same build. The deflate bytes still depend on the
//! compressor's version and backend, so a layer is made once per binary and kept, never made
//! again and expected to match. Replicas each make their own (docs/images.md): the same build of
//! velox-cache makes the same bytes; the layer is not uploaded to the bucket.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

/// Where the binary goes in the image.
pub const BINARY_PATH: &str = "usr/bin/rr";
/// The mtime of every entry (the epoch, as reproducible-build tools use without
/// `SOURCE_DATE_EPOCH`).
const MTIME: u64 = 0;
/// The deflate level. Level 1 makes a 100 MB Go binary's layer several times faster than the
/// default level 6 for a few per cent more bytes (BENCHMARKS.md, "Images").
pub const LEVEL: u32 = 1;

/// What a made layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerFacts {
    /// SHA-256 of the gzip'd bytes: the layer's digest in manifests.
    pub digest: [u8; 32],
    /// Size of the gzip'd bytes.
    pub size: u64,
    /// SHA-256 of the uncompressed tar: the config's `rootfs.diff_ids`.
    pub diff_id: [u8; 32],
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    count: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what it reads, so the binary is checked against its digest on the way.
struct Checked<R> {
    inner: R,
    hash: Sha256,
    count: u64,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

fn header(path: &str, kind: tar::EntryType, size: u64) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_username("root")?;
    h.set_groupname("root")?;
    h.set_cksum();
    Ok(h)
}

/// Writes the layer for the binary read from `binary` (`size` bytes, hashing to `expect`) into
/// `out`. Bytes that are not the binary's (a short read, another digest) are an error: the layer
/// is then not to be kept.
pub fn build_layer(
    binary: impl Read,
    size: u64,
    expect: &[u8; 32],
    out: impl Write,
    level: u32,
) -> io::Result<LayerFacts> {
    let gz_out = Hashing {
        inner: out,
        hash: Sha256::new(),
        count: 0,
    };
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(gz_out, flate2::Compression::new(level.min(9)));
    let tar_out = Hashing {
        inner: gz,
        hash: Sha256::new(),
        count: 0,
    };
    let mut tar = tar::Builder::new(tar_out);
    tar.append(&header("usr/", tar::EntryType::Directory, 0)?, io::empty())?;
    tar.append(
        &header("usr/bin/", tar::EntryType::Directory, 0)?,
        io::empty(),
    )?;
    let mut checked = Checked {
        inner: binary.take(size),
        hash: Sha256::new(),
        count: 0,
    };
    tar.append(
        &header(BINARY_PATH, tar::EntryType::Regular, size)?,
        &mut checked,
    )?;
    if checked.count != size || <[u8; 32]>::from(checked.hash.finalize()) != *expect {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the binary's bytes do not match its digest",
        ));
    }
    let tar_out = tar.into_inner()?;
    let diff_id: [u8; 32] = tar_out.hash.finalize().into();
    let mut gz_out = tar_out.inner.finish()?;
    gz_out.flush()?;
    Ok(LayerFacts {
        digest: gz_out.hash.finalize().into(),
        size: gz_out.count,
        diff_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(bytes: &[u8]) -> (LayerFacts, Vec<u8>) {
        let mut out = Vec::new();
        let facts = build_layer(
            bytes,
            bytes.len() as u64,
            &crate::oci::sha256(bytes),
            &mut out,
            LEVEL,
        )
        .expect("layer");
        (facts, out)
    }

    #[test]
    fn the_same_binary_gives_the_same_layer_and_the_facts_describe_it() {
        let binary: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (a, bytes_a) = layer(&binary);
        let (b, bytes_b) = layer(&binary);
        assert_eq!(a, b);
        assert_eq!(bytes_a, bytes_b);
        assert_eq!(a.size, bytes_a.len() as u64);
        assert_eq!(a.digest, crate::oci::sha256(&bytes_a));
        // No timestamp in the gzip header, OS "unknown".
        assert_eq!(&bytes_a[4..8], &[0, 0, 0, 0]);
        assert_eq!(bytes_a[9], 255);
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(&bytes_a[..])
            .read_to_end(&mut tar_bytes)
            .expect("gunzip");
        assert_eq!(a.diff_id, crate::oci::sha256(&tar_bytes));
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let h = entry.header().clone();
            seen.push((
                entry.path().expect("path").display().to_string(),
                h.mode().expect("mode"),
                h.uid().expect("uid"),
                h.mtime().expect("mtime"),
            ));
            if h.entry_type() == tar::EntryType::Regular {
                let mut content = Vec::new();
                entry.read_to_end(&mut content).expect("content");
                assert_eq!(content, binary);
            }
        }
        assert_eq!(
            seen,
            vec![
                ("usr/".into(), 0o755, 0, 0),
                ("usr/bin/".into(), 0o755, 0, 0),
                ("usr/bin/rr".into(), 0o755, 0, 0),
            ]
        );
        // Another binary, another layer.
        let (c, _) = layer(&binary[1..]);
        assert_ne!(c.digest, a.digest);
    }

    #[test]
    fn bytes_that_are_not_the_binary_are_refused() {
        let binary = b"not quite the binary".to_vec();
        let wrong = crate::oci::sha256(b"another");
        let mut out = Vec::new();
        let e = build_layer(&binary[..], binary.len() as u64, &wrong, &mut out, LEVEL)
            .expect_err("wrong digest");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // Short: fewer bytes than the size says.
        let right = crate::oci::sha256(&binary);
        assert!(build_layer(
            &binary[..],
            binary.len() as u64 + 5,
            &right,
            &mut out,
            LEVEL
        )
        .is_err());
    }
}
