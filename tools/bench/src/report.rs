//! Summaries per cell (medians, ranges, pairwise ratios) and the outputs: the stdout
//! table, Markdown tables, CSV, JSON and an SVG plot of the ratios.

use std::fmt::Write as _;

use serde::Serialize;

use crate::cells::{Cell, Frontend, Group, VhostBackend};
use crate::runner::Run;
use crate::stats::{ratio, Spread};

/// Medians and ranges of one variant's runs.
#[derive(Debug, Clone, Serialize)]
pub struct VariantSummary {
    /// Variant name.
    pub name: String,
    /// `dpdk` or vdpad's tuning label.
    pub backend: String,
    /// Runs made.
    pub runs: usize,
    /// Runs that produced numbers.
    pub ok_runs: usize,
    /// Mpps (round trips per second / 1e6 for latency cells).
    pub mpps: Option<Spread>,
    /// L2 Gbit/s.
    pub gbps: Option<Spread>,
    /// Latency median, µs.
    pub p50_us: Option<Spread>,
    /// Latency p99, µs.
    pub p99_us: Option<Spread>,
    /// Latency p99.9, µs.
    pub p999_us: Option<Spread>,
    /// vdpad TX packets per kick.
    pub pkts_per_kick: Option<Spread>,
    /// vdpad RX packets per interrupt.
    pub pkts_per_irq: Option<Spread>,
    /// The rig's TX frames per kick sent.
    pub rig_pkts_per_kick: Option<Spread>,
    /// The rig's RX frames per interrupt taken.
    pub rig_pkts_per_irq: Option<Spread>,
    /// Backend CPU (1.0 = one core).
    pub cpu_util: Option<Spread>,
    /// Backend CPU ns per packet.
    pub cpu_ns_per_pkt: Option<Spread>,
    /// 1-minute load average at the end of the runs.
    pub load1: Option<Spread>,
    /// CPU used by other processes during the runs, in CPUs.
    pub other_cpu: Option<Spread>,
}

/// The pairwise ratios of a main cell.
#[derive(Debug, Clone, Serialize)]
pub struct RatioSummary {
    /// What is divided by what.
    pub metric: String,
    /// One per repetition (`None` when A or B of that repetition failed).
    pub pairs: Vec<Option<f64>>,
    /// Median and range of the pairs.
    pub spread: Option<Spread>,
}

/// Everything about one cell.
#[derive(Debug, Clone, Serialize)]
pub struct CellSummary {
    /// Cell id.
    pub id: String,
    /// Main or seed.
    pub group: Group,
    /// What it measures.
    pub title: String,
    /// The frontend.
    pub frontend: Frontend,
    /// Frame size.
    pub size: usize,
    /// Per variant.
    pub variants: Vec<VariantSummary>,
    /// B/A per repetition (main cells).
    pub ratio: Option<RatioSummary>,
    /// Every variant produced numbers.
    pub ok: bool,
}

fn spread(runs: &[&Run], f: impl Fn(&Run) -> Option<f64>) -> Option<Spread> {
    let v: Vec<f64> = runs.iter().filter_map(|r| f(r)).collect();
    Spread::of(&v)
}

