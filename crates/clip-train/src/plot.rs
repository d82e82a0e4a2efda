//! A dependency-free SVG of the training loss and validation recall, written at the end of a
//! run so a user can see the curves without a notebook.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::io;
use crate::Result;

struct Series {
    name: String,
    color: &'static str,
    points: Vec<(f64, f64)>,
}

fn panel(svg: &mut String, x0: f64, title: &str, series: &[Series]) {
    let (w, h, pad) = (420.0, 260.0, 40.0);
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        xmin = xmin.min(x);
        xmax = xmax.max(x);
        ymin = ymin.min(y);
        ymax = ymax.max(y);
    }
    let _ = write!(
        svg,
        r##"<g transform="translate({x0},10)"><rect x="{pad}" y="20" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        w - pad,
        h - 40.0
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="14" font-size="13" text-anchor="middle">{title}</text>"#,
        w / 2.0
    );
    if xmin > xmax {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">no data</text></g>"#,
            w / 2.0,
            h / 2.0
        );
        return;
    }
    if (xmax - xmin).abs() < 1e-12 {
        xmax = xmin + 1.0;
    }
    if (ymax - ymin).abs() < 1e-12 {
        ymax = ymin + 1.0;
    }
    let sx = |x: f64| pad + (x - xmin) / (xmax - xmin) * (w - pad);
    let sy = |y: f64| 20.0 + (1.0 - (y - ymin) / (ymax - ymin)) * (h - 40.0);
    let _ = write!(
        svg,
        r#"<text x="{pad}" y="{}" font-size="10">{xmin:.0}</text><text x="{w}" y="{}" font-size="10" text-anchor="end">{xmax:.0} steps</text>"#,
        h - 6.0,
        h - 6.0
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="28" font-size="10" text-anchor="end">{ymax:.3}</text><text x="{}" y="{}" font-size="10" text-anchor="end">{ymin:.3}</text>"#,
        pad - 2.0,
        pad - 2.0,
        h - 20.0
    );
    for (i, s) in series.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
            s.color,
            path.join(" ")
        );
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" font-size="11" fill="{}">{}</text>"#,
            pad + 8.0,
            36.0 + 14.0 * i as f64,
            s.color,
            s.name
        );
    }
    svg.push_str("</g>");
}

/// Reads `metrics.jsonl` and writes a two-panel SVG: training loss and validation recall@1.
pub fn write_plot(metrics: &Path, out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics).map_err(io("cannot read", metrics))?;
    let mut loss = Series {
        name: "train loss".into(),
        color: "#1f77b4",
        points: vec![],
    };
    let keys = [
        ("text_to_image_R@1", "#d62728"),
        ("image_to_text_R@1", "#2ca02c"),
        ("text_to_image_R@10", "#ff7f0e"),
    ];
    let mut recall: Vec<Series> = keys
        .iter()
        .map(|(k, c)| Series {
            name: format!("val {k}"),
            color: c,
            points: vec![],
        })
        .collect();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(step) = v.get("step").and_then(|s| s.as_f64()) else {
            continue;
        };
        if let Some(l) = v.get("loss").and_then(|l| l.as_f64()) {
            loss.points.push((step, l));
        }
        if let Some(val) = v.get("val") {
            for (s, (k, _)) in recall.iter_mut().zip(keys) {
                if let Some(r) = val.get(k).and_then(|r| r.as_f64()) {
                    s.points.push((step, r));
                }
            }
        }
    }
    let mut svg = String::from(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="880" height="290" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>"#,
    );
    panel(&mut svg, 0.0, "training loss", std::slice::from_ref(&loss));
    recall.retain(|s| !s.points.is_empty());
    panel(&mut svg, 440.0, "validation recall", &recall);
    svg.push_str("</svg>\n");
    std::fs::write(out, svg).map_err(io("cannot write", out))
}
