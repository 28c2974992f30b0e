//! `bench`: saturate the device for a while (TX kept full, RX refilled) and report
//! rates, packets per kick and packets per interrupt — the seed thread's "what is N?".
//!
//! Interrupt-driven by default, like a guest driver with NAPI: interrupts stay disabled
//! while there is work, and are re-enabled only before sleeping on the call eventfds.
//! With `poll`, the rig never sleeps (and never re-enables interrupts); the eventfds are
//! read once at the end, so `interrupt_sum` then tells how often the device signalled.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::RigError;
use crate::frame::{build_frame, MAX_FRAME, MIN_FRAME};
use crate::rig::Rig;

/// Parameters of a bench run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOptions {
    /// Measured duration in seconds.
    pub seconds: f64,
    /// Frame size in bytes (L2, without header).
    pub size: usize,
    /// Busy-poll instead of sleeping on call eventfds.
    pub poll: bool,
    /// After the measurement, wait at most this long for frames still in flight.
    pub drain: Duration,
}

impl BenchOptions {
    /// `seconds` of `size`-byte frames, interrupt-driven, 500 ms drain.
    pub fn new(seconds: f64, size: usize) -> Self {
        Self {
            seconds,
            size,
            poll: false,
            drain: Duration::from_millis(500),
        }
    }
}

/// Results of a bench run (rates over the measured interval).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BenchReport {
    /// "interrupt" or "poll".
    pub mode: String,
    /// Measured seconds.
    pub seconds: f64,
    /// Frame size.
    pub size: usize,
    /// Queue pairs used.
    pub queue_pairs: usize,
    /// EVENT_IDX in use.
    pub event_idx: bool,
    /// MRG_RXBUF in use.
    pub mrg_rxbuf: bool,
    /// Frames the device completed on TX rings.
    pub tx_frames: u64,
    /// Frames received on RX rings.
    pub rx_frames: u64,
    /// TX-direction rate (guest → device), Mpps.
    pub tx_mpps: f64,
    /// RX-direction rate (device → guest), Mpps.
    pub rx_mpps: f64,
    /// Headline rate: frames that made the round trip, Mpps (= rx_mpps).
    pub mpps: f64,
    /// Headline L2 throughput of the round trip, Gbit/s.
    pub gbps: f64,
    /// TX-direction L2 throughput, Gbit/s.
    pub tx_gbps: f64,
    /// RX-direction L2 throughput, Gbit/s.
    pub rx_gbps: f64,
    /// Kicks sent on TX rings.
    pub tx_kicks: u64,
    /// Kicks sent on RX rings (refills).
    pub rx_kicks: u64,
    /// TX frames per TX kick.
    pub pkts_per_kick: Option<f64>,
    /// Interrupts received on RX rings (call eventfd reads).
    pub rx_interrupts: u64,
    /// Interrupts received on TX rings.
    pub tx_interrupts: u64,
    /// Sum of the call eventfd counter values on RX rings (device signals).
    pub rx_interrupt_sum: u64,
    /// Sum of the call eventfd counter values, all rings.
    pub interrupt_sum: u64,
    /// RX frames per RX interrupt (eventfd read); none in poll mode, where the eventfds
    /// are read only once at the end.
    pub pkts_per_interrupt: Option<f64>,
    /// RX frames per RX device signal (eventfd counter increment), in both modes.
    pub pkts_per_signal: Option<f64>,
    /// Frames sent but not received by the end of the drain.
    pub lost: u64,
    /// RX frames of another size than sent, or with header anomalies.
    pub rx_errors: u64,
}

impl BenchReport {
    /// Human-readable lines.
    pub fn render(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.2}"));
        format!(
            "bench: {} B x {:.2}s, {} pair(s), {} mode, event_idx {} mrg_rxbuf {}\n\
             \x20 round trip  {:.3} Mpps  {:.3} Gbps (L2)\n\
             \x20 TX dir      {:.3} Mpps  {:.3} Gbps  ({} frames)\n\
             \x20 RX dir      {:.3} Mpps  {:.3} Gbps  ({} frames)\n\
             \x20 pkts/kick   {} (tx kicks {}, rx kicks {})\n\
             \x20 pkts/irq    {} (rx irqs {}, tx irqs {}); pkts/signal {} (rx {}, all {})\n\
             \x20 lost {} rx_errors {}",
            self.size,
            self.seconds,
            self.queue_pairs,
            self.mode,
            self.event_idx,
            self.mrg_rxbuf,
            self.mpps,
            self.gbps,
            self.tx_mpps,
            self.tx_gbps,
            self.tx_frames,
            self.rx_mpps,
            self.rx_gbps,
            self.rx_frames,
            opt(self.pkts_per_kick),
            self.tx_kicks,
            self.rx_kicks,
            opt(self.pkts_per_interrupt),
            self.rx_interrupts,
            self.tx_interrupts,
            opt(self.pkts_per_signal),
            self.rx_interrupt_sum,
            self.interrupt_sum,
            self.lost,
            self.rx_errors
        )
    }
}

