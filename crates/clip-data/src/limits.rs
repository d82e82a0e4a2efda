//! What a data file may be and how big: only regular files are read (a symlink to `/dev/zero`
//! would be read forever, a FIFO would block a worker), and every read is capped, so one
//! hostile or broken sample costs a skip, not the process's memory.

use std::cell::Cell;
use std::fs::{File, Metadata};
use std::io::{self, BufRead, Read};
use std::path::Path;
use std::rc::Rc;

/// Largest image file or tar member read (64 MiB): far above any photo, far below what would
/// hurt a loader holding several in flight.
pub const MAX_IMAGE_BYTES: u64 = 64 << 20;
/// Largest caption (64 KiB), from a `.txt` file, a tar member or a manifest: tokenizers keep
/// 77 tokens, so anything longer is not a caption.
pub const MAX_CAPTION_BYTES: u64 = 64 << 10;
/// Longest JSONL line, and largest CSV/TSV record (1 MiB): room for a path and several
/// captions at their cap.
pub const MAX_RECORD_BYTES: u64 = 1 << 20;

/// What `md` is when it is not a regular file ("a directory", "a FIFO", …); `None` for a
/// regular file.
pub fn not_regular(md: &Metadata) -> Option<&'static str> {
    let t = md.file_type();
    if t.is_file() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return Some("a FIFO");
        }
        if t.is_char_device() {
            return Some("a character device");
        }
        if t.is_block_device() {
            return Some("a block device");
        }
        if t.is_socket() {
            return Some("a socket");
        }
    }
    Some(if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    })
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Opens `path` (links followed) for reading if it is a regular file; anything else is an
/// error saying what it is. The open itself never blocks: a FIFO is opened non-blocking and
/// refused by what the opened handle is, so a file swapped after a check cannot slip through.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut o, libc::O_NONBLOCK);
    let f = o.open(path)?;
    if let Some(what) = not_regular(&f.metadata()?) {
        return Err(invalid(format!("{what}, not a regular file")));
    }
    Ok(f)
}

/// The whole of regular file `path` if it is at most `max` bytes; an error naming the size
/// otherwise (also when it grows past `max` while read).
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let f = open_regular(path)?;
    let len = f.metadata()?.len();
    if len > max {
        return Err(too_big(len, max));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(too_big(buf.len() as u64, max));
    }
    Ok(buf)
}

/// The error for `len` bytes over the cap `max`.
pub(crate) fn too_big(len: u64, max: u64) -> io::Error {
    invalid(format!("{} is over the {} cap", bytes(len), bytes(max)))
}

/// `n` bytes for a message: "64 MiB", "64 KiB", or exactly ("65537 bytes").
pub(crate) fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n.is_multiple_of(1 << 20) => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n.is_multiple_of(1 << 10) => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// One line of `r` into `buf` (without its `\n`), holding at most `max` bytes: a longer line
/// is read to its end and dropped. Returns `None` at the end of input, else the line's full
/// length (over `max`: `buf` is then empty).
pub(crate) fn read_line_capped(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: u64,
) -> io::Result<Option<u64>> {
    buf.clear();
    let mut len = 0u64;
    let mut any = false;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(any.then_some(len));
        }
        any = true;
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        len += part.len() as u64;
        if len <= max {
            buf.extend_from_slice(part);
        } else {
            buf.clear();
        }
        let used = done.unwrap_or(part.len());
        r.consume(used);
        if done.is_some() {
            return Ok(Some(len));
        }
    }
}

/// The message for a manifest record over [`MAX_RECORD_BYTES`].
pub(crate) fn record_too_long() -> String {
    format!(
        "a record is longer than the {} cap",
        bytes(MAX_RECORD_BYTES)
    )
}

/// A reader that fails once it has handed out more than `limit` bytes; the owner moves the
/// limit on as it consumes records ([`RecordCap::allow`]), which caps any one record of a
/// parser (the `csv` crate) that would otherwise grow its buffer without bound.
pub(crate) struct Capped<R> {
    inner: R,
    read: u64,
    limit: Rc<Cell<u64>>,
}

/// The handle that moves a [`Capped`] reader's limit.
#[derive(Clone)]
pub(crate) struct RecordCap(Rc<Cell<u64>>);

impl RecordCap {
    /// Allows `max` bytes past byte `at` of the input (plus a read-ahead buffer's worth).
    pub(crate) fn allow(&self, at: u64, max: u64) {
        self.0.set(at + max + (64 << 10));
    }
}

impl<R: Read> Capped<R> {
    /// `inner`, allowed `max` bytes until the first [`RecordCap::allow`].
    pub(crate) fn new(inner: R, max: u64) -> (Self, RecordCap) {
        let cap = RecordCap(Rc::new(Cell::new(0)));
        cap.allow(0, max);
        let limit = Rc::clone(&cap.0);
        (
            Self {
                inner,
                read: 0,
                limit,
            },
            cap,
        )
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read >= self.limit.get() {
            return Err(invalid(record_too_long()));
        }
        let room = (self.limit.get() - self.read).min(buf.len() as u64) as usize;
        let n = self.inner.read(&mut buf[..room])?;
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_lines_are_read_to_their_end_and_dropped() {
        let text = format!("short\n{}\nlast", "x".repeat(100));
        // A tiny buffer, so that lines span several fills.
        let mut r = io::BufReader::with_capacity(7, text.as_bytes());
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some(len) = read_line_capped(&mut r, &mut buf, 10).unwrap() {
            got.push((len, String::from_utf8(buf.clone()).unwrap()));
        }
        assert_eq!(
            got,
            [
                (5, "short".to_string()),
                (100, String::new()),
                (4, "last".to_string())
            ]
        );
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes(65 << 10), "65 KiB");
        assert_eq!(bytes(100), "100 bytes");
        assert_eq!(bytes((64 << 10) + 1), "65537 bytes");
    }

    #[test]
    fn capped_reader_fails_past_its_limit_until_moved_on() {
        let data = vec![b'a'; 300];
        let (mut r, cap) = Capped::new(&data[..], 0);
        cap.allow(0, 0);
        // The read-ahead allowance alone covers 300 bytes.
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 300);
        let big = vec![b'a'; 200 << 10];
        let (mut r, _cap) = Capped::new(&big[..], 10);
        let err = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(
            err.to_string().contains("longer than the 1 MiB cap"),
            "{err}"
        );
    }
}
