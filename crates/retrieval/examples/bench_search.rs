//! Times exact and approximate search on a built index (see `scripts/bench_retrieval.sh`).
//!
//! `cargo run --release -p retrieval --example bench_search -- INDEX QUERIES.safetensors
//!  [--k 10] [--repeat 3] [--ann EF,EF,..] [--ann-m 16] [--ann-efc 100] [--ids-out FILE]`
//!
//! `… --example bench_search -- build BASE.safetensors INDEX` writes an index from precomputed
//! vectors without the `clip` binary (what `clip index build --embeddings` does).
//!
//! Prints one JSON object per measurement on stdout, so the script can tabulate them.

use std::path::PathBuf;
use std::time::Instant;

use retrieval::{AnnParams, EmbeddingsFile, Hit, Index, SearchMode, SearchOptions};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        let mut src = std::error::Error::source(&*e);
        while let Some(s) = src {
            eprintln!("  caused by: {s}");
            src = s.source();
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
    ann_m: usize,
    ann_efc: usize,
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
        ann_m: 16,
        ann_efc: 100,
        ids_out: None,
    };
    while let Some(x) = it.next() {
        let mut val = || it.next().ok_or(format!("{x} needs a value"));
        match x.as_str() {
            "--k" => a.k = val()?.parse()?,
            "--repeat" => a.repeat = val()?.parse()?,
            "--ann" => a.ann_ef = val()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--ann-m" => a.ann_m = val()?.parse()?,
            "--ann-efc" => a.ann_efc = val()?.parse()?,
            "--ids-out" => a.ids_out = Some(val()?.into()),
            _ => pos.push(x),
        }
    }
    let [index, queries] = <[String; 2]>::try_from(pos).map_err(|_| "usage: bench_search INDEX QUERIES.safetensors [options]")?;
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
        src.read_rows(rows, buf);
        Ok(retrieval::normalize_rows_from(buf, src.dim(), first)?)
    })?;
    eprintln!("built {out} in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("build") && args.len() == 4 {
        return build(&args[2], &args[3]);
    }
    let a = parse()?;
    let threads = rayon::current_num_threads();
    let t = Instant::now();
    let idx = Index::open(&a.index)?;
    let open_s = t.elapsed().as_secs_f64();
    let (n, d) = (idx.len(), idx.dim());
    let qf = EmbeddingsFile::open(&a.queries, "embeddings")?;
    let queries = qf.to_vec();
    let nq = qf.rows();
    println!(r#"{{"what":"open","rows":{n},"dim":{d},"dtype":"{:?}","threads":{threads},"seconds":{open_s:.4}}}"#, idx.manifest().dtype);

    let exact = SearchOptions {
        mode: SearchMode::Exact,
        ..SearchOptions::default()
    };
    let time = |q: &[f32], opts: &SearchOptions| -> Result<(f64, Vec<Vec<Hit>>), retrieval::RetrievalError> {
        let mut best = f64::INFINITY;
        let mut out = Vec::new();
        for _ in 0..a.repeat.max(1) {
            let t = Instant::now();
            out = idx.search_with(q, d, a.k, opts)?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok((best, out))
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
                let ids: Vec<Vec<usize>> = hits.iter().map(|h| h.iter().map(|x| x.id).collect()).collect();
                std::fs::write(p, serde_json::to_string(&ids)?)?;
            }
        }
    }

    if !a.ann_ef.is_empty() {
        let truth = idx.search_with(&queries, d, a.k, &exact)?;
        let params = AnnParams {
            max_connections: a.ann_m,
            ef_construction: a.ann_efc,
            ..AnnParams::default()
        };
        let t = Instant::now();
        idx.build_ann(&params)?;
        println!(
            r#"{{"what":"ann_build","m":{},"ef_construction":{},"seconds":{:.2}}}"#,
            a.ann_m,
            a.ann_efc,
            t.elapsed().as_secs_f64()
        );
        for &ef in &a.ann_ef {
            let opts = SearchOptions {
                mode: SearchMode::Ann,
                ann: AnnParams { ef_search: ef, ..params },
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
                r#"{{"what":"ann","ef_search":{ef},"queries":{nq},"seconds":{s:.4},"queries_per_s":{:.0},"recall_at_k":{recall:.4}}}"#,
                nq as f64 / s
            );
        }
    }
    Ok(())
}
