//! A labelled 2-D scatter plot as PNG, readable on its own: a title, one colour per class and
//! a legend that names the classes.

use std::io::Write;
use std::path::Path;

use image::{Rgb, RgbImage};

use crate::font;
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

const WIDTH: u32 = 800;
const HEIGHT: u32 = 600;
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([40, 40, 40]);
const FRAME: Rgb<u8> = Rgb([120, 120, 120]);
const DOT_RADIUS: i64 = 3;
const LEGEND_ROW: u32 = 14;
/// Longest class name shown in the legend; longer names are cut with `...`.
const LEGEND_CHARS: usize = 24;

/// The colour of class `id`.
pub fn class_color(id: usize) -> [u8; 3] {
    PALETTE[id % PALETTE.len()]
}

/// Draws `points` (coloured by `labels`, which index `class_names`) with a title and a legend
/// into a `800 × 600` image.
///
/// The axes are scaled to the data with a small margin (equal ranges are not enforced: the
/// plot is for seeing clusters, not reading distances). Points are drawn in input order.
pub fn render_scatter(
    points: &[[f64; 2]],
    labels: &[usize],
    class_names: &[String],
    title: &str,
) -> Result<RgbImage, ProbeError> {
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

    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, WHITE);

    // Legend column on the right, sized to the longest (shortened) name.
    let names: Vec<String> = class_names.iter().map(|n| shorten(n)).collect();
    let name_px = names
        .iter()
        .map(|n| font::text_width(n, 1))
        .max()
        .unwrap_or(0);
    let legend_w = 10 + 10 + 6 + name_px + 10;
    let (top, bottom, left) = (40u32, HEIGHT - 30, 30u32);
    let right = WIDTH - legend_w.min(WIDTH / 3) - 10;

    // Title, centred over the plot area, shortened to fit at double size.
    let max_title = ((right - left) / (font::ADVANCE * 2)) as usize;
    let title = shorten_to(title, max_title);
    let tx = left + (right - left).saturating_sub(font::text_width(&title, 2)) / 2;
    draw_text(&mut img, &title, tx as i64, 12, 2, INK);
    draw_text(
        &mut img,
        "PC1",
        right as i64 - font::text_width("PC1", 1) as i64,
        bottom as i64 + 8,
        1,
        INK,
    );
    draw_text(&mut img, "PC2", 4, top as i64, 1, INK);

    // Frame.
    for x in left..=right {
        img.put_pixel(x, top, FRAME);
        img.put_pixel(x, bottom, FRAME);
    }
    for y in top..=bottom {
        img.put_pixel(left, y, FRAME);
        img.put_pixel(right, y, FRAME);
    }

    // Data → pixels, with a margin so discs stay inside the frame.
    let bounds = |k: usize| {
        let lo = points.iter().map(|p| p[k]).fold(f64::INFINITY, f64::min);
        let hi = points
            .iter()
            .map(|p| p[k])
            .fold(f64::NEG_INFINITY, f64::max);
        (lo, hi)
    };
    let inset = (DOT_RADIUS + 4) as f64;
    let map = |v: f64, (lo, hi): (f64, f64), a: f64, b: f64| {
        if hi > lo {
            a + (v - lo) / (hi - lo) * (b - a)
        } else {
            (a + b) / 2.0
        }
    };
    let (bx, by) = (bounds(0), bounds(1));
    for (p, &c) in points.iter().zip(labels) {
        let px = map(p[0], bx, left as f64 + inset, right as f64 - inset);
        // Screen y grows downwards; data y grows upwards.
        let py = map(p[1], by, bottom as f64 - inset, top as f64 + inset);
        disc(
            &mut img,
            px.round() as i64,
            py.round() as i64,
            Rgb(class_color(c)),
        );
    }

    // Legend: a swatch and a name per class, top-aligned; "+N more" when they do not fit.
    let lx = right + 12;
    let rows_fit = ((HEIGHT - top) / LEGEND_ROW) as usize;
    let shown = if names.len() > rows_fit {
        rows_fit.saturating_sub(1)
    } else {
        names.len()
    };
    for (i, name) in names.iter().take(shown).enumerate() {
        let y = top + i as u32 * LEGEND_ROW;
        let color = Rgb(class_color(i));
        for dy in 0..9 {
            for dx in 0..9 {
                put(&mut img, (lx + dx) as i64, (y + dy) as i64, color);
            }
        }
        draw_text(&mut img, name, (lx + 15) as i64, y as i64 + 1, 1, INK);
    }
    if shown < names.len() {
        let more = format!("+{} more", names.len() - shown);
        let y = top + shown as u32 * LEGEND_ROW;
        draw_text(&mut img, &more, lx as i64, y as i64 + 1, 1, INK);
    }
    Ok(img)
}

