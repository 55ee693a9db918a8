//! Replicas sharing one bucket, for the object-storage tests: one stand-in Velox, moto's S3
//! server, and velox-cache processes (the real binary) started on demand, each with its own data
//! dir. Included with `#[path]` beside `moto.rs` and `support`.

#![allow(dead_code)]

use crate::moto::Moto;
use crate::support::*;
use tempfile::TempDir;

/// One Velox, one bucket, and replicas started on demand, each with its own data dir.
pub struct Cluster {
    pub tmp: TempDir,
    pub velox: FakeVelox,
    pub moto: Moto,
    pub prefix: String,
    extra: Vec<(String, String)>,
    started: usize,
}

impl Cluster {
    pub fn start(prefix: &str) -> Cluster {
        let tmp = tempfile::tempdir().expect("temp dir");
        let velox = FakeVelox::start(&tmp.path().join("velox-out"));
        let moto = Moto::start(tmp.path(), "velox-test");
        Cluster {
            tmp,
            velox,
            moto,
            prefix: prefix.to_owned(),
            extra: Vec::new(),
            started: 0,
        }
    }

    pub fn with(mut self, key: &str, value: &str) -> Cluster {
        self.extra.push((key.into(), value.into()));
        self
    }

    pub fn options(&mut self) -> Options {
        self.started += 1;
        let data = self.tmp.path().join(format!("replica{}", self.started));
        let mut opts = Options::new(&data, &self.velox.url, &self.velox.dir);
        for (k, v) in self
            .moto
            .env(&self.prefix)
            .into_iter()
            .chain(self.extra.clone())
        {
            opts = opts.env(&k, &v);
        }
        opts
    }

    pub fn replica(&mut self) -> Server {
        let opts = self.options();
        Server::start(&opts)
    }

    /// Object keys under the test's prefix, without it.
    pub fn objects(&self, under: &str) -> Vec<(String, u64)> {
        self.moto
            .list(&format!("{}{under}", self.prefix))
            .into_iter()
            .map(|(k, n)| (k[self.prefix.len()..].to_owned(), n))
            .collect()
    }
}
