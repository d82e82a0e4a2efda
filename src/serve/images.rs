//! Images in and out: uploads decoded within the server's memory budget, and the indexed
//! images served by entry id (files, or image members read alone from their shards).

use std::io::Cursor;
use std::path::Path;

use axum::body::Body;
use axum::extract;
use axum::extract::rejection::PathRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use clip_data::shard_source::ShardUrl;
use image::ImageDecoder;
use retrieval::{EntriesKind, SampleEntry};
use tokio::io::AsyncReadExt;

use super::api::{admit, blocking, unreadable, ApiResult, Shared, MAX_FILE};
use super::encoder::Slot;
use super::{ApiError, Loaded};

/// Bytes a decode of `pixels` pixels of `bytes_per_pixel` holds at its peak: the decoded
/// image, its 8-bit RGB(A) copy, and resizing's buffers.
pub(super) fn decode_bytes(pixels: u64, bytes_per_pixel: u64) -> u64 {
    pixels.saturating_mul(bytes_per_pixel + 7) + (16 << 20)
}

/// Pixels of an uploaded image, decoded as `clip search --image` decodes files. The header
/// is read first: over `--max-pixels` is refused, and the decode waits for its share of the
/// server's decode memory, so concurrent uploads cannot multiply the peak; the decoder itself
/// is held to that size by `image::Limits`.
pub(super) async fn decode_upload(
    state: &Shared,
    b64: String,
    pre: vision_encoder::Preprocess,
    slot: &Slot,
) -> ApiResult<Vec<f32>> {
    let max_pixels = state.limits.max_pixels;
    let (bytes, need) = blocking(slot, move || -> ApiResult<_> {
        let data = match b64.strip_prefix("data:") {
            Some(url) => url.split_once(";base64,").map_or(url, |(_, d)| d),
            None => b64.as_str(),
        };
        if data.trim().is_empty() {
            return Err(ApiError::bad("empty image".into()));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| ApiError::bad(format!("image is not valid base64: {e}")))?;
        drop(b64);
        let (w, h, bpp) = {
            let decoder = image::ImageReader::new(Cursor::new(&bytes))
                .with_guessed_format()
                .map_err(|e| undecodable(&e))?
                .into_decoder()
                .map_err(|e| undecodable(&e))?;
            let (w, h) = decoder.dimensions();
            (w, h, u64::from(decoder.color_type().bytes_per_pixel()))
        };
        let pixels = u64::from(w) * u64::from(h);
        if pixels > max_pixels {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "image is {w}×{h} = {pixels} pixels; the limit is {max_pixels} pixels \
                     (--max-pixels)"
                ),
            ));
        }
        Ok((bytes, decode_bytes(pixels, bpp)))
    })
    .await??;
    // Waiting here costs nothing: a client that hangs up meanwhile is never decoded.
    let mib = u32::try_from(need.div_ceil(1 << 20)).unwrap_or(u32::MAX);
    let memory = state
        .decode_mib
        .clone()
        .acquire_many_owned(mib.min(state.decode_budget_mib))
        .await
        .map_err(|_| ApiError::internal("the decode budget was closed".into()))?;
    blocking(slot, move || {
        let _memory = memory;
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(decode_bytes(max_pixels, 8));
        let img = vision_encoder::decode_image_limited(&bytes, Path::new("upload"), limits)
            .map_err(|e| undecodable(&e))?;
        drop(bytes);
        Ok(vision_encoder::preprocess(&img, &pre))
    })
    .await?
}

fn undecodable(e: &dyn std::error::Error) -> ApiError {
    ApiError::bad(format!(
        "image does not decode: {}",
        clip_data::error_chain(e)
    ))
}

/// `GET /image/{index}/{id}`: the image of entry `id`: the indexed file (see
/// [`indexed_file`]), or a shard sample's image member (see [`sample_image`]).
pub(super) async fn image_file(
    extract::State(state): extract::State<Shared>,
    path: Result<extract::Path<(String, String)>, PathRejection>,
) -> ApiResult<Response> {
    let extract::Path((name, id)) = path.map_err(|e| ApiError::bad(e.body_text()))?;
    let slot = admit(&state)?;
    let served = state.find(Some(&name))?;
    let id: usize = id
        .parse()
        .map_err(|_| ApiError::bad(format!("{id:?} is not an entry id")))?;
    let s = served.clone();
    let loaded = blocking(&slot, move || s.fresh()).await?;
    let entries = loaded.index.entries();
    let no_images = || not_found(format!("index {name} holds no image files"));
    if !matches!(
        entries.kind(),
        EntriesKind::Images { .. } | EntriesKind::Samples { .. }
    ) {
        return Err(no_images());
    }
    if id >= entries.len() {
        return Err(not_found(format!(
            "index {name} has {} entries; no id {id}",
            entries.len()
        )));
    }
    if let Some(sample) = entries.sample(id).map_err(|e| unreadable(&served, &e))? {
        return sample_image(&slot, &loaded, sample, id, &name).await;
    }
    let (Some(root), Some(file)) = (
        &loaded.root,
        (entries.image_path(id)).map_err(|e| unreadable(&served, &e))?,
    ) else {
        return Err(no_images());
    };
    indexed_file(root, &file, id, &name).await
}

