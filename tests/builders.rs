//! The pool of Velox builders (docs/builders.md), against several stand-in Velox processes (one
//! process per builder, so that one can die with SIGKILL while the others build): builds spread
//! by free capacity and queue when all are full; a builder killed mid-build is failed over and
//! the client gets its binary, its place given back and one taken on the next builder, once; a
//! drained builder takes nothing new and finishes what it has; every builder down is a 503
//! `velox_unavailable` at once, and a builder that comes back takes builds again; an answer that
//! is not Velox's takes a builder down; `internal` and `invalid_argument` never move;
//! `already_exists` is waited out on the builder that said it; and configuration errors stop the start naming the key. `GET /v1/builders` and the per-builder
//! metrics are checked at each step.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::process::{daemon, free_port};
use support::server::run;
use support::velox_process::{serve_if_asked, StandIn, VeloxProcess};
use support::*;
use tempfile::TempDir;

/// The test this binary runs in a stand-in child process (see `support/velox_process.rs`).
const ENTRY: &str = "a_stand_in_velox_is_a_process_of_its_own";

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn a_stand_in_velox_is_a_process_of_its_own() {
    // In a stand-in child this serves until killed.
    serve_if_asked();
    let tmp = tempfile::tempdir().expect("tmp");
    let v = VeloxProcess::start(ENTRY, tmp.path(), "solo", StandIn::default());
    assert_ne!(v.pid(), std::process::id() as i32);
    // It answers as Velox does: a request without `request_id` is refused by its validation.
    let resp = actix_web::rt::System::new().block_on(post_json(
        &format!("{}/api.service.v1.BuildService/Build", v.url),
        &json!({}),
        &[],
    ));
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["code"], "invalid_argument");
    let state = v.state();
    assert_eq!((state.calls, state.builds), (1, 0));
}

/// A request of its own key and `request_id`.
fn request(n: usize) -> (Value, String) {
    let mut v = distinct_request(n);
    let id = format!("00000000-0000-4000-8000-{n:012}");
    v["request_id"] = json!(id);
    (v, id)
}

/// A pool of builders behind one velox-cache.
struct Pool {
    /// Kept for the stand-ins' folders and the server's data dir.
    _tmp: TempDir,
    /// `Authorization` for the build route and the admin routes, when `api_token` is set.
    bearer: Option<String>,
    stand_ins: Vec<VeloxProcess>,
    server: Server,
}

/// One builder of the pool's configuration: its name, URL and `max_concurrent`.
struct Entry<'a>(&'a str, &'a str, usize);

fn config(root: &Path, entries: &[Entry], health: &str) -> PathBuf {
    let mut text = format!("[velox]\nhealth_interval = \"{health}\"\n");
    for Entry(name, url, max) in entries {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("artifact dir");
        text.push_str(&format!(
            "[[velox.servers]]\nname = \"{name}\"\nurl = \"{url}\"\nmax_concurrent = {max}\nartifact_root = \"{}\"\n",
            dir.display()
        ));
    }
    let file = root.join("velox-cache.toml");
    std::fs::write(&file, text).expect("config file");
    file
}

impl Pool {
    /// Stand-ins named and sized by `builders` (with `settings`), plus `extra` builders given as
    /// (name, url) (never stand-ins), probed every `health`.
    fn start(
        builders: &[(&str, usize)],
        settings: StandIn,
        extra: &[(&str, &str)],
        health: &str,
    ) -> Pool {
        Self::start_with_token(builders, settings, extra, health, None)
    }

