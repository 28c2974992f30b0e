//! `listen`: receive frames that something else sends towards the VM (a host injecting
//! frames on the far side of a NIC, a peer on a bridge) and hand each one to the
//! caller, untouched. Nothing is sent.
//!
//! The rig posts RX buffers on every pair, then waits (interrupt-driven, or busy-polling)
//! until `count` frames that pass the filter have arrived or the timeout passes. Frames
//! that do not pass the filter are counted and dropped, so unrelated traffic on a shared
//! wire does not end the run early.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::RigError;
use crate::rig::Rig;

/// Parameters of a listen run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenOptions {
    /// Stop after this many frames passed the filter.
    pub count: u64,
    /// Only frames with this ethertype (bytes 12..14, big endian) count; others are
    /// ignored. `None` takes every frame.
    pub ethertype: Option<u16>,
    /// Bound on the whole run.
    pub timeout: Duration,
    /// Busy-poll instead of sleeping on call eventfds.
    pub poll: bool,
}

impl ListenOptions {
    /// `count` frames of any ethertype, 30 s timeout, interrupt-driven.
    pub fn new(count: u64) -> Self {
        Self {
            count,
            ethertype: None,
            timeout: Duration::from_secs(30),
            poll: false,
        }
    }

    /// Whether `frame` passes the ethertype filter.
    pub(crate) fn accepts(&self, frame: &[u8]) -> bool {
        match self.ethertype {
            None => true,
            Some(t) => frame.len() >= 14 && u16::from_be_bytes([frame[12], frame[13]]) == t,
        }
    }
}

/// Results of a listen run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ListenReport {
    /// Frames that passed the filter (handed to the caller).
    pub received: u64,
    /// Frames that did not pass the filter.
    pub ignored: u64,
    /// Wall time of the run in seconds.
    pub seconds: f64,
    /// The run ended because the timeout passed before `count` frames arrived.
    pub timed_out: bool,
}

impl ListenReport {
    /// True when every frame asked for arrived.
    pub fn complete(&self, o: &ListenOptions) -> bool {
        !self.timed_out && self.received >= o.count
    }

    /// The one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "listen: received {} ignored {} time {:.2}s{}",
            self.received,
            self.ignored,
            self.seconds,
            if self.timed_out { " (timed out)" } else { "" }
        )
    }
}

/// Runs listen on `rig`: posts RX buffers on every pair and calls `on_frame(pair,
/// bytes)` for each received frame that passes the filter, in arrival order, until
/// `o.count` frames were taken or `o.timeout` passed. The bytes are the frame without
/// its virtio-net header.
pub fn run_listen(
    rig: &mut Rig,
    o: &ListenOptions,
    mut on_frame: impl FnMut(usize, &[u8]),
) -> Result<ListenReport, RigError> {
    let start = Instant::now();
    let mut r = ListenReport::default();
    rig.disable_interrupts();
    rig.refill_all()?;
    while r.received < o.count {
        let mut progress = false;
        for (i, p) in rig.pairs_mut().iter_mut().enumerate() {
            let n = p.rx.poll(usize::MAX, |f| {
                if o.accepts(f.data) && r.received < o.count {
                    on_frame(i, f.data);
                    r.received += 1;
                } else {
                    // Filtered out, or beyond `count` in the last batch.
                    r.ignored += 1;
                }
            })?;
            progress |= n > 0;
            p.rx.refill()?;
            p.rx.flush()?;
            if r.received >= o.count {
                break;
            }
        }
        if r.received >= o.count {
            break;
        }
        let elapsed = start.elapsed();
        if elapsed >= o.timeout {
            r.timed_out = true;
            break;
        }
        if !progress && !o.poll {
            let left = o.timeout - elapsed;
            rig.sleep_for_work(false, left.min(Duration::from_millis(50)))?;
        }
    }
    r.seconds = start.elapsed().as_secs_f64();
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethertype_filter() {
        let mut o = ListenOptions::new(1);
        let mut f = vec![0u8; 60];
        f[12] = 0x88;
        f[13] = 0xb6;
        assert!(o.accepts(&f));
        o.ethertype = Some(0x88b6);
        assert!(o.accepts(&f));
        o.ethertype = Some(0x0800);
        assert!(!o.accepts(&f));
        assert!(!o.accepts(&f[..13]));
    }

    #[test]
    fn report_completeness() {
        let o = ListenOptions::new(2);
        let mut r = ListenReport {
            received: 2,
            ..Default::default()
        };
        assert!(r.complete(&o));
        r.timed_out = true;
        assert!(!r.complete(&o));
        assert!(r.summary().contains("timed out"));
    }
}
