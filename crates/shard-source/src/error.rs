//! Errors of this crate: one enum for the caller ([`ShardError`]), one for why a connection
//! or a read failed ([`Cause`]), so a skipped shard's reason names the URL, the byte offset
//! reached and what went wrong.

use std::io;

/// Why a shard could not be opened or read to its end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    /// A `--data` spec that cannot name any shard.
    #[error("data {spec}: {reason}")]
    Spec {
        /// The spec (or the part of it between `::`) as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The shard is not there (HTTP 401/403/404/410, a missing object or file, a command that
    /// failed before writing a byte). Not retried: the caller skips the shard.
    #[error("{url}: missing")]
    Missing {
        /// The shard.
        url: String,
        /// What the server, store or command said.
        #[source]
        cause: Cause,
    },
    /// Reading stopped at `offset` and reconnecting did not help (retries used up, or a fault
    /// that retrying cannot fix). The caller skips the rest of the shard.
    #[error("{url}: gave up at byte {offset} after {retries} retries")]
    Failed {
        /// The shard.
        url: String,
        /// Bytes of the shard handed out before the failure.
        offset: u64,
        /// Reconnections tried.
        retries: u32,
        /// The last failure.
        #[source]
        cause: Cause,
    },
    /// A byte range was asked of a shard that can only be read from its start (a `pipe:`
    /// command's output).
    #[error("{url}: cannot be read at an offset (only from its start)")]
    NotRanged {
        /// The shard.
        url: String,
    },
    /// An object-store client could not be set up (bad option, bad endpoint).
    #[error("cannot set up the client for {url}")]
    Client {
        /// The shard (or bucket) the client was for.
        url: String,
        /// What the store library said.
        #[source]
        cause: Cause,
    },
    /// A sidecar file (`sizes.json`, `_info.json`, `*_stats.json`) that does not say what
    /// it should, or is too big to be one.
    #[error("{file}: {}{reason}", key_prefix(.key))]
    Sidecar {
        /// The file.
        file: String,
        /// The key (or JSON path) at fault, when one is.
        key: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// No explicit sample count and no sidecar file that gives one.
    #[error(
        "the number of samples per epoch is unknown: nothing gives the size of {missing} \
         (looked for {looked_for}); give it explicitly (`epoch_samples`)"
    )]
    UnknownSize {
        /// The shards without a known size (the first few, and how many in all).
        missing: String,
        /// The sidecar files looked for.
        looked_for: String,
    },
}

/// What went wrong with one connection or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Cause {
    /// An HTTP status other than success.
    #[error("HTTP status {status}")]
    Status {
        /// The status code.
        status: u16,
    },
    /// A transport, file or pipe error.
    #[error(transparent)]
    Io(io::Error),
    /// An object-store error.
    #[error(transparent)]
    Store(#[from] object_store::Error),
    /// A `pipe:` command that exited unsuccessfully.
    #[error("`{command}` exited with {status}{}", stderr_tail(.stderr))]
    Exit {
        /// The command.
        command: String,
        /// Its exit status, as the OS words it.
        status: String,
        /// The end of what it wrote to stderr.
        stderr: String,
    },
    /// The body ended before the length the server announced.
    #[error("the stream ended at byte {at} of {len}")]
    Truncated {
        /// Bytes received.
        at: u64,
        /// Bytes announced.
        len: u64,
    },
    /// A re-run command (or a server ignoring `Range`) ended before the offset already read.
    #[error("the stream ended after {produced} bytes, before the {offset} bytes already read")]
    Short {
        /// Bytes it produced.
        produced: u64,
        /// Bytes already handed out.
        offset: u64,
    },
    /// A server answered a resumed request with a range that does not start where asked.
    #[error("asked to resume at byte {offset}, the server sent {got}")]
    BadRange {
        /// The offset asked for.
        offset: u64,
        /// The `Content-Range` it sent.
        got: String,
    },
    /// The object's ETag changed between connections: its bytes would not line up.
    #[error("the object changed while it was read")]
    Changed,
}

/// An I/O error that carries a [`Cause`] (a transport's body reports one through
/// `Read`) gives that cause back; any other is [`Cause::Io`].
impl From<io::Error> for Cause {
    fn from(e: io::Error) -> Self {
        if !e.get_ref().is_some_and(|i| i.is::<Cause>()) {
            return Cause::Io(e);
        }
        let kind = e.kind();
        match e.into_inner().map(|i| i.downcast::<Cause>()) {
            Some(Ok(c)) => *c,
            Some(Err(other)) => Cause::Io(io::Error::new(kind, other)),
            None => Cause::Io(io::Error::from(kind)),
        }
    }
}

fn key_prefix(key: &Option<String>) -> String {
    key.as_ref().map_or(String::new(), |k| format!("`{k}` "))
}

fn stderr_tail(s: &str) -> String {
    let s = s.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

impl ShardError {
    /// The [`ShardError`] inside an I/O error returned by a shard reader's `read`, if any
    /// (the tar reader above sees only `io::Error`).
    pub fn from_io(err: &io::Error) -> Option<&ShardError> {
        err.get_ref()?.downcast_ref::<ShardError>()
    }

    /// The error a reader's `read` failed with, owned: its own [`ShardError`] back, or any
    /// other I/O error as [`ShardError::Failed`] at `offset` of `url`.
    pub fn from_read(e: io::Error, url: &str, offset: u64) -> ShardError {
        let failed = |cause| ShardError::Failed {
            url: url.to_string(),
            offset,
            retries: 0,
            cause,
        };
        if ShardError::from_io(&e).is_none() {
            return failed(Cause::Io(e));
        }
        let kind = e.kind();
        match e.into_inner().map(|i| i.downcast::<ShardError>()) {
            Some(Ok(s)) => *s,
            Some(Err(other)) => failed(Cause::Io(io::Error::new(kind, other))),
            None => failed(Cause::Io(io::Error::from(kind))),
        }
    }

    /// Whether the shard was missing rather than failing mid-way.
    pub fn is_missing(&self) -> bool {
        matches!(self, ShardError::Missing { .. })
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ShardError>;
