//! Loading the configuration (docs/configuration.md): defaults < TOML file < environment < flags,
//! layered by figment, then checked, with messages that name the key and where its value came
//! from.
//!
//! Unknown keys are treated by origin. In the file they are mistakes: every one of them is
//! reported (serde stops at the first, so each is taken out in turn and the file read again).
//! In the environment they are usually not ours: Kubernetes gives every pod
//! `VELOX_CACHE_PORT=tcp://…`, `VELOX_CACHE_SERVICE_HOST` and the like when a Service is named
//! `velox-cache`. Those are taken out the same way and reported in one warning.

use std::path::{Path, PathBuf};

use figment::error::{Actual, Kind};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::{Config, ConfigError, FlagOverrides, ENV_CONFIG_FILE, ENV_PREFIX};

/// A checked configuration and what is worth a warning about how it was given.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Where a value came from; the provider's metadata name carries it through figment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    File,
    Env,
    Flags,
}

impl Origin {
    fn name(self) -> &'static str {
        match self {
            Origin::File => "velox-cache config file",
            Origin::Env => "velox-cache environment",
            Origin::Flags => "velox-cache command line",
        }
    }

    fn of(md: &Metadata) -> Option<Origin> {
        [Origin::File, Origin::Env, Origin::Flags]
            .into_iter()
            .find(|o| md.name == o.name())
    }
}

/// A provider with some key paths taken out, and its origin in its metadata.
struct Without<P> {
    inner: P,
    origin: Origin,
    file: Option<PathBuf>,
    drop: Vec<Vec<String>>,
}

impl<P: Provider> Provider for Without<P> {
    fn metadata(&self) -> Metadata {
        let md = Metadata::named(self.origin.name());
        match &self.file {
            Some(f) => md.source(f.as_path()),
            None => md,
        }
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut map = self.inner.data()?;
        for dict in map.values_mut() {
            for path in &self.drop {
                remove_path(dict, path);
            }
        }
        Ok(map)
    }
}

fn remove_path(dict: &mut Dict, path: &[String]) {
    match path {
        [] => {}
        [last] => {
            dict.remove(last);
        }
        [first, rest @ ..] => {
            if let Some(Value::Dict(_, inner)) = dict.get_mut(first) {
                remove_path(inner, rest);
            }
        }
    }
}

fn has_path(dict: &Dict, path: &[String]) -> bool {
    match path {
        [] => false,
        [last] => dict.contains_key(last),
        [first, rest @ ..] => {
            matches!(dict.get(first), Some(Value::Dict(_, d)) if has_path(d, rest))
        }
    }
}

/// The first (default-profile) dictionary a provider gives, or an empty one when it fails (the
/// extraction then reports the failure).
fn data_of(p: &impl Provider) -> Dict {
    p.data()
        .ok()
        .and_then(|m| m.into_values().next())
        .unwrap_or_default()
}

fn env_provider() -> Env {
    Env::prefixed(ENV_PREFIX)
        .split("__")
        .filter(|k| !k.as_str().eq_ignore_ascii_case("config"))
}

/// The environment variable for a key path: `cache.max_size_gb` is `VELOX_CACHE_CACHE__MAX_SIZE_GB`.
pub(super) fn env_name(path: &[String]) -> String {
    format!("{ENV_PREFIX}{}", path.join("__").to_ascii_uppercase())
}

/// The key path of an unknown-key error, the field included.
fn unknown_path(e: &figment::Error) -> Option<Vec<String>> {
    let Kind::UnknownField(field, _) = &e.kind else {
        return None;
    };
    let mut path = e.path.clone();
    if path.last() != Some(field) {
        path.push(field.clone());
    }
    Some(path)
}

