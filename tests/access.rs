//! Access for teams (docs/access.md) through real HTTP on every listener: the scope × route
//! table for every scope and for anonymous callers (`auth.anonymous = read` and `none`), every
//! kind of bad token refused with its own message before Velox is asked, channel globs, the
//! audit log's lines (reopened on SIGHUP), and no secret in any output. Signed URLs, the CLI,
//! quotas and fairness are in tests/access_links.rs.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const HTTP: &str = "github.com/roadrunner-server/http/v5";
const API: &str = "access-test-api-token-0123456789";
const URL_SECRET: &str = "access-url-secret-0123456789abcdef";

/// A config file with channels `prod` and `team-a-web` (pinned plugins, one platform).
fn config(dir: &Path) -> String {
    let path = dir.join("velox-cache.toml");
    let channel = |name: &str, tag: &str| {
        format!(
            "[channels.{name}]\nrr_version = \"v2025.1.2\"\nplugins = [{{ module_name = \"{HTTP}\", tag = \"{tag}\" }}]\nplatforms = [\"linux/amd64\"]\n"
        )
    };
    std::fs::write(
        &path,
        format!(
            "{}{}",
            channel("prod", "v5.2.7"),
            channel("team-a-web", "v5.2.8")
        ),
    )
    .expect("config");
    path.display().to_string()
}

/// Makes a token through `POST /v1/tokens` with the api_token; its secret.
async fn make_token(s: &Server, fields: Value) -> String {
    let v = create_token(s, API, &fields).await;
    assert_eq!(v["name"], fields["name"]);
    assert_eq!(v["scope"], fields["scope"]);
    assert!(v.get("hash").is_none(), "{v}");
    v["token"].as_str().expect("token").to_owned()
}

/// The registry listener's address, from the server's log (the last one, after a restart).
async fn registry_url(s: &Server) -> String {
    let mut url = None;
    let found = eventually(Duration::from_secs(10), async || {
        url = s
            .log_text()
            .lines()
            .rev()
            .find_map(|l| l.split_once("registry listener on ").map(|(_, a)| a.trim()))
            .map(str::to_owned);
        url.is_some()
    })
    .await;
    assert!(found, "no registry listener:\n{}", s.log_text());
    url.expect("url")
}

async fn released(h: &Harness, name: &str) {
    let mut last = Value::Null;
    let ok = eventually(Duration::from_secs(30), async || {
        last = get(
            &h.url(&format!("/_velox/v1/channels/{name}")),
            &[("authorization", &bearer(API))],
        )
        .await
        .json();
        last["current"]["id"].is_string()
    })
    .await;
    assert!(
        ok,
        "no release of {name}: {last}\n{}",
        h.server().log_text()
    );
}

#[derive(Clone, Copy, Debug)]
enum On {
    Public,
    Admin,
    Registry,
}

