//! `velox-cache cache stats|list|verify|purge <key>|rebuild-index` (docs/cli.md): offline work on a
//! data dir. The store's lock keeps these away from a data dir a server is holding.

use std::process::ExitCode;

use super::CacheAction;
use crate::config::Config;
use crate::ids::CacheKey;
use crate::store::{Store, StoreError};

pub fn run(config: &Config, action: &CacheAction) -> ExitCode {
    let store = match Store::open(&config.data_dir) {
        Ok(s) => s,
        Err(StoreError::Locked(dir)) => {
            eprintln!(
                "velox-cache: the data dir {} is held by a running server; stop it first",
                dir.display()
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("velox-cache: {e}");
            return ExitCode::FAILURE;
        }
    };
    match act(&store, action) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("velox-cache: {e}");
            ExitCode::FAILURE
        }
    }
}

fn act(store: &Store, action: &CacheAction) -> Result<ExitCode, StoreError> {
    match action {
        CacheAction::Stats => {
            let t = store.totals()?;
            println!("entries: {}\nbytes: {}", t.entries, t.bytes);
        }
        CacheAction::List { limit, after } => {
            let after = match after {
                Some(a) => match CacheKey::from_hex(a) {
                    Some(k) => Some(k),
                    None => {
                        eprintln!("velox-cache: --after must be a cache key (64 hex digits)");
                        return Ok(ExitCode::from(2));
                    }
                },
                None => None,
            };
            for (key, e) in store.list(after.as_ref(), *limit)? {
                println!(
                    "{key} {} {:>12} {:>6} {}",
                    e.digest.to_hex(),
                    e.size,
                    e.access_count,
                    e.file_name
                );
            }
        }
        CacheAction::Verify => {
            let problems = store.verify()?;
            if problems.0.is_empty() {
                let t = store.totals()?;
                println!(
                    "ok: {} entries, {} bytes, every blob re-hashed",
                    t.entries, t.bytes
                );
            } else {
                for p in &problems.0 {
                    println!("problem: {p}");
                }
                println!("{} problem(s)", problems.0.len());
                return Ok(ExitCode::FAILURE);
            }
        }
        CacheAction::Purge { key } => {
            let Some(key) = CacheKey::from_hex(key) else {
                eprintln!("velox-cache: the key must be 64 hex digits");
                return Ok(ExitCode::from(2));
            };
            match store.remove(&key)? {
                Some(e) => println!("removed {key} ({} bytes)", e.size),
                None => {
                    eprintln!("velox-cache: no entry has the key {key}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        CacheAction::RebuildIndex => {
            let report = store.rebuild_index()?;
            println!(
                "re-indexed {} entries; deleted {} orphan blobs and {} orphan manifests",
                report.reindexed, report.orphan_blobs, report.orphan_manifests
            );
        }
    }
    store.flush()?;
    Ok(ExitCode::SUCCESS)
}
