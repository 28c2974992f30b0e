//! Where an interrupt-mode round trip spends its time (`--breakdown`).
//!
//! While a latency run is in its measured window, the kernel's tracer records half a
//! second of the scheduler's wake-up and switch events and of 8-byte `write`s (eventfd
//! signals: the rig's kick, the backend's call) on every CPU, in a tracefs instance of
//! the harness's own. Nothing reads the trace while it records (a reader such as
//! `perf record` would itself run on the rig's CPU and delay its wake-ups), and the
//! clock is the TSC, calibrated against CLOCK_MONOTONIC by two markers. Each round
//! trip of the rig is then cut into the segments that add up to it, by the kernel's
//! own timestamps:
//!
//! * **to the call**: from the rig being switched in to the backend's call `write`:
//!   the rig takes the frame and posts the next (kicking if asked), the backend
//!   notices it (a kick and a wake-up, or a poll) and forwards it;
//! * **call signal**: from that `write` to the rig's thread being woken
//!   (`eventfd_write` and the wake-up it does);
//! * **rig wake-up**: from woken to running on its CPU (an idle vCPU that halted
//!   needs an IPI through the hypervisor).
//!
//! Beside them: how long the rig itself ran per round trip, and, where the backend
//! slept between frames (vdpad notification-driven), the rig's kick `write` to the
//! backend thread being woken, woken to running, running to its call. Medians per
//! segment over the round trips traced.
//! Tracing costs time itself (each event is written to the buffer by the CPU that
//! has it): the table shows the traced round trip beside the untraced p50 of the same
//! runs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::runner::Run;
use crate::stats::median;

/// Medians of one traced window, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Breakdown {
    /// Round trips cut into segments.
    pub round_trips: u64,
    /// Median of the round trip as traced (switched in to switched in).
    pub traced_us: f64,
    /// From the rig being switched in to the backend's call `write`.
    pub to_call_us: f64,
    /// From the call `write` to the rig being woken.
    pub call_signal_us: f64,
    /// From the rig being woken to running.
    pub rig_wakeup_us: f64,
    /// The rig on its CPU, from switched in to asleep.
    pub rig_running_us: f64,
    /// Round trips in which a backend thread was woken by the rig's kick.
    pub backend_woken: u64,
    /// The rig's kick `write` to the backend thread being woken (those round trips).
    pub kick_signal_us: Option<f64>,
    /// The backend thread woken to running.
    pub backend_wakeup_us: Option<f64>,
    /// The backend thread running to its call `write`.
    pub backend_work_us: Option<f64>,
}

/// One traced event, timestamps in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Event {
    /// `tid` wrote 8 bytes (an eventfd signal).
    Signal { tid: u32, at: f64 },
    /// `pid` was woken.
    Waking { pid: u32, at: f64 },
    /// `prev` left the CPU (`sleeps`: not runnable any more), `next` got it.
    Switch {
        prev: u32,
        sleeps: bool,
        next: u32,
        at: f64,
    },
}

/// One line of a tracefs `trace` file: `comm-tid [cpu] flags timestamp: event: fields`
/// (the comm may hold spaces and dashes). Returns the tid, the raw timestamp, the
/// event name and its fields.
fn split_line(line: &str) -> Option<(u32, f64, &str, &str)> {
    let open = line.find(" [")?;
    let tid = line[..open].trim_end().rsplit_once('-')?.1.parse().ok()?;
    let rest = line[open + 2..].split_once("] ")?.1;
    let mut words = rest.splitn(3, ' ');
    let _flags = words.next()?;
    let ts = words.next()?.strip_suffix(':')?.parse().ok()?;
    let (event, fields) = words.next()?.split_once(": ")?;
    Some((tid, ts, event, fields))
}