    /// As [`Pool::start`], with `api_token` set to `token`: the pool's requests send it.
    fn start_with_token(
        builders: &[(&str, usize)],
        settings: StandIn,
        extra: &[(&str, &str)],
        health: &str,
        token: Option<&str>,
    ) -> Pool {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("velox");
        let stand_ins: Vec<VeloxProcess> = builders
            .iter()
            .map(|(name, _)| VeloxProcess::start(ENTRY, &root, name, settings.clone()))
            .collect();
        let mut entries: Vec<Entry> = extra.iter().map(|(n, u)| Entry(n, u, 1)).collect();
        entries.extend(
            builders
                .iter()
                .zip(&stand_ins)
                .map(|((name, max), v)| Entry(name, &v.url, *max)),
        );
        let file = config(&root, &entries, health);
        let mut opts = Options::new(&tmp.path().join("data"), "", &root)
            .arg(format!("--config={}", file.display()));
        if let Some(token) = token {
            opts = opts.env("VELOX_CACHE_API_TOKEN", token);
        }
        let server = Server::start(&opts);
        Pool {
            _tmp: tmp,
            stand_ins,
            server,
            bearer: token.map(|t| format!("Bearer {t}")),
        }
    }

    fn stand_in(&self, name: &str) -> &VeloxProcess {
        self.stand_ins
            .iter()
            .find(|v| v.name == name)
            .expect("a stand-in of that name")
    }

    fn stand_in_mut(&mut self, name: &str) -> &mut VeloxProcess {
        self.stand_ins
            .iter_mut()
            .find(|v| v.name == name)
            .expect("a stand-in of that name")
    }

    /// Posts `body` to the build route on a task of its own.
    fn spawn_post(&self, body: Value) -> actix_web::rt::task::JoinHandle<Resp> {
        let url = self.server.builds_url();
        let bearer = self.bearer.clone();
        actix_web::rt::spawn(async move {
            let auth: Vec<(&str, &str)> = bearer
                .iter()
                .map(|b| ("authorization", b.as_str()))
                .collect();
            post_json(&url, &body, &auth).await
        })
    }

    async fn post(&self, body: &Value) -> Resp {
        post_json(&self.server.builds_url(), body, &self.auth()).await
    }

    /// `GET /v1/builders`.
    async fn builders(&self) -> Vec<Value> {
        let resp = get(&self.server.admin_url("/v1/builders"), &[]).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("cache-control"), Some("no-store"));
        resp.json().as_array().cloned().expect("a list of builders")
    }

    async fn builder(&self, id: &str) -> Value {
        self.builders()
            .await
            .into_iter()
            .find(|b| b["id"] == id)
            .unwrap_or_else(|| panic!("no builder {id}"))
    }

    /// Each builder's (id, state, in_flight).
    async fn states(&self) -> Vec<(String, String, u64)> {
        self.builders()
            .await
            .iter()
            .map(|b| {
                (
                    b["id"].as_str().expect("id").to_owned(),
                    b["state"].as_str().expect("state").to_owned(),
                    b["in_flight"].as_u64().expect("in_flight"),
                )
            })
            .collect()
    }

    /// Waits until `GET /v1/builders` shows `want` as (id, state, in_flight).
    async fn expect_states(&self, want: &[(&str, &str, u64)]) {
        let want: Vec<(String, String, u64)> = want
            .iter()
            .map(|(i, s, n)| (i.to_string(), s.to_string(), *n))
            .collect();
        let reached = eventually(WAIT, async || self.states().await == want).await;
        assert!(
            reached,
            "builders: {:?}, wanted {want:?}\n{}",
            self.states().await,
            self.server.log_text()
        );
    }

    /// Drains or enables builder `id`, returning the builder as the route shows it.
    async fn admin(&self, id: &str, action: &str) -> Value {
        let url = self
            .server
            .admin_url(&format!("/v1/builders/{id}/{action}"));
        let resp = post_json(&url, &json!({}), &self.auth()).await;
        assert_eq!(resp.status, 200, "{action} {id}: {:?}", resp.body);
        resp.json()
    }

    fn auth(&self) -> Vec<(&str, &str)> {
        self.bearer
            .iter()
            .map(|b| ("authorization", b.as_str()))
            .collect()
    }

    async fn metric(&self, series: &str) -> f64 {
        metric(&self.server, series).await
    }
}

async fn finish_post(url: &str) -> Resp {
    post_raw(url, Vec::new()).await
}

