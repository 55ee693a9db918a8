//! The monitoring the repository ships (docs/operations.md, "Dashboards and alerts"): the
//! Prometheus rules pass `promtool check rules` and their unit tests, the Grafana dashboard
//! covers what an operator watches, and every metric (and label value) either of them queries is
//! one the running server exports on `/metrics`, which itself passes `promtool check metrics`.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn promtool(args: &[&str], stdin: Option<&[u8]>) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is not installed: scripts/test installs it (Debian package prometheus)");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).expect("write to promtool");
    }
    drop(input);
    let out = child.wait_with_output().expect("promtool ran");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Metric selectors in a PromQL expression: each metric name with its `label="value"` matchers.
/// Functions, aggregations, keywords, label lists (`by (…)`), ranges, strings, numbers and
/// Grafana's `$variables` are not metric names.
fn selectors(expr: &str) -> Vec<(String, Vec<(String, String)>)> {
    const NOT_METRICS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "topk",
        "bottomk",
        "quantile",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
    ];
    let b: Vec<char> = expr.chars().collect();
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut i = 0;
    let mut last_was_metric = false;
    while i < b.len() {
        let c = b[i];
        if c == '"' || c == '\'' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            last_was_metric = false;
        } else if c == '[' {
            while i < b.len() && b[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '{' {
            let start = i + 1;
            while i < b.len() && b[i] != '}' {
                i += 1;
            }
            let inner: String = b[start..i.min(b.len())].iter().collect();
            i += 1;
            if last_was_metric {
                for m in inner.split(',') {
                    if let Some((l, v)) = m.split_once('=') {
                        let (l, v) = (l.trim(), v.trim());
                        if !l.ends_with('!') && !v.starts_with('~') {
                            let v = v.trim_matches('"').to_owned();
                            if let Some(sel) = out.last_mut() {
                                sel.1.push((l.to_owned(), v));
                            }
                        }
                    }
                }
            }
            last_was_metric = false;
        } else if c == '$' {
            i += 1;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            last_was_metric = false;
        } else if c.is_ascii_digit() || (c == '.' && b.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '.') {
                i += 1;
            }
            last_was_metric = false;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '_' || b[i] == ':') {
                i += 1;
            }
            let word: String = b[start..i].iter().collect();
            let mut j = i;
            while j < b.len() && b[j].is_whitespace() {
                j += 1;
            }
            let call = b.get(j) == Some(&'(');
            if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&word.as_str())
                && call
            {
                // A label list, not a call.
                while j < b.len() && b[j] != ')' {
                    j += 1;
                }
                i = j + 1;
                last_was_metric = false;
            } else if call || NOT_METRICS.contains(&word.as_str()) {
                last_was_metric = false;
            } else {
                out.push((word, Vec::new()));
                last_was_metric = true;
            }
        } else {
            if !c.is_whitespace() {
                last_was_metric = false;
            }
            i += 1;
        }
    }
    out
}

#[test]
fn selectors_are_read_from_promql() {
    let got = selectors(
        r#"sum by (instance, reason) (increase(velox_cache_store_errors_total{job="x",reason="full",a=~"b"}[15m])) > 0
           and on (instance) velox_velox_up == 0 or histogram_quantile(0.95, rate(velox_build_duration_seconds_bucket[$__rate_interval])) * 24 * 3600"#,
    );
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "velox_cache_store_errors_total",
            "velox_velox_up",
            "velox_build_duration_seconds_bucket"
        ]
    );
    assert_eq!(
        got[0].1,
        [
            ("job".to_owned(), "x".to_owned()),
            ("reason".to_owned(), "full".to_owned())
        ]
    );
}

