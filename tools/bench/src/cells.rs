//! What is measured: cells (a frontend, a workload, a frame size) and, per cell, the
//! variants that are run interleaved (A = DPDK's vhost library, B = vdpad; or several
//! vdpad configurations for the seed's questions).

use serde::Serialize;

use crate::netlab::Port;
use crate::vdpad::TuningOverrides;

/// The vhost-user frontend that plays the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Frontend {
    /// `dpdk-testpmd --vdev net_virtio_user0`, io forwarding, `--tx-first`: polls, and
    /// kicks only when the backend asks.
    Testpmd,
    /// The same testpmd without `--tx-first`: it polls its rings but never sends (an
    /// idle VM); what is measured is the backend's CPU.
    TestpmdIdle,
    /// `vdpa-rig bench`: keeps TX full and RX refilled; NAPI-like interrupts unless
    /// `poll`.
    RigBench {
        /// `--poll`: never sleep, never re-enable interrupts.
        poll: bool,
    },
    /// `vdpa-rig latency`: one frame in flight, ping-pong.
    RigLatency {
        /// `--poll`: spin on the RX ring instead of sleeping on its call eventfd.
        poll: bool,
    },
}

impl Frontend {
    /// Short description for tables.
    pub fn describe(&self) -> &'static str {
        match self {
            Frontend::Testpmd => "testpmd virtio-user io fwd",
            Frontend::TestpmdIdle => "testpmd virtio-user, nothing sent",
            Frontend::RigBench { poll: false } => "vdpa-rig bench (interrupts)",
            Frontend::RigBench { poll: true } => "vdpa-rig bench --poll",
            Frontend::RigLatency { poll: false } => "vdpa-rig latency (interrupts)",
            Frontend::RigLatency { poll: true } => "vdpa-rig latency --poll",
        }
    }

    /// Whether the cell measures latency rather than throughput.
    pub fn is_latency(&self) -> bool {
        matches!(self, Frontend::RigLatency { .. })
    }
}

/// Which backend serves the socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VhostBackend {
    /// A: `dpdk-testpmd --vdev net_vhost0`, io forwarding in loop topology.
    Dpdk,
    /// B: `vdpad` with a loopback device per port and this tuning.
    Vdpad(TuningOverrides),
}

/// One configuration run in a cell.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    /// Name in tables and files (`A`, `B`, `event_idx=off,burst=8`, ...).
    pub name: String,
    /// The backend.
    pub backend: VhostBackend,
}

/// Main cells compare A with B; seed cells compare vdpad configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// A/B: DPDK vs vdpad.
    Main,
    /// The seed thread's questions (vdpad only).
    Seed,
}

/// One cell of the benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// Stable identifier (`tp-64`, `seed-notify`, ...).
    pub id: String,
    /// Main or seed.
    pub group: Group,
    /// What it answers, in words.
    pub title: String,
    /// The frontend.
    pub frontend: Frontend,
    /// Frame size (L2 bytes, without FCS).
    pub size: usize,
    /// Variants, run in this order within each repetition.
    pub variants: Vec<Variant>,
    /// A CPU hog (`sh -c 'while :; do :; done'`) shares the backend's CPU during every
    /// variant: what a backend keeps when a vCPU thread or another job wants its core.
    pub hog: bool,
    /// Devices (vhost-user ports) served from the one backend CPU, each with one queue
    /// pair; the frontend drives them all from its one CPU and the rate is their sum.
    pub devices: usize,
    /// What the backend forwards to (both A and B the same kind).
    pub port: Port,
}

/// vdpad's busy-poll budget for B in the A/B cells: DPDK's vhost PMD polls all the
/// time, so B polls (`polling = "fixed"`) for this many microseconds after the rings go
/// idle (`--b-busy-poll-us 0` measures vdpad's defaults, adaptive polling, instead).
pub const B_BUSY_POLL_US: u32 = 200;

fn ab(b_busy_poll_us: u32) -> Vec<Variant> {
    let tuning = if b_busy_poll_us > 0 {
        fixed_polling(b_busy_poll_us)
    } else {
        TuningOverrides::default()
    };
    vec![
        Variant {
            name: "A".into(),
            backend: VhostBackend::Dpdk,
        },
        Variant {
            name: "B".into(),
            backend: VhostBackend::Vdpad(tuning),
        },
    ]
}

fn main_cell(id: &str, frontend: Frontend, size: usize, b_busy_poll_us: u32) -> Cell {
    let what = if frontend.is_latency() {
        "round-trip latency, one frame in flight"
    } else {
        "throughput, one queue pair"
    };
    Cell {
        id: id.into(),
        group: Group::Main,
        title: format!("{what}: {}, {size} B", frontend.describe()),
        frontend,
        size,
        variants: ab(b_busy_poll_us),
        hog: false,
        devices: 1,
        port: Port::Loopback,
    }
}

