//! Pins and channel records (docs/channels.md).
//!
//! A pinned entry is never evicted, by any policy or limit; the limits still count its bytes.
//! Each pin has holders: `manual` (an operator's `POST /v1/cache/{key}/pin`) and `channel:<name>`
//! (a kept release of that channel). An entry is pinned while it has a holder.
//!
//! Trees (in the index's database, beside the entries):
//! - `pins`: key (32) → the holders, as a JSON list of strings
//! - `channels`: channel name → the channel's record (opaque here: the channel layer's JSON)
//! - `channel_keys`: channel name → the keys its record pins, concatenated (32 bytes each)
//!
//! A channel's record and its pins change in one transaction ([`Store::write_channel`]), so a
//! crash never leaves a release current whose binaries are not pinned, nor pins of a release
//! that is no longer kept.

use std::collections::BTreeSet;
use std::sync::PoisonError;

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;

use super::{Store, StoreError};
use crate::ids::CacheKey;

/// The holder of a pin made by hand.
pub const MANUAL: &str = "manual";

/// The holder name of a channel's pins.
pub fn channel_holder(name: &str) -> String {
    format!("channel:{name}")
}

type Abort = ConflictableTransactionError<String>;

fn holders_of(value: Option<sled::IVec>) -> Result<BTreeSet<String>, Abort> {
    match value {
        None => Ok(BTreeSet::new()),
        Some(v) => serde_json::from_slice(&v)
            .map_err(|e| Abort::Abort(format!("a pin record does not decode: {e}"))),
    }
}

fn encode(holders: &BTreeSet<String>) -> Result<Vec<u8>, Abort> {
    serde_json::to_vec(holders).map_err(|e| Abort::Abort(format!("cannot encode a pin: {e}")))
}

/// Adds (`add`) or removes `holder` on `key` inside a transaction.
fn set_holder(
    pins: &TransactionalTree,
    key: &CacheKey,
    holder: &str,
    add: bool,
) -> Result<bool, Abort> {
    let mut holders = holders_of(pins.get(key.0)?)?;
    let changed = if add {
        holders.insert(holder.to_owned())
    } else {
        holders.remove(holder)
    };
    if holders.is_empty() {
        pins.remove(&key.0)?;
    } else {
        pins.insert(&key.0, encode(&holders)?)?;
    }
    Ok(changed)
}

fn keys_of(bytes: &[u8]) -> Vec<CacheKey> {
    bytes
        .chunks_exact(32)
        .filter_map(|c| <[u8; 32]>::try_from(c).ok().map(CacheKey))
        .collect()
}

fn sled_tx(e: sled::transaction::TransactionError<String>) -> StoreError {
    match e {
        sled::transaction::TransactionError::Abort(why) => StoreError::Corrupt(why),
        sled::transaction::TransactionError::Storage(e) => StoreError::from(e),
    }
}

impl Store {
    /// The holders of `key`'s pin; empty when it is not pinned.
    pub fn pins(&self, key: &CacheKey) -> Result<BTreeSet<String>, StoreError> {
        let value = self.ix()?.pins.get(key.0)?;
        holders_of(value).map_err(|e| match e {
            Abort::Abort(why) => StoreError::Corrupt(why),
            Abort::Storage(e) => StoreError::from(e),
            _ => StoreError::Corrupt("a pin record cannot be read".into()),
        })
    }

    /// Whether `key` is pinned.
    pub fn is_pinned(&self, key: &CacheKey) -> Result<bool, StoreError> {
        Ok(self.ix()?.pins.contains_key(key.0)?)
    }

    /// Every pinned key with its holders.
    pub fn pinned(&self) -> Result<Vec<(CacheKey, BTreeSet<String>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.ix()?.pins.iter() {
            let (k, v) = item?;
            let Ok(key) = <[u8; 32]>::try_from(k.as_ref()) else {
                continue;
            };
            let holders = serde_json::from_slice(&v)
                .map_err(|e| StoreError::Corrupt(format!("a pin record does not decode: {e}")))?;
            out.push((CacheKey(key), holders));
        }
        Ok(out)
    }

    /// The bytes of the blobs that pinned entries use, each blob counted once.
    pub fn pinned_bytes(&self) -> Result<u64, StoreError> {
        let mut seen = BTreeSet::new();
        let mut bytes = 0u64;
        for (key, _) in self.pinned()? {
            if let Some(entry) = self.lookup(&key)? {
                if seen.insert(entry.digest) {
                    bytes = bytes.saturating_add(entry.size);
                }
            }
        }
        Ok(bytes)
    }