/// Renders like [`render_scatter`] and writes the PNG to `path` through a temporary file in
/// the same folder, renamed over `path` once complete, so an interrupted run never leaves a
/// half-written image behind (the temporary file removes itself on any error).
pub fn write_scatter_png(
    path: &Path,
    points: &[[f64; 2]],
    labels: &[usize],
    class_names: &[String],
    title: &str,
) -> Result<(), ProbeError> {
    let img = render_scatter(points, labels, class_names, title)?;
    let io_err = |source| ProbeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err)?;
    let mut w = std::io::BufWriter::new(tmp.as_file_mut());
    img.write_to(&mut w, image::ImageFormat::Png)
        .map_err(|source| ProbeError::Image {
            path: path.to_path_buf(),
            source,
        })?;
    w.flush().map_err(io_err)?;
    drop(w);
    tmp.as_file().sync_all().map_err(io_err)?;
    tmp.persist(path).map_err(|e| io_err(e.error))?;
    Ok(())
}

fn shorten(name: &str) -> String {
    shorten_to(name, LEGEND_CHARS)
}

fn shorten_to(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let keep = max.saturating_sub(3);
    text.chars()
        .take(keep)
        .chain("...".chars())
        .take(max)
        .collect()
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn disc(img: &mut RgbImage, cx: i64, cy: i64, c: Rgb<u8>) {
    let r = DOT_RADIUS;
    for dy in -r..=r {
        for dx in -r..=r {
            // r² + r keeps the disc round rather than diamond-like at this small size.
            if dx * dx + dy * dy <= r * r + r {
                put(img, cx + dx, cy + dy, c);
            }
        }
    }
}

fn draw_text(img: &mut RgbImage, text: &str, x: i64, y: i64, scale: u32, c: Rgb<u8>) {
    font::for_each_pixel(text, x, y, scale, |px, py| put(img, px, py, c));
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
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        let has = |c: [u8; 3]| img.pixels().any(|p| p.0 == c);
        for c in 0..3 {
            assert!(has(class_color(c)), "class {c} colour missing");
        }
        assert!(!has(class_color(3)), "a fourth class colour appeared");
        assert!(has(INK.0), "no text");
        // The corners stay white; no temporary file is left behind.
        assert_eq!(img.get_pixel(0, HEIGHT - 1).0, WHITE.0);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn classes_sit_where_their_points_are() {
        // Class 0 at the left, class 1 at the right: their colours split by x.
        let points = [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]];
        let img = render_scatter(&points, &[0, 0, 1, 1], &names(2), "").unwrap();
        let xs = |c: [u8; 3]| -> Vec<u32> {
            img.enumerate_pixels()
                .filter(|(_, y, p)| *y > 45 && p.0 == c)
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
        let img = render_scatter(&points, &labels, &many, &"t".repeat(500)).unwrap();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        assert_eq!(
            shorten("abcdefghijklmnopqrstuvwxyz0123"),
            "abcdefghijklmnopqrstu..."
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let n = names(2);
        assert!(matches!(
            render_scatter(&[], &[], &n, ""),
            Err(ProbeError::Empty(_))
        ));
        assert!(render_scatter(&[[0.0, 0.0]], &[0, 1], &n, "").is_err());
        assert!(render_scatter(&[[0.0, 0.0]], &[2], &n, "").is_err());
        let err = render_scatter(&[[0.0, 0.0], [1.0, f64::NAN]], &[0, 1], &n, "").unwrap_err();
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
