//! The one GEMM call of the taped kernels: strided views over raw buffers, on `gemm`.

/// Threads a kernel may use (candle's setting, which follows `RAYON_NUM_THREADS`).
pub(super) fn threads() -> usize {
    candle_core::utils::get_num_threads().max(1)
}

fn parallelism(threads: usize) -> gemm::Parallelism {
    match threads {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// A read-only strided matrix: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub(super) struct View {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

impl View {
    /// Row-major with row stride `ld`: element `(i, j)` at `ptr + i·ld + j`.
    pub(super) fn rows(ptr: *const f32, ld: usize) -> Self {
        Self {
            ptr,
            rs: ld as isize,
            cs: 1,
        }
    }

    /// The transpose of [`View::rows`]: element `(i, j)` at `ptr + j·ld + i`.
    pub(super) fn cols(ptr: *const f32, ld: usize) -> Self {
        Self {
            ptr,
            rs: 1,
            cs: ld as isize,
        }
    }
}

/// `dst[m, n] = (accumulate ? dst : 0) + alpha·lhs[m, k]·rhs[k, n]`, `dst` row stride `ld`,
/// on up to `threads` threads.
///
/// # Safety
/// All views must cover the addressed elements; `dst` must not alias the inputs.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_raw(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    ld: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    alpha: f32,
    threads: usize,
) {
    // SAFETY: the caller guarantees the views cover every addressed element and that `dst`
    // aliases no input; the strides and sizes are passed through unchanged.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            ld as isize,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            1.0,
            alpha,
            false,
            false,
            false,
            parallelism(threads),
        );
    }
}
