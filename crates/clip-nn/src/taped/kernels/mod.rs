//! Slice-level CPU kernels for the taped encoder: GEMM, layer norm, activation, attention.
//!
//! Every kernel overwrites its whole output (buffers come recycled from a pool with stale
//! contents) unless it says it accumulates. Reductions over rows use fixed-size chunks
//! summed in order, so results do not depend on how rayon schedules the work.

mod attention;
mod gemm;
mod linear;
mod rows;

pub use attention::Seqs;
pub(crate) use attention::{attention_bwd, attention_fwd, cols_mut, AttnShape, Cols};
pub(crate) use linear::{column_sums, linear_bwd, linear_fwd};
pub(crate) use rows::{
    activation_bwd, activation_fwd, layer_norm_bwd, layer_norm_fwd, softmax_grad_rows, softmax_rows,
};

/// Rows per parallel task for row-wise kernels of width `d`.
fn rows_per_task(d: usize) -> usize {
    (16384 / d.max(1)).max(1)
}
