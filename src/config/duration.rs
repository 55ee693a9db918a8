//! Durations in the configuration: humantime text (`500ms`, `30s`, `5m`, `1h 30m`) or a bare `0`.
//!
//! A bare `0` is what people write for "off" (`access_update_interval = 0`), and what the
//! environment gives as a number (`VELOX_CACHE_CACHE__CLEANUP_INTERVAL=0`); it means zero.
//! Any other bare number is refused: `300` could be seconds or milliseconds, and guessing wrong
//! is worse than asking for a unit. Use with `#[serde(with = "crate::config::duration")]`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    humantime_serde::serialize(d, s)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

struct DurationVisitor;

fn bare<E: de::Error>(n: impl fmt::Display + PartialEq + Default) -> Result<Duration, E> {
    if n == Default::default() {
        Ok(Duration::ZERO)
    } else {
        Err(E::custom(format!(
            "a duration needs a unit: write \"{n}s\" or \"{n}ms\" (only a bare 0 goes without one)"
        )))
    }
}

impl<'de> Visitor<'de> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a duration such as 30s, 5m or 1h, or 0")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        humantime::parse_duration(v.trim()).map_err(|e| {
            E::custom(format!(
                "\"{v}\" is not a duration ({e}); write it like 30s, 5m or 1h"
            ))
        })
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        bare(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        bare(v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        bare(v)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    struct T {
        #[serde(with = "super")]
        d: Duration,
    }

    fn parse(toml_text: &str) -> Result<Duration, String> {
        toml::from_str::<T>(toml_text)
            .map(|t| t.d)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn text_and_bare_zero() {
        assert_eq!(parse("d = \"5m\""), Ok(Duration::from_secs(300)));
        assert_eq!(parse("d = \"0\""), Ok(Duration::ZERO));
        assert_eq!(parse("d = 0"), Ok(Duration::ZERO));
        assert_eq!(parse("d = 0.0"), Ok(Duration::ZERO));
        let e = parse("d = 300").expect_err("no unit");
        assert!(e.contains("\"300s\""), "{e}");
        let e = parse("d = \"forever\"").expect_err("not a duration");
        assert!(e.contains("30s, 5m or 1h"), "{e}");
    }
}
