//! The helper every test uses to run a process (`tests/support/process.rs`): what it reports
//! when a process does not come up, that it kills what it started (a whole group when asked),
//! and that a child dies with the thread that started it even when no drop runs.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::process::{NotReady, Spawn};

fn sh(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script);
    cmd
}

/// Whether `pid` is gone or a zombie (dead, not yet reaped by whoever is its parent now).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

fn dies_within(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if dead(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Polls until `path` holds a pid.
fn read_pid(path: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_process_that_exits_before_it_is_ready_is_reported_with_its_log() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut p = Spawn::new(
        "failing",
        sh("echo 'bad config' >&2; exit 3"),
        &tmp.path().join("log"),
    )
    .start()
    .expect("sh runs");
    match p.wait_for(Duration::from_secs(20), |_| None::<()>) {
        Err(NotReady::Exited(status)) => assert_eq!(status.code(), Some(3)),
        other => panic!("{other:?}"),
    }
    assert!(p.log_text().contains("bad config"), "{}", p.log_text());
    assert!(p.named_log().starts_with("--- failing log ---\n"));
    // expect_ready panics with the name, what happened and the log.
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        p.expect_ready(Duration::from_secs(1), |_| None::<()>)
    }))
    .expect_err("a process that exited is never ready");
    let message = panicked
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.starts_with("failing exited"), "{message}");
    assert!(message.contains("bad config"), "{message}");
}

#[test]
fn a_process_not_ready_by_the_deadline_times_out_and_dies_on_drop() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut p = Spawn::new("sleeper", sh("exec sleep 60"), &tmp.path().join("log"))
        .start()
        .expect("sh runs");
    let within = Duration::from_millis(200);
    match p.wait_for(within, |_| None::<()>) {
        Err(NotReady::TimedOut(t)) => assert_eq!(t, within),
        other => panic!("{other:?}"),
    }
    let pid = p.pid();
    assert!(!dead(pid));
    drop(p);
    assert!(dead(pid), "the process outlived its drop");
}

#[test]
fn what_a_process_prints_on_stdout_is_read_line_by_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = tmp.path().join("log");
    let mut p = Spawn::new(
        "talker",
        sh("echo starting >&2; echo 'listening on 1234'; exec sleep 60"),
        &log,
    )
    .stdout_lines()
    .start()
    .expect("sh runs");
    let port = p.expect_ready(Duration::from_secs(20), |p| {
        p.line()
            .and_then(|l| l.strip_prefix("listening on ").map(str::to_owned))
    });
    assert_eq!(port, "1234");
    // Stdout went to the test, stderr to the log.
    assert_eq!(p.log_text(), "starting\n");
}

#[test]
fn a_group_is_killed_whole() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pid_file = tmp.path().join("worker.pid");
    // A master that forks a worker and waits, as nginx and `php -S` with workers do.
    let script = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
    let p = Spawn::new("master", sh(&script), &tmp.path().join("log"))
        .group()
        .start()
        .expect("sh runs");
    let worker = read_pid(&pid_file);
    assert!(!dead(worker));
    drop(p);
    assert!(
        dies_within(worker, Duration::from_secs(10)),
        "the worker outlived its master's drop"
    );
}

#[test]
fn a_child_dies_with_the_thread_that_started_it_even_without_a_drop() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = tmp.path().join("log");
    let pid = std::thread::spawn(move || {
        let p = Spawn::new("orphan", sh("exec sleep 60"), &log)
            .start()
            .expect("sh runs");
        let pid = p.pid();
        // As if the test process were killed outright: no drop runs.
        std::mem::forget(p);
        pid
    })
    .join()
    .expect("thread");
    assert!(
        dies_within(pid, Duration::from_secs(10)),
        "the child outlived the thread that started it"
    );
}
