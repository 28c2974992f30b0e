//! Where an interrupt-mode round trip spends its time (`--breakdown`).
//!
//! While a latency run is in its measured window, `perf record` takes one second of
//! the scheduler's wake-up and switch events and of 8-byte `write`s (eventfd signals:
//! the rig's kick, the backend's call) on every CPU. Each round trip of the rig is
//! then cut into the segments that add up to it, by the kernel's own timestamps:
//!
//! * **rig**: the rig runs (reads the frame, posts the next, kicks) until it sleeps;
//! * **backend**: from the rig sleeping to the backend's call `write`: noticing the
//!   frame (a kick and a wake-up, or a poll) and forwarding it;
//! * **call signal**: from that `write` to the rig's thread being woken
//!   (`eventfd_write` and the wake-up it does);
//! * **rig wake-up**: from woken to running on its CPU (an idle vCPU that halted
//!   needs an IPI through the hypervisor).
//!
//! Where the backend sleeps between frames (vdpad notification-driven), the backend
//! segment is cut further: the rig's kick `write` to the worker being woken, woken to
//! running, running to its call. Medians per segment over the round trips traced.
//! Tracing costs time itself: the traced round trip is longer than the untraced one
//! the same run reports, and the table shows both.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::runner::Run;

/// Medians of one traced window, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Breakdown {
    /// Round trips cut into segments.
    pub round_trips: u64,
    /// Median of the segments' sum: the traced round trip.
    pub traced_us: f64,
    /// The rig running, from being switched in to sleeping.
    pub rig_us: f64,
    /// From the rig sleeping to the backend's call `write`.
    pub backend_us: f64,
    /// From the call `write` to the rig being woken.
    pub call_signal_us: f64,
    /// From the rig being woken to running.
    pub rig_wakeup_us: f64,
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

/// Parses one line of `perf script -F tid,time,event,trace`.
fn parse_line(line: &str) -> Option<Event> {
    let mut words = line.split_whitespace();
    let tid: u32 = words.next()?.parse().ok()?;
    let at = words.next()?.strip_suffix(':')?.parse::<f64>().ok()? * 1e6;
    let event = words.next()?.strip_suffix(':')?;
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(|v| v.trim_end_matches(','))
    };
    match event {
        "syscalls:sys_enter_write" => {
            let count = line.split("count: ").nth(1)?.split_whitespace().next()?;
            let n = u64::from_str_radix(count.trim_start_matches("0x"), 16).ok()?;
            (n == 8).then_some(Event::Signal { tid, at })
        }
        "sched:sched_waking" => Some(Event::Waking {
            pid: field("pid=")?.parse().ok()?,
            at,
        }),
        "sched:sched_switch" => Some(Event::Switch {
            prev: field("prev_pid=")?.parse().ok()?,
            sleeps: field("prev_state=")? != "R" && field("prev_state=")? != "R+",
            next: field("next_pid=")?.parse().ok()?,
            at,
        }),
        _ => None,
    }
}

/// Timestamps of the round trip being cut.
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

/// Cuts the round trips of the rig's threads (`rig`) against the backend's (`backend`)
/// out of time-ordered events.
fn cut(events: &[Event], rig: &HashSet<u32>, backend: &HashSet<u32>) -> Breakdown {
    let mut t = Trip::default();
    let (mut rig_us, mut be, mut sig, mut wake, mut total) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut kick_sig, mut be_wake, mut be_work) = (vec![], vec![], vec![]);
    for e in events {
        match *e {
            Event::Signal { tid, at } if rig.contains(&tid) && t.asleep.is_none() => {
                t.kick = Some(at);
            }
            Event::Switch {
                prev, sleeps, at, ..
            } if rig.contains(&prev) && sleeps && t.running.is_some() => {
                t.asleep = Some(at);
            }
            Event::Waking { pid, at }
                if backend.contains(&pid) && t.kick.is_some() && t.call.is_none() =>
            {
                t.backend_woken = Some((pid, at));
            }
            Event::Switch { next, at, .. }
                if t.backend_woken.is_some_and(|(p, _)| p == next) && t.call.is_none() =>
            {
                t.backend_running = Some(at);
            }
            Event::Signal { tid, at }
                if backend.contains(&tid) && t.asleep.is_some() && t.call.is_none() =>
            {
                t.call = Some(at);
            }
            Event::Waking { pid, at } if rig.contains(&pid) && t.asleep.is_some() => {
                // Woken by something else than the backend's call (a timeout): not a
                // round trip of the ping-pong.
                if t.call.is_none() {
                    t = Trip::default();
                } else {
                    t.woken = Some(at);
                }
            }
            Event::Switch { next, at, .. } if rig.contains(&next) => {
                if let (Some(run), Some(asleep), Some(call), Some(woken)) =
                    (t.running, t.asleep, t.call, t.woken)
                {
                    rig_us.push(asleep - run);
                    be.push(call - asleep);
                    sig.push(woken - call);
                    wake.push(at - woken);
                    total.push(at - run);
                    if let (Some(kick), Some((_, bw)), Some(br)) =
                        (t.kick, t.backend_woken, t.backend_running)
                    {
                        kick_sig.push(bw - kick);
                        be_wake.push(br - bw);
                        be_work.push(call - br);
                    }
                }
                t = Trip {
                    running: Some(at),
                    ..Trip::default()
                };
            }
            _ => {}
        }
    }
    let med = |v: &mut Vec<f64>| median(v).unwrap_or(0.0);
    Breakdown {
        round_trips: total.len() as u64,
        traced_us: med(&mut total),
        rig_us: med(&mut rig_us),
        backend_us: med(&mut be),
        call_signal_us: med(&mut sig),
        rig_wakeup_us: med(&mut wake),
        backend_woken: kick_sig.len() as u64,
        kick_signal_us: median(&mut kick_sig),
        backend_wakeup_us: median(&mut be_wake),
        backend_work_us: median(&mut be_work),
    }
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
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

