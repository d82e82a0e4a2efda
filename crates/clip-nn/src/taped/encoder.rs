//! The pre-norm transformer stack, forward with a tape and backward from it.

use super::kernels::{
    activation_bwd, activation_fwd, attention_bwd, attention_fwd, cols_mut, AttnShape, Cols, Seqs,
};
use super::{Grads, HostLinear, HostNorm, HostQkv, Workspace};
use crate::{Activation, Attention, Encoder, EncoderLayer, Mlp, Result};

/// One block's parameters on the host.
#[derive(Debug)]
struct HostLayer {
    ln1: HostNorm,
    qkv: HostQkv,
    out: HostLinear,
    ln2: HostNorm,
    fc1: HostLinear,
    fc2: HostLinear,
    heads: usize,
    /// The factor on `q·kᵀ`, from the layer.
    scale: f32,
    act: Activation,
}

impl HostLayer {
    /// The block's attention over `seqs` (pooled at `sel` in the last block), the rows that
    /// go on past attention (all tokens, or the pooled ones) and the MLP width.
    fn shapes<'a>(
        &self,
        seqs: &'a Seqs,
        width: usize,
        causal: bool,
        sel: Option<&'a [usize]>,
    ) -> (AttnShape<'a>, usize, usize) {
        let shape = AttnShape {
            seqs,
            heads: self.heads,
            scale: self.scale,
            width,
            causal,
            pooled: sel,
        };
        (shape, shape.q_rows(), self.fc1.out_dim())
    }
}

/// A host copy of an [`Encoder`]'s weights for one training step.
#[derive(Debug)]
pub struct HostEncoder {
    layers: Vec<HostLayer>,
    width: usize,
}

/// What one block's backward needs from its forward.
#[derive(Debug)]
struct LayerTape {
    x_in: Vec<f32>,
    ln1_stats: Vec<f32>,
    a: Vec<f32>,
    /// `[b·t, 3w]` q|k|v, or in a pooled block `[b·t, 2w]` k|v (with `q` apart).
    qkv: Vec<f32>,
    /// The pooled block's queries `[b, w]` (else empty).
    q: Vec<f32>,
    probs: Vec<f32>,
    ctx: Vec<f32>,
    x_mid: Vec<f32>,
    ln2_stats: Vec<f32>,
    c: Vec<f32>,
    h: Vec<f32>,
    u: Vec<f32>,
    /// Rows of `a` at the pooled positions (pooled last block only, else empty).
    a_sel: Vec<f32>,
}

impl LayerTape {
    fn release(self, ws: &mut Workspace) {
        for buf in [
            self.x_in,
            self.ln1_stats,
            self.a,
            self.qkv,
            self.q,
            self.probs,
            self.ctx,
            self.x_mid,
            self.ln2_stats,
            self.c,
            self.h,
            self.u,
            self.a_sel,
        ] {
            ws.give(buf);
        }
    }
}

/// Activations of a whole stack, recorded by [`HostEncoder::forward`].
#[derive(Debug)]
pub struct EncoderTape {
    layers: Vec<LayerTape>,
    seqs: Seqs,
    causal: bool,
    pooled: Option<Vec<usize>>,
}

impl EncoderTape {
    /// Hands every buffer back to the workspace (when no backward follows).
    pub fn release(self, ws: &mut Workspace) {
        self.layers.into_iter().for_each(|l| l.release(ws));
    }
}

