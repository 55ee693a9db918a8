//! Records stored in sled. Each is one version byte then bincode 2 (serde, standard config).
//! A new layout gets a new version byte and an explicit decoder for the old one; the tests keep
//! a fixture of stored bytes per version so that a silent layout change fails.

use bincode::config;
use serde::{Deserialize, Serialize};

use crate::ids::Digest;

/// Why stored bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record is empty")]
    Empty,
    #[error("record version {0} is unknown")]
    UnknownVersion(u8),
    #[error("record does not decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("record has {0} trailing bytes")]
    Trailing(usize),
    #[error("record does not encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
}

const ENTRY_V1: u8 = 1;
const BLOB_V1: u8 = 1;

/// One cache entry: a cache key's binary and what is known about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRecord {
    pub digest: Digest,
    pub size: u64,
    pub created_ms: u64,
    pub last_access_ms: u64,
    pub access_count: u64,
    pub build_ms: u64,
    pub file_name: String,
}

/// One blob file: how many entries use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    pub refs: u64,
    pub size: u64,
    pub stored_ms: u64,
    /// Download name given to the blob's URL.
    pub file_name: String,
}

fn encode<T: Serialize>(version: u8, value: &T) -> Result<Vec<u8>, RecordError> {
    let mut out = vec![version];
    out.extend(bincode::serde::encode_to_vec(value, config::standard())?);
    Ok(out)
}

fn decode<T: for<'de> Deserialize<'de>>(version: u8, bytes: &[u8]) -> Result<T, RecordError> {
    let (&v, body) = bytes.split_first().ok_or(RecordError::Empty)?;
    if v != version {
        return Err(RecordError::UnknownVersion(v));
    }
    let (value, used) = bincode::serde::decode_from_slice(body, config::standard())?;
    if used != body.len() {
        return Err(RecordError::Trailing(body.len() - used));
    }
    Ok(value)
}

impl EntryRecord {
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        encode(ENTRY_V1, self)
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        decode(ENTRY_V1, bytes)
    }
}

impl BlobRecord {
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        encode(BLOB_V1, self)
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        decode(BLOB_V1, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> EntryRecord {
        EntryRecord {
            digest: Digest([7; 32]),
            size: 1234,
            created_ms: 1_700_000_000_000,
            last_access_ms: 1_700_000_001_000,
            access_count: 3,
            build_ms: 61_000,
            file_name: "roadrunner-linux-amd64".into(),
        }
    }

    /// Stored bytes of an entry, version 1. If this test fails, the layout changed: add a version.
    const ENTRY_V1_FIXTURE: &str = concat!(
        "01",
        "0707070707070707070707070707070707070707070707070707070707070707",
        "fbd204",
        "fd0068e5cf8b010000",
        "fde86be5cf8b010000",
        "03",
        "fb48ee",
        "16726f616472756e6e65722d6c696e75782d616d643634"
    );

    #[test]
    fn entry_v1_bytes_are_stable() {
        let bytes = entry().encode().expect("encodes");
        assert_eq!(hex::encode(&bytes), ENTRY_V1_FIXTURE);
        let fixture = hex::decode(ENTRY_V1_FIXTURE).expect("hex");
        assert_eq!(EntryRecord::decode(&fixture).expect("decodes"), entry());
    }

    #[test]
    fn blob_round_trip_and_bad_bytes() {
        let b = BlobRecord {
            refs: 2,
            size: 10,
            stored_ms: 5,
            file_name: "roadrunner".into(),
        };
        let bytes = b.encode().expect("encodes");
        assert_eq!(
            hex::encode(&bytes),
            "0102 0a05 0a726f616472756e6e6572".replace(' ', "")
        );
        assert_eq!(BlobRecord::decode(&bytes).expect("decodes"), b);
        assert!(matches!(BlobRecord::decode(&[]), Err(RecordError::Empty)));
        assert!(matches!(
            BlobRecord::decode(&[9, 1]),
            Err(RecordError::UnknownVersion(9))
        ));
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            BlobRecord::decode(&long),
            Err(RecordError::Trailing(1))
        ));
        assert!(BlobRecord::decode(&bytes[..4]).is_err());
    }
}
