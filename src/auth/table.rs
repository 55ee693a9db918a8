//! The one table of what every route of every listener needs (docs/access.md, "The table").
//! Guards ([`super::guard`]) consult [`need`] for every request; nothing else decides access.
//! A new route gets its row here (the registry's `/v2/` and the builder pool's `/v1/builders`
//! have theirs).

use actix_web::http::Method;

/// Which listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The public listener without `upstream`: it serves the registry's `/v2/` too.
    Public,
    /// The public listener in proxy mode: `/v2/…`, like every path that is not velox-cache's,
    /// belongs to the PHP app (docs/images.md).
    PublicProxy,
    Admin,
    Registry,
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Never a credential (probes, metrics, a build's status by its unguessable key, and
    /// everything the public listener forwards to the PHP app, whose `Authorization` is its own).
    Open,
    /// The read scope (anonymous callers have it while `auth.anonymous = "read"`). A signed
    /// URL grants it on the paths [`signable`] names.
    Read,
    /// A build request: read scope when its binary is cached, build scope to start a build
    /// (decided by the handler once the key is known). Anonymous callers need a token as soon
    /// as any token exists.
    Build,
    /// The admin scope: every change through the admin API, tokens and signed URLs.
    Admin,
}

/// What `method path` on `listener` needs.
pub fn need(listener: Listener, method: &Method, path: &str) -> Need {
    let read_method = method == Method::GET || method == Method::HEAD;
    match listener {
        Listener::Public => public(method, read_method, path, true),
        Listener::PublicProxy => public(method, read_method, path, false),
        Listener::Admin => admin(read_method, path),
        Listener::Registry => registry(path),
    }
}