    /// Pins (`pin`) or unpins `key` by hand, durably. Returns whether that changed anything.
    /// Kept beside the index too ([`super::kept`]).
    pub fn pin_manually(&self, key: &CacheKey, pin: bool) -> Result<bool, StoreError> {
        let _kept = self
            .kept_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let ix = self.ix()?;
        let changed = ix
            .pins
            .transaction(|pins| set_holder(pins, key, MANUAL, pin))
            .map_err(sled_tx);
        let changed = self.noted(changed)?;
        self.count_writes(1);
        self.flush()?;
        if let Err(e) = self.keep_pin(key, pin) {
            log::warn!("the pin of {key} is in the index, but its copy beside it could not be written ({e}): a damaged index would lose it");
        }
        Ok(changed)
    }

    /// Every channel record, by name.
    pub fn channel_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.ix()?.channels.iter() {
            let (k, v) = item?;
            out.push((String::from_utf8_lossy(&k).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    /// The record of channel `name`, if any.
    pub fn channel_record(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .ix()?
            .channels
            .get(name.as_bytes())?
            .map(|v| v.to_vec()))
    }

    /// Writes (`Some`) or deletes (`None`) the record of channel `name`, and makes `keys` the
    /// keys pinned by it, in one transaction, flushed before it returns; then its copy beside
    /// the index ([`super::kept`]).
    pub fn write_channel(
        &self,
        name: &str,
        record: Option<&[u8]>,
        keys: &[CacheKey],
    ) -> Result<(), StoreError> {
        let _kept = self
            .kept_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let ix = self.ix()?;
        let holder = channel_holder(name);
        let new: BTreeSet<CacheKey> = keys.iter().copied().collect();
        let mut listed = Vec::with_capacity(new.len() * 32);
        for k in &new {
            listed.extend_from_slice(&k.0);
        }
        let written = (&ix.channels, &ix.channel_keys, &ix.pins)
            .transaction(|(channels, channel_keys, pins)| {
                let old = channel_keys
                    .get(name.as_bytes())?
                    .map(|v| keys_of(&v))
                    .unwrap_or_default();
                for key in old.iter().filter(|k| !new.contains(k)) {
                    set_holder(pins, key, &holder, false)?;
                }
                for key in &new {
                    set_holder(pins, key, &holder, true)?;
                }
                match record {
                    Some(bytes) => {
                        channels.insert(name.as_bytes(), bytes)?;
                        channel_keys.insert(name.as_bytes(), listed.as_slice())?;
                    }
                    None => {
                        channels.remove(name.as_bytes())?;
                        channel_keys.remove(name.as_bytes())?;
                    }
                }
                Ok(())
            })
            .map_err(sled_tx);
        self.noted(written)?;
        self.count_writes(1);
        self.flush()?;
        if let Err(e) = self.keep_channel(name, record, keys) {
            log::warn!("channel `{name}` is in the index, but its copy beside it could not be written ({e}): a damaged index would lose this change");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_pins_its_keys_and_lets_go_of_the_ones_it_drops() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("data")).expect("open");
        let (a, b, c) = (CacheKey([1; 32]), CacheKey([2; 32]), CacheKey([3; 32]));
        store
            .write_channel("prod", Some(b"{}"), &[a, b])
            .expect("write");
        assert!(store.is_pinned(&a).expect("a") && store.is_pinned(&b).expect("b"));
        assert!(store.pin_manually(&b, true).expect("pin"));
        assert!(
            !store.pin_manually(&b, true).expect("again"),
            "already held"
        );
        store
            .write_channel("prod", Some(b"{}"), &[c])
            .expect("move");
        assert!(
            !store.is_pinned(&a).expect("a"),
            "dropped by its only holder"
        );
        assert_eq!(
            store.pins(&b).expect("b").into_iter().collect::<Vec<_>>(),
            vec![MANUAL.to_string()],
            "the manual pin stays"
        );
        store.write_channel("prod", None, &[]).expect("delete");
        assert!(!store.is_pinned(&c).expect("c"));
        assert!(store.channel_record("prod").expect("read").is_none());
        assert!(store.pin_manually(&b, false).expect("unpin"));
        assert!(store.pinned().expect("list").is_empty());
    }
}
