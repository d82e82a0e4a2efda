//! A loopback HTTP/1.1 file server for tests and the benchmark: serves byte strings by path,
//! honours `Range: bytes=N-` and `bytes=N-M` and `If-Match`, logs every request, and injects faults per path
//! (a body cut short, a status before success, a stall mid-body, `Range` ignored).
//! One thread per connection; every response closes its connection.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What a path does wrong, on its first `times` requests (counted per path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing.
    None,
    /// Announces the full length, sends `bytes` of the body, closes.
    Cut { bytes: usize, times: usize },
    /// Answers `status` with no body.
    Status { status: u16, times: usize },
    /// Sends `bytes`, then waits `ms` before the rest (longer than a client's read timeout).
    Stall { bytes: usize, ms: u64, times: usize },
    /// Answers 200 with the whole body whatever `Range` says, cut after `bytes` the first
    /// `times` requests.
    IgnoreRange { bytes: usize, times: usize },
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub path: String,
    /// The start of `Range: bytes=N-`, if asked.
    pub range: Option<u64>,
    /// The last byte of `Range: bytes=N-M`, if asked.
    pub range_last: Option<u64>,
    pub if_match: Option<String>,
}

/// What a path serves.
#[derive(Clone)]
enum Body {
    Mem(Arc<Vec<u8>>),
    /// A file read at each request (the benchmark's shards; no faults).
    Disk(PathBuf),
}

#[derive(Default)]
struct State {
    files: HashMap<String, (Body, Fault, u64)>,
    log: Vec<Seen>,
    version: u64,
}

/// The server; stops when dropped.
pub struct Server {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on 127.0.0.1 at a free port.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = Arc::clone(&st);
                std::thread::spawn(move || handle(conn, &st));
            }
        });
        Self {
            addr,
            state,
            stop,
            accept: Some(accept),
        }
    }

    /// Serves `body` at `path` (starting with `/`) with `fault`; a new body gets a new ETag.
    pub fn serve(&self, path: &str, body: Vec<u8>, fault: Fault) {
        let mut s = self.state.lock().unwrap();
        s.version += 1;
        let v = s.version;
        s.files
            .insert(path.to_string(), (Body::Mem(Arc::new(body)), fault, v));
    }

    /// Serves the file at `file` (read from disk at each request) at `path`.
    pub fn serve_file(&self, path: &str, file: PathBuf) {
        let mut s = self.state.lock().unwrap();
        s.version += 1;
        let v = s.version;
        s.files
            .insert(path.to_string(), (Body::Disk(file), Fault::None, v));
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `host:port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The requests for `path` so far.
    pub fn seen(&self, path: &str) -> Vec<Seen> {
        let s = self.state.lock().unwrap();
        s.log.iter().filter(|r| r.path == path).cloned().collect()
    }

    /// The `Range` starts asked for `path`, one per request (`None`: from the start).
    pub fn ranges(&self, path: &str) -> Vec<Option<u64>> {
        self.seen(path).into_iter().map(|r| r.range).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn read_head(conn: &TcpStream) -> Option<(String, HashMap<String, String>)> {
    let mut r = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some((path, headers))
}

fn status_line(status: u16) -> &'static str {
    match status {
        200 => "200 OK",
        206 => "206 Partial Content",
        403 => "403 Forbidden",
        404 => "404 Not Found",
        412 => "412 Precondition Failed",
        416 => "416 Range Not Satisfiable",
        500 => "500 Internal Server Error",
        503 => "503 Service Unavailable",
        _ => "599 Other",
    }
}

fn reply_empty(conn: &mut TcpStream, status: u16) {
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        status_line(status)
    );
    let _ = conn.write_all(head.as_bytes());
}

fn send_file(conn: &mut TcpStream, path: &Path, start: u64, len: u64) -> std::io::Result<u64> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(start))?;
    std::io::copy(&mut f.take(len), conn)
}

/// Logs a request; returns its path's body and version, fault, and the request's number
/// among its path's requests.
fn log(
    state: &Mutex<State>,
    path: &str,
    range: Option<(u64, Option<u64>)>,
    if_match: Option<String>,
) -> (Option<(Body, u64)>, Fault, usize) {
    let mut s = state.lock().unwrap();
    s.log.push(Seen {
        path: path.to_string(),
        range: range.map(|r| r.0),
        range_last: range.and_then(|r| r.1),
        if_match,
    });
    let nth = s.log.iter().filter(|r| r.path == path).count() - 1;
    match s.files.get(path) {
        Some((body, fault, v)) => (Some((body.clone(), *v)), *fault, nth),
        None => (None, Fault::None, nth),
    }
}

fn handle(mut conn: TcpStream, state: &Mutex<State>) {
    let Some((path, headers)) = read_head(&conn) else {
        return;
    };
    // `bytes=N-` or `bytes=N-M`.
    let asked: Option<(u64, Option<u64>)> = headers
        .get("range")
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok())));
    let range = asked.map(|r| r.0);
    let if_match = headers.get("if-match").cloned();
    let (file, fault, nth) = log(state, &path, asked, if_match.clone());
    let Some((body, version)) = file else {
        return reply_empty(&mut conn, 404);
    };
    let etag = format!("\"v{version}\"");
    if let Fault::Status { status, times } = fault {
        if nth < times {
            return reply_empty(&mut conn, status);
        }
    }
    if if_match.as_ref().is_some_and(|t| *t != etag) {
        return reply_empty(&mut conn, 412);
    }
    let start = match (range, fault) {
        (_, Fault::IgnoreRange { .. }) | (None, _) => 0,
        (Some(r), _) => r as usize,
    };
    let len = match &body {
        Body::Mem(b) => b.len(),
        Body::Disk(p) => std::fs::metadata(p).map_or(0, |m| m.len() as usize),
    };
    if start > len {
        return reply_empty(&mut conn, 416);
    }
    // One past the last byte sent: a bounded range ends early.
    let stop = match (asked, fault) {
        (Some((_, Some(last))), f) if !matches!(f, Fault::IgnoreRange { .. }) => {
            (last as usize + 1).min(len)
        }
        _ => len,
    };
    let (status, extra) = if start > 0 || stop < len {
        let range = format!("Content-Range: bytes {start}-{}/{len}\r\n", stop - 1);
        (206, range)
    } else {
        (200, String::new())
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Length: {}\r\nETag: {etag}\r\nLast-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\n{extra}Connection: close\r\n\r\n",
        status_line(status),
        stop - start
    );
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    match body {
        Body::Mem(b) => send_mem(&mut conn, &b[start..stop], fault, nth),
        Body::Disk(p) => {
            let _ = send_file(&mut conn, &p, start as u64, (stop - start) as u64);
        }
    }
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Both);
}

/// Sends `rest` of an in-memory body, as request `nth` of its path under `fault`.
fn send_mem(conn: &mut TcpStream, rest: &[u8], fault: Fault, nth: usize) {
    let _ = match fault {
        Fault::Cut { bytes, times } | Fault::IgnoreRange { bytes, times } if nth < times => {
            conn.write_all(&rest[..bytes.min(rest.len())])
        }
        Fault::Stall { bytes, ms, times } if nth < times => {
            let (a, b) = rest.split_at(bytes.min(rest.len()));
            let _ = conn.write_all(a).and_then(|_| conn.flush());
            std::thread::sleep(Duration::from_millis(ms));
            conn.write_all(b)
        }
        _ => conn.write_all(rest),
    };
}
