//! `[compression]` (docs/compression.md): the zstd and gzip variants made of every stored binary
//! and served to clients that ask for them with `Accept-Encoding`.

use serde::{Deserialize, Serialize};

/// Default of `compression.zstd_level`.
pub const ZSTD_LEVEL: i32 = 19;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// Whether variants are made (and served). Variants already stored are kept either way, and
    /// go with their binary.
    pub enabled: bool,
    /// zstd's level, 1 to 22. The window stays at 8 MiB whatever the level (RFC 9659).
    pub zstd_level: i32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            enabled: true,
            zstd_level: ZSTD_LEVEL,
        }
    }
}

impl CompressionConfig {
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        if !(1..=22).contains(&self.zstd_level) {
            return Err((
                "compression.zstd_level".into(),
                "must be a whole number from 1 to 22".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_outside_zstds_range_are_refused() {
        for bad in [0, -1, 23] {
            let c = CompressionConfig {
                zstd_level: bad,
                ..Default::default()
            };
            let (key, _) = c.validate().expect_err("refused");
            assert_eq!(key, "compression.zstd_level");
        }
        for good in [1, 19, 22] {
            let c = CompressionConfig {
                zstd_level: good,
                ..Default::default()
            };
            c.validate().expect("valid");
        }
    }
}
