//! http(s) shards through `ureq` (blocking, rustls): a resumed connection asks for
//! `Range: bytes=OFFSET-` (`bytes=OFFSET-LAST` for a bounded read), pinned to the first
//! response's strong ETag with `If-Match`, so a file replaced on the server mid-read is an
//! error rather than two halves spliced together.

use std::io;

use crate::stream::{discard, Conn, Connect, Fault};
use crate::Cause;

/// Connects to one http(s) shard.
pub(crate) struct HttpConnect {
    pub agent: ureq::Agent,
    pub url: String,
    /// The first response's strong ETag.
    pub etag: Option<String>,
    /// Where reading starts (0 for a whole shard).
    pub start: u64,
    /// Where a bounded read ends (exclusive); `None`: at the shard's end.
    pub end: Option<u64>,
}

/// What a status code means for this shard.
fn status_fault(status: u16) -> Fault {
    let cause = Cause::Status { status };
    match status {
        401 | 403 | 404 | 410 => Fault::Missing(cause),
        408 | 429 | 500..=599 => Fault::Retry(cause),
        412 => Fault::Fatal(Cause::Changed),
        _ => Fault::Fatal(cause),
    }
}

/// `bytes START-END/TOTAL` → (START, TOTAL if known).
fn content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

impl Connect for HttpConnect {
    fn connect(&mut self, offset: u64) -> Result<Conn, Fault> {
        let mut req = self.agent.get(&self.url);
        match self.end {
            // `offset < end`: the caller stops reading at `end`.
            Some(end) => req = req.set("Range", &format!("bytes={offset}-{}", end - 1)),
            None if offset > 0 => req = req.set("Range", &format!("bytes={offset}-")),
            None => {}
        }
        if offset > self.start {
            if let Some(tag) = &self.etag {
                req = req.set("If-Match", tag);
            }
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(status, _)) => return Err(status_fault(status)),
            Err(ureq::Error::Transport(t)) => {
                return Err(Fault::Retry(Cause::Io(io::Error::other(t))))
            }
        };
        let etag = resp
            .header("ETag")
            .filter(|t| !t.starts_with("W/"))
            .map(str::to_string);
        if offset == self.start {
            self.etag = etag;
        } else if self.etag.is_some() && etag.is_some() && etag != self.etag {
            return Err(Fault::Fatal(Cause::Changed));
        }
        let length: Option<u64> = resp.header("Content-Length").and_then(|v| v.parse().ok());
        match resp.status() {
            206 => {
                let got = resp.header("Content-Range").unwrap_or("").to_string();
                let Some((start, total)) = content_range(&got) else {
                    return Err(Fault::Fatal(Cause::BadRange { offset, got }));
                };
                if start != offset {
                    return Err(Fault::Fatal(Cause::BadRange { offset, got }));
                }
                let len = total.or(length.map(|l| offset + l));
                Ok(Conn {
                    body: resp.into_reader(),
                    len,
                })
            }
            200 => {
                // A server that ignores `Range` sends the whole shard again.
                let mut body = resp.into_reader();
                discard(&mut body, offset)?;
                Ok(Conn { body, len: length })
            }
            status => Err(Fault::Fatal(Cause::Status { status })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(content_range("items 5-9/10"), None);
    }

    #[test]
    fn statuses_split_into_missing_retried_and_fatal() {
        for s in [401, 403, 404, 410] {
            assert!(matches!(status_fault(s), Fault::Missing(_)), "{s}");
        }
        for s in [408, 429, 500, 503] {
            assert!(matches!(status_fault(s), Fault::Retry(_)), "{s}");
        }
        assert!(matches!(status_fault(412), Fault::Fatal(Cause::Changed)));
        assert!(matches!(status_fault(400), Fault::Fatal(_)));
    }
}