/// B without any tuning: what a user who installs vdpad and compares it gets.
fn defaults_cell(id: &str, frontend: Frontend, size: usize) -> Cell {
    let mut c = main_cell(id, frontend, size, 0);
    c.title = format!("{}; vdpad defaults", c.title);
    c
}

/// A and B with a CPU hog on the backend CPU; B polls as `mode` says.
fn contention_cell(id: &str, mode: &str, b_busy_poll_us: u32) -> Cell {
    let mut c = main_cell(id, Frontend::Testpmd, 64, b_busy_poll_us);
    c.title = format!("{}; a CPU hog on the backend CPU; vdpad {mode}", c.title);
    c.hog = true;
    c
}

/// The cells beside the tuned A/B cells: vdpad's defaults (`dflt-`), the backend
/// CPU shared with a hog (`contend-`: vdpad's defaults, fixed 200 µs polling, and
/// notifications only), and notifications only without the hog (`quiet-notify-`).
pub fn defaults_and_contention_cells() -> Vec<Cell> {
    let mut v = Vec::new();
    for size in [64, 1518] {
        v.push(defaults_cell(
            &format!("dflt-tp-{size}"),
            Frontend::Testpmd,
            size,
        ));
        v.push(defaults_cell(
            &format!("dflt-rig-{size}"),
            Frontend::RigBench { poll: false },
            size,
        ));
    }
    v.push(defaults_cell(
        "dflt-lat-64",
        Frontend::RigLatency { poll: false },
        64,
    ));
    v.push(contention_cell(
        "contend-tp-64",
        "defaults (adaptive polling)",
        0,
    ));
    v.push(contention_cell(
        "contend-fixed-tp-64",
        "polling = \"fixed\", busy_poll_us = 200",
        B_BUSY_POLL_US,
    ));
    let mut notify = contention_cell(
        "contend-notify-tp-64",
        "notifications only (fixed, busy_poll_us = 0)",
        0,
    );
    notify.variants[1].backend = VhostBackend::Vdpad(fixed_polling(0));
    // The same mode without the hog: what the notifications-only mode keeps of its
    // own quiet rate.
    let mut quiet = notify.clone();
    quiet.id = "quiet-notify-tp-64".into();
    quiet.hog = false;
    quiet.title = format!(
        "{}; vdpad notifications only (fixed, busy_poll_us = 0), no hog",
        main_cell("", Frontend::Testpmd, 64, 0).title
    );
    v.push(notify);
    v.push(quiet);
    v
}

/// DPDK, vdpad's defaults, then `more` vdpad settings: the variants of the cells that
/// compare polling choices with many devices.
fn dpdk_and_defaults_and<const N: usize>(more: [Variant; N]) -> Vec<Variant> {
    let mut v = vec![
        Variant {
            name: "A (DPDK)".into(),
            backend: VhostBackend::Dpdk,
        },
        vdpad("vdpad defaults".into(), TuningOverrides::default()),
    ];
    v.extend(more);
    v
}

/// Device counts of the `scale-` and `idle-` cells.
pub const SCALE_DEVICES: [usize; 3] = [1, 4, 16];

/// Many devices on one backend CPU: `scale-N` (N ports, 64-byte frames, aggregate
/// rate; B with vdpad's defaults) and `idle-N` (N ports connected, nothing sent: the
/// backend CPU it costs, A's polling beside vdpad's defaults and its fixed 200 µs
/// polling).
pub fn scale_cells() -> Vec<Cell> {
    let mut v = Vec::new();
    for n in SCALE_DEVICES {
        let mut c = defaults_cell(&format!("scale-{n}"), Frontend::Testpmd, 64);
        c.title = format!(
            "aggregate throughput of {n} device(s), one queue pair each, on one backend CPU: \
             {}, 64 B; vdpad defaults",
            Frontend::Testpmd.describe()
        );
        c.devices = n;
        v.push(c);
    }
    // What polling costs when 16 workers share the CPU: a shorter adaptive ceiling,
    // and no polling at all, beside the defaults and DPDK.
    let mut polling = seed(
        "scale-16-polling",
        "aggregate throughput of 16 devices on one backend CPU by vdpad polling mode",
        Frontend::Testpmd,
        64,
        dpdk_and_defaults_and([
            vdpad(
                "adaptive, busy_poll_us=25".into(),
                TuningOverrides {
                    busy_poll_us: Some(25),
                    ..Default::default()
                },
            ),
            vdpad("notifications only".into(), fixed_polling(0)),
        ]),
    );
    polling.devices = 16;
    v.push(polling);
    // One thread per CPU serving every device's pair in turn, beside a thread per pair.
    for n in [4, 16] {
        let mut c = seed(
            &format!("scale-{n}-workers"),
            &format!(
                "aggregate throughput of {n} devices on one backend CPU: a worker thread \
                 per pair (defaults) or one per CPU (workers = \"per-cpu\")"
            ),
            Frontend::Testpmd,
            64,
            dpdk_and_defaults_and([vdpad(
                "vdpad workers=per-cpu".into(),
                TuningOverrides {
                    workers: Some("per-cpu"),
                    ..Default::default()
                },
            )]),
        );
        c.devices = n;
        v.push(c);
    }
    for n in [1, 16] {
        let mut c = seed(
            &format!("idle-{n}"),
            &format!("{n} idle device(s) on one backend CPU: backend CPU with nothing sent"),
            Frontend::TestpmdIdle,
            64,
            dpdk_and_defaults_and([vdpad(
                format!("vdpad busy_poll_us={B_BUSY_POLL_US}"),
                fixed_polling(B_BUSY_POLL_US),
            )]),
        );
        c.devices = n;
        v.push(c);
    }
    v
}

