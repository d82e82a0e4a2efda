//! What the CPU custom ops (`linear_op`, `norm_op`, `activation_op`) share: their inputs as
//! plain `f32` slices.

use candle_core::{CpuStorage, Layout};

/// The `f32` elements of a CPU op's input, which the fused ops (`*_op.rs`) make contiguous.
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fused op needs contiguous input"),
    }
}
