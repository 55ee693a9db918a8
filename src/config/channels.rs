//! `[channels.<name>]` and `[prebuild]` (docs/channels.md): named recipes whose current binaries
//! have stable URLs and are built before anyone asks.
//!
//! The recipe's fields are those of a build request (docs/build-requests.md) but `request_id`,
//! `force_rebuild` and `target_platform`; the build layer checks them against the build request's
//! rules (`crate::preflight`), since this layer imports nothing of it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;
use super::lenient::lenient_opt_string;

/// Most channels (in the file and through the API together).
pub const MAX_CHANNELS: usize = 256;
/// Most releases a channel keeps.
pub const MAX_KEEP: u32 = 100;
/// Most platforms of one channel.
pub const MAX_PLATFORMS: usize = 16;

/// Go's operating systems (`go tool dist list`).
const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "illumos",
    "ios",
    "js",
    "linux",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
];
/// Go's architectures (`go tool dist list`).
const KNOWN_ARCH: &[&str] = &[
    "386", "amd64", "arm", "arm64", "loong64", "mips", "mips64", "mips64le", "mipsle", "ppc64",
    "ppc64le", "riscv64", "s390x", "wasm",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipePlugin {
    #[serde(alias = "moduleName")]
    pub module_name: String,
    pub tag: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeReplace {
    pub old: String,
    pub new: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeExclude {
    pub module: String,
    pub version: String,
}

/// What a channel builds: a build request without its id, `force_rebuild` or platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    #[serde(default, alias = "rrVersion")]
    pub rr_version: String,
    #[serde(default)]
    pub plugins: Vec<RecipePlugin>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<RecipeReplace>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<RecipeExclude>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub race: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub debug: bool,
}

/// One channel as the file (`[channels.<name>]`) or `PUT /v1/channels/{name}` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    #[serde(default, alias = "rrVersion")]
    pub rr_version: String,
    #[serde(default)]
    pub plugins: Vec<RecipePlugin>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<RecipeReplace>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<RecipeExclude>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub race: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub debug: bool,
    #[serde(default = "default_platforms")]
    pub platforms: Vec<String>,
    #[serde(default = "default_keep")]
    pub keep: u32,
}

fn default_platforms() -> Vec<String> {
    vec!["linux/amd64".into()]
}

fn default_keep() -> u32 {
    3
}

/// `[prebuild]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrebuildConfig {
    /// How often every channel is resolved again; 0 = never (but once at start).
    #[serde(with = "duration")]
    pub poll: Duration,
    /// Pre-builds running at once.
    pub max_concurrent: usize,
    /// Receives a signed JSON POST on each release flip and each failed pre-build.
    #[serde(
        deserialize_with = "lenient_opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub webhook_url: Option<String>,
    /// Standard Webhooks' secret (`whsec_<base64>`).
    #[serde(
        deserialize_with = "lenient_opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub webhook_secret: Option<String>,
}

impl Default for PrebuildConfig {
    fn default() -> Self {
        PrebuildConfig {
            poll: Duration::from_secs(600),
            max_concurrent: 1,
            webhook_url: None,
            webhook_secret: None,
        }
    }
}

/// Whether `name` is a channel name: `[a-z0-9][a-z0-9._-]{0,63}`.
pub fn valid_channel_name(name: &str) -> bool {
    let b = name.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 64
        && ok(&b[0])
        && b[1..]
            .iter()
            .all(|c| ok(c) || matches!(c, b'.' | b'_' | b'-'))
}

/// `os/arch` split and checked against Go's lists.
pub fn parse_platform(p: &str) -> Result<(&str, &str), String> {
    let Some((os, arch)) = p.split_once('/') else {
        return Err(format!("`{p}` is not os/arch, such as linux/amd64"));
    };
    if !KNOWN_OS.contains(&os) {
        return Err(format!(
            "`{os}` is not an operating system Go builds for ({})",
            KNOWN_OS.join(", ")
        ));
    }
    if !KNOWN_ARCH.contains(&arch) {
        return Err(format!(
            "`{arch}` is not an architecture Go builds for ({})",
            KNOWN_ARCH.join(", ")
        ));
    }
    Ok((os, arch))
}

impl ChannelConfig {
    /// The recipe part (serde's `flatten` would not refuse unknown fields).
    pub fn recipe(&self) -> Recipe {
        Recipe {
            rr_version: self.rr_version.clone(),
            plugins: self.plugins.clone(),
            replaces: self.replaces.clone(),
            excludes: self.excludes.clone(),
            race: self.race,
            debug: self.debug,
        }
    }

