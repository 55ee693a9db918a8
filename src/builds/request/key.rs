//! The cache key of a build request (docs/build-requests.md, "The cache key"), its file name, and
//! what a manifest keeps of it.

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::{BuildRequest, Exclude, Plugin, Replace};
use crate::ids::CacheKey;

/// Version tag of the canonical key encoding. Changing the encoding means a new tag, so old and
/// new keys can never collide.
const KEY_DOMAIN: &[u8] = b"velox-cache/key/v1\0";

impl BuildRequest {
    /// The cache key: SHA-256 of a versioned, length-prefixed canonical encoding of exactly the
    /// fields that shape the binary. Plugins, replaces and excludes are sorted; `request_id` and
    /// `force_rebuild` are left out.
    pub fn cache_key(&self) -> CacheKey {
        let mut h = Sha256::new();
        h.update(KEY_DOMAIN);
        let mut put = |s: &str| {
            h.update((s.len() as u32).to_be_bytes());
            h.update(s.as_bytes());
        };
        put(&self.rr_version);
        match &self.target_platform {
            None => put("\u{0}none"),
            Some(p) => {
                put("\u{0}platform");
                put(&p.os);
                put(&p.arch);
            }
        }
        let mut plugins: Vec<&Plugin> = self.plugins.iter().collect();
        plugins.sort();
        put(&format!("\u{0}plugins:{}", plugins.len()));
        for p in plugins {
            put(&p.module_name);
            put(&p.tag);
        }
        let mut replaces: Vec<&Replace> = self.replaces.iter().collect();
        replaces.sort();
        put(&format!("\u{0}replaces:{}", replaces.len()));
        for r in replaces {
            put(&r.old);
            put(&r.new);
        }
        let mut excludes: Vec<&Exclude> = self.excludes.iter().collect();
        excludes.sort();
        put(&format!("\u{0}excludes:{}", excludes.len()));
        for e in excludes {
            put(&e.module);
            put(&e.version);
        }
        put(if self.race {
            "\u{0}race:1"
        } else {
            "\u{0}race:0"
        });
        put(if self.debug {
            "\u{0}debug:1"
        } else {
            "\u{0}debug:0"
        });
        CacheKey(h.finalize().into())
    }

    /// The download name: `roadrunner-<os>-<arch>`, `.exe` for windows, `roadrunner` without a
    /// platform. Characters that could break a header are replaced.
    pub fn file_name(&self) -> String {
        match &self.target_platform {
            None => "roadrunner".to_owned(),
            Some(p) if p.os.is_empty() && p.arch.is_empty() => "roadrunner".to_owned(),
            Some(p) => {
                let clean = |s: &str| -> String {
                    s.chars()
                        .map(|c| {
                            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                                c
                            } else {
                                '_'
                            }
                        })
                        .collect()
                };
                let exe = if p.os.eq_ignore_ascii_case("windows") {
                    ".exe"
                } else {
                    ""
                };
                format!("roadrunner-{}-{}{exe}", clean(&p.os), clean(&p.arch))
            }
        }
    }

    /// What the manifest keeps of the request: everything that shaped the binary, without the
    /// per-call `request_id` and `force_rebuild`.
    pub fn manifest_payload(&self) -> serde_json::Value {
        let kept = BuildRequest {
            request_id: None,
            force_rebuild: false,
            ..self.clone()
        };
        serde_json::to_value(kept).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::tests::{base, key, parse, Edit};

    #[test]
    fn plugin_order_never_changes_the_key() {
        let a = base();
        let mut b = base();
        b["plugins"].as_array_mut().expect("array").reverse();
        assert_eq!(key(&a), key(&b));
        let mut c = base();
        c["replaces"] = json!([{"old": "z", "new": "z2"}, {"old": "a", "new": "a2"}]);
        let mut d = base();
        d["replaces"] = json!([{"old": "a", "new": "a2"}, {"old": "z", "new": "z2"}]);
        assert_eq!(key(&c), key(&d));
    }

    #[test]
    fn request_id_and_force_rebuild_are_not_in_the_key() {
        let a = base();
        let mut b = base();
        b["request_id"] = json!("");
        b["force_rebuild"] = json!(true);
        assert_eq!(key(&a), key(&b));
    }

    #[test]
    fn every_shaping_field_changes_the_key() {
        let k0 = key(&base());
        let edits: Vec<Edit> = vec![
            (
                "version",
                Box::new(|v| v["rr_version"] = json!("v2025.1.3")),
            ),
            (
                "os",
                Box::new(|v| v["target_platform"]["os"] = json!("windows")),
            ),
            (
                "arch",
                Box::new(|v| v["target_platform"]["arch"] = json!("arm64")),
            ),
            (
                "no platform",
                Box::new(|v| v["target_platform"] = Value::Null),
            ),
            ("race", Box::new(|v| v["race"] = json!(true))),
            ("debug", Box::new(|v| v["debug"] = json!(true))),
            (
                "plugin tag",
                Box::new(|v| v["plugins"][0]["tag"] = json!("v5.2.8")),
            ),
            (
                "plugin gone",
                Box::new(|v| {
                    v["plugins"].as_array_mut().expect("array").pop();
                }),
            ),
            (
                "replace new",
                Box::new(|v| v["replaces"][0]["new"] = json!("github.com/c/b@v1.2.4")),
            ),
            ("replace gone", Box::new(|v| v["replaces"] = json!([]))),
            (
                "exclude version",
                Box::new(|v| v["excludes"][0]["version"] = json!("v0.1.1")),
            ),
            ("exclude gone", Box::new(|v| v["excludes"] = json!([]))),
        ];
        let mut seen = std::collections::HashSet::new();
        seen.insert(k0);
        for (name, edit) in edits {
            let mut v = base();
            edit(&mut v);
            assert!(seen.insert(key(&v)), "{name} did not change the key");
        }
    }

    #[test]
    fn absent_platform_differs_from_an_empty_one() {
        let mut a = base();
        a["target_platform"] = Value::Null;
        let mut b = base();
        b["target_platform"] = json!({"os": "", "arch": ""});
        assert_ne!(key(&a), key(&b));
    }

    #[test]
    fn field_boundaries_cannot_be_shifted() {
        let mut a = base();
        a["plugins"] = json!([{"module_name": "example.com/ab", "tag": "c"}]);
        let mut b = base();
        b["plugins"] = json!([{"module_name": "example.com/a", "tag": "bc"}]);
        assert_ne!(key(&a), key(&b));
    }

    #[test]
    fn file_names() {
        let mut v = base();
        assert_eq!(
            parse(&v).expect("valid").file_name(),
            "roadrunner-linux-amd64"
        );
        v["target_platform"] = json!({"os": "windows", "arch": "amd64"});
        assert_eq!(
            parse(&v).expect("valid").file_name(),
            "roadrunner-windows-amd64.exe"
        );
        v["target_platform"] = Value::Null;
        assert_eq!(parse(&v).expect("valid").file_name(), "roadrunner");
        // Control characters are refused outright; quotes and spaces are replaced.
        v["target_platform"] = json!({"os": "li\"nux; x", "arch": "amd64"});
        assert_eq!(
            parse(&v).expect("valid").file_name(),
            "roadrunner-li_nux__x-amd64"
        );
    }
}