/// Every PromQL expression of the rules file (the `expr:` values, block scalars included).
fn rule_exprs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(rest) = line.trim_start().strip_prefix("expr:") {
            let rest = rest.trim();
            if rest == "|" || rest == ">" {
                let indent = line.len() - line.trim_start().len();
                let mut block = String::new();
                i += 1;
                while i < lines.len()
                    && (lines[i].trim().is_empty()
                        || lines[i].len() - lines[i].trim_start().len() > indent)
                {
                    block.push_str(lines[i].trim());
                    block.push(' ');
                    i += 1;
                }
                out.push(block);
                continue;
            }
            out.push(rest.to_owned());
        }
        i += 1;
    }
    out
}

/// Every query of the dashboard: panel targets and template-variable queries.
fn dashboard_exprs(d: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            out.push(t["expr"].as_str().expect("expr").to_owned());
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        let q = v["query"]["query"].as_str().expect("variable query");
        // label_values(metric, label): the metric is what must exist.
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.split(',').next())
            .expect("a label_values query");
        out.push(inner.trim().to_owned());
    }
    out
}

#[test]
fn the_alert_rules_pass_promtool() {
    let (ok, text) = promtool(&["check", "rules", "examples/prometheus/alerts.yml"], None);
    assert!(ok, "{text}");
    let (ok, text) = promtool(&["test", "rules", "tests/prometheus/alerts_test.yml"], None);
    assert!(ok, "{text}");
}

#[actix_web::test]
async fn every_metric_the_dashboard_and_the_rules_query_is_exported() {
    let h = Harness::start();
    let text = String::from_utf8_lossy(&get(&h.server().admin_url("/metrics"), &[]).await.body)
        .into_owned();
    // The exposition itself: promtool's lint finds only the one name kept for the Go
    // middleware's dashboards (a gauge ending in _count).
    let (_, lint) = promtool(&["check", "metrics"], Some(text.as_bytes()));
    let problems: Vec<&str> = lint
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("velox_cache_entries_count "))
        .collect();
    assert!(problems.is_empty(), "{lint}");

    let mut exported: HashMap<String, Vec<String>> = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        exported
            .entry(line[..end].to_owned())
            .or_default()
            .push(line.to_owned());
    }
    let rules = std::fs::read_to_string(repo("examples/prometheus/alerts.yml")).expect("rules");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("examples/grafana/velox-cache.json")).expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut exprs = rule_exprs(&rules);
    assert!(exprs.len() >= 8, "{exprs:?}");
    exprs.extend(dashboard_exprs(&dashboard));
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let found = selectors(expr);
        assert!(!found.is_empty(), "no metric in {expr}");
        for (name, matchers) in found {
            if name == "up" {
                // Prometheus's own series for the scrape.
                assert!(expr.contains("job=\"velox-cache\""), "{expr}");
                continue;
            }
            let series = exported
                .get(&name)
                .unwrap_or_else(|| panic!("{name} (in {expr}) is not exported:\n{text}"));
            for (label, value) in matchers {
                let want = format!("{label}=\"{value}\"");
                assert!(
                    series.iter().any(|s| s.contains(&want)),
                    "{name}{{{want}}} (in {expr}) is not exported"
                );
            }
            used.insert(name);
        }
    }
    // What an operator watches, each on the dashboard.
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for want in [
        "Hit ratio",
        "Builds by status",
        "Build duration",
        "Evictions by reason",
        "Store errors",
        "Disk headroom",
        "Velox reachable",
        "Builders up",
        "Builder load and failovers",
    ] {
        assert!(titles.contains(&want), "{want}: {titles:?}");
    }
    for name in [
        "velox_cache_hits_total",
        "velox_builds_total",
        "velox_build_duration_seconds_bucket",
        "velox_cache_evictions_total",
        "velox_cache_store_errors_total",
        "velox_cache_disk_free_bytes",
        "velox_cache_min_free_bytes",
        "velox_velox_up",
        "velox_builder_up",
        "velox_builder_builds_active",
        "velox_builder_builds_total",
        "velox_builder_failovers_total",
    ] {
        assert!(used.contains(name), "{name} is queried nowhere");
    }
}
