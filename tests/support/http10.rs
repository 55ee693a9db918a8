//! An HTTP/1.0 upstream: Python's own `http.server` with its CGI handler
//! (`python3 -m http.server --cgi`), which answers every request `HTTP/1.0` and lets a CGI
//! script's output run to the close. Static files it serves with a `Content-Length`.
//!
//! The scripts of `tests/python/` are copied into a temp dir readable by all, with their exec
//! bits set: the CGI handler runs them as `nobody` when started as root. Python 3.13 deprecates
//! the CGI handler and 3.15 removes it; Debian 12 ships 3.11.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

use super::process::{daemon, free_port, require, Process};

pub struct PythonHttp10 {
    pub url: String,
    process: Process,
    _dir: TempDir,
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    for entry in std::fs::read_dir(from).expect("python scripts").flatten() {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy script");
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))
                .expect("chmod script");
        }
    }
}

impl PythonHttp10 {
    pub fn start() -> PythonHttp10 {
        require("python3", "python3");
        let dir = tempfile::tempdir().expect("python dir");
        let root = dir.path().join("www");
        copy_tree(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python"),
            &root,
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let port = free_port();
        let mut cmd = Command::new("python3");
        cmd.args([
            "-m",
            "http.server",
            "--cgi",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(&root)
        .arg(port.to_string());
        let process = daemon("python3 -m http.server", cmd, &dir.path().join("log"), port);
        PythonHttp10 {
            url: format!("http://127.0.0.1:{port}"),
            process,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        self.process.named_log()
    }
}