fn not_found(msg: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, msg)
}

/// The content type of an image file or member by its extension (`x.png`: its last suffix).
fn mime(ext: &str) -> &'static str {
    let last = ext.rsplit('.').next().unwrap_or("");
    match last.to_ascii_lowercase().as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        _ => "application/octet-stream",
    }
}

/// A shard sample's name in results: `SHARD#KEY`, the shard by its file name only unless
/// `absolute` (as image paths are relative to their folder: no server paths or URLs).
pub(super) fn sample_name(s: &SampleEntry, absolute: bool) -> String {
    if absolute {
        return s.name();
    }
    let shard = match ShardUrl::parse(&s.shard) {
        Ok(ShardUrl::Pipe(_)) => "pipe:…".to_string(),
        Ok(u) => u.name().unwrap_or_default().to_string(),
        Err(_) => String::new(),
    };
    format!("{shard}#{}", s.key)
}

/// Whether a sample's image can be read alone: not from a `pipe:` command, which only runs
/// from its start (reading a whole stream per thumbnail would be too slow to offer).
pub(super) fn has_thumbnail(s: &SampleEntry) -> bool {
    !matches!(ShardUrl::parse(&s.shard), Ok(ShardUrl::Pipe(_)) | Err(_))
}

/// A shard sample's image member: just its bytes, read from the shard by a ranged read
/// (a seek, HTTP `Range` or a ranged object GET). Errors name the entry, not the shard (the
/// server's log has the cause).
async fn sample_image(
    slot: &Slot,
    loaded: &Loaded,
    sample: SampleEntry,
    id: usize,
    name: &str,
) -> ApiResult<Response> {
    let (Ok(url), Some(opener)) = (ShardUrl::parse(&sample.shard), loaded.opener.clone()) else {
        return Err(not_found(format!(
            "entry {id} of index {name} names no shard"
        )));
    };
    if !has_thumbnail(&sample) {
        return Err(not_found(format!(
            "entry {id} of index {name} comes from a `pipe:` shard, which cannot be read at \
             an offset: no image to show"
        )));
    }
    if sample.len > MAX_FILE {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "entry {id} of index {name} is {} bytes, over the {MAX_FILE}-byte limit of \
                 served files",
                sample.len
            ),
        ));
    }
    let (offset, len) = (sample.offset, sample.len);
    let read = blocking(slot, move || opener.read_range(&url, offset, len)).await?;
    let bytes = read.map_err(|e| {
        eprintln!("index {name}: entry {id}: {}", clip_data::error_chain(&e));
        let status = match e.is_missing() {
            true => StatusCode::NOT_FOUND,
            false => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(
            status,
            format!("entry {id} of index {name}: its shard cannot be read (see the server log)"),
        )
    })?;
    let mime = HeaderValue::from_static(mime(&sample.ext));
    Ok(([(header::CONTENT_TYPE, mime)], bytes).into_response())
}

/// An image file of an image index, streamed: only if its real path (links resolved) is
/// under the indexed folder `root` and is a regular file (not a FIFO or device) of at most
/// [`MAX_FILE`] bytes, so neither `..` nor a link that points elsewhere reaches another file.
async fn indexed_file(root: &Path, file: &Path, id: usize, name: &str) -> ApiResult<Response> {
    let gone = |e: std::io::Error| not_found(format!("entry {id} of index {name}: {e}"));
    let real = tokio::fs::canonicalize(file).await.map_err(gone)?;
    if !real.starts_with(root) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("entry {id} of index {name} resolves outside the indexed folder"),
        ));
    }
    // The type is checked before opening: opening a FIFO would wait for a writer.
    let meta = tokio::fs::metadata(&real).await.map_err(gone)?;
    if !meta.is_file() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("entry {id} of index {name} is not a regular file"),
        ));
    }
    if meta.len() > MAX_FILE {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "entry {id} of index {name} is {} bytes, over the {MAX_FILE}-byte limit of \
                 served files",
                meta.len()
            ),
        ));
    }
    let file = tokio::fs::File::open(&real).await.map_err(gone)?;
    let len = meta.len();
    let ext = real.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mime = HeaderValue::from_static(mime(ext));
    // At most the length announced, should the file grow while it is sent.
    let stream = tokio_util::io::ReaderStream::new(file.take(len));
    Ok((
        [
            (header::CONTENT_TYPE, mime),
            (header::CONTENT_LENGTH, HeaderValue::from(len)),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
