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
    /// Drawing the chart or encoding the image failed.
    #[error("cannot render the chart: {0}")]
    Render(String),
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

    /// Writes the figure as a PNG to `path`, whole or not at all.
    pub fn write_png(&self, path: &Path) -> Result<(), PlotError> {
        let mut png = std::io::Cursor::new(Vec::new());
        (self
            .render_rgb()?
            .write_to(&mut png, image::ImageFormat::Png))
        .map_err(|e| PlotError::Render(e.to_string()))?;
        write_atomically(path, png.get_ref())
    }

    /// Writes the figure as an SVG to `path`, whole or not at all.
    pub fn write_svg(&self, path: &Path) -> Result<(), PlotError> {
        write_atomically(path, self.render_svg()?.as_bytes())
    }
}

/// Writes `path` whole or not at all through `atomic-write-file` (a temporary sibling, synced
/// and renamed), so an interrupted run never leaves a half-written chart behind.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), PlotError> {
    let write = || -> std::io::Result<()> {
        let mut file = atomic_write_file::AtomicWriteFile::open(path)?;
        file.write_all(bytes)?;
        file.commit()
    };
    write().map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Registers the bundled font once; `plotters` needs it to measure text for either backend.
fn register_font() -> Result<(), PlotError> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        let bytes = include_bytes!("../assets/DejaVuSans-ASCII.ttf");
        plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok()
    });
    ok.then_some(())
        .ok_or_else(|| PlotError::Render("the bundled font does not load".into()))
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
    run().map_err(|e| PlotError::Render(e.to_string()))
}

fn draw_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    chart: &Chart,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let title_font: TextStyle = (FONT, TITLE_PX).into_font().into();
    let label_font: TextStyle = (FONT, LABEL_PX).into_font().color(&BLACK);
    let area_w = area.dim_in_pixel().0;

    let finite = |s: &Series| {
        s.points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect::<Vec<_>>()
    };
    let all: Vec<(f64, f64)> = chart.series.iter().flat_map(finite).collect();
    let xs = padded_range(all.iter().map(|p| p.0));
    let ys = padded_range(all.iter().map(|p| p.1));

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
    // A title wider than the plot is cut in proportion to its excess width.
    let title_w = area.estimate_text_size(&chart.title, &title_font)?.0.max(1);
    let room = (area_w - legend_w).saturating_sub(40).min(title_w);
    let keep = chart.title.chars().count() * room as usize / title_w as usize;
    let title = shorten(&chart.title, keep);
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
    if all.is_empty() {
        let centre = label_font.pos(Pos::new(HPos::Center, VPos::Center));
        ctx.plotting_area()
            .draw(&Text::new("no data", (0.5, 0.5), centre))?;
    }
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

    let (_, plot_rows) = ctx.plotting_area().get_pixel_range();
    draw_legend(&legend_area, &legend, plot_rows, label_font)?;
    Ok(())
}

/// The legend beside the plot, whose rows span `plot_rows` (pixels): rows from the top down;
/// past the bottom, the last row says how many entries are left out.
fn draw_legend<DB: DrawingBackend>(
    legend_area: &DrawingArea<DB, Shift>,
    legend: &[(String, RGBColor)],
    plot_rows: std::ops::Range<i32>,
    label_font: TextStyle,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
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
/// frame (and to a unit range when all values are equal, or `0..1` when there are none).
fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    match hi - lo {
        span if span > 0.0 => (lo - span * 0.05, hi + span * 0.05),
        0.0 => (lo - 0.5, hi + 0.5),
        _ => (0.0, 1.0),
    }
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

    #[test]
    fn empty_charts_say_so_and_long_titles_and_legends_are_cut() {
        let series = |i: usize, points| Series {
            name: format!("a rather long series name {i}"),
            color: [0, 0, 0],
            points,
        };
        let mut chart = Chart {
            title: "t".repeat(500),
            x_label: "x".into(),
            y_label: "y".into(),
            mark: Mark::Dots,
            series: vec![series(0, vec![])],
        };
        let svg = |chart: &Chart| {
            let charts = vec![chart.clone()];
            Figure {
                size: (800, 600),
                charts,
            }
            .render_svg()
            .unwrap()
        };
        assert!(svg(&chart).contains("no data"));
        chart.series = (0..60).map(|i| series(i, vec![(i as f64, 0.0)])).collect();
        let svg = svg(&chart);
        assert!(!svg.contains("no data") && svg.contains(" more\n</text>"));
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
}