/// A 200 with a binary, whose digest is `ETag`'s and one of `builder`'s files.
fn assert_built_by(resp: &Resp, builder: &VeloxProcess) {
    assert_eq!(
        resp.status,
        200,
        "{}",
        String::from_utf8_lossy(&resp.body[..resp.body.len().min(500)])
    );
    let digest = sha256_hex(&resp.body);
    assert_eq!(resp.header("etag"), Some(format!("\"{digest}\"").as_str()));
    assert!(
        builder.digests().contains(&digest),
        "the binary is not one that {} built",
        builder.name
    );
}

#[actix_web::test]
async fn builds_spread_by_free_capacity_queue_when_full_and_fail_over_a_killed_builder() {
    let mut pool = Pool::start(&[("a", 3), ("b", 1)], StandIn::default(), &[], "200ms");
    pool.expect_states(&[("a", "up", 0), ("b", "up", 0)]).await;
    let all_zero = [
        "velox_builder_up{builder=\"a\"}",
        "velox_builder_builds_active{builder=\"a\"}",
        "velox_builder_builds_total{builder=\"b\",status=\"success\"}",
        "velox_builder_builds_total{builder=\"b\",status=\"unavailable\"}",
        "velox_builder_failovers_total",
    ];
    for (series, want) in all_zero.iter().zip([1.0, 0.0, 0.0, 0.0, 0.0]) {
        assert_eq!(pool.metric(series).await, want, "{series}");
    }

    // Every build held where it lands: the most free capacity first, ties in turn.
    pool.stand_in("a").hold(true);
    pool.stand_in("b").hold(true);
    let mut clients = Vec::new();
    let mut placed = Vec::new();
    for n in 0..4 {
        let (body, id) = request(n);
        clients.push((pool.spawn_post(body), id.clone()));
        // The stand-in that has it, once the call is there (the place is taken just before).
        let arrived = eventually(WAIT, async || {
            let on_a = pool.stand_in("a").state().calls_with(&id);
            let on_b = pool.stand_in("b").state().calls_with(&id);
            on_a + on_b > 0
        })
        .await;
        assert!(arrived, "build {n} never reached a builder");
        let on_a = pool.stand_in("a").state().calls_with(&id);
        let on_b = pool.stand_in("b").state().calls_with(&id);
        assert_eq!(on_a + on_b, 1, "build {n}: a {on_a}, b {on_b}");
        let in_flight: u64 = pool.states().await.iter().map(|s| s.2).sum();
        assert_eq!(in_flight, n as u64 + 1);
        placed.push(if on_a == 1 { "a" } else { "b" });
    }
    // a: 3 free beats 1, then 2 beats 1; 1 and 1 tie and b's turn comes; then a alone is free.
    assert_eq!(placed, ["a", "a", "b", "a"]);
    pool.expect_states(&[("a", "up", 3), ("b", "up", 1)]).await;
    assert_eq!(pool.stand_in("a").state().in_progress, 3);
    assert_eq!(pool.stand_in("b").state().in_progress, 1);
    assert_eq!(
        pool.metric("velox_builder_builds_active{builder=\"a\"}")
            .await,
        3.0
    );

    // Every builder full: the fifth build waits for a place, and takes the first one freed.
    let (fifth, fifth_id) = request(4);
    let fifth = pool.spawn_post(fifth);
    let queued = eventually(WAIT, async || {
        metric(&pool.server, "velox_builds_queued").await == 1.0
    })
    .await;
    assert!(queued, "the fifth build is not queued");
    pool.expect_states(&[("a", "up", 3), ("b", "up", 1)]).await;
    pool.stand_in("b").hold(false);
    let resp = fifth.await.expect("task");
    assert_built_by(&resp, pool.stand_in("b"));
    assert_eq!(pool.stand_in("b").state().calls_with(&fifth_id), 1);
    pool.stand_in("a").hold(false);
    for ((client, id), on) in clients.into_iter().zip(placed) {
        let resp = client.await.expect("task");
        assert_built_by(&resp, pool.stand_in(on));
        assert_eq!(resp.header("x-build-request-id"), Some(id.as_str()));
    }
    pool.expect_states(&[("a", "up", 0), ("b", "up", 0)]).await;
    assert_eq!(pool.builder("a").await["builds"], 3);
    assert_eq!(pool.builder("b").await["builds"], 2);
    assert_eq!(
        pool.metric("velox_builder_builds_total{builder=\"b\",status=\"success\"}")
            .await,
        2.0
    );

    // Killed mid-build while b is full: the build gives its place on a back at once, waits for
    // b, and takes one place there.
    pool.stand_in("a").hold(true);
    pool.stand_in("b").hold(true);
    pool.admin("a", "drain").await;
    let (other, other_id) = request(5);
    let other = pool.spawn_post(other);
    pool.expect_states(&[("a", "draining", 0), ("b", "up", 1)])
        .await;
    pool.admin("a", "enable").await;
    let (moved, moved_id) = request(6);
    let moved = pool.spawn_post(moved);
    pool.expect_states(&[("a", "up", 1), ("b", "up", 1)]).await;
    let building = eventually(WAIT, async || pool.stand_in("a").state().in_progress == 1).await;
    assert!(building, "a never started the build");
    assert_eq!(pool.stand_in("a").state().calls_with(&moved_id), 1);
    pool.stand_in_mut("a").kill();
    pool.expect_states(&[("a", "down", 0), ("b", "up", 1)])
        .await;
    let a = pool.builder("a").await;
    assert!(
        a["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{a}"
    );
    assert!(a["failures"].as_u64().is_some_and(|n| n >= 1), "{a}");
    assert_eq!(pool.metric("velox_builder_up{builder=\"a\"}").await, 0.0);
    assert_eq!(
        pool.metric("velox_builder_builds_active{builder=\"a\"}")
            .await,
        0.0
    );
    // Counted when it moves, which it has not yet: b is full.
    assert_eq!(pool.metric("velox_builder_failovers_total").await, 0.0);
    let b = pool.stand_in("b").state();
    assert_eq!((b.calls_with(&other_id), b.calls_with(&moved_id)), (1, 0));
    assert_eq!(b.in_progress, 1);
    // b finishes its own build and takes the moved one.
    pool.stand_in("b").hold(false);
    assert_built_by(&other.await.expect("task"), pool.stand_in("b"));
    let resp = moved.await.expect("task");
    assert_built_by(&resp, pool.stand_in("b"));
    assert_eq!(resp.header("x-build-request-id"), Some(moved_id.as_str()));
    assert_eq!(pool.stand_in("b").state().calls_with(&moved_id), 1);
    pool.expect_states(&[("a", "down", 0), ("b", "up", 0)])
        .await;
    assert_eq!(pool.metric("velox_builder_failovers_total").await, 1.0);
    assert_eq!(
        pool.metric("velox_builder_builds_total{builder=\"a\",status=\"unavailable\"}")
            .await,
        1.0
    );
    assert_eq!(pool.builder("b").await["builds"], 4);
    // While a is down, builds go to b without trying a.
    let (seventh, _) = request(7);
    assert_built_by(&pool.post(&seventh).await, pool.stand_in("b"));
    assert_eq!(pool.metric("velox_builder_failovers_total").await, 1.0);
}

#[actix_web::test]
async fn a_drained_builder_finishes_what_it_has_and_no_builder_is_a_503_until_one_is_back() {
    let mut pool = Pool::start(&[("a", 1), ("b", 1)], StandIn::default(), &[], "200ms");
    pool.expect_states(&[("a", "up", 0), ("b", "up", 0)]).await;

    // A build under way on a; a is drained: it keeps that build and takes no other.
    pool.stand_in("a").hold(true);
    let (x, x_id) = request(10);
    let x = pool.spawn_post(x);
    pool.expect_states(&[("a", "up", 1), ("b", "up", 0)]).await;
    let drained = pool.admin("a", "drain").await;
    assert_eq!(
        (drained["id"].as_str(), drained["state"].as_str()),
        (Some("a"), Some("draining"))
    );
    assert_eq!(drained["in_flight"], 1);
    for n in [11, 12] {
        let (body, _) = request(n);
        assert_built_by(&pool.post(&body).await, pool.stand_in("b"));
    }
    pool.expect_states(&[("a", "draining", 1), ("b", "up", 0)])
        .await;
    assert_eq!(
        pool.stand_in("a").state().request_ids,
        std::slice::from_ref(&x_id)
    );
    pool.stand_in("a").hold(false);
    assert_built_by(&x.await.expect("task"), pool.stand_in("a"));
    pool.expect_states(&[("a", "draining", 0), ("b", "up", 0)])
        .await;

    // Enabled again, a takes builds (b drained, so that nothing else could take it).
    assert_eq!(pool.admin("a", "enable").await["state"], "up");
    assert_eq!(pool.admin("b", "drain").await["state"], "draining");
    let (w, w_id) = request(13);
    assert_built_by(&pool.post(&w).await, pool.stand_in("a"));
    assert_eq!(pool.stand_in("a").state().calls_with(&w_id), 1);

    // Every builder draining: refused at once, without a call.
    pool.admin("a", "drain").await;
    let calls =
        pool.stand_in("a").state().request_ids.len() + pool.stand_in("b").state().request_ids.len();
    let (v, _) = request(14);
    let resp = pool.post(&v).await;
    resp.assert_error(503, "velox_unavailable");
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert_eq!(
        pool.stand_in("a").state().request_ids.len() + pool.stand_in("b").state().request_ids.len(),
        calls
    );
    assert_eq!(pool.admin("a", "enable").await["state"], "up");
    assert_eq!(pool.admin("b", "enable").await["state"], "up");
    let unknown = finish_post(&pool.server.admin_url("/v1/builders/c/drain")).await;
    unknown.assert_error(404, "not_found");

    // Every builder down: a 503 at once with Retry-After, and again for the next request.
    pool.stand_in_mut("a").kill();
    pool.stand_in_mut("b").kill();
    for n in [15, 16] {
        let (body, _) = request(n);
        let resp = pool.post(&body).await;
        let err = resp.assert_error(503, "velox_unavailable");
        assert_eq!(resp.header("retry-after"), Some("1"), "{err}");
    }
    pool.expect_states(&[("a", "down", 0), ("b", "down", 0)])
        .await;
    assert_eq!(pool.metric("velox_builder_up{builder=\"b\"}").await, 0.0);

    // One comes back on its address: the next probe finds it, and it builds.
    pool.stand_in_mut("b").restart();
    pool.expect_states(&[("a", "down", 0), ("b", "up", 0)])
        .await;
    assert_eq!(pool.metric("velox_builder_up{builder=\"b\"}").await, 1.0);
    let (t, _) = request(17);
    assert_built_by(&pool.post(&t).await, pool.stand_in("b"));
}

#[actix_web::test]
async fn garbage_takes_a_builder_down_and_failures_of_the_build_never_move() {
    let refused = "00000000-0000-4000-8000-00000000dead".to_string();
    let settings = StandIn {
        refuse_request_id: Some(refused.clone()),
        ..StandIn::default()
    };
    // Something that is not Velox: Python's file server, which answers POST with an HTML 501.
    let junk_dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        &port.to_string(),
    ])
    .current_dir(junk_dir.path());
    let _junk = daemon(
        "python3 -m http.server",
        cmd,
        &junk_dir.path().join("http.log"),
        port,
    );
    let junk_url = format!("http://127.0.0.1:{port}");
    let pool = Pool::start_with_token(
        &[("a", 1), ("b", 1)],
        settings,
        &[("junk", &junk_url)],
        "1h",
        Some("builders-admin-token"),
    );
    // With api_token set, drain and enable need it; the list is readable.
    let drain = pool.server.admin_url("/v1/builders/a/drain");
    finish_post(&drain).await.assert_error(401, "unauthorized");
    let wrong = post_json(&drain, &json!({}), &[("authorization", "Bearer nope")]).await;
    assert!(matches!(wrong.status, 401 | 403), "{wrong:?}");
    assert_eq!(pool.builder("a").await["state"], "up");
    assert_eq!(pool.admin("a", "drain").await["state"], "draining");
    assert_eq!(pool.admin("a", "enable").await["state"], "up");
    pool.expect_states(&[("junk", "down", 0), ("a", "up", 0), ("b", "up", 0)])
        .await;
    let junk = pool.builder("junk").await;
    assert!(
        junk["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not Velox's")),
        "{junk}"
    );
    assert_eq!(pool.metric("velox_builder_up{builder=\"junk\"}").await, 0.0);

    let calls = |id: &str| {
        pool.stand_in("a").state().calls_with(id) + pool.stand_in("b").state().calls_with(id)
    };
    // The compiler failed (`internal`): the client gets Velox's message, nothing moves.
    let (mut windows, windows_id) = request(20);
    windows["target_platform"] = json!({"os": "windows", "arch": "amd64"});
    let err = pool.post(&windows).await.assert_error(502, "build_failed");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("Windows")),
        "{err}"
    );
    assert_eq!(calls(&windows_id), 1);
    // Velox refused the request (`invalid_argument`): a 400, nothing moves.
    let (mut bad, _) = request(21);
    bad["request_id"] = json!(refused);
    let err = pool.post(&bad).await.assert_error(400, "invalid_request");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("refused")),
        "{err}"
    );
    assert_eq!(calls(&refused), 1);
    assert_eq!(pool.metric("velox_builder_failovers_total").await, 0.0);
    let errors = pool
        .metric("velox_builder_builds_total{builder=\"a\",status=\"error\"}")
        .await
        + pool
            .metric("velox_builder_builds_total{builder=\"b\",status=\"error\"}")
            .await;
    assert_eq!(errors, 2.0);
    // Builds go to the builders that answer as Velox does.
    let (ok, ok_id) = request(22);
    let resp = pool.post(&ok).await;
    assert_eq!(resp.status, 200);
    assert_eq!(calls(&ok_id), 1);
    assert_eq!(pool.builder("junk").await["builds"], 0);
    pool.expect_states(&[("junk", "down", 0), ("a", "up", 0), ("b", "up", 0)])
        .await;
}