/// Summarises the runs of `cell`.
pub fn summarise(cell: &Cell, runs: &[Run]) -> CellSummary {
    let mut variants = Vec::new();
    for v in &cell.variants {
        let all: Vec<&Run> = runs
            .iter()
            .filter(|r| r.cell == cell.id && r.variant == v.name && !r.discarded)
            .collect();
        let ok: Vec<&Run> = all.iter().copied().filter(|r| r.ok()).collect();
        let lat =
            |f: fn(&crate::runner::Latency) -> f64| spread(&ok, move |r| r.latency.as_ref().map(f));
        variants.push(VariantSummary {
            name: v.name.clone(),
            backend: match &v.backend {
                VhostBackend::Dpdk => "dpdk".into(),
                VhostBackend::Vdpad(t) => format!("vdpad ({})", t.label()),
            },
            runs: all.len(),
            ok_runs: ok.len(),
            mpps: spread(&ok, |r| r.mpps),
            gbps: spread(&ok, |r| r.gbps),
            p50_us: lat(|l| l.p50_us),
            p99_us: lat(|l| l.p99_us),
            p999_us: lat(|l| l.p999_us),
            pkts_per_kick: spread(&ok, |r| r.pkts_per_kick),
            pkts_per_irq: spread(&ok, |r| r.pkts_per_irq),
            rig_pkts_per_kick: spread(&ok, |r| r.rig_pkts_per_kick),
            rig_pkts_per_irq: spread(&ok, |r| r.rig_pkts_per_irq),
            cpu_util: spread(&ok, |r| r.backend_cpu_util),
            cpu_ns_per_pkt: spread(&ok, |r| r.backend_cpu_ns_per_pkt),
            load1: spread(&all, |r| Some(r.load1)),
            other_cpu: spread(&all, |r| r.other_cpu),
        });
    }
    let ratio = (cell.group == Group::Main).then(|| {
        let latency = cell.frontend.is_latency();
        let get = |name: &str, rep: usize| {
            runs.iter().find(|r| {
                r.cell == cell.id && r.variant == name && r.rep == rep && r.ok() && !r.discarded
            })
        };
        let reps = runs
            .iter()
            .filter(|r| r.cell == cell.id)
            .map(|r| r.rep + 1)
            .max()
            .unwrap_or(0);
        let pairs: Vec<Option<f64>> = (0..reps)
            .map(|i| match (get("A", i), get("B", i)) {
                (Some(a), Some(b)) if latency => ratio(a.latency?.p50_us, b.latency?.p50_us),
                (Some(a), Some(b)) => ratio(b.mpps?, a.mpps?),
                _ => None,
            })
            .collect();
        let v: Vec<f64> = pairs.iter().flatten().copied().collect();
        RatioSummary {
            metric: if latency {
                "A p50 / B p50 (>1: vdpad's round trip is shorter)".into()
            } else {
                "B Mpps / A Mpps (>1: vdpad is faster)".into()
            },
            pairs,
            spread: Spread::of(&v),
        }
    });
    let ok = variants.iter().all(|v| v.ok_runs > 0);
    CellSummary {
        id: cell.id.clone(),
        group: cell.group,
        title: cell.title.clone(),
        frontend: cell.frontend,
        size: cell.size,
        variants,
        ratio,
        ok,
    }
}

fn s(x: &Option<Spread>, prec: usize) -> String {
    x.as_ref().map_or("-".into(), |v| v.show(prec))
}

fn m(x: &Option<Spread>, prec: usize) -> String {
    x.as_ref()
        .map_or("-".into(), |v| format!("{:.p$}", v.median, p = prec))
}

/// Rows of the main A/B table: cell, frontend, A, B (rate or p50), A, B (Gbps or
/// percentiles), ratio, B pkts/kick, B pkts/irq, CPU used by others during A and B.
fn main_rows(cells: &[CellSummary]) -> Vec<[String; 10]> {
    let mut rows = Vec::new();
    for c in cells.iter().filter(|c| c.group == Group::Main) {
        let (Some(a), Some(b)) = (c.variants.first(), c.variants.get(1)) else {
            continue;
        };
        let r = c.ratio.as_ref().and_then(|r| r.spread);
        if c.frontend.is_latency() {
            let lat = |v: &VariantSummary| {
                format!(
                    "p50 {} / p99 {} / p99.9 {} us",
                    m(&v.p50_us, 1),
                    m(&v.p99_us, 1),
                    m(&v.p999_us, 1)
                )
            };
            rows.push([
                c.id.clone(),
                c.frontend.describe().into(),
                format!("p50 {} us", s(&a.p50_us, 1)),
                format!("p50 {} us", s(&b.p50_us, 1)),
                lat(a),
                lat(b),
                s(&r, 2),
                m(&b.pkts_per_kick, 1),
                m(&b.pkts_per_irq, 1),
                format!("{}/{}", m(&a.other_cpu, 2), m(&b.other_cpu, 2)),
            ]);
        } else {
            rows.push([
                c.id.clone(),
                c.frontend.describe().into(),
                format!("{} Mpps", s(&a.mpps, 2)),
                format!("{} Mpps", s(&b.mpps, 2)),
                format!("{} Gbps", s(&a.gbps, 2)),
                format!("{} Gbps", s(&b.gbps, 2)),
                s(&r, 2),
                m(&b.pkts_per_kick, 1),
                m(&b.pkts_per_irq, 1),
                format!("{}/{}", m(&a.other_cpu, 2), m(&b.other_cpu, 2)),
            ]);
        }
    }
    rows
}

