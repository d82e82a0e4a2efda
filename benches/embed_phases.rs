//! Where `clip embed` spends its time: load, preprocessing and the ViT forward pass.
//!
//! `cargo bench --bench embed_phases -- MODEL_DIR IMAGE_DIR [BATCH]` (set RAYON_NUM_THREADS).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use clip_model::Checkpoint;

fn main() {
    clip_nn::runtime::reuse_freed_memory();
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    if args.len() < 3 {
        eprintln!("usage: embed_phases MODEL_DIR IMAGE_DIR [BATCH]");
        return;
    }
    let batch: usize = args.get(3).and_then(|b| b.parse().ok()).unwrap_or(16);
    let t = Instant::now();
    let ckpt = Checkpoint::load(&PathBuf::from(&args[1]), &Device::Cpu).unwrap();
    let pre = ckpt.preprocess.clone();
    let model = ckpt.into_model().unwrap();
    let load = t.elapsed().as_secs_f64();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&args[2])
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let (mut prep, mut fwd) = (0.0, 0.0);
    for chunk in files.chunks(batch) {
        let t = Instant::now();
        let px = vision_encoder::preprocess_files(chunk, &pre, &Device::Cpu).unwrap();
        prep += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _ = model.encode_image(&px).unwrap();
        fwd += t.elapsed().as_secs_f64();
    }
    let n = files.len() as f64;
    println!("| phase | seconds | images/s |\n|---|---|---|");
    println!("| load | {load:.2} | |");
    println!("| preprocess | {prep:.2} | {:.1} |", n / prep);
    println!("| forward | {fwd:.2} | {:.1} |", n / fwd);
    println!(
        "| total | {:.2} | {:.1} |",
        load + prep + fwd,
        n / (load + prep + fwd)
    );
}
