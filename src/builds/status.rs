//! What the status route can tell of a build (docs/http-api.md, "Asynchronous builds"): the
//! progress of a build under way, a watch on it that wakes only on a change, and the last failure
//! of each key, kept a while for clients that were told 202 and come back to ask.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::outcome::{BuildError, Outcome};
use super::resolve::Resolution;
use super::CacheKey;
use crate::store::EntryRecord;

/// How long a failure is reported when `failure_ttl` is shorter: a client told 202 learns why
/// its build failed, even for a failure that is not remembered for builds (a timeout, Velox
/// unavailable).
const FAILURE_REPORT_TTL: Duration = Duration::from_secs(300);
/// Most failures kept for the status route.
const MAX_REPORTED_FAILURES: usize = 4096;

/// Where an admitted build stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Admitted, waiting for a build slot.
    Queued,
    /// Holding a slot: calling Velox (`velox_attempts` so far, retries included) or storing the
    /// artifact.
    Building { velox_attempts: u32 },
}

/// What is known of a key, for the status route.
#[derive(Debug, Clone)]
pub enum BuildState {
    /// `elapsed` counts from the build's admission.
    Queued {
        elapsed: Duration,
    },
    Building {
        elapsed: Duration,
        velox_attempts: u32,
    },
    Ready(EntryRecord),
    Failed(BuildError),
}

impl BuildState {
    /// `ready` and `failed` do not change any more.
    pub fn is_final(&self) -> bool {
        matches!(self, BuildState::Ready(_) | BuildState::Failed(_))
    }
}

/// A build under way, watched without polling: a receiver of its progress channel and one of its
/// outcome channel. Clones are cheap; a watcher costs these two receivers.
#[derive(Clone)]
pub struct BuildWatch {
    pub(super) admitted: Instant,
    /// When the build stops itself (`build_timeout` after admission).
    pub(super) deadline: Instant,
    pub(super) request_id: Option<Arc<str>>,
    pub(super) progress: watch::Receiver<Progress>,
    pub(super) outcome: watch::Receiver<Option<Outcome>>,
}

impl BuildWatch {
    /// The `request_id` of the request that started the build.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// The build's state now.
    pub fn state(&self) -> BuildState {
        if let Some(outcome) = &*self.outcome.borrow() {
            return match outcome {
                // Served to the requests that waited, but not stored: nothing to fetch later.
                Ok(built) if built.unstored.is_some() => {
                    BuildState::Failed(super::outcome::not_stored())
                }
                Ok(built) => BuildState::Ready(built.entry.clone()),
                Err(e) => BuildState::Failed(e.clone()),
            };
        }
        let elapsed = self.admitted.elapsed();
        match *self.progress.borrow() {
            Progress::Queued => BuildState::Queued { elapsed },
            Progress::Building { velox_attempts } => BuildState::Building {
                elapsed,
                velox_attempts,
            },
        }
    }

    /// Waits until the progress or the outcome changes, and returns the new state. Once the
    /// state is final it is returned at once.
    pub async fn changed(&mut self) -> BuildState {
        let state = self.state();
        if state.is_final() {
            return state;
        }
        tokio::select! {
            biased;
            done = self.outcome.changed() => {
                if done.is_err() && self.outcome.borrow().is_none() {
                    log::error!("a build task ended without an outcome");
                    return BuildState::Failed(BuildError::Internal(
                        "the build task ended without an outcome",
                    ));
                }
            }
            // The progress sender goes with the task, after the outcome is sent: then the
            // outcome branch answers.
            Ok(()) = self.progress.changed() => {}
        }
        self.state()
    }
}

/// What the status route can tell of a key.
pub enum KeyState {
    /// A build under way.
    InFlight(BuildWatch),
    /// The cache holds the binary.
    Ready(EntryRecord),
    /// The key's last build failed; with the `request_id` it was started with.
    Failed(BuildError, Option<Arc<str>>),
}

/// A failure kept for the status route: when, what, and the build's `request_id`.
type Reported = (Instant, BuildError, Option<Arc<str>>);

/// The last failure of each key, for the status route only: builds never consult it (that is
/// `failure_ttl`'s memory, in the service).
#[derive(Default)]
pub(super) struct FailureReports {
    map: Mutex<HashMap<CacheKey, Reported>>,
}

impl FailureReports {
    /// Keeps `failure` as the last word on `key`, or forgets the key's failure on success.
    pub(super) fn note(
        &self,
        key: CacheKey,
        failure: Option<&BuildError>,
        request_id: Option<&str>,
        failure_ttl: Duration,
    ) {
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        let Some(e) = failure else {
            map.remove(&key);
            return;
        };
        if map.len() >= MAX_REPORTED_FAILURES {
            let ttl = failure_ttl.max(FAILURE_REPORT_TTL);
            map.retain(|_, (at, _, _)| at.elapsed() < ttl);
        }
        if map.len() >= MAX_REPORTED_FAILURES {
            let oldest = map
                .iter()
                .min_by_key(|(_, (at, _, _))| *at)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                map.remove(&oldest);
            }
        }
        map.insert(key, (Instant::now(), e.clone(), request_id.map(Arc::from)));
    }

    /// The failure of `key` still reported, with its `request_id`.
    pub(super) fn get(
        &self,
        key: &CacheKey,
        failure_ttl: Duration,
    ) -> Option<(BuildError, Option<Arc<str>>)> {
        let ttl = failure_ttl.max(FAILURE_REPORT_TTL);
        let map = self.map.lock().ok()?;
        let (at, e, id) = map.get(key)?;
        (at.elapsed() < ttl).then(|| (e.clone(), id.clone()))
    }
}

