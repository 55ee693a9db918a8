//! Build quotas per token (docs/access.md, "Quotas and fairness"): builds running at once and
//! builds started per clock hour. Counted by this replica; the hour's counts are kept in
//! `<data_dir>/auth/usage.json` so that a restart does not hand out a fresh hour.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::token::TokenRecord;
use crate::error::{ApiError, ErrorCode};

/// Seconds a caller over its concurrency quota is told to wait.
const RETRY_CONCURRENT: u32 = 10;

#[derive(Default)]
struct Usage {
    running: u32,
    hour: u64,
    started: u32,
}

pub struct Quotas {
    usage: Arc<Mutex<HashMap<String, Usage>>>,
    file: PathBuf,
}

/// A build counted against a token; dropping it ends the count of builds running.
pub struct QuotaHold {
    usage: Arc<Mutex<HashMap<String, Usage>>>,
    name: String,
}

impl Drop for QuotaHold {
    fn drop(&mut self) {
        let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = usage.get_mut(&self.name) {
            u.running = u.running.saturating_sub(1);
        }
    }
}

fn exceeded(message: String, retry_after: u32) -> ApiError {
    let mut e = ApiError::new(ErrorCode::QuotaExceeded, message);
    e.retry_after = Some(retry_after.max(1));
    e
}

impl Quotas {
    pub fn new(data_dir: &Path) -> Quotas {
        let file = data_dir.join("auth").join("usage.json");
        let mut usage = HashMap::new();
        if let Ok(bytes) = std::fs::read(&file) {
            if let Ok(saved) = serde_json::from_slice::<HashMap<String, (u64, u32)>>(&bytes) {
                for (name, (hour, started)) in saved {
                    usage.insert(
                        name,
                        Usage {
                            running: 0,
                            hour,
                            started,
                        },
                    );
                }
            }
        }
        Quotas {
            usage: Arc::new(Mutex::new(usage)),
            file,
        }
    }

    /// Counts a build `token` starts at `now` (unix seconds), or refuses it with 429
    /// `quota_exceeded` and `Retry-After`.
    pub fn begin(&self, token: &TokenRecord, now: u64) -> Result<QuotaHold, ApiError> {
        let hour = now / 3600;
        let saved = {
            let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
            let u = usage.entry(token.name.clone()).or_default();
            if u.hour != hour {
                u.hour = hour;
                u.started = 0;
            }
            if let Some(max) = token.max_concurrent_builds {
                if u.running >= max {
                    return Err(exceeded(
                        format!(
                            "the token `{}` has {max} builds running, its limit; try again when one ends",
                            token.name
                        ),
                        RETRY_CONCURRENT,
                    ));
                }
            }
            if let Some(max) = token.builds_per_hour {
                if u.started >= max {
                    let next = (hour + 1) * 3600 - now;
                    return Err(exceeded(
                        format!(
                            "the token `{}` has started {max} builds this hour, its limit",
                            token.name
                        ),
                        u32::try_from(next).unwrap_or(3600),
                    ));
                }
            }
            u.running += 1;
            u.started += 1;
            usage
                .iter()
                .filter(|(_, u)| u.hour == hour)
                .map(|(n, u)| (n.clone(), (u.hour, u.started)))
                .collect::<HashMap<_, _>>()
        };
        // Builds take a minute; one small write per build started is nothing.
        if let Ok(bytes) = serde_json::to_vec(&saved) {
            let tmp = self.file.with_extension("tmp");
            if let Err(e) =
                std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &self.file))
            {
                log::warn!("cannot keep the hour's build counts: {e}");
            }
        }
        Ok(QuotaHold {
            usage: Arc::clone(&self.usage),
            name: token.name.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token::Scope;

    fn token(conc: Option<u32>, hourly: Option<u32>) -> TokenRecord {
        TokenRecord {
            name: "ci".into(),
            hash: String::new(),
            scope: Scope::Build,
            channels: vec![],
            created_at: 0,
            expires_at: None,
            max_concurrent_builds: conc,
            builds_per_hour: hourly,
            revoked_at: None,
        }
    }

    #[test]
    fn quotas_count_running_and_hourly_builds() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir_all(dir.path().join("auth")).expect("auth dir");
        let q = Quotas::new(dir.path());
        let t = token(Some(1), Some(2));
        let first = q.begin(&t, 7200).expect("first");
        let e = q.begin(&t, 7200).err().expect("second at once");
        assert_eq!(e.code, ErrorCode::QuotaExceeded);
        assert_eq!(e.retry_after, Some(RETRY_CONCURRENT));
        drop(first);
        let second = q.begin(&t, 7300).expect("second after the first");
        drop(second);
        let e = q.begin(&t, 7300).err().expect("third in the hour");
        assert_eq!(e.retry_after, Some(3500));
        // Kept across a restart.
        let again = Quotas::new(dir.path());
        assert!(again.begin(&t, 7400).is_err());
        assert!(again.begin(&t, 10800).is_ok(), "a new hour");
    }
}
