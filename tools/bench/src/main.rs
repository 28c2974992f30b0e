//! `vdpa-bench`: vdpad's software datapath measured side by side with DPDK's vhost
//! library, A/B interleaved, on one machine, in one command — and the seed thread's
//! questions (packets per kick and per interrupt, coalescing latency, busy-poll CPU
//! cost) answered with vdpad's own counters.
//!
//! See docs/performance.md for the method and the latest results.

mod breakdown;
mod cells;
mod cpu_plot;
mod machine;
mod netlab;
mod proc;
mod report;
mod runner;
mod stats;
mod testpmd;
mod vdpad;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use serde::Serialize;

use cells::{Cell, VhostBackend};
use runner::{Pinning, Run, Settings};
use testpmd::Memory;

/// Benchmark vdpad (B) against DPDK's vhost library (A), A/B interleaved, and answer
/// the seed's questions. Needs root and dpdk-testpmd (sudo tests/lab/setup.sh).
#[derive(Debug, Parser)]
#[command(name = "vdpa-bench", version)]
struct Args {
    /// Repetitions per variant (A B A B ...); 5 or more for a report.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Measured seconds per throughput run.
    #[arg(long, default_value_t = 8)]
    seconds: u32,
    /// Warm-up seconds discarded before the measured ones (testpmd frontend).
    #[arg(long, default_value_t = 2)]
    warmup: u32,
    /// Seconds of ping-pong per latency run.
    #[arg(long, default_value_t = 4.0)]
    latency_seconds: f64,
    /// CI mode: 1 repetition, 2 s per throughput run (1 s warm-up), 1.5 s per latency
    /// run; no assertions on speed, only that every cell produced numbers.
    #[arg(long)]
    smoke: bool,
    /// Also run the seed's questions (vdpad only: EVENT_IDX x burst, RX coalescing,
    /// busy polling).
    #[arg(long)]
    seed_questions: bool,
    /// B's fixed busy-poll budget in the A/B cells, microseconds (0: vdpad's defaults,
    /// adaptive polling).
    #[arg(long, default_value_t = cells::B_BUSY_POLL_US)]
    b_busy_poll_us: u32,
    /// Only the cells whose id starts with one of these (comma-separated), e.g.
    /// `tp-,lat-64,seed-notify`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// List the cells and exit.
    #[arg(long)]
    list: bool,
    /// Draw `cpu.svg` (backend CPU against throughput) for an earlier results
    /// directory from its runs.csv, and exit.
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
    /// Output directory [default: bench-results/<UTC date and time>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// vdpad binary [default: next to vdpa-bench].
    #[arg(long)]
    vdpad: Option<PathBuf>,
    /// vdpa-rig binary [default: next to vdpa-bench].
    #[arg(long)]
    rig: Option<PathBuf>,
    /// dpdk-testpmd [default: $DPDK_TESTPMD, else on PATH].
    #[arg(long)]
    testpmd: Option<PathBuf>,
    /// vdpactl for counters [default: next to vdpad, if present; else SIGUSR1 logs].
    #[arg(long)]
    vdpactl: Option<PathBuf>,
    /// Read counters only from vdpad's SIGUSR1 log lines.
    #[arg(long)]
    no_vdpactl: bool,
    /// CPU of the backend (testpmd net_vhost0 lcores, vdpad's worker).
    #[arg(long, default_value_t = 0)]
    backend_cpu: usize,
    /// CPU of the frontend (testpmd virtio-user lcores, vdpa-rig).
    #[arg(long, default_value_t = 1)]
    frontend_cpu: usize,
    /// testpmd memory: hugepages, no hugepages, or hugepages when enough are free.
    #[arg(long, value_enum, default_value_t = MemArg::Auto)]
    testpmd_mem: MemArg,
    /// Before starting, wait (up to --wait-max seconds) until the 1-minute load
    /// average is at most this.
    #[arg(long)]
    wait_for_load: Option<f64>,
    /// Longest wait for --wait-for-load, seconds.
    #[arg(long, default_value_t = 900)]
    wait_max: u64,
    /// Before each run, wait until other processes (not the harness or its children)
    /// used at most this many CPUs over the last second, e.g. 0.25: runs then start in
    /// the quiet gaps of a shared machine. Off by default.
    #[arg(long)]
    quiet: Option<f64>,
    /// Longest wait for --quiet before each run, seconds (the run starts anyway then).
    #[arg(long, default_value_t = 120)]
    quiet_wait: u64,
    /// Repeat a repetition (all its variants, so pairs stay back to back) when other
    /// processes used more than this many CPUs during any of its runs, e.g. 0.25. The
    /// discarded runs stay in runs.csv and results.json, marked. Off by default.
    #[arg(long)]
    redo_noisy: Option<f64>,
    /// At most this many repeats per repetition for --redo-noisy.
    #[arg(long, default_value_t = 2)]
    redo_max: usize,
    /// In interrupt-mode latency cells, trace half a second of each run with the
    /// kernel's tracer (scheduler wake-ups and switches, eventfd writes) and show where
    /// the round trip goes: to the backend's call, the call signal, the rig's wake-up.
    /// Needs root and tracefs.
    #[arg(long)]
    breakdown: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MemArg {
    Auto,
    Huge,
    Nohuge,
}

/// Settings recorded with the results.
#[derive(Debug, Serialize)]
struct Recorded {
    reps: usize,
    seconds: u32,
    warmup: u32,
    latency_seconds: f64,
    smoke: bool,
    report_grade: bool,
    backend_cpu: usize,
    frontend_cpu: usize,
    testpmd_memory: Memory,
    vdpad_pinning: Pinning,
    counter_source: String,
    quiet: Option<f64>,
    quiet_wait: u64,
    redo_noisy: Option<f64>,
    redo_max: usize,
    vdpad_keys_accepted: BTreeMap<String, bool>,
    vdpad: String,
    vdpad_version: String,
    rig: String,
    testpmd: String,
}

/// The JSON file.
#[derive(Debug, Serialize)]
struct Results<'a> {
    tool: &'static str,
    date: String,
    finished: Option<String>,
    command: String,
    source: &'a machine::SourceTree,
    machine: &'a machine::Machine,
    settings: &'a Recorded,
    load_start: [f64; 3],
    load_end: [f64; 3],
    cells: Vec<report::CellSummary>,
    runs: &'a [Run],
}

