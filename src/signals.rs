//! The signals `velox-cache serve` answers (docs/operations.md): SIGTERM and SIGINT stop it
//! gracefully, SIGHUP reopens the audit log.
//!
//! All three are watched from the first line of `serve`, before the index is opened and before
//! any listener binds. A signal that arrives while the server starts (a pod deleted during a
//! long start-up pass, logrotate's SIGHUP at a bad moment) is then held by the runtime and acted
//! on once the server runs, instead of meeting the signal's default action, which ends the
//! process without a drain or a flush. Watching them only from a task spawned beside the
//! listeners left a window after the listeners were up in which a SIGTERM killed the server.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGTERM and SIGINT, watched.
pub struct Stop {
    term: Option<Signal>,
    int: Option<Signal>,
}

/// SIGHUP, watched.
pub struct Hangup(Option<Signal>);

/// Starts watching; to be called inside the runtime, before anything else of the start.
pub fn watch() -> (Stop, Hangup) {
    let watched = |kind: SignalKind, name: &str| match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            log::error!("cannot watch {name}: {e}");
            None
        }
    };
    (
        Stop {
            term: watched(SignalKind::terminate(), "SIGTERM"),
            int: watched(SignalKind::interrupt(), "SIGINT"),
        },
        Hangup(watched(SignalKind::hangup(), "SIGHUP")),
    )
}

/// Waits for `signal`, for ever when it is not watched.
async fn received(signal: &mut Option<Signal>) {
    match signal {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

impl Stop {
    /// Resolves at the first SIGTERM or SIGINT, including one received before this was called.
    pub async fn received(mut self) {
        tokio::select! {
            () = received(&mut self.term) => {}
            () = received(&mut self.int) => {}
        }
    }
}

impl Hangup {
    /// Calls `f` on every SIGHUP, for ever.
    pub async fn each(mut self, f: impl Fn()) {
        if self.0.is_none() {
            log::error!("SIGHUP is not watched: the audit log is never reopened");
            return;
        }
        loop {
            received(&mut self.0).await;
            f();
        }
    }
}
