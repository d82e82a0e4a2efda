//! `clip serve`: search loaded indexes over HTTP and from a browser.
//!
//! [`Server::load`] opens each index once and each model once (indexes built with the same
//! model share one model worker thread); [`Server::run`] answers on a socket until SIGTERM or
//! SIGINT. Routes (all errors are `{"error": "..."}` with a 4xx or 5xx status, never naming
//! the server's files):
//!
//! - `POST /search` `{text | image (base64) | embedding, k, index}` → `{index, results: [{id,
//!   score, path + url | caption | name}]}`, the ids `clip search` gives for the same query;
//!   `path` relative to the indexed folder unless `absolute_paths`.
//! - `POST /knn-service`, `GET /indices-list`, `POST /metadata`: clip-retrieval's back-end
//!   shapes, so that clip-front can use this server.
//! - `GET /image/{index}/{id}`: the indexed image file of entry `id`, streamed, never a file
//!   outside the indexed folder; for an index of shard samples, the image member's bytes,
//!   read alone from the shard (a ranged read; none for `pipe:` shards).
//! - `GET /`: a search page.
//!
//! What it promises against hostile clients and pages (Host check, limits, timeouts, reload
//! of a rebuilt index) is in docs/SECURITY.md.

mod api;
mod encoder;
mod images;
mod net;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use retrieval::EntriesKind;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::{resolve_model_dir, Clip, Device, Error, Index, Result};
use encoder::Encoder;

/// Requests handled at once (bodies already read); more are answered 503 at once instead of
/// piling up.
const IN_FLIGHT: usize = 64;

/// Bytes of decoded uploads held at once across all requests, at least one image of the
/// largest size allowed: uploads wait their turn instead of multiplying the peak.
const DECODE_BUDGET: u64 = 256 << 20;

/// A failed reopen is retried at most this often, however many requests come in.
const REOPEN_RETRY: Duration = Duration::from_secs(1);

/// Limits of `clip serve` against hostile or careless clients; each is a `clip serve` flag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServeLimits {
    /// Largest uploaded image in pixels (width × height), checked from its header before it
    /// is decoded; 16 MP is more than search needs (the model sees 224 × 224).
    pub max_pixels: u64,
    /// Connections open at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers, and that an idle keep-alive
    /// connection stays open.
    pub header_timeout_secs: u64,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 4096 * 4096,
            max_connections: 256,
            header_timeout_secs: 10,
        }
    }
}

/// What to serve and how.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Indexes by name; the first answers requests that name none.
    pub indexes: Vec<NamedIndex>,
    /// Model for text and image queries instead of the one each index records.
    pub model: Option<String>,
    /// Where the models run.
    pub device: Device,
    /// An origin allowed to call the API from a browser (CORS), e.g. a clip-front page.
    pub allow_origin: Option<String>,
    /// Host names answered besides loopback ones when bound to a loopback address (any port),
    /// and the only names (with IP literals) put into `/knn-service` URLs.
    pub allow_hosts: Vec<String>,
    /// Results name image files by absolute path (the form served before this option) instead
    /// of relative to the indexed folder.
    pub absolute_paths: bool,
    /// Size, connection and time limits.
    pub limits: ServeLimits,
    /// Arithmetic of the models' transformer blocks (`--precision`): int8 or bf16 encode
    /// queries faster on the CPU than f32; `None` runs each checkpoint in the precision it
    /// is stored in (f32, or int8 for a quantized checkpoint).
    pub precision: Option<crate::Precision>,
}

/// An index directory and the name requests use for it.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedIndex {
    /// Letters, digits, `.`, `_` or `-` (it appears in URLs unescaped).
    pub name: String,
    /// The index directory.
    pub dir: PathBuf,
}

impl NamedIndex {
    /// `NAME=DIR`, or `DIR` named after its folder. An existing directory wins over a split
    /// at `=`, so a path through a folder whose name holds `=` still works.
    pub fn parse(arg: &str) -> Result<Self> {
        let (name, dir) = match arg.split_once('=') {
            Some((name, dir)) if !Path::new(arg).is_dir() => (name.to_string(), PathBuf::from(dir)),
            _ => {
                let dir = PathBuf::from(arg);
                let abs = dir.canonicalize().map_err(crate::error::io_at(&dir))?;
                let name = abs.file_name().map(|n| n.to_string_lossy().into_owned());
                (name.unwrap_or_default(), dir)
            }
        };
        let ok = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
        if name.is_empty() || !name.chars().all(ok) {
            return Err(Error::Config {
                field: "index",
                reason: format!(
                    "index name {name:?} (from {arg}) must be letters, digits, '.', '_' or \
                     '-'; name it as NAME=DIR"
                ),
            });
        }
        Ok(Self { name, dir })
    }
}

