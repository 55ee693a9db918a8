//! The pool of Velox builders (docs/builders.md): which builder a build goes to, what each one's
//! health is, and drain/enable.
//!
//! A build takes a [`Lease`] on the healthy, enabled builder with the most free capacity (its
//! `max_concurrent` less its builds in flight), ties taken in turn; the lease is given back when
//! dropped. Health comes from real calls and probes (`probe`): down after two failures in a row
//! or at once on a failed connection (or an answer that is not Velox's), up after one success.
//!
//! With `server_url` alone there is no pool: nothing is probed, and the one builder is tried
//! whatever its last call said, so a single Velox keeps the retry rules of docs/velox.md.
//! In a pool (`velox.servers`), a build finds no builder at once when every one is down or
//! draining, and the client gets 503 `velox_unavailable`.
//!
//! One mutex holds every builder's state: choosing needs all of them at once, and it is held
//! for a few comparisons only, never across an await.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::{BuilderSpec, Config};
use crate::metrics::BuilderGauge;

/// What a call or a probe learnt of a builder's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A well-formed answer: the builder is up.
    Answered,
    /// No connection, a reset, or an answer that is not Velox's: down at once.
    Unreachable(String),
    /// A 502/503/504 or `unavailable`: down after two in a row.
    Failing(String),
}

/// How one call on a builder ended, for `velox_builder_builds_total{status}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStatus {
    Success,
    Error,
    Unavailable,
    Timeout,
}

impl CallStatus {
    pub const ALL: [CallStatus; 4] = [
        CallStatus::Success,
        CallStatus::Error,
        CallStatus::Unavailable,
        CallStatus::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Success => "success",
            CallStatus::Error => "error",
            CallStatus::Unavailable => "unavailable",
            CallStatus::Timeout => "timeout",
        }
    }
}

/// Failures in a row that take a builder down.
const DOWN_AFTER: u32 = 2;

#[derive(Debug)]
struct State {
    up: bool,
    enabled: bool,
    in_flight: usize,
    failures_in_row: u32,
    failures: u64,
    last_error: Option<String>,
}

/// One builder: its settings, the URL it is shown with, and its counters.
pub struct Builder {
    pub spec: Arc<BuilderSpec>,
    /// The URL with any user name and password masked, as the admin route and provenance show it.
    pub shown_url: String,
    calls: [AtomicU64; CallStatus::ALL.len()],
}

/// Why no lease was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoLease {
    /// No builder outside those excluded can take builds now (down, draining).
    NoBuilder,
    /// The deadline passed while every usable builder was full.
    Timeout,
}

pub struct Pool {
    builders: Vec<Builder>,
    states: Mutex<Vec<State>>,
    /// Whether the builders come from `velox.servers` (see the module's docs).
    pooled: bool,
    health_interval: Duration,
    /// Told of every lease given back and every change of state.
    changed: Notify,
    /// Where the next tie is broken: builders from here on are preferred.
    turn: AtomicUsize,
    failovers: AtomicU64,
}

/// A build's place on a builder, given back when dropped.
pub struct Lease {
    pool: Arc<Pool>,
    index: usize,
}

impl Lease {
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn builder(&self) -> &Builder {
        &self.pool.builders[self.index]
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut states) = self.pool.states.lock() {
            let s = &mut states[self.index];
            s.in_flight = s.in_flight.saturating_sub(1);
        }
        self.pool.changed.notify_waiters();
    }
}

/// One builder as `GET /v1/builders` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BuilderView {
    pub id: String,
    pub url: String,
    pub state: &'static str,
    pub in_flight: usize,
    pub max_concurrent: usize,
    pub builds: u64,
    pub failures: u64,
    pub last_error: Option<String>,
}

impl Pool {
    pub fn new(config: &Config) -> Pool {
        let specs = config.builders();
        let states = specs
            .iter()
            .map(|_| State {
                up: true,
                enabled: true,
                in_flight: 0,
                failures_in_row: 0,
                failures: 0,
                last_error: None,
            })
            .collect();
        Pool {
            builders: specs
                .into_iter()
                .map(|spec| Builder {
                    shown_url: crate::redact::url(&spec.url),
                    spec: Arc::new(spec),
                    calls: Default::default(),
                })
                .collect(),
            states: Mutex::new(states),
            pooled: config.pooled(),
            health_interval: config.velox.health_interval,
            changed: Notify::new(),
            turn: AtomicUsize::new(0),
            failovers: AtomicU64::new(0),
        }
    }

    fn states(&self) -> MutexGuard<'_, Vec<State>> {
        // A panic while holding this lock leaves plain numbers behind: still usable.
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn builders(&self) -> &[Builder] {
        &self.builders
    }

    pub fn pooled(&self) -> bool {
        self.pooled
    }

    pub fn health_interval(&self) -> Duration {
        self.health_interval
    }

    /// Whether builder `i` may take a new build whatever its load.
    fn usable(&self, s: &State) -> bool {
        s.enabled && (s.up || !self.pooled)
    }

