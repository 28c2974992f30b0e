//! `latency`: ping-pong with one frame in flight. Each round trip posts one TX frame,
//! kicks if the device asked for it, and waits until a frame comes back on the RX ring
//! of pair 0; the time from posting to receiving is one sample.
//!
//! Interrupt-driven by default (the rig sleeps on the call eventfd between sending and
//! receiving, as a guest waiting for its RX interrupt does), or busy-polling with
//! `poll`. With one frame in flight there is nothing to batch, so this measures the
//! wake-up and notification path of a backend: how long a kick takes to be noticed, a
//! frame to be moved, and an interrupt to arrive — and what RX interrupt coalescing
//! adds to it.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::RigError;
use crate::frame::{build_frame, MAX_FRAME, MIN_FRAME};
use crate::rig::Rig;

/// Parameters of a latency run.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyOptions {
    /// Round trips measured (after the warm-up).
    pub count: u64,
    /// Round trips done first and not measured.
    pub warmup: u64,
    /// Frame size in bytes (L2, without header).
    pub size: usize,
    /// Busy-poll the RX ring instead of sleeping on the call eventfd.
    pub poll: bool,
    /// Stop measuring after this long even if `count` was not reached.
    pub max_duration: Option<Duration>,
    /// A frame that does not come back within this time fails the run.
    pub frame_timeout: Duration,
}

impl LatencyOptions {
    /// `count` round trips of `size`-byte frames after 1000 warm-up round trips,
    /// interrupt-driven, 1 s per-frame timeout, no time limit.
    pub fn new(count: u64, size: usize) -> Self {
        Self {
            count,
            warmup: 1000,
            size,
            poll: false,
            max_duration: None,
            frame_timeout: Duration::from_secs(1),
        }
    }
}

/// Results of a latency run; times in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LatencyReport {
    /// "interrupt" or "poll".
    pub mode: String,
    /// Frame size.
    pub size: usize,
    /// EVENT_IDX in use.
    pub event_idx: bool,
    /// Round trips measured.
    pub count: u64,
    /// Warm-up round trips (not measured).
    pub warmup: u64,
    /// Wall time of the measured round trips, seconds.
    pub seconds: f64,
    /// Smallest round trip.
    pub min_us: f64,
    /// Mean round trip.
    pub mean_us: f64,
    /// Median round trip.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest round trip.
    pub max_us: f64,
    /// Kicks sent on the TX ring during the measurement.
    pub tx_kicks: u64,
    /// Interrupts (call eventfd reads) on the RX ring during the measurement.
    pub rx_interrupts: u64,
    /// Received frames of another size than sent, or with header anomalies.
    pub rx_errors: u64,
}

impl LatencyReport {
    /// One human-readable line.
    pub fn render(&self) -> String {
        format!(
            "latency: {} B, {} round trips ({} warm-up), {} mode, event_idx {}: \
             p50 {:.2} us  p90 {:.2} us  p99 {:.2} us  p99.9 {:.2} us  \
             (min {:.2} mean {:.2} max {:.2}; tx kicks {}, rx irqs {})",
            self.size,
            self.count,
            self.warmup,
            self.mode,
            self.event_idx,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.min_us,
            self.mean_us,
            self.max_us,
            self.tx_kicks,
            self.rx_interrupts,
        )
    }
}

/// The nearest-rank `q` quantile (0 < q ≤ 1) of sorted `v`, or 0 when `v` is empty.
pub(crate) fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One round trip on pair 0: post, flush, wait for the frame to come back. Returns the
/// time from posting to receiving.
fn round_trip(
    rig: &mut Rig,
    size: usize,
    poll: bool,
    timeout: Duration,
    bad: &mut u64,
) -> Result<Duration, RigError> {
    let start = Instant::now();
    let deadline = start + timeout;
    {
        let tx = &mut rig.pair_mut(0).tx;
        tx.reap()?;
        if !tx.send_prefilled(size)? {
            return Err(RigError::Timeout(format!(
                "TX ring {} is full with one frame in flight per round trip \
                 ({} not completed by the device)",
                tx.index(),
                tx.in_flight()
            )));
        }
        tx.flush()?;
    }
    loop {
        let mut got = 0;
        rig.pair_mut(0).rx.poll(1, |f| {
            got += 1;
            if f.len != size {
                *bad += 1;
            }
        })?;
        if got > 0 {
            let rtt = start.elapsed();
            let p = rig.pair_mut(0);
            p.rx.refill()?;
            p.rx.flush()?;
            return Ok(rtt);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(RigError::Timeout(format!(
                "a {size}-byte frame did not come back within {timeout:?}"
            )));
        }
        if poll {
            std::hint::spin_loop();
        } else {
            rig.sleep_for_work(false, deadline - now)?;
        }
    }
}

