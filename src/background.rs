//! Background work of a running server: the start-up pass (reconciliation, then the limits), the
//! access-statistics writer, the periodic limit enforcement, the index's heal and snapshot, and
//! the scrub. One stop signal ends
//! them all; `stop` joins them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::store::{Limits, Store, Throttle};

/// Runs `work` on a thread of its own at a low CPU priority (nice 10) and the lowest best-effort
/// I/O priority, so that the start-up pass yields to requests (BENCHMARKS.md, "The start-up pass
/// against hits": at 2,000 hits/s over a million entries, hit p99 during the pass 0.70 ms instead
/// of 1.42, the pass as fast). Nice 10, not 19: with the cores saturated, nice 19 left the pass
/// 5 % of a core, and the pass re-indexes entries that would otherwise be rebuilt. A thread of
/// its own, not the blocking pool: a thread's priority cannot be raised again without
/// privileges, and the pool's threads also read downloads.
async fn low_priority(
    name: &str,
    work: impl FnOnce() + Send + 'static,
) -> Result<(), tokio::sync::oneshot::error::RecvError> {
    let (done, finished) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_own_priority();
            work();
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        log::error!("cannot start the {name} thread: {e}");
    }
    finished.await
}

/// Lowers the calling thread's CPU priority to nice 10 and its I/O priority to the lowest of
/// the best-effort class (not the idle class, which a busy disk would starve). Best effort: a
/// refusal is logged and the work runs at normal priority.
pub(crate) fn lower_own_priority() {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    let Ok(tid) = libc::id_t::try_from(tid) else {
        return;
    };
    // SAFETY: setpriority with a thread id of this process changes only that thread (Linux).
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 10) } != 0 {
        log::warn!(
            "cannot lower the CPU priority of the start-up pass: {}",
            std::io::Error::last_os_error()
        );
    }
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_BE: libc::c_long = 2;
    // SAFETY: ioprio_set takes three integers and changes only this thread's I/O priority.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            libc::c_long::from(tid),
            (IOPRIO_CLASS_BE << 13) | 7,
        )
    };
    if r != 0 {
        log::warn!(
            "cannot lower the I/O priority of the start-up pass: {}",
            std::io::Error::last_os_error()
        );
    }
}

pub struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<actix_web::rt::task::JoinHandle<()>>,
}

/// Runs `work` on the blocking pool every `every` until stopped.
fn every(
    mut stop: watch::Receiver<bool>,
    every: Duration,
    work: impl Fn() + Send + Sync + 'static,
) -> actix_web::rt::task::JoinHandle<()> {
    let work = Arc::new(work);
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let work = Arc::clone(&work);
            if let Err(e) = actix_web::rt::task::spawn_blocking(move || work()).await {
                log::error!("background work failed: {e}");
            }
        }
    })
}

/// Flushes and deletes the files of evicted entries whenever the store queues some (docs/storage.md,
/// "Limits and eviction"): enforcements, from the moment this listens, only take victims out of
/// the index. A failed flush leaves them queued; the one-second tick tries again.
fn reap_evictions(
    store: Arc<Store>,
    mut stop: watch::Receiver<bool>,
) -> actix_web::rt::task::JoinHandle<()> {
    let wake = Arc::new(tokio::sync::Notify::new());
    let w = Arc::clone(&wake);
    store.on_evictions(move || w.notify_one());
    actix_web::rt::spawn(async move {
        loop {
            tokio::select! {
                _ = wake.notified() => {}
                _ = stop.changed() => return,
            }
            let s = Arc::clone(&store);
            // Errors are logged where they happen (the store).
            if let Err(e) = actix_web::rt::task::spawn_blocking(move || s.reap_evictions()).await {
                log::error!("deleting evicted files failed: {e}");
            }
        }
    })
}

/// Enforces the limits now and counts what was evicted. Returns how many entries went.
pub fn cleanup(store: &Store, limits: &Limits, metrics: &Metrics) -> usize {
    match store.enforce(limits, None) {
        Ok(evicted) => {
            for (key, reason) in &evicted {
                log::info!("evicted {key} ({})", reason.as_str());
                metrics.evicted(*reason);
            }
            evicted.len()
        }
        Err(e) => {
            log::error!("cache cleanup failed: {e}");
            0
        }
    }
}

