//! `clip eval`: retrieval metrics in both directions, and zero-shot classification.

use std::path::PathBuf;

use anyhow::Result;
use clip::files::LabelTable;
use clip::validation::{zero_shot, ValSet};
use clip::DeviceKind;

use super::common::{self, CsvArgs, PrecisionArg};

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Model directory (HF or open_clip layout) or a cached Hub repo id.
    #[arg(long)]
    model: String,
    /// Evaluation data (any `clip train --data` form; remote shards are read once and held
    /// decoded); repeat to combine.
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    #[command(flatten)]
    csv: CsvArgs,
    /// S3-compatible endpoint for s3:// data (as `clip train --data-endpoint`).
    #[arg(long)]
    data_endpoint: Option<String>,
    /// `labels.tsv` (columns `filepath`, `label`, paths relative to it): adds zero-shot
    /// classification among the label names.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Prompt templates with `{}` for the label; embeddings are averaged per class
    /// (default: "a photo of {}.").
    #[arg(long, num_args = 1..)]
    templates: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Items per forward pass.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Device.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceKind,
    #[command(flatten)]
    precision: PrecisionArg,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let device = a.device.device()?;
    let m = a.precision.open(&a.model, &device)?;
    let data = clip::files::samples(&a.data, &a.csv.columns(), a.data_endpoint.as_deref())?;
    let listed = data.scan_skips().to_vec();
    // Streams: only a batch of decoded images is held at a time.
    let mut val = ValSet::new(data, m.preprocess(), m.tokenizer(), 0);
    let scored = val.score(m.model(), a.batch_size.max(1))?;
    common::report_skips(&[listed, scored.skipped.clone()].concat());
    let mut report = serde_json::Map::new();
    for (k, v) in scored.metrics.named() {
        report.insert(k, v.into());
    }
    report.insert("images".into(), scored.names.len().into());
    report.insert(
        "distinct_captions".into(),
        scored.groups.captions.len().into(),
    );
    if let Some(labels_path) = &a.labels {
        let table = LabelTable::read(labels_path, "filepath", "label")?;
        let zs = zero_shot(&m, &scored, &table, &a.templates, a.batch_size)?;
        let r = &zs.report;
        report.insert("zero_shot_top1".into(), r.top1.into());
        report.insert("zero_shot_top5".into(), r.top5.into());
        report.insert("zero_shot_images".into(), r.images.into());
        let names = &zs.classes;
        let per_class: Vec<serde_json::Value> = (r.per_class.iter())
            .map(|c| {
                serde_json::json!({
                    "class": names[c.class], "images": c.count, "accuracy": c.accuracy,
                    "most_confused_with": c.most_confused.map(|m| names[m.class].clone()),
                })
            })
            .collect();
        report.insert("zero_shot_per_class".into(), per_class.into());
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// The report as a table: a number per line, the per-class rows indented.
fn print_table(report: &serde_json::Map<String, serde_json::Value>) {
    for (k, v) in report {
        match v {
            serde_json::Value::Array(rows) => {
                println!("{k}:");
                for r in rows {
                    println!(
                        "  {:<28} n={:<5} acc={:<8} confused with {}",
                        r["class"].as_str().unwrap_or(""),
                        r["images"],
                        r["accuracy"]
                            .as_f64()
                            .map(|x| format!("{x:.3}"))
                            .unwrap_or_else(|| "-".into()),
                        r["most_confused_with"].as_str().unwrap_or("-")
                    );
                }
            }
            serde_json::Value::Number(n) if n.is_f64() => {
                println!("{k:<28} {:.4}", n.as_f64().unwrap_or_default())
            }
            other => println!("{k:<28} {other}"),
        }
    }
}
