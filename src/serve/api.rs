//! The routes: request parsing and limits, queries, results and image files.

use std::sync::Arc;
use std::time::Duration;

use super::encoder::{Query, Slot};
use super::images;
use super::net::Conn;
use super::{ApiError, Loaded, Served, State};
use axum::body::Body;
use axum::extract::{self, DefaultBodyLimit, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use retrieval::EntriesKind;
use serde::de::{DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Largest request body: a few base64 photos' worth.
const MAX_BODY: usize = 16 << 20;
/// Longest text query. The model reads only its first `context_length` tokens (77 for CLIP),
/// so this is generous; longer texts are refused (413), shorter ones cut to the context as
/// `clip search` cuts them.
const MAX_TEXT: usize = 4096;
/// Most results per query (clip-front asks for up to 10 000 ids).
const MAX_K: usize = 10_000;
/// A client that has not sent its whole body by then is dropped; it holds no request slot
/// meanwhile, only its connection.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest image file `/image` serves: no photo is this large, a disk image renamed `.png` is.
pub(super) const MAX_FILE: u64 = 256 << 20;

pub(super) type Shared = Arc<State>;
pub(super) type ApiResult<T> = Result<T, ApiError>;

pub(super) fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { Html(include_str!("page.html")) }))
        .route("/search", post(search))
        .route("/knn-service", post(knn_service))
        .route("/metadata", post(metadata))
        .route("/indices-list", get(indices_list))
        .route("/image/{index}/{id}", get(images::image_file))
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
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Around every route: the Host check of a loopback server (against DNS rebinding), CORS
/// (preflight included) when `--allow-origin` is given, and `nosniff` on every answer.
async fn guard(
    extract::State(state): extract::State<Shared>,
    req: Request,
    next: Next,
) -> Response {
    let conn = req.extensions().get::<Conn>().copied();
    let loopback = conn.is_none_or(|c| c.local.ip().is_loopback());
    let host = req.headers().get(header::HOST).map(|h| h.to_str());
    let mut res = match host {
        _ if !loopback => None,
        Some(Ok(h)) if state.hosts.answers(h) => None,
        Some(h) => {
            let shown = h.map_or_else(|_| "(not text)".to_string(), |h| format!("{h:?}"));
            Some(ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "host {shown} is not served here: this server answers loopback names \
                     (localhost, 127.0.0.1, [::1]) and names given with --allow-host"
                ),
            ))
        }
        None => Some(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "a Host header is required".into(),
        )),
    }
    .map(IntoResponse::into_response);
    if res.is_none() && req.method() == Method::OPTIONS && state.allow_origin.is_some() {
        // A browser's CORS preflight, e.g. before a POST with `application/json`.
        let methods = HeaderValue::from_static("GET, POST, OPTIONS");
        let headers = HeaderValue::from_static("content-type");
        res = Some(
            (
                StatusCode::NO_CONTENT,
                [
                    (header::ACCESS_CONTROL_ALLOW_METHODS, methods),
                    (header::ACCESS_CONTROL_ALLOW_HEADERS, headers),
                    (
                        header::ACCESS_CONTROL_MAX_AGE,
                        HeaderValue::from_static("600"),
                    ),
                ],
            )
                .into_response(),
        );
    }
    let mut res = match res {
        Some(r) => r,
        None => next.run(req).await,
    };
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Some(origin) = &state.allow_origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
    res
}

/// A slot among the requests handled at once, or 503.
pub(super) fn admit(state: &State) -> ApiResult<Slot> {
    let permit = state.permits.clone().try_acquire_owned();
    permit
        .map(Arc::new)
        .map_err(|_| ApiError::busy(format!("{} requests in progress", super::IN_FLIGHT)))
}

/// The body as JSON, whatever its content type (clip-front sends `text/plain`). Read before
/// a slot is taken: a client sending its body slowly holds only its own connection.
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
    parse_json(&bytes)
}

/// A request body parsed as `T`, or a 400 naming what is wrong with it.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad(format!("bad JSON request: {e}")))
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

/// Runs `f` on the blocking pool, holding `slot` until `f` ends even if the request is
/// dropped; a panic there is a 500 for this request only.
pub(super) async fn blocking<T: Send + 'static>(
    slot: &Slot,
    f: impl FnOnce() -> T + Send + 'static,
) -> ApiResult<T> {
    let slot = slot.clone();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        f()
    })
    .await
    .map_err(|e| ApiError::internal(format!("request failed: {e}")))
}

/// The index could not be read (replaced or damaged underneath): a 503 naming the index
/// only (the server's paths stay in its log), and the index reopened before the next
/// request.
pub(super) fn unreadable(served: &Served, e: &dyn std::error::Error) -> ApiError {
    eprintln!(
        "index {}: read failed, reopening: {}",
        served.name,
        clip_data::error_chain(e)
    );
    served
        .stale
        .store(true, std::sync::atomic::Ordering::Release);
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "index {} could not be read (replaced or damaged on disk); it is being reopened, \
             try again",
            served.name
        ),
    )
}

/// The `k` nearest entries of `served` to `input`, best first, and the version of the index
/// they come from: the query embedded as `clip search` embeds it (unit length), searched
/// exactly as `clip search` does by default.
async fn nearest(
    state: &Shared,
    served: &Arc<Served>,
    input: Input,
    k: usize,
    slot: &Slot,
) -> ApiResult<(Vec<retrieval::Hit>, Arc<Loaded>)> {
    let dim = served.loaded().index.dim();
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
            enc.embed(Query::Text(text), slot.clone()).await?
        }
        Input::Image(b64) => {
            let enc = encoder(served)?;
            let pixels = images::decode_upload(state, b64, enc.preprocess().clone(), slot).await?;
            enc.embed(Query::Pixels(pixels), slot.clone()).await?
        }
    };
    let s = served.clone();
    let (hits, loaded) = blocking(slot, move || {
        let loaded = s.fresh();
        (loaded.index.search(&query, dim, k), loaded)
    })
    .await?;
    let mut hits = hits.map_err(|e| unreadable(served, &e))?;
    Ok((hits.pop().unwrap_or_default(), loaded))
}