/// Whether `path` is the registry's (`/v2` and under).
pub fn is_registry_path(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

fn public(method: &Method, read_method: bool, path: &str, registry: bool) -> Need {
    let Some(rest) = path.strip_prefix("/_velox/") else {
        // The registry on the public listener (no upstream): `/v2/…` is read. Everything else
        // goes to the PHP app (or is a 404 without one).
        return if registry && is_registry_path(path) {
            Need::Read
        } else {
            Need::Open
        };
    };
    match rest {
        "v1/builds" if method == Method::POST => Need::Build,
        // The status of a build: its key is an unguessable hash of the request (§14).
        r if r.starts_with("v1/builds/") && r != "v1/builds/events" => Need::Open,
        // Console, activity, keys, artifacts, signatures, provenance, SBOM, channels (a channel
        // binary's build on demand needs the build scope, checked by its handler).
        _ if read_method => Need::Read,
        // Any other method on a velox-cache route is a 405 or 404; it reveals nothing.
        _ => Need::Read,
    }
}

fn admin(read_method: bool, path: &str) -> Need {
    match path {
        "/healthz" | "/readyz" | "/metrics" => Need::Open,
        // Tokens and signed URLs, even listed: only admins see who has access.
        p if p == "/v1/tokens" || p.starts_with("/v1/tokens/") || p == "/v1/signed-urls" => {
            Need::Admin
        }
        // Console, entries, stats, channels, pins, builders, history: reading is read.
        _ if read_method => Need::Read,
        // Deleting or pinning entries, cleanup, channels, draining builders: admin.
        _ => Need::Admin,
    }
}

fn registry(_path: &str) -> Need {
    // The pull side only: every route reads (pushes are refused by the registry itself).
    Need::Read
}

/// The channel a path names, for tokens limited to channel globs.
pub fn channel_of(path: &str) -> Option<&str> {
    let rest = path
        .strip_prefix("/_velox/v1/channels/")
        .or_else(|| path.strip_prefix("/v1/channels/"))
        .or_else(|| path.strip_prefix("/v2/rr/"))?;
    let name = rest.split('/').next()?;
    (!name.is_empty()).then_some(name)
}

/// Whether a signed URL may grant `path`: artifacts, their signature, provenance and SBOM, and
/// a channel's binary.
pub fn signable(path: &str) -> bool {
    if let Some(rest) = path.strip_prefix("/_velox/v1/artifacts/") {
        let digest = rest
            .strip_suffix(".minisig")
            .or_else(|| rest.strip_suffix("/provenance"))
            .or_else(|| rest.strip_suffix("/sbom"))
            .unwrap_or(rest);
        return digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
    }
    if let Some(rest) = path.strip_prefix("/_velox/v1/channels/") {
        let parts: Vec<&str> = rest.split('/').collect();
        return parts.len() == 3
            && parts.iter().all(|p| !p.is_empty())
            && parts[1] != "events"
            && parts[2] != "events";
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use Listener::*;

    #[test]
    fn every_route_has_its_row() {
        let get = Method::GET;
        let post = Method::POST;
        let del = Method::DELETE;
        let put = Method::PUT;
        let d = "0".repeat(64);
        let rows: &[(Listener, &Method, String, Need)] = &[
            (Public, &post, "/_velox/v1/builds".into(), Need::Build),
            (Public, &get, "/_velox/v1/builds".into(), Need::Read),
            (Public, &get, "/_velox/v1/builds/events".into(), Need::Read),
            (Public, &get, format!("/_velox/v1/builds/{d}"), Need::Open),
            (
                Public,
                &get,
                format!("/_velox/v1/artifacts/{d}"),
                Need::Read,
            ),
            (
                Public,
                &get,
                format!("/_velox/v1/artifacts/{d}.minisig"),
                Need::Read,
            ),
            (Public, &get, "/_velox/v1/keys".into(), Need::Read),
            (
                Public,
                &get,
                "/_velox/v1/channels/prod/linux/amd64".into(),
                Need::Read,
            ),
            (Public, &get, "/_velox/ui/".into(), Need::Read),
            (Public, &get, "/index.php".into(), Need::Open),
            (Public, &post, "/api/login".into(), Need::Open),
            (Public, &get, "/v2/".into(), Need::Read),
            (PublicProxy, &get, "/v2/".into(), Need::Open),
            (
                PublicProxy,
                &get,
                "/v2/rr/prod/manifests/latest".into(),
                Need::Open,
            ),
            (PublicProxy, &post, "/api/login".into(), Need::Open),
            (
                PublicProxy,
                &get,
                "/_velox/v1/channels/prod/linux/amd64".into(),
                Need::Read,
            ),
            (Admin, &get, "/healthz".into(), Need::Open),
            (Admin, &get, "/metrics".into(), Need::Open),
            (Admin, &get, "/v1/cache".into(), Need::Read),
            (Admin, &get, "/ui/".into(), Need::Read),
            (Admin, &del, "/v1/cache/abc".into(), Need::Admin),
            (Admin, &post, "/v1/cache/cleanup".into(), Need::Admin),
            (Admin, &put, "/v1/channels/prod".into(), Need::Admin),
            (Admin, &post, "/v1/cache/abc/pin".into(), Need::Admin),
            (Admin, &get, "/v1/builders".into(), Need::Read),
            (Admin, &post, "/v1/builders/0/drain".into(), Need::Admin),
            (Admin, &get, "/v1/tokens".into(), Need::Admin),
            (Admin, &del, "/v1/tokens/ci".into(), Need::Admin),
            (Admin, &post, "/v1/signed-urls".into(), Need::Admin),
            (
                Registry,
                &get,
                "/v2/rr/prod/manifests/latest".into(),
                Need::Read,
            ),
        ];
        for (l, m, p, want) in rows {
            assert_eq!(need(*l, m, p), *want, "{l:?} {m} {p}");
        }
    }

    /// docs/access.md's table says what this module does, row by row.
    #[test]
    fn every_row_of_docs_access_md() {
        let doc = include_str!("../../docs/access.md");
        let table = doc
            .split("## The table")
            .nth(1)
            .and_then(|t| t.split("\n\n").nth(2))
            .expect("docs/access.md has its table");
        let hex = "ab".repeat(32);
        let mut rows = 0;
        for line in table.lines().skip(2) {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let [listener, method, path, needs] = cells[..] else {
                panic!("not a row: {line}");
            };
            let listener = match listener {
                "public" => Public,
                "admin" => Admin,
                "registry" => Registry,
                other => panic!("listener {other}"),
            };
            let method: Method = method.parse().expect("method");
            let path = path
                .trim_matches('`')
                .replace("{sha256}", &hex)
                .replace("{key}", &hex)
                .replace("{name}", "prod");
            let want = match needs.split(' ').next() {
                Some("open") => Need::Open,
                Some("read") => Need::Read,
                Some("build") => Need::Build,
                Some("admin") => Need::Admin,
                _ => panic!("needs {needs}"),
            };
            assert_eq!(need(listener, &method, &path), want, "{line}");
            rows += 1;
        }
        assert!(rows >= 40, "{rows} rows");
    }

    #[test]
    fn channels_and_signable_paths() {
        assert_eq!(
            channel_of("/_velox/v1/channels/prod/linux/amd64"),
            Some("prod")
        );
        assert_eq!(channel_of("/v1/channels/prod"), Some("prod"));
        assert_eq!(channel_of("/v2/rr/prod/manifests/latest"), Some("prod"));
        assert_eq!(channel_of("/_velox/v1/channels"), None);
        let d = "a".repeat(64);
        assert!(signable(&format!("/_velox/v1/artifacts/{d}")));
        assert!(signable(&format!("/_velox/v1/artifacts/{d}.minisig")));
        assert!(signable(&format!("/_velox/v1/artifacts/{d}/sbom")));
        assert!(signable(&format!("/_velox/v1/artifacts/{d}/provenance")));
        assert!(signable("/_velox/v1/channels/prod/linux/amd64"));
        assert!(!signable("/_velox/v1/channels/prod/events"));
        assert!(!signable("/_velox/v1/channels/prod"));
        assert!(!signable("/_velox/v1/builds"));
        assert!(!signable("/_velox/v1/artifacts/abc"));
    }
}
