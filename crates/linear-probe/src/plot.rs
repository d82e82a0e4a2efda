//! A labelled 2-D scatter plot as PNG, readable on its own: a title, one colour per class and
//! a legend that names the classes (drawn by [`clip_plot`]).

use std::path::Path;

use clip_plot::{Chart, Figure, Mark, Series};

use crate::ProbeError;

/// Class colours, in class-id order: sixteen hues and shades chosen to stay apart from each
/// other and from the white background. Class `i` gets `PALETTE[i % 16]`, so colours repeat
/// only beyond sixteen classes.
pub const PALETTE: [[u8; 3]; 16] = [
    [0, 110, 200],   // blue
    [235, 120, 20],  // orange
    [40, 160, 60],   // green
    [220, 30, 50],   // red
    [140, 60, 190],  // purple
    [130, 80, 40],   // brown
    [230, 90, 190],  // pink
    [110, 110, 110], // grey
    [160, 160, 0],   // olive
    [0, 180, 190],   // cyan
    [0, 20, 120],    // navy
    [250, 185, 0],   // amber
    [0, 110, 100],   // teal
    [120, 0, 30],    // maroon
    [120, 200, 120], // light green
    [0, 0, 0],       // black
];

const SIZE: (u32, u32) = (800, 600);

/// The colour of class `id`.
pub fn class_color(id: usize) -> [u8; 3] {
    PALETTE[id % PALETTE.len()]
}

/// Draws `points` (coloured by `labels`, which index `class_names`) with a title and a legend
/// as a `800 × 600` PNG at `path`, written whole or not at all.
///
/// The axes are scaled to the data with a small margin (equal ranges are not enforced: the
/// plot is for seeing clusters, not reading distances). Classes are drawn in class-id order.
pub fn write_scatter_png(
    path: &Path,
    points: &[[f64; 2]],
    labels: &[usize],
    class_names: &[String],
    title: &str,
) -> Result<(), ProbeError> {
    Ok(scatter(points, labels, class_names, title)?.write_png(path)?)
}

/// Checks the inputs and describes the plot: one series per class, in class-id order.
fn scatter(
    points: &[[f64; 2]],
    labels: &[usize],
    class_names: &[String],
    title: &str,
) -> Result<Figure, ProbeError> {
    if points.is_empty() {
        return Err(ProbeError::Empty("no points to plot".into()));
    }
    if labels.len() != points.len() {
        return Err(ProbeError::LengthMismatch {
            what: "plot labels",
            expected: points.len(),
            got: labels.len(),
        });
    }
    if let Some((i, &c)) = labels
        .iter()
        .enumerate()
        .find(|(_, &c)| c >= class_names.len())
    {
        return Err(ProbeError::InvalidParameter(format!(
            "point {i} has class {c}, but only {} class names were given",
            class_names.len()
        )));
    }
    if let Some((i, p)) = points
        .iter()
        .enumerate()
        .find(|(_, p)| !(p[0].is_finite() && p[1].is_finite()))
    {
        return Err(ProbeError::NonFinite {
            row: i,
            col: usize::from(p[0].is_finite()),
            value: if p[0].is_finite() { p[1] } else { p[0] },
        });
    }
    let mut series: Vec<Series> = class_names
        .iter()
        .enumerate()
        .map(|(c, name)| Series {
            name: name.clone(),
            color: class_color(c),
            points: vec![],
        })
        .collect();
    for (p, &c) in points.iter().zip(labels) {
        series[c].points.push((p[0], p[1]));
    }
    Ok(Figure {
        size: SIZE,
        charts: vec![Chart {
            title: title.to_string(),
            x_label: "PC1".into(),
            y_label: "PC2".into(),
            mark: Mark::Dots,
            series,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("class {i}")).collect()
    }

    #[test]
    fn png_decodes_with_class_colours_and_a_legend() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scatter.png");
        let points: Vec<[f64; 2]> = (0..60)
            .map(|i| [(i % 3) as f64 * 10.0 + (i as f64).sin(), (i as f64).cos()])
            .collect();
        let labels: Vec<usize> = (0..60).map(|i| i % 3).collect();
        write_scatter_png(&path, &points, &labels, &names(3), "test plot").unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), SIZE);
        let has = |c: [u8; 3]| img.pixels().any(|p| p.0 == c);
        for c in 0..3 {
            assert!(has(class_color(c)), "class {c} colour missing");
        }
        assert!(!has(class_color(3)), "a fourth class colour appeared");
        // Dark pixels above the axes are the title.
        let title_ink = img
            .enumerate_pixels()
            .filter(|(_, y, p)| *y < 30 && p.0.iter().all(|&c| c < 100))
            .count();
        assert!(title_ink > 50, "{title_ink} title pixels");
        // The corners stay white; no temporary file is left behind.
        assert_eq!(img.get_pixel(0, SIZE.1 - 1).0, [255, 255, 255]);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn classes_sit_where_their_points_are() {
        // Class 0 at the left, class 1 at the right: their colours split by x.
        let points = [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]];
        let img = scatter(&points, &[0, 0, 1, 1], &names(2), "").unwrap();
        let img = img.render_rgb().unwrap();
        let xs = |c: [u8; 3]| -> Vec<u32> {
            img.enumerate_pixels()
                .filter(|(_, _, p)| p.0 == c)
                .map(|(x, _, _)| x)
                .collect()
        };
        let (a, b) = (xs(class_color(0)), xs(class_color(1)));
        // Legend swatches are far right; compare the leftmost pixels of each colour.
        assert!(a.iter().min().unwrap() + 100 < *b.iter().min().unwrap());
    }

    #[test]
    fn many_classes_and_long_names_fit() {
        let many: Vec<String> = (0..60)
            .map(|i| format!("a rather long class name {i}"))
            .collect();
        let points: Vec<[f64; 2]> = (0..60).map(|i| [i as f64, 0.0]).collect();
        let labels: Vec<usize> = (0..60).collect();
        let plot = scatter(&points, &labels, &many, &"t".repeat(500)).unwrap();
        let img = plot.render_rgb().unwrap();
        assert_eq!(img.dimensions(), SIZE);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let n = names(2);
        assert!(matches!(
            scatter(&[], &[], &n, ""),
            Err(ProbeError::Empty(_))
        ));
        assert!(scatter(&[[0.0, 0.0]], &[0, 1], &n, "").is_err());
        assert!(scatter(&[[0.0, 0.0]], &[2], &n, "").is_err());
        let err = scatter(&[[0.0, 0.0], [1.0, f64::NAN]], &[0, 1], &n, "").unwrap_err();
        assert!(
            matches!(err, ProbeError::NonFinite { row: 1, col: 1, .. }),
            "{err}"
        );
        // A path in a missing folder is an I/O error naming it, and leaves nothing behind.
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("no/such/dir/x.png");
        let err = write_scatter_png(&bad, &[[0.0, 0.0]], &[0], &n, "").unwrap_err();
        assert!(err.to_string().contains("x.png"), "{err}");
    }
}
