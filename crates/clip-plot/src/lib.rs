//! The workspace's charts, described once ([`Figure`]) and drawn by one `plotters` code path
//! into either a PNG ([`Figure::write_png`]) or an SVG ([`Figure::write_svg`]).
//!
//! Text is laid out (and, for PNG, rasterised) with a bundled ASCII subset of DejaVu Sans, so
//! charts look the same on machines without system fonts; characters outside printable ASCII
//! are drawn as the font's missing-glyph box.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::RgbImage;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Font family name the bundled font is registered under (and named in SVG text).
const FONT: &str = "sans-serif";
const TITLE_PX: u32 = 20;
const LABEL_PX: u32 = 13;
/// Radius of a scatter dot, in pixels.
const DOT_RADIUS: i32 = 3;
/// Longest legend entry; longer names are cut with `...`.
const LEGEND_CHARS: usize = 24;
const GRID: RGBColor = RGBColor(225, 225, 225);

/// Why a chart could not be drawn or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// Writing the file failed.
    #[error("cannot write {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Encoding the PNG failed.
    #[error("cannot encode {path}")]
    Png {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: image::ImageError,
    },
    /// The drawing library failed.
    #[error("cannot draw the chart: {0}")]
    Draw(String),
}

/// How a chart shows its series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// A dot per point (scatter plots).
    Dots,
    /// Points joined in order (curves over time).
    Line,
}

/// One named, coloured set of points. Non-finite points are skipped when drawing.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend entry; an empty name leaves the series out of the legend.
    pub name: String,
    /// RGB colour.
    pub color: [u8; 3],
    /// `(x, y)` in data units.
    pub points: Vec<(f64, f64)>,
}

/// A titled pair of axes with its series and, when any series is named, a legend to the right.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// Shown above the axes, cut with `...` when it is wider than the chart.
    pub title: String,
    /// Horizontal axis description.
    pub x_label: String,
    /// Vertical axis description.
    pub y_label: String,
    /// Dots or lines.
    pub mark: Mark,
    /// Drawn in order, so later series lie on top.
    pub series: Vec<Series>,
}

/// Charts side by side on a white canvas of `size` pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// `(width, height)` in pixels.
    pub size: (u32, u32),
    /// Left to right, each given an equal share of the width.
    pub charts: Vec<Chart>,
}

impl Figure {
    /// Draws the figure into an RGB image.
    pub fn render_rgb(&self) -> Result<RgbImage, PlotError> {
        let (w, h) = self.size;
        let mut buf = vec![0u8; w as usize * h as usize * 3];
        draw(
            BitMapBackend::with_buffer(&mut buf, self.size).into_drawing_area(),
            self,
        )?;
        Ok(RgbImage::from_raw(w, h, buf).expect("the buffer has w × h RGB pixels"))
    }

    /// Draws the figure as an SVG document.
    pub fn render_svg(&self) -> Result<String, PlotError> {
        let mut svg = String::new();
        draw(
            SVGBackend::with_string(&mut svg, self.size).into_drawing_area(),
            self,
        )?;
        svg.push('\n');
        Ok(svg)
    }

    /// Writes the figure as a PNG to `path`, atomically (see [`write_atomically`]).
    pub fn write_png(&self, path: &Path) -> Result<(), PlotError> {
        let img = self.render_rgb()?;
        write_atomically(path, |w| {
            img.write_to(w, image::ImageFormat::Png)
                .map_err(|source| PlotError::Png {
                    path: path.to_path_buf(),
                    source,
                })
        })
    }

    /// Writes the figure as an SVG to `path`, atomically (see [`write_atomically`]).
    pub fn write_svg(&self, path: &Path) -> Result<(), PlotError> {
        let svg = self.render_svg()?;
        write_atomically(path, |w| {
            w.write_all(svg.as_bytes()).map_err(|source| PlotError::Io {
                path: path.to_path_buf(),
                source,
            })
        })
    }
}

/// Writes through a temporary file in the same folder, renamed over `path` once complete, so
/// an interrupted run never leaves a half-written chart behind (the temporary file removes
/// itself on any error).
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> Result<(), PlotError>,
) -> Result<(), PlotError> {
    let io_err = |source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err)?;
    let mut w = std::io::BufWriter::new(tmp.as_file_mut());
    write(&mut w)?;
    w.flush().map_err(io_err)?;
    drop(w);
    tmp.as_file().sync_all().map_err(io_err)?;
    tmp.persist(path).map_err(|e| io_err(e.error))?;
    Ok(())
}

/// Registers the bundled font once; `plotters` needs it to measure text for either backend.
fn register_font() -> Result<(), PlotError> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        let bytes = include_bytes!("../assets/DejaVuSans-ASCII.ttf");
        plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok()
    });
    ok.then_some(())
        .ok_or_else(|| PlotError::Draw("the bundled font does not load".into()))
}

