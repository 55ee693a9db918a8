//! The binary as an operator meets it (docs/configuration.md, docs/cli.md, docs/metrics.md):
//! Kubernetes' service variables, unknown keys in the file, bare `0` durations, what the
//! configuration errors say, `--help` per subcommand, `warm`'s checks, and counters exported at
//! zero from the start.

mod support;

use support::process::free_port;
use support::server::run;
use support::*;
use tempfile::TempDir;

/// A configuration file holding `text`, in a temp dir kept as long as the file is needed; its
/// path as a command-line argument.
fn config_file(name: &str, text: &str) -> (TempDir, String) {
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join(name);
    std::fs::write(&file, text).expect("write");
    let f = file.to_str().expect("utf-8").to_owned();
    (tmp, f)
}

/// What Kubernetes puts in every pod's environment for a Service named `velox-cache` with a
/// port 8080 (and a named port `admin`).
const KUBERNETES: [(&str, &str); 9] = [
    ("VELOX_CACHE_PORT", "tcp://10.96.14.2:8080"),
    ("VELOX_CACHE_PORT_8080_TCP", "tcp://10.96.14.2:8080"),
    ("VELOX_CACHE_PORT_8080_TCP_PROTO", "tcp"),
    ("VELOX_CACHE_PORT_8080_TCP_PORT", "8080"),
    ("VELOX_CACHE_PORT_8080_TCP_ADDR", "10.96.14.2"),
    ("VELOX_CACHE_SERVICE_HOST", "10.96.14.2"),
    ("VELOX_CACHE_SERVICE_PORT", "8080"),
    ("VELOX_CACHE_SERVICE_PORT_ADMIN", "9180"),
    ("VELOX_CACHE_PORT_9180_TCP", "tcp://10.96.14.2:9180"),
];

