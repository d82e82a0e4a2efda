//! The routes: request parsing and limits, queries, results and image files.

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{self, DefaultBodyLimit};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use retrieval::EntriesKind;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::SemaphorePermit;

use super::encoder::Query;
use super::{ApiError, Served, State};

/// Largest request body: a few base64 photos' worth.
const MAX_BODY: usize = 16 << 20;
/// Longest text query. The model reads only its first `context_length` tokens (77 for CLIP),
/// so this is generous; longer texts are refused (413), shorter ones cut to the context as
/// `clip search` cuts them.
const MAX_TEXT: usize = 4096;
/// Most results per query (clip-front asks for up to 10 000 ids).
const MAX_K: usize = 10_000;
/// Largest uploaded image, in pixels, checked from the header before decoding.
const MAX_PIXELS: u64 = 50_000_000;
/// A client that has not sent its whole body by then is dropped, freeing its slot.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

type Shared = Arc<State>;
type ApiResult<T> = Result<T, ApiError>;

pub(super) fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { Html(include_str!("page.html")) }))
        .route("/search", post(search))
        .route("/knn-service", post(knn_service))
        .route("/metadata", post(metadata))
        .route("/indices-list", get(indices_list))
        .route("/image/{index}/{id}", get(image_file))
        .fallback(|method: Method, uri: Uri| async move {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no route {method} {}", uri.path()),
            )
        })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} does not take {method}", uri.path()),
            )
        })
        // Bodies are read by `read_json`, with its own limit and error.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            allow_origin,
        ))
        .with_state(state)
}

async fn allow_origin(
    extract::State(state): extract::State<Shared>,
    mut res: Response,
) -> Response {
    if let Some(origin) = &state.allow_origin {
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
    res
}

/// A slot among the requests handled at once, or 503.
fn admit(state: &State) -> ApiResult<SemaphorePermit<'_>> {
    state
        .permits
        .try_acquire()
        .map_err(|_| ApiError::busy(format!("{} requests in progress", super::IN_FLIGHT)))
}

/// The body as JSON, whatever its content type (clip-front sends `text/plain`).
async fn read_json<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> ApiResult<T> {
    let too_large = |detail: String| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over the {MAX_BODY}-byte limit{detail}"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large(String::new()));
    }
    let bytes = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("request body not received within {BODY_TIMEOUT:?}"),
            )
        })?
        .map_err(|e| too_large(format!(" or cut off: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad(format!("bad JSON request: {e}")))
}

/// The `k` asked for, if it is one the server gives.
fn check_k(k: usize, field: &str) -> ApiResult<usize> {
    match k {
        0 => Err(ApiError::bad(format!("{field} must be at least 1"))),
        k if k > MAX_K => Err(ApiError::bad(format!(
            "{field} = {k} is over the limit of {MAX_K}"
        ))),
        k => Ok(k),
    }
}

/// What a query is made from.
enum Input {
    Text(String),
    /// Base64 bytes of an image file, or a `data:` URL of one.
    Image(String),
    Embedding(Vec<f32>),
}

/// Runs `f` on the blocking pool; a panic there is a 500 for this request only.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("request failed: {e}")))
}

/// The `k` nearest entries of `served` to `input`, best first: the query embedded as
/// `clip search` embeds it (unit length), searched exactly as `clip search` does by default.
async fn nearest(served: &Arc<Served>, input: Input, k: usize) -> ApiResult<Vec<retrieval::Hit>> {
    let dim = served.index.dim();
    let query = match input {
        Input::Embedding(mut v) => {
            if v.len() != dim {
                return Err(ApiError::bad(format!(
                    "embedding has {} values; index {} holds dimension {dim}",
                    v.len(),
                    served.name
                )));
            }
            retrieval::normalize_rows(&mut v, dim)
                .map_err(|e| ApiError::bad(format!("embedding: {e}")))?;
            v
        }
        Input::Text(text) => {
            if text.trim().is_empty() {
                return Err(ApiError::bad("empty query text".into()));
            }
            let enc = encoder(served)?;
            if text.len() > MAX_TEXT {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "query text is {} bytes; the limit is {MAX_TEXT} (the model reads only \
                         its first {} tokens)",
                        text.len(),
                        enc.context_length()
                    ),
                ));
            }
            enc.embed(Query::Text(text)).await?
        }
        Input::Image(b64) => {
            let enc = encoder(served)?;
            let pre = enc.preprocess().clone();
            let pixels = blocking(move || decode_upload(&b64, &pre)).await??;
            enc.embed(Query::Pixels(pixels)).await?
        }
    };
    let s = served.clone();
    let mut hits = blocking(move || s.index.search(&query, dim, k))
        .await?
        .map_err(|e| ApiError::internal(format!("search failed: {e}")))?;
    Ok(hits.pop().unwrap_or_default())
}

