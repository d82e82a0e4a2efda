//! The training loop end to end on a small synthetic dataset: it learns, it repeats to the
//! bit under a seed, a resumed run equals an uninterrupted one, and failures keep the last
//! good checkpoint.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;

use candle_core::Device;
use clip_data::{Item, SampleSet};
use clip_train::{
    AdamWConfig, LossKind, Objective, Precision, RunSetup, ScheduleKind, TrainConfig,
};
use image::RgbImage;

/// 16 pairs: a colour in one of four quadrants, captioned with both.
fn dataset() -> Arc<SampleSet> {
    let colors = [
        ("red", [220, 30, 30]),
        ("green", [30, 200, 40]),
        ("blue", [30, 40, 220]),
        ("black", [10, 10, 10]),
    ];
    let places = ["top left", "top right", "bottom left", "bottom right"];
    let mut items = Vec::new();
    for (ci, (cname, rgb)) in colors.iter().enumerate() {
        for (pi, place) in places.iter().enumerate() {
            let img = RgbImage::from_fn(16, 16, |x, y| {
                let q = (y / 8) * 2 + x / 8;
                if q as usize == pi {
                    image::Rgb(*rgb)
                } else {
                    image::Rgb([255, 255, 255])
                }
            });
            items.push(Item {
                name: format!("{ci}-{pi}"),
                image: img,
                captions: vec![format!("{cname} {place}")],
            });
        }
    }
    Arc::new(SampleSet::from_items(items))
}

fn setup(out: &Path, steps: usize, resume: bool) -> RunSetup {
    let train = TrainConfig {
        steps,
        batch_size: 8,
        lr: 3e-3,
        warmup: 2,
        schedule: ScheduleKind::Cosine,
        seed: 11,
        save_every: 3,
        keep_last: 2,
        log_every: 1,
        ..TrainConfig::default()
    };
    run_setup(out, train, resume)
}

/// Trains `s` on [`dataset`], which must succeed.
fn run(s: RunSetup) {
    train_quietly(s, dataset()).unwrap();
}

/// The error of training `s` on [`dataset`], which must fail.
fn run_err(s: RunSetup) -> String {
    train_quietly(s, dataset()).unwrap_err().to_string()
}

/// The mean of `l`.
fn mean(l: &[f64]) -> f64 {
    l.iter().sum::<f64>() / l.len() as f64
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()?
                .get("loss")?
                .as_f64()
        })
        .collect()
}

#[test]
fn loss_falls_on_a_learnable_task() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = setup(dir.path(), 40, false);
    s.train.save_every = 0;
    s.train.batch_size = 16;
    run(s);
    let l = losses(dir.path());
    let (first, last) = (mean(&l[..3]), mean(&l[l.len() - 3..]));
    assert!(last < 0.6 * first, "loss {first:.3} → {last:.3}");
}

#[test]
fn same_seed_repeats_to_the_bit_and_resume_matches_an_uninterrupted_run() {
    let a = tempfile::tempdir().unwrap();
    run(setup(a.path(), 8, false));
    // An 8-step run killed right after its step-6 checkpoint, then resumed.
    let c = tempfile::tempdir().unwrap();
    train_killed_after(6, setup(c.path(), 8, false), dataset());
    assert!(c.path().join("checkpoint-6").is_dir());
    assert!(!c.path().join("final").exists());
    run(setup(c.path(), 8, true));
    let again = tempfile::tempdir().unwrap();
    run(setup(again.path(), 8, false));
    let wa = weights(&a.path().join("final"));
    assert_eq!(
        wa,
        weights(&again.path().join("final")),
        "same seed, same bits"
    );
    assert_eq!(
        wa,
        weights(&c.path().join("final")),
        "resumed run equals uninterrupted run"
    );
    assert_eq!(
        losses(a.path()),
        losses(c.path()),
        "metrics continue seamlessly"
    );
    // keep_last = 2: checkpoint-3 was pruned once 6 and 8 existed.
    let kept: Vec<usize> = clip_train::checkpoints(c.path())
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(kept, [6, 8]);
}

