//! `pipe:COMMAND` shards: `sh -c COMMAND`, its stdout being the shard.
//!
//! A command cannot seek, so resuming at an offset re-runs it and discards the bytes already
//! handed out (the transfer is repeated up to that point). A command that fails before
//! writing a byte is a missing shard (`curl -f` on a 404, `aws s3 cp` of an absent key) and
//! is not re-run: transient start-up failures are the command's own to retry
//! (`curl --retry`). Dropping a reader closes the pipe and kills the shell; commands inside
//! it then stop at their next write (SIGPIPE).

use std::io::{self, BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::thread::JoinHandle;

use crate::stream::{discard, Conn, Connect, Fault};
use crate::Cause;

/// Bytes of a failing command's stderr kept for its error message.
const STDERR_TAIL: usize = 2048;

/// One run of the command.
struct Run {
    command: String,
    child: Child,
    stdout: Option<ChildStdout>,
    stderr: Option<JoinHandle<String>>,
    finished: bool,
}

/// Keeps the last [`STDERR_TAIL`] bytes of `r`, reading it to its end so the command never
/// blocks on a full stderr pipe.
fn tail_of(mut r: impl Read) -> String {
    let mut tail = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > 2 * STDERR_TAIL {
            tail.drain(..tail.len() - STDERR_TAIL);
        }
    }
    let start = tail.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&tail[start..]).into_owned()
}

impl Run {
    fn spawn(command: &str) -> io::Result<Self> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().map(|e| {
            std::thread::Builder::new()
                .name("pipe-stderr".into())
                .spawn(move || tail_of(e))
        });
        Ok(Self {
            command: command.to_string(),
            stdout: child.stdout.take(),
            stderr: stderr.transpose()?,
            child,
            finished: false,
        })
    }

    /// Waits for the command at the end of its output; an unsuccessful exit is an error
    /// carrying [`Cause::Exit`].
    fn finish(&mut self) -> io::Result<()> {
        let status = self.child.wait()?;
        self.finished = true;
        if status.success() {
            return Ok(());
        }
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Err(io::Error::other(Cause::Exit {
            command: self.command.clone(),
            status: status.to_string(),
            stderr,
        }))
    }
}

impl Read for Run {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(out) = self.stdout.as_mut() else {
            return Ok(0);
        };
        let n = out.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.stdout = None;
            self.finish()?;
        }
        Ok(n)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // Closing the pipe first makes writers inside the shell stop at their next write.
        self.stdout = None;
        if !self.finished {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Connects to a `pipe:` shard by running its command.
pub(crate) struct PipeConnect {
    pub command: String,
}

impl Connect for PipeConnect {
    fn connect(&mut self, offset: u64) -> Result<Conn, Fault> {
        let mut run = Run::spawn(&self.command).map_err(|e| Fault::Fatal(Cause::Io(e)))?;
        discard(&mut run, offset)?;
        let mut body = BufReader::with_capacity(64 << 10, run);
        if let Err(e) = body.fill_buf() {
            return Err(match offset {
                0 => Fault::Missing(e.into()),
                _ => Fault::Retry(e.into()),
            });
        }
        Ok(Conn {
            body: Box::new(body),
            len: None,
        })
    }
}