/// The event of one trace line, its timestamp converted by `us` (raw → µs).
fn parse_line(line: &str, us: impl Fn(f64) -> f64) -> Option<Event> {
    let (tid, ts, event, fields) = split_line(line)?;
    let at = us(ts);
    let field = |key: &str| fields.split_whitespace().find_map(|w| w.strip_prefix(key));
    match event {
        // raw_syscalls:sys_enter, filtered to write(2): "NR n (fd, buf, count, ...)",
        // in hex. (The per-syscall events stay silent in tracefs on this kernel.)
        "sys_enter" => {
            let args = fields.strip_prefix(&format!("NR {WRITE_NR} ("))?;
            let count = args.split(", ").nth(2)?;
            let n = u64::from_str_radix(count, 16).ok()?;
            (n == 8).then_some(Event::Signal { tid, at })
        }
        "sched_waking" => Some(Event::Waking {
            pid: field("pid=")?.parse().ok()?,
            at,
        }),
        "sched_switch" => {
            let state = field("prev_state=")?;
            Some(Event::Switch {
                prev: field("prev_pid=")?.parse().ok()?,
                sleeps: !state.starts_with('R'),
                next: field("next_pid=")?.parse().ok()?,
                at,
            })
        }
        _ => None,
    }
}

/// The trace's clock against CLOCK_MONOTONIC, from the two markers the harness wrote
/// (`vdpa-bench mark NS`): a function from raw timestamps to µs.
fn calibration(text: &str) -> Option<impl Fn(f64) -> f64> {
    let marks: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let (_, ts, event, fields) = split_line(l)?;
            let ns: f64 = fields
                .strip_prefix("vdpa-bench mark ")?
                .trim()
                .parse()
                .ok()?;
            (event == "tracing_mark_write").then_some((ts, ns))
        })
        .collect();
    let (&(raw0, ns0), &(raw1, ns1)) = (marks.first()?, marks.last()?);
    if raw1 <= raw0 || ns1 <= ns0 {
        return None;
    }
    let scale = (ns1 - ns0) / 1e3 / (raw1 - raw0);
    Some(move |raw: f64| (raw - raw0) * scale)
}

/// Timestamps of the round trip being cut, from the rig's switch-in (`running`).
#[derive(Debug, Default)]
struct Trip {
    running: Option<f64>,
    kick: Option<f64>,
    asleep: Option<f64>,
    backend_woken: Option<(u32, f64)>,
    backend_running: Option<f64>,
    call: Option<f64>,
    woken: Option<f64>,
}

/// Segment samples, one per round trip (the backend's only where it was woken).
#[derive(Default)]
struct Samples {
    total: Vec<f64>,
    to_call: Vec<f64>,
    signal: Vec<f64>,
    wakeup: Vec<f64>,
    running: Vec<f64>,
    kick: Vec<f64>,
    be_wakeup: Vec<f64>,
    be_work: Vec<f64>,
}

impl Samples {
    /// Takes the trip that ends with the rig switched in again at `at`.
    fn take(&mut self, t: &Trip, at: f64) {
        let (Some(run), Some(asleep), Some(call), Some(woken)) =
            (t.running, t.asleep, t.call, t.woken)
        else {
            return;
        };
        self.total.push(at - run);
        self.to_call.push(call - run);
        self.signal.push(woken - call);
        self.wakeup.push(at - woken);
        self.running.push(asleep - run);
        if let (Some(kick), Some((_, bw)), Some(br)) = (t.kick, t.backend_woken, t.backend_running)
        {
            self.kick.push(bw - kick);
            self.be_wakeup.push(br - bw);
            self.be_work.push(call - br);
        }
    }

    fn medians(self) -> Breakdown {
        let med = |v: &[f64]| median(v).unwrap_or(0.0);
        Breakdown {
            round_trips: self.total.len() as u64,
            traced_us: med(&self.total),
            to_call_us: med(&self.to_call),
            call_signal_us: med(&self.signal),
            rig_wakeup_us: med(&self.wakeup),
            rig_running_us: med(&self.running),
            backend_woken: self.kick.len() as u64,
            kick_signal_us: median(&self.kick),
            backend_wakeup_us: median(&self.be_wakeup),
            backend_work_us: median(&self.be_work),
        }
    }
}