/// Fails with the fix when `perf` cannot trace here.
pub fn check_perf() -> Result<()> {
    let out = Command::new("perf")
        .args(["list", "sched:sched_waking"])
        .output()
        .context("--breakdown needs perf (apt-get install linux-perf)")?;
    if !String::from_utf8_lossy(&out.stdout).contains("sched:sched_waking") {
        bail!(
            "--breakdown: perf cannot see the sched tracepoints (tracefs not mounted, or not root)"
        );
    }
    Ok(())
}

/// Traces `secs` of the rig (`rig_pid`) against the backend (`backend_pid`), keeping
/// perf's data in `data`, and cuts the round trips.
pub fn trace(rig_pid: u32, backend_pid: u32, secs: f64, data: &Path) -> Result<Breakdown> {
    let (rig, backend) = (threads(rig_pid), threads(backend_pid));
    if rig.is_empty() || backend.is_empty() {
        bail!("--breakdown: the rig ({rig_pid}) or the backend ({backend_pid}) is gone");
    }
    let secs = format!("{:.2}", secs.clamp(0.2, 1.0));
    let rec = Command::new("perf")
        .args(["record", "-q", "-a", "-o"])
        .arg(data)
        .args([
            "-e",
            "sched:sched_waking",
            "-e",
            "sched:sched_switch",
            "-e",
            "syscalls:sys_enter_write",
            "--filter",
            "count == 8",
            "--",
            "sleep",
            &secs,
        ])
        .output()
        .context("run perf record")?;
    if !rec.status.success() {
        bail!(
            "perf record failed ({}): {}",
            rec.status,
            String::from_utf8_lossy(&rec.stderr).trim()
        );
    }
    let script = Command::new("perf")
        .args(["script", "-F", "tid,time,event,trace", "-i"])
        .arg(data)
        .output()
        .context("run perf script")?;
    if !script.status.success() {
        bail!(
            "perf script failed ({}): {}",
            script.status,
            String::from_utf8_lossy(&script.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&script.stdout);
    let events: Vec<Event> = text.lines().filter_map(parse_line).collect();
    let b = cut(&events, &rig, &backend);
    if b.round_trips == 0 {
        bail!(
            "--breakdown: no round trip in {} traced events (rig threads {rig:?}, backend \
             threads {}); kept in {}",
            events.len(),
            backend.len(),
            data.display()
        );
    }
    Ok(b)
}

/// Median over a variant's runs of each segment; one row per (cell, variant) that has
/// breakdowns.
pub fn table(runs: &[Run]) -> String {
    let mut keys: Vec<(&str, &str)> = runs
        .iter()
        .filter(|r| r.breakdown.is_some() && !r.discarded)
        .map(|r| (r.cell.as_str(), r.variant.as_str()))
        .collect();
    keys.dedup();
    if keys.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "| cell | variant | runs | p50 untraced | traced | rig | backend | call signal | rig wake-up | backend woken by kick | kick signal | backend wake-up | backend work |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (cell, variant) in keys {
        let bs: Vec<(&Run, Breakdown)> = runs
            .iter()
            .filter(|r| r.cell == cell && r.variant == variant && !r.discarded)
            .filter_map(|r| Some((r, r.breakdown?)))
            .collect();
        let col = |f: &dyn Fn(&(&Run, Breakdown)) -> Option<f64>| {
            let mut v: Vec<f64> = bs.iter().filter_map(f).collect();
            median(&mut v).map_or("-".into(), |m| format!("{m:.1}"))
        };
        let woken: u64 = bs.iter().map(|(_, b)| b.backend_woken).sum();
        let trips: u64 = bs.iter().map(|(_, b)| b.round_trips).sum();
        out += &format!(
            "| {cell} | {variant} | {} | {} | {} | {} | {} | {} | {} | {woken} of {trips} | {} | {} | {} |\n",
            bs.len(),
            col(&|(r, _)| r.latency.map(|l| l.p50_us)),
            col(&|(_, b)| Some(b.traced_us)),
            col(&|(_, b)| Some(b.rig_us)),
            col(&|(_, b)| Some(b.backend_us)),
            col(&|(_, b)| Some(b.call_signal_us)),
            col(&|(_, b)| Some(b.rig_wakeup_us)),
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

    fn line(tid: u32, at_s: f64, event: &str, trace: &str) -> String {
        format!("{tid:>8} {at_s:.6}: {event:>28}: {trace}")
    }

    /// Two round trips: the first with the worker asleep (kicked and woken), the
    /// second with it polling (no kick, no wake-up).
    fn script() -> String {
        let sw = |prev: u32, state: &str, next: u32| {
            format!(
                "prev_comm=a b prev_pid={prev} prev_prio=120 prev_state={state} ==> \
                 next_comm=c next_pid={next} next_prio=120"
            )
        };
        let wr = "fd: 0x00000007, buf: 0x7ffd13b7cc67, count: 0x00000008";
        [
            line(0, 1.000000, "sched:sched_switch", &sw(0, "R", RIG)),
            line(RIG, 1.000010, "syscalls:sys_enter_write", wr),
            line(
                RIG,
                1.000014,
                "sched:sched_waking",
                &format!("comm=w pid={WORKER} prio=120 target_cpu=000"),
            ),
            line(RIG, 1.000020, "sched:sched_switch", &sw(RIG, "S", 0)),
            line(0, 1.000030, "sched:sched_switch", &sw(0, "R", WORKER)),
            line(WORKER, 1.000040, "syscalls:sys_enter_write", wr),
            line(
                WORKER,
                1.000045,
                "sched:sched_waking",
                &format!("comm=r pid={RIG} prio=120 target_cpu=001"),
            ),
            line(0, 1.000065, "sched:sched_switch", &sw(0, "R", RIG)),
            // Second trip: the worker polls.
            line(RIG, 1.000075, "sched:sched_switch", &sw(RIG, "S", 0)),
            line(WORKER, 1.000080, "syscalls:sys_enter_write", wr),
            line(
                WORKER,
                1.000090,
                "sched:sched_waking",
                &format!("comm=r pid={RIG} prio=120 target_cpu=001"),
            ),
            line(0, 1.000100, "sched:sched_switch", &sw(0, "R", RIG)),
        ]
        .join("\n")
    }

    #[test]
    fn round_trips_are_cut_into_their_segments() {
        let events: Vec<Event> = script().lines().filter_map(parse_line).collect();
        assert_eq!(events.len(), 12);
        let b = cut(&events, &HashSet::from([RIG]), &HashSet::from([WORKER]));
        assert_eq!(b.round_trips, 2);
        assert_eq!(b.backend_woken, 1);
        let near = |a: f64, b: f64| (a - b).abs() < 0.01;
        // Trip 1: rig 20, backend 20, signal 5, wake-up 20 = 65; trip 2: 10, 5, 10,
        // 10 = 35. Medians of two take the larger.
        assert!(near(b.traced_us, 65.0), "{b:?}");
        assert!(near(b.rig_us, 20.0), "{b:?}");
        assert!(near(b.backend_us, 20.0), "{b:?}");
        assert!(near(b.call_signal_us, 10.0), "{b:?}");
        assert!(near(b.rig_wakeup_us, 20.0), "{b:?}");
        assert!(near(b.kick_signal_us.unwrap(), 4.0), "{b:?}");
        assert!(near(b.backend_wakeup_us.unwrap(), 16.0), "{b:?}");
        assert!(near(b.backend_work_us.unwrap(), 10.0), "{b:?}");
    }

    #[test]
    fn a_wakeup_without_a_call_is_not_a_round_trip() {
        let sw = |prev: u32, next: u32| format!("prev_pid={prev} prev_state=S ==> next_pid={next}");
        let text = [
            line(0, 1.0, "sched:sched_switch", &sw(0, RIG)),
            line(RIG, 1.00001, "sched:sched_switch", &sw(RIG, 0)),
            line(0, 1.00002, "sched:sched_waking", &format!("pid={RIG}")),
            line(0, 1.00003, "sched:sched_switch", &sw(0, RIG)),
        ]
        .join("\n");
        let events: Vec<Event> = text.lines().filter_map(parse_line).collect();
        let b = cut(&events, &HashSet::from([RIG]), &HashSet::from([WORKER]));
        assert_eq!(b.round_trips, 0);
    }

    #[test]
    fn only_eight_byte_writes_are_signals() {
        let l = line(
            RIG,
            2.0,
            "syscalls:sys_enter_write",
            "fd: 0x3, buf: 0x1, count: 0x00000040",
        );
        assert_eq!(parse_line(&l), None);
        let l = line(
            RIG,
            2.0,
            "syscalls:sys_enter_write",
            "fd: 0x3, buf: 0x1, count: 0x00000008",
        );
        assert_eq!(parse_line(&l), Some(Event::Signal { tid: RIG, at: 2e6 }));
    }
}
