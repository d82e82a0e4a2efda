//! What `clip train` prints: the data listed, each logged step, and at the end the run's
//! summary, validation beside chance, example searches, the probe and the next commands.

use std::path::{Path, PathBuf};

use clip::training::{Listing, Outcome, RunConfig, StepStats, Summary, Validation};
use indicatif::ProgressBar;

use crate::cli::common;

/// The progress bar of a run (hidden on ranks other than 0), and warnings above it.
pub struct Progress(pub ProgressBar);

impl clip::Observer for Progress {
    fn on_warning(&mut self, message: &str) {
        self.0.suspend(|| eprintln!("warning: {message}"));
    }

    fn on_step(&mut self, s: &StepStats) {
        self.0.set_position(s.step as u64);
        let skipped = match s.skipped {
            0 => String::new(),
            n => format!(" skipped {n}"),
        };
        self.0.set_message(format!(
            "loss {:.4} lr {:.2e} scale {:.1} {:.0} samples/s data-wait {:.0}%{skipped}",
            s.loss,
            s.lr,
            s.logit_scale,
            s.samples_per_s,
            100.0 * s.data_wait
        ));
        if self.0.is_hidden() {
            eprintln!(
                "step {}/{} loss {:.4} lr {:.2e} scale {:.1} {:.0} samples/s{skipped}",
                s.step, s.total, s.loss, s.lr, s.logit_scale, s.samples_per_s
            );
        }
    }
}

/// What listing the data found, on stderr.
pub fn listing(l: &Listing) {
    let s = if l.sources == 1 { "" } else { "s" };
    let kind = if l.images_only {
        "images"
    } else {
        "image–caption pairs"
    };
    match &l.streamed {
        Some(size) => eprintln!(
            "{}: streaming {} shard{s}, {} {kind} {size} (nothing listed; {:.1} s)",
            l.what, l.sources, l.samples, l.seconds
        ),
        None => eprintln!(
            "{}: {} {kind} (listed from {} source{s} in {:.1} s)",
            l.what, l.samples, l.sources, l.seconds
        ),
    }
    common::report_skips(&l.skips);
}

/// The end of a run (before the probe): throughput, where things are, validation.
pub fn outcome(c: &RunConfig, o: &Outcome) {
    summary(c, &o.summary);
    if let Some(v) = &o.validation {
        validation(v, c.validates_on_bundled().then(|| &c.val_data[0]));
        examples(v);
    }
}

fn summary(c: &RunConfig, s: &Summary) {
    println!(
        "trained {} steps at {:.1} samples/s (waiting for data {:.1}% of the time)",
        s.steps_run,
        s.samples_per_s,
        100.0 * s.data_wait
    );
    if s.skipped > 0 {
        println!(
            "skipped {} samples (each with its reason in {})",
            s.skipped,
            c.out.join("skipped.tsv").display()
        );
    }
    if s.world > 1 {
        println!(
            "{} ranks: {:.1} s in collectives ({:.1}% of step time), {:.2} MB sent per step \
             and rank",
            s.world,
            s.comm_s,
            100.0 * s.comm_s / s.step_time_s.max(f64::MIN_POSITIVE),
            s.comm_bytes_per_step / 1e6
        );
    }
    println!("model: {}", s.final_dir.display());
    println!(
        "metrics: {}  plot: {}",
        c.out.join("metrics.jsonl").display(),
        c.out.join("metrics.svg").display()
    );
}

/// The validation metrics with the chance level beside each, and a line saying what was
/// measured; `bundled`: the bundled held-out style, whose measured table is in the README.
fn validation(v: &Validation, bundled: Option<&PathBuf>) {
    let (n, captions) = (v.scored.names.len(), v.scored.groups.captions.len());
    println!("\nvalidation ({n} images, {captions} distinct captions):");
    println!("  {:<28} {:>9} {:>9}", "metric", "value", "chance");
    for (k, x) in &v.metrics {
        match v.chance.get(k) {
            Some(c) => println!("  {k:<28} {x:>9.4} {c:>9.4}"),
            None => println!("  {k:<28} {x:>9.4}"),
        }
    }
    let (r10, c10) = (
        v.scored.metrics.text_to_image.r_at_10,
        v.chance["text_to_image_R@10"],
    );
    let what = match bundled {
        Some(dir) => format!(
            "{n} images of {}, a drawing style the model never saw in training",
            shown(dir).display()
        ),
        None => format!("{n} validation images"),
    };
    println!(
        "measured: text→image search over {what}; the right image is in the top 10 for {:.0}% \
         of the {captions} captions ({:.0}× the {:.2}% of a random ranking)",
        100.0 * r10,
        r10 / c10.max(f64::MIN_POSITIVE),
        100.0 * c10
    );
    if bundled.is_some() {
        println!(
            "what fewer or more steps buy (steps, minutes, R@1, R@10): the table in \
             README.md, \"What the first command does\""
        );
    }
}

