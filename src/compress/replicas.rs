//! The compressor with replicas (docs/compression.md, "With replicas"): a variant another
//! replica shared through the bucket is taken (and checked by decoding it) before one is made
//! here, and one made here is shared.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{decode, keep_below, Shared, Stoppable};
use crate::ids::Digest;
use crate::store::{Adopted, Encoding, Store};

/// Runs `fut` (a shared-store call, which runs on the bucket's own runtime) to its end from the
/// compressor's thread.
fn wait<T>(fut: futures_util::future::BoxFuture<'static, T>) -> io::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(fut))
}

/// With replicas: takes the `enc` variant of `digest` from the bucket when another replica
/// shared it and it decodes to the binary; whether it did. A shared variant that fails its
/// check is deleted from the bucket (this replica then makes and shares its own).
pub(super) fn fetched(
    store: &Store,
    shared: &Shared,
    digest: &Digest,
    enc: Encoding,
    started: Instant,
) -> bool {
    let Some(bucket) = shared.shared.as_ref() else {
        return false;
    };
    let Ok(Some(record)) = store.blob(digest) else {
        return false;
    };
    let scratch = match store.scratch(enc) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("compression: no room to take a variant from the bucket: {e}");
            return false;
        }
    };
    let got = wait(bucket.variant_get(
        *digest,
        enc,
        scratch.path().to_path_buf(),
        keep_below(record.size),
    ));
    let why = match got {
        Ok(Ok(Some(_))) => {
            let stop = &shared.stop;
            let adopted = store.adopt_variant(digest, enc, scratch, keep_below, |input, output| {
                decode(enc, &mut Stoppable { inner: input, stop }, output)
            });
            match adopted {
                Ok(Adopted::Stored(v)) => {
                    shared
                        .metrics
                        .compression
                        .made(enc.as_str(), "fetched", started.elapsed());
                    log::info!(
                        "compression: {} variant of {digest} taken from the bucket in {:.1}s: {} \
                         bytes",
                        enc.as_str(),
                        started.elapsed().as_secs_f64(),
                        v.size
                    );
                    return true;
                }
                Ok(Adopted::BlobGone) => return true,
                Ok(Adopted::Refused(why)) => why,
                Err(e) => {
                    log::warn!(
                        "compression: cannot keep the bucket's {} variant of {digest}: {e}",
                        enc.as_str()
                    );
                    return false;
                }
            }
        }
        Ok(Ok(None)) => return false,
        Ok(Err(crate::store::shared::SharedError::Damaged(why))) => why,
        Ok(Err(e)) => {
            log::warn!(
                "compression: cannot read the bucket's {} variant of {digest}: {e}",
                enc.as_str()
            );
            return false;
        }
        Err(e) => {
            log::warn!("compression: cannot wait for the bucket: {e}");
            return false;
        }
    };
    if shared.stop.load(Ordering::Relaxed) {
        return true;
    }
    shared
        .metrics
        .compression
        .made(enc.as_str(), "refused", started.elapsed());
    log::error!(
        "compression: the bucket's {} variant of {digest} {why}: deleting it; this replica makes \
         its own",
        enc.as_str()
    );
    if let Ok(Err(e)) = wait(bucket.variant_delete(*digest, enc)) {
        log::warn!(
            "compression: cannot delete the bucket's {} variant of {digest}: {e}",
            enc.as_str()
        );
    }
    false
}

/// With replicas: shares the variant just made, unless another replica shared one meanwhile.
pub(super) fn share(
    store: &Store,
    shared: &Shared,
    digest: &Digest,
    enc: Encoding,
    v: crate::store::Variant,
) {
    let Some(bucket) = shared.shared.as_ref() else {
        return;
    };
    let put = wait(bucket.variant_put(*digest, enc, store.variant_path(&v.digest), v.size));
    match put {
        Ok(Ok(true)) => log::info!(
            "compression: {} variant of {digest} shared through the bucket",
            enc.as_str()
        ),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => log::warn!(
            "compression: cannot share the {} variant of {digest}: {e}",
            enc.as_str()
        ),
        Err(e) => log::warn!("compression: cannot wait for the bucket: {e}"),
    }
}
