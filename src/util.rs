//! Small helpers shared by several modules.

use std::time::{SystemTime, UNIX_EPOCH};

/// Parses exactly 64 hex digits (either case) into 32 bytes.
pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn secret_eq(a: &str, b: &str) -> bool {
    constant_time_eq::constant_time_eq(a.as_bytes(), b.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex32() {
        let s = "ab".repeat(32);
        assert_eq!(parse_hex32(&s), Some([0xab; 32]));
        assert_eq!(parse_hex32(&s.to_uppercase()), Some([0xab; 32]));
        assert_eq!(parse_hex32(&s[..62]), None);
        assert_eq!(parse_hex32(&"zz".repeat(32)), None);
    }
}
