//! `velox-cache cache stats|list|verify|purge <key>|rebuild-index` (docs/cli.md): offline work on a
//! data dir. These commands never create a data dir: a path that is not one is refused. A damaged
//! index is rebuilt from the manifests, as `serve` does. When a running server holds the dir,
//! `stats` and `list` ask its admin listener; the others refuse.

use std::path::Path;
use std::process::ExitCode;

use super::{remote, CacheAction};
use crate::config::Config;
use crate::ids::CacheKey;
use crate::store::{Store, StoreError};

/// Why `dir` is not a data dir these commands may open, if it is not.
fn not_a_data_dir(dir: &Path) -> Option<String> {
    if !dir.exists() {
        return Some(format!(
            "the data dir {} does not exist (these commands never create one)",
            dir.display()
        ));
    }
    if !dir.is_dir() {
        return Some(format!("the data dir {} is not a folder", dir.display()));
    }
    // What every server creates at its first start; an index alone (manifests lost) or the
    // manifests alone (index lost) are still a data dir to repair.
    if !dir.join("meta").is_dir() && !dir.join("manifests").is_dir() {
        return Some(format!(
            "{} is not a velox-cache data dir (it has neither meta/ nor manifests/)",
            dir.display()
        ));
    }
    None
}

/// Whether `manifests/` holds at least one fan-out folder with something in it. Symbolic links
/// are not followed (the reconciliation sets them aside).
fn has_manifests(dir: &Path) -> bool {
    let manifests = dir.join("manifests");
    if std::fs::symlink_metadata(&manifests).map_or(true, |m| !m.is_dir()) {
        return false;
    }
    let Ok(shards) = std::fs::read_dir(manifests) else {
        return false;
    };
    shards.flatten().any(|shard| {
        shard.file_type().is_ok_and(|t| t.is_dir())
            && std::fs::read_dir(shard.path())
                .map(|mut files| files.next().is_some())
                .unwrap_or(false)
    })
}

pub fn run(config: &Config, action: &CacheAction) -> ExitCode {
    let dir = &config.data_dir;
    if let Some(why) = not_a_data_dir(dir) {
        eprintln!("velox-cache: {why}");
        return ExitCode::from(2);
    }
    let store = match Store::open(dir) {
        Ok(s) => s,
        Err(StoreError::Locked(held)) => return ask_server(config, action, &held),
        Err(e) => {
            eprintln!("velox-cache: {e}");
            return ExitCode::FAILURE;
        }
    };
    // An empty index beside manifests is what a damaged index leaves once it is set aside (or
    // a lost meta/): index the manifests now, as the server's start-up pass would.
    if !matches!(action, CacheAction::RebuildIndex) {
        match store.totals() {
            Ok(t) if t.entries == 0 && has_manifests(dir) => match store.reconcile() {
                Ok(r) => eprintln!(
                    "velox-cache: the index was empty beside manifests; re-indexed {} entries from them",
                    r.reindexed
                ),
                Err(e) => {
                    eprintln!("velox-cache: cannot rebuild the index from the manifests: {e}");
                    return ExitCode::FAILURE;
                }
            },
            Ok(_) => {}
            Err(e) => {
                eprintln!("velox-cache: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match act(&store, action) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("velox-cache: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_after(after: &Option<String>) -> Result<Option<CacheKey>, ExitCode> {
    match after {
        Some(a) => match CacheKey::from_hex(a) {
            Some(k) => Ok(Some(k)),
            None => {
                eprintln!("velox-cache: --after must be a cache key (64 hex digits)");
                Err(ExitCode::from(2))
            }
        },
        None => Ok(None),
    }
}

/// `stats` and `list` from the server holding the data dir; the others cannot share it.
fn ask_server(config: &Config, action: &CacheAction, held: &Path) -> ExitCode {
    let answered = match action {
        CacheAction::Stats => remote::stats(config).map(|(entries, bytes)| {
            println!("entries: {entries}\nbytes: {bytes}");
        }),
        CacheAction::List { limit, after } => {
            if let Err(code) = parse_after(after) {
                return code;
            }
            remote::list(config, after.clone(), *limit).map(|lines| {
                for l in lines {
                    println!(
                        "{} {} {:>12} {:>6} {}",
                        l.key, l.digest, l.size, l.access_count, l.file_name
                    );
                }
            })
        }
        _ => {
            eprintln!(
                "velox-cache: the data dir {} is held by a running server; stop it first (or use its admin routes)",
                held.display()
            );
            return ExitCode::FAILURE;
        }
    };
    match answered {
        Ok(()) => {
            eprintln!(
                "velox-cache: the data dir {} is held by a running server; these figures are its own",
                held.display()
            );
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!(
                "velox-cache: the data dir {} is held by a running server, which could not be asked: {why}",
                held.display()
            );
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
            let after = match parse_after(after) {
                Ok(a) => a,
                Err(code) => return Ok(code),
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
