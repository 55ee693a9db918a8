//! Go's module path rules (`golang.org/x/mod/module.CheckPath`), checked on every plugin's
//! `module_name` before anything is asked of a Go module proxy or of Velox: a path that Go itself
//! would refuse (`..`, an empty element, a space, a `%`, a leading slash) is a 400 here rather
//! than a URL built from it.
//!
//! The rules: the path is non-empty UTF-8 without a leading dash, a double slash or a trailing
//! slash; every element is non-empty, not all dots, without a leading or trailing dot, of
//! `[A-Za-z0-9._~-]` only, not a Windows-reserved name (`CON`, `NUL`, `COM1`, ... before its
//! first dot, in any case) and not ending in a tilde and digits (a Windows short name); the first
//! element holds a dot and only `[a-z0-9.-]`; and a trailing major-version element is well formed
//! (`/v2` and up, never `/v0`, `/v1` or `/v02`; `gopkg.in/` paths end in `.vN`).

/// Windows device names, refused as an element (or an element's part before its first dot).
const WINDOWS_RESERVED: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Why `path` is not a Go module path, or `Ok` when it is.
pub fn check_module_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty module path".into());
    }
    if path.starts_with('-') {
        return Err("leading dash".into());
    }
    if path.contains("//") {
        return Err("double slash".into());
    }
    if path.ends_with('/') {
        return Err("trailing slash".into());
    }
    for elem in path.split('/') {
        check_element(elem)?;
    }
    let first = path.split('/').next().unwrap_or_default();
    if first.is_empty() {
        return Err("leading slash".into());
    }
    if !first.contains('.') {
        return Err("missing dot in first path element".into());
    }
    if let Some(c) = first
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-'))
    {
        return Err(format!("invalid char {c:?} in first path element"));
    }
    if !major_suffix_ok(path) {
        return Err("invalid major version suffix".into());
    }
    Ok(())
}

fn check_element(elem: &str) -> Result<(), String> {
    if elem.is_empty() {
        return Err("empty path element".into());
    }
    if elem.bytes().all(|b| b == b'.') {
        return Err(format!("invalid path element {elem:?}"));
    }
    if elem.starts_with('.') {
        return Err("leading dot in path element".into());
    }
    if elem.ends_with('.') {
        return Err("trailing dot in path element".into());
    }
    if let Some(c) = elem
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')))
    {
        return Err(format!("invalid char {c:?}"));
    }
    let short = elem.split('.').next().unwrap_or(elem);
    if WINDOWS_RESERVED
        .iter()
        .any(|bad| bad.eq_ignore_ascii_case(short))
    {
        return Err(format!(
            "{short:?} disallowed as path element component on Windows"
        ));
    }
    if let Some(tilde) = short.rfind('~') {
        let suffix = &short[tilde + 1..];
        if !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()) {
            return Err("trailing tilde and digits in path element".into());
        }
    }
    Ok(())
}

/// `module.SplitPathVersion`'s verdict: a path ending in `/vN` (or, under `gopkg.in/`, `.vN`)
/// names its major version properly.
fn major_suffix_ok(path: &str) -> bool {
    if path.starts_with("gopkg.in/") {
        let rest = path.strip_suffix("-unstable").unwrap_or(path);
        let digits = rest.len() - rest.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let head = &rest[..rest.len() - digits];
        if digits == 0 || !head.ends_with(".v") || head.len() <= 2 {
            return false;
        }
        let n = &rest[rest.len() - digits..];
        return !n.starts_with('0') || n == "0";
    }
    let tail = path.len()
        - path
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '.')
            .len();
    let i = path.len() - tail;
    let bytes = path.as_bytes();
    if i <= 1 || tail == 0 || bytes[i - 1] != b'v' || bytes[i - 2] != b'/' {
        return true;
    }
    let n = &path[i..];
    !(n.contains('.') || n.starts_with('0') || n == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths and whether Go's `module.CheckPath` accepts them.
    const PATHS: &[(&str, bool)] = &[
        ("github.com/roadrunner-server/http/v5", true),
        ("github.com/roadrunner-server/http", true),
        ("github.com/BurntSushi/toml", true),
        ("github.com/Azure/azure-sdk-for-go", true),
        ("go.temporal.io/sdk", true),
        ("golang.org/x/mod", true),
        ("example.com/a_b/c~d/e-f.g", true),
        ("example.com/x/v2", true),
        ("example.com/x/v10", true),
        ("example.com/v2x", true),
        ("gopkg.in/yaml.v3", true),
        ("gopkg.in/check.v1", true),
        ("gopkg.in/src-d/go-git.v4", true),
        ("gopkg.in/yaml.v0", true),
        ("gopkg.in/yaml.v3-unstable", true),
        ("example.com/com10", true),
        ("example.com/a~b", true),
        ("1.2.3.4/x", true),
        // Refused.
        ("", false),
        ("github.com/a/../b", false),
        ("github.com/a/./b", false),
        ("github.com/a//b", false),
        ("github.com/a/b/", false),
        ("/github.com/a", false),
        ("-github.com/a", false),
        ("github.com/.a", false),
        ("github.com/a.", false),
        ("github.com/a b", false),
        ("github.com/a%2Fb", false),
        ("github.com/a?b", false),
        ("github.com/a#b", false),
        ("github.com/a@v1", false),
        ("github.com/a+b", false),
        ("github.com/a\\b", false),
        ("github.com/é", false),
        ("github/a", false),
        ("m", false),
        ("GitHub.com/a", false),
        ("github_x.com/a", false),
        ("example.com/CON", false),
        ("example.com/nul.txt", false),
        ("example.com/Lpt3", false),
        ("example.com/PROGRA~1", false),
        ("example.com/x/v1", false),
        ("example.com/x/v0", false),
        ("example.com/x/v02", false),
        ("example.com/x/v2.0", false),
        ("gopkg.in/yaml", false),
        ("gopkg.in/yaml.v03", false),
        ("gopkg.in/yaml.v", false),
        ("..", false),
        ("example.com/...", false),
    ];

    #[test]
    fn path_table() {
        for (path, ok) in PATHS {
            assert_eq!(
                check_module_path(path).is_ok(),
                *ok,
                "{path:?}: {:?}",
                check_module_path(path)
            );
        }
    }

    #[test]
    fn the_reason_is_named() {
        assert_eq!(
            check_module_path("github.com/a/../b"),
            Err("invalid path element \"..\"".to_owned())
        );
        assert_eq!(
            check_module_path("github.com/a b"),
            Err("invalid char ' '".to_owned())
        );
    }
}
