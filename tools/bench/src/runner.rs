//! One run: start a backend, drive it with a frontend for a bounded time, take the
//! samples and counters of the measured window, stop everything and clean up.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::breakdown::{self, Breakdown};
use crate::cells::{Cell, Frontend, Variant, VhostBackend};
use crate::machine;
use crate::netlab::{Port, Reflector};
use crate::proc::{self, Proc, Spawn};
use crate::stats;
use crate::testpmd::{self, Memory, Testpmd};
use crate::vdpad::{self, PairCounters, VdpadProcess};

/// How vdpad's worker is pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pinning {
    /// `cpus = [N]` in the device configuration (the worker thread only).
    ConfigCpus,
    /// The whole daemon process pinned with sched_setaffinity (like `taskset`),
    /// because the configuration parser does not accept `cpus`.
    Affinity,
}

/// Everything a run needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The vdpad binary.
    pub vdpad: PathBuf,
    /// vdpactl, if it should be tried for counters.
    pub vdpactl: Option<PathBuf>,
    /// The vdpa-rig binary.
    pub rig: PathBuf,
    /// dpdk-testpmd.
    pub testpmd: PathBuf,
    /// testpmd memory.
    pub memory: Memory,
    /// Backend CPU.
    pub be_cpu: usize,
    /// Frontend CPU.
    pub fe_cpu: usize,
    /// vdpad worker pinning.
    pub pinning: Pinning,
    /// Measured seconds per throughput run.
    pub seconds: u32,
    /// Warm-up seconds discarded (testpmd frontend samples).
    pub warmup: u32,
    /// Seconds per latency run.
    pub latency_seconds: f64,
    /// Scratch directory for sockets and configurations.
    pub work: PathBuf,
    /// Where process logs go.
    pub logs: PathBuf,
    /// Trace interrupt-mode latency runs and cut their round trips into segments
    /// ([`crate::breakdown`]).
    pub breakdown: bool,
}

/// Latency figures of one run (µs).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Round trips measured.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Mean.
    pub mean_us: f64,
}

/// The result of one run of one variant.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Run {
    /// Cell id.
    pub cell: String,
    /// Variant name.
    pub variant: String,
    /// Repetition (0-based).
    pub rep: usize,
    /// Start time (UTC).
    pub started: String,
    /// Why the run produced no numbers, if it did not.
    pub error: Option<String>,
    /// Per-second Rx-pps samples kept after warm-up (testpmd frontend).
    pub samples_pps: Vec<u64>,
    /// Throughput: Mpps (median of the samples, or the rig's figure); for latency
    /// runs, round trips per second / 1e6.
    pub mpps: Option<f64>,
    /// L2 Gbit/s (Mpps × size × 8).
    pub gbps: Option<f64>,
    /// Latency figures (latency cells).
    pub latency: Option<Latency>,
    /// vdpad's counters over the measured window (B runs).
    pub vdpad: Option<PairCounters>,
    /// vdpad: TX packets per guest kick over the window.
    pub pkts_per_kick: Option<f64>,
    /// vdpad: RX packets per interrupt over the window.
    pub pkts_per_irq: Option<f64>,
    /// The rig's own view: TX frames per kick it sent.
    pub rig_pkts_per_kick: Option<f64>,
    /// The rig's own view: RX frames per interrupt it took.
    pub rig_pkts_per_irq: Option<f64>,
    /// Backend CPU time over the window divided by its length (1.0 = one core).
    pub backend_cpu_util: Option<f64>,
    /// Backend CPU nanoseconds per packet over the window (per round trip for latency).
    pub backend_cpu_ns_per_pkt: Option<f64>,
    /// Frames the rig lost (rig cells).
    pub lost: Option<u64>,
    /// Measured window, seconds.
    pub window_s: f64,
    /// 1-minute load average at the end of the run.
    pub load1: f64,
    /// Steal time during the run, seconds summed over CPUs.
    pub steal_s: f64,
    /// CPU used by other processes during the run (not the harness or anything it
    /// started), in CPUs: 0.5 = half a core busy elsewhere. Colleagues compiling show
    /// up here.
    pub other_cpu: Option<f64>,
    /// Seconds waited for a quiet machine before the run (`--quiet`).
    pub quiet_wait_s: Option<f64>,
    /// Left out of the summaries: its repetition was repeated because the machine was
    /// busy (`--redo-noisy`).
    pub discarded: bool,
    /// Where vdpad's counters came from.
    pub counter_source: Option<String>,
    /// The backend's command line.
    pub backend_cmd: String,
    /// The frontend's command line.
    pub frontend_cmd: String,
    /// Nothing was sent (an `idle-` cell): the headline is the backend's CPU.
    pub idle: bool,
    /// Where a traced round trip spent its time (`--breakdown`, interrupt-mode latency
    /// cells).
    pub breakdown: Option<Breakdown>,
}