/// Which version of an index directory is open: its manifest's identity, which every index
/// writer changes last (a new file renamed over it, or the file rewritten by a copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: Option<SystemTime>,
}

impl Stamp {
    fn of(dir: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(dir.join(retrieval::MANIFEST_FILE)).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: m.modified().ok(),
        })
    }
}

/// One opened version of an index; requests keep the version they started with, so ids
/// and rows always come from the same files.
pub(crate) struct Loaded {
    index: Index,
    /// The indexed folder, resolved, for image indexes: files are served only from under it.
    root: Option<PathBuf>,
    /// What reads image members from their shards, for indexes of shard samples.
    opener: Option<Arc<clip_data::shard_source::Opener>>,
    stamp: Option<Stamp>,
}

impl Loaded {
    fn open(dir: &Path) -> Result<Self> {
        let stamp = Stamp::of(dir);
        let index = Index::open(dir)?;
        let (mut root, mut opener) = (None, None);
        match index.entries().kind() {
            EntriesKind::Images { root: r } => {
                root = Some(r.canonicalize().map_err(crate::error::io_at(r))?);
            }
            EntriesKind::Samples { endpoint } => {
                opener = Some(Arc::new(crate::files::opener(endpoint.as_deref())));
            }
            _ => {}
        }
        Ok(Self {
            index,
            root,
            opener,
            stamp,
        })
    }
}

/// One served index with the model that embeds its queries.
struct Served {
    name: String,
    dir: PathBuf,
    /// `None` when the index records no model and none was given: embedding queries only.
    encoder: Option<Arc<Encoder>>,
    current: RwLock<Arc<Loaded>>,
    /// Set by SIGHUP or by a failed read: reopen before the next request.
    stale: AtomicBool,
    /// Held while reopening (one reopen at a time); when the last reopen failed.
    reopening: Mutex<Option<Instant>>,
}

