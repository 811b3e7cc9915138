//! SVG plots of a simulation report: emissions per hour by policy, where
//! the fleet sits over time, and cumulative savings over static. They are
//! drawn from the report alone, so the command (into `--out`) and the API
//! (from a stored report) serve the same pictures.

use heliotrope_api_spec::SimulationReport;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::domain::simulation::Policy;

/// The plots, by file name.
pub const PLOTS: [&str; 3] = ["emissions.svg", "placement.svg", "savings.svg"];

/// The policy whose placement is drawn: the planner if it ran, else
/// greedy, the oracle or static, the first that ran.
fn placement_policy(report: &SimulationReport) -> Option<&str> {
    [Policy::Planner, Policy::Greedy, Policy::Oracle, Policy::Static]
        .into_iter()
        .map(Policy::name)
        .find(|p| report.series.vcpus_at.contains_key(*p))
}

/// Draws plot `name` (one of [`PLOTS`]); `None` for an unknown name.
pub fn draw(report: &SimulationReport, name: &str) -> Option<String> {
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, (960, 480)).into_drawing_area();
        let drawn = match name {
            "emissions.svg" => lines(
                &area,
                report,
                "Emissions per hour by policy",
                "kg CO2e per hour",
                report.series.emissions_kg.iter().map(|(p, v)| (p.clone(), v.clone())).collect(),
            ),
            "savings.svg" => {
                let fixed = report.series.objective.get("static")?;
                let cumulative = report
                    .series
                    .objective
                    .iter()
                    .filter(|(p, _)| p.as_str() != "static")
                    .map(|(p, v)| {
                        let mut total = 0.0;
                        let saved = fixed
                            .iter()
                            .zip(v)
                            .map(|(f, x)| {
                                total += f - x;
                                total
                            })
                            .collect();
                        (p.clone(), saved)
                    })
                    .collect();
                let unit = format!("saved over static (objective, {})", report.currency);
                lines(&area, report, "Cumulative savings over static", &unit, cumulative)
            }
            "placement.svg" => placement(&area, report),
            _ => return None,
        };
        if drawn.and_then(|()| area.present().map_err(|e| e.to_string())).is_err() {
            return None;
        }
    }
    Some(svg)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn colour(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 16] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
        RGBColor(174, 199, 232),
        RGBColor(255, 187, 120),
        RGBColor(152, 223, 138),
        RGBColor(255, 152, 150),
        RGBColor(197, 176, 213),
        RGBColor(196, 156, 148),
    ];
    PALETTE[i % PALETTE.len()]
}

/// One line per series over the report's hours, days on the x axis.
fn lines(
    area: &Area,
    report: &SimulationReport,
    title: &str,
    unit: &str,
    series: Vec<(String, Vec<f64>)>,
) -> Result<(), String> {
    let values = || series.iter().flat_map(|(_, v)| v.iter().copied());
    let (low, high) = (values().fold(f64::INFINITY, f64::min), values().fold(f64::NEG_INFINITY, f64::max));
    let (low, high) = if low <= high { (low, high) } else { (0.0, 1.0) };
    let pad = ((high - low) * 0.05).max(1e-9);
    let mut chart = frame(area, report, title, (low - pad)..(high + pad), unit)?;
    for (name, v) in &series {
        // One colour per policy, the same in every plot.
        let c = colour(Policy::ALL.iter().position(|p| p.name() == name).unwrap_or(Policy::ALL.len()));
        chart
            .draw_series(LineSeries::new(v.iter().enumerate().map(|(h, &y)| (h as f64 / 24.0, y)), c.stroke_width(1)))
            .map_err(|e| e.to_string())?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

/// vCPUs per site over time, stacked, for one policy.
fn placement(area: &Area, report: &SimulationReport) -> Result<(), String> {
    let policy = placement_policy(report).ok_or("no runs")?;
    let per_site = &report.series.vcpus_at[policy];
    let hours = report.hours as usize;
    let total: f64 = per_site.iter().map(|s| s.first().copied().unwrap_or(0.0)).sum();
    let title = format!("Where the fleet runs: {policy}");
    let mut chart = frame(area, report, &title, 0.0..(total * 1.02).max(1.0), "vCPUs, stacked by site")?;
    let mut stacked: Vec<Vec<f64>> = Vec::with_capacity(per_site.len());
    for site in per_site {
        let below = stacked.last().cloned().unwrap_or_else(|| vec![0.0; hours]);
        stacked.push(below.iter().zip(site.iter().chain(std::iter::repeat(&0.0))).map(|(b, v)| b + v).collect());
    }
    for s in (0..per_site.len()).rev() {
        let c = colour(s);
        let points: Vec<(f64, f64)> = stacked[s].iter().enumerate().map(|(h, &y)| (h as f64 / 24.0, y)).collect();
        chart
            .draw_series(AreaSeries::new(points, 0.0, c.mix(0.9)).border_style(c))
            .map_err(|e| e.to_string())?
            .label(report.sites[s].as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A white chart over the report's days, titled, with `y` on its axis.
fn frame<'a, 'b>(
    area: &'a Area<'b>,
    report: &SimulationReport,
    title: &str,
    y: std::ops::Range<f64>,
    y_desc: &str,
) -> Result<Chart<'a, 'b>, String> {
    let days = report.hours as f64 / 24.0;
    area.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{title} ({})", subtitle(report)), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..days.max(1.0 / 24.0), y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(format!("days from {}", report.from.format("%Y-%m-%d")))
        .y_desc(y_desc)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(chart)
}

fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, position: SeriesLabelPosition) -> Result<(), String> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(position)
        .draw()
        .map_err(|e| e.to_string())
}

fn subtitle(report: &SimulationReport) -> String {
    format!(
        "{} VMs, {} sites, {} forecast{}",
        report.vms,
        report.sites.len(),
        report.forecast,
        if report.synthetic { ", SYNTHETIC signals" } else { "" }
    )
}