/// A configuration file holding `text`; the temp dir that keeps it, and its path.
fn config_file(text: &str) -> (TempDir, String) {
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("c.toml");
    std::fs::write(&file, text).expect("write");
    let f = file.to_str().expect("utf-8").to_owned();
    (tmp, f)
}

/// Runs `velox-cache config` on `text`, expecting exit 2 with `key` named.
fn refused(text: &str, key: &str) -> String {
    let (_tmp, f) = config_file(text);
    let (code, _, err) = run(&["config", "--config", &f], &[]);
    assert_eq!(code, 2, "{text}\n{err}");
    assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
    assert!(err.contains(&format!("(from {f})")), "{err}");
    err
}

#[test]
fn bad_builders_stop_the_start_with_exit_2_naming_the_key() {
    let err = refused(
        "[[velox.servers]]\nurl = \"velox-1:9000\"\n",
        "velox.servers[0].url",
    );
    assert!(err.contains("http:// or https://"), "{err}");
    refused(
        "[velox]\nservers = [\"http://a:9000\", \"velox-2:9000\"]\n",
        "velox.servers[1]",
    );
    let err = refused(
        "[[velox.servers]]\nname = \"x\"\nurl = \"http://a:9000\"\n[[velox.servers]]\nname = \"x\"\nurl = \"http://b:9000\"\n",
        "velox.servers[1].name",
    );
    assert!(err.contains("`x`"), "{err}");
    refused(
        "[[velox.servers]]\nurl = \"http://a:9000\"\nmax_concurrent = 0\n",
        "velox.servers[0].max_concurrent",
    );
    // Both server_url and velox.servers, from one file or from two sources.
    let err = refused(
        "server_url = \"http://a:9000\"\n[velox]\nservers = [\"http://b:9000\"]\n",
        "server_url",
    );
    assert!(err.contains("`velox.servers`"), "{err}");
    let (_tmp, f) = config_file("[velox]\nservers = [\"http://b:9000\"]\n");
    let (code, _, err) = run(
        &["config", "--config", &f, "--server-url", "http://a:9000"],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("`server_url` (from the command line: --server-url)")
            && err.contains("`velox.servers`"),
        "{err}"
    );
    // The environment's form, a comma-separated list.
    let (code, _, err) = run(
        &["config"],
        &[("VELOX_CACHE_VELOX__SERVERS", "http://a:9000,velox-2:9000")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`velox.servers[1]`"), "{err}");
    // A good pool is shown, URLs with their passwords masked.
    let (_tmp, f) = config_file(
        "[[velox.servers]]\nname = \"one\"\nurl = \"http://u:secret@a:9000\"\nmax_concurrent = 2\n",
    );
    let (code, out, err) = run(&["config", "--config", &f], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("one") && !out.contains("secret"), "{out}");

    // An artifact_root that does not exist stops `serve` (only: `config` shows it).
    let tmp = tempfile::tempdir().expect("tmp");
    let missing = tmp.path().join("no-such-folder");
    let text = format!(
        "[[velox.servers]]\nurl = \"http://a:9000\"\nartifact_root = \"{}\"\n",
        missing.display()
    );
    let (_keep, f) = config_file(&text);
    let data = tmp.path().join("data");
    let (code, _, err) = run(
        &[
            "serve",
            "--config",
            &f,
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--artifact-root",
            tmp.path().to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`velox.servers[0].artifact_root`"), "{err}");
    assert!(!data.exists(), "the start went on");
}

#[actix_web::test]
async fn already_exists_is_waited_out_on_the_builder_that_said_it() {
    let pool = Pool::start(&[("a", 1), ("b", 1)], StandIn::default(), &[], "1h");
    pool.expect_states(&[("a", "up", 0), ("b", "up", 0)]).await;
    // Someone else (another replica) has a build the same key under way on a.
    pool.stand_in("a").hold(true);
    let (theirs, _) = request(30);
    let a_url = format!(
        "{}/api.service.v1.BuildService/Build",
        pool.stand_in("a").url
    );
    let elsewhere = actix_web::rt::spawn(async move { post_json(&a_url, &theirs, &[]).await });
    let started = eventually(WAIT, async || pool.stand_in("a").state().in_progress == 1).await;
    assert!(started, "the other build never started on a");
    // Ours goes to a (first in turn), which answers `already_exists`: it waits there, keeping
    // its place on a, and never moves to b.
    // The same key, under a request_id of its own.
    let (mut ours, _) = request(30);
    let ours_id_sent = "00000000-0000-4000-8000-0000000000aa";
    ours["request_id"] = json!(ours_id_sent);
    let client = pool.spawn_post(ours);
    let waited = eventually(WAIT, async || {
        pool.stand_in("a").state().calls_with(ours_id_sent) >= 2
    })
    .await;
    assert!(waited, "ours was not asked again on a");
    pool.expect_states(&[("a", "up", 1), ("b", "up", 0)]).await;
    assert!(
        pool.metric("velox_velox_retries_total{reason=\"already_exists\"}")
            .await
            >= 1.0
    );
    pool.stand_in("a").hold(false);
    assert_eq!(elsewhere.await.expect("task").status, 200);
    let resp = client.await.expect("task");
    assert_built_by(&resp, pool.stand_in("a"));
    assert_eq!(pool.stand_in("a").state().builds, 1, "a built the key once");
    assert_eq!(pool.stand_in("b").state().calls_with(ours_id_sent), 0);
    assert_eq!(pool.metric("velox_builder_failovers_total").await, 0.0);
    pool.expect_states(&[("a", "up", 0), ("b", "up", 0)]).await;
}
