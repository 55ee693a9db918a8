//! Small helpers shared by several modules.

use std::time::{SystemTime, UNIX_EPOCH};

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

/// The longest download name kept; longer ones are cut (a header line has limits of its own).
const MAX_FILE_NAME: usize = 128;

/// A download name safe to put in a `Content-Disposition` header: ASCII letters, digits, `.`,
/// `_` and `-`, every other character replaced by `_`, at most 128 characters, `roadrunner`
/// when nothing is left. Names read back from a bucket go through this as names made at ingest
/// do, so that an object written by anyone cannot break or add a header.
pub fn clean_file_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .take(MAX_FILE_NAME)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.trim_matches(|c| c == '.' || c == '_').is_empty() {
        "roadrunner".to_owned()
    } else {
        cleaned
    }
}

/// `ms` (since the Unix epoch) when it is not in the future, else now: a date read from outside
/// (another replica's clock, a hand-written object) can never claim a time that has not come,
/// and never one that a date header cannot show.
pub fn clamp_past_ms(ms: u64) -> u64 {
    ms.min(now_ms())
}

/// Writes `bytes` to `path` atomically and durably (a synced `<path>.tmp` renamed over it, the
/// folder synced), readable by the owner only.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    std::io::Write::write_all(&mut f, bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_cleaned() {
        for (raw, clean) in [
            ("roadrunner-linux-amd64", "roadrunner-linux-amd64"),
            ("rr.exe", "rr.exe"),
            ("a\"b", "a_b"),
            ("a\r\nSet-Cookie: x=1", "a__Set-Cookie__x_1"),
            ("", "roadrunner"),
            ("..", "roadrunner"),
            ("\u{e9}t\u{e9}", "_t_"),
        ] {
            assert_eq!(clean_file_name(raw), clean, "{raw:?}");
        }
        assert_eq!(clean_file_name(&"x".repeat(1000)).len(), 128);
    }

    #[test]
    fn future_dates_become_now() {
        let now = now_ms();
        assert_eq!(clamp_past_ms(1_000), 1_000);
        assert!(clamp_past_ms(u64::MAX) >= now);
        assert!(clamp_past_ms(u64::MAX) < now + 60_000);
    }
}