/// Runs the ping-pong on pair 0 of `rig`.
pub fn run_latency(rig: &mut Rig, o: &LatencyOptions) -> Result<LatencyReport, RigError> {
    if !(MIN_FRAME..=MAX_FRAME).contains(&o.size) || o.size > rig.options().max_frame as usize {
        return Err(RigError::Options(format!(
            "frame size {} not within {MIN_FRAME}..={}",
            o.size,
            rig.options().max_frame
        )));
    }
    if o.count == 0 {
        return Err(RigError::Options("latency count must be at least 1".into()));
    }
    if rig.pairs().is_empty() {
        return Err(RigError::Options("no queue pair".into()));
    }
    {
        let p = rig.pair_mut(0);
        if p.rx.frames_capacity(o.size) == 0 {
            return Err(RigError::Options(format!(
                "{}-byte frames do not fit the RX chains (raise --rx-buf-size)",
                o.size
            )));
        }
        p.tx.reap()?;
        p.tx.prefill(&build_frame(0, 0, o.size))?;
        p.rx.set_inspect(false);
    }
    rig.disable_interrupts();
    rig.refill_all()?;
    let mut bad = 0;
    for _ in 0..o.warmup {
        round_trip(rig, o.size, o.poll, o.frame_timeout, &mut bad)?;
    }
    let before = rig.stats();
    let mut samples: Vec<u64> = Vec::with_capacity(o.count.min(10_000_000) as usize);
    let start = Instant::now();
    while (samples.len() as u64) < o.count {
        if o.max_duration.is_some_and(|m| start.elapsed() >= m) {
            break;
        }
        let rtt = round_trip(rig, o.size, o.poll, o.frame_timeout, &mut bad)?;
        samples.push(u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX));
    }
    let seconds = start.elapsed().as_secs_f64();
    rig.drain_calls()?;
    let d = rig.stats().since(&before);
    rig.pair_mut(0).rx.set_inspect(true);

    samples.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    let n = samples.len() as u64;
    let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
    Ok(LatencyReport {
        mode: if o.poll { "poll" } else { "interrupt" }.to_string(),
        size: o.size,
        event_idx: rig.negotiated().event_idx(),
        count: n,
        warmup: o.warmup,
        seconds,
        min_us: us(samples.first().copied().unwrap_or(0)),
        mean_us: if n > 0 {
            sum as f64 / n as f64 / 1000.0
        } else {
            0.0
        },
        p50_us: us(quantile(&samples, 0.50)),
        p90_us: us(quantile(&samples, 0.90)),
        p99_us: us(quantile(&samples, 0.99)),
        p999_us: us(quantile(&samples, 0.999)),
        max_us: us(samples.last().copied().unwrap_or(0)),
        tx_kicks: d.tx.kicks,
        rx_interrupts: d.rx.interrupts,
        rx_errors: bad + d.rx.bad_len + d.rx.bad_num_buffers + d.rx.bad_hdr,
    })
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&v, 0.5), 500);
        assert_eq!(quantile(&v, 0.99), 990);
        assert_eq!(quantile(&v, 0.999), 999);
        assert_eq!(quantile(&v, 1.0), 1000);
        assert_eq!(quantile(&[7], 0.999), 7);
        assert_eq!(quantile(&[], 0.5), 0);
        assert_eq!(quantile(&[1, 2], 0.5), 1);
    }
}
