//! Times exact and approximate search on a built index (see `scripts/bench_retrieval.sh`).
//!
//! `cargo run --release -p retrieval --example bench_search -- INDEX QUERIES.safetensors
//!  [--k 10] [--repeat 3] [--ids-out FILE]
//!  [--ann KNOB,KNOB,.. [--ann-method ivf|hnsw] [--ann-lists 0] [--ann-m 16] [--ann-efc 100]]`
//!
//! `--ann` lists the search-time knob values to try: probes for IVF, ef_search for HNSW.
//!
//! `… --example bench_search -- build BASE.safetensors INDEX` writes an index from precomputed
//! vectors without the `clip` binary (what `clip index build --embeddings` does).
//!
//! `… --example bench_search -- limits FILE` measures the machine's FMA peak, the search kernel
//! on in-cache data, and the read bandwidth over FILE.
//!
//! Prints one JSON object per measurement on stdout, so the script can tabulate them.

use std::path::PathBuf;
use std::time::Instant;

use retrieval::testing::unit_rows;
use retrieval::{AnnMethod, AnnParams, EmbeddingsFile, Index, SearchMode, SearchOptions};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        for s in std::iter::successors(std::error::Error::source(&*e), |s| s.source()) {
            eprintln!("  caused by: {s}");
        }
        std::process::exit(1);
    }
}

struct Args {
    index: PathBuf,
    queries: PathBuf,
    k: usize,
    repeat: usize,
    ann_ef: Vec<usize>,
    /// Construction parameters; the library's defaults unless given.
    ann: AnnParams,
    ids_out: Option<PathBuf>,
}

