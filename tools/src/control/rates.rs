//! Rates from two `stats` samples: packets and bits per second, and packets per kick
//! and per interrupt over the interval (rather than since the device started).

use serde::Serialize;

use super::protocol::{DeviceStats, QueueView};

/// What happened on one queue between two samples.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueueRates {
    /// Device name.
    pub device: String,
    /// Ring index.
    pub queue: u16,
    /// `rx` or `tx`.
    pub direction: String,
    /// Seconds between the samples.
    pub interval: f64,
    /// Packets per second.
    pub pps: f64,
    /// Bits per second (frame bytes × 8, without the virtio-net header).
    pub bps: f64,
    /// Packets per kick over the interval, if there was a kick.
    pub packets_per_kick: Option<f64>,
    /// Packets per interrupt over the interval, if there was an interrupt.
    pub packets_per_interrupt: Option<f64>,
    /// Drops per second, all reasons.
    pub drops_per_second: f64,
}

/// Rates of every queue present in both samples. A queue whose counters went down
/// (the device was removed and added again, or fell back to another datapath) has no
/// rate for this interval.
pub fn between(
    before: &[DeviceStats],
    before_at: f64,
    after: &[DeviceStats],
    after_at: f64,
) -> Vec<QueueRates> {
    let dt = after_at - before_at;
    if dt <= 0.0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for dev in after {
        let Some(old) = before.iter().find(|d| d.name == dev.name) else {
            continue;
        };
        for q in &dev.queues {
            let Some(p) = old.queues.iter().find(|o| o.queue == q.queue) else {
                continue;
            };
            if let Some(r) = queue(&dev.name, p, q, dt) {
                out.push(r);
            }
        }
    }
    out
}

fn queue(device: &str, p: &QueueView, q: &QueueView, dt: f64) -> Option<QueueRates> {
    let d = |a: u64, b: u64| b.checked_sub(a);
    let packets = d(p.packets, q.packets)?;
    let bytes = d(p.bytes, q.bytes)?;
    let kicks = d(p.kicks, q.kicks)?;
    let irqs = d(p.interrupts, q.interrupts)?;
    let drops = d(p.drops_total, q.drops_total)?;
    Some(QueueRates {
        device: device.to_owned(),
        queue: q.queue,
        direction: q.direction.clone(),
        interval: dt,
        pps: packets as f64 / dt,
        bps: bytes as f64 * 8.0 / dt,
        packets_per_kick: (kicks > 0).then(|| packets as f64 / kicks as f64),
        packets_per_interrupt: (irqs > 0).then(|| packets as f64 / irqs as f64),
        drops_per_second: drops as f64 / dt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(queue: u16, packets: u64, bytes: u64, kicks: u64, irqs: u64) -> QueueView {
        QueueView {
            queue,
            pair: queue / 2,
            direction: if queue.is_multiple_of(2) { "rx" } else { "tx" }.into(),
            packets,
            bytes,
            kicks,
            interrupts: irqs,
            interrupts_suppressed: 0,
            bursts: 0,
            rx_no_buffer: 0,
            sleeps: 0,
            drops: Default::default(),
            drops_total: 0,
            bad_descriptors: Default::default(),
            bad_descriptors_total: 0,
            faults: Default::default(),
            throttled: 0,
            throttled_seconds: 0.0,
            packets_per_kick: None,
            packets_per_interrupt: None,
        }
    }

    fn dev(name: &str, queues: Vec<QueueView>) -> DeviceStats {
        DeviceStats {
            name: name.into(),
            state: "running".into(),
            datapath: "software/loopback".into(),
            connections: 1,
            peer: None,
            queues,
        }
    }

    #[test]
    fn rates_come_from_differences() {
        let a = vec![dev(
            "a",
            vec![q(0, 100, 6400, 10, 5), q(1, 100, 6400, 0, 0)],
        )];
        let b = vec![dev("a", vec![q(0, 300, 19200, 12, 5), q(1, 50, 0, 0, 0)])];
        let r = between(&a, 1.0, &b, 3.0);
        assert_eq!(r.len(), 1, "queue 1 went backwards: no rate");
        let r = &r[0];
        assert_eq!((r.pps, r.bps), (100.0, 51200.0));
        assert_eq!(r.packets_per_kick, Some(100.0));
        assert_eq!(r.packets_per_interrupt, None);
        assert!(between(&a, 3.0, &b, 3.0).is_empty());
        assert!(between(&a, 1.0, &[dev("b", vec![q(0, 1, 1, 1, 1)])], 2.0).is_empty());
    }
}