fn encoder(served: &Served) -> ApiResult<&super::Encoder> {
    served.encoder.as_deref().ok_or_else(|| {
        ApiError::bad(format!(
            "index {} records no model: only embedding queries",
            served.name
        ))
    })
}

/// Pixels of an uploaded image, decoded as `clip search --image` decodes files.
fn decode_upload(b64: &str, pre: &vision_encoder::Preprocess) -> ApiResult<Vec<f32>> {
    let data = match b64.strip_prefix("data:") {
        Some(url) => url.split_once(";base64,").map_or(url, |(_, d)| d),
        None => b64,
    };
    if data.trim().is_empty() {
        return Err(ApiError::bad("empty image".into()));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| ApiError::bad(format!("image is not valid base64: {e}")))?;
    let undecodable = |e: String| ApiError::bad(format!("image does not decode: {e}"));
    let (w, h) = image::ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| undecodable(e.to_string()))?
        .into_dimensions()
        .map_err(|e| undecodable(e.to_string()))?;
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("image is {w}×{h}; the limit is {MAX_PIXELS} pixels"),
        ));
    }
    let img = vision_encoder::decode_image(&bytes, Path::new("uploaded image"))
        .map_err(|e| undecodable(clip_data::error_chain(&e)))?;
    Ok(vision_encoder::preprocess(&img, pre))
}

/// What entry `id` is: `path` and `url` (its file under `base`) for images, `caption`, or
/// `name` for ids. A row that cannot be read from the index's rows file is a server error.
fn entry_fields(served: &Served, id: usize, base: &str) -> ApiResult<Map<String, Value>> {
    let unreadable = |e: retrieval::RetrievalError| ApiError::internal(e.to_string());
    let mut m = Map::new();
    let entries = served.index.entries();
    match entries.kind() {
        EntriesKind::Images { .. } => {
            m.insert(
                "path".into(),
                entries.try_label(id).map_err(unreadable)?.into(),
            );
            let url = format!("{base}/image/{}/{id}", served.name);
            m.insert("url".into(), url.into());
        }
        EntriesKind::Captions => {
            let caption = entries.caption(id).map_err(unreadable)?.unwrap_or_default();
            m.insert("caption".into(), caption.into());
        }
        EntriesKind::Ids => {
            m.insert(
                "name".into(),
                entries.try_label(id).map_err(unreadable)?.into(),
            );
        }
    }
    Ok(m)
}

/// `POST /search` body; exactly one of `text`, `image`, `embedding`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchRequest {
    text: Option<String>,
    image: Option<String>,
    embedding: Option<Vec<f32>>,
    #[serde(default = "ten")]
    k: usize,
    index: Option<String>,
}

fn ten() -> usize {
    10
}

async fn search(
    extract::State(state): extract::State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let _slot = admit(&state)?;
    let req: SearchRequest = read_json(&headers, body).await?;
    let served = state.find(req.index.as_deref())?;
    let k = check_k(req.k, "k")?;
    let input = match (req.text, req.image, req.embedding) {
        (Some(t), None, None) => Input::Text(t),
        (None, Some(i), None) => Input::Image(i),
        (None, None, Some(e)) => Input::Embedding(e),
        _ => {
            return Err(ApiError::bad(
                "give exactly one of text, image (base64) or embedding".into(),
            ))
        }
    };
    let hits = nearest(&served, input, k).await?;
    let results: Vec<Found> = hits
        .iter()
        .map(|h| {
            Ok(Found {
                id: h.id,
                score: Some(h.score),
                similarity: None,
                entry: entry_fields(&served, h.id, "")?,
            })
        })
        .collect::<ApiResult<_>>()?;
    #[derive(Serialize)]
    struct Answer<'a> {
        index: &'a str,
        results: Vec<Found>,
    }
    let index = &served.name;
    Ok(Json(Answer { index, results }).into_response())
}

/// One result: the entry, its score under the name the route's clients expect, and what the
/// entry is. Scores stay `f32` so that they print as `clip search --json` prints them.
#[derive(Serialize)]
struct Found {
    id: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    similarity: Option<f32>,
    #[serde(flatten)]
    entry: Map<String, Value>,
}

/// clip-retrieval's `/knn-service` request. Its filters (`deduplicate`, safety, aesthetic,
/// mclip) are accepted and ignored; `image_url` is refused (this server fetches nothing).
#[derive(Deserialize)]
struct KnnRequest {
    text: Option<String>,
    image: Option<String>,
    image_url: Option<String>,
    embedding_input: Option<Vec<f32>>,
    /// `image` or `text`. Each index here holds one kind, so the index decides.
    modality: Option<String>,
    num_images: Option<usize>,
    num_result_ids: Option<usize>,
    indice_name: Option<String>,
}

/// The scheme and host the client used, for absolute image URLs (clip-front runs elsewhere).
fn base_url(headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    host.map_or_else(String::new, |h| format!("http://{h}"))
}

