//! The charts of `thaw bench --compare --chart FILE`: restore → ready per method (the
//! headline RAM size, log scale), and restore → vCPUs running against RAM size for each
//! method (`FILE-ram.EXT`). PNG or SVG by the file's extension. Text is drawn from
//! DejaVu Sans (Debian's fonts-dejavu-core), or the TTF file `$THAW_FONT` names.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use thaw_bench::compare::{CompareReport, MethodReport};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SIZE: (u32, u32) = (1200, 640);

/// Draws both charts; returns the files written.
pub fn draw(report: &CompareReport, path: &Path) -> Result<Vec<PathBuf>> {
    register_font()?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let ram_path = path.with_file_name(format!(
        "{}-ram.{ext}",
        path.file_stem().and_then(|s| s.to_str()).unwrap_or("chart")
    ));
    match ext.as_str() {
        "png" => {
            ready_chart(BitMapBackend::new(path, SIZE).into_drawing_area(), report)?;
            ram_chart(
                BitMapBackend::new(&ram_path, SIZE).into_drawing_area(),
                report,
            )?;
        }
        "svg" => {
            ready_chart(SVGBackend::new(path, SIZE).into_drawing_area(), report)?;
            ram_chart(SVGBackend::new(&ram_path, SIZE).into_drawing_area(), report)?;
        }
        _ => bail!(
            "--chart {}: the file must end in .png or .svg",
            path.display()
        ),
    }
    Ok(vec![path.to_owned(), ram_path])
}

fn register_font() -> Result<()> {
    let path = std::env::var_os("THAW_FONT")
        .map(PathBuf::from)
        .unwrap_or_else(|| FONT.into());
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "the charts need the font {} (install fonts-dejavu-core: scripts/setup-test.sh, or set THAW_FONT)",
            path.display()
        )
    })?;
    // plotters keeps fonts for the whole process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{} is not a font plotters can read", path.display()))
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart failed: {e:?}")
}

fn colour(method: &str) -> RGBColor {
    match method {
        "cold-boot" => RGBColor(120, 120, 120),
        "savevm" => RGBColor(214, 39, 40),
        "exec-gzip" => RGBColor(255, 127, 14),
        "exec-zstd" => RGBColor(188, 189, 34),
        "libvirt" => RGBColor(148, 103, 189),
        "thaw" => RGBColor(31, 119, 180),
        "thaw-pool-paused" => RGBColor(23, 190, 207),
        "thaw-pool-running" => RGBColor(44, 160, 44),
        _ => RGBColor(0, 100, 0),
    }
}

fn subtitle(r: &CompareReport) -> String {
    let m = &r.machine;
    format!(
        "{}, {} MiB, {} on QEMU {}, {} ({} cores); {} runs; load {:.1} → {:.1}",
        r.guest,
        r.memory_mib,
        m.accel,
        m.qemu,
        m.cpu,
        m.cores,
        r.runs,
        r.load_before[0],
        r.load_after[0]
    )
}

