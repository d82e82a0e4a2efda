//! A shard as one sequential byte stream that survives dropped connections: every transport
//! (file, command, HTTP, object store) only knows how to connect at a byte offset; this
//! module decides when to reconnect, how long to wait, and when to give up.

use std::io::{self, Read};
use std::time::Duration;

use crate::{Cause, ShardError};

/// How often and how patiently a broken stream is reconnected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Reconnections per shard, in all (counting failed connects and mid-stream faults).
    pub retries: u32,
    /// The first wait; each next one doubles.
    pub base_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before reconnection number `attempt` (0-based): exponential, capped.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// What one connection attempt came to.
#[derive(Debug)]
pub(crate) enum Fault {
    /// The shard is not there: report, do not retry.
    Missing(Cause),
    /// A fault that another try may fix.
    Retry(Cause),
    /// A fault that retrying cannot fix.
    Fatal(Cause),
}

/// An open connection: a body positioned at the offset asked for, and the shard's whole
/// length when the transport knows it (so an early end is noticed).
pub(crate) struct Conn {
    pub body: Box<dyn Read + Send>,
    pub len: Option<u64>,
}

/// A transport: opens the shard at a byte offset.
pub(crate) trait Connect: Send {
    fn connect(&mut self, offset: u64) -> Result<Conn, Fault>;
}

/// Reads and drops the first `offset` bytes of a stream that cannot start there (a re-run
/// command, a server that ignores `Range`).
pub(crate) fn discard(body: &mut impl Read, offset: u64) -> Result<(), Fault> {
    match io::copy(&mut body.take(offset), &mut io::sink()) {
        Ok(n) if n == offset => Ok(()),
        Ok(produced) => Err(Fault::Retry(Cause::Short { produced, offset })),
        Err(e) => Err(Fault::Retry(e.into())),
    }
}

/// A shard being read start to end (a blocking [`Read`]). A read error or an early end
/// reconnects at the offset reached, after a backoff, at most [`RetryPolicy::retries`]
/// times; then `read` fails with an I/O error wrapping [`ShardError::Failed`] (see
/// [`ShardError::from_io`]), which names the URL, the offset and the last cause, and every
/// later `read` fails the same way.
pub struct ShardReader {
    url: String,
    connector: Box<dyn Connect>,
    policy: RetryPolicy,
    body: Option<Box<dyn Read + Send>>,
    len: Option<u64>,
    pos: u64,
    retries: u32,
    dead: Option<String>,
}

impl std::fmt::Debug for ShardReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardReader")
            .field("url", &self.url)
            .field("pos", &self.pos)
            .field("len", &self.len)
            .field("retries", &self.retries)
            .finish()
    }
}

impl ShardReader {
    /// Connects at byte `start`, retrying as the policy allows; a missing shard is an error
    /// at once. [`ShardReader::position`] counts from the shard's first byte, not `start`.
    pub(crate) fn open(
        url: String,
        connector: Box<dyn Connect>,
        policy: RetryPolicy,
        start: u64,
    ) -> Result<Self, ShardError> {
        let mut r = Self {
            url,
            connector,
            policy,
            body: None,
            len: None,
            pos: start,
            retries: 0,
            dead: None,
        };
        match r.connector.connect(start) {
            Ok(conn) => r.attach(conn),
            Err(Fault::Missing(cause)) => {
                return Err(ShardError::Missing { url: r.url, cause });
            }
            Err(Fault::Retry(cause)) => r.reconnect(cause)?,
            Err(Fault::Fatal(cause)) => return Err(r.failed(cause)),
        }
        Ok(r)
    }

    /// The shard's location, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The offset in the shard reached so far (bytes handed out, plus where reading started).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The shard's length, when the transport said (not for commands).
    pub fn shard_len(&self) -> Option<u64> {
        self.len
    }