fn sibling(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join(name);
    p.is_file().then_some(p)
}

fn binary(explicit: &Option<PathBuf>, name: &str) -> Result<PathBuf> {
    match explicit {
        Some(p) if p.is_file() => Ok(p.clone()),
        Some(p) => bail!("{name} not found at {}", p.display()),
        None => sibling(name).with_context(|| {
            format!(
                "{name} is not next to vdpa-bench: build it first \
                 (cargo build --release -p vdpad -p vdpa-rig -p vdpa-bench) or pass --{}",
                if name == "vdpa-rig" { "rig" } else { name }
            )
        }),
    }
}

/// Keys whose acceptance decides what can run, each with a device snippet that uses it
/// (frames-based coalescing needs a time bound too).
const KEYS: [(&str, &str); 10] = [
    ("cpus", "cpus = [0]"),
    ("workers", "cpus = [0]\nworkers = \"per-cpu\""),
    ("polling", "polling = \"fixed\"\nbusy_poll_us = 50"),
    ("event_idx", "event_idx = false"),
    ("burst", "burst = 8"),
    ("busy_poll_us", "busy_poll_us = 50"),
    (
        "rx_coalesce_frames",
        "rx_coalesce_frames = 32\nrx_coalesce_usecs = 20",
    ),
    ("rx_coalesce_usecs", "rx_coalesce_usecs = 20"),
    ("tx_pps", "tx_pps = 1000"),
    ("tx_bps", "tx_bps = 1000000"),
];