fn encoder(served: &Served) -> ApiResult<&super::Encoder> {
    served.encoder.as_deref().ok_or_else(|| {
        ApiError::bad(format!(
            "index {} records no model: only embedding queries",
            served.name
        ))
    })
}

/// What entry `id` is: `path` (relative to the indexed folder unless `--absolute-paths`) and
/// `url` (its file under `base`) for images, `caption`, or `name` for ids; for shard samples
/// `name` (`SHARD#KEY`, the shard by its file name unless `--absolute-paths`), `caption` and
/// `url` (`null` for `pipe:` shards). A row that cannot
/// be read from the index's rows file is a 503 and a reopen.
fn entry_fields(
    state: &State,
    served: &Served,
    loaded: &Loaded,
    id: usize,
    base: &str,
) -> ApiResult<Map<String, Value>> {
    let unreadable = |e: retrieval::RetrievalError| unreadable(served, &e);
    let mut m = Map::new();
    let entries = loaded.index.entries();
    match entries.kind() {
        EntriesKind::Images { .. } => {
            let path = if state.absolute_paths {
                entries.try_label(id).map_err(unreadable)?
            } else {
                let entry = entries.image(id).map_err(unreadable)?;
                entry.map_or_else(String::new, |e| e.path.display().to_string())
            };
            m.insert("path".into(), path.into());
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
        EntriesKind::Samples { .. } => {
            if let Some(s) = entries.sample(id).map_err(unreadable)? {
                let name = images::sample_name(&s, state.absolute_paths);
                m.insert("name".into(), name.into());
                // `null` for a `pipe:` shard's sample: an image, but none to show.
                let url =
                    images::has_thumbnail(&s).then(|| format!("{base}/image/{}/{id}", served.name));
                m.insert("url".into(), url.into());
                if !s.caption.is_empty() {
                    m.insert("caption".into(), s.caption.into());
                }
            }
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
    let req: SearchRequest = read_json(&headers, body).await?;
    let slot = admit(&state)?;
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
    let (hits, loaded) = nearest(&state, &served, input, k, &slot).await?;
    let results: Vec<Found> = hits
        .iter()
        .map(|h| {
            Ok(Found {
                id: h.id,
                score: Some(h.score),
                similarity: None,
                entry: entry_fields(&state, &served, &loaded, h.id, "")?,
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

/// The scheme and host for absolute image URLs (clip-front runs elsewhere): the Host the
/// client used if it is one DNS cannot point elsewhere (an IP literal, `localhost`) or one
/// given with `--allow-host`; otherwise the server's own address on the connection.
fn base_url(state: &State, headers: &HeaderMap, conn: Option<&Conn>) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (host, conn) {
        (Some(h), _) if state.hosts.trusted(h) => format!("http://{h}"),
        (_, Some(c)) => format!("http://{}", c.local),
        _ => String::new(),
    }
}

async fn knn_service(
    extract::State(state): extract::State<Shared>,
    conn: Option<extract::Extension<Conn>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Vec<Found>>> {
    let req: KnnRequest = read_json(&headers, body).await?;
    let slot = admit(&state)?;
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
    let (hits, loaded) = nearest(&state, &served, input, k, &slot).await?;
    let base = base_url(&state, &headers, conn.as_deref());
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
                    entry_fields(&state, &served, &loaded, h.id, &base)?
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
    #[serde(deserialize_with = "at_most_k_ids")]
    ids: Vec<usize>,
    indice_name: Option<String>,
}

/// The `ids` array, refused as soon as it holds more than [`MAX_K`] (before the rest is
/// parsed).
fn at_most_k_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<usize>, D::Error> {
    struct Ids;
    impl<'de> Visitor<'de> for Ids {
        type Value = Vec<usize>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "an array of at most {MAX_K} entry ids")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut ids = Vec::new();
            while let Some(id) = seq.next_element()? {
                if ids.len() == MAX_K {
                    return Err(serde::de::Error::custom(format!(
                        "more than {MAX_K} ids asked for; the limit is {MAX_K}"
                    )));
                }
                ids.push(id);
            }
            Ok(ids)
        }
    }
    d.deserialize_seq(Ids)
}

async fn metadata(
    extract::State(state): extract::State<Shared>,
    conn: Option<extract::Extension<Conn>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Vec<Value>>> {
    let req: MetadataRequest = read_json(&headers, body).await?;
    let slot = admit(&state)?;
    let served = state.find(req.indice_name.as_deref())?;
    let base = base_url(&state, &headers, conn.as_deref());
    let s = served.clone();
    let loaded = blocking(&slot, move || s.fresh()).await?;
    let found = req.ids.iter().filter(|&&id| id < loaded.index.len());
    let out = found
        .map(|&id| {
            let entry = entry_fields(&state, &served, &loaded, id, &base)?;
            Ok(json!({ "id": id, "metadata": entry }))
        })
        .collect::<ApiResult<_>>()?;
    Ok(Json(out))
}

async fn indices_list(extract::State(state): extract::State<Shared>) -> Json<Vec<String>> {
    Json(state.indexes.iter().map(|s| s.name.clone()).collect())
}