/// Real backends side by side (`kern-tap-`, `kern-afp-` at 64 and 1518 B): vdpad's
/// `tap` and `af_packet` with its defaults against testpmd's vhost port forwarding to
/// `net_tap` / `net_af_packet` on the same kind of interface, which a tc reflector
/// turns around ([`crate::netlab`]). The frontend is the polling rig, so that it is
/// never the limit and drops on the kernel path cost nothing but their frames.
pub fn kernel_cells() -> Vec<Cell> {
    let mut v = Vec::new();
    for (port, tag) in [(Port::Tap, "tap"), (Port::AfPacket, "afp")] {
        for size in [64, 1518] {
            let frontend = Frontend::RigBench { poll: true };
            let mut c = defaults_cell(&format!("kern-{tag}-{size}"), frontend, size);
            c.title = format!(
                "throughput through the kernel, one queue pair: {}, {size} B, {}; vdpad defaults",
                frontend.describe(),
                port.describe()
            );
            c.port = port;
            v.push(c);
        }
    }
    v
}

/// The A/B cells: testpmd and the rig (interrupts, and polling) at 64 and 1518 bytes,
/// and latency (interrupts, and polling) at 64 bytes; B with `b_busy_poll_us`.
pub fn main_cells(b_busy_poll_us: u32) -> Vec<Cell> {
    let mut v = Vec::new();
    for size in [64, 1518] {
        v.push(main_cell(
            &format!("tp-{size}"),
            Frontend::Testpmd,
            size,
            b_busy_poll_us,
        ));
        v.push(main_cell(
            &format!("rig-{size}"),
            Frontend::RigBench { poll: false },
            size,
            b_busy_poll_us,
        ));
        v.push(main_cell(
            &format!("rigpoll-{size}"),
            Frontend::RigBench { poll: true },
            size,
            b_busy_poll_us,
        ));
    }
    v.push(main_cell(
        "lat-64",
        Frontend::RigLatency { poll: false },
        64,
        b_busy_poll_us,
    ));
    v.push(main_cell(
        "latpoll-64",
        Frontend::RigLatency { poll: true },
        64,
        b_busy_poll_us,
    ));
    v
}

fn vdpad(name: String, t: TuningOverrides) -> Variant {
    Variant {
        name,
        backend: VhostBackend::Vdpad(t),
    }
}

/// Coalescing settings compared: off, and RX interrupts held for up to 32 frames or
/// 20 µs, or 100 µs.
fn coalesce_variants() -> Vec<Variant> {
    let mut v = vec![vdpad(
        "coalesce=off".into(),
        TuningOverrides {
            rx_coalesce_frames: Some(0),
            rx_coalesce_usecs: Some(0),
            ..Default::default()
        },
    )];
    for us in [20, 100] {
        v.push(vdpad(
            format!("frames=32,usecs={us}"),
            TuningOverrides {
                rx_coalesce_frames: Some(32),
                rx_coalesce_usecs: Some(us),
                ..Default::default()
            },
        ));
    }
    v
}

/// `polling = "fixed"` with a budget of `us`.
fn fixed_polling(us: u32) -> TuningOverrides {
    TuningOverrides {
        polling: Some("fixed"),
        busy_poll_us: Some(us),
        ..Default::default()
    }
}

fn busy_poll_variants(values: &[u32]) -> Vec<Variant> {
    values
        .iter()
        .map(|&us| vdpad(format!("busy_poll_us={us}"), fixed_polling(us)))
        .collect()
}

/// A seed cell: vdpad configurations compared, no hog.
fn seed(id: &str, title: &str, frontend: Frontend, size: usize, variants: Vec<Variant>) -> Cell {
    Cell {
        id: id.into(),
        group: Group::Seed,
        title: title.into(),
        frontend,
        size,
        variants,
        hog: false,
        devices: 1,
        port: Port::Loopback,
    }
}

