//! Pieces several subcommands share: model precision, progress bars, manifest options, and
//! library errors told in flags.

use clip::files::{CsvColumns, Skip};
use clip::{Clip, Device, Precision};
use indicatif::{ProgressBar, ProgressStyle};

/// `--precision`: the arithmetic of the towers' transformer blocks at inference.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct PrecisionArg {
    /// Arithmetic of the towers' transformer blocks on the CPU: f32 (the reference), bf16
    /// (AVX512_BF16 where the CPU has it), or int8 (weights per channel, activations per row;
    /// VNNI where the CPU has it). Embeddings are f32 unit vectors in every case.
    /// [default: f32, or int8 for a checkpoint saved by `clip convert --precision int8`]
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
}

impl PrecisionArg {
    /// `--model` (a folder or a cached Hub id) on `device`, in this precision.
    pub fn open(self, spec: &str, device: &Device) -> clip::Result<Clip> {
        let clip = Clip::open(spec, device)?;
        match self.precision {
            Some(p) => clip.with_precision(p),
            None => Ok(clip),
        }
    }
}

/// A progress bar on stderr for the library's long jobs (hidden for short ones).
#[derive(Default)]
pub struct Bar(std::cell::RefCell<Option<ProgressBar>>);

impl clip::Progress for Bar {
    fn start(&self, total: usize, what: &str) {
        let pb = ProgressBar::new(total as u64);
        if total < 64 {
            pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        pb.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb.set_message(what.to_string());
        *self.0.borrow_mut() = Some(pb);
    }
    fn advance(&self, n: usize) {
        if let Some(pb) = &*self.0.borrow() {
            pb.inc(n as u64);
        }
    }
    fn finish(&self) {
        if let Some(pb) = self.0.borrow_mut().take() {
            pb.finish_and_clear();
        }
    }
}

/// open_clip's CSV/TSV manifest options, shared by every command that reads `--data`.
#[derive(Debug, Clone, clap::Args)]
pub struct CsvArgs {
    /// CSV/TSV separator (default: tab for .tsv, comma for .csv).
    #[arg(long)]
    pub csv_separator: Option<char>,
    /// CSV/TSV column with image paths (relative to the manifest).
    #[arg(long, default_value_t = CsvColumns::default().img_key)]
    pub csv_img_key: String,
    /// CSV/TSV column with captions.
    #[arg(long, default_value_t = CsvColumns::default().caption_key)]
    pub csv_caption_key: String,
}

impl CsvArgs {
    /// The manifest options these flags ask for.
    pub fn columns(&self) -> CsvColumns {
        CsvColumns {
            separator: self.csv_separator,
            img_key: self.csv_img_key.clone(),
            caption_key: self.csv_caption_key.clone(),
        }
    }
}

/// Prints what was skipped, by kind with examples, to stderr.
pub fn report_skips(skips: &[Skip]) {
    if !skips.is_empty() {
        eprintln!(
            "skipped {}:\n  {}",
            skips.len(),
            clip::files::summarize_skips(skips).replace('\n', "\n  ")
        );
    }
}

/// A library error told in this program's terms: a config field named by its flag
/// (`accum_steps` → `--accum-steps`, also where a reason names one in backticks), a data
/// pattern by `--data`.
pub fn in_flags(e: anyhow::Error) -> anyhow::Error {
    use clip::training::TrainError;
    use clip::ShardError;
    // Config fields whose flag has another name (open_clip's, or the `data-` family's).
    const RENAMED: [(&str, &str); 3] = [
        ("epoch_samples", "train-num-samples"),
        ("streams", "data-streams"),
        ("workers", "data-workers"),
    ];
    let flag = |field: &str| match RENAMED.iter().find(|(f, _)| *f == field) {
        Some((_, name)) => format!("--{name}"),
        None => format!("--{}", field.replace('_', "-")),
    };
    let config = |field: &str, reason: &str| {
        let mut told = String::new();
        for (i, part) in reason.split('`').enumerate() {
            let is_field =
                !part.is_empty() && part.chars().all(|c| c.is_ascii_lowercase() || c == '_');
            match (i % 2, is_field) {
                (1, true) => told += &flag(part),
                (1, false) => told += &format!("`{part}`"),
                _ => told += part,
            }
        }
        anyhow::anyhow!("invalid {}: {told}", flag(field))
    };
    match e.downcast_ref::<clip::Error>() {
        Some(clip::Error::Config { field, reason }) => config(field, reason),
        Some(clip::Error::Train(t)) => match &**t {
            TrainError::Config { field, reason } => config(field, reason),
            _ => e,
        },
        Some(clip::Error::Data(clip::DataError::Pattern { pattern, reason })) => {
            anyhow::anyhow!("--data {pattern}: {reason}")
        }
        Some(clip::Error::Data(clip::DataError::Shards(s))) => match &**s {
            ShardError::Spec { spec, reason } => anyhow::anyhow!("--data {spec}: {reason}"),
            // The epoch size is `order.epoch_samples`, open_clip's --train-num-samples.
            ShardError::UnknownSize { .. } => {
                anyhow::anyhow!(
                    "{}",
                    s.to_string()
                        .replace("`epoch_samples`", "--train-num-samples")
                )
            }
            _ => e,
        },
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_flags_and_leave_other_quotes() {
        let e = clip::Error::Config {
            field: "val_data",
            reason: "with `objective` images use `labels` (or `clip probe`)".into(),
        };
        assert_eq!(
            in_flags(e.into()).to_string(),
            "invalid --val-data: with --objective images use --labels (or `clip probe`)"
        );
        let e = clip::Error::Config {
            field: "streams",
            reason: "3 streams do not split over 2 ranks".into(),
        };
        assert_eq!(
            in_flags(e.into()).to_string(),
            "invalid --data-streams: 3 streams do not split over 2 ranks"
        );
        let other = anyhow::anyhow!("unchanged `labels`");
        assert_eq!(in_flags(other).to_string(), "unchanged `labels`");
    }
}