/// Horizontal bars: median restore → ready per method, with min–max whiskers.
fn ready_chart<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, r: &CompareReport) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let methods: Vec<&MethodReport> = r.methods.iter().filter(|m| m.error.is_none()).collect();
    if methods.is_empty() {
        bail!("no method ran: nothing to chart");
    }
    let max = methods.iter().map(|m| m.ready_ms.max).fold(1.0, f64::max);
    let min = methods
        .iter()
        .map(|m| m.ready_ms.min)
        .fold(f64::INFINITY, f64::min)
        .max(0.01);
    // Room right of the longest bar for its label ("6096 ms  (6991 × running pool)").
    let (lo, hi) = (decade_below(min), max * 40.0);
    let n = methods.len();
    let (title, sub) = root.split_vertically(60);
    title
        .draw(&Text::new(
            "restore → ready (guest agent answers), ms, log scale",
            (20, 8),
            ("sans-serif", 24).into_font(),
        ))
        .map_err(err)?;
    title
        .draw(&Text::new(
            subtitle(r),
            (20, 38),
            ("sans-serif", 15).into_font().color(&RGBColor(90, 90, 90)),
        ))
        .map_err(err)?;
    let mut chart = ChartBuilder::on(&sub)
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(300)
        // A segmented 0..k range has k + 1 rows; one method still needs a non-empty range.
        .build_cartesian_2d((lo..hi).log_scale(), (0..n.max(2) - 1).into_segmented())
        .map_err(err)?;
    let labels: Vec<String> = methods.iter().map(|m| m.label.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => n
                .checked_sub(1 + *i)
                .and_then(|j| labels.get(j))
                .cloned()
                .unwrap_or_default(),
            SegmentValue::Last => String::new(),
        })
        .x_label_formatter(&|v| fmt_ms(*v))
        .x_desc("ms")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    for (k, m) in methods.iter().enumerate() {
        // The first method at the top.
        let i = n - 1 - k;
        let c = colour(&m.method);
        let median = m.ready_ms.median.max(lo);
        chart
            .draw_series(std::iter::once({
                let mut bar = Rectangle::new(
                    [
                        (lo, SegmentValue::Exact(i)),
                        (median, SegmentValue::Exact(i + 1)),
                    ],
                    c.filled(),
                );
                bar.set_margin(8, 8, 0, 0);
                bar
            }))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![
                    (m.ready_ms.min.max(lo), SegmentValue::CenterOf(i)),
                    (m.ready_ms.max.max(lo), SegmentValue::CenterOf(i)),
                ],
                BLACK.stroke_width(2),
            )))
            .map_err(err)?;
        let ratio = m
            .ready_vs_pool
            .map(|x| format!("  ({} × running pool)", fmt_ratio(x)))
            .unwrap_or_default();
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{} ms{ratio}", fmt_ms(m.ready_ms.median)),
                (m.ready_ms.max.max(median) * 1.15, SegmentValue::CenterOf(i)),
                ("sans-serif", 14).into_font(),
            )))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// One line per method: median restore → vCPUs running at each RAM size (log-log).
fn ram_chart<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, r: &CompareReport) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    // (method id, label, points)
    type Series = (String, String, Vec<(f64, f64)>);
    let mut series: Vec<Series> = Vec::new();
    for size in &r.sizes {
        for m in &size.methods {
            let Some(running) = m.running_ms.filter(|_| m.error.is_none()) else {
                continue;
            };
            // x is log2 of the RAM size, so every size measured gets a tick.
            let point = (f64::from(size.memory_mib).log2(), running.median.max(0.01));
            match series.iter_mut().find(|(id, _, _)| *id == m.method) {
                Some((_, _, pts)) => pts.push(point),
                None => series.push((m.method.clone(), m.label.clone(), vec![point])),
            }
        }
    }
    if series.is_empty() {
        bail!("no method reported restore → running: nothing to chart");
    }
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, 0.0f64, f64::MAX, 0.0f64);
    for (_, _, pts) in &series {
        for &(x, y) in pts {
            xmin = xmin.min(x);
            xmax = xmax.max(x);
            ymin = ymin.min(y);
            ymax = ymax.max(y);
        }
    }
    if xmax <= xmin {
        xmax = xmin + 1.0;
    }
    let (title, sub) = root.split_vertically(60);
    title
        .draw(&Text::new(
            "restore → vCPUs running against guest RAM, ms (median), log-log",
            (20, 8),
            ("sans-serif", 24).into_font(),
        ))
        .map_err(err)?;
    let m = &r.machine;
    title
        .draw(&Text::new(
            format!(
                "{}, {} on QEMU {}, {} ({} cores); {} runs per point",
                r.guest, m.accel, m.qemu, m.cpu, m.cores, r.runs
            ),
            (20, 38),
            ("sans-serif", 15).into_font().color(&RGBColor(90, 90, 90)),
        ))
        .map_err(err)?;
    let mut chart = ChartBuilder::on(&sub)
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            xmin - 0.4..xmax + 0.4,
            (decade_below(ymin)..ymax * 200.0).log_scale(),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("guest RAM, MiB")
        .y_desc("ms")
        .x_labels(((xmax - xmin) as usize + 1) * 2 + 2)
        .x_label_formatter(&|v| {
            if (v - v.round()).abs() < 1e-6 && *v >= 0.0 {
                format!("{:.0}", 2f64.powf(v.round()))
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| fmt_ms(*v))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    for (id, label, pts) in &series {
        let c = colour(id);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(3)))
            .map_err(err)?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 5, c.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn decade_below(v: f64) -> f64 {
    10f64.powf(v.max(1e-3).log10().floor())
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}
