//! AdamW with per-parameter weight decay and saveable moments, the learning-rate schedule and
//! gradient clipping.
//!
//! `candle_nn::AdamW` applies one decay to every tensor and keeps its moments private, so a
//! run could neither exclude gains, biases and the temperature from decay nor resume exactly.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{CpuStorage, DType, Layout, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

/// Optimiser hyper-parameters (open_clip's defaults for ViT CLIP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay for matrices (see [`decays`]).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.1,
        }
    }
}

/// Whether weight decay applies to a parameter: not to biases, norm gains or any other 1-D
/// tensor, not to embedding tables or the temperature (open_clip's rule).
pub fn decays(name: &str, rank: usize) -> bool {
    rank >= 2 && !name.contains("embedding") && !name.contains("logit_")
}

struct Slot {
    name: String,
    var: Var,
    m: Vec<f32>,
    v: Vec<f32>,
    decay: bool,
}

/// The constants of one AdamW update.
#[derive(Clone, Copy)]
struct Update {
    b1: f32,
    b2: f32,
    step_size: f32,
    inv_bc2_sqrt: f32,
    eps: f32,
    shrink: f32,
}

impl Update {
    fn apply(self, decay: bool, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        let k = self;
        p.par_chunks_mut(8192)
            .zip(m.par_chunks_mut(8192))
            .zip(v.par_chunks_mut(8192))
            .zip(g.par_chunks(8192))
            .for_each(|(((p, m), v), g)| {
                for i in 0..p.len() {
                    if decay {
                        p[i] *= k.shrink;
                    }
                    m[i] = k.b1 * m[i] + (1.0 - k.b1) * g[i];
                    v[i] = k.b2 * v[i] + (1.0 - k.b2) * g[i] * g[i];
                    p[i] -= k.step_size * m[i] / (v[i].sqrt() * k.inv_bc2_sqrt + k.eps);
                }
            });
    }
}

/// The update applied to a CPU f32 weight in its own storage.
struct InPlace<'a> {
    k: Update,
    decay: bool,
    moments: Mutex<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
}

impl candle_core::InplaceOp2 for InPlace<'_> {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        sp: &mut CpuStorage,
        lp: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> candle_core::Result<()> {
        let (Some((p0, p1)), Some((g0, g1))) = (lp.contiguous_offsets(), lg.contiguous_offsets())
        else {
            candle_core::bail!("adamw: weight and gradient must be contiguous");
        };
        let CpuStorage::F32(p) = sp else {
            candle_core::bail!("adamw: weights must be f32");
        };
        let p = &mut p[p0..p1];
        let g = &sg.as_slice::<f32>()?[g0..g1];
        let mut guard = self.moments.lock().expect("moments lock");
        let (m, v) = &mut *guard;
        if p.len() != g.len() || m.len() != p.len() {
            candle_core::bail!(
                "adamw: gradient of {} values for {} weights",
                g.len(),
                p.len()
            );
        }
        self.k.apply(self.decay, p, m, v, g);
        Ok(())
    }
}

/// AdamW over a fixed list of named variables.
pub struct AdamW {
    slots: Vec<Slot>,
    cfg: AdamWConfig,
    t: u64,
}

impl AdamW {
    /// Optimises `vars` (name, variable) with zeroed moments.
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Self {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let n = var.elem_count();
                let decay = decays(&name, var.rank());
                Slot {
                    name,
                    var,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                    decay,
                }
            })
            .collect();
        Self { slots, cfg, t: 0 }
    }

    /// Updates completed so far.
    pub fn steps_taken(&self) -> u64 {
        self.t
    }

    /// Names of the parameters that receive weight decay.
    pub fn decayed(&self) -> Vec<&str> {
        self.slots
            .iter()
            .filter(|s| s.decay)
            .map(|s| s.name.as_str())
            .collect()
    }

    /// One update with learning rate `lr`; a parameter without a gradient is left alone.
    pub fn step(&mut self, grads: &HashMap<String, Tensor>, lr: f64) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 - self.cfg.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.cfg.beta2.powi(self.t as i32);
        let k = Update {
            b1: self.cfg.beta1 as f32,
            b2: self.cfg.beta2 as f32,
            step_size: (lr / bc1) as f32,
            inv_bc2_sqrt: (1.0 / bc2.sqrt()) as f32,
            eps: self.cfg.eps as f32,
            shrink: (1.0 - lr * self.cfg.weight_decay) as f32,
        };
        for slot in &mut self.slots {
            let Some(g) = grads.get(&slot.name) else {
                continue;
            };
            let t = slot.var.as_tensor();
            if t.device().is_cpu() && t.dtype() == DType::F32 && g.dtype() == DType::F32 {
                // In place: no copies of the weights or the gradient.
                let op = InPlace {
                    k,
                    decay: slot.decay,
                    moments: Mutex::new((&mut slot.m, &mut slot.v)),
                };
                t.inplace_op2(&g.contiguous()?, &op)?;
                continue;
            }
            let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
            let mut p: Vec<f32> = t.flatten_all()?.to_vec1()?;
            k.apply(slot.decay, &mut p, &mut slot.m, &mut slot.v, &g);
            let updated = Tensor::from_vec(p, slot.var.shape(), slot.var.device())?;
            slot.var.set(&updated)?;
        }
        Ok(())
    }

    /// Moments as tensors `m.<name>` / `v.<name>`, for the training state.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for s in &self.slots {
            for (kind, buf) in [("m", &s.m), ("v", &s.v)] {
                let t = Tensor::from_vec(buf.clone(), s.var.shape(), &candle_core::Device::Cpu)?;
                out.insert(format!("{kind}.{}", s.name), t);
            }
        }
        Ok(out)
    }

    /// Restores moments saved by [`AdamW::state_tensors`] after `t` updates.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, t: u64) -> Result<()> {
        for s in &mut self.slots {
            for (kind, buf) in [("m", &mut s.m), ("v", &mut s.v)] {
                let key = format!("{kind}.{}", s.name);
                let t = state
                    .get(&key)
                    .ok_or_else(|| TrainError::State(format!("optimizer state lacks `{key}`")))?;
                let data: Vec<f32> = t.flatten_all()?.to_vec1()?;
                if data.len() != buf.len() {
                    return Err(TrainError::State(format!(
                        "optimizer state `{key}` has {} values, the model needs {}",
                        data.len(),
                        buf.len()
                    )));
                }
                *buf = data;
            }
        }
        self.t = t;
        Ok(())
    }
}

