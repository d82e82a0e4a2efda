//! Linear probes with few labels per class on frozen image features (or raw pixels, the
//! baseline an embedding has to beat), as `clip probe` runs them, and the quick probe printed
//! after an image-only training run ([`after_training`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::files::{collect_images, LabelTable};
use crate::{Clip, Embeddings, Error, Features, Progress, Result};

pub use linear_probe::{
    few_label_split, run_probe, write_scatter_png, Labels, Matrix, Method, Pca2, ProbeConfig,
    ProbeError, ProbeReport,
};

/// Side of the square that raw pixels are resized to when the images differ in size.
pub const DEFAULT_PIXEL_SIZE: u32 = 32;

/// The probed features and what they are.
pub struct ProbeFeatures {
    /// One row per image.
    pub matrix: Matrix,
    /// For people: "pixels (8×8 RGB)" or "`<model>` image embeddings".
    pub description: String,
    /// For a plot title (ASCII only: the plot font has nothing else).
    pub short: String,
}

/// The images a probe reads.
pub struct Selection {
    /// The labelled images, in order.
    pub files: Vec<PathBuf>,
    /// Each one's label name.
    pub names: Vec<String>,
    /// Images given that the table does not label (probing them is impossible, and silence
    /// would hide a typo).
    pub unlabelled: usize,
    /// Images given in all (0 without `data`).
    pub listed: usize,
}

/// The images to probe: with no `data` every image of the labels table; with it, the listed
/// images that have a label.
pub fn select_images(table: &LabelTable, data: &[PathBuf]) -> Result<Selection> {
    // One label per image: a repeated row must agree with the first.
    let mut by_path: HashMap<&Path, (usize, usize)> = HashMap::new();
    let mut order = Vec::new();
    for (path, id, line) in &table.rows {
        match by_path.get(path.as_path()) {
            Some(&(first_id, first_line)) if first_id != *id => {
                return Err(Error::Input(format!(
                    "{}:{line}: {} is labelled `{}` here but `{}` on line {first_line}",
                    table.path.display(),
                    path.display(),
                    table.classes[*id],
                    table.classes[first_id]
                )))
            }
            Some(_) => {}
            None => {
                by_path.insert(path, (*id, *line));
                order.push(path.clone());
            }
        }
    }
    let (files, unlabelled, listed) = if data.is_empty() {
        (order, 0, 0)
    } else {
        let listed = collect_images(data)?;
        let (files, n) = labelled_of(&listed, &by_path, table)?;
        (files, n, listed.len())
    };
    let names = files
        .iter()
        .map(|p| table.classes[by_path[p.as_path()].0].clone())
        .collect();
    Ok(Selection {
        files,
        names,
        unlabelled,
        listed,
    })
}

/// The `listed` images that `by_path` labels (canonical, each once), and how many it does not.
fn labelled_of(
    listed: &[PathBuf],
    by_path: &HashMap<&Path, (usize, usize)>,
    table: &LabelTable,
) -> Result<(Vec<PathBuf>, usize)> {
    let mut seen = HashSet::new();
    let mut files = Vec::new();
    let mut unlabelled = 0usize;
    for p in listed {
        let canon = p.canonicalize().map_err(crate::error::io_at(p))?;
        if !by_path.contains_key(canon.as_path()) {
            unlabelled += 1;
        } else if seen.insert(canon.clone()) {
            files.push(canon);
        }
    }
    if files.is_empty() {
        return Err(Error::Input(format!(
            "none of the {} image(s) given is listed in {}",
            listed.len(),
            table.path.display()
        )));
    }
    Ok((files, unlabelled))
}