impl HostEncoder {
    /// Copies the weights of every block of `enc`, a stack of the given width.
    pub fn new(enc: &Encoder, width: usize) -> Result<Self> {
        // No `..` in these patterns: a new field must be handled here to compile.
        let Encoder { layers } = enc;
        let layers = layers
            .iter()
            .map(|layer| {
                let EncoderLayer {
                    ln1,
                    attn,
                    ln2,
                    mlp,
                } = layer;
                let Attention {
                    q,
                    k,
                    v,
                    out,
                    heads,
                    scale,
                } = attn;
                let Mlp { fc1, fc2, act } = mlp;
                Ok(HostLayer {
                    ln1: HostNorm::new(ln1)?,
                    qkv: HostQkv::new(q, k, v)?,
                    out: HostLinear::new(out)?,
                    ln2: HostNorm::new(ln2)?,
                    fc1: HostLinear::new(fc1)?,
                    fc2: HostLinear::new(fc2)?,
                    heads: *heads,
                    scale: *scale as f32,
                    act: *act,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, width })
    }

    /// `x`: the sequences `seqs`, `[rows, width]` → the stack's output `[rows, width]`, or
    /// with `pooled` (one position per sequence) only those rows, `[batch, width]`: the last
    /// block then computes queries, MLP and output for the pooled tokens only. With `causal`,
    /// token `i` attends to tokens `≤ i` of its sequence only. The tape is for
    /// [`HostEncoder::backward`].
    pub fn forward(
        &self,
        x: Vec<f32>,
        seqs: &Seqs,
        causal: bool,
        pooled: Option<&[usize]>,
        ws: &mut Workspace,
    ) -> (Vec<f32>, EncoderTape) {
        let (m, batch) = (seqs.rows(), seqs.batch());
        let w = self.width;
        assert_eq!(x.len(), m * w, "encoder input is not [rows, width]");
        if let Some(p) = pooled {
            assert!(p.len() == batch && p.iter().enumerate().all(|(b, &i)| i < seqs.len(b)));
        }
        let mut tape = EncoderTape {
            layers: Vec::with_capacity(self.layers.len()),
            seqs: seqs.clone(),
            causal,
            pooled: pooled.map(<[usize]>::to_vec),
        };
        let n_layers = self.layers.len();
        let mut x = x;
        for (idx, l) in self.layers.iter().enumerate() {
            let sel = pooled.filter(|_| idx + 1 == n_layers);
            let (shape, mq, mlp) = l.shapes(seqs, w, causal, sel);
            let (mut a, mut ln1_stats) = (ws.take(m * w), ws.take(m * 2));
            l.ln1.forward(&x, &mut a, &mut ln1_stats);
            let a_sel = sel.map_or_else(Vec::new, |p| gather_rows(&a, p, seqs, w));
            let (qkv, q) = match sel {
                None => {
                    let mut qkv = ws.take(m * 3 * w);
                    l.qkv.forward(0..3, &a, &mut qkv);
                    (qkv, Vec::new())
                }
                Some(_) => {
                    let (mut kv, mut q) = (ws.take(m * 2 * w), ws.take(batch * w));
                    l.qkv.forward(1..3, &a, &mut kv);
                    l.qkv.forward(0..1, &a_sel, &mut q);
                    (kv, q)
                }
            };
            let mut probs = ws.take(shape.probs_len());
            let mut ctx = ws.take(mq * w);
            attention_fwd(shape, qkv_cols(&qkv, &q, w), &mut probs, &mut ctx);
            let mut x_mid = ws.take(mq * w);
            let x_sel = sel.map(|p| gather_rows(&x, p, seqs, w));
            l.out
                .forward(&ctx, Some(x_sel.as_deref().unwrap_or(&x)), &mut x_mid);
            let (mut c, mut ln2_stats) = (ws.take(mq * w), ws.take(mq * 2));
            l.ln2.forward(&x_mid, &mut c, &mut ln2_stats);
            let (mut h, mut u) = (ws.take(mq * mlp), ws.take(mq * mlp));
            l.fc1.forward(&c, None, &mut h);
            activation_fwd(l.act, &h, &mut u);
            let mut x_out = ws.take(mq * w);
            l.fc2.forward(&u, Some(&x_mid), &mut x_out);
            tape.layers.push(LayerTape {
                x_in: x,
                ln1_stats,
                a,
                qkv,
                q,
                probs,
                ctx,
                x_mid,
                ln2_stats,
                c,
                h,
                u,
                a_sel,
            });
            x = x_out;
        }
        if let (Some(p), true) = (pooled, self.layers.is_empty()) {
            // No block to do the pooling: gather the rows here.
            let rows = gather_rows(&x, p, seqs, w);
            ws.give(x);
            return (rows, tape);
        }
        (x, tape)
    }

    /// From the gradient of the stack's output (consumed; pooled rows when the forward
    /// pooled) to the gradient of its input `[rows, width]`; every block parameter's
    /// gradient is pushed to `grads`, and the tape is recycled.
    pub fn backward(
        &self,
        tape: EncoderTape,
        dout: Vec<f32>,
        ws: &mut Workspace,
        grads: &mut Grads,
    ) -> Result<Vec<f32>> {
        let seqs = &tape.seqs;
        let (m, batch) = (seqs.rows(), seqs.batch());
        let w = self.width;
        let n_layers = self.layers.len();
        let mut dx = dout;
        if let (Some(p), 0) = (tape.pooled.as_deref(), n_layers) {
            let mut full = ws.take(m * w);
            full.iter_mut().for_each(|v| *v = 0.0);
            scatter_add_rows(&mut full, &dx, p, seqs, w);
            dx = full;
        }
        for (idx, (l, t)) in self.layers.iter().zip(tape.layers).enumerate().rev() {
            let sel = tape.pooled.as_deref().filter(|_| idx + 1 == n_layers);
            let (shape, mq, mlp) = l.shapes(seqs, w, tape.causal, sel);
            // MLP: x_out = x_mid + fc2(act(fc1(ln2(x_mid)))).
            let mut du = ws.take(mq * mlp);
            l.fc2.backward(&dx, &t.u, Some((&mut du, false)), grads)?;
            activation_bwd(l.act, &t.h, &mut du);
            let mut dc = ws.take(mq * w);
            l.fc1.backward(&du, &t.c, Some((&mut dc, false)), grads)?;
            l.ln2
                .backward(&dc, &t.x_mid, &t.ln2_stats, &mut dx, true, grads)?;
            // Attention: x_mid = x_in + out(attn(q, k, v)) with q, k, v of ln1(x_in).
            let mut dctx = ws.take(mq * w);
            l.out
                .backward(&dx, &t.ctx, Some((&mut dctx, false)), grads)?;
            let mut da = ws.take(m * w);
            let (q, k, v) = qkv_cols(&t.qkv, &t.q, w);
            match sel {
                None => {
                    let mut dqkv = ws.take(m * 3 * w);
                    let d = cols_mut(&mut dqkv, 3 * w, [0, w, 2 * w], w);
                    attention_bwd(shape, (q, k, v), &t.probs, &dctx, d);
                    l.qkv.backward(0..3, &dqkv, &t.a, (&mut da, false), grads)?;
                    l.ln1
                        .backward(&da, &t.x_in, &t.ln1_stats, &mut dx, true, grads)?;
                    ws.give(dqkv);
                }
                Some(p) => {
                    let (mut dq, mut dkv) = (ws.take(batch * w), ws.take(m * 2 * w));
                    let [dqc] = cols_mut(&mut dq, w, [0], w);
                    let [dkc, dvc] = cols_mut(&mut dkv, 2 * w, [0, w], w);
                    attention_bwd(shape, (q, k, v), &t.probs, &dctx, [dqc, dkc, dvc]);
                    l.qkv.backward(1..3, &dkv, &t.a, (&mut da, false), grads)?;
                    let mut da_sel = ws.take(batch * w);
                    l.qkv
                        .backward(0..1, &dq, &t.a_sel, (&mut da_sel, false), grads)?;
                    scatter_add_rows(&mut da, &da_sel, p, seqs, w);
                    // The residual path reaches the pooled rows only.
                    let mut dx_in = ws.take(m * w);
                    l.ln1
                        .backward(&da, &t.x_in, &t.ln1_stats, &mut dx_in, false, grads)?;
                    scatter_add_rows(&mut dx_in, &dx, p, seqs, w);
                    ws.give(std::mem::replace(&mut dx, dx_in));
                    for buf in [dq, dkv, da_sel] {
                        ws.give(buf);
                    }
                }
            }
            for buf in [du, dc, dctx, da] {
                ws.give(buf);
            }
            t.release(ws);
        }
        Ok(dx)
    }
}

/// The q, k and v blocks of a tape: all three side by side in `qkv`, or (pooled block) k|v
/// in `qkv` and the queries apart in `q`.
fn qkv_cols<'a>(qkv: &'a [f32], q: &'a [f32], w: usize) -> (Cols<'a>, Cols<'a>, Cols<'a>) {
    if q.is_empty() {
        (
            Cols::new(qkv, 3 * w, 0, w),
            Cols::new(qkv, 3 * w, w, w),
            Cols::new(qkv, 3 * w, 2 * w, w),
        )
    } else {
        (
            Cols::new(q, w, 0, w),
            Cols::new(qkv, 2 * w, 0, w),
            Cols::new(qkv, 2 * w, w, w),
        )
    }
}

/// Row `pos[b]` of every sequence `b` of a `[rows, w]` buffer, as `[batch, w]`.
fn gather_rows(x: &[f32], pos: &[usize], seqs: &Seqs, w: usize) -> Vec<f32> {
    pos.iter()
        .enumerate()
        .flat_map(|(b, &p)| {
            let r = seqs.start(b) + p;
            x[r * w..(r + 1) * w].iter().copied()
        })
        .collect()
}

/// Adds row `b` of `rows` (`[batch, w]`) to row `pos[b]` of sequence `b` in `x`.
fn scatter_add_rows(x: &mut [f32], rows: &[f32], pos: &[usize], seqs: &Seqs, w: usize) {
    for (b, (&p, row)) in pos.iter().zip(rows.chunks(w)).enumerate() {
        let r = seqs.start(b) + p;
        x[r * w..(r + 1) * w]
            .iter_mut()
            .zip(row)
            .for_each(|(d, v)| *d += v);
    }
}
