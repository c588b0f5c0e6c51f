//! `chart.png`: receive throughput per payload size (msg/s on a log scale, and MB/s) and the
//! round-trip percentiles, NATS, ACMS and (when it ran) ACMS cross-hub side by side; bars are
//! medians, whiskers min–max.
//!
//! Drawn with plotters' bitmap backend. Text needs a TTF font loaded at run time (plotters'
//! `ab_glyph` feature, so no system fontconfig is involved); Debian's `fonts-dejavu-core` has
//! the default one.

use std::path::Path;

use anyhow::{Context, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::report::{Report, Stat, size_label};
use crate::results::{Results, System};

const WIDTH: u32 = 1800;
const HEIGHT: u32 = 680;
/// x units per group of bars: up to three bars of 6 with room on both sides.
const GROUP: i32 = 20;
const BAR: i32 = 6;

fn color(system: System) -> RGBColor {
    match system {
        System::Nats => RGBColor(39, 170, 225),
        System::Acms => RGBColor(230, 120, 30),
        System::CrossHub => RGBColor(90, 170, 90),
    }
}

/// One panel: groups of bars, one per system in [`System::ALL`]'s order.
struct Panel {
    title: String,
    y_desc: &'static str,
    /// Group label and the systems' figures.
    groups: Vec<(String, [Option<Stat>; 3])>,
    /// Plot log10 of the values (labelled with the values themselves).
    log: bool,
}

impl Panel {
    fn y(&self, value: f64) -> f64 {
        if self.log { value.max(1.0).log10() } else { value }
    }

    /// The y range: from the medians, so that one outlying round (a whisker, cut at the top)
    /// does not flatten every bar.
    fn y_range(&self) -> (f64, f64) {
        let stats = self.groups.iter().flat_map(|(_, stats)| stats.iter().flatten());
        let (lo, hi) =
            stats.fold((f64::MAX, 0.0_f64), |(lo, hi), s| (lo.min(s.min), hi.max(s.median)));
        if hi <= 0.0 {
            return (0.0, 1.0);
        }
        if self.log {
            ((self.y(lo) - 0.5).floor().max(0.0), self.y(hi) + 0.8)
        } else {
            (0.0, hi * 1.5)
        }
    }
}

/// Draws the chart of `results` (summarised in `report`) into `path` with the TTF font at `font`.
pub fn draw(results: &Results, report: &Report, path: &Path, font: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(font).with_context(|| {
        format!(
            "cannot read font {} (apt-get install fonts-dejavu-core, or --font)",
            font.display()
        )
    })?;
    register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
        .map_err(|_| anyhow!("{} is not a usable TTF font", font.display()))?;

    let pick = |section: &str, metric: &str| -> [Option<Stat>; 3] {
        report
            .rows
            .iter()
            .find(|r| r.section == section && r.metric == metric)
            .map_or([None; 3], |r| System::ALL.map(|system| r.stat(system)))
    };
    let sizes = &results.settings.sizes;
    let rtt_section = format!("rtt {}", size_label(results.settings.rtt_size));
    let panels = [
        Panel {
            title: "receive throughput, msg/s (log scale)".into(),
            y_desc: "messages per second",
            groups: sizes
                .iter()
                .map(|&s| (size_label(s), pick(&size_label(s), "receive msg/s")))
                .collect(),
            log: true,
        },
        Panel {
            title: "receive throughput, payload MB/s".into(),
            y_desc: "MB per second",
            groups: sizes
                .iter()
                .map(|&s| (size_label(s), pick(&size_label(s), "receive MB/s")))
                .collect(),
            log: false,
        },
        Panel {
            title: format!(
                "round trip, {} payload, µs (lower is better)",
                size_label(results.settings.rtt_size)
            ),
            y_desc: "microseconds",
            groups: ["p50", "p99", "p99.9"]
                .iter()
                .map(|p| (p.to_string(), pick(&rtt_section, &format!("{p} µs"))))
                .collect(),
            log: false,
        },
    ];

    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let title = format!(
        "ACMS{} vs NATS — N = {} messages, {} users, {} round(s); bars: median, whiskers: min–max",
        if report.cross_hub { " (one hub, two hubs on NATS)" } else { "" },
        results.settings.n,
        results.settings.users,
        results.settings.rounds
    );
    let body = root.titled(&title, ("sans-serif", 26)).map_err(plot_error)?;
    for (area, panel) in body.split_evenly((1, panels.len())).iter().zip(&panels) {
        draw_panel(area, panel)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

fn draw_panel(area: &DrawingArea<BitMapBackend<'_>, Shift>, panel: &Panel) -> anyhow::Result<()> {
    let groups = panel.groups.len() as i32;
    let (y_lo, y_hi) = panel.y_range();
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(0..groups * GROUP, y_lo..y_hi)
        .map_err(plot_error)?;
    let labels: Vec<String> = panel.groups.iter().map(|(label, _)| label.clone()).collect();
    let x_label = |x: &i32| -> String {
        if x % GROUP == GROUP / 2 {
            labels.get((x / GROUP) as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let log = panel.log;
    let y_label = |y: &f64| if log { si(10f64.powf(*y)) } else { si(*y) };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels((groups * GROUP + 1) as usize)
        .x_label_formatter(&x_label)
        .set_tick_mark_size(LabelAreaPosition::Bottom, 0)
        .y_labels(8)
        .y_label_formatter(&y_label)
        .y_desc(panel.y_desc)
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(plot_error)?;

    // Only the systems that ran take a slot; their bars are centred in each group.
    let shown: Vec<(usize, System)> = System::ALL
        .into_iter()
        .enumerate()
        .filter(|&(index, _)| panel.groups.iter().any(|(_, stats)| stats[index].is_some()))
        .collect();
    let offset = (GROUP - shown.len() as i32 * BAR) / 2;
    for (slot, &(index, system)) in shown.iter().enumerate() {
        let fill = color(system);
        let bars: Vec<(i32, Stat)> = panel
            .groups
            .iter()
            .enumerate()
            .filter_map(|(g, (_, stats))| {
                Some((g as i32 * GROUP + offset + slot as i32 * BAR, stats[index]?))
            })
            .collect();
        if bars.is_empty() {
            continue;
        }
        chart
            .draw_series(bars.iter().map(|&(x, stat)| {
                Rectangle::new([(x, y_lo), (x + BAR, panel.y(stat.median))], fill.filled())
            }))
            .map_err(plot_error)?
            .label(system.title())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], fill.filled()));
        // Whiskers: min–max, with caps.
        for &(x, stat) in &bars {
            let top = y_lo + (y_hi - y_lo) * 0.82;
            let (mid, lo, hi) = (x + BAR / 2, panel.y(stat.min), panel.y(stat.max).min(top));
            let style = BLACK.stroke_width(2);
            let lines = [
                vec![(mid, lo), (mid, hi)],
                vec![(mid - 1, lo), (mid + 1, lo)],
                vec![(mid - 1, hi), (mid + 1, hi)],
            ];
            chart
                .draw_series(lines.into_iter().map(|points| PathElement::new(points, style)))
                .map_err(plot_error)?;
            let label_at = (mid, hi + (y_hi - y_lo) * 0.01);
            let text_style = ("sans-serif", 14).into_font().color(&BLACK).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Bottom,
                ),
            );
            chart
                .draw_series(std::iter::once(Text::new(si(stat.median), label_at, text_style)))
                .map_err(plot_error)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

/// `3.1M`, `880k`, `1001`, `38.2`.
fn si(value: f64) -> String {
    match value.abs() {
        v if v >= 1e6 => format!("{:.1}M", value / 1e6),
        v if v >= 1e4 => format!("{:.0}k", value / 1e3),
        v if v >= 100.0 => format!("{value:.0}"),
        _ => format!("{value:.1}"),
    }
}

fn plot_error<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow!("drawing the chart: {err:?}")
}