    /// The builder with the most free capacity among the usable ones outside `exclude`, ties
    /// in turn; `Err(true)` when some are usable but full, `Err(false)` when none is usable.
    fn choose(&self, states: &[State], exclude: &[usize]) -> Result<usize, bool> {
        let n = states.len();
        let start = self.turn.load(Ordering::Relaxed) % n.max(1);
        let mut best: Option<(usize, usize)> = None;
        let mut any_usable = false;
        for k in 0..n {
            let i = (start + k) % n;
            let s = &states[i];
            if exclude.contains(&i) || !self.usable(s) {
                continue;
            }
            any_usable = true;
            let free = self.builders[i]
                .spec
                .max_concurrent
                .saturating_sub(s.in_flight);
            if free > 0 && best.is_none_or(|(_, f)| free > f) {
                best = Some((i, free));
            }
        }
        best.map(|(i, _)| i).ok_or(any_usable)
    }

    /// A place on a builder outside `exclude`, waiting while every usable one is full (until
    /// `deadline`); none at once when no builder outside `exclude` is usable.
    pub async fn lease(
        self: &Arc<Self>,
        exclude: &[usize],
        deadline: Instant,
    ) -> Result<Lease, NoLease> {
        loop {
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            {
                let mut states = self.states();
                match self.choose(&states, exclude) {
                    Ok(i) => {
                        states[i].in_flight += 1;
                        self.turn.store(i + 1, Ordering::Relaxed);
                        return Ok(Lease {
                            pool: Arc::clone(self),
                            index: i,
                        });
                    }
                    Err(false) => return Err(NoLease::NoBuilder),
                    Err(true) => {}
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(NoLease::Timeout);
            }
        }
    }

    /// Whether no builder can take builds now: in a pool, every one is down or draining.
    pub fn none_usable(&self) -> bool {
        let states = self.states();
        !states.iter().any(|s| self.usable(s))
    }

    /// Records what a call or a probe of builder `i` learnt.
    pub fn saw(&self, i: usize, seen: Seen) {
        let mut changed = false;
        {
            let mut states = self.states();
            let Some(s) = states.get_mut(i) else { return };
            match seen {
                Seen::Answered => {
                    s.failures_in_row = 0;
                    if !s.up {
                        log::info!("Velox builder {} is up", self.builders[i].spec.id);
                        s.up = true;
                        changed = true;
                    }
                }
                Seen::Unreachable(why) => {
                    s.failures += 1;
                    s.failures_in_row = s.failures_in_row.saturating_add(1);
                    changed |= self.mark_down(i, s, &why);
                    s.last_error = Some(why);
                }
                Seen::Failing(why) => {
                    s.failures += 1;
                    s.failures_in_row = s.failures_in_row.saturating_add(1);
                    if s.failures_in_row >= DOWN_AFTER {
                        changed |= self.mark_down(i, s, &why);
                    }
                    s.last_error = Some(why);
                }
            }
        }
        if changed {
            self.changed.notify_waiters();
        }
    }

    fn mark_down(&self, i: usize, s: &mut State, why: &str) -> bool {
        if !s.up {
            return false;
        }
        s.up = false;
        log::warn!("Velox builder {} is down: {why}", self.builders[i].spec.id);
        true
    }

    /// Counts a call on builder `i` by how it ended.
    pub fn called(&self, i: usize, status: CallStatus) {
        let at = CallStatus::ALL
            .iter()
            .position(|s| *s == status)
            .unwrap_or(0);
        if let Some(b) = self.builders.get(i) {
            b.calls[at].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a build moved from a builder that failed to another.
    pub fn failed_over(&self) {
        self.failovers.fetch_add(1, Ordering::Relaxed);
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.builders.iter().position(|b| b.spec.id == id)
    }

    /// Takes builder `id` out of the choice; its builds under way finish. `None`: no such id.
    pub fn drain(&self, id: &str) -> Option<BuilderView> {
        let i = self.find(id)?;
        self.states()[i].enabled = false;
        log::info!("Velox builder {id} is draining: it takes no new builds");
        self.changed.notify_waiters();
        self.view().into_iter().nth(i)
    }

    /// Puts builder `id` back into the choice. `None`: no such id.
    pub fn enable(&self, id: &str) -> Option<BuilderView> {
        let i = self.find(id)?;
        self.states()[i].enabled = true;
        log::info!("Velox builder {id} is enabled");
        self.changed.notify_waiters();
        self.view().into_iter().nth(i)
    }

    /// Every builder as `GET /v1/builders` shows it.
    pub fn view(&self) -> Vec<BuilderView> {
        let states = self.states();
        self.builders
            .iter()
            .zip(states.iter())
            .map(|(b, s)| BuilderView {
                id: b.spec.id.clone(),
                url: b.shown_url.clone(),
                state: match (s.enabled, s.up) {
                    (false, _) => "draining",
                    (true, true) => "up",
                    (true, false) => "down",
                },
                in_flight: s.in_flight,
                max_concurrent: b.spec.max_concurrent,
                builds: b.calls[0].load(Ordering::Relaxed),
                failures: s.failures,
                last_error: s.last_error.clone(),
            })
            .collect()
    }

    /// What the metrics show of each builder.
    pub fn gauges(&self) -> (Vec<BuilderGauge>, u64) {
        let states = self.states();
        let gauges = self
            .builders
            .iter()
            .zip(states.iter())
            .map(|(b, s)| BuilderGauge {
                id: b.spec.id.clone(),
                up: s.up,
                active: s.in_flight as u64,
                calls: CallStatus::ALL
                    .iter()
                    .zip(&b.calls)
                    .map(|(st, c)| (st.as_str(), c.load(Ordering::Relaxed)))
                    .collect(),
            })
            .collect();
        (gauges, self.failovers.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ServerEntry, ServerTable};

    fn pool(caps: &[usize]) -> Arc<Pool> {
        let mut c = Config::default();
        c.velox.servers = caps
            .iter()
            .enumerate()
            .map(|(i, cap)| {
                ServerEntry::Table(ServerTable {
                    name: Some(format!("b{i}")),
                    url: format!("http://b{i}:9000"),
                    max_concurrent: Some(*cap),
                    path_map: None,
                    artifact_root: None,
                })
            })
            .collect();
        Arc::new(Pool::new(&c))
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(50)
    }

    #[tokio::test]
    async fn most_free_capacity_first_ties_in_turn() {
        let p = pool(&[1, 3, 1]);
        let a = p.lease(&[], soon()).await.expect("lease");
        assert_eq!(a.index(), 1, "3 free beats 1 free");
        let b = p.lease(&[], soon()).await.expect("lease");
        assert_eq!(b.index(), 1, "2 free still beats 1");
        // Now 1 free everywhere: in turn, from after the last chosen.
        let c = p.lease(&[], soon()).await.expect("lease");
        assert_eq!(c.index(), 2);
        let d = p.lease(&[], soon()).await.expect("lease");
        assert_eq!(d.index(), 0);
        let e = p.lease(&[], soon()).await.expect("lease");
        assert_eq!(e.index(), 1);
        // Full: waits, and times out.
        assert_eq!(p.lease(&[], soon()).await.err(), Some(NoLease::Timeout));
        drop(c);
        assert_eq!(p.lease(&[], soon()).await.expect("freed").index(), 2);
        assert_eq!(p.view()[1].in_flight, 3);
        drop((a, b, d, e));
        assert!(p.view().iter().all(|v| v.in_flight == 0));
    }

    #[tokio::test]
    async fn down_and_draining_builders_take_nothing() {
        let p = pool(&[1, 1]);
        p.saw(0, Seen::Failing("503".into()));
        assert_eq!(p.view()[0].state, "up", "one failure is not enough");
        p.saw(0, Seen::Failing("503".into()));
        assert_eq!(p.view()[0].state, "down");
        assert_eq!(p.view()[0].failures, 2);
        assert_eq!(p.lease(&[], soon()).await.expect("b1").index(), 1);
        p.drain("b1").expect("known");
        assert_eq!(p.view()[1].state, "draining");
        assert_eq!(p.lease(&[], soon()).await.err(), Some(NoLease::NoBuilder));
        assert!(p.none_usable());
        p.saw(0, Seen::Answered);
        assert_eq!(p.view()[0].state, "up", "up after one success");
        assert_eq!(p.lease(&[], soon()).await.expect("b0").index(), 0);
        assert_eq!(p.lease(&[0], soon()).await.err(), Some(NoLease::NoBuilder));
        p.saw(0, Seen::Unreachable("refused".into()));
        assert_eq!(p.view()[0].state, "down", "a failed connection: at once");
        assert_eq!(p.view()[0].last_error.as_deref(), Some("refused"));
        assert!(p.enable("b1").is_some());
        assert!(p.drain("nope").is_none());
    }

    #[tokio::test]
    async fn a_waiting_lease_gets_the_builder_that_comes_back() {
        let p = pool(&[1, 1]);
        p.saw(0, Seen::Unreachable("x".into()));
        let held = p.lease(&[], soon()).await.expect("b1");
        let waiting = {
            let p = Arc::clone(&p);
            tokio::spawn(async move {
                p.lease(&[], Instant::now() + Duration::from_secs(5))
                    .await
                    .map(|l| l.index())
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        p.saw(0, Seen::Answered);
        assert_eq!(waiting.await.expect("task"), Ok(0));
        drop(held);
    }

    #[tokio::test]
    async fn server_url_alone_is_tried_even_when_down() {
        let p = Arc::new(Pool::new(&Config::default()));
        p.saw(0, Seen::Unreachable("refused".into()));
        assert_eq!(p.view()[0].state, "down");
        assert_eq!(p.lease(&[], soon()).await.expect("tried").index(), 0);
    }
}