const MAIN_HEAD: [&str; 10] = [
    "cell",
    "frontend",
    "A (DPDK vhost) median [min-max]",
    "B (vdpad) median [min-max]",
    "A Gbps / latency",
    "B Gbps / latency",
    "B/A median [min-max]",
    "B pkts/kick",
    "B pkts/irq",
    "others' CPU A/B",
];

const SEED_HEAD: [&str; 12] = [
    "variant",
    "Mpps",
    "pkts/kick (vdpad)",
    "pkts/irq (vdpad)",
    "pkts/irq (rig)",
    "p50 us",
    "p99 us",
    "p99.9 us",
    "backend CPU",
    "CPU ns/pkt",
    "others' CPU",
    "runs ok",
];

fn seed_rows(c: &CellSummary) -> Vec<[String; 12]> {
    c.variants
        .iter()
        .map(|v| {
            [
                v.name.clone(),
                s(&v.mpps, 3),
                s(&v.pkts_per_kick, 1),
                s(&v.pkts_per_irq, 1),
                m(&v.rig_pkts_per_irq, 1),
                s(&v.p50_us, 1),
                m(&v.p99_us, 1),
                m(&v.p999_us, 1),
                m(&v.cpu_util, 2),
                s(&v.cpu_ns_per_pkt, 0),
                m(&v.other_cpu, 2),
                format!("{}/{}", v.ok_runs, v.runs),
            ]
        })
        .collect()
}

fn text_table<const N: usize>(head: [&str; N], rows: &[[String; N]]) -> String {
    let mut w = head.map(str::len);
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(l, "{c:<width$}  ", width = w[i]);
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = line(head.to_vec());
    out += &line(
        w.iter()
            .map(|n| {
                &"------------------------------------------------------------"[..(*n).min(60)]
            })
            .collect(),
    );
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

fn md_table<const N: usize>(head: [&str; N], rows: &[[String; N]]) -> String {
    let mut out = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(N));
    for r in rows {
        out += &format!("| {} |\n", r.join(" | "));
    }
    out
}

/// One line per main cell with its pairwise ratios, in repetition order.
fn pair_lines(cells: &[CellSummary]) -> String {
    let mut out = String::new();
    for c in cells.iter().filter(|c| c.group == Group::Main) {
        let Some(r) = &c.ratio else { continue };
        let pairs: Vec<String> = r
            .pairs
            .iter()
            .map(|p| p.map_or("-".into(), |x| format!("{x:.2}")))
            .collect();
        let _ = writeln!(out, "{}: {} = {}", c.id, r.metric, pairs.join(" "));
    }
    out
}

/// The table printed to stdout.
pub fn text(cells: &[CellSummary]) -> String {
    let mut out = String::new();
    let rows = main_rows(cells);
    if !rows.is_empty() {
        out += "A/B: A = DPDK vhost library (testpmd net_vhost0), B = vdpad loopback \
                (kern- cells: both on the same kernel interface); per cell the median [min-max] over repetitions, ratio B/A pair by pair\n";
        out += &text_table(MAIN_HEAD, &rows);
        out += "\nratios pair by pair (repetition 0, 1, ...):\n";
        out += &pair_lines(cells);
    }
    for c in cells.iter().filter(|c| c.group == Group::Seed) {
        let _ = writeln!(
            out,
            "\n{}: {} ({}, {} B)",
            c.id,
            c.title,
            c.frontend.describe(),
            c.size
        );
        out += &text_table(SEED_HEAD, &seed_rows(c));
    }
    out
}

