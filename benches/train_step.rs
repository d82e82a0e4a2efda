//! Time one training step of the `tiny` preset (batch from argv, default 128) by phase:
//! forward, backward, optimiser. `cargo bench --bench train_step -- [BATCH] [STEPS]`.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{Device, Tensor};
use clip_model::{ClipConfig, ClipModel};
use clip_nn::{Params, VarStore};

fn main() {
    clip_nn::runtime::reuse_freed_memory();
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let b: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(128);
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let cfg: ClipConfig = serde_json::from_str(include_str!("../models/tiny/config.json")).unwrap();
    let store = VarStore::new(Device::Cpu, 0);
    let model = ClipModel::new(&cfg, cfg.text_config.pooling(), Params::new(&store)).unwrap();
    let vars = store.named_vars();
    let mut opt = clip_train::AdamW::new(vars.clone(), Default::default());
    let pixels = Tensor::randn(0f32, 1.0, (b, 3, 64, 64), &Device::Cpu).unwrap();
    let ids: Vec<Vec<u32>> = (0..b as u32)
        .map(|i| {
            let mut r = vec![49406, 100 + i, 200 + i, 49407];
            r.resize(32, 49407);
            r
        })
        .collect();
    let (mut f, mut bw, mut o) = (0.0, 0.0, 0.0);
    for step in 0..steps + 1 {
        let t = Instant::now();
        let img = model.encode_image(&pixels).unwrap();
        let txt = model.encode_text(&ids).unwrap();
        let loss = clip_train::clip_loss(&img, &txt, model.logit_scale()).unwrap();
        let _ = loss.to_scalar::<f32>().unwrap();
        let t1 = t.elapsed().as_secs_f64();
        let g = loss.backward().unwrap();
        let t2 = t.elapsed().as_secs_f64();
        let grads: HashMap<String, Tensor> = vars
            .iter()
            .filter_map(|(n, v)| g.get(v).map(|t| (n.clone(), t.clone())))
            .collect();
        opt.step(&grads, 1e-4).unwrap();
        let t3 = t.elapsed().as_secs_f64();
        if step > 0 {
            f += t1;
            bw += t2 - t1;
            o += t3 - t2;
        }
    }
    let n = steps as f64;
    println!("| phase | ms/step |\n|---|---|");
    println!(
        "| forward | {:.0} |\n| backward | {:.0} |\n| optimizer | {:.0} |",
        1e3 * f / n,
        1e3 * bw / n,
        1e3 * o / n
    );
    println!(
        "| total | {:.0} | → {:.1} samples/s",
        1e3 * (f + bw + o) / n,
        b as f64 * n / (f + bw + o)
    );
}
