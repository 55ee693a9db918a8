//! nginx in front of PHP-FPM, the production shape of a PHP app (Debian's `nginx-light` and
//! `php-fpm`): both started on loopback ports with configs generated in a temp dir, serving a
//! folder of PHP scripts, stopped on drop. nginx answers a PHP script that sets no length with
//! chunked encoding.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use super::process::{daemon, free_port, is_root, require, Process};

pub struct NginxFpm {
    pub url: String,
    // Dropped in this order: nginx, then PHP-FPM, then their folder.
    nginx: Process,
    fpm: Process,
    dir: TempDir,
}

/// Debian installs PHP-FPM as `/usr/sbin/php-fpm<version>`.
fn php_fpm() -> PathBuf {
    let found = std::fs::read_dir("/usr/sbin")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("php-fpm"))
        });
    found.unwrap_or_else(|| {
        panic!("the tests need PHP-FPM (apt-get install php-fpm; scripts/test installs it)")
    })
}

impl NginxFpm {
    /// Serves the PHP scripts of `docroot`.
    pub fn start(docroot: &Path) -> NginxFpm {
        require("nginx", "nginx-light");
        let dir = tempfile::tempdir().expect("nginx dir");
        let d = dir.path();
        let (fpm_port, port) = (free_port(), free_port());
        let root = is_root();

        let fpm_conf = d.join("php-fpm.conf");
        let fpm_user = if root {
            "user = root\ngroup = root\n"
        } else {
            ""
        };
        std::fs::write(
            &fpm_conf,
            format!(
                "[global]\nerror_log = {log}\ndaemonize = no\n\n\
                 [app]\nlisten = 127.0.0.1:{fpm_port}\n{fpm_user}\
                 pm = static\npm.max_children = 4\ncatch_workers_output = yes\n",
                log = d.join("php-fpm.log").display(),
            ),
        )
        .expect("php-fpm.conf");
        let mut cmd = Command::new(php_fpm());
        cmd.args(["-F", "-y"]).arg(&fpm_conf);
        if root {
            cmd.arg("--allow-to-run-as-root");
        }
        let fpm = daemon("php-fpm", cmd, &d.join("php-fpm.out"), fpm_port);

        let server = format!(
            "root {docroot};\n\
             index index.php;\n\
             location / {{ try_files $uri /index.php$is_args$args; }}\n\
             location ~ \\.php$ {{\n\
               include /etc/nginx/fastcgi_params;\n\
               fastcgi_param SCRIPT_FILENAME $realpath_root$fastcgi_script_name;\n\
               fastcgi_pass 127.0.0.1:{fpm_port};\n\
               fastcgi_buffering off;\n\
             }}\n",
            docroot = docroot.display(),
        );
        let nginx = start_nginx(d, port, &server);
        NginxFpm {
            url: format!("http://127.0.0.1:{port}"),
            nginx,
            fpm,
            dir,
        }
    }

    pub fn log_text(&self) -> String {
        let error = std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
        format!(
            "{}\n{}\n--- nginx error.log ---\n{error}",
            self.nginx.named_log(),
            self.fpm.named_log()
        )
    }
}

/// Starts nginx in `d` on 127.0.0.1:`port` with one `server` holding `server_body`.
fn start_nginx(d: &Path, port: u16, server_body: &str) -> Process {
    let conf = d.join("nginx.conf");
    let path = |name: &str| d.join(name).display().to_string();
    std::fs::write(
        &conf,
        format!(
            "{user}worker_processes 1;\npid {pid};\nerror_log {error};\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
               access_log {access};\n\
               client_body_temp_path {body};\n  fastcgi_temp_path {fastcgi};\n\
               proxy_temp_path {proxy};\n  scgi_temp_path {scgi};\n  uwsgi_temp_path {uwsgi};\n\
               client_max_body_size 64m;\n\
               server {{\n  listen 127.0.0.1:{port};\n{server_body}}}\n\
             }}\n",
            user = if is_root() { "user root;\n" } else { "" },
            pid = path("nginx.pid"),
            error = path("error.log"),
            access = path("access.log"),
            body = path("body"),
            fastcgi = path("fastcgi"),
            proxy = path("proxy"),
            scgi = path("scgi"),
            uwsgi = path("uwsgi"),
        ),
    )
    .expect("nginx.conf");
    let mut cmd = Command::new("nginx");
    cmd.arg("-e")
        .arg(d.join("error.log"))
        .arg("-p")
        .arg(d)
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"]);
    daemon("nginx", cmd, &d.join("nginx.out"), port)
}

/// nginx as a plain reverse proxy on `port` to `to` (an `http://` URL), as an operator might put
/// one between a load balancer and velox-cache. It passes `Via` on as it came.
pub struct NginxProxy {
    pub url: String,
    _nginx: Process,
    _dir: TempDir,
}

impl NginxProxy {
    pub fn start(port: u16, to: &str) -> NginxProxy {
        require("nginx", "nginx-light");
        let dir = tempfile::tempdir().expect("nginx dir");
        let server =
            format!("location / {{\n  proxy_pass {to};\n  proxy_set_header Host $host;\n}}\n");
        let nginx = start_nginx(dir.path(), port, &server);
        NginxProxy {
            url: format!("http://127.0.0.1:{port}"),
            _nginx: nginx,
            _dir: dir,
        }
    }
}