/// What one row sends: a GET, or a method with a JSON body; `Miss` posts a fresh build request.
#[derive(Clone, Debug)]
enum Send {
    Get,
    Head,
    Json(&'static str, Value),
    Miss,
}

struct Row {
    on: On,
    send: Send,
    path: String,
    /// Anonymous (auth.anonymous = read), anonymous (= none), read, build, admin.
    want: [u16; 5],
}

async fn send(url: &str, send: &Send, auth: Option<&str>, fresh: &mut usize) -> Resp {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    match send {
        Send::Get => get(url, &headers).await,
        Send::Head => head(url, &headers).await,
        Send::Json(method, body) => {
            let mut req = client()
                .request(method.parse().expect("method"), url)
                .insert_header(("content-type", "application/json"));
            for (k, v) in &headers {
                req = req.insert_header((*k, *v));
            }
            let mut res = req
                .send_body(serde_json::to_vec(body).expect("json"))
                .await
                .expect("sent");
            let body = res.body().limit(1 << 26).await.expect("body");
            Resp {
                status: res.status().as_u16(),
                headers: res.headers().clone(),
                body,
            }
        }
        Send::Miss => {
            *fresh += 1;
            post_json(url, &distinct_request(1000 + *fresh), &headers).await
        }
    }
}

/// Runs every row for every caller; `none` picks the column of `auth.anonymous = none`.
async fn run_table(
    h: &Harness,
    registry: &str,
    rows: &[Row],
    callers: &[(&str, Option<String>)],
    none: bool,
    fresh: &mut usize,
) {
    let mut failures = Vec::new();
    for row in rows {
        let base = match row.on {
            On::Public => h.server().public.clone(),
            On::Admin => h.server().admin.clone(),
            On::Registry => registry.to_owned(),
        };
        let url = format!("{base}{}", row.path);
        for (i, (name, token)) in callers.iter().enumerate() {
            let col = match i {
                0 if none => 1,
                0 => 0,
                n => n + 1,
            };
            let want = row.want[col];
            let calls = h.velox.calls();
            let r = send(&url, &row.send, token.as_deref(), fresh).await;
            if r.status != want {
                failures.push(format!(
                    "{:?} {:?} {} as {name}: {} (want {want}) {}",
                    row.on,
                    row.send,
                    row.path,
                    r.status,
                    String::from_utf8_lossy(&r.body)
                ));
                continue;
            }
            if (want == 401 || want == 403) && !matches!(row.send, Send::Head) {
                refusal(&r, want, row.path.starts_with("/v2"));
            }
            // A refused request never reaches Velox; an allowed miss does, once.
            let want_calls = calls + usize::from(matches!(row.send, Send::Miss) && want == 200);
            if h.velox.calls() != want_calls {
                failures.push(format!(
                    "{:?} {} as {name}: Velox called {} times (want {})",
                    row.on,
                    row.path,
                    h.velox.calls() - calls,
                    want_calls - calls
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Checks a refusal: §6's JSON error, or on `/v2` the Distribution Spec's (with
/// `WWW-Authenticate` on a 401, so that `docker login` sends credentials); its message.
fn refusal(r: &Resp, status: u16, registry: bool) -> String {
    if !registry {
        let code = if status == 401 {
            "unauthorized"
        } else {
            "forbidden"
        };
        let v = r.assert_error(status, code);
        return v["message"].as_str().expect("message").to_owned();
    }
    assert_eq!(r.status, status);
    let v = r.json();
    let code = if status == 401 {
        "UNAUTHORIZED"
    } else {
        "DENIED"
    };
    assert_eq!(v["errors"][0]["code"], code, "{v}");
    if status == 401 {
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"velox-cache\"")
        );
    }
    v["errors"][0]["message"]
        .as_str()
        .expect("message")
        .to_owned()
}

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
        .collect()
}

#[actix_web::test]
async fn every_scope_on_every_route_of_every_listener() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = config(dir.path());
    let audit = dir.path().join("audit.log");
    let audit_arg = audit.display().to_string();
    let mut h = Harness::start_with(|o| {
        o.env("VELOX_CACHE_CONFIG", &file)
            .env("VELOX_CACHE_API_TOKEN", API)
            .env("VELOX_CACHE_AUTH__URL_SECRET", URL_SECRET)
            .env("VELOX_CACHE_AUDIT__PATH", &audit_arg)
            .env("VELOX_CACHE_REGISTRY_LISTEN", "127.0.0.1:0")
    });
    released(&h, "prod").await;
    released(&h, "team-a-web").await;
    let s = h.server();
    let read = make_token(s, json!({"name": "reader", "scope": "read"})).await;
    let build = make_token(s, json!({"name": "builder", "scope": "build"})).await;
    let admin = make_token(s, json!({"name": "boss", "scope": "admin"})).await;
    let team = make_token(
        s,
        json!({"name": "team-a", "scope": "build", "channels": ["team-a-*"]}),
    )
    .await;
    let expiring = make_token(
        s,
        json!({"name": "brief", "scope": "admin", "expires_in": "1s"}),
    )
    .await;
    let revoked = make_token(s, json!({"name": "gone", "scope": "admin"})).await;
    let r = client()
        .delete(s.admin_url("/v1/tokens/gone"))
        .insert_header(("authorization", bearer(&admin)))
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status().as_u16(), 204);

    // A binary in the cache (the admin token starts the build).
    let hit = json!(distinct_request(1));
    let first = post_json(&h.builds_url(), &hit, &[("authorization", &bearer(&build))]).await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let digest = sha256_hex(&first.body);
    let key = first.header("x-velox-cache-key").expect("key").to_owned();
    let registry = registry_url(s).await;

    let ok = [200; 5];
    let read_route = [200, 401, 200, 200, 200];
    let admin_route = [401, 401, 403, 403, 200];
    let art = format!("/_velox/v1/artifacts/{digest}");
    let absent = "0".repeat(64);
    let rows = vec![
        // The build API: a hit is read, a miss is build.
        Row {
            on: On::Public,
            send: Send::Json("POST", hit.clone()),
            path: "/_velox/v1/builds".into(),
            want: [401, 401, 200, 200, 200],
        },
        Row {
            on: On::Public,
            send: Send::Miss,
            path: "/_velox/v1/builds".into(),
            want: [401, 401, 403, 200, 200],
        },
        // A build's status, by its unguessable key.
        Row {
            on: On::Public,
            send: Send::Get,
            path: format!("/_velox/v1/builds/{key}"),
            want: ok,
        },
        // Artifacts, their signature, provenance and SBOM; the keys.
        Row {
            on: On::Public,
            send: Send::Get,
            path: art.clone(),
            want: read_route,
        },
        Row {
            on: On::Public,
            send: Send::Head,
            path: art.clone(),
            want: read_route,
        },
        Row {
            on: On::Public,
            send: Send::Get,
            path: format!("{art}.minisig"),
            want: read_route,
        },
        Row {
            on: On::Public,
            send: Send::Get,
            path: format!("{art}/provenance"),
            want: read_route,
        },
        Row {
            on: On::Public,
            send: Send::Get,
            path: "/_velox/v1/keys".into(),
            want: read_route,
        },
        // Channels.
        Row {
            on: On::Public,
            send: Send::Get,
            path: "/_velox/v1/channels".into(),
            want: read_route,
        },
        Row {
            on: On::Public,
            send: Send::Get,
            path: "/_velox/v1/channels/prod/linux/amd64".into(),
            want: read_route,
        },
        // The console.
        Row {
            on: On::Public,
            send: Send::Get,
            path: "/_velox/ui/".into(),
            want: read_route,
        },
        // Images on the public listener and on the registry listener.
        Row {
            on: On::Public,
            send: Send::Get,
            path: "/v2/".into(),
            want: read_route,
        },
        Row {
            on: On::Registry,
            send: Send::Get,
            path: "/v2/".into(),
            want: read_route,
        },
        Row {
            on: On::Registry,
            send: Send::Get,
            path: "/v2/rr/prod/tags/list".into(),
            want: read_route,
        },
        // The admin listener: probes and metrics are open, reading is read, changing is admin.
        Row {
            on: On::Admin,
            send: Send::Get,
            path: "/healthz".into(),
            want: ok,
        },
        Row {
            on: On::Admin,
            send: Send::Get,
            path: "/metrics".into(),
            want: ok,
        },
        Row {
            on: On::Admin,
            send: Send::Get,
            path: "/v1/cache/stats".into(),
            want: read_route,
        },
        Row {
            on: On::Admin,
            send: Send::Get,
            path: "/ui/".into(),
            want: read_route,
        },
        Row {
            on: On::Admin,
            send: Send::Get,
            path: "/v1/channels/prod".into(),
            want: read_route,
        },
        Row {
            on: On::Admin,
            send: Send::Json("DELETE", json!({})),
            path: format!("/v1/cache/{absent}"),
            want: [401, 401, 403, 403, 404],
        },
        Row {
            on: On::Admin,
            send: Send::Json("POST", json!({})),
            path: format!("/v1/cache/{key}/pin"),
            want: admin_route,
        },
        Row {
            on: On::Admin,
            send: Send::Json("POST", json!({})),
            path: "/v1/cache/cleanup".into(),
            want: admin_route,
        },
        Row {
            on: On::Admin,
            send: Send::Get,
            path: "/v1/tokens".into(),
            want: admin_route,
        },
        Row {
            on: On::Admin,
            send: Send::Json("POST", json!({"name": "-bad", "scope": "read"})),
            path: "/v1/tokens".into(),
            want: [401, 401, 403, 403, 400],
        },
        Row {
            on: On::Admin,
            send: Send::Json("POST", json!({"path": art, "expires_in": "1m"})),
            path: "/v1/signed-urls".into(),
            want: admin_route,
        },
    ];
    let callers = [
        ("anonymous", None),
        ("read", Some(bearer(&read))),
        ("build", Some(bearer(&build))),
        ("admin", Some(bearer(&admin))),
    ];
    let mut fresh = 0;
    run_table(&h, &registry, &rows, &callers, false, &mut fresh).await;

    // Channel globs: `team-a` may use `team-a-web`, not `prod`, on every listener.
    let t = bearer(&team);
    let team_rows = [
        (h.url("/_velox/v1/channels/team-a-web"), 200),
        (h.url("/_velox/v1/channels/team-a-web/linux/amd64"), 200),
        (format!("{registry}/v2/rr/team-a-web/tags/list"), 200),
        (h.server().admin_url("/v1/channels/team-a-web"), 200),
        (h.url("/_velox/v1/channels/prod"), 403),
        (h.url("/_velox/v1/channels/prod/linux/amd64"), 403),
        (format!("{registry}/v2/rr/prod/tags/list"), 403),
        (h.server().admin_url("/v1/channels/prod"), 403),
        (h.url(&art), 200),
    ];
    for (url, want) in &team_rows {
        let r = get(url, &[("authorization", &t)]).await;
        assert_eq!(
            r.status,
            *want,
            "{url}: {}",
            String::from_utf8_lossy(&r.body)
        );
        if *want == 403 {
            let message = refusal(&r, 403, url.contains("/v2/"));
            assert!(message.contains("team-a-*"), "{message}");
        }
    }

    // Every kind of bad token: its own answer, and Velox never asked.
    assert!(
        eventually(Duration::from_secs(5), async || get(
            &h.url(&art),
            &[("authorization", &bearer(&expiring))]
        )
        .await
        .status
            == 401)
        .await,
        "the 1s token never expired"
    );
    let unknown = format!("vxc_{}", "A".repeat(43));
    let bad: [(&str, String, u16, &str, &str); 7] = [
        (
            "malformed header",
            "Digest abc".into(),
            401,
            "unauthorized",
            "Authorization header is malformed",
        ),
        (
            "malformed token",
            bearer("not-a-token"),
            401,
            "unauthorized",
            "token is malformed",
        ),
        (
            "unknown",
            bearer(&unknown),
            401,
            "unauthorized",
            "not known",
        ),
        (
            "expired",
            bearer(&expiring),
            401,
            "unauthorized",
            "has expired",
        ),
        (
            "revoked",
            bearer(&revoked),
            401,
            "unauthorized",
            "has been revoked",
        ),
        (
            "wrong scope",
            bearer(&read),
            403,
            "forbidden",
            "`build` scope",
        ),
        (
            "wrong channel",
            t.clone(),
            403,
            "forbidden",
            "limited to the channels",
        ),
    ];
    let mut messages = BTreeSet::new();
    let mut bodies = Vec::new();
    for (what, auth, status, code, says) in &bad {
        let calls = h.velox.calls();
        fresh += 1;
        let req = if *what == "wrong channel" {
            // A channel route that would build on demand.
            None
        } else {
            Some(distinct_request(1000 + fresh))
        };
        let r = match req {
            Some(req) => post_json(&h.builds_url(), &req, &[("authorization", auth)]).await,
            None => {
                get(
                    &h.url("/_velox/v1/channels/prod/linux/arm64"),
                    &[("authorization", auth)],
                )
                .await
            }
        };
        let v = r.assert_error(*status, code);
        let message = v["message"].as_str().expect("message").to_owned();
        assert!(message.contains(says), "{what}: {message}");
        assert_eq!(h.velox.calls(), calls, "{what} reached Velox");
        messages.insert(message);
        bodies.push(String::from_utf8_lossy(&r.body).into_owned());
    }
    assert_eq!(messages.len(), bad.len(), "{messages:?}");

    // The audit log: builds, downloads, admin actions, token changes, denials; parsed.
    let lines = audit_lines(&audit);
    let find = |event: &str, f: &dyn Fn(&Value) -> bool| {
        lines
            .iter()
            .find(|l| l["event"] == event && f(l))
            .unwrap_or_else(|| panic!("no {event} line: {lines:#?}"))
            .clone()
    };
    for l in &lines {
        assert!(l["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{l}");
    }
    let started = find("build_started", &|l| {
        l["who"] == "builder" && l["key"] == key
    });
    assert!(started["key"].is_string());
    let finished = find("build_finished", &|l| {
        l["who"] == "builder" && l["key"] == key
    });
    assert!(finished["outcome"].is_string(), "{finished}");
    let dl = find("download", &|l| l["path"] == art && l["who"] == "reader");
    assert_eq!(dl["status"], 200);
    assert_eq!(dl["digest"], digest);
    assert_eq!(dl["bytes"], first.body.len());
    assert_eq!(dl["client"], "127.0.0.1");
    let head_dl = find("download", &|l| l["path"] == art && l["method"] == "HEAD");
    assert_eq!(head_dl["bytes"], 0);
    let made = find("token", &|l| l["method"] == "POST" && l["status"] == 201);
    assert_eq!(made["who"], "api_token");
    let gone = find("token", &|l| l["method"] == "DELETE");
    assert_eq!(
        (gone["who"].as_str(), gone["status"].as_u64()),
        (Some("boss"), Some(204))
    );
    let pin = find("admin", &|l| {
        l["path"].as_str().is_some_and(|p| p.ends_with("/pin")) && l["who"] == "boss"
    });
    assert!(pin["status"].as_u64().is_some_and(|s| s < 300), "{pin}");
    find("admin", &|l| {
        l["path"] == "/v1/cache/cleanup" && l["who"] == "boss"
    });
    let denied = find("denied", &|l| {
        l["status"] == 403 && l["who"] == "refused-token"
    });
    assert_eq!(denied["error"], "forbidden");
    find("signed_url", &|l| l["who"] == "boss" && l["status"] == 200);

    // No secret anywhere: the server's log, /metrics, `config`, error bodies, the audit log.
    let secrets = [
        API,
        URL_SECRET,
        read.as_str(),
        build.as_str(),
        admin.as_str(),
        team.as_str(),
        expiring.as_str(),
        revoked.as_str(),
    ];
    let metrics = get(&h.server().admin_url("/metrics"), &[]).await;
    let (code, shown, _) = server::run(
        &["config"],
        &[
            ("VELOX_CACHE_CONFIG", file.as_str()),
            ("VELOX_CACHE_API_TOKEN", API),
            ("VELOX_CACHE_AUTH__URL_SECRET", URL_SECRET),
            ("VELOX_CACHE_DATA_DIR", &h.data_dir_arg()),
        ],
    );
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("url_secret = \"********\""), "{shown}");
    let outputs = [
        ("log", h.server().log_text()),
        (
            "metrics",
            String::from_utf8_lossy(&metrics.body).into_owned(),
        ),
        ("config", shown),
        ("errors", bodies.join("\n")),
        ("audit", std::fs::read_to_string(&audit).expect("audit")),
        (
            "token list",
            String::from_utf8_lossy(
                &get(
                    &h.server().admin_url("/v1/tokens"),
                    &[("authorization", &bearer(API))],
                )
                .await
                .body,
            )
            .into_owned(),
        ),
    ];
    for (what, text) in &outputs {
        for secret in secrets {
            assert!(!text.contains(secret), "a secret in the {what}");
        }
    }
    // Nor the token store: hashes only.
    let stored = std::fs::read_to_string(h.opts.data_dir.join("auth/tokens.json")).expect("store");
    for secret in &secrets[2..] {
        assert!(!stored.contains(secret));
        assert!(stored.contains(&sha256_hex(secret.as_bytes())));
    }

    // SIGHUP after logrotate's rename: new lines go to a new file at the configured path.
    let rotated = dir.path().join("audit.log.1");
    std::fs::rename(&audit, &rotated).expect("rotate");
    let before = audit_lines(&rotated).len();
    unsafe { libc::kill(h.server().pid(), libc::SIGHUP) };
    assert!(
        eventually(Duration::from_secs(5), async || audit.exists()).await,
        "the audit log was not reopened"
    );
    let r = get(&h.url(&art), &[("authorization", &bearer(&admin))]).await;
    assert_eq!(r.status, 200);
    assert!(
        eventually(Duration::from_secs(5), async || audit_lines(&audit)
            .iter()
            .any(|l| l["event"] == "download" && l["who"] == "boss"))
        .await
    );
    assert_eq!(
        audit_lines(&rotated).len(),
        before,
        "a line went to the old file"
    );

    // auth.anonymous = none: the same table, anonymous now refused on every read route.
    h.stop();
    h.restart_with(|o| o.env("VELOX_CACHE_AUTH__ANONYMOUS", "none"));
    let registry = registry_url(h.server()).await;
    run_table(&h, &registry, &rows, &callers, true, &mut fresh).await;
}