pub(super) fn load(
    config_file: Option<&Path>,
    flags: &FlagOverrides,
    serving: bool,
    checks: &dyn Fn(&Config) -> Result<(), ConfigError>,
) -> Result<Loaded, ConfigError> {
    let env_file = std::env::var_os(ENV_CONFIG_FILE).map(PathBuf::from);
    let file = config_file.map(Path::to_path_buf).or(env_file);
    if let Some(file) = &file {
        if !file.is_file() {
            return Err(ConfigError(format!(
                "the config file {} does not exist or is not a file",
                file.display()
            )));
        }
    }
    let env_data = data_of(&env_provider());
    let file_data = file
        .as_ref()
        .map(|f| data_of(&Toml::file_exact(f)))
        .unwrap_or_default();

    let mut ignored_env: Vec<Vec<String>> = Vec::new();
    let mut dropped_env: Vec<Vec<String>> = Vec::new();
    let mut dropped_file: Vec<Vec<String>> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    // serde stops at the first problem: each round reports one, takes its key out and reads
    // again, so that one run lists them all. Each round takes one more key out, so this ends
    // after at most as many rounds as the file and the environment have keys.
    let (fig, extracted) = loop {
        let mut fig = Figment::new();
        if let Some(f) = &file {
            fig = fig.merge(Without {
                inner: Toml::file_exact(f),
                origin: Origin::File,
                file: Some(f.clone()),
                drop: dropped_file.clone(),
            });
        }
        fig = fig
            .merge(Without {
                inner: env_provider(),
                origin: Origin::Env,
                file: None,
                drop: ignored_env.iter().chain(&dropped_env).cloned().collect(),
            })
            .merge(Without {
                inner: Serialized::defaults(flags),
                origin: Origin::Flags,
                file: None,
                drop: Vec::new(),
            });
        match fig.extract::<Config>() {
            Ok(config) => break (fig, Ok(config)),
            Err(e) => {
                let unknown = unknown_path(&e);
                let path = unknown.clone().unwrap_or_else(|| e.path.clone());
                let taken = |dropped: &[Vec<String>]| dropped.contains(&path);
                // The environment wins over the file, so a key in both is the environment's.
                if has_path(&env_data, &path) && !taken(&ignored_env) && !taken(&dropped_env) {
                    if unknown.is_some() {
                        ignored_env.push(path);
                    } else {
                        lines.push(describe(&e));
                        dropped_env.push(path);
                    }
                    continue;
                }
                if has_path(&file_data, &path) && !taken(&dropped_file) {
                    lines.push(describe(&e));
                    dropped_file.push(path);
                    continue;
                }
                break (fig, Err(e));
            }
        }
    };

    let config = match extracted {
        Ok(config) => Some(config),
        Err(err) => {
            lines.extend(err.into_iter().map(|e| describe(&e)));
            None
        }
    };
    let config = match config {
        Some(config) if lines.is_empty() => config,
        _ => return Err(ConfigError(lines.join("\n"))),
    };
    // `server_url` has a default: only a value given somewhere collides with the pool's.
    if config.pooled() && fig.find_metadata("server_url").is_some() {
        let suffix = source_suffix(fig.find_metadata("server_url"), &["server_url".into()]);
        return Err(ConfigError(format!(
            "`server_url`{suffix} and `velox.servers` are both set: `server_url` is the shorthand for one builder; list it in `velox.servers` instead"
        )));
    }
    let checked = config.validate().and_then(|()| {
        if serving {
            config.validate_for_serving()
        } else {
            Ok(())
        }
    });
    let checked = checked.and_then(|()| checks(&config));
    if let Err(ConfigError(msg)) = checked {
        return Err(ConfigError(with_source(&fig, msg)));
    }

    let mut warnings = Vec::new();
    if !ignored_env.is_empty() {
        let names: Vec<String> = ignored_env.iter().map(|p| env_name(p)).collect();
        warnings.push(format!(
            "ignoring environment variables that name no configuration key: {} \
             (Kubernetes sets VELOX_CACHE_PORT and the like for a Service named velox-cache; \
             a misspelt key is ignored too)",
            names.join(", ")
        ));
    }
    Ok(Loaded { config, warnings })
}