impl Run {
    /// Whether the run produced its headline number.
    pub fn ok(&self) -> bool {
        self.error.is_none()
            && match &self.latency {
                Some(l) => l.count > 0 && l.p50_us > 0.0,
                None if self.idle => self.backend_cpu_util.is_some(),
                None => self.mpps.is_some_and(|m| m > 0.0),
            }
    }
}

/// A snapshot at the edge of the measured window.
struct Mark {
    at: Instant,
    cpu: Option<f64>,
    counters: Option<PairCounters>,
}

enum BackendProc {
    Dpdk(Proc, Testpmd),
    Vdpad(VdpadProcess),
}

impl BackendProc {
    fn proc_mut(&mut self) -> &mut Proc {
        match self {
            BackendProc::Dpdk(p, _) => p,
            BackendProc::Vdpad(d) => &mut d.proc,
        }
    }

    /// Time, CPU and counters now. The time and CPU are read first, together; the
    /// counters follow within milliseconds (a vdpactl call or a SIGUSR1 dump).
    fn mark(&mut self) -> Mark {
        let at = Instant::now();
        let cpu = self.proc_mut().cpu_seconds();
        let counters = match self {
            BackendProc::Vdpad(d) => d.counters(),
            BackendProc::Dpdk(..) => None,
        };
        Mark { at, cpu, counters }
    }