/// The same tables in Markdown.
pub fn markdown(cells: &[CellSummary]) -> String {
    let mut out = String::new();
    let rows = main_rows(cells);
    if !rows.is_empty() {
        out += &md_table(MAIN_HEAD, &rows);
        out += "\nRatios pair by pair (repetition 0, 1, ...):\n\n```\n";
        out += &pair_lines(cells);
        out += "```\n";
    }
    for c in cells.iter().filter(|c| c.group == Group::Seed) {
        let _ = writeln!(
            out,
            "\n**{}**: {} ({}, {} B)\n",
            c.id,
            c.title,
            c.frontend.describe(),
            c.size
        );
        out += &md_table(SEED_HEAD, &seed_rows(c));
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or(String::new(), |x| format!("{x:.6}"))
}

/// One CSV row per run.
pub fn runs_csv(runs: &[Run], commit: &str, date: &str) -> String {
    let mut out = String::from(
        "date,commit,cell,variant,rep,ok,mpps,gbps,p50_us,p99_us,p999_us,\
         pkts_per_kick,pkts_per_irq,rig_pkts_per_kick,rig_pkts_per_irq,\
         backend_cpu_util,backend_cpu_ns_per_pkt,window_s,load1,steal_s,other_cpu,quiet_wait_s,\
         discarded,error\n",
    );
    for r in runs {
        let l = r.latency;
        let row = [
            date.to_string(),
            commit.to_string(),
            r.cell.clone(),
            r.variant.clone(),
            r.rep.to_string(),
            r.ok().to_string(),
            opt(r.mpps),
            opt(r.gbps),
            opt(l.map(|l| l.p50_us)),
            opt(l.map(|l| l.p99_us)),
            opt(l.map(|l| l.p999_us)),
            opt(r.pkts_per_kick),
            opt(r.pkts_per_irq),
            opt(r.rig_pkts_per_kick),
            opt(r.rig_pkts_per_irq),
            opt(r.backend_cpu_util),
            opt(r.backend_cpu_ns_per_pkt),
            format!("{:.3}", r.window_s),
            format!("{:.2}", r.load1),
            format!("{:.2}", r.steal_s),
            opt(r.other_cpu),
            opt(r.quiet_wait_s),
            r.discarded.to_string(),
            r.error.clone().unwrap_or_default(),
        ];
        out += &row
            .iter()
            .map(|f| csv_field(f))
            .collect::<Vec<_>>()
            .join(",");
        out.push('\n');
    }
    out
}

/// One CSV row per cell and variant.
pub fn summary_csv(cells: &[CellSummary], commit: &str, date: &str) -> String {
    let mut out = String::from(
        "date,commit,cell,variant,backend,runs,ok_runs,mpps_median,mpps_min,mpps_max,\
         gbps_median,gbps_min,gbps_max,p50_us_median,p99_us_median,p999_us_median,\
         pkts_per_kick_median,pkts_per_irq_median,cpu_ns_per_pkt_median,\
         ratio_median,ratio_min,ratio_max\n",
    );
    for c in cells {
        let r = c.ratio.as_ref().and_then(|r| r.spread);
        for (i, v) in c.variants.iter().enumerate() {
            let md = |x: &Option<Spread>| opt(x.map(|s| s.median));
            // The ratio belongs to the cell; it is written on B's row.
            let with_ratio = i == 1 && r.is_some();
            let row = [
                date.to_string(),
                commit.to_string(),
                c.id.clone(),
                v.name.clone(),
                v.backend.clone(),
                v.runs.to_string(),
                v.ok_runs.to_string(),
                md(&v.mpps),
                opt(v.mpps.map(|s| s.min)),
                opt(v.mpps.map(|s| s.max)),
                md(&v.gbps),
                opt(v.gbps.map(|s| s.min)),
                opt(v.gbps.map(|s| s.max)),
                md(&v.p50_us),
                md(&v.p99_us),
                md(&v.p999_us),
                md(&v.pkts_per_kick),
                md(&v.pkts_per_irq),
                md(&v.cpu_ns_per_pkt),
                if with_ratio {
                    opt(r.map(|s| s.median))
                } else {
                    String::new()
                },
                if with_ratio {
                    opt(r.map(|s| s.min))
                } else {
                    String::new()
                },
                if with_ratio {
                    opt(r.map(|s| s.max))
                } else {
                    String::new()
                },
            ];
            out += &row
                .iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(",");
            out.push('\n');
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal bar per main cell: the median ratio, whiskers from min to max, and a
/// dashed line at 1.0 (parity with DPDK).
pub fn svg(cells: &[CellSummary], subtitle: &str) -> String {
    let rows: Vec<(&CellSummary, Spread)> = cells
        .iter()
        .filter_map(|c| Some((c, c.ratio.as_ref()?.spread?)))
        .collect();
    let (left, right, top, row_h) = (250.0, 60.0, 70.0, 34.0);
    let plot_w = 560.0;
    let width = left + plot_w + right;
    let height = top + row_h * rows.len().max(1) as f64 + 60.0;
    let max = rows
        .iter()
        .map(|(_, s)| s.max)
        .fold(1.2_f64, f64::max)
        .max(0.1);
    // Round the axis up to a step that gives 4-8 ticks.
    let step = [0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|st| max / st <= 8.0)
        .unwrap_or(20.0);
    let axis_max = (max / step).ceil() * step;
    let x = |v: f64| left + plot_w * (v / axis_max).clamp(0.0, 1.0);
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{:.0}" y="22" font-size="15" font-weight="bold" text-anchor="middle">vdpad (B) vs DPDK vhost (A): ratio per cell, median of pairwise ratios, whiskers min-max</text>"#,
        width / 2.0
    );
    let _ = writeln!(
        o,
        r##"<text x="{:.0}" y="42" fill="#555" text-anchor="middle">{}</text>"##,
        width / 2.0,
        esc(subtitle)
    );
    let bottom = top + row_h * rows.len().max(1) as f64;
    let mut t = 0.0;
    while t <= axis_max + 1e-9 {
        let _ = writeln!(
            o,
            r##"<line x1="{0:.1}" y1="{top:.0}" x2="{0:.1}" y2="{bottom:.0}" stroke="#ddd"/><text x="{0:.1}" y="{1:.0}" text-anchor="middle" fill="#333">{t:.2}</text>"##,
            x(t),
            bottom + 16.0
        );
        t += step;
    }
    for (i, (c, s)) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let mid = y + row_h / 2.0;
        let colour = if s.median >= 1.0 {
            "#3a7d44"
        } else {
            "#c0504d"
        };
        let _ = writeln!(
            o,
            r#"<text x="{:.0}" y="{:.1}" text-anchor="end">{} ({})</text>"#,
            left - 8.0,
            mid + 4.0,
            esc(&c.id),
            esc(if c.frontend.is_latency() {
                "A p50/B p50"
            } else {
                "B/A Mpps"
            })
        );
        let _ = writeln!(
            o,
            r#"<rect x="{left:.0}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}" opacity="0.8"/>"#,
            y + 7.0,
            (x(s.median) - left).max(0.5),
            row_h - 14.0
        );
        let _ = writeln!(
            o,
            r#"<line x1="{0:.1}" y1="{mid:.1}" x2="{1:.1}" y2="{mid:.1}" stroke="black"/><line x1="{0:.1}" y1="{2:.1}" x2="{0:.1}" y2="{3:.1}" stroke="black"/><line x1="{1:.1}" y1="{2:.1}" x2="{1:.1}" y2="{3:.1}" stroke="black"/>"#,
            x(s.min),
            x(s.max),
            mid - 6.0,
            mid + 6.0
        );
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{:.1}" fill="#000">{:.2}</text>"##,
            x(s.max) + 6.0,
            mid + 4.0,
            s.median
        );
    }
    let _ = writeln!(
        o,
        r##"<line x1="{0:.1}" y1="{1:.0}" x2="{0:.1}" y2="{2:.0}" stroke="#1f4e9c" stroke-width="2" stroke-dasharray="6,4"/><text x="{0:.1}" y="{3:.0}" fill="#1f4e9c" text-anchor="middle">1.0 = parity</text>"##,
        x(1.0),
        top - 8.0,
        bottom,
        top - 12.0
    );
    let _ = writeln!(
        o,
        r##"<text x="{:.0}" y="{:.0}" fill="#555" text-anchor="middle">ratio (higher is better for vdpad)</text>"##,
        left + plot_w / 2.0,
        bottom + 36.0
    );
    o += "</svg>\n";
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cells::main_cells;
    use crate::runner::Latency;

    fn run(cell: &str, variant: &str, rep: usize, mpps: f64) -> Run {
        Run {
            cell: cell.into(),
            variant: variant.into(),
            rep,
            mpps: Some(mpps),
            gbps: Some(mpps * 0.512),
            ..Default::default()
        }
    }

    #[test]
    fn pairwise_ratios_and_outputs() {
        let cells = main_cells(crate::cells::B_BUSY_POLL_US);
        let tp = &cells[0];
        let mut runs = vec![
            run(&tp.id, "A", 0, 10.0),
            run(&tp.id, "B", 0, 5.0),
            run(&tp.id, "A", 1, 8.0),
            run(&tp.id, "B", 1, 12.0),
            run(&tp.id, "A", 2, 9.0),
        ];
        let mut failed = run(&tp.id, "B", 2, 0.0);
        failed.error = Some("boom".into());
        runs.push(failed);
        // A repetition repeated for noise: its first attempt does not count.
        let mut noisy = run(&tp.id, "B", 1, 100.0);
        noisy.discarded = true;
        runs.insert(0, noisy);
        let s = summarise(tp, &runs);
        let r = s.ratio.as_ref().unwrap();
        assert_eq!(r.pairs, vec![Some(0.5), Some(1.5), None]);
        assert_eq!(r.spread.unwrap().median, 1.0);
        assert!(s.ok);
        assert_eq!(s.variants[1].ok_runs, 2);

        let lat = cells.iter().find(|c| c.id == "lat-64").unwrap();
        let mk = |v: &str, p50: f64| Run {
            cell: lat.id.clone(),
            variant: v.into(),
            latency: Some(Latency {
                count: 10,
                p50_us: p50,
                ..Default::default()
            }),
            ..Default::default()
        };
        let ls = summarise(lat, &[mk("A", 10.0), mk("B", 20.0)]);
        assert_eq!(ls.ratio.unwrap().spread.unwrap().median, 0.5);

        let all = vec![s.clone(), summarise(&cells[1], &[])];
        assert!(!all[1].ok);
        let t = text(&all);
        assert!(t.contains("tp-64") && t.contains("1.00 [0.50-1.50]"), "{t}");
        assert!(markdown(&all).starts_with("| cell |"));
        let csv = runs_csv(&runs, "abc", "2025-01-01");
        assert_eq!(csv.lines().count(), 8);
        assert!(csv.contains(",true,"));
        assert!(csv.lines().last().unwrap().ends_with(",boom"));
        assert!(summary_csv(&all, "abc", "d").contains("tp-64,B,"));
        let svg = svg(&all, "date <x>");
        assert!(svg.starts_with("<svg") && svg.contains("&lt;x&gt;") && svg.contains("tp-64"));
    }
}