#[test]
fn divergence_stops_with_a_clear_error_and_keeps_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = setup(dir.path(), 30, false);
    s.train.lr = 1e30;
    s.train.warmup = 0;
    s.train.save_every = 1;
    let err = run_err(s);
    assert!(err.contains("loss is") && err.contains("step"), "{err}");
    let kept = clip_train::checkpoints(dir.path());
    assert!(!kept.is_empty());
    // What is left loads as a model.
    clip_model::Checkpoint::load(&kept.last().unwrap().1, &Device::Cpu).unwrap();
}

#[test]
fn siglip_and_feature_cache_accumulation_train() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = setup(dir.path(), 4, false);
    s.train.loss = LossKind::Siglip;
    s.train.accum_steps = 2;
    s.train.save_every = 0;
    run(s);
    assert!(dir.path().join("final/model.safetensors").exists());
    let mut bad = setup(dir.path(), 4, false);
    bad.train.accum_steps = 3;
    let err = run_err(bad);
    assert!(err.contains("accum_steps"), "{err}");
}

/// A feature cache over K chunks takes the step of the whole batch (open_clip's
/// `--accum-freq`). AdamW's first step is `lr·g/(|g| + ε)`: with ε = 1 rather than 1e-6 it
/// follows the gradient's size, not only its sign, so the weights compare the gradients.
#[test]
fn accumulated_chunks_take_the_step_of_the_whole_batch() {
    let dist = |a: &[f32], b: &[f32]| -> f64 {
        assert_eq!(a.len(), b.len());
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - *y as f64).powi(2));
        d.sum::<f64>().sqrt()
    };
    for loss in [LossKind::Clip, LossKind::Siglip] {
        // Every weight after one step, in name order.
        let step = |accum_steps, lr| {
            let dir = tempfile::tempdir().unwrap();
            let mut s = setup(dir.path(), 1, false);
            s.train = TrainConfig {
                loss,
                accum_steps,
                lr,
                warmup: 0,
                optimizer: AdamWConfig {
                    eps: 1.0,
                    weight_decay: 0.0,
                    ..AdamWConfig::default()
                },
                ..s.train
            };
            run(s);
            let w = weights(&dir.path().join("final"));
            w.into_iter().flat_map(|(_, v)| v).collect::<Vec<f32>>()
        };
        // A rate too small to move any weight gives the initial ones.
        let (start, whole) = (step(1, 1e-30), step(1, 1.0));
        assert!(whole.iter().all(|x| x.is_finite()));
        let scale = dist(&whole, &vec![0.0; whole.len()]);
        // The step is large enough that a wrong gradient would show above the tolerance.
        assert!(
            dist(&whole, &start) > 1e-2 * scale,
            "{loss:?}: the step barely moved"
        );
        for k in [2, 4] {
            let diff = dist(&step(k, 1.0), &whole);
            assert!(diff <= 1e-5 * scale, "{loss:?}, K = {k}: {diff} vs {scale}");
        }
    }
}

#[test]
fn image_only_objective_learns_and_leaves_the_text_tower_alone() {
    let runs: Vec<_> = [LossKind::NtXent, LossKind::Spectral]
        .into_iter()
        .map(|loss| {
            let dir = tempfile::tempdir().unwrap();
            let mut s = setup(dir.path(), 30, false);
            s.train.objective = Objective::Images;
            s.train.loss = loss;
            s.train.save_every = 0;
            run(s);
            dir
        })
        .collect();
    let l = losses(runs[0].path());
    let (first, last) = (mean(&l[..3]), mean(&l[l.len() - 3..]));
    assert!(last < 0.8 * first, "nt-xent {first:.3} → {last:.3}");
    let l = losses(runs[1].path());
    assert!(l[l.len() - 1] < l[0] - 0.05, "spectral {l:?}");
    // Same seed, different losses: the text tower and temperature are untouched (still the
    // seeded initialisation), the image tower moved differently.
    let (a, b) = (
        tensors(&runs[0].path().join("final")),
        tensors(&runs[1].path().join("final")),
    );
    let same = |n: &str| {
        let d: f32 = (&a[n] - &b[n])
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        d == 0.0
    };
    for name in a.keys() {
        if name.starts_with("text_model.")
            || name.starts_with("text_projection")
            || name == "logit_scale"
        {
            assert!(same(name), "{name} changed");
        }
    }
    assert!(!same("visual_projection.weight"));
}

