//! OCI images of channel releases (docs/images.md): the layer that holds `usr/bin/rr`, and the
//! config, manifest and index documents around it, in the OCI media types and in Docker's
//! schema 2 ones. Pure: no HTTP and no store here; `crate::http::registry` serves what this
//! makes and `crate::store::images` keeps it.

pub mod document;
pub mod layer;

pub use document::{Flavor, ImageFacts, Platform};
pub use layer::{build_layer, LayerFacts};

/// `sha256:<hex>`, the form digests take in OCI documents and URLs.
pub fn digest_string(bytes: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(bytes))
}

/// The 32 bytes of a `sha256:<64 lowercase hex>` digest. Other algorithms are not served here
/// (every digest this registry makes is SHA-256), so they are `None` like malformed ones.
pub fn parse_digest(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix("sha256:")?;
    if hex.len() != 64 || hex.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).ok()?;
    Some(out)
}

/// The SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_round_trip_and_refuse_other_forms() {
        let d = sha256(b"rr");
        let s = digest_string(&d);
        assert_eq!(parse_digest(&s), Some(d));
        assert_eq!(parse_digest(&s.to_uppercase()), None);
        assert_eq!(parse_digest(&s.replace("sha256:", "sha512:")), None);
        assert_eq!(parse_digest(&s[..s.len() - 1]), None);
        assert_eq!(parse_digest(&s.replace("sha256:", "")), None);
    }
}
