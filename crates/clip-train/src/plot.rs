//! An SVG of the training loss and validation recall, written at the end of a run so a user
//! can see the curves without a notebook.

use std::path::Path;

use clip_plot::{Chart, Figure, Mark, Series};

use crate::error::io_err;
use crate::Result;

/// The validation metrics plotted, with their legend names and colours.
const RECALL: [(&str, &str, [u8; 3]); 3] = [
    ("text_to_image_R@1", "text-to-image R@1", [214, 39, 40]),
    ("image_to_text_R@1", "image-to-text R@1", [44, 160, 44]),
    ("text_to_image_R@10", "text-to-image R@10", [255, 127, 14]),
];

/// Reads `metrics.jsonl` and writes a two-panel SVG: training loss and validation recall.
/// Lines that are not JSON, or lack a step, are skipped.
pub fn write_plot(metrics: &Path, out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics).map_err(io_err("cannot read", metrics))?;
    // Unnamed: the panel title says what the one curve is.
    let mut loss = Series {
        name: String::new(),
        color: [31, 119, 180],
        points: vec![],
    };
    let mut recall: Vec<Series> = RECALL
        .iter()
        .map(|&(_, name, color)| Series {
            name: name.into(),
            color,
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
            for (s, (key, ..)) in recall.iter_mut().zip(RECALL) {
                if let Some(r) = val.get(key).and_then(|r| r.as_f64()) {
                    s.points.push((step, r));
                }
            }
        }
    }
    recall.retain(|s| !s.points.is_empty());
    let chart = |title: &str, y_label: &str, series| Chart {
        title: title.into(),
        x_label: "step".into(),
        y_label: y_label.into(),
        mark: Mark::Line,
        series,
    };
    Figure {
        size: (960, 320),
        charts: vec![
            chart("training loss", "loss", vec![loss]),
            chart("validation recall", "recall", recall),
        ],
    }
    .write_svg(out)
    .map_err(|e| io_err("cannot plot", out)(std::io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `lines` as `metrics.jsonl`, plots it and returns the points of each curve (the
    /// 2-pixel polylines: axes and ticks are 1 pixel wide) and the SVG.
    fn plot(lines: &[String]) -> (Vec<usize>, String) {
        let dir = tempfile::tempdir().unwrap();
        let (metrics, out) = (dir.path().join("m.jsonl"), dir.path().join("m.svg"));
        std::fs::write(&metrics, lines.join("\n")).unwrap();
        write_plot(&metrics, &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        let curves = svg
            .split("<polyline")
            .filter(|p| p.contains("stroke-width=\"2\""))
            .map(|p| {
                let pts = p.split("points=\"").nth(1).unwrap();
                pts[..pts.find('"').unwrap()].split_whitespace().count()
            })
            .collect();
        (curves, svg)
    }

    #[test]
    fn loss_and_each_logged_recall_become_one_curve() {
        let mut lines: Vec<String> = (1..=5)
            .map(|s| format!(r#"{{"step": {s}, "loss": {}}}"#, 5.0 - s as f64))
            .collect();
        let (curves, svg) = plot(&lines);
        assert_eq!(curves, [5], "{svg}");
        assert!(svg.contains("training loss") && svg.contains("no data"));
        for s in [2, 4] {
            lines.push(format!(
                r#"{{"step": {s}, "val": {{"text_to_image_R@1": 0.{s}, "image_to_text_R@1": 0.3}}}}"#
            ));
        }
        lines.push("not json".into());
        let (curves, svg) = plot(&lines);
        assert_eq!(curves, [5, 2, 2], "{svg}");
        assert!(svg.contains("image-to-text R@1") && !svg.contains("R@10"));
        assert!(write_plot(Path::new("missing.jsonl"), Path::new("m.svg")).is_err());
    }
}
