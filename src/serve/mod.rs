//! `clip serve`: search loaded indexes over HTTP and from a browser.
//!
//! [`Server::load`] opens each index once and each model once (indexes built with the same
//! model share one model worker thread); [`Server::run`] answers on a socket until the process
//! ends. Routes (all errors are `{"error": "..."}` with a 4xx or 5xx status):
//!
//! - `POST /search` `{text | image (base64) | embedding, k, index}` → `{index, results: [{id,
//!   score, path + url | caption | name}]}`, the ids `clip search` gives for the same query.
//! - `POST /knn-service`, `GET /indices-list`, `POST /metadata`: clip-retrieval's back-end
//!   shapes, so that clip-front can use this server.
//! - `GET /image/{index}/{id}`: the indexed image file of entry `id`, never a file outside
//!   the indexed folder.
//! - `GET /`: a search page.

mod api;
mod encoder;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use retrieval::EntriesKind;
use tokio::sync::Semaphore;

use crate::{resolve_model_dir, Clip, Device, Error, Index, Result};
use encoder::Encoder;

/// Requests handled at once; more are answered 503 at once instead of piling up.
const IN_FLIGHT: usize = 64;

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
            return Err(Error::Input(format!(
                "index name {name:?} (from --index {arg}) must be letters, digits, '.', '_' or \
                 '-'; name it with --index NAME=DIR"
            )));
        }
        Ok(Self { name, dir })
    }
}

/// One served index with the model that embeds its queries.
struct Served {
    name: String,
    index: Index,
    /// `None` when the index records no model and none was given: embedding queries only.
    encoder: Option<Arc<Encoder>>,
    /// The indexed folder, resolved, for image indexes: files are served only from under it.
    root: Option<PathBuf>,
}

struct State {
    indexes: Vec<Arc<Served>>,
    permits: Semaphore,
    allow_origin: Option<axum::http::HeaderValue>,
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
            let index = Index::open(dir)?;
            note(&format!(
                "index {name}: {} vectors of dimension {} from {}",
                index.len(),
                index.dim(),
                dir.display()
            ));
            let spec = opts.model.as_deref().unwrap_or(index.model());
            let encoder = if spec.is_empty() {
                note(&format!(
                    "index {name} records no model: embedding queries only"
                ));
                None
            } else {
                let key = resolve_model_dir(spec)?;
                let key = key.canonicalize().unwrap_or(key);
                let enc = match encoders.get(&key) {
                    Some(e) => e.clone(),
                    None => {
                        note(&format!("loading model {}", key.display()));
                        let clip = Clip::open(spec, &opts.device)?;
                        let e = Arc::new(Encoder::start(clip).map_err(crate::error::io_at(&key))?);
                        encoders.insert(key, e.clone());
                        e
                    }
                };
                if enc.dim() != index.dim() {
                    return Err(Error::Input(format!(
                        "model {spec} makes vectors of dimension {} but index {name} holds \
                         dimension {}",
                        enc.dim(),
                        index.dim()
                    )));
                }
                Some(enc)
            };
            let root = match index.entries().kind() {
                EntriesKind::Images { root } => {
                    Some(root.canonicalize().map_err(crate::error::io_at(root))?)
                }
                _ => None,
            };
            indexes.push(Arc::new(Served {
                name: name.clone(),
                index,
                encoder,
                root,
            }));
        }
        let allow_origin = opts
            .allow_origin
            .as_deref()
            .map(|o| {
                o.parse().map_err(|_| {
                    Error::Input(format!("--allow-origin {o:?} is not a header value"))
                })
            })
            .transpose()?;
        Ok(Self {
            state: Arc::new(State {
                indexes,
                permits: Semaphore::new(IN_FLIGHT),
                allow_origin,
            }),
        })
    }

    /// The names requests use, the default first.
    pub fn index_names(&self) -> Vec<&str> {
        self.state.indexes.iter().map(|s| s.name.as_str()).collect()
    }

    /// The routes, for embedding in another axum application.
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone())
    }

    /// Binds `addr` (port 0: any free port), calls `bound` with the address it got, then
    /// answers until the process ends. Runs its own tokio runtime.
    pub fn run(self, addr: SocketAddr, bound: impl FnOnce(SocketAddr)) -> Result<()> {
        let io = |e: std::io::Error| Error::Io {
            path: PathBuf::from(addr.to_string()),
            source: e,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(io)?;
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(io)?;
            bound(listener.local_addr().map_err(io)?);
            axum::serve(listener, self.router()).await.map_err(io)
        })
    }
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
