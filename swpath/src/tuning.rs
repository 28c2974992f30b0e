//! The software datapath's knobs. Each is a trade-off; docs/software-datapath.md has
//! the measurements behind the defaults.

use std::time::Duration;

pub use crate::polling::Polling;

/// How workers trade latency, throughput and CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Chains handled per pass and direction before the used index is published and
    /// the guest possibly interrupted (one publication and at most one interrupt per
    /// burst). Bigger bursts: fewer interrupts and atomics per packet; smaller ones let
    /// a guest on another CPU start on the first frames while the rest are copied.
    pub burst: usize,
    /// How long a worker keeps polling after the rings go idle (see [`Polling`]).
    pub polling: Polling,
    /// RX interrupt coalescing: hold an interrupt until this many frames are
    /// completed... (0: off)
    pub rx_coalesce_frames: u32,
    /// ...or this much time passed since the first held completion (0: off).
    pub rx_coalesce_time: Duration,
    /// CPUs to pin workers to: pair i runs on `cpus[i % cpus.len()]`. Empty: no pinning.
    pub cpus: Vec<usize>,
    /// Whether each pair has a thread of its own or shares its CPU's thread.
    pub workers: Workers,
}

/// How pairs are spread over worker threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Workers {
    /// A thread per queue pair, pinned to the pair's CPU if `cpus` names one: the
    /// scheduler shares a CPU among its pairs.
    #[default]
    PerPair,
    /// One thread per CPU in `cpus`, serving every pair of every device with this
    /// setting pinned there, in turn (as a DPDK lcore serves its ports). Without
    /// `cpus`, pairs get threads of their own.
    PerCpu,
}

/// Default burst: the configuration's default (16 chains, measured; see
/// `vdpad_config::DEFAULT_BURST`).
pub(crate) const DEFAULT_BURST: usize = vdpad_config::DEFAULT_BURST as usize;

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            burst: DEFAULT_BURST,
            polling: Polling::DEFAULT,
            rx_coalesce_frames: 0,
            rx_coalesce_time: Duration::ZERO,
            cpus: Vec::new(),
            workers: Workers::PerPair,
        }
    }
}

impl Tuning {
    /// The CPU pair `pair` is pinned to, if any.
    pub fn cpu_of(&self, pair: u16) -> Option<usize> {
        (!self.cpus.is_empty()).then(|| self.cpus[usize::from(pair) % self.cpus.len()])
    }

    /// Whether RX interrupts are coalesced.
    pub(crate) fn coalescing(&self) -> bool {
        self.rx_coalesce_frames > 1 || !self.rx_coalesce_time.is_zero()
    }
}