/// The seed's questions, on vdpad with the rig in interrupt mode at 64 bytes.
pub fn seed_cells() -> Vec<Cell> {
    let irq = Frontend::RigBench { poll: false };
    let lat = Frontend::RigLatency { poll: false };
    let mut notify = Vec::new();
    for ei in [true, false] {
        for burst in [8, 32, 64, 128] {
            notify.push(vdpad(
                format!("event_idx={},burst={burst}", if ei { "on" } else { "off" }),
                TuningOverrides {
                    event_idx: Some(ei),
                    burst: Some(burst),
                    ..Default::default()
                },
            ));
        }
    }
    vec![
        seed(
            "seed-notify",
            "packets per kick and per interrupt at saturation: EVENT_IDX on/off x burst",
            irq,
            64,
            notify,
        ),
        seed(
            "seed-coalesce-lat",
            "latency cost of RX interrupt coalescing (one frame in flight)",
            lat,
            64,
            coalesce_variants(),
        ),
        seed(
            "seed-coalesce-tp",
            "RX interrupt coalescing at saturation: packets per interrupt",
            irq,
            64,
            coalesce_variants(),
        ),
        seed(
            "seed-busypoll-lat",
            "busy-poll vs notification: latency and CPU per packet (one frame in flight)",
            lat,
            64,
            busy_poll_variants(&[0, 50, 200]),
        ),
        seed(
            "seed-busypoll-tp",
            "busy-poll vs notification: CPU per packet at saturation",
            irq,
            64,
            busy_poll_variants(&[0, 50]),
        ),
        // Issue 17: a rate limit is held (compare the variant's rate with its limit)
        // and costs nothing when off (the unlimited variant's CPU per packet against
        // seed-busypoll-tp's busy_poll=0).
        seed(
            "seed-rate-pps",
            "rate limit 100 kpps on 64-byte frames: achieved rate, drops",
            irq,
            64,
            vec![
                vdpad("unlimited".into(), TuningOverrides::default()),
                vdpad(
                    "tx_pps=100000".into(),
                    TuningOverrides {
                        tx_pps: Some(100_000),
                        ..Default::default()
                    },
                ),
            ],
        ),
        seed(
            "seed-rate-bps",
            "rate limit 1 Gbit/s on 1500-byte frames: achieved rate, drops",
            irq,
            1500,
            vec![
                vdpad("unlimited".into(), TuningOverrides::default()),
                vdpad(
                    "tx_bps=1000000000".into(),
                    TuningOverrides {
                        tx_bps: Some(1_000_000_000),
                        ..Default::default()
                    },
                ),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_unique_and_complete() {
        let mut all = main_cells(B_BUSY_POLL_US);
        all.extend(defaults_and_contention_cells());
        all.extend(scale_cells());
        all.extend(kernel_cells());
        all.extend(seed_cells());
        let mut ids: Vec<&str> = all.iter().map(|c| c.id.as_str()).collect();
        ids.sort_unstable();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n);
        assert!(main_cells(B_BUSY_POLL_US)
            .iter()
            .all(|c| c.variants.len() == 2));
        // The extra A/B cells: B untuned except where the id says, a hog where it says.
        for c in defaults_and_contention_cells() {
            assert_eq!(c.variants.len(), 2, "{}", c.id);
            assert_eq!(c.hog, c.id.starts_with("contend-"), "{}", c.id);
            let VhostBackend::Vdpad(t) = &c.variants[1].backend else {
                panic!("{}: B is not vdpad", c.id);
            };
            let tuned = t.polling.is_some();
            assert_eq!(
                tuned,
                c.id.contains("-fixed-") || c.id.contains("-notify-"),
                "{}",
                c.id
            );
        }
        // Many devices: only the scale and idle cells, and only testpmd drives them.
        for c in &all {
            let many = c.id.starts_with("scale-") || c.id.starts_with("idle-");
            assert_eq!(c.devices > 1, many && !c.id.ends_with("-1"), "{}", c.id);
            if many {
                assert!(
                    matches!(c.frontend, Frontend::Testpmd | Frontend::TestpmdIdle),
                    "{}",
                    c.id
                );
            }
        }
        // Kernel interfaces: only the kern- cells, A/B with B untuned, one device.
        for c in &all {
            assert_eq!(
                c.port != Port::Loopback,
                c.id.starts_with("kern-"),
                "{}",
                c.id
            );
        }
        for c in kernel_cells() {
            assert_eq!((c.devices, c.variants.len()), (1, 2), "{}", c.id);
            assert_eq!(
                c.variants[1].backend,
                VhostBackend::Vdpad(TuningOverrides::default())
            );
        }
        let notify = &seed_cells()[0];
        assert_eq!(notify.variants.len(), 8);
        assert!(notify
            .variants
            .iter()
            .any(|v| v.name == "event_idx=off,burst=128"));
    }
}
