//! Reads shards start to end, K at a time, and prints the throughput: how fast the byte
//! layer alone can feed a loader.
//!
//! ```text
//! cargo run --release -p shard-source --example read_shards -- [--inflight K] [--compare] SPEC...
//! ```
//!
//! Each SPEC is a `--data` string (local paths with braces, `pipe:`, http(s), s3/gs/az).
//! `--compare` (local shards only) reads them once from disk and once through a loopback
//! HTTP server (the tests' server, files read from disk per request), to compare the two.

#[path = "../tests/support/server.rs"]
mod server;

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use shard_source::{expand_braces, parse_data_arg, DataPart, OpenConfig, Opener, ShardUrl};

struct Args {
    inflight: usize,
    compare: bool,
    specs: Vec<String>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        inflight: 4,
        compare: false,
        specs: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--inflight" => {
                let k = it.next().ok_or("--inflight needs a number")?;
                a.inflight = k
                    .parse()
                    .map_err(|_| format!("--inflight {k}: not a number"))?;
            }
            "--compare" => a.compare = true,
            _ => a.specs.push(arg),
        }
    }
    if a.specs.is_empty() || a.inflight == 0 {
        return Err("usage: read_shards [--inflight K] [--compare] SPEC...".into());
    }
    Ok(a)
}

/// The shards the specs name; local parts are brace-expanded here (no globs).
fn shards(specs: &[String]) -> Result<Vec<ShardUrl>, String> {
    let mut out = Vec::new();
    for spec in specs {
        for part in parse_data_arg(spec).map_err(|e| e.to_string())? {
            match part {
                DataPart::Remote(v) => out.extend(v),
                DataPart::Local(p) => {
                    let paths = expand_braces(&p)?;
                    out.extend(paths.into_iter().map(|p| ShardUrl::Local(p.into())));
                }
            }
        }
    }
    Ok(out)
}

struct Totals {
    bytes: u64,
    retries: u64,
    failed: Vec<String>,
}

/// Reads every shard to its end, `k` at a time; returns the totals and the seconds taken.
fn read_all(opener: &Opener, urls: &[ShardUrl], k: usize) -> (Totals, f64) {
    let next = AtomicUsize::new(0);
    let totals = Mutex::new(Totals {
        bytes: 0,
        retries: 0,
        failed: Vec::new(),
    });
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..k.min(urls.len()) {
            s.spawn(|| {
                let mut buf = vec![0u8; 1 << 20];
                while let Some(url) = urls.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let (mut n, mut retries) = (0u64, 0u32);
                    let res = opener.open(url).and_then(|mut r| loop {
                        match r.read(&mut buf) {
                            Ok(0) => break Ok(()),
                            Ok(m) => n += m as u64,
                            Err(e) => {
                                break Err(shard_source::ShardError::from_read(e, r.url(), n))
                            }
                        }
                        retries = r.retries();
                    });
                    let mut t = totals.lock().unwrap();
                    t.bytes += n;
                    t.retries += u64::from(retries);
                    if let Err(e) = res {
                        t.failed.push(e.to_string());
                    }
                }
            });
        }
    });
    (totals.into_inner().unwrap(), t.elapsed().as_secs_f64())
}

fn report(what: &str, urls: usize, k: usize, (t, secs): (Totals, f64)) {
    let mb = t.bytes as f64 / 1e6;
    println!(
        "{what}: {urls} shards, {mb:.1} MB in {secs:.3} s = {:.1} MB/s ({k} in flight, {} retries, {} failed)",
        mb / secs.max(1e-9),
        t.retries,
        t.failed.len()
    );
    for f in t.failed.iter().take(5) {
        println!("  {f}");
    }
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let urls = match shards(&a.specs) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let opener = Opener::new(OpenConfig::default());
    report(
        "read",
        urls.len(),
        a.inflight,
        read_all(&opener, &urls, a.inflight),
    );
    if !a.compare {
        return;
    }
    let server = server::Server::start();
    let mut via_http = Vec::new();
    for (i, u) in urls.iter().enumerate() {
        let ShardUrl::Local(p) = u else {
            eprintln!("--compare reads local shards only; {u} is not one");
            std::process::exit(2);
        };
        let path = format!("/{i}.tar");
        server.serve_file(&path, p.clone());
        via_http.push(ShardUrl::Http(server.url(&path)));
    }
    let got = read_all(&opener, &via_http, a.inflight);
    report("loopback http", via_http.len(), a.inflight, got);
}