/// Cuts the round trips of the rig's threads (`rig`) against the backend's (`backend`)
/// out of time-ordered events. The backend's call and the rig's going to sleep race
/// (either may come first); a trip counts once the rig slept and was woken after the
/// call.
fn cut(events: &[Event], rig: &HashSet<u32>, backend: &HashSet<u32>) -> Breakdown {
    let mut t = Trip::default();
    let mut samples = Samples::default();
    for e in events {
        let started = t.running.is_some();
        match *e {
            Event::Signal { tid, at } if rig.contains(&tid) && started && t.asleep.is_none() => {
                t.kick.get_or_insert(at);
            }
            Event::Signal { tid, at } if backend.contains(&tid) && started => {
                t.call.get_or_insert(at);
            }
            Event::Waking { pid, at }
                if backend.contains(&pid) && t.call.is_none() && t.kick.is_some() =>
            {
                t.backend_woken = Some((pid, at));
            }
            Event::Waking { pid, at } if rig.contains(&pid) && t.asleep.is_some() => {
                if t.call.is_some() {
                    t.woken.get_or_insert(at);
                } else {
                    // Woken by something else than the backend's call (a timeout):
                    // not a round trip of the ping-pong.
                    t = Trip::default();
                }
            }
            Event::Switch { next, at, .. } if rig.contains(&next) => {
                samples.take(&t, at);
                t = Trip {
                    running: Some(at),
                    ..Trip::default()
                };
            }
            Event::Switch {
                prev,
                sleeps,
                next,
                at,
            } => {
                if rig.contains(&prev) && sleeps && started {
                    t.asleep.get_or_insert(at);
                }
                if t.backend_woken.is_some_and(|(p, _)| p == next) && t.call.is_none() {
                    t.backend_running = Some(at);
                }
            }
            _ => {}
        }
    }
    samples.medians()
}

/// The thread ids of process `pid`.
fn threads(pid: u32) -> HashSet<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

const TRACEFS: &str = "/sys/kernel/tracing";
/// write(2)'s number, as `raw_syscalls:sys_enter` reports it.
#[cfg(target_arch = "x86_64")]
const WRITE_NR: u32 = 1;
#[cfg(target_arch = "aarch64")]
const WRITE_NR: u32 = 64;
/// The events traced.
const EVENTS: [&str; 3] = [
    "sched/sched_waking",
    "sched/sched_switch",
    "raw_syscalls/sys_enter",
];

/// Fails with the fix when the kernel's tracer cannot be used here.
pub fn check_tracefs() -> Result<()> {
    let events = Path::new(TRACEFS).join("events");
    for e in EVENTS {
        if !events.join(e).is_dir() {
            bail!(
                "--breakdown needs the kernel's tracer: {} is missing (mount tracefs on \
                 {TRACEFS} as root)",
                events.join(e).display()
            );
        }
    }
    Ok(())
}

/// A tracefs instance of our own, removed on drop.
struct Instance(PathBuf);

impl Instance {
    fn new() -> Result<Self> {
        let dir = Path::new(TRACEFS)
            .join("instances")
            .join(format!("vdpa-bench-{}", std::process::id()));
        std::fs::create_dir(&dir)
            .with_context(|| format!("cannot create the trace instance {}", dir.display()))?;
        Ok(Self(dir))
    }

    fn set(&self, file: &str, value: &str) -> Result<()> {
        std::fs::write(self.0.join(file), value)
            .with_context(|| format!("cannot write {value:?} to {}", self.0.join(file).display()))
    }

