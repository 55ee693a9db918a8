//! The pool of Velox builders (docs/builders.md): `velox.servers` and `velox.health_interval`,
//! and the one builder that `server_url` alone stands for.
//!
//! A builder is a URL, or a table `{name, url, max_concurrent, path_map, artifact_root}`; what a
//! table leaves out comes from the top-level keys (`max_concurrent_builds`, `path_map`,
//! `artifact_root`). Its id is its `name`, or its position in the list.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::duration;
use super::validate::valid_http_url;
use super::{Config, PathMap};

/// `[velox]`: the builders and how often they are probed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VeloxConfig {
    /// The builders; empty: `server_url` alone.
    #[serde(
        deserialize_with = "server_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub servers: Vec<ServerEntry>,
    /// How often each builder of `servers` is probed.
    #[serde(with = "duration")]
    pub health_interval: Duration,
}

impl Default for VeloxConfig {
    fn default() -> Self {
        VeloxConfig {
            servers: Vec::new(),
            health_interval: Duration::from_secs(10),
        }
    }
}

/// One builder as written: a URL, or a table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServerEntry {
    Url(String),
    Table(ServerTable),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTable {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_map: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_root: Option<PathBuf>,
}

/// A list, or one comma-separated string of URLs (the environment's form:
/// `VELOX_CACHE_VELOX__SERVERS=http://a:9000,http://b:9000`).
fn server_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ServerEntry>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        One(String),
        Many(Vec<ServerEntry>),
    }
    Ok(match Given::deserialize(d)? {
        Given::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| ServerEntry::Url(s.to_owned()))
            .collect(),
        Given::Many(v) => v,
    })
}

/// A builder with every setting resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct BuilderSpec {
    pub id: String,
    pub url: String,
    pub max_concurrent: usize,
    pub path_map: Option<PathMap>,
    pub artifact_root: PathBuf,
}

