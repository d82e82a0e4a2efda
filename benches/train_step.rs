//! Time one training step of the `tiny` preset (batch from argv, default 128) by phase:
//! forward, backward, optimiser, for candle's autograd through the layers and for the taped
//! path `clip train` uses on CPU. `cargo bench --bench train_step -- [BATCH] [STEPS] [taped]`
//! (`taped`: time only the taped path).

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
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
            // Ten tokens, about the length of an emoji caption.
            let mut r = vec![49406, 100 + i, 200 + i, 300, 301, 302, 303, 304, 305, 49407];
            r.resize(32, 49407);
            r
        })
        .collect();
    println!("| path | forward (ms) | backward (ms) | optimizer (ms) | total (ms) | samples/s |");
    println!("|---|---|---|---|---|---|");
    let only_taped = args.get(3).is_some_and(|a| a == "taped");
    for taped in [false, true] {
        if only_taped && !taped {
            continue;
        }
        let mut ws = clip_nn::taped::Workspace::default();
        let (mut f, mut bw, mut o) = (0.0, 0.0, 0.0);
        for step in 0..steps + 1 {
            let t = Instant::now();
            let (grads, t1, t2) = if taped {
                let (img, vt) = model.vision().forward_taped(&pixels, &mut ws).unwrap();
                let (txt, tt) = model
                    .text()
                    .forward_taped(&ids, &Device::Cpu, &mut ws)
                    .unwrap();
                let (iv, tv) = (
                    Var::from_tensor(&img).unwrap(),
                    Var::from_tensor(&txt).unwrap(),
                );
                let loss =
                    clip_train::clip_loss(iv.as_tensor(), tv.as_tensor(), model.logit_scale())
                        .unwrap();
                let _ = loss.to_scalar::<f32>().unwrap();
                let t1 = t.elapsed().as_secs_f64();
                let g = loss.backward().unwrap();
                let mut tg = clip_nn::taped::Grads::default();
                model
                    .vision()
                    .backward_taped(vt, g.get(&iv).unwrap(), &mut ws, &mut tg)
                    .unwrap();
                model
                    .text()
                    .backward_taped(tt, g.get(&tv).unwrap(), &mut ws, &mut tg)
                    .unwrap();
                let by_id: HashMap<_, _> = tg
                    .into_entries()
                    .into_iter()
                    .map(|(p, g)| (p.id(), g))
                    .collect();
                let grads: HashMap<String, Tensor> = vars
                    .iter()
                    .filter_map(|(n, v)| {
                        by_id
                            .get(&v.as_tensor().id())
                            .or_else(|| g.get(v))
                            .map(|t| (n.clone(), t.clone()))
                    })
                    .collect();
                (grads, t1, t.elapsed().as_secs_f64())
            } else {
                let img = model.encode_image(&pixels).unwrap();
                let txt = model.encode_text(&ids).unwrap();
                let loss = clip_train::clip_loss(&img, &txt, model.logit_scale()).unwrap();
                let _ = loss.to_scalar::<f32>().unwrap();
                let t1 = t.elapsed().as_secs_f64();
                let g = loss.backward().unwrap();
                let grads: HashMap<String, Tensor> = vars
                    .iter()
                    .filter_map(|(n, v)| g.get(v).map(|t| (n.clone(), t.clone())))
                    .collect();
                (grads, t1, t.elapsed().as_secs_f64())
            };
            assert_eq!(grads.len(), vars.len());
            opt.step(&grads, 1e-4).unwrap();
            let t3 = t.elapsed().as_secs_f64();
            if step > 0 {
                f += t1;
                bw += t2 - t1;
                o += t3 - t2;
            }
        }
        let n = steps as f64;
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} |",
            if taped { "taped" } else { "candle autograd" },
            1e3 * f / n,
            1e3 * bw / n,
            1e3 * o / n,
            1e3 * (f + bw + o) / n,
            b as f64 * n / (f + bw + o)
        );
    }
}
