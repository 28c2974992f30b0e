//! The loopback backend: every frame the guest transmits on a queue pair's TX ring is
//! written straight into the guest's RX buffers of the same pair — one copy, guest
//! buffer to guest buffer, behind a fresh virtio-net header (`num_buffers` set for
//! mergeable RX buffers).
//!
//! Flow control: a frame waits on the TX ring while the guest has no RX buffer for it;
//! it is never dropped for lack of buffers.

use std::os::fd::RawFd;

use vdpa::DropReason;

use crate::engine::{Engine, Progress, RxState, TxState};
use crate::rxq::{Reserve, RxQueue};
use crate::txq::{TxNext, TxQueue};

/// Reflects TX frames into RX buffers for one queue pair.
pub struct Loopback {
    /// The RX half.
    pub rx: RxQueue,
    /// The TX half.
    pub tx: TxQueue,
}

impl Loopback {
    /// A loopback over the two halves of a pair.
    pub fn new(rx: RxQueue, tx: TxQueue) -> Self {
        Loopback { rx, tx }
    }
}

impl Engine for Loopback {
    fn process(&mut self, budget: usize) -> Progress {
        let idle = Progress {
            tx: TxState::Idle,
            rx: RxState::Idle,
        };
        for _ in 0..budget {
            // One buffer out, one buffer in: the common case, without building chains.
            if let Some((head, frame)) = self.tx.peek_single() {
                let len = frame.len();
                if self.rx.deliver_single(frame) {
                    self.tx.complete_single(head, len);
                    continue;
                }
            }
            match self.tx.take() {
                TxNext::Empty => return idle,
                TxNext::Skipped | TxNext::Later => continue,
                TxNext::Frame => {}
            }
            let total = self.tx.frame().total();
            match self.rx.reserve(total) {
                Reserve::Starved => {
                    // Leave the frame on the TX ring until RX buffers arrive.
                    self.tx.unpop();
                    self.rx.q.counts.rx_no_buffer += 1;
                    return Progress {
                        tx: TxState::Idle,
                        rx: RxState::Starved,
                    };
                }
                Reserve::TooSmall => self.rx.drop_frame(DropReason::RxBufferTooSmall),
                Reserve::Ready(nbufs) => {
                    let len = self.tx.frame_len();
                    let hdr = self.tx.hdr_len();
                    self.rx
                        .deliver_copy(nbufs, self.tx.frame().segs(), hdr, len);
                }
            }
            self.tx.complete();
        }
        Progress {
            tx: TxState::Busy,
            rx: RxState::Idle,
        }
    }

    fn queues(&mut self) -> (&mut RxQueue, &mut TxQueue) {
        (&mut self.rx, &mut self.tx)
    }

    fn backend_fd(&self) -> Option<RawFd> {
        None
    }
}

/// The copy paths (one buffer to one buffer, a chain to a chain, one frame over several
/// merged buffers) on anonymous guest memory: these run under Miri in CI, which checks
/// every raw-pointer copy into and out of guest memory.
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vdpa::virtio::ring::{VRING_DESC_F_NEXT as NEXT, VRING_DESC_F_WRITE as WRITE};
    use vdpa::QueueCounters;

    use super::*;
    use crate::interrupt::Interrupt;
    use crate::queue::Queue;
    use crate::ring::DeviceRing;
    use crate::test_driver::{get, memory, read, write, DriverRing};

    const HDR: usize = 12;

    fn queue(d: &DriverRing, index: u16) -> Queue {
        let cfg = d.config(index);
        Queue::new(
            DeviceRing::new(&cfg, d.mem.clone(), false).unwrap(),
            Arc::new(Interrupt::new(None)),
            Arc::new(QueueCounters::default()),
        )
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
    }

    fn run(lo: &mut Loopback) {
        lo.process(16);
        lo.rx.q.flush();
        lo.tx.q.flush();
    }

    #[test]
    fn frames_are_copied_through_every_path() {
        let mem = memory(0x40000);
        let (rx, tx) = (
            DriverRing::new(&mem, 0x1000, 8),
            DriverRing::new(&mem, 0x4000, 8),
        );
        let mut lo = Loopback::new(
            RxQueue::new(queue(&rx, 0), HDR, true),
            TxQueue::new(queue(&tx, 1), HDR),
        );

        // A header and a frame in one TX buffer, one big RX buffer: the single-buffer
        // fast path.
        let one = frame(100, 1);
        write(&mem, 0x10000 + HDR as u64, &one);
        tx.desc(0, 0x10000, (HDR + one.len()) as u32, 0, 0);
        rx.desc(0, 0x20000, 2048, WRITE, 0);
        tx.offer(&[0]);
        rx.offer(&[0]);
        run(&mut lo);
        assert_eq!(rx.used_elem(0), (0, (HDR + one.len()) as u32));
        assert_eq!(read(&mem, 0x20000 + HDR as u64, one.len()), one);
        assert_eq!(get::<u16>(&mem, 0x20000 + 10), 1, "num_buffers");

        // Header and frame in two TX buffers, into one RX chain of two buffers.
        let two = frame(300, 7);
        write(&mem, 0x11000, &two);
        tx.desc(1, 0x10800, HDR as u32, NEXT, 2);
        tx.desc(2, 0x11000, two.len() as u32, 0, 0);
        rx.desc(1, 0x21000, 200, WRITE | NEXT, 2);
        rx.desc(2, 0x22000, 2048, WRITE, 0);
        tx.offer(&[1]);
        rx.offer(&[1]);
        run(&mut lo);
        assert_eq!(rx.used_elem(1), (1, (HDR + two.len()) as u32));
        let mut got = read(&mem, 0x21000 + HDR as u64, 200 - HDR);
        got.extend(read(&mem, 0x22000, two.len() - (200 - HDR)));
        assert_eq!(got, two);

        // One frame over three merged RX buffers of 64 bytes each.
        let three = frame(150, 9);
        write(&mem, 0x12000 + HDR as u64, &three);
        tx.desc(3, 0x12000, (HDR + three.len()) as u32, 0, 0);
        for (i, at) in [(3u16, 0x23000u64), (4, 0x24000), (5, 0x25000)] {
            rx.desc(i, at, 64, WRITE, 0);
        }
        rx.offer(&[3, 4, 5]);
        tx.offer(&[3]);
        run(&mut lo);
        assert_eq!(get::<u16>(&mem, 0x23000 + 10), 3, "num_buffers");
        let lens: Vec<_> = (2..5).map(|i| rx.used_elem(i)).collect();
        assert_eq!(lens, [(3, 64), (4, 64), (5, (HDR + 150 - 128) as u32)]);
        let mut got = read(&mem, 0x23000 + HDR as u64, 64 - HDR);
        got.extend(read(&mem, 0x24000, 64));
        got.extend(read(&mem, 0x25000, 150 - (64 - HDR) - 64));
        assert_eq!(got, three);
        assert_eq!((tx.used_idx(), rx.used_idx()), (3, 5));
    }
}
