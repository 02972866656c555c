//! PNG plots of the medians: bulk throughput and CPU per GB by configuration, p99
//! latency by loss rate, and memory and idle CPU by session count.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::harness::{median, Sample};

const IMPLS: [(&str, RGBColor); 2] = [("kcpgate", RGBColor(0x1f, 0x77, 0xb4)), ("kcptun", RGBColor(0xff, 0x7f, 0x0e))];
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

type Error = Box<dyn std::error::Error>;

/// The median of one metric of one implementation in one scenario.
fn value(samples: &[Sample], scenario: &str, metric: &str, imp: &str) -> Option<f64> {
    let v: Vec<f64> = samples
        .iter()
        .filter(|s| s.scenario == scenario && s.metric == metric && s.implementation == imp)
        .map(|s| s.value)
        .collect();
    (!v.is_empty()).then(|| median(v))
}

fn scenarios(samples: &[Sample], prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in samples.iter().filter(|s| s.scenario.starts_with(prefix)) {
        if !out.contains(&s.scenario) {
            out.push(s.scenario.clone());
        }
    }
    out
}

/// Loads the font the plots are labelled with (`apt-get install fonts-dejavu-core`).
fn load_font() -> Result<(), Error> {
    let bytes =
        std::fs::read(FONT).map_err(|e| format!("cannot read {FONT}: {e} (apt-get install -y fonts-dejavu-core)"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
        .map_err(|_| format!("{FONT} is not a usable font"))?;
    Ok(())
}

/// Writes bulk.png, latency.png and sessions.png into `dir`.
pub fn write(dir: &Path, samples: &[Sample]) -> Result<Vec<PathBuf>, Error> {
    load_font()?;
    let mut written = Vec::new();
    let bulk = scenarios(samples, "bulk");
    let path = dir.join("bulk.png");
    {
        let root = BitMapBackend::new(&path, (1200, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, 2));
        for (panel, metric) in panels.iter().zip(["throughput MB/s", "CPU s per GB"]) {
            bars(panel, &bulk, metric, samples)?;
        }
        root.present()?;
    }
    written.push(path);

    let path = dir.join("latency.png");
    {
        let root = BitMapBackend::new(&path, (900, 550)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut series = Vec::new();
        for fec in ["FEC 10/3", "FEC off"] {
            for (imp, color) in IMPLS {
                let points: Vec<(f64, f64)> = scenarios(samples, "ping-pong")
                    .iter()
                    .filter(|s| s.ends_with(fec))
                    .filter_map(|s| {
                        let loss: f64 = s.split(", ").nth(1)?.trim_end_matches("% loss").parse().ok()?;
                        Some((loss, value(samples, s, "p99 ms", imp)?))
                    })
                    .collect();
                series.push((format!("{imp}, {fec}"), color, fec == "FEC off", points));
            }
        }
        lines(&root, "p99 round trip by loss (20 ms each way)", "loss each way, %", "p99 ms", &series)?;
        root.present()?;
    }
    written.push(path);

    let path = dir.join("sessions.png");
    {
        let root = BitMapBackend::new(&path, (1200, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, 2));
        for (panel, metric) in panels.iter().zip(["server RSS KB per session", "server idle CPU % of a core"]) {
            let series: Vec<_> = IMPLS
                .iter()
                .map(|&(imp, color)| {
                    let points = scenarios(samples, "")
                        .iter()
                        .filter(|s| s.contains("idle sessions"))
                        // Memory only where every session has its stream.
                        .filter(|s| metric.contains("CPU") || s.ends_with("idle sessions"))
                        .filter_map(|s| Some((s.split(' ').next()?.parse().ok()?, value(samples, s, metric, imp)?)))
                        .collect();
                    (imp.to_string(), color, false, points)
                })
                .collect();
            lines(panel, metric, "sessions", metric, &series)?;
        }
        root.present()?;
    }
    written.push(path);
    Ok(written)
}

fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    scenarios: &[String],
    metric: &str,
    samples: &[Sample],
) -> Result<(), Error>
where
    DB::ErrorType: 'static,
{
    let top = scenarios
        .iter()
        .flat_map(|s| IMPLS.iter().filter_map(|(imp, _)| value(samples, s, metric, imp)))
        .fold(0.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(metric, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..scenarios.len() as f64, 0.0..top.max(1.0))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(scenarios.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 {
                scenarios.get(i).map_or(String::new(), |s| s.trim_start_matches("bulk, ").to_string())
            } else {
                String::new()
            }
        })
        .y_desc(metric)
        .draw()?;
    for (j, (imp, color)) in IMPLS.iter().enumerate() {
        let rects: Vec<_> = scenarios
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let v = value(samples, s, metric, imp)?;
                let x0 = i as f64 + 0.1 + j as f64 * 0.4;
                Some(Rectangle::new([(x0, 0.0), (x0 + 0.4, v)], color.filled()))
            })
            .collect();
        chart
            .draw_series(rects)?
            .label(*imp)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw()?;
    Ok(())
}

type Series = (String, RGBColor, bool, Vec<(f64, f64)>);

fn lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> Result<(), Error>
where
    DB::ErrorType: 'static,
{
    let points = series.iter().flat_map(|s| s.3.iter());
    let (x_max, y_max) = points.fold((0.0f64, 0.0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..(x_max * 1.05).max(1.0), 0.0..(y_max * 1.15).max(1.0))?;
    chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw()?;
    for (name, color, dashed, pts) in series {
        let style = if *dashed { color.stroke_width(1) } else { color.stroke_width(3) };
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), style))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw()?;
    Ok(())
}
