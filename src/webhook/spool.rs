//! Pending events kept on disk (docs/webhooks.md, "Delivery guarantees"), so that a stop or a
//! crash does not lose them: the delivery thread writes each event it takes
//! (`<data_dir>/webhooks/<webhook-id>.json`) before its first attempt and deletes the file once
//! the event is delivered or given up; the next start sends the files left again, under their
//! own `webhook-id` and with their own body (its `timestamp` is when the event happened).
//!
//! At least once across restarts: an event whose file outlived its delivery (a crash between
//! the receiver's answer and the deletion) is sent twice. Receivers de-duplicate on the id.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use actix_web::web::Bytes;
use serde::{Deserialize, Serialize};

use super::Event;

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Spooled {
    version: u32,
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    body: String,
}

/// The folder of pending events.
pub(super) struct Spool {
    dir: PathBuf,
}

/// Whether `id` is one `Webhook::send` makes: `msg_` and 32 lowercase hex digits.
fn valid_id(id: &str) -> bool {
    id.strip_prefix("msg_").is_some_and(|h| {
        h.len() == 32
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl Spool {
    /// The spool in `dir`, created if missing.
    pub(super) fn open(dir: &Path) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        Ok(Spool {
            dir: dir.to_path_buf(),
        })
    }

    fn path_of(&self, id: &str) -> Option<PathBuf> {
        valid_id(id).then(|| self.dir.join(format!("{id}.json")))
    }

    /// Writes `event` unless its file is there (an event sent again after a restart); synced,
    /// by a rename. A failure is logged: the event is still delivered, only not kept.
    pub(super) fn keep(&self, event: &Event) {
        let Some(path) = self.path_of(&event.id) else {
            return;
        };
        if path.exists() {
            return;
        }
        let written = (|| -> io::Result<()> {
            let spooled = Spooled {
                version: VERSION,
                id: event.id.clone(),
                event_type: event.event_type.clone(),
                body: String::from_utf8(event.body.to_vec()).map_err(io::Error::other)?,
            };
            let bytes = serde_json::to_vec(&spooled).map_err(io::Error::other)?;
            crate::util::write_atomic(&path, &bytes)
        })();
        if let Err(e) = written {
            log::warn!(
                "webhook {} ({}) cannot be kept in {}: {e}; it is lost if velox-cache stops before it is delivered",
                event.event_type,
                event.id,
                self.dir.display()
            );
        }
    }

    /// Deletes the file of the event `id` (delivered, or given up).
    pub(super) fn forget(&self, id: &str) {
        let Some(path) = self.path_of(id) else {
            return;
        };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cannot delete {}: {e}", path.display()),
        }
    }

    /// Every event kept, oldest file first. A file that does not read as one is logged and
    /// deleted (it can never be sent); a leftover of an interrupted write too.
    pub(super) fn pending(&self) -> Vec<Event> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                log::warn!("cannot list {}: {e}", self.dir.display());
                return Vec::new();
            }
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| {
                let modified = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (modified, e.path())
            })
            .collect();
        files.sort();
        let mut events = Vec::new();
        for (_, path) in files {
            let read = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Spooled>(&b).map_err(|e| e.to_string()))
                .and_then(|s| {
                    let named = path.file_name().and_then(|n| n.to_str())
                        == Some(format!("{}.json", s.id).as_str());
                    if s.version != VERSION || !valid_id(&s.id) || !named {
                        return Err("not a pending event of this velox-cache".into());
                    }
                    Ok(s)
                });
            match read {
                Ok(s) => events.push(Event {
                    id: s.id,
                    event_type: s.event_type,
                    body: Bytes::from(s.body),
                }),
                Err(why) => {
                    log::warn!("{} is dropped: {why}", path.display());
                    if let Err(e) = fs::remove_file(&path) {
                        log::warn!("cannot delete {}: {e}", path.display());
                    }
                }
            }
        }
        events
    }
}
