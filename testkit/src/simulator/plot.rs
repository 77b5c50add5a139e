//! A trace's timelines as one PNG: total lag (top) and replicas (bottom) over time, one line per
//! run. Text is drawn with a font embedded in the binary, so no system fonts are needed.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::Outcome;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("the embedded font does not load")]
    Font,
    #[error("drawing {path}: {message}")]
    Draw { path: String, message: String },
}

const FONT: &str = "sans-serif";
const COLORS: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];

fn register_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT).is_ok()
    });
    if registered {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

/// Draws `series` (name, run) into a PNG at `path`, titled `title`.
pub fn draw_timelines(path: &Path, title: &str, series: &[(&str, &Outcome)]) -> Result<(), PlotError> {
    register_font()?;
    let error = |message: String| PlotError::Draw { path: path.display().to_string(), message };
    let root = BitMapBackend::new(path, (1400, 900)).into_drawing_area();
    draw(&root, title, series).map_err(|e| error(e.to_string()))?;
    root.present().map_err(|e| error(e.to_string()))
}

type DrawResult = Result<(), DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>>;

fn draw(root: &DrawingArea<BitMapBackend<'_>, Shift>, title: &str, series: &[(&str, &Outcome)]) -> DrawResult {
    root.fill(&WHITE)?;
    let root = root.titled(title, (FONT, 24))?;
    let (top, bottom) = root.split_vertically(540);
    let seconds = series.iter().map(|(_, o)| o.timeline.len()).max().unwrap_or(0).max(1) as f64;
    let max_lag = series.iter().flat_map(|(_, o)| o.timeline.iter().map(|s| s.lag)).fold(1.0, f64::max);
    let max_replicas = series.iter().flat_map(|(_, o)| o.timeline.iter().map(|s| s.replicas)).max().unwrap_or(1).max(1);
    // The first series is drawn widest, so lines on top of each other stay visible.
    let width = |i: usize| 1 + 2 * (series.len() - i);

    let mut lag = ChartBuilder::on(&top)
        .margin(12)
        .caption("total lag (records)", (FONT, 18))
        .x_label_area_size(36)
        .y_label_area_size(90)
        .build_cartesian_2d(0.0..seconds, 0.0..max_lag * 1.05)?;
    lag.configure_mesh()
        .x_desc("seconds")
        .label_style((FONT, 14))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (i, (name, outcome)) in series.iter().enumerate() {
        let style = COLORS[i % COLORS.len()].stroke_width(width(i) as u32);
        let points = outcome.timeline.iter().enumerate().map(|(s, second)| (s as f64, second.lag));
        lag.draw_series(LineSeries::new(points, style))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
    }
    lag.configure_series_labels()
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;

    let mut replicas = ChartBuilder::on(&bottom)
        .margin(12)
        .caption("replicas", (FONT, 18))
        .x_label_area_size(36)
        .y_label_area_size(90)
        .build_cartesian_2d(0.0..seconds, 0.0..f64::from(max_replicas) + 1.0)?;
    replicas
        .configure_mesh()
        .x_desc("seconds")
        .label_style((FONT, 14))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (i, (_, outcome)) in series.iter().enumerate() {
        let style = COLORS[i % COLORS.len()].stroke_width(width(i) as u32);
        let steps = outcome.timeline.iter().enumerate().flat_map(|(s, second)| {
            let r = f64::from(second.replicas);
            [(s as f64, r), (s as f64 + 1.0, r)]
        });
        replicas.draw_series(LineSeries::new(steps, style))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::Second;

    #[test]
    fn draws_a_png_with_text_and_no_system_fonts() {
        let run = |replicas: i32| Outcome {
            timeline: (0..100).map(|s| Second { lag: f64::from(s * replicas), replicas }).collect(),
            ..Outcome::default()
        };
        let (a, b) = (run(1), run(3));
        let path = std::env::temp_dir().join(format!("streamjob-plot-{}.png", std::process::id()));
        let drawn = draw_timelines(&path, "test: lag and replicas", &[("a", &a), ("b", &b)]);
        let bytes = std::fs::read(&path);
        let _ = std::fs::remove_file(&path);
        assert!(drawn.is_ok(), "{drawn:?}");
        assert!(bytes.is_ok_and(|b| b.starts_with(b"\x89PNG")));
    }
}
