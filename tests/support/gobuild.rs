//! Real Go builds without a network, for the SBOM tests and benchmark: a folder holding a
//! file-system GOPROXY (`<module>/@v/list`, `<version>.info`, `.mod`, `.zip`, module paths
//! case-encoded), a GOPATH, HOME and GOCACHE, and the `go` command (Debian's `golang-go`) run with
//! `GOSUMDB=off` and `GOFLAGS=-mod=mod -modcacherw`, so go.sum gets the real `h1:` sums of what the proxy
//! serves.
//!
//! Included by path (`#[path = "support/gobuild.rs"]`) from the files that use it, so the other
//! test files do not compile it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

pub struct GoWorkspace {
    root: PathBuf,
}

impl GoWorkspace {
    /// A fresh workspace at `root` (what an earlier run left there is removed first). The callers
    /// keep it in a `OnceLock`, which is never dropped, so it lives under the target dir's
    /// temporary folder with a fixed name: one copy at most, never a leak per run.
    pub fn at(root: PathBuf) -> GoWorkspace {
        if root.exists() {
            std::fs::remove_dir_all(&root).expect("remove an earlier workspace");
        }
        for sub in ["proxy", "home", "gopath", "cache", "src"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        GoWorkspace { root }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Writes `contents` at `rel` under the workspace, making folders as needed.
    pub fn write(&self, rel: &str, contents: &[u8]) {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, contents).expect("write");
    }

    /// Publishes `module@version` with `files` (which must include `go.mod`) in the proxy: the
    /// zip in the module zip format (every file under `<module>@<version>/`), made with Python's
    /// zipfile.
    pub fn publish(&self, module: &str, version: &str, files: &[(&str, &str)]) {
        let dir = self.path("proxy").join(case_encode(module)).join("@v");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let list = dir.join("list");
        let mut versions = std::fs::read_to_string(&list).unwrap_or_default();
        versions.push_str(version);
        versions.push('\n');
        std::fs::write(&list, versions).expect("list");
        let info = serde_json::json!({"Version": version, "Time": "2024-01-02T03:04:05Z"});
        std::fs::write(dir.join(format!("{version}.info")), info.to_string()).expect("info");
        let go_mod = files
            .iter()
            .find(|(name, _)| *name == "go.mod")
            .map(|(_, contents)| *contents)
            .expect("a module has a go.mod");
        std::fs::write(dir.join(format!("{version}.mod")), go_mod).expect("mod");
        let entries: Vec<(String, &str)> = files
            .iter()
            .map(|(name, contents)| (format!("{module}@{version}/{name}"), *contents))
            .collect();
        let script = "import json, sys, zipfile\n\
                      out, entries = sys.argv[1], json.load(sys.stdin)\n\
                      with zipfile.ZipFile(out, 'w') as z:\n    \
                          for name, contents in entries:\n        \
                              z.writestr(name, contents)\n";
        let zip = dir.join(format!("{version}.zip"));
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&zip)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("python3 (scripts/test installs it)");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(serde_json::to_string(&entries).expect("json").as_bytes())
                .expect("write zip entries");
        }
        assert!(
            child.wait().expect("python3").success(),
            "zip {module}@{version}"
        );
    }

    /// `go <args>` in `rel` with the workspace's environment plus `env`; panics with go's output
    /// when it fails.
    pub fn go(&self, rel: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("go");
        cmd.args(args)
            .current_dir(self.path(rel))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path("home"))
            .env("GOPATH", self.path("gopath"))
            .env("GOCACHE", self.path("cache"))
            .env("GOENV", "off")
            .env(
                "GOPROXY",
                format!("file://{}", self.path("proxy").display()),
            )
            .env("GOSUMDB", "off")
            // -modcacherw: the module cache is otherwise read-only, and could not be removed.
            .env("GOFLAGS", "-mod=mod -modcacherw")
            .env("GOTOOLCHAIN", "local")
            .env("CGO_ENABLED", "0");
        for (key, value) in env {
            cmd.env(key, value);
        }
        let out = cmd
            .output()
            .expect("the go command (scripts/test installs Debian's golang-go)");
        assert!(
            out.status.success(),
            "go {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// The proxy's case encoding: each upper-case letter is `!` and its lower case.
pub fn case_encode(path: &str) -> String {
    let mut out = String::new();
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('!');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}
