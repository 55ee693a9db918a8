//! Channel records and manual pins kept beside the index (docs/channels.md, "Crash safety").
//!
//! Every change of a channel record or of a manual pin that the index commits is also written as
//! a small file in the data dir, so that an index set aside as damaged (or deleted by hand) does
//! not take with it the channels defined through the API, their releases, and the pins made by
//! hand: an index created by [`Store::open`] restores them from these files before anything
//! reads it.
//!
//! - `channels/<name>.json`: `{"version": 1, "keys": ["<hex>", ...], "record": "<the record>"}`,
//!   the keys being those the record pins (the store does not read records);
//! - `pins/<key hex>`: one empty file per manual pin.
//!
//! The index stays the truth while it opens: the files are read only into an index this open
//! created. Each file is written after the index's commit, under the same lock, by a rename: a
//! crash between the two leaves the file one change behind, which matters only if the index is
//! lost before that channel or pin changes again.

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ingest::{place, sync_dir};
use super::{Store, StoreError};
use crate::config::valid_channel_name;
use crate::ids::CacheKey;

const CHANNELS_DIR: &str = "channels";
const PINS_DIR: &str = "pins";
const KEPT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct KeptChannel {
    version: u32,
    keys: Vec<String>,
    record: String,
}

impl Store {
    fn kept_channel_path(&self, name: &str) -> Option<PathBuf> {
        valid_channel_name(name).then(|| self.root.join(CHANNELS_DIR).join(format!("{name}.json")))
    }

    fn kept_pin_path(&self, key: &CacheKey) -> PathBuf {
        self.root.join(PINS_DIR).join(key.to_hex())
    }

    /// Writes (`Some`) or deletes (`None`) the kept copy of channel `name`.
    pub(super) fn keep_channel(
        &self,
        name: &str,
        record: Option<&[u8]>,
        keys: &[CacheKey],
    ) -> io::Result<()> {
        let Some(path) = self.kept_channel_path(name) else {
            return Err(io::Error::other(format!(
                "`{}` is not a channel name",
                name.escape_debug()
            )));
        };
        let Some(record) = record else {
            return remove_synced(&path);
        };
        let kept = KeptChannel {
            version: KEPT_VERSION,
            keys: keys.iter().map(CacheKey::to_hex).collect(),
            record: String::from_utf8(record.to_vec())
                .map_err(|_| io::Error::other("the record is not UTF-8"))?,
        };
        let bytes = serde_json::to_vec_pretty(&kept).map_err(io::Error::other)?;
        let (mut tmp, mut file) = self.temp_file("channel")?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        drop(file);
        place(&mut tmp, &path)
    }

    /// Creates (`pin`) or deletes the kept mark of a manual pin on `key`.
    pub(super) fn keep_pin(&self, key: &CacheKey, pin: bool) -> io::Result<()> {
        let path = self.kept_pin_path(key);
        if !pin {
            return remove_synced(&path);
        }
        let (mut tmp, file) = self.temp_file("pin")?;
        file.sync_all()?;
        drop(file);
        place(&mut tmp, &path)
    }

    /// Fills an index this open created with the kept channels and manual pins, and logs how
    /// many of each came back; a file that cannot be read is logged and skipped.
    pub(super) fn restore_kept(&self) -> Result<(), StoreError> {
        let mut channels = 0;
        for (name, path) in listed(&self.root.join(CHANNELS_DIR), ".json") {
            let read = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<KeptChannel>(&b).map_err(|e| e.to_string()))
                .and_then(|k| {
                    if k.version != KEPT_VERSION {
                        return Err(format!("is of version {}", k.version));
                    }
                    let keys = k
                        .keys
                        .iter()
                        .map(|h| CacheKey::from_hex(h).ok_or(format!("names the key `{h}`")))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((k.record, keys))
                });
            match read {
                Ok((record, keys)) if valid_channel_name(&name) => {
                    self.write_channel(&name, Some(record.as_bytes()), &keys)?;
                    channels += 1;
                }
                Ok(_) => log::warn!("{} is not named after a channel: skipped", path.display()),
                Err(why) => log::error!(
                    "the kept channel {} cannot be restored ({why}): skipped",
                    path.display()
                ),
            }
        }
        let mut pins = 0;
        for (name, path) in listed(&self.root.join(PINS_DIR), "") {
            match CacheKey::from_hex(&name) {
                Some(key) => {
                    self.pin_manually(&key, true)?;
                    pins += 1;
                }
                None => log::warn!("{} does not name a key: skipped", path.display()),
            }
        }
        if channels + pins > 0 {
            log::warn!(
                "a new index: restored {channels} channels and {pins} manual pins from their copies beside it"
            );
        }
        Ok(())
    }
}

/// The files of `dir` whose names end in `suffix`, as (name without the suffix, path); none
/// when the folder is missing. Not followed: symbolic links and folders are skipped.
fn listed(dir: &std::path::Path, suffix: &str) -> Vec<(String, PathBuf)> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            log::error!("cannot list {}: {e}", dir.display());
            return Vec::new();
        }
    };
    let mut out: Vec<_> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let stem = name.strip_suffix(suffix)?.to_owned();
            Some((stem, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Deletes `path` (gone already is fine) and syncs its folder.
fn remove_synced(path: &std::path::Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> CacheKey {
        CacheKey([i; 32])
    }

    /// Writes, then loses the index (deleted, as a damaged one is set aside), then reopens.
    #[test]
    fn a_new_index_gets_the_kept_channels_and_pins_back_and_skips_a_damaged_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("data");
        {
            let store = Store::open(&root).expect("open");
            store
                .write_channel("prod", Some(br#"{"r":1}"#), &[key(1), key(2)])
                .expect("prod");
            store
                .write_channel("gone", Some(b"{}"), &[key(3)])
                .expect("gone");
            store.write_channel("gone", None, &[]).expect("delete");
            store
                .write_channel("staging", Some(b"{}"), &[key(4)])
                .expect("staging");
            assert!(store.pin_manually(&key(5), true).expect("pin"));
            assert!(store.pin_manually(&key(6), true).expect("pin"));
            assert!(store.pin_manually(&key(6), false).expect("unpin"));
        }
        assert!(!root.join("channels/gone.json").exists());
        assert!(!root.join("pins").join(key(6).to_hex()).exists());
        fs::write(root.join("channels/staging.json"), b"{not json").expect("damage");
        // Kept files are read only into an index this open created.
        {
            let store = Store::open(&root).expect("reopen");
            assert_eq!(store.channel_records().expect("list").len(), 2);
        }
        fs::remove_dir_all(root.join("meta")).expect("lose the index");
        let store = Store::open(&root).expect("open again");
        let names: Vec<String> = store
            .channel_records()
            .expect("list")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            vec!["prod".to_string()],
            "gone stays gone, staging is skipped"
        );
        assert_eq!(
            store.channel_record("prod").expect("read").as_deref(),
            Some(&br#"{"r":1}"#[..])
        );
        for (k, holders) in [
            (1, vec!["channel:prod"]),
            (2, vec!["channel:prod"]),
            (5, vec![MANUAL_NAME]),
        ] {
            let got: Vec<String> = store.pins(&key(k)).expect("pins").into_iter().collect();
            assert_eq!(got, holders, "key {k}");
        }
        for k in [3, 4, 6] {
            assert!(!store.is_pinned(&key(k)).expect("pins"), "key {k}");
        }
    }

    const MANUAL_NAME: &str = super::super::pins::MANUAL;
}
