//! Each kernel, forward and backward, against composed candle ops in f64 (candle's autograd
//! on `Var`s gives the reference gradients), and the candle `Module` layers on CPU f32 (which
//! run the same kernels) against the same references.

use candle_core::{DType, Device, Module, Shape, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use super::kernels::*;
use super::{Grads, HostEncoder, Workspace};
use crate::{ops, Activation, Encoder, EncoderSpec, Params, VarStore};

/// Relative L2 error allowed on forward values.
const FWD_TOL: f64 = 1e-5;
/// Relative L2 error allowed on gradients: the worst observed is 7.3e-7 (the two-block
/// stack's `q_proj.bias`; single kernels less), so 5e-6 leaves rounding room while a wrong
/// factor or a dropped term (errors of 1e-2 and up) fails.
const GRAD_TOL: f64 = 5e-6;

/// A CPU f32 tensor of standard normal values, seeded.
fn randn(shape: impl Into<Shape>, seed: u64) -> Tensor {
    let shape = shape.into();
    let mut rng = rand_xoshiro::SplitMix64::seed_from_u64(seed);
    let v: Vec<f32> = (0..shape.elem_count())
        .map(|_| rng.sample(StandardNormal))
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn f64_var(t: &Tensor) -> Var {
    Var::from_tensor(&t.to_dtype(DType::F64).unwrap()).unwrap()
}

fn data(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Asserts that `got` has `want`'s shape, is finite, and is within relative L2 error `tol`
/// of it; returns the error.
fn check(got: &Tensor, want: &Tensor, tol: f64, what: &str) -> f64 {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (g, w) = (data(got), data(&want.to_dtype(DType::F32).unwrap()));
    assert!(g.iter().all(|v| v.is_finite()), "{what}: not finite");
    let sq = |it: &mut dyn Iterator<Item = f64>| it.map(|v| v * v).sum::<f64>();
    let den = sq(&mut w.iter().map(|&v| v as f64));
    assert!(den > 0.0, "{what}: reference is zero");
    let err = (sq(&mut g.iter().zip(&w).map(|(&a, &b)| (a - b) as f64)) / den).sqrt();
    assert!(
        err <= tol,
        "{what}: relative L2 error {err:.2e} > {tol:.0e}"
    );
    err
}

/// [`check`] for a flat host buffer holding a tensor shaped like `want`.
fn check_buf(got: &[f32], want: &Tensor, tol: f64, what: &str) -> f64 {
    assert_eq!(got.len(), want.elem_count(), "{what}: length");
    let got = Tensor::from_slice(got, want.shape(), &Device::Cpu).unwrap();
    check(&got, want, tol, what)
}

/// Gradients of `Σ y ⊙ dy`, i.e. the backward of `y` from output gradient `dy`.
fn backward(y: &Tensor, dy: &Tensor) -> candle_core::backprop::GradStore {
    let dy = dy.to_dtype(y.dtype()).unwrap();
    (y * dy).unwrap().sum_all().unwrap().backward().unwrap()
}

#[test]
fn linear_matches_candle() {
    let (k, n) = (24, 20);
    // (bias, residual, dx: None = not asked, Some(false) = overwrite, Some(true) = add);
    // 600 rows without dx take the two-halves weight gradient.
    for (bias, residual, dx_mode, m) in [
        (true, false, Some(false), 7),
        (false, true, Some(true), 9),
        (true, true, None, 600),
    ] {
        let case = format!("bias {bias}, residual {residual}, dx {dx_mode:?}");
        let (x, w, b) = (randn((m, k), 1), randn((n, k), 2), randn(n, 3));
        let (res, dy, base) = (randn((m, n), 4), randn((m, n), 5), randn((m, k), 6));
        let (xv, wv, bv) = (f64_var(&x), f64_var(&w), f64_var(&b));
        let mut y = xv.matmul(&wv.t().unwrap()).unwrap();
        if bias {
            y = y.broadcast_add(&bv).unwrap();
        }
        let mut with_res = y.clone();
        if residual {
            with_res = (&y + res.to_dtype(DType::F64).unwrap()).unwrap();
        }
        let g = backward(&y, &dy);
        let mut out = vec![f32::NAN; m * n];
        let bias_data = bias.then(|| data(&b));
        let res_data = residual.then(|| data(&res));
        linear_fwd(
            &mut out,
            &data(&x),
            &data(&w),
            bias_data.as_deref(),
            res_data.as_deref(),
            k,
        );
        check_buf(&out, &with_res, FWD_TOL, &format!("{case}: y"));
        let (mut dw, mut db, mut dx) = (vec![f32::NAN; n * k], vec![f32::NAN; n], data(&base));
        if dx_mode == Some(false) {
            dx.fill(f32::NAN);
        }
        let dx_arg = dx_mode.map(|acc| (dx.as_mut_slice(), acc));
        let db_arg = bias.then_some(db.as_mut_slice());
        linear_bwd(&data(&dy), &data(&x), &data(&w), k, &mut dw, db_arg, dx_arg);
        check_buf(&dw, g.get(&wv).unwrap(), GRAD_TOL, &format!("{case}: dw"));
        if bias {
            check_buf(&db, g.get(&bv).unwrap(), GRAD_TOL, &format!("{case}: db"));
        }
        if let Some(acc) = dx_mode {
            let mut want = g.get(&xv).unwrap().clone();
            if acc {
                want = (want + base.to_dtype(DType::F64).unwrap()).unwrap();
            }
            check_buf(&dx, &want, GRAD_TOL, &format!("{case}: dx"));
        }
        // The candle layer (a CustomOp over the same kernels) agrees in value and gradient.
        let (x32, w32, b32) = (
            Var::from_tensor(&x).unwrap(),
            Var::from_tensor(&w).unwrap(),
            Var::from_tensor(&b).unwrap(),
        );
        let layer = crate::Linear {
            weight: crate::layers::LinearWeight::Dense(w32.as_tensor().clone()),
            bias: bias.then(|| b32.as_tensor().clone()),
        };
        let y32 = layer.forward(x32.as_tensor()).unwrap();
        check(&y32, &y, FWD_TOL, &format!("{case}: layer y"));
        let g32 = backward(&y32, &dy);
        for (v, r, what) in [(&x32, &xv, "dx"), (&w32, &wv, "dw"), (&b32, &bv, "db")] {
            if bias || what != "db" {
                check(
                    g32.get(v).unwrap(),
                    g.get(r).unwrap(),
                    GRAD_TOL,
                    &format!("{case}: layer {what}"),
                );
            }
        }
    }
}

#[test]
fn layer_norm_matches_candle() {
    let (rows, d) = (13, 40);
    let x = (randn((rows, d), 1) * 3.0)
        .unwrap()
        .broadcast_add(&randn(d, 7))
        .unwrap();
    let (g, b, dy, base) = (
        randn(d, 2),
        randn(d, 3),
        randn((rows, d), 4),
        randn((rows, d), 5),
    );
    let (xv, gv, bv) = (f64_var(&x), f64_var(&g), f64_var(&b));
    let y = ops::layer_norm_composed(&xv, &gv, &bv, 1e-5).unwrap();
    let r = backward(&y, &dy);
    let (mut out, mut stats) = (vec![f32::NAN; rows * d], vec![f32::NAN; rows * 2]);
    layer_norm_fwd(&data(&x), &data(&g), &data(&b), 1e-5, &mut out, &mut stats);
    check_buf(&out, &y, FWD_TOL, "y");
    for accumulate in [false, true] {
        let mut dx = if accumulate {
            data(&base)
        } else {
            vec![f32::NAN; rows * d]
        };
        let (mut dg, mut db) = (vec![f32::NAN; d], vec![f32::NAN; d]);
        layer_norm_bwd(
            &data(&dy),
            &data(&x),
            &stats,
            &data(&g),
            &mut dx,
            accumulate,
            &mut dg,
            &mut db,
        );
        let mut want = r.get(&xv).unwrap().clone();
        if accumulate {
            want = (want + base.to_dtype(DType::F64).unwrap()).unwrap();
        }
        check_buf(
            &dx,
            &want,
            GRAD_TOL,
            &format!("dx, accumulate {accumulate}"),
        );
        check_buf(&dg, r.get(&gv).unwrap(), GRAD_TOL, "dg");
        check_buf(&db, r.get(&bv).unwrap(), GRAD_TOL, "db");
    }
    // The candle layer: inference and training paths, as [2, rows / 2.., d] batches.
    let x3 = x.narrow(0, 0, 12).unwrap().reshape((2, 6, d)).unwrap();
    let y3 = y.narrow(0, 0, 12).unwrap().reshape((2, 6, d)).unwrap();
    check(
        &ops::layer_norm(&x3, &g, &b, 1e-5).unwrap(),
        &y3,
        FWD_TOL,
        "inference",
    );
    let (x32, g32, b32) = (
        Var::from_tensor(&x).unwrap(),
        Var::from_tensor(&g).unwrap(),
        Var::from_tensor(&b).unwrap(),
    );
    let y32 = ops::layer_norm(&x32, &g32, &b32, 1e-5).unwrap();
    check(&y32, &y, FWD_TOL, "layer y");
    let g = backward(&y32, &dy);
    for (v, rv, what) in [(&x32, &xv, "dx"), (&g32, &gv, "dg"), (&b32, &bv, "db")] {
        check(
            g.get(v).unwrap(),
            r.get(rv).unwrap(),
            GRAD_TOL,
            &format!("layer {what}"),
        );
    }
}

#[test]
fn activation_matches_candle() {
    let x = (randn(3000, 1) * 2.5).unwrap();
    let dy = randn(3000, 2);
    for act in [
        Activation::QuickGelu,
        Activation::Gelu,
        Activation::GeluTanh,
    ] {
        let xv = f64_var(&x);
        // f64 takes candle's composed ops.
        let y = act.forward(&xv).unwrap();
        let r = backward(&y, &dy);
        let mut out = vec![f32::NAN; 3000];
        activation_fwd(act, &data(&x), &mut out);
        check_buf(&out, &y, FWD_TOL, &format!("{act:?} y"));
        let mut dx = data(&dy);
        activation_bwd(act, &data(&x), &mut dx);
        check_buf(&dx, r.get(&xv).unwrap(), GRAD_TOL, &format!("{act:?} dx"));
        let x32 = Var::from_tensor(&x).unwrap();
        let y32 = act.forward(&x32).unwrap();
        check(&y32, &y, FWD_TOL, &format!("{act:?} layer y"));
        let g = backward(&y32, &dy);
        check(
            g.get(&x32).unwrap(),
            r.get(&xv).unwrap(),
            GRAD_TOL,
            &format!("{act:?} layer dx"),
        );
    }
}

/// Attention of one sequence in composed f64 candle ops: `q, k, v` `[t, w]` → `[t, w]`.
fn attention_ref(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    causal: bool,
) -> Tensor {
    let (t, w) = q.dims2().unwrap();
    let split = |x: &Tensor| {
        x.reshape((t, heads, w / heads))
            .unwrap()
            .transpose(0, 1)
            .unwrap()
    };
    let mut s = (split(q).matmul(&split(k).t().unwrap()).unwrap() * scale).unwrap();
    if causal {
        let mask: Vec<f64> = (0..t * t)
            .map(|i| if i % t > i / t { -1e30 } else { 0.0 })
            .collect();
        s = s
            .broadcast_add(&Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap())
            .unwrap();
    }
    let p = ops::softmax_composed(&s).unwrap();
    p.matmul(&split(v))
        .unwrap()
        .transpose(0, 1)
        .unwrap()
        .reshape((t, w))
        .unwrap()
}

#[test]
fn attention_matches_candle() {
    let (w, heads, scale) = (12, 3, 0.37);
    let cases: [(Vec<usize>, bool, Option<Vec<usize>>); 4] = [
        (vec![5; 3], false, None),
        (vec![4, 1, 7], true, None),
        (vec![4, 1, 7], true, Some(vec![2, 0, 6])),
        (vec![5; 3], false, Some(vec![0; 3])),
    ];
    for (lens, causal, pooled) in cases {
        let case = format!("lens {lens:?}, causal {causal}, pooled {pooled:?}");
        let seqs = Seqs::ragged(lens.clone());
        let rows = seqs.rows();
        let qkv = randn((rows, 3 * w), 1);
        let qkv_v = f64_var(&qkv);
        let col = |i: usize| qkv_v.narrow(1, i * w, w).unwrap();
        let (q, k, v) = (col(0), col(1), col(2));
        let per_seq: Vec<Tensor> = (0..seqs.batch())
            .map(|b| {
                let part = |x: &Tensor| x.narrow(0, seqs.start(b), seqs.len(b)).unwrap();
                let ctx = attention_ref(&part(&q), &part(&k), &part(&v), heads, scale, causal);
                match &pooled {
                    Some(p) => ctx.narrow(0, p[b], 1).unwrap(),
                    None => ctx,
                }
            })
            .collect();
        let want = Tensor::cat(&per_seq, 0).unwrap();
        let dctx = randn(want.shape(), 2);
        let r = backward(&want, &dctx);
        let shape = AttnShape {
            seqs: &seqs,
            heads,
            scale: scale as f32,
            width: w,
            causal,
            pooled: pooled.as_deref(),
        };
        let all = data(&qkv);
        // Pooled: the queries of the pooled rows only, in a buffer of their own.
        let q_sel: Vec<f32> = pooled
            .iter()
            .flatten()
            .enumerate()
            .flat_map(|(b, &p)| {
                let r = seqs.start(b) + p;
                all[r * 3 * w..r * 3 * w + w].to_vec()
            })
            .collect();
        let q_cols = if pooled.is_some() {
            Cols::new(&q_sel, w, 0, w)
        } else {
            Cols::new(&all, 3 * w, 0, w)
        };
        let kv = (
            Cols::new(&all, 3 * w, w, w),
            Cols::new(&all, 3 * w, 2 * w, w),
        );
        let (mut probs, mut ctx) = (
            vec![f32::NAN; shape.probs_len()],
            vec![f32::NAN; want.elem_count()],
        );
        attention_fwd(shape, (q_cols, kv.0, kv.1), &mut probs, &mut ctx);
        check_buf(&ctx, &want, FWD_TOL, &format!("{case}: ctx"));
        let mut dqkv = vec![f32::NAN; rows * 3 * w];
        let mut dq_sel = vec![f32::NAN; q_sel.len()];
        let [dq, dk, dv] = cols_mut(&mut dqkv, 3 * w, [0, w, 2 * w], w);
        let dq = if pooled.is_some() {
            cols_mut(&mut dq_sel, w, [0], w)[0]
        } else {
            dq
        };
        attention_bwd(
            shape,
            (q_cols, kv.0, kv.1),
            &probs,
            &data(&dctx),
            [dq, dk, dv],
        );
        if let Some(p) = &pooled {
            // Only the pooled rows' queries have a gradient.
            for (r, row) in dqkv.chunks_mut(3 * w).enumerate() {
                row[..w].fill(0.0);
                if let Some(b) = (0..seqs.batch()).find(|&b| seqs.start(b) + p[b] == r) {
                    row[..w].copy_from_slice(&dq_sel[b * w..(b + 1) * w]);
                }
            }
        }
        check_buf(
            &dqkv,
            r.get(&qkv_v).unwrap(),
            GRAD_TOL,
            &format!("{case}: dq|dk|dv"),
        );
    }
}

#[test]
fn host_encoder_matches_candle_encoder_on_ragged_sequences() {
    let spec = EncoderSpec {
        width: 16,
        heads: 4,
        mlp_dim: 24,
        layers: 2,
        activation: Activation::Gelu,
        eps: 1e-5,
    };
    let store = VarStore::new(Device::Cpu, 0);
    let enc = Encoder::new(&spec, &Params::new(&store).pp("enc")).unwrap();
    // Random gains and biases too, so that every term of the backward matters.
    for (i, (_, v)) in store.named_vars().iter().enumerate() {
        let noise = (randn(v.shape(), 100 + i as u64) * 0.3).unwrap();
        v.set(&(v.as_tensor() + noise).unwrap()).unwrap();
    }
    // The reference: the same layers over f64 casts of the weights (composed candle ops,
    // gradients flow back to the f32 weights).
    let weights = store
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    let map = crate::TensorMap::new(weights, Device::Cpu).with_dtype(DType::F64);
    let enc64 = Encoder::new(&spec, &Params::new(&map).pp("enc")).unwrap();
    let seqs = Seqs::ragged(vec![3, 6, 1, 5]);
    let w = spec.width;
    for (causal, pooled) in [(true, Some(vec![2, 4, 0, 4])), (false, None)] {
        let case = format!("causal {causal}, pooled {pooled:?}");
        let x = randn((seqs.rows(), w), 1);
        let xv = f64_var(&x);
        let outs: Vec<Tensor> = (0..seqs.batch())
            .map(|b| {
                let t = seqs.len(b);
                let xb = xv
                    .narrow(0, seqs.start(b), t)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                let mask: Vec<f32> = (0..t * t)
                    .map(|i| if causal && i % t > i / t { -1e9 } else { 0.0 })
                    .collect();
                let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap();
                let y = enc64.forward(&xb, Some(&mask)).unwrap().squeeze(0).unwrap();
                match &pooled {
                    Some(p) => y.narrow(0, p[b], 1).unwrap(),
                    None => y,
                }
            })
            .collect();
        let want = Tensor::cat(&outs, 0).unwrap();
        let dout = randn(want.shape(), 2);
        let r = backward(&want, &dout);
        let host = HostEncoder::new(&enc, w).unwrap();
        let mut ws = Workspace::default();
        let (out, tape) = host.forward(data(&x), &seqs, causal, pooled.as_deref(), &mut ws);
        check_buf(&out, &want, FWD_TOL, &format!("{case}: output"));
        let mut grads = Grads::default();
        let dx = host
            .backward(tape, data(&dout), &mut ws, &mut grads)
            .unwrap();
        let mut worst = check_buf(&dx, r.get(&xv).unwrap(), GRAD_TOL, &format!("{case}: dx"));
        let entries = grads.into_entries();
        assert_eq!(
            entries.len(),
            store.named_vars().len(),
            "{case}: one gradient per parameter"
        );
        for (name, v) in store.named_vars() {
            let (_, g) = entries
                .iter()
                .find(|(p, _)| p.id() == v.id())
                .unwrap_or_else(|| panic!("{case}: no gradient for {name}"));
            let want = r.get(&v).unwrap();
            if name.ends_with("k_proj.bias") {
                // Zero exactly: a key bias shifts each row of scores by a constant, which
                // softmax ignores. Both sides are rounding noise.
                let norm = |t: &Tensor| data(t).iter().map(|v| v * v).sum::<f32>().sqrt();
                assert!(norm(g) < 1e-5 && norm(want) < 1e-5, "{case}: {name}");
                continue;
            }
            worst = worst.max(check(g, want, GRAD_TOL, &format!("{case}: {name}")));
        }
        println!("{case}: worst gradient relative error {worst:.1e}");
    }
}

#[test]
fn workspace_reuses_buffers_that_fit_and_only_those() {
    let mut ws = Workspace::default();
    let a = ws.take(1000);
    let ptr = a.as_ptr();
    ws.give(a);
    // A shorter request within 2× reuses the same memory, at the requested length.
    let b = ws.take(700);
    assert_eq!((b.len(), b.as_ptr()), (700, ptr));
    ws.give(b);
    // Given back, it is whole again: a request for the full size gets it too.
    let c = ws.take(1000);
    assert_eq!((c.len(), c.as_ptr()), (1000, ptr));
    ws.give(c);
    // Too small a request (would waste over half) or too large: a new buffer.
    let d = ws.take(400);
    assert_ne!(d.as_ptr(), ptr);
    let e = ws.take(1001);
    assert_ne!(e.as_ptr(), ptr);
    assert_eq!((d.len(), e.len()), (400, 1001));
}