    /// Checks what the channel layer alone knows (not the recipe's build rules). Errors name
    /// the field, relative to the channel.
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.platforms.is_empty() {
            return Err(("platforms".into(), "must name at least one os/arch".into()));
        }
        if self.platforms.len() > MAX_PLATFORMS {
            return Err((
                "platforms".into(),
                format!("must name at most {MAX_PLATFORMS} platforms"),
            ));
        }
        for (i, p) in self.platforms.iter().enumerate() {
            parse_platform(p).map_err(|why| (format!("platforms[{i}]"), why))?;
            if self.platforms[..i].contains(p) {
                return Err((format!("platforms[{i}]"), format!("`{p}` is named twice")));
            }
        }
        if !(1..=MAX_KEEP).contains(&self.keep) {
            return Err((
                "keep".into(),
                format!("must be a number from 1 to {MAX_KEEP}"),
            ));
        }
        Ok(())
    }
}

/// Checks `[channels]` and `[prebuild]`.
pub(super) fn validate(
    channels: &BTreeMap<String, ChannelConfig>,
    prebuild: &PrebuildConfig,
) -> Result<(), (String, String)> {
    if channels.len() > MAX_CHANNELS {
        return Err((
            "channels".into(),
            format!("at most {MAX_CHANNELS} channels"),
        ));
    }
    for (name, channel) in channels {
        if !valid_channel_name(name) {
            return Err((
                format!("channels.{name}"),
                "a channel name is 1 to 64 of a-z, 0-9, `.`, `_` and `-`, starting with a letter or digit".into(),
            ));
        }
        channel
            .check()
            .map_err(|(field, why)| (format!("channels.{name}.{field}"), why))?;
    }
    if prebuild.max_concurrent == 0 || prebuild.max_concurrent > 64 {
        return Err((
            "prebuild.max_concurrent".into(),
            "must be a number from 1 to 64".into(),
        ));
    }
    if !prebuild.poll.is_zero() && prebuild.poll < Duration::from_secs(1) {
        return Err((
            "prebuild.poll".into(),
            "must be 0 (off) or at least 1s".into(),
        ));
    }
    match (&prebuild.webhook_url, &prebuild.webhook_secret) {
        (Some(u), _) if !super::validate::valid_http_url(u) => Err((
            "prebuild.webhook_url".into(),
            "must be an http:// or https:// URL".into(),
        )),
        (Some(_), None) => Err((
            "prebuild.webhook_secret".into(),
            "is required with prebuild.webhook_url: receivers verify each delivery with it".into(),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        for ok in ["prod", "a", "0", "queue-workers", "v2.1_x", &"a".repeat(64)] {
            assert!(valid_channel_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Prod",
            "-x",
            ".x",
            "_x",
            "a/b",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(!valid_channel_name(bad), "{bad}");
        }
    }

    #[test]
    fn platforms() {
        assert_eq!(parse_platform("linux/arm64"), Ok(("linux", "arm64")));
        assert!(parse_platform("linux").is_err());
        assert!(parse_platform("beos/amd64").is_err());
        assert!(parse_platform("linux/z80").is_err());
        assert!(parse_platform("linux/amd64/v3").is_err());
    }

    #[test]
    fn the_file_form_reads() {
        let c: ChannelConfig = toml::from_str(
            r#"
            rr_version = "v2025.1.2"
            plugins = [{ module_name = "github.com/roadrunner-server/http/v5", tag = "latest" }]
            platforms = ["linux/amd64", "linux/arm64"]
            keep = 3
            "#,
        )
        .expect("valid");
        assert_eq!(c.platforms.len(), 2);
        assert_eq!(c.plugins[0].tag, "latest");
        assert!(c.check().is_ok());
        let defaults: ChannelConfig = toml::from_str("rr_version = \"v2025.1.2\"").expect("valid");
        assert_eq!(defaults.platforms, vec!["linux/amd64"]);
        assert_eq!(defaults.keep, 3);
        assert!(toml::from_str::<ChannelConfig>("rr_versio = \"x\"").is_err());
        assert!(
            serde_json::from_str::<ChannelConfig>(r#"{"rr_version": "x", "extra": 1}"#).is_err()
        );
    }
}