fn wait_for_load(limit: f64, max: Duration) {
    let start = std::time::Instant::now();
    loop {
        let l = machine::loadavg()[0];
        if l <= limit {
            eprintln!("vdpa-bench: load {l:.2} <= {limit}: starting");
            return;
        }
        if start.elapsed() >= max {
            eprintln!(
                "vdpa-bench: load still {l:.2} > {limit} after {:.0} s: starting anyway \
                 (the load is recorded with every run)",
                max.as_secs_f64()
            );
            return;
        }
        eprintln!("vdpa-bench: load {l:.2} > {limit}, waiting ...");
        if !proc::sleep(Duration::from_secs(15)) {
            return;
        }
    }
}

/// CPUs used by other processes over the next `d` (this process and its reaped
/// children excluded; call with no child running).
fn others_cpu(d: Duration) -> f64 {
    let (b0, o0) = (machine::busy_seconds(), proc::own_and_children_cpu());
    proc::sleep(d);
    let others = (machine::busy_seconds() - b0) - (proc::own_and_children_cpu() - o0);
    (others / d.as_secs_f64()).max(0.0)
}

/// Waits until others use at most `limit` CPUs (sampled each second), at most `max`;
/// returns the seconds waited.
fn wait_quiet(limit: f64, max: Duration) -> f64 {
    let start = std::time::Instant::now();
    while start.elapsed() < max && !proc::interrupted() {
        if others_cpu(Duration::from_secs(1)) <= limit {
            break;
        }
    }
    start.elapsed().as_secs_f64()
}

/// Runs one variant (after waiting for a quiet machine with `--quiet`), or records why
/// it cannot run.
fn run_variant(
    args: &Args,
    settings: &Settings,
    accepted: &BTreeMap<String, bool>,
    cell: &Cell,
    v: &cells::Variant,
    rep: usize,
) -> Run {
    let unsupported: Vec<&str> = match &v.backend {
        VhostBackend::Vdpad(t) => t
            .keys()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !accepted.get(*k).copied().unwrap_or(false))
            .collect(),
        VhostBackend::Dpdk => Vec::new(),
    };
    if !unsupported.is_empty() {
        return Run {
            cell: cell.id.clone(),
            variant: v.name.clone(),
            rep,
            error: Some(format!(
                "vdpad does not accept {} yet",
                unsupported.join(", ")
            )),
            ..Default::default()
        };
    }
    let waited = args
        .quiet
        .map(|q| wait_quiet(q, Duration::from_secs(args.quiet_wait)));
    let mut r = runner::run_one(settings, cell, v, rep);
    r.quiet_wait_s = waited;
    r
}

/// One progress line for a finished run.
fn progress(r: &Run) -> String {
    let what = match (&r.error, &r.latency) {
        (Some(e), _) => format!("FAILED: {}", e.lines().next().unwrap_or("")),
        (None, Some(l)) => format!(
            "p50 {:.1} us p99 {:.1} us p99.9 {:.1} us",
            l.p50_us, l.p99_us, l.p999_us
        ),
        (None, None) => format!(
            "{:.3} Mpps {:.2} Gbps{}{}",
            r.mpps.unwrap_or(0.0),
            r.gbps.unwrap_or(0.0),
            r.pkts_per_kick
                .map_or(String::new(), |x| format!(" pkts/kick {x:.1}")),
            r.pkts_per_irq
                .map_or(String::new(), |x| format!(" pkts/irq {x:.1}"))
        ),
    };
    format!(
        "{} {} rep {}: {what} (load {:.2}, others' CPU {})",
        r.cell,
        r.variant,
        r.rep,
        r.load1,
        r.other_cpu.map_or("-".into(), |c| format!("{c:.2}"))
    )
}

