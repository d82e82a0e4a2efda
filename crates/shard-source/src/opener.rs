//! Opening any [`ShardUrl`] as a [`ShardReader`]: one place that holds the HTTP agent and
//! the object-store clients (one per bucket, made on first use) and picks the transport.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::ObjectStore;

use crate::http::HttpConnect;
use crate::pipe::PipeConnect;
use crate::store::{self, StoreConnect};
use crate::stream::{Conn, Connect, Fault};
use crate::{Cause, Result, RetryPolicy, ShardError, ShardReader, ShardUrl, StoreKind};

/// How shards are reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenConfig {
    /// Reconnections and their backoff.
    pub retry: RetryPolicy,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a body before the connection counts as dropped.
    pub read_timeout: Duration,
    /// An S3-compatible endpoint (`--data-endpoint`), over `AWS_ENDPOINT_URL` and profile
    /// files; an `http://` endpoint allows plain HTTP (a loopback MinIO or moto).
    pub endpoint: Option<String>,
    /// `object_store` config keys for every store client, applied last
    /// (`aws_skip_signature=true` for public buckets, `aws_region`, …).
    pub store_options: Vec<(String, String)>,
}

impl Default for OpenConfig {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            endpoint: None,
            store_options: Vec::new(),
        }
    }
}

impl OpenConfig {
    /// The defaults with `retry`.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// With connect and read timeouts.
    pub fn with_timeouts(mut self, connect: Duration, read: Duration) -> Self {
        self.connect_timeout = connect;
        self.read_timeout = read;
        self
    }

    /// With an S3-compatible endpoint.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// With one more `object_store` config key.
    pub fn with_store_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.store_options.push((key.into(), value.into()));
        self
    }
}

/// Opens shards; shared by the loader's threads (`Send + Sync`). Its readers block: call
/// them from plain threads, not from inside an async runtime (object-store reads drive this
/// crate's own runtime and would panic there).
pub struct Opener {
    cfg: OpenConfig,
    agent: ureq::Agent,
    stores: Mutex<HashMap<(StoreKind, String), Arc<dyn ObjectStore>>>,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener").field("cfg", &self.cfg).finish()
    }
}

impl Opener {
    /// An opener with `cfg`; store clients are made when a bucket is first opened.
    pub fn new(cfg: OpenConfig) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(cfg.connect_timeout)
            .timeout_read(cfg.read_timeout)
            .try_proxy_from_env(true)
            .user_agent(concat!("clip-shard-source/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            cfg,
            agent,
            stores: Mutex::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &OpenConfig {
        &self.cfg
    }

    fn store(&self, kind: StoreKind, bucket: &str, url: &str) -> Result<Arc<dyn ObjectStore>> {
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = stores.get(&(kind, bucket.to_string())) {
            return Ok(Arc::clone(s));
        }
        let s = store::build(kind, bucket, &self.cfg).map_err(|e| ShardError::Client {
            url: url.to_string(),
            cause: Cause::Store(e),
        })?;
        stores.insert((kind, bucket.to_string()), Arc::clone(&s));
        Ok(s)
    }

    /// Opens `url` at its first byte. A missing shard is [`ShardError::Missing`] at once; a
    /// failing connection is retried first, as a broken one is while reading.
    pub fn open(&self, url: &ShardUrl) -> Result<ShardReader> {
        let connector = self.connector(url, 0, None)?;
        ShardReader::open(url.to_string(), connector, self.cfg.retry, 0)
    }

    /// Bytes `offset..offset + len` of `url` (one member of a tar shard, say), without
    /// reading the rest: a seek, an HTTP `Range: bytes=A-B` or a ranged object GET, resumed
    /// after a dropped connection as whole reads are. A shard shorter than the range is
    /// [`ShardError::Failed`]; a `pipe:` command, which only runs from its start, is
    /// [`ShardError::NotRanged`].
    pub fn read_range(&self, url: &ShardUrl, offset: u64, len: u64) -> Result<Vec<u8>> {
        let name = url.to_string();
        if matches!(url, ShardUrl::Pipe(_)) {
            return Err(ShardError::NotRanged { url: name });
        }
        let end = offset.saturating_add(len);
        let connector = self.connector(url, offset, Some(end))?;
        let reader = ShardReader::open(name.clone(), connector, self.cfg.retry, offset)?;
        // The length comes from an index, not from the server: no huge allocation up front.
        let mut out = Vec::with_capacity(len.min(1 << 20) as usize);
        let got = reader.take(len).read_to_end(&mut out);
        let at = offset + out.len() as u64;
        got.map_err(|e| ShardError::from_read(e, &name, at))?;
        if at < end {
            return Err(ShardError::Failed {
                url: name,
                offset: at,
                retries: 0,
                cause: Cause::Truncated { at, len: end },
            });
        }
        Ok(out)
    }

    /// The transport for `url`, reading from `start` up to `end` (exclusive; `None`: to the
    /// shard's end).
    fn connector(&self, url: &ShardUrl, start: u64, end: Option<u64>) -> Result<Box<dyn Connect>> {
        let name = url.to_string();
        Ok(match url {
            ShardUrl::Local(path) => Box::new(LocalConnect { path: path.clone() }),
            ShardUrl::Pipe(command) => Box::new(PipeConnect {
                command: command.clone(),
            }),
            ShardUrl::Http(u) => Box::new(HttpConnect {
                agent: self.agent.clone(),
                url: u.clone(),
                etag: None,
                start,
                end,
            }),
            ShardUrl::Store { kind, bucket, key } => Box::new(StoreConnect {
                store: self.store(*kind, bucket, &name)?,
                path: object_store::path::Path::parse(key).map_err(|e| ShardError::Spec {
                    spec: name.clone(),
                    reason: format!("bad object key: {e}"),
                })?,
                read_timeout: self.cfg.read_timeout,
                etag: None,
                start,
                end,
            }),
        })
    }

    /// The whole of a small file (a sidecar) if it is there; `None` if it is missing; an
    /// error if it is over `max` bytes or cannot be read.
    pub fn read_small(&self, url: &ShardUrl, max: u64) -> Result<Option<Vec<u8>>> {
        let reader = match self.open(url) {
            Ok(r) => r,
            Err(e) if e.is_missing() => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        if let Err(e) = reader.take(max + 1).read_to_end(&mut out) {
            return Err(ShardError::from_read(e, &url.to_string(), out.len() as u64));
        }
        if out.len() as u64 > max {
            return Err(ShardError::Sidecar {
                file: url.to_string(),
                key: None,
                reason: format!("is over the {max}-byte cap of a sidecar file"),
            });
        }
        Ok(Some(out))
    }
}

/// Connects to a local file.
struct LocalConnect {
    path: PathBuf,
}

impl Connect for LocalConnect {
    fn connect(&mut self, offset: u64) -> std::result::Result<Conn, Fault> {
        let fault = |e: io::Error| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => {
                Fault::Missing(Cause::Io(e))
            }
            _ => Fault::Retry(Cause::Io(e)),
        };
        // A FIFO or device would block or never end; only regular files are shards.
        let md = std::fs::metadata(&self.path).map_err(fault)?;
        if !md.is_file() {
            let e = io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
            return Err(Fault::Fatal(Cause::Io(e)));
        }
        let mut f = File::open(&self.path).map_err(fault)?;
        f.seek(SeekFrom::Start(offset)).map_err(fault)?;
        Ok(Conn {
            body: Box::new(f),
            len: Some(md.len()),
        })
    }
}