async fn knn_service(
    extract::State(state): extract::State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Vec<Found>>> {
    let _slot = admit(&state)?;
    let req: KnnRequest = read_json(&headers, body).await?;
    let served = state.find(req.indice_name.as_deref())?;
    if let Some(m) = req
        .modality
        .as_deref()
        .filter(|m| !["image", "text"].contains(m))
    {
        return Err(ApiError::bad(format!(
            "modality {m:?} is neither \"image\" nor \"text\""
        )));
    }
    let shown = check_k(req.num_images.unwrap_or(10), "num_images")?;
    let k = check_k(
        req.num_result_ids.unwrap_or(shown).max(shown),
        "num_result_ids",
    )?;
    let given = |s: Option<String>| s.filter(|s| !s.is_empty());
    let input = if let Some(t) = given(req.text) {
        Input::Text(t)
    } else if let Some(i) = given(req.image) {
        Input::Image(i)
    } else if given(req.image_url).is_some() {
        return Err(ApiError::bad(
            "image_url is not supported: send the image itself, base64, as `image`".into(),
        ));
    } else if let Some(e) = req.embedding_input {
        Input::Embedding(e)
    } else {
        return Err(ApiError::bad(
            "empty query: give text, image or embedding_input".into(),
        ));
    };
    let hits = nearest(&served, input, k).await?;
    let base = base_url(&headers);
    // As clip-retrieval: metadata for the first `num_images`, ids alone for the rest.
    let results = hits
        .iter()
        .enumerate()
        .map(|(rank, h)| {
            Ok(Found {
                id: h.id,
                score: None,
                similarity: Some(h.score),
                entry: if rank < shown {
                    entry_fields(&served, h.id, &base)?
                } else {
                    Map::new()
                },
            })
        })
        .collect::<ApiResult<_>>()?;
    Ok(Json(results))
}

/// clip-retrieval's `/metadata` request: what clip-front asks for ids shown without it.
#[derive(Deserialize)]
struct MetadataRequest {
    ids: Vec<usize>,
    indice_name: Option<String>,
}

async fn metadata(
    extract::State(state): extract::State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Vec<Value>>> {
    let _slot = admit(&state)?;
    let req: MetadataRequest = read_json(&headers, body).await?;
    let served = state.find(req.indice_name.as_deref())?;
    if req.ids.len() > MAX_K {
        return Err(ApiError::bad(format!(
            "{} ids asked for; the limit is {MAX_K}",
            req.ids.len()
        )));
    }
    let base = base_url(&headers);
    let found = req.ids.iter().filter(|&&id| id < served.index.len());
    let out = found
        .map(|&id| Ok(json!({ "id": id, "metadata": entry_fields(&served, id, &base)? })))
        .collect::<ApiResult<_>>()?;
    Ok(Json(out))
}

async fn indices_list(extract::State(state): extract::State<Shared>) -> Json<Vec<String>> {
    Json(state.indexes.iter().map(|s| s.name.clone()).collect())
}

/// `GET /image/{index}/{id}`: the file of an image entry. The URL names an entry, not a path,
/// and the file is served only if its real path (links resolved) is under the indexed
/// folder, so neither `..` nor a link that points elsewhere reaches another file.
async fn image_file(
    extract::State(state): extract::State<Shared>,
    path: Result<extract::Path<(String, String)>, PathRejection>,
) -> ApiResult<Response> {
    let extract::Path((name, id)) = path.map_err(|e| ApiError::bad(e.body_text()))?;
    let _slot = admit(&state)?;
    let served = state.find(Some(&name))?;
    let not_found = |msg: String| ApiError::new(StatusCode::NOT_FOUND, msg);
    let id: usize = id
        .parse()
        .map_err(|_| ApiError::bad(format!("{id:?} is not an entry id")))?;
    let entries = served.index.entries();
    let (Some(root), EntriesKind::Images { .. }) = (&served.root, entries.kind()) else {
        return Err(not_found(format!("index {name} holds no image files")));
    };
    if id >= entries.len() {
        return Err(not_found(format!(
            "index {name} has {} entries; no id {id}",
            entries.len()
        )));
    }
    let file = entries
        .image_path(id)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| not_found(format!("index {name} holds no image files")))?;
    let real = tokio::fs::canonicalize(&file)
        .await
        .map_err(|e| not_found(format!("entry {id} of index {name}: {e}")))?;
    if !real.starts_with(root) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("entry {id} of index {name} resolves outside the indexed folder"),
        ));
    }
    let bytes = tokio::fs::read(&real)
        .await
        .map_err(|e| not_found(format!("entry {id} of index {name}: {e}")))?;
    let ext = real.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mime = match ext.to_ascii_lowercase().as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        _ => "application/octet-stream",
    };
    Ok(([(header::CONTENT_TYPE, mime)], bytes).into_response())
}