    /// Reconnections made so far.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    fn attach(&mut self, conn: Conn) {
        self.body = Some(conn.body);
        self.len = conn.len.or(self.len);
    }

    fn failed(&self, cause: Cause) -> ShardError {
        ShardError::Failed {
            url: self.url.clone(),
            offset: self.pos,
            retries: self.retries,
            cause,
        }
    }

    /// Reconnects at the current offset after `cause`, until a connection holds or the
    /// retries are used up.
    fn reconnect(&mut self, mut cause: Cause) -> Result<(), ShardError> {
        self.body = None;
        loop {
            if self.retries >= self.policy.retries {
                return Err(self.failed(cause));
            }
            std::thread::sleep(self.policy.delay(self.retries));
            self.retries += 1;
            match self.connector.connect(self.pos) {
                Ok(conn) => {
                    self.attach(conn);
                    return Ok(());
                }
                Err(Fault::Retry(c)) => cause = c,
                // Gone after it was there, or unfixable: the rest of the shard is lost.
                Err(Fault::Missing(c) | Fault::Fatal(c)) => return Err(self.failed(c)),
            }
        }
    }

    fn dead_error(&self) -> io::Error {
        io::Error::other(self.dead.clone().unwrap_or_default())
    }
}

impl Read for ShardReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let Some(body) = self.body.as_mut() else {
                return Err(self.dead_error());
            };
            let cause = match body.read(buf) {
                Ok(0) => match self.len {
                    Some(len) if self.pos < len => Cause::Truncated { at: self.pos, len },
                    _ => return Ok(0),
                },
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => e.into(),
            };
            if let Err(e) = self.reconnect(cause) {
                self.dead = Some(e.to_string());
                return Err(io::Error::other(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let p = RetryPolicy {
            retries: 9,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let got: Vec<u128> = (0..6).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.delay(200), Duration::from_secs(1));
    }

    /// Serves `data` in pieces: connection `i` delivers at most `cuts[i]` bytes, then fails.
    struct Flaky {
        data: Vec<u8>,
        cuts: Vec<usize>,
        offsets: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    }

    impl Connect for Flaky {
        fn connect(&mut self, offset: u64) -> Result<Conn, Fault> {
            let mut log = self.offsets.lock().unwrap();
            log.push(offset);
            let n = log.len() - 1;
            let start = offset as usize;
            let end = self
                .cuts
                .get(n)
                .map_or(self.data.len(), |c| (start + c).min(self.data.len()));
            let body = io::Cursor::new(self.data[start..end].to_vec());
            Ok(Conn {
                body: Box::new(body),
                len: Some(self.data.len() as u64),
            })
        }
    }

    fn reader(
        cuts: Vec<usize>,
        retries: u32,
    ) -> (ShardReader, std::sync::Arc<std::sync::Mutex<Vec<u64>>>) {
        let offsets = std::sync::Arc::default();
        let flaky = Flaky {
            data: (0..=255u8).cycle().take(1000).collect(),
            cuts,
            offsets: std::sync::Arc::clone(&offsets),
        };
        let policy = RetryPolicy {
            retries,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        };
        (
            ShardReader::open("mem://x".into(), Box::new(flaky), policy, 0).unwrap(),
            offsets,
        )
    }

    #[test]
    fn early_ends_resume_at_the_offset_reached() {
        let (mut r, offsets) = reader(vec![300, 450], 3);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        let want: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        assert_eq!(got, want);
        assert_eq!(*offsets.lock().unwrap(), [0, 300, 750]);
        assert_eq!(r.retries(), 2);
    }

    #[test]
    fn used_up_retries_name_the_offset_and_stay_failed() {
        let (mut r, _) = reader(vec![100; 10], 2);
        let mut got = Vec::new();
        let err = r.read_to_end(&mut got).unwrap_err();
        assert_eq!(got.len(), 300);
        let e = ShardError::from_io(&err).expect("a shard error inside");
        assert!(
            matches!(
                e,
                ShardError::Failed {
                    offset: 300,
                    retries: 2,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "mem://x: gave up at byte 300 after 2 retries"
        );
        let again = r.read(&mut [0; 8]).unwrap_err();
        assert!(again.to_string().contains("byte 300"), "{again}");
    }
}
