use super::*;

/// The f64 reference scores, row-major `[queries, rows]`, rounded to f32.
fn reference(base: &[f32], queries: &[f32], dim: usize) -> Vec<f32> {
    let s = crate::testing::scores(base, dim, queries);
    s.concat().into_iter().map(|x| x as f32).collect()
}

#[test]
fn every_kernel_matches_the_reference_on_ragged_shapes() {
    // Odd dimension, row count not a multiple of 32, query count not a multiple of 8.
    for (n, nq, dim) in [
        (75, 11, 13),
        (32, 8, 16),
        (1, 1, 1),
        (100, 3, 40),
        (70, 4, 33),
        (67, 2, 16),
    ] {
        let base = crate::testing::unit_rows(n, dim, n as u64);
        let queries = crate::testing::unit_rows(nq, dim, 1000 + nq as u64);
        let want = reference(&base, &queries, dim);
        for isa in supported() {
            let mut out = vec![f32::NAN; nq * n];
            let mut sink = MatrixSink {
                out: &mut out,
                cols: n,
            };
            let mut scanner = Scanner::with_isa(isa, dim);
            // Two calls over split ranges, as the parallel driver does.
            for part in [0..n / 2, n / 2..n] {
                scanner.scan(Rows::F32(&base), part, &queries, &mut sink);
            }
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() < 1e-5,
                    "{isa:?} n={n} dim={dim} at {i}: {a} vs {b}"
                );
            }
        }
    }
}

/// No queries or no rows: nothing reaches a kernel (the AVX-512 direct kernel used to read
/// four queries from an empty slice), on every instruction set this CPU has.
#[test]
fn empty_queries_and_empty_rows_score_nothing() {
    struct Count(usize);
    impl Sink for Count {
        fn accept(&mut self, _: usize, _: usize, valid: usize, scores: &[[f32; NR]]) {
            self.0 += valid * scores.len();
        }
    }
    let dim = 40;
    let base = crate::testing::unit_rows(70, dim, 7);
    let base16: Vec<f16> = base.iter().map(|&v| f16::from_f32(v)).collect();
    let one = crate::testing::unit_rows(1, dim, 8);
    let nine = crate::testing::unit_rows(9, dim, 9);
    let isas = supported();
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        assert_eq!(isas.len(), 3, "an AVX-512 CPU offers every level");
    }
    for isa in isas {
        let mut s = Scanner::with_isa(isa, dim);
        for rows in [Rows::F32(&base), Rows::F16(&base16)] {
            let mut c = Count(0);
            s.scan(rows, 0..70, &[], &mut c);
            s.scan(rows, 5..5, &one, &mut c);
            s.scan(rows, 70..70, &nine, &mut c);
            s.scan(Rows::F32(&[]), 0..0, &nine, &mut c);
            assert_eq!(c.0, 0, "{isa:?}");
            // The same scanner still scores a real batch afterwards.
            s.scan(rows, 0..70, &one, &mut c);
            s.scan(rows, 0..70, &nine, &mut c);
            assert_eq!(c.0, 70 * 10, "{isa:?}");
        }
    }
}

#[test]
fn f16_rows_are_widened() {
    let dim = 5;
    let base32: Vec<f32> = (0..40 * dim).map(|i| (i % 7) as f32 * 0.25).collect();
    let base16: Vec<f16> = base32.iter().map(|&v| f16::from_f32(v)).collect();
    let queries = vec![1.0f32, -1.0, 0.5, 0.0, 2.0];
    let want = reference(&base32, &queries, dim);
    let mut out = vec![0f32; 40];
    let mut sink = MatrixSink {
        out: &mut out,
        cols: 40,
    };
    Scanner::new(dim).scan(Rows::F16(&base16), 0..40, &queries, &mut sink);
    assert_eq!(out, want, "values exactly representable in f16");
}
