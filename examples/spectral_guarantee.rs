//! The spectral guarantee of HaoChen et al. (2021) on real digits, measured exactly.
//!
//! Builds the soft augmentation graph of 4s and 9s from `data/digits/digits.csv`, decomposes
//! its normalised adjacency, trains a free embedding table on the population spectral
//! contrastive loss for k = 1..K, and prints markdown tables (the ones in `docs/SPECTRAL.md`).
//!
//! ```text
//! cargo run --release --example spectral_guarantee -- [--k-max 8] [--steps 2000] [--lr 0.05]
//!     [--origins 30] [--views 5] [--seed 7] [--json reports.json] [--png spectrum.png]
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use spectral_graph::{
    fit_free_embeddings, guarantee_report, load_digits, regression_bound, AugmentationGraph,
    DigitGraphConfig, Digits, GuaranteeReport,
};

struct Args {
    k_max: usize,
    steps: usize,
    lr: f64,
    origins: usize,
    views: usize,
    seed: u64,
    json: Option<PathBuf>,
    png: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        k_max: 8,
        steps: 2000,
        lr: 0.05,
        origins: 30,
        views: 5,
        seed: 7,
        json: None,
        png: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--k-max" => args.k_max = value.parse()?,
            "--steps" => args.steps = value.parse()?,
            "--lr" => args.lr = value.parse()?,
            "--origins" => args.origins = value.parse()?,
            "--views" => args.views = value.parse()?,
            "--seed" => args.seed = value.parse()?,
            "--json" => args.json = Some(value.into()),
            "--png" => args.png = Some(value.into()),
            other => bail!("unknown option {other}"),
        }
    }
    Ok(args)
}

/// Why σ = 0.25 × the median view-to-origin distance: wider kernels blur the classes
/// together, narrower ones break each class into many near-disconnected pieces.
fn sigma_sweep(digits: &Digits, base: &DigitGraphConfig) -> anyhow::Result<()> {
    println!("| σ scale | σ | α | λ₂(Ā) | λ₃(Ā) | 2α/λᴸ₃ | 2α/λᴸ₅ |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for scale in [1.0, 0.5, 0.35, 0.25, 0.2, 0.15] {
        let cfg = DigitGraphConfig {
            sigma_scale: scale,
            ..base.clone()
        };
        let (g, sigma) = AugmentationGraph::from_digits(digits, &cfg)?;
        let e = g.spectrum()?;
        println!(
            "| {scale} | {sigma:.3} | {:.4} | {:.4} | {:.4} | {:.3} | {:.3} |",
            g.cut_alpha(),
            e.values[1],
            e.values[2],
            regression_bound(&g, &e, 2)?,
            regression_bound(&g, &e, 4)?,
        );
    }
    Ok(())
}

/// The cut of a few class pairs at the chosen σ: 4 vs 9 sits between the nearly separate
/// 0 vs 1 and the entangled 3 vs 8.
fn pair_sweep(digits: &Digits, base: &DigitGraphConfig) -> anyhow::Result<()> {
    let pairs = [
        [0, 1],
        [0, 6],
        [1, 7],
        [4, 9],
        [7, 9],
        [3, 5],
        [3, 8],
        [5, 8],
    ];
    println!(
        "| pair | {} |",
        pairs.map(|[a, b]| format!("{a}/{b}")).join(" | ")
    );
    println!("|---|{}", "---:|".repeat(pairs.len()));
    let mut row = Vec::new();
    for classes in pairs {
        let cfg = DigitGraphConfig {
            classes,
            ..base.clone()
        };
        row.push(format!(
            "{:.4}",
            AugmentationGraph::from_digits(digits, &cfg)?.0.cut_alpha()
        ));
    }
    println!("| α | {} |", row.join(" | "));
    Ok(())
}

