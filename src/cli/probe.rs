//! `clip probe`: linear probes with few labels on frozen image embeddings, or on raw pixels
//! as the baseline an embedding has to beat.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clip_data::LabelTable;
use linear_probe::{few_label_split, Labels, Matrix, Method, Pca2, ProbeConfig, ProbeReport};
use rayon::prelude::*;

use super::common::{self, DeviceArg, FeaturesArg};

/// Side of the square that raw pixels are resized to when the images differ in size.
const DEFAULT_PIXEL_SIZE: u32 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum MethodArg {
    /// Ridge regression onto one-hot targets (closed form).
    Ridge,
    /// L2-penalised multinomial logistic regression (L-BFGS).
    Logistic,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Self {
        match m {
            MethodArg::Ridge => Method::Ridge,
            MethodArg::Logistic => Method::Logistic,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// Model directory (HF or open_clip layout) or a cached Hub repo id; its frozen image
    /// encoder makes the features.
    #[arg(long, required_unless_present = "pixels", conflicts_with = "pixels")]
    model: Option<String>,
    /// Image files or folders to probe (repeatable); images without a label are skipped.
    /// Default: every image the labels file lists.
    #[arg(long)]
    data: Vec<PathBuf>,
    /// Tab-separated labels with a header row; image paths are relative to its folder.
    #[arg(long)]
    labels: PathBuf,
    /// Labels-file column with the image paths.
    #[arg(long, default_value = "filepath")]
    image_key: String,
    /// Labels-file column with the class names.
    #[arg(long, default_value = "label")]
    label_key: String,
    /// What the probe reads from the image tower: its pooled output before the projection
    /// head, or the projected embeddings (default: pooled for a model trained with
    /// --objective images, as SSL benchmarks do; embeds for image–text models).
    #[arg(long, value_enum, conflicts_with = "pixels")]
    features: Option<FeaturesArg>,
    /// Labelled training images per class; repeat or give a list (`5,10,50`) to probe each.
    #[arg(long, required = true, value_delimiter = ',')]
    train_per_class: Vec<usize>,
    /// The linear read-out.
    #[arg(long, value_enum, default_value_t = MethodArg::Ridge)]
    method: MethodArg,
    /// Penalty strength on standardised features (default: ridge picks it from
    /// 1e-3…100 by 5-fold cross-validation on the labelled images; logistic uses 0.01).
    #[arg(long, allow_negative_numbers = true)]
    lambda: Option<f64>,
    /// Seed of the labelled subset: the same seed picks the same training images.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Probe raw pixels (RGB scaled to [0, 1]) instead of embeddings: the baseline.
    #[arg(long)]
    pixels: bool,
    /// Resize images to this square side for --pixels (default: the images' own size when
    /// they all share one, else 32).
    #[arg(long, requires = "pixels")]
    pixel_size: Option<u32>,
    /// Print the reports as JSON.
    #[arg(long)]
    json: bool,
    /// Also write a 2-D PCA scatter plot of the probed features, coloured by label, as PNG.
    #[arg(long, value_name = "OUT.png")]
    plot: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Device for the image encoder.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceArg,
}

/// The probed features and what they are.
pub(super) struct Features {
    pub(super) matrix: Matrix,
    /// For people: "pixels (8×8 RGB)" or "<model> image embeddings".
    description: String,
    /// For the plot title (ASCII only: the plot font has nothing else).
    short: String,
}

pub fn run(a: ProbeArgs) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if a.train_per_class.contains(&0) {
        bail!("--train-per-class must be at least 1");
    }
    if let Some(l) = a.lambda {
        if !(l.is_finite() && l > 0.0) {
            bail!("--lambda must be a positive number, got {l}");
        }
    }
    if a.pixel_size == Some(0) {
        bail!("--pixel-size must be at least 1");
    }
    // Everything that can be checked cheaply is checked before the (slow) features.
    let table = LabelTable::read(&a.labels, &a.image_key, &a.label_key)?;
    let (files, names) = select_images(&table, &a.data)?;
    let labels = Labels::from_names(&names);
    if labels.n_classes() < 2 {
        bail!(
            "a probe needs at least 2 classes; the {} labelled image(s) all have label `{}` ({})",
            files.len(),
            labels.names().first().map_or("", String::as_str),
            a.labels.display()
        );
    }
    for &n in &a.train_per_class {
        few_label_split(&labels, n, a.seed)?;
    }

    let features = match &a.model {
        Some(model) => embedding_features(model, &files, a.batch_size, a.device, a.features)?,
        None => pixel_features(&files, a.pixel_size)?,
    };

    let mut reports = Vec::new();
    for &n in &a.train_per_class {
        let cfg = ProbeConfig {
            method: a.method.into(),
            n_per_class: n,
            seed: a.seed,
            lambda: a.lambda,
        };
        let r = linear_probe::run_probe(&features.matrix, &labels, &cfg)
            .with_context(|| format!("probe with {n} per class"))?;
        if r.converged == Some(false) {
            eprintln!(
                "warning: logistic regression ({n} per class) stopped after {} iterations \
                 before reaching its tolerance",
                r.iterations.unwrap_or_default()
            );
        }
        reports.push(r);
    }

    if let Some(out) = &a.plot {
        let pca = Pca2::fit(&features.matrix).context("PCA for --plot")?;
        let points = pca.project(&features.matrix)?;
        let title = format!("PCA of {}, {} images", features.short, files.len());
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        linear_probe::write_scatter_png(out, &points, labels.ids(), labels.names(), &title)?;
        eprintln!("wrote {}", out.display());
    }

    if a.json {
        let out = serde_json::json!({
            "features": features.description,
            "feature_dim": features.matrix.cols,
            "images": files.len(),
            "classes": labels.names(),
            "labels": a.labels.display().to_string(),
            "reports": reports,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(&features, &labels, &reports);
    }
    Ok(())
}

/// The images to probe, in order, and their label names. Without `--data` every image of
/// the labels file is used; with it, the listed images that have a label (the others are
/// counted in a note, since probing them is impossible and silence would hide a typo).
pub(super) fn select_images(
    table: &LabelTable,
    data: &[PathBuf],
) -> Result<(Vec<PathBuf>, Vec<String>)> {
    // One label per image: a repeated row must agree with the first.
    let mut by_path: HashMap<&Path, (usize, usize)> = HashMap::new();
    let mut order = Vec::new();
    for (path, id, line) in &table.rows {
        match by_path.get(path.as_path()) {
            Some(&(first_id, first_line)) if first_id != *id => bail!(
                "{}:{line}: {} is labelled `{}` here but `{}` on line {first_line}",
                table.path.display(),
                path.display(),
                table.classes[*id],
                table.classes[first_id]
            ),
            Some(_) => {}
            None => {
                by_path.insert(path, (*id, *line));
                order.push(path.clone());
            }
        }
    }
    let files = if data.is_empty() {
        order
    } else {
        let listed = clip::files::collect_images(data)?;
        let mut seen = std::collections::HashSet::new();
        let mut files = Vec::new();
        let mut unlabelled = 0usize;
        for p in &listed {
            let canon = p
                .canonicalize()
                .with_context(|| format!("cannot read {}", p.display()))?;
            if !by_path.contains_key(canon.as_path()) {
                unlabelled += 1;
            } else if seen.insert(canon.clone()) {
                files.push(canon);
            }
        }
        if unlabelled > 0 {
            eprintln!(
                "note: skipped {unlabelled} of {} image(s) in --data that {} does not label",
                listed.len(),
                table.path.display()
            );
        }
        if files.is_empty() {
            bail!(
                "none of the {} image(s) in --data is listed in {}",
                listed.len(),
                table.path.display()
            );
        }
        files
    };
    let names = files
        .iter()
        .map(|p| table.classes[by_path[p.as_path()].0].clone())
        .collect();
    Ok((files, names))
}

/// Frozen image features of `files` from `model`: `choice`, or the model's default
/// ([`FeaturesArg::resolve`]).
pub(super) fn embedding_features(
    model: &str,
    files: &[PathBuf],
    batch: usize,
    device: DeviceArg,
    choice: Option<FeaturesArg>,
) -> Result<Features> {
    let device = device.device()?;
    let m = clip::Clip::open(model, &device)?;
    let which = FeaturesArg::resolve(choice, m.model());
    let emb = m.image_features(files, batch, which, &common::Bar::default())?;
    let emb = clip::Embeddings::from_tensor(&emb)?;
    let values = emb.as_slice().iter().map(|&v| f64::from(v)).collect();
    let matrix = Matrix::from_vec(files.len(), emb.dim(), values)?;
    // A run's `final/` or `checkpoint-N/` is named after its run directory too.
    let part = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = match (part(m.dir()), m.dir().parent().and_then(part)) {
        (Some(n), Some(run)) if n == "final" || n.starts_with("checkpoint-") => {
            format!("{run}/{n}")
        }
        (Some(n), _) => n,
        _ => model.to_string(),
    };
    let (description, short) = match which {
        FeaturesArg::Embeds => ("image embeddings".to_string(), "embeddings"),
        FeaturesArg::Pooled => (
            which.describe(choice).replace("features", "image features"),
            "pooled",
        ),
    };
    Ok(Features {
        matrix,
        description: format!("{} {description}", m.dir().display()),
        short: format!("{} {short}", ascii(&name)),
    })
}

/// Raw RGB pixels scaled to [0, 1], every image resized (bicubic) to one size.
pub(super) fn pixel_features(files: &[PathBuf], size: Option<u32>) -> Result<Features> {
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
    Ok(Features {
        matrix: Matrix::from_vec(files.len(), d, data)?,
        description: format!("pixels ({w}×{h} RGB)"),
        short: format!("pixels ({w}x{h})"),
    })
}

fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect()
}

fn print_table(features: &Features, labels: &Labels, reports: &[ProbeReport]) {
    println!("features: {}", features.description);
    println!(
        "{} labelled images, {} classes, seed {}",
        labels.len(),
        labels.n_classes(),
        reports.first().map_or(0, |r| r.seed)
    );
    println!();
    println!(
        "{:<9} {:>8} {:>7} {:>6} {:>6} {:>8} {:>8}",
        "method", "features", "N/class", "train", "test", "lambda", "accuracy"
    );
    for r in reports {
        println!(
            "{:<9} {:>8} {:>7} {:>6} {:>6} {:>8} {:>8.4}",
            r.method.to_string(),
            r.features,
            r.n_per_class,
            r.train,
            r.test,
            format!("{:.3e}", r.lambda),
            r.accuracy
        );
    }
}