/// The example text→image searches: the top 3 of each, ✓ by the right images.
fn examples(v: &Validation) {
    if v.examples.is_empty() {
        return;
    }
    let images = v.scored.names.len();
    println!(
        "\nexample text→image searches (top 3 of the {images} validation images, ✓ the right \
         one):"
    );
    for e in &v.examples {
        println!(
            "  \"{}\": the right image at rank {} of {images}",
            e.query, e.rank
        );
        for (r, &(i, score, right)) in e.top.iter().enumerate() {
            let hit = if right { "  ✓" } else { "" };
            let (name, caption) = v.scored.image(i);
            println!("    {}. {name:<22} {caption:<34} {score:.3}{hit}", r + 1);
        }
    }
}

/// The probe after an image-only run.
pub fn probe(p: &clip::probe::QuickProbe) {
    println!(
        "\nlinear probe ({} images, {} classes, ridge on {} labelled images per class, \
         accuracy on the rest; `clip probe` for more):",
        p.images, p.classes, p.per_class
    );
    for (what, accuracy) in &p.accuracy {
        println!("  {what:<17} accuracy {accuracy:.4}");
    }
}

/// The commands to try next, ready to paste: index and search the validation images (or the
/// training data) with the trained model, serve them, fine-tune on another folder.
pub fn next_steps(c: &RunConfig, o: &Outcome) {
    let images = c
        .val_data
        .iter()
        .chain(&c.data)
        .find(|p| p.is_dir())
        .map_or_else(|| "YOUR_IMAGE_FOLDER".to_string(), |p| shell_path(p));
    let query = o
        .validation
        .as_ref()
        .and_then(|v| {
            let captions = &v.scored.groups.captions;
            let example = clip::validation::EXAMPLE_QUERIES
                .iter()
                .find(|q| captions.iter().any(|x| x == *q));
            example
                .map(|q| q.to_string())
                .or_else(|| captions.first().cloned())
        })
        .unwrap_or_else(|| "a red apple".into());
    let clip = program();
    let model = shell_path(&o.summary.final_dir);
    let index = shell_path(&c.out.join("index"));
    println!("\nnext steps:");
    println!("  # search the images with the model just trained");
    println!("  {clip} index build --model {model} --images {images} --out {index}");
    println!("  {clip} search --index {index} {}", sh_quote(&query));
    println!("  # the same in a browser (a search page at the printed address)");
    println!("  {clip} serve --index {index}");
    println!("  # fine-tune this model on your own pairs (a folder of x.png + x.txt captions)");
    println!(
        "  {clip} train --init {model} --data YOUR_FOLDER --lr 1e-4 --out {}",
        shell_path(&c.out.with_file_name("fine-tuned"))
    );
}

/// This program as the user can run it again (`target/release/clip` after `cargo run`).
fn program() -> String {
    std::env::current_exe().map_or_else(|_| "clip".into(), |exe| shell_path(&exe))
}

/// `p` for a POSIX shell in the working directory: relative to it when below it, quoted
/// where needed.
fn shell_path(p: &Path) -> String {
    sh_quote(&shown(p).to_string_lossy())
}

/// `p` relative to the working directory when it lies below it.
fn shown(p: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| p.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| p.to_path_buf())
}

/// `s` as one POSIX shell word: bare when it has only safe characters, else single-quoted.
fn sh_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=,:@%+".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_words_are_quoted_only_where_a_shell_needs_it() {
        assert_eq!(sh_quote("runs/latest/final"), "runs/latest/final");
        assert_eq!(sh_quote("red apple"), "'red apple'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }
}
