//! Everything read from the bucket is input (docs/object-storage.md, "What the bucket is
//! trusted with"): anyone with write access to it, a buggy replica, bit rot or a skewed clock can
//! put anything there. Objects are read with a size cap while they stream, manifests are checked
//! field by field before anything uses them, and nothing read here can reach a header unchecked.

use futures_util::StreamExt;
use object_store::GetResult;

use crate::ids::CacheKey;
use crate::store::ingest::MANIFEST_VERSION;
use crate::store::Manifest;

/// The largest blob a manifest may name (a RoadRunner binary is under 200 MB).
pub const MAX_BLOB_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// The longest a build may be said to have taken.
const MAX_BUILD_MS: u64 = 7 * 24 * 3600 * 1000;

/// Why an object could not be read whole.
#[derive(Debug)]
pub enum Capped {
    /// More than the cap: not what it claims to be.
    TooLarge(usize),
    Store(object_store::Error),
}

/// The bytes of `got`, read as they stream and abandoned as soon as they pass `cap`.
pub async fn read_capped(got: GetResult, cap: usize) -> Result<Vec<u8>, Capped> {
    if got.meta.size > cap as u64 {
        return Err(Capped::TooLarge(cap));
    }
    let mut stream = got.into_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Capped::Store)?;
        if out.len() + chunk.len() > cap {
            return Err(Capped::TooLarge(cap));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// What a manifest found in the bucket is to this build.
#[derive(Debug)]
pub enum Found {
    Usable(Manifest),
    /// Written by a newer velox-cache: not readable here, and never overwritten from here.
    Newer(u32),
    /// Does not decode, names another key, or fails a check: as if absent, and replaced by the
    /// next build's manifest.
    Damaged(String),
}

/// Checks a manifest's bytes as input: its version first (a newer layout is left alone), then
/// every field: the key it must name, a digest, a size that a blob can have, dates clamped to
/// the past (a date header cannot show the year 300 000, and a replica's clock may run ahead),
/// the download name cleaned as at ingest.
pub fn check_manifest(bytes: &[u8], key: CacheKey) -> Found {
    #[derive(serde::Deserialize)]
    struct Version {
        version: u32,
    }
    match serde_json::from_slice::<Version>(bytes) {
        Ok(v) if v.version > MANIFEST_VERSION => return Found::Newer(v.version),
        Ok(_) => {}
        Err(e) => return Found::Damaged(format!("does not decode: {e}")),
    }
    let mut m: Manifest = match serde_json::from_slice(bytes) {
        Ok(m) => m,
        Err(e) => return Found::Damaged(format!("does not decode: {e}")),
    };
    match m.names() {
        Err(why) => return Found::Damaged(why),
        Ok((k, _, _)) if k != key => return Found::Damaged(format!("names the key {k}")),
        Ok((_, _, size)) if size > MAX_BLOB_BYTES => {
            return Found::Damaged(format!("names a blob of {size} bytes"))
        }
        Ok(_) => {}
    }
    m.created_ms = crate::util::clamp_past_ms(m.created_ms);
    m.build_ms = m.build_ms.min(MAX_BUILD_MS);
    m.file_name = crate::util::clean_file_name(&m.file_name);
    Found::Usable(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> CacheKey {
        CacheKey([3; 32])
    }

    fn manifest(patch: serde_json::Value) -> Vec<u8> {
        let mut m = json!({
            "version": 1,
            "key": key().to_hex(),
            "digest": "ab".repeat(32),
            "size": 10,
            "created_ms": 1_700_000_000_000u64,
            "build_ms": 5,
            "file_name": "roadrunner-linux-amd64",
            "request": {},
        });
        if let (Some(m), Some(p)) = (m.as_object_mut(), patch.as_object()) {
            for (k, v) in p {
                m.insert(k.clone(), v.clone());
            }
        }
        serde_json::to_vec(&m).expect("json")
    }

    #[test]
    fn manifests_from_the_bucket_are_checked() {
        let Found::Usable(m) = check_manifest(&manifest(json!({})), key()) else {
            panic!("a good manifest is refused");
        };
        assert_eq!(m.created_ms, 1_700_000_000_000);

        let Found::Usable(m) = check_manifest(
            &manifest(json!({
                "created_ms": u64::MAX,
                "build_ms": u64::MAX,
                "file_name": "a\"\r\nX-Evil: 1",
            })),
            key(),
        ) else {
            panic!("absurd dates are clamped, not refused");
        };
        assert!(m.created_ms <= crate::util::now_ms());
        assert_eq!(m.build_ms, MAX_BUILD_MS);
        assert_eq!(m.file_name, "a___X-Evil__1");

        assert!(matches!(
            check_manifest(&manifest(json!({"version": 2, "size": "?"})), key()),
            Found::Newer(2)
        ));
        for (patch, why) in [
            (json!({"version": 0}), "old version"),
            (json!({"key": CacheKey([4; 32]).to_hex()}), "another key"),
            (json!({"digest": "zz"}), "a bad digest"),
            (json!({"size": 0}), "an empty blob"),
            (json!({"size": MAX_BLOB_BYTES + 1}), "a huge blob"),
            (json!({"size": -1}), "a negative size"),
            (json!({"created_ms": "soon"}), "a date that is not one"),
        ] {
            assert!(
                matches!(check_manifest(&manifest(patch), key()), Found::Damaged(_)),
                "{why} accepted"
            );
        }
        assert!(matches!(check_manifest(b"[]", key()), Found::Damaged(_)));
        assert!(matches!(check_manifest(b"\xff", key()), Found::Damaged(_)));
    }
}