#[actix_web::test]
async fn kubernetes_service_variables_are_warned_about_once_and_ignored() {
    let mut env: Vec<(&str, &str)> = KUBERNETES.to_vec();
    env.push(("VELOX_CACHE_CACHE__MAX_ENTRIES", "5"));
    let (code, out, err) = run(&["config"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("max_entries = 5"),
        "a real key still applies: {out}"
    );
    assert_eq!(err.matches("warning").count(), 1, "{err}");
    for (name, _) in KUBERNETES {
        assert!(err.contains(name), "{name} not named: {err}");
    }
    // Every command reads the same environment; none refuses it.
    let (code, _, err) = run(&["healthcheck", "--admin-listen", "127.0.0.1:1"], &env);
    assert_eq!(code, 1, "not ready, but not a configuration error: {err}");

    // The server starts with them, warns once, and serves.
    let h = Harness::start_with(|o| o.envs(KUBERNETES));
    let r = h.post(&build_request("linux", "amd64")).await;
    assert_eq!(r.status, 200);
    let log = h.server().log_text();
    assert_eq!(
        log.matches("ignoring environment variables").count(),
        1,
        "{log}"
    );
}

#[test]
fn every_unknown_key_of_the_file_is_listed() {
    let (_tmp, f) = config_file(
        "velox-cache.toml",
        "lisen = \"0.0.0.0:8080\"\nbuild_timeout = \"5m\"\nserver_ur = \"http://v:9000\"\n\
         [cache]\nmax_sise_gb = 1\nmax_entries = 3\n[retry]\nattempts = 2\n[cach]\nx = 1\n",
    );
    let f = f.as_str();
    let (code, _, err) = run(&["config", "--config", f], &[]);
    assert_eq!(code, 2, "{err}");
    for key in [
        "lisen",
        "server_ur",
        "cache.max_sise_gb",
        "retry.attempts",
        "cach",
    ] {
        assert!(
            err.contains(&format!("unknown key `{key}` (in {f})")),
            "{key}: {err}"
        );
    }
    // A bad value beside them is reported too, in the same run.
    std::fs::write(f, "lisen = 1\nbuild_timeout = 300\n").expect("write");
    let (code, _, err) = run(&["config", "--config", f], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown key `lisen`"), "{err}");
    assert!(
        err.contains("`build_timeout`") && err.contains("\"300s\""),
        "{err}"
    );
}

#[actix_web::test]
async fn a_bare_zero_is_a_duration_in_the_file_and_the_environment() {
    let (_tmp, f) = config_file(
        "velox-cache.toml",
        "failure_ttl = 0\n[cache]\naccess_update_interval = 0\ncleanup_interval = 0\n",
    );
    let f = f.as_str();
    let env = [("VELOX_CACHE_RETRY__INITIAL_DELAY", "0")];
    let (code, out, err) = run(&["config", "--config", f], &env);
    assert_eq!(code, 0, "{err}");
    for line in [
        "failure_ttl = \"0s\"",
        "access_update_interval = \"0s\"",
        "cleanup_interval = \"0s\"",
        "initial_delay = \"0s\"",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    // Where 0 means nothing, it is refused by the key's own rule, named.
    let (code, _, err) = run(
        &["config", "--config", f],
        &[("VELOX_CACHE_BUILD_TIMEOUT", "0")],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("`build_timeout`: must be at least 1s"),
        "{err}"
    );

    // A server starts on that file and serves.
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_CONFIG", f));
    let req = distinct_request(3);
    assert_eq!(h.post(&req).await.status, 200);
    let hit = h.post(&req).await;
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
}

#[test]
fn configuration_errors_name_the_key_and_the_source_without_nested_backticks() {
    let (_tmp, f) = config_file("c.toml", "server_url = \"velox:9000\"\n");
    let f = f.as_str();
    // server_url without a scheme, from each source.
    for (args, env, source) in [
        (
            vec!["config", "--server-url", "velox:9000"],
            vec![],
            "(from the command line: --server-url)".to_string(),
        ),
        (
            vec!["config"],
            vec![("VELOX_CACHE_SERVER_URL", "velox:9000")],
            "(from VELOX_CACHE_SERVER_URL)".to_string(),
        ),
        (vec!["config", "--config", f], vec![], format!("(from {f})")),
    ] {
        let (code, _, err) = run(&args, &env);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("invalid value for `server_url`: must be an http:// or https:// URL"),
            "{err}"
        );
        assert!(err.contains(&source), "{source}: {err}");
    }
    // Type and value errors: one pair of backticks (the key), none nested.
    for (k, v, key) in [
        (
            "VELOX_CACHE_CACHE__EVICTION_POLICY",
            "random",
            "cache.eviction_policy",
        ),
        (
            "VELOX_CACHE_CACHE__MAX_ENTRIES",
            "many",
            "cache.max_entries",
        ),
        ("VELOX_CACHE_LISTEN", "localhost:80", "listen"),
        ("VELOX_CACHE_BUILD_TIMEOUT", "forever", "build_timeout"),
        ("VELOX_CACHE_UPSTREAM", "ftp://x", "upstream"),
    ] {
        let (code, _, err) = run(&["config"], &[(k, v)]);
        assert_eq!(code, 2, "{err}");
        let line = err.lines().next().unwrap_or_default();
        assert!(line.contains(&format!("`{key}`")), "{line}");
        assert_eq!(line.matches('`').count(), 2, "nested backticks: {line}");
        assert!(line.contains(&format!("(from {k})")), "{line}");
    }
    let (_, _, err) = run(
        &["config"],
        &[("VELOX_CACHE_CACHE__EVICTION_POLICY", "random")],
    );
    assert!(
        err.contains("\"random\" is not one of lru, lfu, fifo"),
        "{err}"
    );
}

#[test]
fn an_artifact_root_that_does_not_exist_stops_the_start() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dd = tmp.path().join("data").display().to_string();
    let missing = tmp.path().join("velox-out").display().to_string();
    let (code, _, err) = run(
        &[
            "serve",
            "--data-dir",
            &dd,
            "--artifact-root",
            &missing,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`artifact_root`"), "{err}");
    assert!(
        err.contains("(from the command line: --artifact-root)"),
        "{err}"
    );
    assert!(!std::path::Path::new(&dd).exists(), "the start went on");
    // Only the server needs it: `config` still shows the configuration.
    let (code, out, _) = run(&["config", "--artifact-root", &missing], &[]);
    assert_eq!(code, 0);
    assert!(out.contains(&missing));
}

/// `--help` of a command, and the long flags it lists.
fn help(args: &[&str]) -> (String, Vec<String>) {
    let mut all = args.to_vec();
    all.push("--help");
    let (code, out, err) = run(&all, &[]);
    assert_eq!(code, 0, "{err}");
    let flags = out
        .lines()
        .filter_map(|l| {
            l.trim_start().strip_prefix("--").or_else(|| {
                l.trim_start()
                    .strip_prefix("-h, --")
                    .or_else(|| l.trim_start().strip_prefix("-V, --"))
            })
        })
        .filter_map(|l| l.split([' ', '<']).next())
        .map(|f| format!("--{f}"))
        .collect();
    (out, flags)
}

#[test]
fn each_subcommand_help_shows_its_own_flags_and_their_variables() {
    let server_flags = [
        "--listen",
        "--admin-listen",
        "--data-dir",
        "--upstream",
        "--server-url",
        "--artifact-root",
        "--path-map",
    ];
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["serve"], server_flags.to_vec()),
        (vec!["config"], server_flags.to_vec()),
        (vec!["healthcheck"], vec!["--admin-listen"]),
        (vec!["warm"], vec!["--url", "--concurrency"]),
        (vec!["cache", "stats"], vec!["--data-dir", "--admin-listen"]),
        (
            vec!["cache", "list"],
            vec!["--data-dir", "--admin-listen", "--limit", "--after"],
        ),
        (
            vec!["cache", "verify"],
            vec!["--data-dir", "--admin-listen"],
        ),
        (vec!["cache", "purge"], vec!["--data-dir", "--admin-listen"]),
    ];
    for (cmd, own) in cases {
        let (text, mut flags) = help(&cmd);
        flags.retain(|f| f != "--help" && f != "--config" && f != "--version");
        let mut want: Vec<String> = own.iter().map(|s| s.to_string()).collect();
        flags.sort();
        want.sort();
        assert_eq!(flags, want, "{cmd:?}:\n{text}");
        // Every flag that sets a configuration key names its environment variable.
        for line in text.lines() {
            let t = line.trim_start();
            for f in server_flags.iter().chain(["--config"].iter()) {
                if t.starts_with(&format!("{f} ")) {
                    let var = format!(
                        "[env: VELOX_CACHE_{}]",
                        f.trim_start_matches("--").replace('-', "_").to_uppercase()
                    );
                    assert!(t.contains(&var), "{cmd:?}: {t}");
                }
            }
        }
    }
    // The server's flags still work before a subcommand.
    let tmp = tempfile::tempdir().expect("tmp");
    let dd = tmp.path().display().to_string();
    let (code, out, err) = run(&["--server-url", "http://before:9000", "config"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("http://before:9000"));
    let (code, out, _) = run(&["config", "--data-dir", &dd], &[]);
    assert_eq!(code, 0);
    assert!(out.contains(&dd));
}

#[actix_web::test]
async fn warm_checks_its_url_once_and_says_what_succeeded() {
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_API_TOKEN", "t0ken"));
    let f = write_lines(&h.tmp.path().join("r.jsonl"), &request_lines(0..5));
    // Not a URL: a usage error, before anything is read or sent.
    let (code, out, err) = run(&["warm", &f, "--url", "127.0.0.1:8080"], &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(err.matches("--url").count(), 1, "{err}");
    assert!(out.is_empty(), "{out}");
    // Nothing listens there: one message, not one failure per line.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (code, out, err) = run(&["warm", &f, "--url", &closed], &[]);
    assert_eq!(code, 1);
    assert_eq!(err.matches("cannot reach").count(), 1, "{err}");
    assert!(err.contains("nothing was sent"), "{err}");
    assert!(!out.contains("line "), "{out}");
    assert_eq!(h.velox.calls(), 0);
    // Every request refused (no token): the summary says none succeeded.
    let (code, out, _) = run(&["warm", &f, "--url", &h.url("")], &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("5 request(s)") && out.contains("0 succeeded (0 hits, 0 built), 5 failed"),
        "{out}"
    );
    assert!(!out.contains("warmed"), "{out}");
}

/// The metric names and label values docs/metrics.md lists, with their types.
fn documented_metrics() -> Vec<(String, String, Vec<String>)> {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md"),
    )
    .expect("docs/metrics.md");
    let mut out = Vec::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[1].starts_with("`velox_") {
            continue;
        }
        let name = cells[1].trim_matches('`').to_owned();
        let kind = cells[2].to_owned();
        // `label`: `a`, `b` — or, for several labels, `l1`, `l2`: `a1` `a2`, `b1` `b2`.
        let series = match cells[3].split_once(':') {
            Some((labels, values)) => {
                let labels: Vec<&str> = labels
                    .split(',')
                    .map(|l| l.trim().trim_matches('`'))
                    .collect();
                values
                    .split(',')
                    .map(|item| {
                        let pairs: Vec<String> = labels
                            .iter()
                            .zip(item.split_whitespace())
                            .map(|(l, v)| format!("{l}=\"{}\"", v.trim_matches('`')))
                            .collect();
                        format!("{name}{{{}}}", pairs.join(","))
                    })
                    .collect()
            }
            // A label whose values are names (a channel's): no series until there is one.
            None if !cells[3].is_empty() => Vec::new(),
            None => vec![name.clone()],
        };
        out.push((name, kind, series));
    }
    out
}

#[actix_web::test]
async fn every_documented_counter_is_exported_at_zero_from_the_start() {
    let h = Harness::start();
    let text = String::from_utf8_lossy(&get(&h.server().admin_url("/metrics"), &[]).await.body)
        .into_owned();
    let documented = documented_metrics();
    assert!(documented.len() >= 15, "{documented:?}");
    let value = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .map(|v| v.trim().to_owned())
    };
    for (name, kind, series) in &documented {
        match kind.as_str() {
            "counter" => {
                for s in series {
                    assert_eq!(value(s).as_deref(), Some("0"), "{s}:\n{text}");
                }
            }
            "histogram" => {
                assert_eq!(
                    value(&format!("{name}_count")).as_deref(),
                    Some("0"),
                    "{name}"
                );
            }
            "gauge" => {
                for s in series {
                    assert!(value(s).is_some(), "{s} missing:\n{text}");
                }
            }
            other => panic!("{name}: unknown type {other}"),
        }
    }
}
