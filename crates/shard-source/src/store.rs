//! s3://, gs:// and az:// shards through `object_store`, whose async client runs on one
//! small tokio runtime owned by this crate; readers block on it from the loader's threads.
//!
//! `object_store`'s own retries are off, so that [`crate::RetryPolicy`] alone counts them;
//! its whole-request timeout is off too (a shard may take minutes), replaced by a timeout
//! on each wait for the next chunk.

use std::io::{self, Read};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use object_store::{GetOptions, GetRange, ObjectStore, RetryConfig};
use tokio::runtime::Runtime;

use crate::profile::AwsProfile;
use crate::stream::{Conn, Connect, Fault};
use crate::{Cause, OpenConfig, StoreKind};

/// The crate's runtime: one worker thread drives every store connection (the bytes are
/// copied out on the caller's thread).
fn runtime() -> Result<&'static Runtime, Cause> {
    static RT: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("shard-source-io")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| {
        Cause::Io(io::Error::other(format!(
            "cannot start the I/O runtime: {e}"
        )))
    })
}

/// A client for one bucket: the environment (and for S3 the profile files), then the
/// endpoint override, then `options` (object_store config keys), each over the last.
pub(crate) fn build(
    kind: StoreKind,
    bucket: &str,
    cfg: &OpenConfig,
) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    use object_store::{aws, azure, gcp, ClientConfigKey as C};
    let retry = RetryConfig {
        max_retries: 0,
        ..RetryConfig::default()
    };
    let connect = format!("{}ms", cfg.connect_timeout.as_millis());
    // Effectively no limit on a whole request: the per-chunk read timeout guards stalls.
    let whole = "7d".to_string();
    let mut client = vec![(C::ConnectTimeout, connect), (C::Timeout, whole)];
    let endpoint = cfg.endpoint.clone();
    if endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"))
    {
        client.push((C::AllowHttp, "true".into()));
    }
    let store: Arc<dyn ObjectStore> = match kind {
        StoreKind::S3 => {
            let mut b = aws::AmazonS3Builder::from_env().with_retry(retry);
            for (k, v) in AwsProfile::from_env().options {
                b = b.with_config(k.parse()?, v);
            }
            for (k, v) in client {
                b = b.with_config(aws::AmazonS3ConfigKey::Client(k), v);
            }
            if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            for (k, v) in &cfg.store_options {
                b = b.with_config(k.parse()?, v);
            }
            Arc::new(b.with_bucket_name(bucket).build()?)
        }
        StoreKind::Gcs => {
            let mut b = gcp::GoogleCloudStorageBuilder::from_env().with_retry(retry);
            for (k, v) in client {
                b = b.with_config(gcp::GoogleConfigKey::Client(k), v);
            }
            for (k, v) in &cfg.store_options {
                b = b.with_config(k.parse()?, v);
            }
            Arc::new(b.with_bucket_name(bucket).build()?)
        }
        StoreKind::Azure => {
            let mut b = azure::MicrosoftAzureBuilder::from_env().with_retry(retry);
            for (k, v) in client {
                b = b.with_config(azure::AzureConfigKey::Client(k), v);
            }
            for (k, v) in &cfg.store_options {
                b = b.with_config(k.parse()?, v);
            }
            Arc::new(b.with_container_name(bucket).build()?)
        }
    };
    Ok(store)
}

/// What a store error means for this shard.
fn store_fault(e: object_store::Error) -> Fault {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } | E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            Fault::Missing(Cause::Store(e))
        }
        E::Precondition { .. } => Fault::Fatal(Cause::Changed),
        E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. } => Fault::Fatal(Cause::Store(e)),
        e => Fault::Retry(Cause::Store(e)),
    }
}

fn timed_out(what: &str, after: Duration) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("no {what} for {after:?}"))
}

/// Connects to one object.
pub(crate) struct StoreConnect {
    pub store: Arc<dyn ObjectStore>,
    pub path: object_store::path::Path,
    pub read_timeout: Duration,
    /// The first response's ETag: a resumed read must see the same object.
    pub etag: Option<String>,
    /// Where reading starts (0 for a whole shard).
    pub start: u64,
    /// Where a bounded read ends (exclusive); `None`: at the object's end.
    pub end: Option<u64>,
}

impl Connect for StoreConnect {
    fn connect(&mut self, offset: u64) -> Result<Conn, Fault> {
        let rt = runtime().map_err(Fault::Fatal)?;
        let range = match self.end {
            Some(end) => Some(GetRange::Bounded(offset..end)),
            None => (offset > 0).then_some(GetRange::Offset(offset)),
        };
        let opts = GetOptions {
            range,
            if_match: self.etag.clone().filter(|_| offset > self.start),
            ..GetOptions::default()
        };
        let get = self.store.get_opts(&self.path, opts);
        // The timer is made inside the runtime, which owns the clock.
        let res = match rt.block_on(async { tokio::time::timeout(self.read_timeout, get).await }) {
            Err(_) => {
                return Err(Fault::Retry(Cause::Io(timed_out(
                    "answer",
                    self.read_timeout,
                ))))
            }
            Ok(r) => r.map_err(store_fault)?,
        };
        if offset == self.start {
            self.etag = res.meta.e_tag.clone();
        }
        if res.range.start != offset {
            let got = format!("bytes {}-{}", res.range.start, res.range.end);
            return Err(Fault::Fatal(Cause::BadRange { offset, got }));
        }
        let len = Some(res.meta.size);
        let body = StoreBody {
            stream: res.into_stream(),
            chunk: Bytes::new(),
            rt,
            read_timeout: self.read_timeout,
        };
        Ok(Conn {
            body: Box::new(body),
            len,
        })
    }
}

/// An object's body as a blocking reader.
struct StoreBody {
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
    rt: &'static Runtime,
    read_timeout: Duration,
}

impl Read for StoreBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            let (stream, limit) = (&mut self.stream, self.read_timeout);
            match self
                .rt
                .block_on(async { tokio::time::timeout(limit, stream.next()).await })
            {
                Err(_) => return Err(timed_out("data", self.read_timeout)),
                Ok(None) => return Ok(0),
                Ok(Some(Err(e))) => return Err(io::Error::other(e)),
                Ok(Some(Ok(b))) => self.chunk = b,
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}
