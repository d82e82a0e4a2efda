//! `clip probe`: linear probes with few labels on frozen image embeddings, or on raw pixels
//! as the baseline an embedding has to beat.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clip::files::LabelTable;
use clip::probe::{
    embedding_features, few_label_split, pixel_features, run_probe, select_images,
    write_scatter_png, Labels, Method, Pca2, ProbeConfig, ProbeFeatures, ProbeReport, Selection,
};
use clip::{DeviceKind, Features};

use super::common;

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
    features: Option<Features>,
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
    device: DeviceKind,
}

pub fn run(a: ProbeArgs) -> Result<()> {
    check(&a)?;
    // Everything that can be checked cheaply is checked before the (slow) features.
    let table = LabelTable::read(&a.labels, &a.image_key, &a.label_key)?;
    let Selection {
        files,
        names,
        unlabelled,
        listed,
    } = select_images(&table, &a.data)?;
    if unlabelled > 0 {
        eprintln!(
            "note: skipped {unlabelled} of {listed} image(s) in --data that {} does not label",
            table.path.display()
        );
    }
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
        Some(model) => {
            let clip = clip::Clip::open(model, &a.device.device()?)?;
            let bar = common::Bar::default();
            embedding_features(&clip, model, &files, a.batch_size, a.features, &bar)?
        }
        None => pixel_features(&files, a.pixel_size)?,
    };
    let reports = a
        .train_per_class
        .iter()
        .map(|&n| probe(&a, &features, &labels, n))
        .collect::<Result<Vec<_>>>()?;
    if let Some(out) = &a.plot {
        plot(out, &features, &labels, files.len())?;
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

/// The checks of values clap lets through.
fn check(a: &ProbeArgs) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if a.train_per_class.contains(&0) {
        bail!("--train-per-class must be at least 1");
    }
    if let Some(l) = a.lambda.filter(|l| !(l.is_finite() && *l > 0.0)) {
        bail!("--lambda must be a positive number, got {l}");
    }
    if a.pixel_size == Some(0) {
        bail!("--pixel-size must be at least 1");
    }
    Ok(())
}

/// The probe with `n` labelled images per class, warning when logistic regression stopped
/// short.
fn probe(a: &ProbeArgs, f: &ProbeFeatures, labels: &Labels, n: usize) -> Result<ProbeReport> {
    let cfg = ProbeConfig {
        method: a.method.into(),
        n_per_class: n,
        seed: a.seed,
        lambda: a.lambda,
    };
    let r =
        run_probe(&f.matrix, labels, &cfg).with_context(|| format!("probe with {n} per class"))?;
    if r.converged == Some(false) {
        eprintln!(
            "warning: logistic regression ({n} per class) stopped after {} iterations \
             before reaching its tolerance",
            r.iterations.unwrap_or_default()
        );
    }
    Ok(r)
}

/// The PCA scatter plot of `--plot`.
fn plot(out: &Path, f: &ProbeFeatures, labels: &Labels, images: usize) -> Result<()> {
    let pca = Pca2::fit(&f.matrix).context("PCA for --plot")?;
    let points = pca.project(&f.matrix)?;
    let title = format!("PCA of {}, {images} images", f.short);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_scatter_png(out, &points, labels.ids(), labels.names(), &title)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn print_table(features: &ProbeFeatures, labels: &Labels, reports: &[ProbeReport]) {
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