fn write_outputs(
    out: &Path,
    res: &Results<'_>,
    runs: &[Run],
    summaries: &[report::CellSummary],
) -> Result<()> {
    let commit = &res.source.commit;
    let w = |name: &str, text: String| {
        std::fs::write(out.join(name), text)
            .with_context(|| format!("cannot write {}", out.join(name).display()))
    };
    w("results.json", serde_json::to_string_pretty(res)? + "\n")?;
    w("runs.csv", report::runs_csv(runs, commit, &res.date))?;
    w(
        "summary.csv",
        report::summary_csv(summaries, commit, &res.date),
    )?;
    let subtitle = format!(
        "{} · commit {}{} · {} · {} reps · load {:.2}→{:.2}",
        res.date,
        &commit[..commit.len().min(10)],
        if res.source.dirty { "+dirty" } else { "" },
        res.machine.cpu_model.split(" (").next().unwrap_or(""),
        res.settings.reps,
        res.load_start[0],
        res.load_end[0]
    );
    w("ratios.svg", report::svg(summaries, &subtitle))?;
    w("cpu.svg", cpu_plot::svg(&cpu_plot::points(runs), &subtitle))?;
    let traced = breakdown::table(runs);
    let with_breakdown = |t: String| {
        if traced.is_empty() {
            t
        } else {
            format!("{t}\nWhere the round trip goes (--breakdown, µs, medians):\n\n{traced}")
        }
    };
    w("table.md", with_breakdown(report::markdown(summaries)))?;
    w("table.txt", with_breakdown(report::text(summaries)))?;
    Ok(())
}