/// How the learning rate evolves after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Cosine decay to zero at the last step.
    #[default]
    Cosine,
    /// Constant after warmup.
    Constant,
}

/// Linear warmup from 0 to `base_lr` over `warmup` steps, then [`ScheduleKind`].
pub fn learning_rate(
    kind: ScheduleKind,
    base_lr: f64,
    warmup: usize,
    total: usize,
    step: usize,
) -> f64 {
    if step < warmup {
        return base_lr * (step + 1) as f64 / warmup as f64;
    }
    match kind {
        ScheduleKind::Constant => base_lr,
        ScheduleKind::Cosine => {
            let span = total.saturating_sub(warmup).max(1) as f64;
            let e = (step - warmup) as f64;
            0.5 * (1.0 + (std::f64::consts::PI * e / span).cos()) * base_lr
        }
    }
}

/// Scales all gradients so their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(grads: &mut HashMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.values() {
        total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = total.sqrt();
    if norm > max_norm && norm > 0.0 {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.values_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_a_hand_computed_adamw_step() {
        // PyTorch: p=[1,-2], g=[0.5,0.1], lr=0.1, wd=0.1, betas (0.9,0.98), eps 1e-6, one step:
        // p ← p·(1−lr·wd) − lr·ĝ/(|ĝ|+eps) with bias-corrected moments, so ≈ p·0.99 − 0.1·sign(g).
        let w = Var::new(&[[1.0f32, -2.0]], &Device::Cpu).unwrap();
        let b = Var::new(&[0.3f32], &Device::Cpu).unwrap();
        let vars = vec![
            ("fc.weight".into(), w.clone()),
            ("fc.bias".into(), b.clone()),
        ];
        let mut opt = AdamW::new(vars, AdamWConfig::default());
        let gw = Tensor::new(&[[0.5f32, 0.1]], &Device::Cpu).unwrap();
        let gb = Tensor::new(&[-0.2f32], &Device::Cpu).unwrap();
        let grads = HashMap::from([("fc.weight".to_string(), gw), ("fc.bias".to_string(), gb)]);
        opt.step(&grads, 0.1).unwrap();
        let got: Vec<f32> = w.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let want = [1.0 * (1.0 - 0.01) - 0.1, -2.0 * (1.0 - 0.01) - 0.1];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{got:?}");
        }
        // Biases are not decayed: 0.3 + 0.1.
        let bias: Vec<f32> = b.as_tensor().to_vec1().unwrap();
        assert!((bias[0] - 0.4).abs() < 1e-5);
        assert_eq!(opt.decayed(), ["fc.weight"]);
    }

    #[test]
    fn decay_rule_follows_open_clip() {
        assert!(decays("vision_model.encoder.layers.0.mlp.fc1.weight", 2));
        assert!(!decays("vision_model.encoder.layers.0.mlp.fc1.bias", 1));
        assert!(!decays("vision_model.pre_layrnorm.weight", 1));
        assert!(!decays("vision_model.embeddings.class_embedding", 1));
        assert!(!decays("text_model.embeddings.token_embedding.weight", 2));
        assert!(!decays("logit_scale", 0));
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        let lr = |s| learning_rate(ScheduleKind::Cosine, 1.0, 10, 110, s);
        assert!((lr(0) - 0.1).abs() < 1e-12 && (lr(9) - 1.0).abs() < 1e-12);
        assert!((lr(60) - 0.5).abs() < 1e-12);
        assert!(lr(109) < 0.01);
        assert_eq!(learning_rate(ScheduleKind::Constant, 2.0, 0, 5, 4), 2.0);
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let t = |v: f32| Tensor::new(&[v], &Device::Cpu).unwrap();
        let mut g = HashMap::from([("a".to_string(), t(3.0)), ("b".to_string(), t(4.0))]);
        assert!((clip_grad_norm(&mut g, 1.0).unwrap() - 5.0).abs() < 1e-9);
        let a: Vec<f32> = g["a"].to_vec1().unwrap();
        assert!((a[0] - 0.6).abs() < 1e-4);
    }
}