impl Background {
    pub fn start(
        store: Arc<Store>,
        limits: Limits,
        access_every: Duration,
        cleanup_every: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (stop, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let (s, m) = (Arc::clone(&store), Arc::clone(&metrics));
        let s2 = Arc::clone(&store);
        tasks.push(actix_web::rt::spawn(async move {
            let pass = move || {
                match s.reconcile() {
                    Ok(report) => log::info!("start-up reconciliation: {report:?}"),
                    Err(e) => log::error!("start-up reconciliation failed: {e}"),
                }
                // A crash between an insert and its eviction (or lower limits than the last run
                // had) must not leave the cache over its limits until the first cleanup_interval.
                let evicted = cleanup(&s, &limits, &m);
                log::info!("start-up pass: the limits evicted {evicted} entries");
            };
            if low_priority("velox-start-up", pass).await.is_err() {
                log::error!("the start-up pass did not run to its end");
            }
            // After a failure too: what waits on it must not wait for ever.
            s2.start_up_pass_done();
        }));
        tasks.push(reap_evictions(Arc::clone(&store), rx.clone()));
        // Each a no-op (atomic loads, an empty queue) unless sled refused a write (docs/storage.md,
        // "Disk full"), the writes since the last snapshot call for one ("Snapshots while
        // running"), or evicted files wait for a flush that failed ("Limits and eviction").
        let s = Arc::clone(&store);
        tasks.push(every(rx.clone(), Duration::from_secs(1), move || {
            s.heal_index();
            s.snapshot_if_due();
            let _ = s.reap_evictions();
        }));
        if !access_every.is_zero() {
            let s = Arc::clone(&store);
            tasks.push(every(rx.clone(), access_every, move || {
                if let Err(e) = s.write_pending_hits() {
                    log::error!("cannot write access statistics: {e}");
                }
            }));
        }
        if !cleanup_every.is_zero() {
            tasks.push(every(rx, cleanup_every, move || {
                cleanup(&store, &limits, &metrics);
            }));
        }
        Background { stop, tasks }
    }

    /// Starts the scrub (docs/storage.md, "Integrity at rest"): a pass over every blob each
    /// `interval` (none when 0), reading at most `rate_mb` MB/s on one blocking-pool thread. A stop
    /// ends a pass within 50 ms; the next start goes on where it was.
    pub fn start_scrub(&mut self, store: Arc<Store>, interval: Duration, rate_mb: f64) {
        if interval.is_zero() {
            return;
        }
        let mut stop = self.stop.subscribe();
        self.tasks.push(actix_web::rt::spawn(async move {
            // After a failed pass, a pause before the next try instead of a loop of failures.
            let mut failed = false;
            loop {
                let s = Arc::clone(&store);
                let mut wait =
                    match actix_web::rt::task::spawn_blocking(move || s.scrub_wait(interval)).await
                    {
                        Ok(Ok(wait)) => wait,
                        Ok(Err(e)) => {
                            log::error!("scrub: cannot read when the last pass ran: {e}");
                            interval
                        }
                        Err(e) => {
                            log::error!("scrub: {e}");
                            interval
                        }
                    };
                if std::mem::take(&mut failed) {
                    wait = wait.max(interval.min(Duration::from_secs(60)));
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
                let s = Arc::clone(&store);
                let flag = stop.clone();
                let started = std::time::Instant::now();
                log::info!("scrub: pass started, reading at most {rate_mb} MB/s");
                let pass = actix_web::rt::task::spawn_blocking(move || {
                    let stopped = || *flag.borrow();
                    let mut throttle = Throttle::new(rate_mb * 1e6, &stopped);
                    s.scrub(&mut throttle)
                })
                .await;
                match pass {
                    Ok(Ok(r)) => log::info!(
                        "scrub: pass {} after {:.1}s: {} blobs ({} bytes) checked, {} damaged",
                        if r.stopped { "stopped" } else { "finished" },
                        started.elapsed().as_secs_f64(),
                        r.checked,
                        r.bytes,
                        r.corrupt
                    ),
                    Ok(Err(e)) => {
                        log::error!("scrub: the pass failed: {e}");
                        failed = true;
                    }
                    Err(e) => {
                        log::error!("scrub: the pass did not run: {e}");
                        failed = true;
                    }
                }
                if *stop.borrow() {
                    return;
                }
            }
        }));
    }

    /// Stops every loop and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pass_thread_runs_at_nice_10_and_others_keep_theirs() {
        let nice_of_this_thread = || {
            // SAFETY: gettid and getpriority have no preconditions.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
            unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) }
        };
        let before = nice_of_this_thread();
        let lowered = std::thread::spawn(move || {
            super::lower_own_priority();
            nice_of_this_thread()
        })
        .join()
        .expect("thread");
        assert_eq!(lowered, 10.max(before));
        assert_eq!(nice_of_this_thread(), before, "only the pass's own thread");
    }
}