fn parse() -> Result<Args, Box<dyn std::error::Error>> {
    let mut it = std::env::args().skip(1);
    let mut pos = Vec::new();
    let mut a = Args {
        index: PathBuf::new(),
        queries: PathBuf::new(),
        k: 10,
        repeat: 3,
        ann_ef: Vec::new(),
        ann: AnnParams::default(),
        ids_out: None,
    };
    while let Some(x) = it.next() {
        let mut val = || it.next().ok_or(format!("{x} needs a value"));
        match x.as_str() {
            "--k" => a.k = val()?.parse()?,
            "--repeat" => a.repeat = val()?.parse()?,
            "--ann" => {
                a.ann_ef = val()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--ann-m" => a.ann.max_connections = val()?.parse()?,
            "--ann-lists" => a.ann.lists = val()?.parse()?,
            "--ann-method" => {
                a.ann.method = match val()?.as_str() {
                    "ivf" => AnnMethod::Ivf,
                    "hnsw" => AnnMethod::Hnsw,
                    other => return Err(format!("unknown --ann-method {other}").into()),
                }
            }
            "--ann-efc" => a.ann.ef_construction = val()?.parse()?,
            "--ids-out" => a.ids_out = Some(val()?.into()),
            _ => pos.push(x),
        }
    }
    let [index, queries] = <[String; 2]>::try_from(pos)
        .map_err(|_| "usage: bench_search INDEX QUERIES.safetensors [options]")?;
    a.index = index.into();
    a.queries = queries.into();
    Ok(a)
}

fn build(base: &str, out: &str) -> Result<(), Box<dyn std::error::Error>> {
    let src = EmbeddingsFile::open(base.as_ref(), "embeddings")?;
    let spec = retrieval::IndexSpec {
        model: "precomputed".into(),
        dimension: src.dim(),
        count: src.rows(),
        dtype: retrieval::DType::F32,
        entries: retrieval::Entries::Ids { ids: Vec::new() },
    };
    let t = Instant::now();
    retrieval::write_index(out.as_ref(), &spec, |rows, buf| {
        let first = rows.start;
        src.read_rows(rows, buf)?;
        Ok(retrieval::normalize_rows_from(buf, src.dim(), first)?)
    })?;
    eprintln!("built {out} in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// Hardware limits to hold the search figures against: FMA throughput, the same kernel on
/// data that fits in cache, and the read bandwidth over a (page-cached) file.
fn limits(file: &str) -> Result<(), Box<dyn std::error::Error>> {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    // 1. Peak FMA rate: 16 independent 16-lane chains per thread for ~0.4 s.
    let flops: f64 = (0..threads)
        .into_par_iter()
        .map(|_| {
            let t = Instant::now();
            let mut acc = [[1.0f32; 16]; 16];
            let (a, b) = (
                std::hint::black_box(0.999_999f32),
                std::hint::black_box(1e-7f32),
            );
            let iters = 100_000_000u64;
            fma_loop(&mut acc, a, b, iters);
            std::hint::black_box(&acc);
            (iters * 16 * 16 * 2) as f64 / t.elapsed().as_secs_f64()
        })
        .sum();
    println!(
        r#"{{"what":"peak_fma","threads":{threads},"gflops":{:.1}}}"#,
        flops / 1e9
    );
    // 2. The same search on data that fits in the last-level cache: 32768 × 256 (32 MiB),
    //    1024 queries — the kernel and selection without the DRAM stream.
    let dim = 256;
    let (nb, nq) = (32768, 1024);
    let (base, queries) = (unit_rows(nb, dim, 1), unit_rows(nq, dim, 2));
    let (best, hits) = best_of(5, || retrieval::exact_search(&base, &queries, dim, 10));
    hits?;
    let gflops = 2.0 * nb as f64 * nq as f64 * dim as f64 / best / 1e9;
    println!(r#"{{"what":"in_cache_search","gflops":{gflops:.1}}}"#);
    // 3. Read bandwidth: sum every float of the file, in parallel, best of 3.
    let f = std::fs::File::open(file)?;
    // SAFETY: read-only mapping of a file nobody writes during the benchmark.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&f)? };
    let floats: &[f32] = bytemuck::cast_slice(&map[..map.len() / 64 * 64]);
    let (best, _) = best_of(3, || floats.par_chunks(1 << 20).map(sum_lanes).sum::<f32>());
    println!(
        r#"{{"what":"read_bandwidth","gb_per_s":{:.2}}}"#,
        map.len() as f64 / best / 1e9
    );
    Ok(())
}

/// The shortest time of `runs` calls of `f` (at least one), in seconds, and the last result.
fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = (f64::INFINITY, None);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let out = std::hint::black_box(f());
        best = (best.0.min(t.elapsed().as_secs_f64()), Some(out));
    }
    (best.0, best.1.expect("at least one run"))
}

fn sum_lanes(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU was just seen to support AVX2, all `sum_lanes_avx2` enables.
        return unsafe { sum_lanes_avx2(x) };
    }
    sum_lanes_portable(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sum_lanes_avx2(x: &[f32]) -> f32 {
    sum_lanes_portable(x)
}

#[inline(always)]
fn sum_lanes_portable(x: &[f32]) -> f32 {
    let mut acc = [0f32; 32];
    for c in x.chunks_exact(32) {
        for i in 0..32 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum()
}

#[inline(never)]
fn fma_loop(acc: &mut [[f32; 16]; 16], a: f32, b: f32, iters: u64) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU was just seen to support AVX-512F, all `fma_loop_avx512` enables.
        return unsafe { fma_loop_avx512(acc, a, b, iters) };
    }
    for _ in 0..iters {
        for row in acc.iter_mut() {
            for v in row.iter_mut() {
                *v = v.mul_add(a, b);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_loop_avx512(acc: &mut [[f32; 16]; 16], a: f32, b: f32, iters: u64) {
    use std::arch::x86_64::*;
    // SAFETY: each row of `acc` is 16 readable floats.
    let mut r: [__m512; 16] = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(acc[i].as_ptr()) });
    let (va, vb) = (_mm512_set1_ps(a), _mm512_set1_ps(b));
    for _ in 0..iters {
        for x in r.iter_mut() {
            *x = _mm512_fmadd_ps(*x, va, vb);
        }
    }
    for (row, x) in acc.iter_mut().zip(&r) {
        // SAFETY: each row of `acc` is 16 writable floats.
        unsafe { _mm512_storeu_ps(row.as_mut_ptr(), *x) };
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["build", base, out] => return build(base, out),
        ["limits", file] => return limits(file),
        _ => {}
    }
    let a = parse()?;
    let threads = rayon::current_num_threads();
    let t = Instant::now();
    let idx = Index::open(&a.index)?;
    let open_s = t.elapsed().as_secs_f64();
    let (n, d) = (idx.len(), idx.dim());
    let qf = EmbeddingsFile::open(&a.queries, "embeddings")?;
    let queries = qf.to_vec()?;
    let nq = qf.rows();
    println!(
        r#"{{"what":"open","rows":{n},"dim":{d},"dtype":"{:?}","threads":{threads},"seconds":{open_s:.4}}}"#,
        idx.manifest().dtype
    );

    let exact = SearchOptions {
        mode: SearchMode::Exact,
        ..SearchOptions::default()
    };
    let time = |q: &[f32], opts: &SearchOptions| {
        let (s, hits) = best_of(a.repeat, || idx.search_with(q, d, a.k, opts));
        hits.map(|h| (s, h))
    };
    for batch in [1, nq] {
        let (s, hits) = time(&queries[..batch * d], &exact)?;
        let gflops = 2.0 * batch as f64 * n as f64 * d as f64 / s / 1e9;
        let gbps = (n * d * idx.manifest().dtype.size()) as f64 / s / 1e9;
        println!(
            r#"{{"what":"exact","queries":{batch},"k":{},"seconds":{s:.4},"gflops":{gflops:.1},"index_gb_per_s":{gbps:.2},"queries_per_s":{:.1}}}"#,
            a.k,
            batch as f64 / s
        );
        if batch == nq {
            if let Some(p) = &a.ids_out {
                let ids: Vec<Vec<usize>> = hits
                    .iter()
                    .map(|h| h.iter().map(|x| x.id).collect())
                    .collect();
                std::fs::write(p, serde_json::to_string(&ids)?)?;
            }
        }
    }

    if !a.ann_ef.is_empty() {
        let truth = idx.search_with(&queries, d, a.k, &exact)?;
        let t = Instant::now();
        let built = idx.build_ann(&a.ann)?;
        println!(
            r#"{{"what":"ann_build","method":"{:?}","lists":{},"m":{},"ef_construction":{},"seconds":{:.2}}}"#,
            built.method,
            built.lists,
            built.max_connections,
            built.ef_construction,
            t.elapsed().as_secs_f64()
        );
        for &knob in &a.ann_ef {
            let opts = SearchOptions {
                mode: SearchMode::Ann,
                ann: AnnParams {
                    ef_search: knob,
                    probes: knob,
                    ..built
                },
                ..SearchOptions::default()
            };
            let (s, hits) = time(&queries, &opts)?;
            let found: usize = hits
                .iter()
                .zip(&truth)
                .map(|(h, t)| h.iter().filter(|x| t.iter().any(|y| y.id == x.id)).count())
                .sum();
            let recall = found as f64 / truth.iter().map(Vec::len).sum::<usize>().max(1) as f64;
            println!(
                r#"{{"what":"ann","knob":{knob},"queries":{nq},"seconds":{s:.4},"queries_per_s":{:.0},"recall_at_k":{recall:.4}}}"#,
                nq as f64 / s
            );
        }
    }
    Ok(())
}