/// Where the value at `path` came from, as a suffix for a message.
fn source_suffix(md: Option<&Metadata>, path: &[String]) -> String {
    let Some(md) = md else {
        return String::new();
    };
    match Origin::of(md) {
        Some(Origin::File) => match &md.source {
            Some(figment::Source::File(f)) => format!(" (from {})", f.display()),
            _ => " (from the config file)".into(),
        },
        Some(Origin::Env) => format!(" (from {})", env_name(path)),
        Some(Origin::Flags) => format!(
            " (from the command line: --{})",
            path.join("-").replace('_', "-")
        ),
        None => String::new(),
    }
}

/// Adds where the value came from to a check's message (`invalid value for `key`: …`).
fn with_source(fig: &Figment, msg: String) -> String {
    let key = msg
        .strip_prefix("invalid value for `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(key, _)| key.to_owned());
    match key {
        Some(key) => {
            // An item of a list (`velox.servers[1].url`) came from wherever the list did.
            let key = key.split_once('[').map_or(key.as_str(), |(list, _)| list);
            let path: Vec<String> = key.split('.').map(str::to_owned).collect();
            let suffix = source_suffix(fig.find_metadata(key), &path);
            format!("{msg}{suffix}")
        }
        None => msg,
    }
}

/// One figment error as one line naming the key, without figment's nested backticks.
fn describe(e: &figment::Error) -> String {
    let mut path = e.path.clone();
    if let Kind::UnknownField(field, _) = &e.kind {
        if path.last() != Some(field) {
            path.push(field.clone());
        }
    }
    let source = source_suffix(e.metadata.as_ref(), &path);
    let key = path.join(".");
    match &e.kind {
        Kind::UnknownField(..) => {
            format!("unknown key `{key}`{}", source.replace("(from ", "(in "))
        }
        kind if key.is_empty() => format!("invalid configuration: {}{source}", describe_kind(kind)),
        kind => format!("invalid value for `{key}`: {}{source}", describe_kind(kind)),
    }
}

fn describe_kind(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) if m == "invalid socket address syntax" => {
            "expected an IP address and port, such as 0.0.0.0:8080 (host names are not accepted)"
                .into()
        }
        Kind::Message(m) => without_excerpt(m).replace('`', ""),
        Kind::InvalidType(actual, exp) | Kind::InvalidValue(actual, exp) => {
            format!("expected {}, found {}", expected(exp), actual_text(actual))
        }
        Kind::InvalidLength(n, exp) => format!("expected {}, found {n} items", expected(exp)),
        Kind::UnknownVariant(v, exp) => format!("\"{v}\" is not one of {}", exp.join(", ")),
        Kind::MissingField(f) => format!("{f} is missing"),
        Kind::DuplicateField(f) => format!("{f} is given twice"),
        other => other.to_string().replace('`', ""),
    }
}

/// A TOML parse error without the excerpt of the file it quotes (`1 | api_token = "..."`): the
/// line may hold a secret, and the line and column are enough to find it.
fn without_excerpt(m: &str) -> String {
    let excerpt = |l: &str| {
        let l = l
            .trim_start()
            .trim_start_matches(|c: char| c.is_ascii_digit());
        l.trim_start().starts_with('|')
    };
    m.lines()
        .filter(|l| !excerpt(l))
        .collect::<Vec<_>>()
        .join("; ")
}

fn expected(exp: &str) -> String {
    match exp {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number of at least 0".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" | "bool" => "true or false".into(),
        other => other.replace('`', ""),
    }
}

fn actual_text(a: &Actual) -> String {
    match a {
        Actual::Str(s) => format!("\"{s}\""),
        Actual::Unsigned(n) => n.to_string(),
        Actual::Signed(n) => n.to_string(),
        Actual::Float(n) => n.to_string(),
        Actual::Bool(b) => b.to_string(),
        Actual::Map => "a table".into(),
        Actual::Seq => "a list".into(),
        other => other.to_string().replace('`', ""),
    }
}