impl Served {
    /// The version requests use now, without looking at the disk.
    fn loaded(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The open version, reopened first if the directory holds a newer one (one `stat` when
    /// it does not). A version that fails to open is logged and the old one kept. Blocking.
    fn fresh(&self) -> Arc<Loaded> {
        let now = self.loaded();
        let stale = self.stale.load(Ordering::Acquire);
        if !stale && Stamp::of(&self.dir) == now.stamp {
            return now;
        }
        // Another request is reopening: this one uses the version it has.
        let Ok(mut failed) = self.reopening.try_lock() else {
            return now;
        };
        if failed.is_some_and(|t| t.elapsed() < REOPEN_RETRY) {
            return now;
        }
        let now = self.loaded();
        if !self.stale.swap(false, Ordering::AcqRel) && Stamp::of(&self.dir) == now.stamp {
            return now;
        }
        let name = &self.name;
        let opened = Loaded::open(&self.dir).and_then(|l| match &self.encoder {
            Some(enc) if enc.dim() != l.index.dim() => Err(Error::Input(format!(
                "it now holds dimension {} but the model makes {}; restart to change models",
                l.index.dim(),
                enc.dim()
            ))),
            _ => Ok(l),
        });
        match opened {
            Ok(l) => {
                eprintln!(
                    "index {name}: reopened, {} vectors of dimension {}",
                    l.index.len(),
                    l.index.dim()
                );
                *failed = None;
                let l = Arc::new(l);
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = l.clone();
                l
            }
            Err(e) => {
                eprintln!(
                    "index {name}: cannot reopen {}, still serving the version opened before: \
                     {}",
                    self.dir.display(),
                    clip_data::error_chain(&e)
                );
                *failed = Some(Instant::now());
                now
            }
        }
    }
}

/// Which Host values a loopback server answers and which go into URLs.
#[derive(Debug, Default)]
pub(crate) struct Hosts {
    /// Lowercase names from `--allow-host`, without port.
    allowed: Vec<String>,
}

impl Hosts {
    /// The names of `--allow-host`, checked.
    fn allowing(names: &[String]) -> Result<Self> {
        let mut allowed = Vec::new();
        for h in names {
            let name = Self::name(h);
            let ok = |c: char| c.is_ascii_alphanumeric() || ".-_:".contains(c);
            if name.is_empty() || !name.chars().all(ok) {
                return Err(Error::Config {
                    field: "allow_host",
                    reason: format!("{h:?} is not a host name (letters, digits, '.', '-')"),
                });
            }
            allowed.push(name);
        }
        Ok(Self { allowed })
    }

    /// The host part of a Host header value: lowercase, without port, brackets or a final dot.
    fn name(value: &str) -> String {
        let v = value.trim();
        let host = if let Some(rest) = v.strip_prefix('[') {
            rest.split(']').next().unwrap_or("")
        } else {
            match v.rsplit_once(':') {
                Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
                _ => v,
            }
        };
        host.trim_end_matches('.').to_ascii_lowercase()
    }

    /// A loopback address or `localhost`: what a page rebound to 127.0.0.1 cannot claim.
    fn is_loopback(name: &str) -> bool {
        name == "localhost"
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// Whether a loopback server answers a request with this Host header value.
    fn answers(&self, value: &str) -> bool {
        let name = Self::name(value);
        Self::is_loopback(&name) || self.allowed.contains(&name)
    }

    /// Whether this Host value may be echoed into URLs: one that DNS cannot rebind (an IP
    /// literal or `localhost`) or an allowed name.
    fn trusted(&self, value: &str) -> bool {
        let name = Self::name(value);
        Self::is_loopback(&name)
            || name.parse::<std::net::IpAddr>().is_ok()
            || self.allowed.contains(&name)
    }
}

struct State {
    indexes: Vec<Arc<Served>>,
    /// Slots among the requests handled at once.
    permits: Arc<Semaphore>,
    /// Mebibytes of decoded uploads held at once (see [`DECODE_BUDGET`]).
    decode_mib: Arc<Semaphore>,
    decode_budget_mib: u32,
    allow_origin: Option<axum::http::HeaderValue>,
    hosts: Hosts,
    absolute_paths: bool,
    limits: ServeLimits,
}

impl State {
    /// The index called `name`, or the default one.
    fn find(&self, name: Option<&str>) -> std::result::Result<Arc<Served>, ApiError> {
        let Some(name) = name else {
            return Ok(self.indexes[0].clone());
        };
        let found = self.indexes.iter().find(|s| s.name == name);
        found.cloned().ok_or_else(|| {
            let known: Vec<&str> = self.indexes.iter().map(|s| s.name.as_str()).collect();
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("unknown index {name:?} (serving {})", known.join(", ")),
            )
        })
    }
}

/// Loaded indexes and models, ready to answer.
pub struct Server {
    state: Arc<State>,
}

impl Server {
    /// Opens every index (verifying checksums) and loads each distinct model once, telling
    /// `note` what it loads.
    pub fn load(opts: &ServeOptions, note: &dyn Fn(&str)) -> Result<Self> {
        if opts.indexes.is_empty() {
            return Err(Error::Input("no index to serve".into()));
        }
        let mut encoders: HashMap<PathBuf, Arc<Encoder>> = HashMap::new();
        let mut indexes: Vec<Arc<Served>> = Vec::new();
        for NamedIndex { name, dir } in &opts.indexes {
            if indexes.iter().any(|s| &s.name == name) {
                return Err(Error::Input(format!("two indexes are named {name:?}")));
            }
            let loaded = Loaded::open(dir)?;
            let index = &loaded.index;
            note(&format!(
                "index {name}: {} vectors of dimension {} from {}",
                index.len(),
                index.dim(),
                dir.display()
            ));
            let encoder = encoder_for(opts, name, index, &mut encoders, note)?;
            if let (Some(root), false) = (&loaded.root, opts.absolute_paths) {
                note(&format!(
                    "index {name}: results name files relative to {}",
                    root.display()
                ));
            }
            indexes.push(Arc::new(Served {
                name: name.clone(),
                dir: dir.clone(),
                encoder,
                current: RwLock::new(Arc::new(loaded)),
                stale: AtomicBool::new(false),
                reopening: Mutex::new(None),
            }));
        }
        let allow_origin = allowed_origin(opts, note)?;
        let hosts = Hosts::allowing(&opts.allow_hosts)?;
        let limits = opts.limits.clone();
        let zero = [
            ("max_pixels", limits.max_pixels == 0),
            ("max_connections", limits.max_connections == 0),
            // `header_timeout_secs`, named as the flag names it.
            ("header_timeout", limits.header_timeout_secs == 0),
        ];
        if let Some((field, _)) = zero.into_iter().find(|(_, z)| *z) {
            return Err(Error::Config {
                field,
                reason: "must be at least 1".into(),
            });
        }
        let budget = DECODE_BUDGET.max(images::decode_bytes(limits.max_pixels, 8));
        let decode_budget_mib = u32::try_from(budget.div_ceil(1 << 20)).unwrap_or(u32::MAX >> 3);
        Ok(Self {
            state: Arc::new(State {
                indexes,
                permits: Arc::new(Semaphore::new(IN_FLIGHT)),
                decode_mib: Arc::new(Semaphore::new(decode_budget_mib as usize)),
                decode_budget_mib,
                allow_origin,
                hosts,
                absolute_paths: opts.absolute_paths,
                limits,
            }),
        })
    }

    /// The names requests use, the default first.
    pub fn index_names(&self) -> Vec<&str> {
        self.state.indexes.iter().map(|s| s.name.as_str()).collect()
    }

    /// The routes, for embedding in another axum application. Without the connection
    /// information [`Server::run`] adds, requests are checked as on a loopback address.
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone())
    }