    fn mark(&self) -> Result<()> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into the valid, exclusively
        // borrowed `ts`.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let ns = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
        self.set("trace_marker", &format!("vdpa-bench mark {ns}"))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.set("tracing_on", "0");
        let _ = self.set("events/enable", "0");
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Traces `secs` (at most half a second) of the rig (`rig_pid`) against the backend
/// (`backend_pid`) and cuts the round trips.
pub fn trace(rig_pid: u32, backend_pid: u32, secs: f64) -> Result<Breakdown> {
    let (rig, backend) = (threads(rig_pid), threads(backend_pid));
    if rig.is_empty() || backend.is_empty() {
        bail!("--breakdown: the rig ({rig_pid}) or the backend ({backend_pid}) is gone");
    }
    let inst = Instance::new()?;
    inst.set("tracing_on", "0")?;
    inst.set("buffer_size_kb", "32768")?;
    inst.set("trace_clock", "x86-tsc")
        .or_else(|_| inst.set("trace_clock", "mono"))?;
    // write(2) only; the 8-byte ones are picked out when the trace is read.
    inst.set(
        "events/raw_syscalls/sys_enter/filter",
        &format!("id == {WRITE_NR}"),
    )?;
    for e in EVENTS {
        inst.set(&format!("events/{e}/enable"), "1")?;
    }
    inst.set("tracing_on", "1")?;
    inst.mark()?;
    std::thread::sleep(Duration::from_secs_f64(secs.clamp(0.1, 0.5)));
    inst.mark()?;
    inst.set("tracing_on", "0")?;
    for cpu in std::fs::read_dir(inst.0.join("per_cpu"))?.flatten() {
        let stats = std::fs::read_to_string(cpu.path().join("stats")).unwrap_or_default();
        if let Some(n) = stats
            .lines()
            .find_map(|l| l.strip_prefix("overrun: "))
            .filter(|n| n.trim() != "0")
        {
            bail!(
                "--breakdown: the trace buffer of {} overran ({n} events lost)",
                cpu.file_name().to_string_lossy()
            );
        }
    }
    let text = std::fs::read_to_string(inst.0.join("trace")).context("read the trace")?;
    drop(inst);
    let us = calibration(&text)
        .ok_or_else(|| anyhow::anyhow!("--breakdown: the trace lacks the harness's two markers"))?;
    let events: Vec<Event> = text.lines().filter_map(|l| parse_line(l, &us)).collect();
    let b = cut(&events, &rig, &backend);
    if b.round_trips == 0 {
        bail!(
            "--breakdown: no round trip in {} traced events (rig threads {rig:?}, backend \
             threads {})",
            events.len(),
            backend.len()
        );
    }
    Ok(b)
}

/// Median over a variant's runs of each segment; one Markdown row per (cell,
/// variant) that has breakdowns.
pub fn table(runs: &[Run]) -> String {
    let mut keys: Vec<(&str, &str)> = runs
        .iter()
        .filter(|r| r.breakdown.is_some() && !r.discarded)
        .map(|r| (r.cell.as_str(), r.variant.as_str()))
        .collect();
    // Runs come interleaved (A B A B ...): one row per pair, in first-seen order.
    let mut seen = HashSet::new();
    keys.retain(|k| seen.insert(*k));
    if keys.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "| cell | variant | runs | p50 untraced | traced | to the call | call signal | rig wake-up | rig running | backend woken by kick | kick signal | backend wake-up | backend work |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (cell, variant) in keys {
        let bs: Vec<(&Run, Breakdown)> = runs
            .iter()
            .filter(|r| r.cell == cell && r.variant == variant && !r.discarded)
            .filter_map(|r| Some((r, r.breakdown?)))
            .collect();
        let col = |f: &dyn Fn(&(&Run, Breakdown)) -> Option<f64>| {
            let v: Vec<f64> = bs.iter().filter_map(f).collect();
            median(&v).map_or("-".into(), |m| format!("{m:.2}"))
        };
        let woken: u64 = bs.iter().map(|(_, b)| b.backend_woken).sum();
        let trips: u64 = bs.iter().map(|(_, b)| b.round_trips).sum();
        out += &format!(
            "| {cell} | {variant} | {} | {} | {} | {} | {} | {} | {} | {woken} of {trips} | {} | {} | {} |\n",
            bs.len(),
            col(&|(r, _)| r.latency.map(|l| l.p50_us)),
            col(&|(_, b)| Some(b.traced_us)),
            col(&|(_, b)| Some(b.to_call_us)),
            col(&|(_, b)| Some(b.call_signal_us)),
            col(&|(_, b)| Some(b.rig_wakeup_us)),
            col(&|(_, b)| Some(b.rig_running_us)),
            col(&|(_, b)| b.kick_signal_us),
            col(&|(_, b)| b.backend_wakeup_us),
            col(&|(_, b)| b.backend_work_us),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RIG: u32 = 100;
    const WORKER: u32 = 200;

    /// A tracefs line at `at_us` (µs on a clock in ns: raw = µs × 1000).
    fn line(comm: &str, tid: u32, at_us: f64, event: &str, fields: &str) -> String {
        format!(
            "{comm:>16}-{tid:<7} [001] d..2. {}: {event}: {fields}",
            (at_us * 1000.0) as u64
        )
    }

    fn sw(prev: u32, state: &str, next: u32) -> String {
        format!(
            "prev_comm=a b prev_pid={prev} prev_prio=120 prev_state={state} ==> \
             next_comm=c next_pid={next} next_prio=120"
        )
    }

    fn write8() -> String {
        format!("NR {WRITE_NR} (7, 7ffd13b7cc67, 8, 0, 0, 0)")
    }

    fn events(lines: &[String]) -> Vec<Event> {
        lines
            .iter()
            .filter_map(|l| parse_line(l, |raw| raw / 1000.0))
            .collect()
    }

    /// Two round trips: in the first the worker sleeps (kicked, woken) and calls after
    /// the rig slept; in the second it polls and calls before the rig gets to sleep.
    fn two_trips() -> Vec<String> {
        let waking = |pid: u32| format!("comm=x pid={pid} prio=120 target_cpu=000");
        vec![
            line("swapper/1", 0, 0.0, "sched_switch", &sw(0, "R", RIG)),
            line("vdpa-rig", RIG, 10.0, "sys_enter", &write8()),
            line("vdpa-rig", RIG, 14.0, "sched_waking", &waking(WORKER)),
            line("vdpa-rig", RIG, 20.0, "sched_switch", &sw(RIG, "S", 0)),
            line("swapper/0", 0, 30.0, "sched_switch", &sw(0, "R", WORKER)),
            line("vdpa-w 0", WORKER, 40.0, "sys_enter", &write8()),
            line("vdpa-w 0", WORKER, 45.0, "sched_waking", &waking(RIG)),
            line("swapper/1", 0, 65.0, "sched_switch", &sw(0, "R", RIG)),
            // Second trip: the call comes before the rig sleeps.
            line("vdpa-w 0", WORKER, 70.0, "sys_enter", &write8()),
            line("vdpa-rig", RIG, 72.0, "sched_switch", &sw(RIG, "S", 0)),
            line("vdpa-w 0", WORKER, 73.0, "sched_waking", &waking(RIG)),
            line("swapper/1", 0, 85.0, "sched_switch", &sw(0, "R", RIG)),
        ]
    }

    #[test]
    fn round_trips_are_cut_into_their_segments() {
        let ev = events(&two_trips());
        assert_eq!(ev.len(), 12);
        let b = cut(&ev, &HashSet::from([RIG]), &HashSet::from([WORKER]));
        assert_eq!(b.round_trips, 2);
        assert_eq!(b.backend_woken, 1);
        let near = |a: f64, b: f64| (a - b).abs() < 0.01;
        // Trip 1: to the call 40, signal 5, wake-up 20 = 65, running 20; trip 2: 5, 3,
        // 12 = 20, running 7. The median of two is their mean.
        assert!(near(b.traced_us, 42.5), "{b:?}");
        assert!(near(b.to_call_us, 22.5), "{b:?}");
        assert!(near(b.call_signal_us, 4.0), "{b:?}");
        assert!(near(b.rig_wakeup_us, 16.0), "{b:?}");
        assert!(near(b.rig_running_us, 13.5), "{b:?}");
        assert!(near(b.kick_signal_us.unwrap(), 4.0), "{b:?}");
        assert!(near(b.backend_wakeup_us.unwrap(), 16.0), "{b:?}");
        assert!(near(b.backend_work_us.unwrap(), 10.0), "{b:?}");
    }

    #[test]
    fn a_wakeup_without_a_call_is_not_a_round_trip() {
        let ev = events(&[
            line("swapper/1", 0, 0.0, "sched_switch", &sw(0, "R", RIG)),
            line("vdpa-rig", RIG, 10.0, "sched_switch", &sw(RIG, "S", 0)),
            line("ktimer", 9, 20.0, "sched_waking", &format!("pid={RIG}")),
            line("swapper/1", 0, 30.0, "sched_switch", &sw(0, "R", RIG)),
        ]);
        let b = cut(&ev, &HashSet::from([RIG]), &HashSet::from([WORKER]));
        assert_eq!(b.round_trips, 0);
    }

    #[test]
    fn lines_are_read_with_dashed_comms_and_only_eight_byte_writes_signal() {
        let l = format!(
            "    rte-worker-1-30556   [000] d..2. 73080801882867: sys_enter: \
             NR {WRITE_NR} (1e, 7f0f716fb868, 8, 0, 7, 73)"
        );
        assert_eq!(
            parse_line(&l, |raw| raw),
            Some(Event::Signal {
                tid: 30556,
                at: 73080801882867.0
            })
        );
        let l = l.replace(", 8, ", ", 40, ");
        assert_eq!(parse_line(&l, |raw| raw), None);
    }

    #[test]
    fn interleaved_runs_make_one_row_per_variant() {
        let run = |variant: &str, rep: usize, traced_us: f64| Run {
            cell: "lat-64".into(),
            variant: variant.into(),
            rep,
            breakdown: Some(Breakdown {
                round_trips: 10,
                traced_us,
                ..Breakdown::default()
            }),
            ..Run::default()
        };
        let runs = [
            run("A", 0, 10.0),
            run("B", 0, 20.0),
            run("A", 1, 12.0),
            run("B", 1, 22.0),
            run("A", 2, 14.0),
        ];
        let t = table(&runs);
        let rows: Vec<&str> = t.lines().filter(|l| l.starts_with("| lat-64")).collect();
        assert_eq!(rows.len(), 2, "{t}");
        assert!(rows[0].starts_with("| lat-64 | A | 3 | - | 12.00 |"), "{t}");
        assert!(rows[1].starts_with("| lat-64 | B | 2 | - | 21.00 |"), "{t}");
        assert!(rows[1].contains("| 0 of 20 |"), "{t}");
    }

    #[test]
    fn the_clock_is_calibrated_by_the_two_marks() {
        let text = [
            "  bench-7 [000] ...1. 1000: tracing_mark_write: vdpa-bench mark 5000000",
            "  bench-7 [000] ...1. 3000: tracing_mark_write: vdpa-bench mark 6000000",
        ]
        .join("\n");
        // 2000 raw units are 1 ms: a raw unit is 0.5 µs.
        let us = calibration(&text).expect("two marks");
        assert!((us(3000.0) - 1000.0).abs() < 1e-9);
        assert!((us(1002.0) - 1.0).abs() < 1e-9);
        assert!(calibration("nothing").is_none());
    }
}