    fn stop(mut self) {
        match &mut self {
            BackendProc::Dpdk(p, t) => {
                p.stop(libc::SIGINT, Duration::from_secs(5));
                t.cleanup();
            }
            BackendProc::Vdpad(d) => {
                d.proc.stop(libc::SIGTERM, Duration::from_secs(5));
            }
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Waits until `socket` exists while `p` runs.
fn wait_socket(p: &mut Proc, socket: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if socket.exists() {
            return Ok(());
        }
        if !p.running() {
            bail!(
                "{} exited before creating {} (log {}):\n{}",
                p.name(),
                socket.display(),
                p.log().display(),
                tail(p.log(), 15)
            );
        }
        if Instant::now() >= deadline || proc::interrupted() {
            bail!(
                "{} did not create {} within {timeout:?}",
                p.name(),
                socket.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The EAL file prefix of backend A (one at a time; removed after each run).
fn be_prefix() -> String {
    format!("vbench{}be", std::process::id())
}

/// A unique tag for file names and DPDK prefixes.
fn tag(cell: &Cell, v: &Variant, rep: usize) -> String {
    let clean: String = v
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{}-{}-r{rep}", cell.id, clean)
}

/// Waits until every one of `sockets` exists while `p` runs.
fn wait_sockets(p: &mut Proc, sockets: &[PathBuf], timeout: Duration) -> Result<()> {
    sockets.iter().try_for_each(|s| wait_socket(p, s, timeout))
}

/// Starts the backend of `v` on `sockets`; inside `ns`'s namespace when the cell
/// forwards to a kernel interface.
fn start_backend(
    s: &Settings,
    cell: &Cell,
    v: &Variant,
    sockets: &[PathBuf],
    ns: Option<&Reflector>,
    t: &str,
) -> Result<BackendProc> {
    for socket in sockets {
        let _ = std::fs::remove_file(socket);
    }
    let place = |spawn: Spawn| match ns {
        Some(r) => r.inside(spawn),
        None => spawn,
    };
    match &v.backend {
        VhostBackend::Dpdk => {
            let tp = Testpmd::vhost_backend(sockets, cell.port, s.be_cpu, &be_prefix(), s.memory);
            tp.cleanup();
            let spawn = place(tp.spawn(
                "dpdk-testpmd (net_vhost0)",
                &s.testpmd,
                &s.logs.join(format!("{t}-be.log")),
            ));
            let mut p = spawn.start()?;
            if let Err(e) = wait_sockets(&mut p, sockets, Duration::from_secs(30)) {
                p.stop(libc::SIGKILL, Duration::from_secs(2));
                tp.cleanup();
                return Err(e);
            }
            Ok(BackendProc::Dpdk(p, tp))
        }
        VhostBackend::Vdpad(tuning) => {
            let run_dir = s.work.join("run");
            let worker = (s.pinning == Pinning::ConfigCpus).then_some(s.be_cpu);
            let cfg = vdpad::config_toml(&run_dir, sockets, cell.port, worker, tuning);
            let cfg_path = s.work.join(format!("{t}.toml"));
            std::fs::write(&cfg_path, cfg)
                .with_context(|| format!("cannot write {}", cfg_path.display()))?;
            let mut spawn = Spawn::new(
                "vdpad",
                &s.vdpad,
                vec!["--config".into(), cfg_path.display().to_string()],
                &s.logs.join(format!("{t}-be.log")),
            );
            if s.pinning == Pinning::Affinity {
                spawn.cpu = Some(s.be_cpu);
            }
            let mut p = place(spawn).start()?;
            wait_sockets(&mut p, sockets, Duration::from_secs(15))?;
            Ok(BackendProc::Vdpad(VdpadProcess::new(
                p,
                s.vdpactl.clone(),
                run_dir.join("control.sock"),
            )))
        }
    }
}

/// The backend's command line as the report shows it.
fn backend_cmd(s: &Settings, cell: &Cell, v: &Variant, sockets: &[PathBuf]) -> String {
    let netns = if cell.port == Port::Loopback {
        String::new()
    } else {
        format!("ip netns exec {} ", namespace_name())
    };
    let cmd = match &v.backend {
        VhostBackend::Dpdk => {
            Testpmd::vhost_backend(sockets, cell.port, s.be_cpu, &be_prefix(), s.memory)
                .spawn("", &s.testpmd, Path::new(""))
                .command_line()
        }
        VhostBackend::Vdpad(t) => {
            let pin = match s.pinning {
                Pinning::ConfigCpus => format!("cpus=[{}]", s.be_cpu),
                Pinning::Affinity => format!("taskset -c {}", s.be_cpu),
            };
            format!(
                "vdpad --config FILE ({} {} device(s), {pin}, tuning {})",
                sockets.len(),
                cell.port.describe(),
                t.label()
            )
        }
    };
    netns + &cmd
}

/// A busy loop pinned to the backend CPU (a contention cell's hog).
fn start_hog(s: &Settings, t: &str) -> Result<Proc> {
    let mut spawn = Spawn::new(
        "hog",
        Path::new("/bin/sh"),
        vec!["-c".into(), "while :; do :; done".into()],
        &s.logs.join(format!("{t}-hog.log")),
    );
    spawn.cpu = Some(s.be_cpu);
    spawn.start()
}

/// The namespace and reflector of a cell on a kernel interface, fresh for each run.
fn kernel_side(cell: &Cell) -> Result<Option<Reflector>> {
    if cell.port == Port::Loopback {
        return Ok(None);
    }
    Reflector::create(&namespace_name(), cell.port).map(Some)
}

/// The network namespace of this harness's `kern-` runs.
fn namespace_name() -> String {
    format!("vbench{}", std::process::id())
}

/// Runs `variant` of `cell` once.
pub fn run_one(s: &Settings, cell: &Cell, v: &Variant, rep: usize) -> Run {
    let t = tag(cell, v, rep);
    let sockets: Vec<PathBuf> = (0..cell.devices.max(1))
        .map(|i| s.work.join(format!("vhu{i}.sock")))
        .collect();
    let mut run = Run {
        cell: cell.id.clone(),
        variant: v.name.clone(),
        rep,
        started: machine::utc(std::time::SystemTime::now()),
        backend_cmd: backend_cmd(s, cell, v, &sockets),
        idle: cell.frontend == Frontend::TestpmdIdle,
        ..Default::default()
    };
    // The hog runs for the whole run, backend start to stop, so that neither side
    // gets a head start on a free CPU.
    let mut hog = if cell.hog {
        match start_hog(s, &t) {
            Ok(p) => Some(p),
            Err(e) => {
                run.error = Some(format!("{e:#}"));
                return run;
            }
        }
    } else {
        None
    };
    let steal0 = machine::steal_ticks();
    let (busy0, ours0, t0) = (
        machine::busy_seconds(),
        proc::own_and_children_cpu(),
        Instant::now(),
    );
    let result = kernel_side(cell).and_then(|ns| {
        let mut be = start_backend(s, cell, v, &sockets, ns.as_ref(), &t)?;
        let r = ns
            .as_ref()
            .map_or(Ok(()), |r| r.attach(Duration::from_secs(15)))
            .and_then(|()| drive(s, cell, &mut be, &sockets, &t, &mut run));
        if let BackendProc::Vdpad(d) = &be {
            run.counter_source = Some(d.counter_source().into());
        }
        let alive = be.proc_mut().running();
        be.stop();
        r.and_then(|()| {
            if alive {
                Ok(())
            } else {
                Err(anyhow!("the backend exited during the run"))
            }
        })
    });
    if let Some(p) = hog.as_mut() {
        p.stop(libc::SIGKILL, Duration::from_secs(2));
    }
    for socket in &sockets {
        let _ = std::fs::remove_file(socket);
    }
    let _ = std::fs::remove_file(s.work.join(format!("{t}.toml")));
    if let Err(e) = result {
        run.error = Some(format!("{e:#}"));
    }
    run.load1 = machine::loadavg()[0];
    run.steal_s = machine::steal_ticks().saturating_sub(steal0) as f64 / proc::clock_ticks();
    // Every child has been reaped here, so its CPU time is in RUSAGE_CHILDREN.
    let others = (machine::busy_seconds() - busy0) - (proc::own_and_children_cpu() - ours0);
    run.other_cpu = stats::ratio(others.max(0.0), t0.elapsed().as_secs_f64());
    run
}

/// Fills `run` with the window's figures from the two marks.
fn window(run: &mut Run, m0: &Mark, m1: &Mark, packets_fallback: f64) {
    let secs = m1.at.duration_since(m0.at).as_secs_f64();
    run.window_s = secs;
    let counters = match (m0.counters, m1.counters) {
        (Some(a), Some(b)) => Some(b.since(&a)),
        _ => None,
    };
    if let Some(c) = counters {
        run.vdpad = Some(c);
        run.pkts_per_kick = c.packets_per_kick();
        run.pkts_per_irq = c.packets_per_interrupt();
    }
    if let (Some(a), Some(b)) = (m0.cpu, m1.cpu) {
        let cpu = (b - a).max(0.0);
        run.backend_cpu_util = stats::ratio(cpu, secs);
        // vdpad's own count when we have it (0 when it moved nothing: no figure);
        // otherwise what the frontend measured over the window.
        let packets = counters.map_or(packets_fallback, |c| c.tx.packets as f64);
        run.backend_cpu_ns_per_pkt = stats::ratio(cpu * 1e9, packets);
    }
}

fn drive(
    s: &Settings,
    cell: &Cell,
    be: &mut BackendProc,
    sockets: &[PathBuf],
    t: &str,
    run: &mut Run,
) -> Result<()> {
    // The rig drives one device: the first.
    let socket = &sockets[0];
    match cell.frontend {
        Frontend::Testpmd | Frontend::TestpmdIdle => drive_testpmd(s, cell, be, sockets, t, run),
        Frontend::RigBench { poll } => {
            let secs = f64::from(s.seconds);
            let mut args = vec![
                "bench".into(),
                "--seconds".into(),
                secs.to_string(),
                "--size".into(),
                cell.size.to_string(),
            ];
            if poll {
                args.push("--poll".into());
            }
            let (v, m0, m1) = drive_rig(s, be, socket, t, run, args, secs, false)?;
            let mpps = v["mpps"]
                .as_f64()
                .ok_or_else(|| anyhow!("rig JSON has no mpps: {v}"))?;
            run.mpps = Some(mpps);
            run.gbps = Some(mpps * cell.size as f64 * 8.0 / 1e3);
            run.rig_pkts_per_kick = v["pkts_per_kick"].as_f64();
            run.rig_pkts_per_irq = v["pkts_per_interrupt"].as_f64();
            run.lost = v["lost"].as_u64();
            let secs = m1.at.duration_since(m0.at).as_secs_f64();
            window(run, &m0, &m1, mpps * 1e6 * secs);
            Ok(())
        }
        Frontend::RigLatency { poll } => {
            let secs = s.latency_seconds;
            let mut args = vec![
                "latency".into(),
                "--count".into(),
                "1000000000".into(),
                "--warmup".into(),
                "2000".into(),
                "--size".into(),
                cell.size.to_string(),
                "--seconds".into(),
                secs.to_string(),
            ];
            if poll {
                args.push("--poll".into());
            }
            let trace = s.breakdown && !poll;
            let (v, m0, m1) = drive_rig(s, be, socket, t, run, args, secs, trace)?;
            let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
            let count = v["count"].as_u64().unwrap_or(0);
            run.latency = Some(Latency {
                count,
                p50_us: f("p50_us"),
                p99_us: f("p99_us"),
                p999_us: f("p999_us"),
                mean_us: f("mean_us"),
            });
            let rate = stats::ratio(count as f64, f("seconds")).unwrap_or(0.0);
            run.mpps = Some(rate / 1e6);
            run.rig_pkts_per_kick =
                stats::ratio(count as f64, v["tx_kicks"].as_f64().unwrap_or(0.0));
            // With --poll the rig reads its call eventfds only at the end.
            run.rig_pkts_per_irq =
                stats::ratio(count as f64, v["rx_interrupts"].as_f64().unwrap_or(0.0))
                    .filter(|_| !poll);
            let secs = m1.at.duration_since(m0.at).as_secs_f64();
            window(run, &m0, &m1, rate * secs);
            Ok(())
        }
    }
}

/// Runs the rig (pinned to the frontend CPU) with `args` for about `secs` seconds,
/// marks the window inside its measured interval, and returns its JSON report. With
/// `trace`, half a second of the window is traced for [`Run::breakdown`].
#[allow(clippy::too_many_arguments)]
fn drive_rig(
    s: &Settings,
    be: &mut BackendProc,
    socket: &Path,
    t: &str,
    run: &mut Run,
    args: Vec<String>,
    secs: f64,
    trace: bool,
) -> Result<(Value, Mark, Mark)> {
    let mut all = vec![
        "--socket".to_string(),
        socket.display().to_string(),
        "--json".into(),
    ];
    all.extend(args);
    let out = s.logs.join(format!("{t}-fe.json"));
    let mut spawn = Spawn::new("vdpa-rig", &s.rig, all, &s.logs.join(format!("{t}-fe.log")));
    spawn.cpu = Some(s.fe_cpu);
    spawn.stdout = Some(out.clone());
    run.frontend_cmd = spawn.command_line();
    let start = Instant::now();
    let mut rig = spawn.start()?;
    // The window: after setup (a few ms) and inside the rig's own measured interval.
    let lead = (0.25 * secs).min(0.5);
    let trail = (0.1 * secs).min(0.25);
    let wait_until = |rig: &mut Proc, at: f64| -> Result<()> {
        let until = start + Duration::from_secs_f64(at);
        while Instant::now() < until {
            if proc::interrupted() {
                bail!("interrupted");
            }
            if !rig.running() {
                bail!(
                    "vdpa-rig exited early ({:?}):\n{}",
                    rig.try_wait(),
                    tail(rig.log(), 10)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    };
    wait_until(&mut rig, lead)?;
    let mut m0 = be.mark();
    // vdpad has no queue counters until the rig's setup has started the pair (a few
    // ms, but seconds on a loaded machine): start the window when they appear.
    while matches!(be, BackendProc::Vdpad(_))
        && m0.counters.is_none()
        && start.elapsed().as_secs_f64() < secs / 2.0
    {
        wait_until(&mut rig, start.elapsed().as_secs_f64() + 0.05)?;
        m0 = be.mark();
    }
    if trace {
        // The last half second before the window closes: the rig has long been past
        // its setup (slower against DPDK's backend) and its warm-up by then.
        let at = secs - trail - 0.7;
        if at < start.elapsed().as_secs_f64() {
            bail!("--breakdown needs a longer latency run (--latency-seconds 3 or more)");
        }
        wait_until(&mut rig, at)?;
        run.breakdown = Some(breakdown::trace(rig.pid(), be.proc_mut().pid(), 0.5)?);
    }
    wait_until(&mut rig, secs - trail)?;
    let m1 = be.mark();
    let limit = start + Duration::from_secs_f64(secs + 30.0);
    let status = loop {
        if let Some(st) = rig.wait_until(Instant::now() + Duration::from_millis(100)) {
            break st;
        }
        if proc::interrupted() || Instant::now() >= limit {
            rig.stop(libc::SIGKILL, Duration::from_secs(2));
            bail!("vdpa-rig did not finish within {:.0} s", secs + 30.0);
        }
    };
    if !status.success() {
        bail!("vdpa-rig failed ({status}):\n{}", tail(rig.log(), 10));
    }
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let v: Value = serde_json::from_str(text.trim())
        .with_context(|| format!("vdpa-rig printed no JSON report: {text:?}"))?;
    Ok((v, m0, m1))
}

/// Runs the testpmd frontend: io forwarding with one burst sent first, statistics every
/// second; the window spans the samples after the warm-up.
fn drive_testpmd(
    s: &Settings,
    cell: &Cell,
    be: &mut BackendProc,
    sockets: &[PathBuf],
    t: &str,
    run: &mut Run,
) -> Result<()> {
    let tp = Testpmd::virtio_user_frontend(
        sockets,
        s.fe_cpu,
        &format!("vbench{}fe", std::process::id()),
        s.memory,
        cell.size,
        cell.frontend == Frontend::Testpmd,
    );
    tp.cleanup();
    let spawn = tp.spawn(
        "dpdk-testpmd (virtio-user)",
        &s.testpmd,
        &s.logs.join(format!("{t}-fe.log")),
    );
    run.frontend_cmd = spawn.command_line();
    let warm = s.warmup as usize;
    let meas = s.seconds as usize;
    // Sample 0 is testpmd's first block, always 0 (no previous sample to diff).
    let (first, last) = (1 + warm, 1 + warm + meas);
    let limit = Instant::now() + Duration::from_secs(u64::from(s.warmup + s.seconds) + 40);
    let mut fe = spawn.start()?;
    let mut m0 = None;
    let result = loop {
        let log = std::fs::read(fe.log()).unwrap_or_default();
        let ports = u16::try_from(sockets.len()).unwrap_or(u16::MAX);
        let samples = testpmd::total_rx_pps_samples(&String::from_utf8_lossy(&log), ports);
        if m0.is_none() && samples.len() > warm {
            m0 = Some(be.mark());
        }
        if samples.len() > warm + meas {
            let m1 = be.mark();
            break Ok((samples, m1));
        }
        if !fe.running() {
            break Err(anyhow!(
                "the testpmd frontend exited after {} samples ({:?}):\n{}",
                samples.len(),
                fe.try_wait(),
                tail(fe.log(), 15)
            ));
        }
        if proc::interrupted() {
            break Err(anyhow!("interrupted"));
        }
        if Instant::now() >= limit {
            break Err(anyhow!(
                "the testpmd frontend printed {} of {last} samples in time",
                samples.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    fe.stop(libc::SIGINT, Duration::from_secs(5));
    tp.cleanup();
    let (samples, m1) = result?;
    let m0 = m0.expect("marked before the last sample");
    let kept: Vec<u64> = samples[first..last].to_vec();
    let f: Vec<f64> = kept.iter().map(|&x| x as f64).collect();
    let pps = stats::median(&f).unwrap_or(0.0);
    run.samples_pps = kept;
    run.mpps = Some(pps / 1e6);
    run.gbps = Some(pps * cell.size as f64 * 8.0 / 1e9);
    let secs = m1.at.duration_since(m0.at).as_secs_f64();
    window(run, &m0, &m1, pps * secs);
    if sockets.len() > 1 {
        // The counters are the first device's; the CPU is every device's.
        run.backend_cpu_ns_per_pkt = run
            .backend_cpu_util
            .and_then(|u| stats::ratio(u * secs * 1e9, pps * secs));
    }
    Ok(())
}