/// How long the resolutions behind a key are kept for the status route.
pub const RESOLVED_REPORT_TTL: Duration = Duration::from_secs(900);
/// Most bytes of resolutions kept for the status route (a request's list is at most 256 entries
/// of three strings of at most 512 bytes); past it the oldest lists go first.
const MAX_RESOLVED_BYTES: usize = 8 * 1024 * 1024;

type ResolvedList = Arc<[Resolution]>;
/// Each key's list with when it was noted, and the bytes of all lists together.
type ResolvedMap = (HashMap<CacheKey, (Instant, ResolvedList)>, usize);

/// The floating tags resolved for each key lately (the last request's list wins), for the
/// status route's `resolved`: the full list that `X-Build-Resolved` may cut short.
#[derive(Default)]
pub(super) struct ResolvedReports {
    map: Mutex<ResolvedMap>,
}

fn list_bytes(list: &[Resolution]) -> usize {
    list.iter()
        .map(|r| r.module.len() + r.asked.len() + r.version.len() + 96)
        .sum()
}

impl ResolvedReports {
    pub(super) fn note(&self, key: CacheKey, list: &[Resolution]) {
        if list.is_empty() {
            return;
        }
        let Ok(mut guard) = self.map.lock() else {
            return;
        };
        let (map, bytes) = &mut *guard;
        let size = list_bytes(list);
        if let Some((_, old)) = map.remove(&key) {
            *bytes -= list_bytes(&old);
        }
        if *bytes + size > MAX_RESOLVED_BYTES {
            map.retain(|_, (at, l)| {
                let keep = at.elapsed() < RESOLVED_REPORT_TTL;
                if !keep {
                    *bytes -= list_bytes(l);
                }
                keep
            });
        }
        while *bytes + size > MAX_RESOLVED_BYTES {
            let Some(oldest) = map.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| *k) else {
                break;
            };
            if let Some((_, l)) = map.remove(&oldest) {
                *bytes -= list_bytes(&l);
            }
        }
        map.insert(key, (Instant::now(), Arc::from(list)));
        *bytes += size;
    }

    pub(super) fn get(&self, key: &CacheKey) -> Option<ResolvedList> {
        let guard = self.map.lock().ok()?;
        let (at, list) = guard.0.get(key)?;
        (at.elapsed() < RESOLVED_REPORT_TTL).then(|| Arc::clone(list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_lists_are_kept_within_their_byte_budget() {
        let reports = ResolvedReports::default();
        let list = |n: usize| -> Vec<Resolution> {
            (0..n)
                .map(|i| Resolution {
                    module: format!("example.com/{i}/{}", "m".repeat(400)),
                    asked: "latest".into(),
                    version: "v1.0.0".into(),
                })
                .collect()
        };
        let key = |n: u64| {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&n.to_le_bytes());
            CacheKey(k)
        };
        reports.note(key(0), &[]);
        assert!(reports.get(&key(0)).is_none(), "nothing to report");
        reports.note(key(0), &list(2));
        reports.note(key(0), &list(3));
        assert_eq!(
            reports.get(&key(0)).expect("kept").len(),
            3,
            "the last wins"
        );
        for n in 1..200 {
            reports.note(key(n), &list(256));
        }
        let (map, bytes) = &*reports.map.lock().expect("lock");
        assert!(*bytes <= MAX_RESOLVED_BYTES, "{bytes}");
        assert_eq!(
            *bytes,
            map.values().map(|(_, l)| list_bytes(l)).sum::<usize>()
        );
        assert!(map.contains_key(&key(199)), "the newest is kept");
        assert!(!map.contains_key(&key(0)), "the oldest went first");
    }

    #[test]
    fn a_failure_is_reported_until_a_success_and_the_reports_stay_bounded() {
        let reports = FailureReports::default();
        let key = CacheKey([1; 32]);
        let ttl = Duration::from_secs(60);
        assert!(reports.get(&key, ttl).is_none());
        reports.note(key, Some(&BuildError::Overloaded), Some("id-1"), ttl);
        let (e, id) = reports.get(&key, ttl).expect("reported");
        assert!(matches!(e, BuildError::Overloaded));
        assert_eq!(id.as_deref(), Some("id-1"));
        reports.note(key, None, None, ttl);
        assert!(reports.get(&key, ttl).is_none());
        for n in 0..(MAX_REPORTED_FAILURES + 10) {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(n as u64).to_le_bytes());
            reports.note(CacheKey(k), Some(&BuildError::Overloaded), None, ttl);
        }
        assert_eq!(
            reports.map.lock().expect("lock").len(),
            MAX_REPORTED_FAILURES
        );
    }
}
