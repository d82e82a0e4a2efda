//! A bounded load test of `clip serve` (see `scripts/bench_serve.sh`).
//!
//! `cargo run --release --example serve_load -- URL N CONCURRENCY [INDEX]` sends N text queries
//! (`POST URL/search`, k = 10) from CONCURRENCY threads, each with its own keep-alive
//! connection, and prints one JSON line: rates, latency percentiles, and failures, with 503s
//! (the server's queue was full) counted apart as `rejected`.
//!
//! `… --example serve_load -- knn-service URL N CONCURRENCY INDICE_NAME` sends the same texts
//! as clip-retrieval's `clip back` expects them (`POST URL/knn-service`, `modality` image,
//! `num_images` 10), to load that server or `clip serve`'s route of the same name
//! (`scripts/bench_serve_peer.sh`).
//!
//! `… --example serve_load -- make-vectors OUT N DIM SEED` writes N random unit vectors as a
//! safetensors `embeddings` tensor, for `clip index build --embeddings`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Queries cycled through, so that the server's batches hold different texts.
const CAPTIONS: &[&str] = &[
    "a photo of a dog",
    "a red car parked on a street",
    "two people walking on a beach at sunset",
    "a bowl of fruit on a wooden table",
    "a snowy mountain under a blue sky",
    "a cat sleeping on a sofa",
    "a city skyline at night",
    "a bicycle leaning against a wall",
    "a plate of pasta with tomato sauce",
    "children playing football in a park",
    "an old castle on a hill",
    "a close-up of a yellow flower",
];

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["make-vectors", out, n, dim, seed] => {
            make_vectors(out, n.parse()?, dim.parse()?, seed.parse()?)
        }
        ["knn-service", url, n, conc, name] => {
            load(url, n.parse()?, conc.parse()?, Route::KnnService(name))
        }
        [url, n, conc] => load(url, n.parse()?, conc.parse()?, Route::Search(None)),
        [url, n, conc, index] => load(url, n.parse()?, conc.parse()?, Route::Search(Some(index))),
        _ => Err("usage: serve_load URL N CONCURRENCY [INDEX] \
                  | serve_load knn-service URL N CONCURRENCY INDICE_NAME \
                  | serve_load make-vectors OUT N DIM SEED"
            .into()),
    }
}

/// Writes `n` random unit vectors of `dim` values to `out`.
fn make_vectors(out: &str, n: usize, dim: usize, seed: u64) -> Res<()> {
    let rows = retrieval::testing::unit_rows(n, dim, seed);
    let bytes: Vec<u8> = rows.iter().flat_map(|x| x.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n, dim], &bytes)?;
    safetensors::serialize_to_file([("embeddings", view)], None, std::path::Path::new(out))?;
    Ok(())
}

/// Which route the queries go to, with the index they name.
#[derive(Clone, Copy)]
enum Route<'a> {
    /// `POST /search` `{text, k: 10, [index]}`: `clip serve`'s own route.
    Search(Option<&'a str>),
    /// `POST /knn-service` `{text, modality: "image", num_images: 10, indice_name}`:
    /// clip-retrieval's route (and `clip serve`'s copy of it).
    KnnService(&'a str),
}

impl Route<'_> {
    fn path(self) -> &'static str {
        match self {
            Route::Search(_) => "search",
            Route::KnnService(_) => "knn-service",
        }
    }

    fn body(self, text: &str) -> String {
        let body = match self {
            Route::Search(index) => {
                let mut b = serde_json::json!({"text": text, "k": 10});
                if let Some(ix) = index {
                    b["index"] = serde_json::json!(ix);
                }
                b
            }
            Route::KnnService(name) => serde_json::json!({
                "text": text, "modality": "image", "num_images": 10, "indice_name": name,
            }),
        };
        body.to_string()
    }
}

/// What one client thread saw.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    /// Non-2xx answers other than 503, and transport failures.
    errors: usize,
    /// 503: the server refused the request because its queue was full.
    rejected: usize,
    /// The first few failures, to say what went wrong.
    samples: Vec<String>,
}

fn load(url: &str, n: usize, conc: usize, route: Route<'_>) -> Res<()> {
    if conc == 0 {
        return Err("CONCURRENCY must be at least 1".into());
    }
    let endpoint = format!("{}/{}", url.trim_end_matches('/'), route.path());
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..conc)
            .map(|_| s.spawn(|| client(&endpoint, n, &next, route)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("client thread panicked"))
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut all = Tally::default();
    for t in tallies {
        all.latencies.extend(t.latencies);
        all.errors += t.errors;
        all.rejected += t.rejected;
        all.samples.extend(t.samples);
    }
    all.latencies.sort_unstable();
    // Nearest rank: the smallest latency at or above fraction q of the successful requests.
    let ms = |q: f64| -> f64 {
        let l = &all.latencies;
        if l.is_empty() {
            return f64::NAN;
        }
        let i = ((q * l.len() as f64).ceil() as usize).clamp(1, l.len()) - 1;
        l[i].as_secs_f64() * 1e3
    };
    for m in all.samples.iter().take(5) {
        eprintln!("failed request: {m}");
    }
    let ok = all.latencies.len();
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let report = serde_json::json!({
        "requests": n,
        "concurrency": conc,
        "ok": ok,
        "errors": all.errors,
        "rejected": all.rejected,
        "seconds": round(seconds),
        "queries_per_s": round(ok as f64 / seconds),
        "p50_ms": round(ms(0.50)),
        "p90_ms": round(ms(0.90)),
        "p99_ms": round(ms(0.99)),
        "max_ms": round(ms(1.0)),
    });
    println!("{report}");
    Ok(())
}

/// Sends requests until `n` have been taken from `next`, timing the successful ones.
fn client(endpoint: &str, n: usize, next: &AtomicUsize, route: Route<'_>) -> Tally {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build();
    let mut t = Tally::default();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            return t;
        }
        let body = route.body(CAPTIONS[i % CAPTIONS.len()]);
        let started = Instant::now();
        let sent = agent
            .post(endpoint)
            .set("Content-Type", "application/json")
            .send_string(&body);
        // The whole answer is read, so the time covers what a client waits for.
        let failure = match sent.map(|r| r.into_string()) {
            Ok(Ok(_)) => {
                t.latencies.push(started.elapsed());
                continue;
            }
            Err(ureq::Error::Status(503, _)) => {
                t.rejected += 1;
                continue;
            }
            Err(e) => e.to_string(),
            Ok(Err(e)) => format!("reading the answer: {e}"),
        };
        t.errors += 1;
        if t.samples.len() < 5 {
            t.samples.push(failure);
        }
    }
}
