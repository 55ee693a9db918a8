//! The rules a build request must follow (docs/build-requests.md, "Validation"): Velox's own, and
//! a few more.

use super::{BuildRequest, MAX_PLUGINS, MAX_STRING_BYTES};

impl BuildRequest {
    /// The rules Velox applies, checked here so that Velox is never called with a request it would
    /// refuse.
    pub(super) fn validate(&self) -> Result<(), String> {
        // Every string goes through here: a control character (a `\n` in `rr_version`, say)
        // would otherwise reach Velox's command lines and logs.
        let check_len = |name: &str, s: &str| {
            if s.len() > MAX_STRING_BYTES {
                Err(format!("`{name}` is longer than {MAX_STRING_BYTES} bytes"))
            } else if s.chars().any(char::is_control) {
                Err(format!("`{name}` holds a control character"))
            } else {
                Ok(())
            }
        };
        let non_empty = |name: &str, s: &str| {
            if s.trim().is_empty() {
                Err(format!("`{name}` is required"))
            } else {
                check_len(name, s)
            }
        };
        if let Some(id) = &self.request_id {
            check_len("request_id", id)?;
            if !id.is_empty() && !is_canonical_uuid(id) {
                return Err(
                    "`request_id` must be empty or a UUID in its canonical 8-4-4-4-12 hex form"
                        .into(),
                );
            }
        }
        non_empty("rr_version", &self.rr_version)?;
        if !valid_rr_version(&self.rr_version) {
            return Err(
                "`rr_version` must be a version (v1.2.3...), `master`, or a commit hash of 7 to 40 hex digits"
                    .into(),
            );
        }
        if let Some(p) = &self.target_platform {
            check_len("target_platform.os", &p.os)?;
            check_len("target_platform.arch", &p.arch)?;
        }
        if self.plugins.is_empty() {
            return Err("`plugins` must list at least one plugin".into());
        }
        for (name, n) in [
            ("plugins", self.plugins.len()),
            ("replaces", self.replaces.len()),
            ("excludes", self.excludes.len()),
        ] {
            if n > MAX_PLUGINS {
                return Err(format!(
                    "`{name}` has {n} items; at most {MAX_PLUGINS} are allowed"
                ));
            }
        }
        for (i, p) in self.plugins.iter().enumerate() {
            non_empty(&format!("plugins[{i}].module_name"), &p.module_name)?;
            // Before any Go module proxy or Velox sees it: the path becomes part of URLs.
            crate::builds::modpath::check_module_path(&p.module_name).map_err(|why| {
                format!(
                    "`plugins[{i}].module_name` ({:?}) is not a Go module path: {why}",
                    p.module_name
                )
            })?;
            non_empty(&format!("plugins[{i}].tag"), &p.tag)?;
        }
        for (i, r) in self.replaces.iter().enumerate() {
            non_empty(&format!("replaces[{i}].old"), &r.old)?;
            non_empty(&format!("replaces[{i}].new"), &r.new)?;
        }
        for (i, e) in self.excludes.iter().enumerate() {
            non_empty(&format!("excludes[{i}].module"), &e.module)?;
            non_empty(&format!("excludes[{i}].version"), &e.version)?;
        }
        Ok(())
    }
}