/// The one drawing path both backends share.
fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, fig: &Figure) -> Result<(), PlotError> {
    register_font()?;
    let run = || -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let n = fig.charts.len().max(1);
        for (area, chart) in root.split_evenly((1, n)).iter().zip(&fig.charts) {
            draw_chart(area, chart)?;
        }
        root.present()
    };
    run().map_err(|e| PlotError::Draw(e.to_string()))
}

fn draw_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    chart: &Chart,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let title_font = (FONT, TITLE_PX).into_font();
    let label_font: TextStyle = (FONT, LABEL_PX).into_font().color(&BLACK);
    let (area_w, area_h) = area.dim_in_pixel();

    let finite = |s: &Series| {
        s.points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect::<Vec<_>>()
    };
    let all: Vec<(f64, f64)> = chart.series.iter().flat_map(finite).collect();
    let (Some(xs), Some(ys)) = (
        padded_range(all.iter().map(|p| p.0)),
        padded_range(all.iter().map(|p| p.1)),
    ) else {
        let title = fit_text(
            area,
            &chart.title,
            &title_font.clone().into(),
            area_w.saturating_sub(20),
        )?;
        let inner = area.titled(&title, title_font)?;
        let centre = (area_w as i32 / 2, area_h as i32 / 2 - 20);
        let style = label_font.pos(Pos::new(HPos::Center, VPos::Center));
        return inner.draw(&Text::new("no data", centre, style));
    };

    let legend: Vec<(String, RGBColor)> = chart
        .series
        .iter()
        .filter(|s| !s.name.is_empty())
        .map(|s| (shorten(&s.name, LEGEND_CHARS), rgb(s.color)))
        .collect();
    let mut legend_w = 0;
    for (name, _) in &legend {
        legend_w = legend_w.max(area.estimate_text_size(name, &label_font)?.0 + 30);
    }
    // The plot keeps at least two thirds of the width however long the names.
    let legend_w = legend_w.min(area_w / 3);
    let (plot_area, legend_area) = area.split_horizontally(area_w - legend_w);
    let title = fit_text(
        area,
        &chart.title,
        &title_font.clone().into(),
        (area_w - legend_w).saturating_sub(40),
    )?;
    let (x_tick, y_tick) = (tick_format(xs.1 - xs.0), tick_format(ys.1 - ys.0));

    let mut ctx = ChartBuilder::on(&plot_area)
        .caption(&title, title_font)
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(xs.0..xs.1, ys.0..ys.1)?;
    ctx.configure_mesh()
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .x_label_formatter(&x_tick)
        .y_label_formatter(&y_tick)
        .label_style(label_font.clone())
        .draw()?;
    for s in &chart.series {
        let points = finite(s);
        let color = rgb(s.color);
        match chart.mark {
            Mark::Dots => ctx.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, DOT_RADIUS, color.filled())),
            )?,
            Mark::Line => ctx.draw_series(LineSeries::new(points, color.stroke_width(2)))?,
        };
    }

    // Legend rows from the top of the plot down; past its bottom, the last row says how many
    // entries are left out.
    let (_, plot_rows) = ctx.plotting_area().get_pixel_range();
    let top = plot_rows.start - legend_area.get_base_pixel().1;
    let row = (LABEL_PX as f64 * 1.25).round() as i32;
    let rows = ((plot_rows.end - plot_rows.start) / row).max(1) as usize;
    let shown = if legend.len() > rows {
        rows - 1
    } else {
        legend.len()
    };
    for (i, (name, color)) in legend.iter().take(shown).enumerate() {
        let y = top + i as i32 * row;
        legend_area.draw(&Rectangle::new([(0, y + 1), (9, y + 10)], color.filled()))?;
        legend_area.draw(&Text::new(name.as_str(), (15, y), label_font.clone()))?;
    }
    if shown < legend.len() {
        let more = format!("+{} more", legend.len() - shown);
        let y = top + shown as i32 * row;
        legend_area.draw(&Text::new(more, (0, y), label_font))?;
    }
    Ok(())
}

fn rgb([r, g, b]: [u8; 3]) -> RGBColor {
    RGBColor(r, g, b)
}

/// The smallest and largest of `values`, widened by 5% on each side so dots stay inside the
/// frame (and to a unit range when all values are equal); `None` when there are none.
fn padded_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return None;
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { 0.5 };
    Some((lo - pad, hi + pad))
}

/// Tick labels with as many decimals as a tenth of `span` needs, and no `-0`.
fn tick_format(span: f64) -> impl Fn(&f64) -> String {
    let decimals = (-(span / 10.0).log10().floor()).max(0.0) as usize;
    move |v| {
        let s = format!("{v:.decimals$}");
        match s.strip_prefix('-') {
            Some(zero) if zero.chars().all(|c| c == '0' || c == '.') => zero.to_string(),
            _ => s,
        }
    }
}

