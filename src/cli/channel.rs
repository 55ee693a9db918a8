//! `velox-cache channel list|show <name>` (docs/cli.md): a data dir's channels, read from its
//! index, or asked of the running server that holds it (its admin listener).

use std::process::ExitCode;

use serde_json::Value;

use super::{remote, ChannelAction};
use crate::channels::model::{channel_json, ChannelRecord};
use crate::config::Config;
use crate::store::{Store, StoreError};

pub fn run(config: &Config, action: &ChannelAction) -> ExitCode {
    let dir = &config.data_dir;
    if !dir.join("meta").is_dir() {
        eprintln!(
            "velox-cache: {} is not a velox-cache data dir with an index (no meta/)",
            dir.display()
        );
        return ExitCode::from(2);
    }
    let channels = match Store::open(dir) {
        Ok(store) => offline(&store),
        Err(StoreError::Locked(_)) => remote::channels(config),
        Err(e) => Err(e.to_string()),
    };
    let channels = match channels {
        Ok(c) => c,
        Err(e) => {
            eprintln!("velox-cache: {e}");
            return ExitCode::FAILURE;
        }
    };
    match action {
        ChannelAction::List => {
            for c in &channels {
                let current = &c["current"];
                println!(
                    "{:<24} {:<4} {:<32} {:<20} {}",
                    c["name"].as_str().unwrap_or_default(),
                    c["origin"].as_str().unwrap_or_default(),
                    current["id"].as_str().unwrap_or("-"),
                    current["created"].as_str().unwrap_or("-"),
                    c["platforms"]
                        .as_array()
                        .map(|p| p
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(","))
                        .unwrap_or_default()
                );
            }
            ExitCode::SUCCESS
        }
        ChannelAction::Show { name } => {
            match channels.iter().find(|c| c["name"].as_str() == Some(name)) {
                Some(c) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(c).unwrap_or_else(|_| c.to_string())
                    );
                    ExitCode::SUCCESS
                }
                None => {
                    eprintln!("velox-cache: no channel is named `{}`", name.escape_debug());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn offline(store: &Store) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (name, bytes) in store.channel_records().map_err(|e| e.to_string())? {
        // One unreadable record does not hide the others (the server skips it too).
        match ChannelRecord::decode(&bytes) {
            Ok(record) => out.push(channel_json(&record, Value::Null)),
            Err(why) => eprintln!("velox-cache: warning: the record of channel `{name}` {why}"),
        }
    }
    Ok(out)
}