#[test]
fn oracle_needs_labels_and_losses_must_fit_the_objective() {
    let dir = tempfile::tempdir().unwrap();
    let oracle = || {
        let mut s = setup(dir.path(), 3, false);
        s.train.objective = Objective::Images;
        s.train.loss = LossKind::Oracle;
        s.train.save_every = 0;
        s
    };
    let err = run_err(oracle());
    assert!(err.contains("labels"), "{err}");
    let mut s = oracle();
    // Colour classes: items are ordered colour by colour, four places each.
    s.labels = Some((0..16).map(|i| i / 4).collect());
    run(s);
    for (objective, loss, field) in [
        (Objective::Images, LossKind::Clip, "loss"),
        (Objective::ImageText, LossKind::NtXent, "loss"),
        (Objective::ImageText, LossKind::Oracle, "loss"),
    ] {
        let mut s = setup(dir.path(), 3, false);
        s.train.objective = objective;
        s.train.loss = loss;
        let err = run_err(s);
        assert!(err.contains(field) && err.contains("objective"), "{err}");
    }
    let mut s = setup(dir.path(), 3, false);
    s.train.tau_plus = 1.0;
    let err = run_err(s);
    assert!(err.contains("tau_plus"), "{err}");
}

#[test]
fn debiased_and_spectral_image_text_losses_train() {
    for loss in [
        LossKind::Debiased,
        LossKind::HardNegative,
        LossKind::Spectral,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut s = setup(dir.path(), 20, false);
        s.train.loss = loss;
        s.train.save_every = 0;
        s.train.batch_size = 16;
        run(s);
        let l = losses(dir.path());
        assert!(l.iter().all(|v| v.is_finite()), "{loss:?}: {l:?}");
        assert!(l[l.len() - 1] < l[0], "{loss:?}: {l:?}");
    }
}

#[test]
fn image_only_resume_matches_an_uninterrupted_run() {
    let images = |out: &Path, steps: usize, resume: bool| {
        let mut s = setup(out, steps, resume);
        s.train.objective = Objective::Images;
        s.train.loss = LossKind::HardNegative;
        s.train.steps = 6;
        s.train.save_every = steps;
        s
    };
    let whole = tempfile::tempdir().unwrap();
    run(images(whole.path(), 6, false));
    // Stop after 3 steps (a run whose schedule is still the 6-step one), then resume.
    let parts = tempfile::tempdir().unwrap();
    train_killed_after(3, images(parts.path(), 3, false), dataset());
    run(images(parts.path(), 3, true));
    assert_eq!(
        weights(&whole.path().join("final")),
        weights(&parts.path().join("final")),
        "resumed image-only run equals the uninterrupted one"
    );
}

#[test]
fn bf16_mixed_precision_learns_and_keeps_f32_master_weights() {
    let trained = |precision| {
        let dir = tempfile::tempdir().unwrap();
        let mut s = setup(dir.path(), 30, false);
        s.train.precision = precision;
        s.train.save_every = 0;
        s.train.batch_size = 16;
        run(s);
        dir
    };
    let (full, mixed) = (trained(Precision::F32), trained(Precision::Bf16));
    let (lf, lm) = (losses(full.path()), losses(mixed.path()));
    let tail = |l: &[f64]| mean(&l[l.len() - 3..]);
    assert!(
        tail(&lm) < 0.6 * lm[0],
        "bf16 loss {:.3} → {:.3}",
        lm[0],
        tail(&lm)
    );
    // Same seed, same data: the first loss differs only by bf16 rounding of the forward
    // pass, and training ends close to the f32 run.
    assert!(
        (lm[0] - lf[0]).abs() < 0.02 * lf[0],
        "{} vs {}",
        lm[0],
        lf[0]
    );
    assert!(
        (tail(&lm) - tail(&lf)).abs() < 0.25 * tail(&lf) + 0.05,
        "{lm:?} vs {lf:?}"
    );
    for (name, t) in tensors(&mixed.path().join("final")) {
        assert_eq!(t.dtype(), candle_core::DType::F32, "{name} is saved in f32");
    }
}