/// Whether `id` may name a builder: it goes into URLs and metric labels.
fn valid_name(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Config {
    /// Whether the builders come from `velox.servers` (a pool: probed, and refused at once when
    /// all are down) rather than from `server_url` alone.
    pub fn pooled(&self) -> bool {
        !self.velox.servers.is_empty()
    }

    /// The builders, each with its settings resolved; `server_url` alone is builder `0`.
    pub fn builders(&self) -> Vec<BuilderSpec> {
        if self.velox.servers.is_empty() {
            return vec![BuilderSpec {
                id: "0".into(),
                url: self.server_url.clone(),
                max_concurrent: self.max_concurrent_builds,
                path_map: self.path_map(),
                artifact_root: self.artifact_root.clone(),
            }];
        }
        self.velox
            .servers
            .iter()
            .enumerate()
            .map(|(i, entry)| match entry {
                ServerEntry::Url(url) => BuilderSpec {
                    id: i.to_string(),
                    url: url.clone(),
                    max_concurrent: self.max_concurrent_builds,
                    path_map: self.path_map(),
                    artifact_root: self.artifact_root.clone(),
                },
                ServerEntry::Table(t) => BuilderSpec {
                    id: t.name.clone().unwrap_or_else(|| i.to_string()),
                    url: t.url.clone(),
                    max_concurrent: t.max_concurrent.unwrap_or(self.max_concurrent_builds),
                    path_map: match &t.path_map {
                        Some(pm) => PathMap::parse(pm),
                        None => self.path_map(),
                    },
                    artifact_root: t
                        .artifact_root
                        .clone()
                        .unwrap_or_else(|| self.artifact_root.clone()),
                },
            })
            .collect()
    }

    /// Builds that may call Velox at once: every builder's `max_concurrent` together.
    pub fn build_slots(&self) -> usize {
        if self.velox.servers.is_empty() {
            return self.max_concurrent_builds;
        }
        self.velox
            .servers
            .iter()
            .map(|e| match e {
                ServerEntry::Table(t) => t.max_concurrent.unwrap_or(self.max_concurrent_builds),
                ServerEntry::Url(_) => self.max_concurrent_builds,
            })
            .sum()
    }

    /// The checks of `velox.*` that the values alone allow; the error is (key, why).
    pub(super) fn validate_velox(&self) -> Result<(), (String, String)> {
        let v = &self.velox;
        if v.health_interval < Duration::from_millis(100) {
            return Err((
                "velox.health_interval".into(),
                "must be at least 100ms".into(),
            ));
        }
        let mut ids = std::collections::HashSet::new();
        for (i, entry) in v.servers.iter().enumerate() {
            let key = |field: &str| format!("velox.servers[{i}].{field}");
            let (url, table) = match entry {
                ServerEntry::Url(url) => (url, None),
                ServerEntry::Table(t) => (&t.url, Some(t)),
            };
            if !valid_http_url(url) {
                let key = match table {
                    Some(_) => key("url"),
                    None => format!("velox.servers[{i}]"),
                };
                return Err((
                    key,
                    "must be an http:// or https:// URL, such as http://velox-1:9000".into(),
                ));
            }
            let id = table
                .and_then(|t| t.name.clone())
                .unwrap_or_else(|| i.to_string());
            if !valid_name(&id) {
                return Err((
                    key("name"),
                    "must be 1 to 64 letters, digits, `-`, `_` or `.`".into(),
                ));
            }
            if !ids.insert(id.clone()) {
                return Err((
                    key("name"),
                    format!("`{id}` names another builder already (a builder without a name is named by its position)"),
                ));
            }
            let Some(t) = table else { continue };
            if t.max_concurrent == Some(0) {
                return Err((key("max_concurrent"), "must be at least 1".into()));
            }
            if let Some(pm) = &t.path_map {
                if PathMap::parse(pm).is_none() {
                    return Err((
                        key("path_map"),
                        "must be FROM=TO with two absolute paths".into(),
                    ));
                }
            }
            if t.artifact_root
                .as_ref()
                .is_some_and(|r| r.as_os_str().is_empty())
            {
                return Err((key("artifact_root"), "must not be empty".into()));
            }
        }
        Ok(())
    }

    /// What serving needs of `velox.servers`: each builder's `artifact_root` exists.
    pub(super) fn validate_velox_for_serving(&self) -> Result<(), (String, String)> {
        for (i, entry) in self.velox.servers.iter().enumerate() {
            if let ServerEntry::Table(ServerTable {
                artifact_root: Some(root),
                ..
            }) = entry
            {
                if !root.is_dir() {
                    return Err((
                        format!("velox.servers[{i}].artifact_root"),
                        format!(
                            "the folder {} does not exist (or is not a folder); this builder's artifacts must resolve inside it",
                            root.display()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `velox.servers` with the user names and passwords of its URLs masked.
    pub(super) fn masked_servers(&self) -> Vec<ServerEntry> {
        self.velox
            .servers
            .iter()
            .map(|e| match e {
                ServerEntry::Url(u) => ServerEntry::Url(crate::redact::url(u)),
                ServerEntry::Table(t) => ServerEntry::Table(ServerTable {
                    url: crate::redact::url(&t.url),
                    ..t.clone()
                }),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(servers: Vec<ServerEntry>) -> Config {
        let mut c = Config::default();
        c.velox.servers = servers;
        c
    }

    fn table(name: Option<&str>, url: &str) -> ServerTable {
        ServerTable {
            name: name.map(str::to_owned),
            url: url.into(),
            max_concurrent: None,
            path_map: None,
            artifact_root: None,
        }
    }

    fn refused(c: &Config) -> String {
        c.validate().expect_err("refused").0
    }

    #[test]
    fn server_url_alone_is_builder_zero() {
        let c = Config::default();
        let b = c.builders();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].id, "0");
        assert_eq!(b[0].url, c.server_url);
        assert_eq!(b[0].max_concurrent, c.max_concurrent_builds);
        assert!(!c.pooled());
        assert_eq!(c.build_slots(), c.max_concurrent_builds);
    }

    #[test]
    fn tables_take_what_they_leave_out_from_the_top_level() {
        let mut c = with(vec![
            ServerEntry::Url("http://a:9000".into()),
            ServerEntry::Table(ServerTable {
                max_concurrent: Some(2),
                path_map: Some("/tmp=/srv/b".into()),
                artifact_root: Some("/srv/b".into()),
                ..table(Some("b"), "http://b:9000")
            }),
        ]);
        c.max_concurrent_builds = 3;
        c.path_map = Some("/tmp=/srv/a".into());
        let b = c.builders();
        assert_eq!((b[0].id.as_str(), b[0].max_concurrent), ("0", 3));
        assert_eq!(b[0].path_map, PathMap::parse("/tmp=/srv/a"));
        assert_eq!((b[1].id.as_str(), b[1].max_concurrent), ("b", 2));
        assert_eq!(b[1].path_map, PathMap::parse("/tmp=/srv/b"));
        assert_eq!(b[1].artifact_root, PathBuf::from("/srv/b"));
        assert_eq!(c.build_slots(), 5);
        assert!(c.pooled());
        c.validate().expect("valid");
    }

    #[test]
    fn bad_builders_are_refused_naming_the_key() {
        let c = with(vec![ServerEntry::Url("velox:9000".into())]);
        assert!(
            refused(&c).contains("`velox.servers[0]`"),
            "{}",
            refused(&c)
        );
        let c = with(vec![
            ServerEntry::Url("http://a".into()),
            ServerEntry::Table(table(Some("x"), "127.0.0.1:9000")),
        ]);
        assert!(refused(&c).contains("`velox.servers[1].url`"));
        let c = with(vec![
            ServerEntry::Table(table(Some("x"), "http://a")),
            ServerEntry::Table(table(Some("x"), "http://b")),
        ]);
        assert!(refused(&c).contains("`velox.servers[1].name`"));
        // A name may not take another builder's position.
        let c = with(vec![
            ServerEntry::Table(table(Some("1"), "http://a")),
            ServerEntry::Url("http://b".into()),
        ]);
        assert!(refused(&c).contains("`velox.servers[1].name`"));
        let c = with(vec![ServerEntry::Table(table(Some("a b"), "http://a"))]);
        assert!(refused(&c).contains("`velox.servers[0].name`"));
        let c = with(vec![ServerEntry::Table(ServerTable {
            max_concurrent: Some(0),
            ..table(None, "http://a")
        })]);
        assert!(refused(&c).contains("`velox.servers[0].max_concurrent`"));
        let c = with(vec![ServerEntry::Table(ServerTable {
            path_map: Some("tmp=/x".into()),
            ..table(None, "http://a")
        })]);
        assert!(refused(&c).contains("`velox.servers[0].path_map`"));
        let c = with(vec![ServerEntry::Table(ServerTable {
            artifact_root: Some("/no/such/folder/here".into()),
            ..table(None, "http://a")
        })]);
        c.validate().expect("the values alone are fine");
        let e = c.validate_for_serving().expect_err("refused").0;
        assert!(e.contains("`velox.servers[0].artifact_root`"), "{e}");
        let mut c = Config::default();
        c.velox.health_interval = Duration::ZERO;
        assert!(refused(&c).contains("`velox.health_interval`"));
    }
}