/// `text` cut with `...` to at most `max` pixels wide in `style`.
fn fit_text<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    text: &str,
    style: &TextStyle,
    max: u32,
) -> Result<String, DrawingAreaErrorKind<DB::ErrorType>> {
    let mut keep = text.chars().count();
    let mut out = text.to_string();
    while keep > 0 && area.estimate_text_size(&out, style)?.0 > max {
        keep -= 1;
        out = shorten(text, keep);
    }
    Ok(out)
}

/// `text` cut to `max` characters, the last three of them `...`, when it is longer.
fn shorten(text: &str, max: usize) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    const RED: [u8; 3] = [220, 30, 50];
    const BLUE: [u8; 3] = [0, 110, 200];

    fn figure(mark: Mark, series: Vec<Series>) -> Figure {
        Figure {
            size: (400, 300),
            charts: vec![Chart {
                title: "a title".into(),
                x_label: "x".into(),
                y_label: "y".into(),
                mark,
                series,
            }],
        }
    }

    fn series(name: &str, color: [u8; 3], points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            color,
            points,
        }
    }

    /// Pixels of exactly `color`, as `(x, y)`.
    fn pixels_of(img: &RgbImage, color: [u8; 3]) -> Vec<(u32, u32)> {
        img.enumerate_pixels()
            .filter(|(_, _, p)| p.0 == color)
            .map(|(x, y, _)| (x, y))
            .collect()
    }

    #[test]
    fn png_has_the_size_the_dots_where_the_data_is_and_text() {
        let fig = figure(
            Mark::Dots,
            vec![
                series("left", RED, vec![(0.0, 0.0), (0.0, 1.0)]),
                series("right", BLUE, vec![(1.0, 0.0), (1.0, 1.0)]),
            ],
        );
        let img = fig.render_rgb().unwrap();
        assert_eq!(img.dimensions(), (400, 300));
        // Legend swatches sit right of the plot: compare each colour's leftmost pixel.
        let min_x = |c| pixels_of(&img, c).iter().map(|p| p.0).min().unwrap();
        assert!(
            min_x(RED) + 100 < min_x(BLUE),
            "{} {}",
            min_x(RED),
            min_x(BLUE)
        );
        // Dark pixels in the title band are the title's text (the font was found and drawn).
        let title_ink = img
            .enumerate_pixels()
            .filter(|(_, y, p)| *y < 25 && p.0.iter().all(|&c| c < 100))
            .count();
        assert!(title_ink > 30, "{title_ink} title pixels");
        assert_eq!(img.get_pixel(0, 299).0, [255, 255, 255]);
    }

    #[test]
    fn svg_has_one_polyline_per_series_with_every_finite_point() {
        let fig = figure(
            Mark::Line,
            vec![
                series("a", RED, (0..7).map(|i| (i as f64, i as f64)).collect()),
                series("b", BLUE, vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0)]),
            ],
        );
        let svg = fig.render_svg().unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("a title"), "{svg}");
        // Series are the 2-pixel polylines (axes and ticks are 1 pixel wide).
        let counts: Vec<usize> = svg
            .split("<polyline")
            .skip(1)
            .filter(|p| p.contains("stroke-width=\"2\""))
            .map(|p| {
                let pts = p.split("points=\"").nth(1).unwrap();
                pts[..pts.find('"').unwrap()].split_whitespace().count()
            })
            .collect();
        assert_eq!(counts, [7, 2]);
    }

    #[test]
    fn empty_charts_say_so_and_many_series_fit() {
        let fig = figure(Mark::Line, vec![series("a", RED, vec![])]);
        assert!(fig.render_svg().unwrap().contains("no data"));
        let many = (0..60)
            .map(|i| {
                series(
                    &format!("a rather long series name {i}"),
                    RED,
                    vec![(i as f64, 0.0)],
                )
            })
            .collect();
        let mut fig = figure(Mark::Dots, many);
        fig.charts[0].title = "t".repeat(500);
        let svg = fig.render_svg().unwrap();
        assert!(
            svg.contains(" more\n</text>"),
            "no overflow row in the legend"
        );
        assert!(svg.contains("ttt...\n</text>") && !svg.contains(&"t".repeat(150)));
        assert_eq!(
            shorten("abcdefghijklmnopqrstuvwxyz0123", 24),
            "abcdefghijklmnopqrstu..."
        );
        let tick = tick_format(2.2);
        assert_eq!(
            [tick(&-0.01), tick(&0.2), tick(&-1.25)],
            ["0.0", "0.2", "-1.2"]
        );
    }

    #[test]
    fn files_are_written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let fig = figure(Mark::Dots, vec![series("a", RED, vec![(0.0, 0.0)])]);
        fig.write_png(&dir.path().join("a.png")).unwrap();
        fig.write_svg(&dir.path().join("a.svg")).unwrap();
        let png = image::open(dir.path().join("a.png")).unwrap().to_rgb8();
        assert_eq!(png, fig.render_rgb().unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        let bad = dir.path().join("no/such/dir/x.png");
        let err = fig.write_png(&bad).unwrap_err();
        assert!(err.to_string().contains("x.png"), "{err}");
    }
}