    /// Binds `addr` (port 0: any free port), calls `bound` with the address it got, then
    /// answers until SIGTERM or SIGINT (finishing the requests in progress). SIGHUP reopens
    /// every index. Runs its own tokio runtime.
    pub fn run(self, addr: SocketAddr, bound: impl FnOnce(SocketAddr)) -> Result<()> {
        let at = PathBuf::from(addr.to_string());
        let io = |e| crate::error::io_at(&at)(e);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(io)?;
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(io)?;
            bound(listener.local_addr().map_err(io)?);
            net::serve(listener, self.router(), self.state.clone())
                .await
                .map_err(io)
        })
    }
}

/// The model worker that embeds the queries of index `name`: the model `opts` names or the
/// index records, loaded once for all indexes that share it (`None`: the index records no
/// model and none was given, so it takes embedding queries only).
fn encoder_for(
    opts: &ServeOptions,
    name: &str,
    index: &Index,
    encoders: &mut HashMap<PathBuf, Arc<Encoder>>,
    note: &dyn Fn(&str),
) -> Result<Option<Arc<Encoder>>> {
    let spec = opts.model.as_deref().unwrap_or(index.model());
    if spec.is_empty() {
        note(&format!(
            "index {name} records no model: embedding queries only"
        ));
        return Ok(None);
    }
    let key = resolve_model_dir(spec)?;
    let key = key.canonicalize().unwrap_or(key);
    let enc = match encoders.get(&key) {
        Some(e) => e.clone(),
        None => {
            note(&format!("loading model {}", key.display()));
            let mut clip = Clip::open(spec, &opts.device)?;
            if let Some(p) = opts.precision {
                clip = clip.with_precision(p)?;
            }
            let e = Arc::new(Encoder::start(clip).map_err(crate::error::io_at(&key))?);
            encoders.insert(key, e.clone());
            e
        }
    };
    if enc.dim() != index.dim() {
        return Err(Error::Input(format!(
            "model {spec} makes vectors of dimension {} but index {name} holds dimension {}",
            enc.dim(),
            index.dim()
        )));
    }
    Ok(Some(enc))
}

/// The CORS origin as a header value, with a warning for `*`.
fn allowed_origin(
    opts: &ServeOptions,
    note: &dyn Fn(&str),
) -> Result<Option<axum::http::HeaderValue>> {
    if opts.allow_origin.as_deref() == Some("*") {
        note(
            "warning: --allow-origin '*' lets every web page you visit read search results \
             and image files from this server; name the one origin that needs it instead",
        );
    }
    let parse = |o: &str| {
        o.parse().map_err(|_| Error::Config {
            field: "allow_origin",
            reason: format!("{o:?} is not a header value"),
        })
    };
    opts.allow_origin.as_deref().map(parse).transpose()
}

/// A failed request: its status and a message naming the problem, sent as JSON.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: String) -> Self {
        Self { status, message }
    }

    fn bad(message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn busy(message: String) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("server busy, try again: {message}"),
        )
    }

    pub(crate) fn internal(message: String) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(serde_json::json!({ "error": self.message }));
        (self.status, body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_arguments_name_their_index() {
        let dir = tempfile::tempdir().unwrap();
        let idx = dir.path().join("photos.v2");
        std::fs::create_dir(&idx).unwrap();
        let named = NamedIndex::parse(&format!("main={}", idx.display())).unwrap();
        assert_eq!((named.name.as_str(), &named.dir), ("main", &idx));
        let named = NamedIndex::parse(idx.to_str().unwrap()).unwrap();
        assert_eq!((named.name.as_str(), &named.dir), ("photos.v2", &idx));
        // A path through a folder whose name holds `=` is a path, not NAME=DIR.
        let odd = dir.path().join("a=b/idx");
        std::fs::create_dir_all(&odd).unwrap();
        assert_eq!(
            NamedIndex::parse(odd.to_str().unwrap()).unwrap().name,
            "idx"
        );
        let named = NamedIndex::parse(&format!("x={}", odd.parent().unwrap().display())).unwrap();
        assert_eq!(named.name, "x");
        for bad in ["my photos=x", "=x", "a/b=x"] {
            let err = NamedIndex::parse(bad).unwrap_err().to_string();
            assert!(err.contains("index name"), "{bad}: {err}");
        }
    }
}
