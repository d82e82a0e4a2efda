//! Probe: how fast the `gemm` crate multiplies the `tiny` training shapes with each operand
//! layout, to choose how the taped path stores weights (not a test).
//! `RAYON_NUM_THREADS=2 cargo bench --bench gemm_layouts`.

use std::time::Instant;

/// `dst[m, n] = lhs[m, k] · rhs[k, n]`, operands given by (row stride, column stride).
#[allow(clippy::too_many_arguments)]
fn run(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    l: (isize, isize),
    rhs: &[f32],
    r: (isize, isize),
    dst: &mut [f32],
    dst_col_major: bool,
    par: gemm::Parallelism,
) {
    let (dcs, drs) = if dst_col_major {
        (m as isize, 1)
    } else {
        (1, n as isize)
    };
    // Every layout here is dense: each operand's largest offset is at most its element count.
    assert!(lhs.len() >= m * k && rhs.len() >= k * n && dst.len() >= m * n);
    // SAFETY: the assert above: the buffers cover m·k, k·n and m·n elements, and the dense
    // strides never reach past them.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dcs,
            drs,
            false,
            lhs.as_ptr(),
            l.1,
            l.0,
            rhs.as_ptr(),
            r.1,
            r.0,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// The same product with `k` split in two halves, one single-threaded GEMM per rayon task
/// into its own buffer, then summed: no synchronisation inside the kernel.
#[allow(clippy::too_many_arguments)]
fn run_split_k(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    l: (isize, isize),
    rhs: &[f32],
    r: (isize, isize),
    dst: &mut [f32],
    tmp: &mut [f32],
    dst_col_major: bool,
) {
    let half = k / 2;
    let (l1, r1) = (
        &lhs[(half as isize * l.1) as usize..],
        &rhs[(half as isize * r.0) as usize..],
    );
    let none = gemm::Parallelism::None;
    rayon::join(
        || run(m, n, half, lhs, l, rhs, r, dst, dst_col_major, none),
        || run(m, n, k - half, l1, l, r1, r, tmp, dst_col_major, none),
    );
    dst.iter_mut().zip(tmp.iter()).for_each(|(d, t)| *d += t);
}

fn main() {
    let shapes = [
        ("vision qkv/out, fwd", 8320, 256, 256),
        ("vision fc1, fwd", 8320, 1024, 256),
        ("vision fc2, fwd", 8320, 256, 1024),
        ("vision qkv/out, dW", 256, 256, 8320),
        ("vision fc1, dW", 1024, 256, 8320),
        ("vision fc2, dW", 256, 1024, 8320),
    ];
    let par = gemm::Parallelism::Rayon(rayon::current_num_threads());
    println!("| shape (m, n, k) | lhs | rhs | dst | ms | GFLOP/s |\n|---|---|---|---|---|---|");
    for (name, m, n, k) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c = vec![0f32; m * n];
        let row = |cols: usize| (cols as isize, 1isize);
        let col = |rows: usize| (1isize, rows as isize);
        for (ln, l, rn, r) in [
            ("row-major", row(k), "row-major", row(n)),
            ("row-major", row(k), "col-major (Wᵀ view)", col(k)),
            ("col-major", col(m), "row-major", row(n)),
            ("col-major", col(m), "col-major", col(k)),
        ] {
            for dcm in [false, true] {
                run(m, n, k, &a, l, &b, r, &mut c, dcm, par);
                let reps = 5;
                let t = Instant::now();
                for _ in 0..reps {
                    run(m, n, k, &a, l, &b, r, &mut c, dcm, par);
                }
                let s = t.elapsed().as_secs_f64() / reps as f64;
                let gf = 2.0 * (m * n * k) as f64 / s / 1e9;
                let dn = if dcm { "col-major" } else { "row-major" };
                println!(
                    "| {name} ({m}, {n}, {k}) | {ln} | {rn} | {dn} | {:.2} | {gf:.0} |",
                    s * 1e3
                );
            }
        }
        if name.contains("dW") {
            let mut tmp = vec![0f32; m * n];
            for (ln, l, rn, r) in [
                ("row-major", row(k), "row-major", row(n)),
                ("row-major", row(k), "col-major", col(k)),
                ("col-major", col(m), "row-major", row(n)),
                ("col-major", col(m), "col-major", col(k)),
            ] {
                for dcm in [false, true] {
                    run_split_k(m, n, k, &a, l, &b, r, &mut c, &mut tmp, dcm);
                    let reps = 5;
                    let t = Instant::now();
                    for _ in 0..reps {
                        run_split_k(m, n, k, &a, l, &b, r, &mut c, &mut tmp, dcm);
                    }
                    let s = t.elapsed().as_secs_f64() / reps as f64;
                    let gf = 2.0 * (m * n * k) as f64 / s / 1e9;
                    let dn = if dcm { "col-major" } else { "row-major" };
                    println!(
                        "| {name} ({m}, {n}, {k}) split-k | {ln} | {rn} | {dn} | {:.2} | {gf:.0} |",
                        s * 1e3
                    );
                }
            }
        }
    }
}