/// Velox's (protovalidate's) UUID rule: `^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`,
/// any version, either case. `uuid::Uuid::try_parse` also takes `urn:uuid:`, braces and the bare
/// 32-digit form, which Velox refuses.
pub(super) fn is_canonical_uuid(id: &str) -> bool {
    id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// `^(v\d+\.\d+\.\d+.*|master|[a-f0-9]{7,40})$`
fn valid_rr_version(v: &str) -> bool {
    if v == "master" {
        return true;
    }
    if (7..=40).contains(&v.len()) && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return true;
    }
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let mut rest = rest;
    for i in 0..3 {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        if i < 2 {
            let Some(r) = rest.strip_prefix('.') else {
                return false;
            };
            rest = r;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::tests::{base, parse, Edit};
    use super::*;

    #[test]
    fn validation_rules() {
        let cases: Vec<Edit> = vec![
            ("no version", Box::new(|v| v["rr_version"] = Value::Null)),
            (
                "bad version",
                Box::new(|v| v["rr_version"] = json!("2025.1.2")),
            ),
            ("short hash", Box::new(|v| v["rr_version"] = json!("abc12"))),
            (
                "upper hash",
                Box::new(|v| v["rr_version"] = json!("ABCDEF12")),
            ),
            ("empty plugins", Box::new(|v| v["plugins"] = json!([]))),
            (
                "empty tag",
                Box::new(|v| v["plugins"][0]["tag"] = json!("")),
            ),
            (
                "no module",
                Box::new(|v| v["plugins"][0]["module_name"] = Value::Null),
            ),
            (
                "bad id",
                Box::new(|v| v["request_id"] = json!("not-a-uuid")),
            ),
            ("replace", Box::new(|v| v["replaces"][0]["new"] = json!(""))),
            (
                "exclude",
                Box::new(|v| v["excludes"][0]["module"] = json!("")),
            ),
            (
                "long",
                Box::new(|v| v["plugins"][0]["tag"] = json!("x".repeat(513))),
            ),
            ("type", Box::new(|v| v["race"] = json!("yes"))),
            (
                "module path",
                Box::new(|v| v["plugins"][1]["module_name"] = json!("github.com/a/../b")),
            ),
            (
                "too many",
                Box::new(|v| {
                    v["plugins"] = Value::Array(
                        (0..300)
                            .map(|i| json!({"module_name": format!("example.com/m{i}"), "tag": "v1"}))
                            .collect(),
                    )
                }),
            ),
        ];
        for (name, edit) in cases {
            let mut v = base();
            edit(&mut v);
            assert!(parse(&v).is_err(), "{name} was accepted");
        }
        for ok in [
            "v1.2.3",
            "v2025.1.2-rc.1",
            "master",
            "abcdef0",
            &"a".repeat(40),
        ] {
            let mut v = base();
            v["rr_version"] = json!(ok);
            assert!(parse(&v).is_ok(), "{ok} was refused");
        }
        assert!(BuildRequest::parse(b"[1]").is_err());
        assert!(BuildRequest::parse(b"{").is_err());
    }

    #[test]
    fn a_bad_module_path_names_the_plugin() {
        let mut v = base();
        v["plugins"][1]["module_name"] = json!("github.com/x//y");
        let err = parse(&v).expect_err("invalid");
        assert_eq!(
            err.message,
            "`plugins[1].module_name` (\"github.com/x//y\") is not a Go module path: double slash"
        );
    }

    #[test]
    fn only_the_canonical_uuid_form_is_accepted() {
        let id = "b66d5617-64dd-419b-a68b-b002938320ab";
        for bad in [
            format!("urn:uuid:{id}"),
            format!("{{{id}}}"),
            id.replace('-', ""),
            format!(" {id}"),
            id.replacen('-', "+", 1),
            format!("{}g", &id[..35]),
        ] {
            let mut v = base();
            v["request_id"] = json!(bad);
            let err = parse(&v).expect_err(&bad);
            assert!(err.message.contains("request_id"), "{bad}: {err}");
            // A malformed id is not echoed back.
            assert_eq!(err.request_id, None, "{bad}");
        }
        let mut v = base();
        v["request_id"] = json!(id.to_uppercase());
        assert!(parse(&v).is_ok(), "upper case is a UUID to Velox too");
    }

    #[test]
    fn no_string_may_hold_a_control_character() {
        let cases: Vec<Edit> = vec![
            (
                "rr_version",
                Box::new(|v| v["rr_version"] = json!("v2025.1.2\nrm -rf /")),
            ),
            (
                "os",
                Box::new(|v| v["target_platform"]["os"] = json!("linux\u{0}")),
            ),
            (
                "arch",
                Box::new(|v| v["target_platform"]["arch"] = json!("amd\t64")),
            ),
            (
                "module",
                Box::new(|v| v["plugins"][0]["module_name"] = json!("github.com/a\r/b")),
            ),
            (
                "tag",
                Box::new(|v| v["plugins"][0]["tag"] = json!("v1.0.0\u{7f}")),
            ),
            (
                "replace",
                Box::new(|v| v["replaces"][0]["old"] = json!("a\u{85}b")),
            ),
            (
                "exclude",
                Box::new(|v| v["excludes"][0]["version"] = json!("v0.1.0\u{1b}[31m")),
            ),
        ];
        for (name, edit) in cases {
            let mut v = base();
            edit(&mut v);
            let err = parse(&v).expect_err(name);
            assert!(err.message.contains("control character"), "{name}: {err}");
        }
    }
}