/// Frozen image features of `files` from `clip`: `choice`, or the model's default
/// ([`Features::resolve`]); `spec` is how the model was named.
pub fn embedding_features(
    clip: &Clip,
    spec: &str,
    files: &[PathBuf],
    batch: usize,
    choice: Option<Features>,
    progress: &dyn Progress,
) -> Result<ProbeFeatures> {
    let which = Features::resolve(choice, clip.model());
    let emb = clip.image_features(files, batch, which, progress)?;
    let emb = Embeddings::from_tensor(&emb)?;
    let values = emb.as_slice().iter().map(|&v| f64::from(v)).collect();
    let matrix = Matrix::from_vec(files.len(), emb.dim(), values).map_err(ProbeError::from)?;
    // A run's `final/` or `checkpoint-N/` is named after its run directory too.
    let part = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = match (part(clip.dir()), clip.dir().parent().and_then(part)) {
        (Some(n), Some(run)) if n == "final" || n.starts_with("checkpoint-") => {
            format!("{run}/{n}")
        }
        (Some(n), _) => n,
        _ => spec.to_string(),
    };
    let (description, short) = match which {
        Features::Embeds => ("image embeddings".to_string(), "embeddings"),
        Features::Pooled => (
            which.describe(choice).replace("features", "image features"),
            "pooled",
        ),
    };
    Ok(ProbeFeatures {
        matrix,
        description: format!("{} {description}", clip.dir().display()),
        short: format!("{} {short}", ascii(&name)),
    })
}

/// Raw RGB pixels scaled to [0, 1], every image resized (bicubic) to one size: `size`, or
/// the images' own when they share one, else [`DEFAULT_PIXEL_SIZE`].
pub fn pixel_features(files: &[PathBuf], size: Option<u32>) -> Result<ProbeFeatures> {
    let images = files
        .par_iter()
        .map(|p| vision_encoder::load_image(p))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let (w, h) = match (size, images.first().map(|i| i.dimensions())) {
        (Some(s), _) => (s, s),
        (None, Some(first)) if images.iter().all(|i| i.dimensions() == first) => first,
        _ => (DEFAULT_PIXEL_SIZE, DEFAULT_PIXEL_SIZE),
    };
    let d = (w * h * 3) as usize;
    let mut data = Vec::with_capacity(files.len() * d);
    for img in &images {
        if img.dimensions() == (w, h) {
            data.extend(img.as_raw().iter().map(|&v| f64::from(v) / 255.0));
        } else {
            let r = vision_encoder::resize_bicubic(img, w, h);
            data.extend(r.as_raw().iter().map(|&v| f64::from(v) / 255.0));
        }
    }
    Ok(ProbeFeatures {
        matrix: Matrix::from_vec(files.len(), d, data).map_err(ProbeError::from)?,
        description: format!("pixels ({w}×{h} RGB)"),
        short: format!("pixels ({w}x{h})"),
    })
}

fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect()
}

/// The quick probe after an image-only run: ridge on `per_class` labelled images per class.
pub struct QuickProbe {
    /// Labelled images.
    pub images: usize,
    /// Classes among them.
    pub classes: usize,
    /// Labelled training images per class.
    pub per_class: usize,
    /// Accuracy on the rest, by what was probed: pooled features, image embeddings, pixels.
    pub accuracy: Vec<(&'static str, f64)>,
}

/// How linearly separable the frozen features of the model in `model_dir` are with a few
/// labels per class from `labels_file`, next to the same probe on raw pixels; `None` when
/// the labels allow no probe (fewer than two classes, or a class with one image).
pub fn after_training(
    model_dir: &Path,
    labels_file: &Path,
    seed: u64,
    device: &crate::Device,
) -> Result<Option<QuickProbe>> {
    let table = LabelTable::read(labels_file, "filepath", "label")?;
    let Selection { files, names, .. } = select_images(&table, &[])?;
    let labels = Labels::from_names(&names);
    let smallest = labels.counts().into_iter().min().unwrap_or(0);
    if labels.n_classes() < 2 || smallest < 2 {
        return Ok(None);
    }
    let n = 10.min(smallest - 1);
    let clip = Clip::open(&model_dir.display().to_string(), device)?;
    let spec = model_dir.display().to_string();
    let read = |which| embedding_features(&clip, &spec, &files, 256, Some(which), &());
    let mut accuracy = Vec::new();
    for (what, features) in [
        ("pooled features", read(Features::Pooled)?),
        ("image embeddings", read(Features::Embeds)?),
        ("raw pixels", pixel_features(&files, None)?),
    ] {
        let cfg = ProbeConfig {
            method: Method::Ridge,
            n_per_class: n,
            seed,
            lambda: None,
        };
        accuracy.push((what, run_probe(&features.matrix, &labels, &cfg)?.accuracy));
    }
    Ok(Some(QuickProbe {
        images: labels.len(),
        classes: labels.n_classes(),
        per_class: n,
        accuracy,
    }))
}
