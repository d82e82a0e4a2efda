//! What a step shares with the other ranks: the global batch's features gathered for the
//! loss, the gradients other ranks' losses give this rank's rows, the samples of the global
//! batch (for the oracle loss), and the sum of the gradients and the loss.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};

use super::Stepper;
use crate::loss::Anchors;
use crate::{LossKind, Result};

/// The features of the whole (global) batch as the loss sees them: a leaf per side, whose
/// gradient goes back to the ranks that own the rows. `None` when this chunk is the batch.
pub(super) type Columns = Option<(Var, Var)>;

/// `all` with rows `at..at + block.rows` replaced by `block`.
pub(super) fn splice(all: &Tensor, at: usize, block: &Tensor) -> Result<Tensor> {
    let (n, r) = (all.dim(0)?, block.dim(0)?);
    let mut parts = Vec::with_capacity(3);
    if at > 0 {
        parts.push(all.narrow(0, 0, at)?);
    }
    parts.push(block.clone());
    if at + r < n {
        parts.push(all.narrow(0, at + r, n - at - r)?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

impl Stepper<'_> {
    /// The global batch's features for the loss, from this rank's features of all chunks
    /// (`local`): gathered from every rank, or (one process, several chunks) as they are.
    pub(super) fn columns(&self, local: (Tensor, Tensor), chunks: usize) -> Result<Columns> {
        if self.comm.world() == 1 && chunks == 1 {
            return Ok(None);
        }
        let side = |x: Tensor| -> Result<Var> {
            Ok(Var::from_tensor(&self.comm.all_gather(&x.detach())?)?)
        };
        Ok(Some((side(local.0)?, side(local.1)?)))
    }

    /// The gradients that the other ranks' losses give this rank's rows (`own`): the
    /// gradient of this rank's loss for every gathered row except its own, summed over ranks
    /// and scattered back to the owners.
    pub(super) fn scatter_gradients(
        &self,
        g: &candle_core::backprop::GradStore,
        columns: &(Var, Var),
        own: &Anchors,
    ) -> Result<(Tensor, Tensor)> {
        let side = |v: &Var| -> Result<Tensor> {
            let d = match g.get(v) {
                Some(d) => d.clone(),
                None => v.as_tensor().zeros_like()?,
            };
            let mine = Tensor::zeros((own.len(), d.dim(1)?), d.dtype(), d.device())?;
            self.comm.reduce_scatter_sum(&splice(&d, own.start, &mine)?)
        };
        Ok((side(&columns.0)?, side(&columns.1)?))
    }

    /// The sample of every row of the global batch (the oracle loss reads their labels).
    pub(super) fn global_items(&self, local: &[usize]) -> Result<Vec<usize>> {
        if self.comm.world() == 1 || self.setup.train.loss != LossKind::Oracle {
            return Ok(local.to_vec());
        }
        let bytes: Vec<u8> = local
            .iter()
            .flat_map(|&i| (i as u64).to_le_bytes())
            .collect();
        let all = self.comm.all_gather_bytes(&bytes)?;
        Ok(all
            .iter()
            .flat_map(|r| r.chunks_exact(8))
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as usize)
            .collect())
    }

    /// Sums the gradients (in one buffer, in parameter order) and the loss over the ranks.
    pub(super) fn sum_over_ranks(
        &self,
        grads: &mut HashMap<String, Tensor>,
        loss: f32,
    ) -> Result<f32> {
        let present: Vec<&(String, Var)> = self
            .vars
            .iter()
            .filter(|(n, _)| grads.contains_key(n))
            .collect();
        let mut flat = Vec::with_capacity(present.len() + 1);
        for (name, _) in &present {
            flat.push(grads[name].flatten_all()?.to_dtype(DType::F32)?);
        }
        flat.push(Tensor::new(&[loss], self.model.device())?);
        let sum = self.comm.all_reduce_sum(&Tensor::cat(&flat, 0)?)?;
        let mut at = 0;
        for (name, var) in present {
            let n = var.as_tensor().elem_count();
            let g = sum.narrow(0, at, n)?.reshape(var.as_tensor().shape())?;
            grads.insert(name.clone(), g.to_dtype(var.as_tensor().dtype())?);
            at += n;
        }
        Ok(sum.narrow(0, at, 1)?.to_vec1::<f32>()?[0])
    }
}
