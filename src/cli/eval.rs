//! `clip eval`: retrieval metrics in both directions, and zero-shot classification.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clip_data::{LabelTable, SampleSet};
use retrieval::{class_embeddings, zero_shot};

use super::common::{self, CsvArgs, DeviceArg, PrecisionArg};
use clip::validation::ValSet;

/// CLIP's simplest prompt, used when no `--templates` are given.
const DEFAULT_TEMPLATE: &str = "a photo of {}.";

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Model directory (HF or open_clip layout) or a cached Hub repo id.
    #[arg(long)]
    model: String,
    /// Evaluation data (any `clip train --data` form); repeat to combine.
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    #[command(flatten)]
    csv: CsvArgs,
    /// `labels.tsv` (columns `filepath`, `label`, paths relative to it): adds zero-shot
    /// classification among the label names.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Prompt templates with `{}` for the label; embeddings are averaged per class.
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
    device: DeviceArg,
    #[command(flatten)]
    precision: PrecisionArg,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let device = a.device.device()?;
    let m = a.precision.open(&a.model, &device)?;
    let data = SampleSet::scan(&a.csv.sources(&a.data)?)?;
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
        let label_of = table.by_path();
        // Classes in name order, as the report lists them.
        let mut names = table.classes.clone();
        names.sort();
        let (mut rows, mut ys) = (Vec::new(), Vec::new());
        for (i, name) in scored.names.iter().enumerate() {
            let canon = Path::new(name).canonicalize().ok();
            if let Some(&id) = canon.and_then(|p| label_of.get(&p)) {
                rows.push(i);
                ys.push(
                    names
                        .binary_search(&table.classes[id])
                        .expect("a listed class"),
                );
            }
        }
        if rows.is_empty() {
            bail!("no image of --data appears in {}", labels_path.display());
        }
        let templates = if a.templates.is_empty() {
            vec![DEFAULT_TEMPLATE.to_string()]
        } else {
            a.templates.clone()
        };
        if let Some(t) = templates.iter().find(|t| !t.contains("{}")) {
            bail!("template {t:?} has no {{}} for the label");
        }
        let prompts: Vec<String> = names
            .iter()
            .flat_map(|n| templates.iter().map(move |t| t.replace("{}", n)))
            .collect();
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let text = m.text_features(
            &refs,
            a.batch_size.max(1),
            clip::Features::Embeds,
            &common::Bar::default(),
        )?;
        let text = clip::Embeddings::from_tensor(&text)?;
        let classes = class_embeddings(text.as_slice(), scored.dim, templates.len())?;
        let d = scored.dim;
        let images: Vec<f32> = rows
            .iter()
            .flat_map(|&i| scored.image_embeds[i * d..(i + 1) * d].iter().copied())
            .collect();
        let zs = zero_shot(&images, &classes, d, &ys)?;
        report.insert("zero_shot_top1".into(), zs.top1.into());
        report.insert("zero_shot_top5".into(), zs.top5.into());
        report.insert("zero_shot_images".into(), zs.images.into());
        let per_class: Vec<serde_json::Value> = zs
            .per_class
            .iter()
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
        return Ok(());
    }
    for (k, v) in &report {
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
    Ok(())
}