/// One pass over every pair: reap, receive, refill, fill TX (when `send`). Returns
/// whether anything moved; counts received frames of the wrong size in `bad`.
fn pump(rig: &mut Rig, size: usize, send: bool, bad: &mut u64) -> Result<bool, RigError> {
    let mut progress = false;
    for p in rig.pairs_mut() {
        progress |= p.tx.reap()? > 0;
        progress |= p.rx.poll(256, |f| {
            if f.len != size {
                *bad += 1;
            }
        })? > 0;
        p.rx.refill()?;
        p.rx.flush()?;
        if send {
            while p.tx.can_send() {
                p.tx.send_prefilled(size)?;
                progress = true;
            }
            p.tx.flush()?;
        }
    }
    Ok(progress)
}

/// Runs the benchmark on `rig`.
pub fn run_bench(rig: &mut Rig, o: &BenchOptions) -> Result<BenchReport, RigError> {
    if !(MIN_FRAME..=MAX_FRAME).contains(&o.size) || o.size > rig.options().max_frame as usize {
        return Err(RigError::Options(format!(
            "frame size {} not within {MIN_FRAME}..={}",
            o.size,
            rig.options().max_frame
        )));
    }
    if !(o.seconds > 0.0 && o.seconds <= 3600.0) {
        return Err(RigError::Options(format!(
            "bench seconds {} not in (0, 3600]",
            o.seconds
        )));
    }
    for (i, p) in rig.pairs_mut().iter_mut().enumerate() {
        if p.rx.frames_capacity(o.size) == 0 {
            return Err(RigError::Options(format!(
                "{}-byte frames do not fit the RX chains (raise --rx-buf-size)",
                o.size
            )));
        }
        // Slots still in flight would be rewritten under the device: reap first.
        p.tx.reap()?;
        p.tx.prefill(&build_frame(i as u16, 0, o.size))?;
        p.rx.set_inspect(false);
    }
    let mut bad = 0;
    rig.disable_interrupts();
    rig.refill_all()?;
    let before = rig.stats();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(o.seconds);
    loop {
        let progress = pump(rig, o.size, true, &mut bad)?;
        let now = Instant::now();
        if now >= end {
            break;
        }
        if !progress && !o.poll {
            rig.sleep_for_work(true, (end - now).min(Duration::from_millis(10)))?;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    rig.drain_calls()?;
    let d = rig.stats().since(&before);

    // Drain: collect what is still in flight, without sending more.
    let drain_end = Instant::now() + o.drain;
    while Instant::now() < drain_end {
        let s = rig.stats().since(&before);
        let tx_busy = rig.pairs().iter().any(|p| p.tx.in_flight() > 0);
        if !tx_busy && s.rx.frames >= s.tx.frames {
            break;
        }
        if !pump(rig, o.size, false, &mut bad)? {
            rig.sleep_for_work(true, Duration::from_millis(5))?;
        }
    }
    let total = rig.stats().since(&before);
    for p in rig.pairs_mut() {
        p.rx.set_inspect(true);
    }

    let bits = |frames: u64| frames as f64 * o.size as f64 * 8.0 / seconds / 1e9;
    let rate = |frames: u64| frames as f64 / seconds / 1e6;
    let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
    let neg = rig.negotiated();
    Ok(BenchReport {
        mode: if o.poll { "poll" } else { "interrupt" }.to_string(),
        seconds,
        size: o.size,
        queue_pairs: rig.pairs().len(),
        event_idx: neg.event_idx(),
        mrg_rxbuf: neg.mrg_rxbuf(),
        tx_frames: d.tx.completions,
        rx_frames: d.rx.frames,
        tx_mpps: rate(d.tx.completions),
        rx_mpps: rate(d.rx.frames),
        mpps: rate(d.rx.frames),
        gbps: bits(d.rx.frames),
        tx_gbps: bits(d.tx.completions),
        rx_gbps: bits(d.rx.frames),
        tx_kicks: d.tx.kicks,
        rx_kicks: d.rx.kicks,
        pkts_per_kick: ratio(d.tx.frames, d.tx.kicks),
        rx_interrupts: d.rx.interrupts,
        tx_interrupts: d.tx.interrupts,
        rx_interrupt_sum: d.rx.interrupt_sum,
        interrupt_sum: d.rx.interrupt_sum + d.tx.interrupt_sum,
        pkts_per_interrupt: ratio(d.rx.frames, d.rx.interrupts).filter(|_| !o.poll),
        pkts_per_signal: ratio(d.rx.frames, d.rx.interrupt_sum),
        lost: total.tx.frames.saturating_sub(total.rx.frames),
        rx_errors: bad + total.rx.bad_len + total.rx.bad_num_buffers + total.rx.bad_hdr,
    })
}
