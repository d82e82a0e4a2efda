//! Fine-tune a model on a folder of image–caption pairs (`x.png` with `x.txt` beside it),
//! printing the loss as it goes.
//!
//! ```text
//! cargo run --release --example fine_tune -- MODEL DATA_FOLDER OUT_DIR [STEPS]
//! ```
//!
//! For example, after the README's first command:
//! `cargo run --release --example fine_tune -- runs/latest/final data/emoji-twemoji runs/ft 50`.

use std::sync::Arc;

use clip::training::Start;
use clip::{Device, Observer, SampleSet, Source, TrainConfig};

/// Prints every logged step.
struct PrintLoss;

impl Observer for PrintLoss {
    fn on_step(&mut self, s: &clip::StepStats) {
        println!("step {:>5}  loss {:.4}", s.step, s.loss);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, data, out, rest @ ..] = args.as_slice() else {
        return Err("usage: fine_tune MODEL DATA_FOLDER OUT_DIR [STEPS]".into());
    };
    let steps: usize = rest.first().map_or(Ok(100), |s| s.parse())?;
    let device = Device::Cpu;
    let config = TrainConfig {
        steps,
        batch_size: 32,
        lr: 1e-4,
        warmup: steps / 10,
        log_every: 10,
        ..TrainConfig::default()
    };
    let setup = Start::checkpoint(model, &device)?.into_setup(out.as_ref(), config)?;
    let pairs = SampleSet::scan(&[Source::Folder(data.into())])?;
    println!("{} image–caption pairs", pairs.len());
    let summary = clip::train(setup, Arc::new(pairs), &device, &mut PrintLoss)?;
    println!(
        "{} steps at {:.1} samples/s; the model is in {}",
        summary.steps_run,
        summary.samples_per_s,
        summary.final_dir.display()
    );
    Ok(())
}
