//! Real download tools against the server: an interrupted download resumed with `curl -C -` or
//! `wget -c`.

use std::path::Path;
use std::process::{Command, Stdio};

/// `name` as a command, after checking it is installed.
pub fn tool(name: &str) -> Command {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "the resume test needs `{name}` (apt-get install {name}; scripts/test installs it)"
    );
    Command::new(name)
}

/// What an interrupted download leaves behind: the first third of the file, cut mid-way through
/// a block. (Cutting a real download slowed with `--limit-rate` is not reliable: curl 7.88's
/// limiter was seen letting 500 KB through in 4 ms under a 128 KiB/s limit on loopback.)
fn interrupted(file: &Path, whole: &[u8]) {
    let cut = whole.len() / 3 + 7;
    assert!(cut < whole.len(), "the binary is too small to cut");
    std::fs::write(file, &whole[..cut]).expect("partial file");
}

/// Resumes an interrupted download of `link` with `curl -C -`, and checks that the resume was a
/// 206 and the file is `whole`.
pub fn curl_resumes(dir: &Path, link: &str, whole: &[u8]) {
    let file = dir.join("rr-curl");
    interrupted(&file, whole);
    let headers = dir.join("curl-headers");
    let status = tool("curl")
        .args(["-sS", "-f", "-C", "-", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&file)
        .arg(link)
        .status()
        .expect("curl -C -");
    assert!(status.success(), "curl -C - failed: {status}");
    let dumped = std::fs::read_to_string(&headers).expect("headers");
    assert!(dumped.starts_with("HTTP/1.1 206"), "{dumped}");
    assert!(
        std::fs::read(&file).expect("file") == whole,
        "curl's file is the binary"
    );
}

/// The same with `wget -c`.
pub fn wget_resumes(dir: &Path, link: &str, whole: &[u8]) {
    let file = dir.join("rr-wget");
    interrupted(&file, whole);
    let out = tool("wget")
        .args(["-S", "-c", "-O"])
        .arg(&file)
        .arg(link)
        .output()
        .expect("wget -c");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "wget -c failed: {log}");
    assert!(log.contains("HTTP/1.1 206"), "{log}");
    assert!(
        std::fs::read(&file).expect("file") == whole,
        "wget's file is the binary"
    );
}
