//! What a worker drives: an [`Engine`] moves frames for one queue pair between the
//! guest's rings and a backend, and tells the worker what to wait for next.

use std::os::fd::RawFd;

use crate::rxq::RxQueue;
use crate::txq::TxQueue;

/// State of the transmit direction after a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxState {
    /// The TX ring is empty: wait for a kick.
    Idle,
    /// The backend cannot take more now: wait until it is writable.
    Blocked,
    /// The work cap was reached with frames left: go again.
    Busy,
    /// The direction is over its rate limit and was not served: wait for the
    /// limiter's timer (kicks stay off; the guest sees a full ring).
    Throttled,
}

/// State of the receive direction after a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxState {
    /// The backend has nothing for the guest: wait until it is readable.
    Idle,
    /// A frame waits and the guest has no buffer for it: wait for an RX kick.
    Starved,
    /// The work cap was reached with frames left: go again.
    Busy,
    /// The direction is over its rate limit and was not served: wait for the
    /// limiter's timer (frames wait in the backend).
    Throttled,
}

/// The outcome of one pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Transmit direction.
    pub tx: TxState,
    /// Receive direction.
    pub rx: RxState,
}

impl Progress {
    /// Both directions idle: nothing to do until a kick or the backend.
    pub(crate) const IDLE: Progress = Progress {
        tx: TxState::Idle,
        rx: RxState::Idle,
    };
}

impl Progress {
    /// Whether the pass stopped only because of the work cap.
    pub(crate) fn busy(&self) -> bool {
        self.tx == TxState::Busy || self.rx == RxState::Busy
    }
}

/// Moves frames for one queue pair.
pub trait Engine: Send {
    /// Moves up to `budget` frames in each direction. Used entries are written but not
    /// published; the worker calls [`flush`](Self::flush) after every pass.
    fn process(&mut self, budget: usize) -> Progress;

    /// Like [`process`](Self::process) with a budget per direction (the rate
    /// limiter's); a direction with a zero budget is left alone. Engines whose
    /// directions cannot move apart (loopback: a TX frame is an RX frame) take the
    /// smaller budget for both.
    fn process_each(&mut self, tx_budget: usize, rx_budget: usize) -> Progress {
        self.process(tx_budget.min(rx_budget))
    }

    /// The two rings.
    fn queues(&mut self) -> (&mut RxQueue, &mut TxQueue);

    /// The backend's file descriptor to wait on, if it has one.
    fn backend_fd(&self) -> Option<RawFd>;

    /// Publishes both rings and sends the interrupts the guest wants. Returns whether
    /// either ring moved buffers since the last flush.
    fn flush(&mut self) -> bool {
        let (rx, tx) = self.queues();
        // TX first: the guest's RX interrupt is the last thing of a pass, so the
        // completions of the frames it sent are already visible when it wakes.
        let tx_moved = tx.q.flush();
        rx.q.flush() | tx_moved
    }

    /// Stops: hands pending RX buffers back, publishes, and returns where each ring
    /// stopped (rx, tx).
    fn finish(&mut self) -> (u16, u16) {
        let (rx, tx) = self.queues();
        rx.release_pending();
        rx.q.flush();
        rx.q.release_held_interrupt();
        tx.q.flush();
        (rx.q.ring.next_avail(), tx.q.ring.next_avail())
    }
}