/// A bar chart of the top eigenvalues of Ā, marking the first K.
fn write_spectrum_png(path: &Path, values: &[f64], k_max: usize) -> anyhow::Result<()> {
    let bars = values.len().min(40);
    let (bar_w, height, pad) = (12u32, 240u32, 10u32);
    let width = 2 * pad + bars as u32 * bar_w;
    let mut img = image::RgbImage::from_pixel(width, height + 2 * pad, image::Rgb([255, 255, 255]));
    for (i, &v) in values.iter().take(bars).enumerate() {
        let h = (v.clamp(0.0, 1.0) * f64::from(height)).round() as u32;
        let colour = if i < k_max {
            image::Rgb([40, 90, 200])
        } else {
            image::Rgb([170, 170, 170])
        };
        let x0 = pad + i as u32 * bar_w;
        for x in x0 + 1..x0 + bar_w - 1 {
            for y in pad + height - h..pad + height {
                img.put_pixel(x, y, colour);
            }
        }
    }
    for x in pad..width - pad {
        img.put_pixel(x, pad + height, image::Rgb([0, 0, 0]));
    }
    img.save(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // The matrices are a few hundred rows: candle's matmul thread pool costs more than it saves
    // here (ten times more on a busy machine), so run single-threaded unless told otherwise.
    // Set before any candle call, while this is the only thread.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let args = parse_args()?;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits/digits.csv");
    let digits = load_digits(&path)?;
    let cfg = DigitGraphConfig {
        origins_per_class: args.origins,
        views_per_origin: args.views,
        ..DigitGraphConfig::default()
    };

    let start = Instant::now();
    let (graph, sigma) = AugmentationGraph::from_digits(&digits, &cfg)?;
    let eigen = graph.spectrum()?;
    let k_max = args.k_max.min(graph.len() - 1);
    if let Some(i) = (0..k_max).find(|&i| eigen.values[i] <= 0.0) {
        bail!("λ_{} = {} is not positive", i + 1, eigen.values[i]);
    }
    let alpha = graph.cut_alpha();
    let a_norm: f64 = eigen.values.iter().map(|l| l * l).sum();
    println!(
        "Graph: digits {} (y = +1) vs {} (y = −1), {} origins × {} views = {} nodes, \
         σ = {sigma:.4}, seed {}",
        cfg.classes[0],
        cfg.classes[1],
        2 * cfg.origins_per_class,
        cfg.views_per_origin,
        graph.len(),
        cfg.seed
    );
    println!(
        "α = {alpha:.6}, uᵀ(I−Ā)u = {:.6} (2α = {:.6}), ‖Ā‖²_F = {a_norm:.6}, \
         λ_1..λ_{} of Ā all positive (smallest {:.4}); graph + eigen-decomposition {:.2?}",
        graph.laplacian_form(),
        2.0 * alpha,
        k_max,
        eigen.values[k_max - 1],
        start.elapsed()
    );
    println!(
        "Adam: {} full-graph steps per k, lr {} (cosine to lr/1000), init seed {}\n",
        args.steps, args.lr, args.seed
    );

    println!(
        "| k | λ_k(Ā) | λᴸ_(k+1) | ‖Ā−FFᵀ‖²_F | Σ_(i>k) λᵢ² | gap | R | Σ_(i>k) βᵢ² | 2α/λᴸ_(k+1) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut reports: Vec<GuaranteeReport> = Vec::new();
    for k in 1..=k_max {
        let f = fit_free_embeddings(&graph, k, args.steps, args.lr, args.seed)?;
        let r = guarantee_report(&graph, &eigen, &f)?;
        println!(
            "| {} | {:.4} | {:.4} | {:.6} | {:.6} | {:.1e} | {:.5} | {:.5} | {:.4} |",
            r.k,
            r.lambda_k,
            r.laplacian_k_plus_1,
            r.approximation_error,
            r.eckart_young_optimum,
            r.approximation_error - r.eckart_young_optimum,
            r.residual,
            r.beta_tail,
            r.bound
        );
        reports.push(r);
    }
    println!("\n(total {:.1?})\n", start.elapsed());

    println!("σ choice (same graph size and seed, σ = scale × median view-to-origin distance):\n");
    sigma_sweep(&digits, &cfg)?;
    println!("\nClass pairs at σ scale {}:\n", cfg.sigma_scale);
    pair_sweep(&digits, &cfg)?;

    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&reports)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.png {
        write_spectrum_png(p, &eigen.values, k_max)?;
    }
    Ok(())
}
