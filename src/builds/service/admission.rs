//! Admission: a place among the admitted builds (`max_concurrent_builds + max_queued_builds`),
//! taken before anything else is done for a request and given back when dropped.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{BuildError, BuildService, CacheKey};

/// A build's place among the admitted ones and in the in-flight map, given back when dropped.
pub(super) struct Admitted<'a> {
    pub(super) service: &'a BuildService,
    pub(super) key: CacheKey,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Ok(mut inflight) = self.service.inflight.lock() {
            inflight.remove(&self.key);
        }
        self.service.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One place among the admitted builds, taken before a request's floating tags are resolved, so
/// that a full queue refuses the request before any Go module proxy is asked
/// (docs/build-requests.md, "Floating references"). It becomes the build's if the request
/// starts one, and is given back when dropped otherwise (a hit, a build joined, a failure).
pub struct Admission {
    pub(super) service: Arc<BuildService>,
    pub(super) held: bool,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.held {
            self.service.admitted.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Decrements a counter when dropped, so that cancelled tasks leave the books straight.
pub(super) struct Count<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> Count<'a> {
    pub(super) fn up(c: &'a std::sync::atomic::AtomicU64) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Count(c)
    }
}

impl Drop for Count<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl BuildService {
    /// Takes one place among the admitted builds (`max_concurrent_builds + max_queued_builds`),
    /// or refuses with [`BuildError::Overloaded`].
    pub fn admit(self: &Arc<Self>) -> Result<Admission, BuildError> {
        let limit = self.config.build_slots() + self.config.max_queued_builds;
        if self.admitted.fetch_add(1, Ordering::SeqCst) >= limit {
            self.admitted.fetch_sub(1, Ordering::SeqCst);
            return Err(BuildError::Overloaded);
        }
        Ok(Admission {
            service: Arc::clone(self),
            held: true,
        })
    }
}
