//! `clip search`: nearest neighbours of texts, images or precomputed vectors in an index.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clip::index::{
    AnnMethod, AnnParams, EmbeddingsFile, EntriesKind, Hit, Index, OpenOptions, SearchMode,
    SearchOptions,
};
use clip::{normalize_rows, DeviceKind, Embeddings, Features};
use serde::Serialize;

use super::common::{self, PrecisionArg};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("queries").required(true).args(["text", "image", "query_embeddings"])))]
pub struct SearchArgs {
    /// Index directory (see `clip index build`).
    #[arg(long)]
    index: PathBuf,
    /// Text queries: text→image over an image index, text→text over a caption index.
    text: Vec<String>,
    /// Image file queries: image→image, or image→text over a caption index.
    #[arg(long, num_args = 1..)]
    image: Vec<PathBuf>,
    /// Precomputed query vectors: a safetensors file with an `[Q, D]` tensor (see --key).
    #[arg(long)]
    query_embeddings: Option<PathBuf>,
    /// Tensor to read from --query-embeddings.
    #[arg(long, default_value = "embeddings", requires = "query_embeddings")]
    key: String,
    /// Results per query.
    #[arg(short, long, default_value_t = 10)]
    k: usize,
    /// Model for text and image queries (default: the one recorded in the index).
    #[arg(long)]
    model: Option<String>,
    /// Print JSON: a list with one object per query, `{"query", "hits": [{"rank", "id",
    /// "score", "path" | "caption" | "name"}]}`.
    #[arg(long)]
    json: bool,
    /// Approximate search: with the IVF lists saved by `clip index build --ann` when present
    /// (and fresh), otherwise with a structure built in this process (always for hnsw; worth
    /// it for large batches over large indexes). Default: exact, unless the batch is big
    /// enough to pay for building (10k queries over ≥ 200k vectors).
    #[arg(long, conflicts_with = "exact")]
    ann: bool,
    /// Always search exactly.
    #[arg(long)]
    exact: bool,
    /// Approximate structure: cluster lists (ivf; builds in seconds) or an HNSW graph (hnsw;
    /// builds in minutes per million vectors).
    #[arg(long, value_enum, default_value_t = AnnMethodArg::Ivf)]
    ann_method: AnnMethodArg,
    /// IVF: lists scanned per query (higher: better recall, slower).
    #[arg(long, default_value_t = AnnParams::default().probes)]
    probes: usize,
    /// HNSW: search breadth (higher: better recall, slower).
    #[arg(long, default_value_t = AnnParams::default().ef_search)]
    ef: usize,
    /// Skip the checksum pass over the vectors file (length and header are still checked).
    #[arg(long)]
    no_verify: bool,
    /// Device for the model.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceKind,
    #[command(flatten)]
    precision: PrecisionArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AnnMethodArg {
    Ivf,
    Hnsw,
}

#[derive(Serialize)]
struct QueryOut {
    query: serde_json::Value,
    hits: Vec<HitOut>,
}

#[derive(Serialize)]
struct HitOut {
    rank: usize,
    id: usize,
    score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    caption: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

pub fn run(a: SearchArgs) -> Result<()> {
    if a.k == 0 {
        bail!("-k must be at least 1");
    }
    let idx = Index::open_with(
        &a.index,
        OpenOptions {
            verify_checksum: !a.no_verify,
        },
    )?;
    let (queries, labels, dim, source) = read_queries(&a, &idx)?;
    let defaults = SearchOptions::default();
    let opts = SearchOptions {
        mode: match (a.ann, a.exact) {
            (true, _) => SearchMode::Ann,
            (_, true) => SearchMode::Exact,
            _ => SearchMode::Auto,
        },
        ann: AnnParams {
            method: match a.ann_method {
                AnnMethodArg::Ivf => AnnMethod::Ivf,
                AnnMethodArg::Hnsw => AnnMethod::Hnsw,
            },
            probes: a.probes,
            ef_search: a.ef,
            ..defaults.ann
        },
        ..defaults
    };
    if a.ann {
        if let Err(e) = idx.load_saved_ann(&opts.ann) {
            eprintln!("warning: {e}; building the approximate index in memory");
        }
    }
    let results = idx
        .search_with(&queries, dim, a.k, &opts)
        .with_context(|| format!("cannot search {} with {source}", a.index.display()))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if a.json {
        let doc: Vec<QueryOut> = labels
            .into_iter()
            .zip(&results)
            .map(|(query, hits)| {
                Ok(QueryOut {
                    query,
                    hits: hits
                        .iter()
                        .enumerate()
                        .map(|(r, h)| hit_out(&idx, r, h))
                        .collect::<clip::Result<_>>()?,
                })
            })
            .collect::<Result<_>>()?;
        serde_json::to_writer(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        for (query, hits) in labels.iter().zip(&results) {
            writeln!(out, "{query}:")?;
            for (r, h) in hits.iter().enumerate() {
                writeln!(
                    out,
                    "{:>4}  {:.4}  {}",
                    r + 1,
                    h.score,
                    text_label(&idx, h.id)?
                )?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// What a hit's line shows: its label, and a shard sample's caption after it.
fn text_label(idx: &Index, id: usize) -> clip::Result<String> {
    let label = idx.label(id)?;
    Ok(match idx.entries().sample(id)? {
        Some(s) if !s.caption.is_empty() => format!("{label}  {:?}", s.caption),
        _ => label,
    })
}

/// Hit `h` at `rank` with what its row stands for, read from the index's rows.
fn hit_out(idx: &Index, rank: usize, h: &Hit) -> clip::Result<HitOut> {
    let mut o = HitOut {
        rank: rank + 1,
        id: h.id,
        score: h.score,
        path: None,
        caption: None,
        name: None,
    };
    let entries = idx.entries();
    match entries.kind() {
        EntriesKind::Images { .. } => o.path = Some(idx.label(h.id)?),
        EntriesKind::Captions => o.caption = entries.caption(h.id)?.map(str::to_string),
        EntriesKind::Ids => o.name = entries.id(h.id)?.map(str::to_string),
        EntriesKind::Samples { .. } => {
            if let Some(s) = entries.sample(h.id)? {
                o.name = Some(s.name());
                o.caption = Some(s.caption).filter(|c| !c.is_empty());
            }
        }
    }
    Ok(o)
}

/// Query vectors (unit rows, `[q, dim]`), a label per query, their dimension, and a phrase
/// naming where they came from (for errors).
fn read_queries(
    a: &SearchArgs,
    idx: &Index,
) -> Result<(Vec<f32>, Vec<serde_json::Value>, usize, String)> {
    if let Some(path) = &a.query_embeddings {
        let f = EmbeddingsFile::open(path, &a.key)?;
        let mut q = f.to_vec()?;
        normalize_rows(&mut q, f.dim())
            .with_context(|| format!("bad query vector in {}", path.display()))?;
        let labels = match f.ids() {
            Some(ids) => ids.iter().map(|s| s.clone().into()).collect(),
            None => (0..f.rows()).map(|i| i.into()).collect(),
        };
        return Ok((
            q,
            labels,
            f.dim(),
            format!("the queries in {}", path.display()),
        ));
    }
    let spec = match (&a.model, idx.model()) {
        (Some(m), _) => m.clone(),
        (None, m) if !m.is_empty() => m.to_string(),
        _ => bail!(
            "the index {} records no model; pass --model",
            a.index.display()
        ),
    };
    let device = a.device.device()?;
    let m = a
        .precision
        .open(&spec, &device)
        .with_context(|| format!("cannot load the model for the queries ({spec})"))?;
    let (rows, labels) = if !a.image.is_empty() {
        let bar = common::Bar::default();
        let e = m.image_features(&a.image, a.image.len().max(1), Features::Embeds, &bar)?;
        let labels = a
            .image
            .iter()
            .map(|p| p.display().to_string().into())
            .collect();
        (e, labels)
    } else {
        let refs: Vec<&str> = a.text.iter().map(String::as_str).collect();
        let e = m.text_features(&refs, refs.len().max(1), Features::Embeds, &())?;
        let labels = a.text.iter().map(|t| t.clone().into()).collect();
        (e, labels)
    };
    let dim = m.dim();
    Ok((
        Embeddings::from_tensor(&rows)?.normalized()?.into_vec(),
        labels,
        dim,
        format!("queries embedded by model {spec}"),
    ))
}