/// `--plot DIR`: draws DIR/cpu.svg from DIR/runs.csv.
fn replot(dir: &Path) -> Result<ExitCode> {
    let csv = dir.join("runs.csv");
    let text =
        std::fs::read_to_string(&csv).with_context(|| format!("cannot read {}", csv.display()))?;
    let points =
        cpu_plot::points_from_csv(&text).map_err(|e| anyhow::anyhow!("{}: {e}", csv.display()))?;
    if points.is_empty() {
        bail!(
            "{}: no throughput run with backend CPU in it",
            csv.display()
        );
    }
    let subtitle = format!("{} ({} runs)", dir.display(), points.len());
    let svg = dir.join("cpu.svg");
    std::fs::write(&svg, cpu_plot::svg(&points, &subtitle))
        .with_context(|| format!("cannot write {}", svg.display()))?;
    println!("{}", svg.display());
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vdpa-bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<ExitCode> {
    let mut args = Args::parse();
    if let Some(dir) = &args.plot {
        return replot(dir);
    }
    if args.smoke {
        args.reps = 1;
        args.seconds = 2;
        args.warmup = 1;
        args.latency_seconds = 1.5;
    }
    if args.reps == 0 || args.seconds == 0 || args.latency_seconds < 1.0 {
        bail!("--reps and --seconds must be at least 1, --latency-seconds at least 1");
    }
    let mut cells = cells::main_cells(args.b_busy_poll_us);
    cells.extend(cells::defaults_and_contention_cells());
    cells.extend(cells::scale_cells());
    cells.extend(cells::kernel_cells());
    if args.seed_questions {
        cells.extend(cells::seed_cells());
    }
    if !args.only.is_empty() {
        cells.retain(|c| args.only.iter().any(|p| c.id.starts_with(p.as_str())));
        if cells.is_empty() {
            bail!("--only {:?} matches no cell (see --list)", args.only);
        }
    }
    if args.list {
        for c in &cells {
            let names: Vec<&str> = c.variants.iter().map(|v| v.name.as_str()).collect();
            println!("{:<18} {}  [{}]", c.id, c.title, names.join(" | "));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !args.smoke && args.reps < 5 {
        eprintln!(
            "vdpa-bench: warning: {} repetitions; a report needs at least 5",
            args.reps
        );
    }
    if args.breakdown {
        breakdown::check_tracefs()?;
    }
    let testpmd_bin = testpmd::find(args.testpmd.as_deref())?;
    let vdpad_bin = binary(&args.vdpad, "vdpad")?;
    let rig_bin = binary(&args.rig, "vdpa-rig")?;
    let vdpactl = if args.no_vdpactl {
        None
    } else {
        match &args.vdpactl {
            Some(p) => Some(binary(&Some(p.clone()), "vdpactl")?),
            None => vdpad_bin
                .parent()
                .map(|d| d.join("vdpactl"))
                .filter(|p| p.is_file()),
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "vdpa-bench: warning: not root; testpmd usually needs root (hugepages, /var/run/dpdk)"
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if args.backend_cpu >= cores || args.frontend_cpu >= cores {
        bail!("this machine has {cores} CPUs; --backend-cpu/--frontend-cpu must be below that");
    }
    proc::install_interrupt_handler();

    let date = machine::utc(SystemTime::now());
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("bench-results").join(date.replace([':', '-'], "").replace('T', "-"))
    });
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let work = std::env::temp_dir().join(format!("vdpa-bench.{}", std::process::id()));
    std::fs::create_dir_all(work.join("run"))
        .with_context(|| format!("cannot create {}", work.display()))?;

    let mut accepted = BTreeMap::new();
    for (k, v) in KEYS {
        accepted.insert(k.to_string(), vdpad::accepts(&vdpad_bin, &work, k, v));
    }
    let missing: Vec<&str> = KEYS
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !accepted[*k])
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "vdpa-bench: vdpad --check-config does not accept: {} (cells needing them report an error)",
            missing.join(", ")
        );
    }
    let pinning = if accepted["cpus"] {
        Pinning::ConfigCpus
    } else {
        eprintln!("vdpa-bench: `cpus` not accepted: pinning the whole vdpad process instead");
        Pinning::Affinity
    };
    let memory = match args.testpmd_mem {
        MemArg::Auto => Memory::auto(),
        MemArg::Huge => Memory::Huge,
        MemArg::Nohuge => Memory::NoHuge,
    };
    let settings = Settings {
        vdpad: vdpad_bin.clone(),
        vdpactl: vdpactl.clone(),
        rig: rig_bin.clone(),
        testpmd: testpmd_bin.clone(),
        memory,
        be_cpu: args.backend_cpu,
        fe_cpu: args.frontend_cpu,
        pinning,
        seconds: args.seconds,
        warmup: args.warmup,
        latency_seconds: args.latency_seconds,
        work: work.clone(),
        logs: logs.clone(),
        breakdown: args.breakdown,
    };
    let version = std::process::Command::new(&vdpad_bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let recorded = Recorded {
        reps: args.reps,
        seconds: args.seconds,
        warmup: args.warmup,
        latency_seconds: args.latency_seconds,
        smoke: args.smoke,
        report_grade: !args.smoke && args.reps >= 5,
        backend_cpu: args.backend_cpu,
        frontend_cpu: args.frontend_cpu,
        testpmd_memory: memory,
        vdpad_pinning: pinning,
        counter_source: if vdpactl.is_some() {
            "vdpactl --json stats (SIGUSR1 log lines if it fails)".into()
        } else {
            "SIGUSR1 log lines".into()
        },
        quiet: args.quiet,
        quiet_wait: args.quiet_wait,
        redo_noisy: args.redo_noisy,
        redo_max: args.redo_max,
        vdpad_keys_accepted: accepted.clone(),
        vdpad: vdpad_bin.display().to_string(),
        vdpad_version: version,
        rig: rig_bin.display().to_string(),
        testpmd: testpmd_bin.display().to_string(),
    };
    if let Some(l) = args.wait_for_load {
        wait_for_load(l, Duration::from_secs(args.wait_max));
    }
    let mach = machine::Machine::probe();
    let source = machine::SourceTree::probe(vdpad_bin.parent().unwrap_or(Path::new(".")));
    let load_start = machine::loadavg();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    eprintln!(
        "vdpa-bench: {} cells, {} reps, commit {}{}, load {:.2}; results in {}",
        cells.len(),
        args.reps,
        &source.commit[..source.commit.len().min(10)],
        if source.dirty { "+dirty" } else { "" },
        load_start[0],
        out.display()
    );

    let total: usize = cells.iter().map(|c| c.variants.len() * args.reps).sum();
    let mut runs: Vec<Run> = Vec::new();
    let mut done_cells: Vec<&Cell> = Vec::new();
    let mut n = 0;
    'cells: for cell in &cells {
        for rep in 0..args.reps {
            let mut attempt = 0;
            loop {
                let mut batch: Vec<Run> = Vec::new();
                for v in &cell.variants {
                    n += 1;
                    if proc::interrupted() {
                        runs.extend(batch);
                        break 'cells;
                    }
                    let r = run_variant(&args, &settings, &accepted, cell, v, rep);
                    eprintln!("[{n}/{total}] {}", progress(&r));
                    batch.push(r);
                }
                let noisy = args
                    .redo_noisy
                    .is_some_and(|x| batch.iter().any(|r| r.other_cpu.is_some_and(|c| c > x)));
                if noisy && attempt < args.redo_max {
                    attempt += 1;
                    eprintln!(
                        "vdpa-bench: {} rep {rep}: other processes used more than {} CPUs; \
                         repeating the repetition (attempt {}, the noisy runs are kept \
                         in runs.csv, marked discarded)",
                        cell.id,
                        args.redo_noisy.unwrap_or(0.0),
                        attempt + 1
                    );
                    for r in &mut batch {
                        r.discarded = true;
                    }
                    runs.extend(batch);
                    continue;
                }
                runs.extend(batch);
                break;
            }
        }
        done_cells.push(cell);
        let summaries: Vec<_> = done_cells
            .iter()
            .map(|c| report::summarise(c, &runs))
            .collect();
        let res = Results {
            tool: "vdpa-bench",
            date: date.clone(),
            finished: None,
            command: command.clone(),
            source: &source,
            machine: &mach,
            settings: &recorded,
            load_start,
            load_end: machine::loadavg(),
            cells: summaries.clone(),
            runs: &runs,
        };
        write_outputs(&out, &res, &runs, &summaries)?;
    }
    let _ = std::fs::remove_dir_all(&work);

    let summaries: Vec<_> = cells.iter().map(|c| report::summarise(c, &runs)).collect();
    let res = Results {
        tool: "vdpa-bench",
        date: date.clone(),
        finished: Some(machine::utc(SystemTime::now())),
        command,
        source: &source,
        machine: &mach,
        settings: &recorded,
        load_start,
        load_end: machine::loadavg(),
        cells: summaries.clone(),
        runs: &runs,
    };
    write_outputs(&out, &res, &runs, &summaries)?;
    println!(
        "vdpa-bench {} · commit {}{} · {} · load {:.2} at start, {:.2} at end\n",
        res.date,
        source.commit,
        if source.dirty { " (dirty tree)" } else { "" },
        mach.cpu_model,
        load_start[0],
        res.load_end[0]
    );
    print!("{}", report::text(&summaries));
    let traced = breakdown::table(&runs);
    if !traced.is_empty() {
        println!("\nwhere the round trip goes (--breakdown, us, medians):\n{traced}");
    }
    println!("\nresults: {}", out.display());
    if proc::interrupted() {
        eprintln!("vdpa-bench: interrupted; partial results written");
        return Ok(ExitCode::from(130));
    }
    let empty: Vec<&str> = summaries
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.id.as_str())
        .collect();
    if !empty.is_empty() {
        eprintln!(
            "vdpa-bench: cells without numbers: {} (see runs.csv and {}/)",
            empty.join(", "),
            logs.display()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
