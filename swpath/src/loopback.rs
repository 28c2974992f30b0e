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
                if self.rx.deliver_single(&frame) {
                    self.tx.complete_single(head, frame.len);
                    continue;
                }
            }
            match self.tx.take() {
                TxNext::Empty => return idle,
                TxNext::Skipped | TxNext::Later => continue,
                TxNext::Frame => {}
            }
            let total = self.tx.frame().total;
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
                    self.rx.deliver_copy(nbufs, &self.tx.frame().segs, hdr, len);
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
