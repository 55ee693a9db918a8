//! The vocabulary every layer shares: a cache key and a blob digest, both 32 bytes shown as 64
//! lowercase hex digits. This module depends on nothing else in the crate, so the store and the
//! build layer can both use it without depending on each other.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Parses exactly 64 hex digits (either case) into 32 bytes.
fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses 64 hex digits (either case).
            pub fn from_hex(s: &str) -> Option<Self> {
                parse_hex32(s).map($name)
            }

            /// The raw bytes, as sled keys take them.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Reads 32 bytes; any other length is `None`.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                <[u8; 32]>::try_from(bytes).ok().map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.to_hex())
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }
    };
}

hex_id!(
    /// A cache key: the SHA-256 of a build request's canonical encoding.
    CacheKey
);

hex_id!(
    /// A blob's name: the SHA-256 of its bytes.
    Digest
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let s = "ab".repeat(32);
        assert_eq!(Digest::from_hex(&s), Some(Digest([0xab; 32])));
        assert_eq!(
            Digest::from_hex(&s.to_uppercase()),
            Some(Digest([0xab; 32]))
        );
        assert_eq!(Digest::from_hex(&s[..62]), None);
        assert_eq!(Digest::from_hex(&"zz".repeat(32)), None);
        assert_eq!(CacheKey([0xab; 32]).to_hex(), s);
        assert_eq!(
            format!("{:?}", CacheKey([0; 32])),
            format!("CacheKey({})", "00".repeat(32))
        );
        assert_eq!(Digest::from_slice(&[1; 31]), None);
        assert_eq!(Digest::from_slice(&[1; 32]), Some(Digest([1; 32])));
    }
}
