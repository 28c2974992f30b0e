//! Backends that sit behind a file descriptor (a tap queue, a packet socket) move
//! frames the same way: a [`Port`] does the system calls for one direction at a time,
//! and [`PortEngine`] pairs it with the queue pair's rings for the worker.

use std::io;
use std::os::fd::RawFd;

use tracing::warn;

use crate::engine::{Engine, Progress, RxState, TxState};
use crate::rxq::RxQueue;
use crate::txq::TxQueue;

/// Most iovecs one system call takes (Linux `UIO_MAXIOV`, `IOV_MAX`): `readv`,
/// `writev` and each message of `sendmmsg`/`recvmmsg` fail with `EINVAL`/`EMSGSIZE`
/// beyond it. A frame whose buffers need more is dropped
/// ([`DropReason::TooManySegments`](vdpa::DropReason::TooManySegments)), never
/// retried.
pub const IOV_MAX: usize = 1024;

/// The host side of one queue pair.
pub trait Port: Send {
    /// The descriptor the worker waits on.
    fn fd(&self) -> RawFd;

    /// Sends up to `budget` frames from the guest's TX ring.
    fn transmit(&mut self, tx: &mut TxQueue, budget: usize) -> TxState;

    /// Receives up to `budget` frames into the guest's RX ring.
    fn receive(&mut self, rx: &mut RxQueue, budget: usize) -> RxState;
}

/// A queue pair's rings and its port, driven by a worker.
pub struct PortEngine<P> {
    rx: RxQueue,
    tx: TxQueue,
    port: P,
}

impl<P: Port> PortEngine<P> {
    /// An engine moving frames between `rx`/`tx` and `port`.
    pub(crate) fn new(rx: RxQueue, tx: TxQueue, port: P) -> Self {
        PortEngine { rx, tx, port }
    }
}

impl<P: Port> Engine for PortEngine<P> {
    fn process(&mut self, budget: usize) -> Progress {
        let tx = self.port.transmit(&mut self.tx, budget);
        let rx = self.port.receive(&mut self.rx, budget);
        Progress { tx, rx }
    }

    fn process_each(&mut self, tx_budget: usize, rx_budget: usize) -> Progress {
        let tx = if tx_budget > 0 {
            self.port.transmit(&mut self.tx, tx_budget)
        } else {
            TxState::Throttled
        };
        let rx = if rx_budget > 0 {
            self.port.receive(&mut self.rx, rx_budget)
        } else {
            RxState::Throttled
        };
        Progress { tx, rx }
    }

    fn queues(&mut self) -> (&mut RxQueue, &mut TxQueue) {
        (&mut self.rx, &mut self.tx)
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.port.fd())
    }
}

/// Logs a backend's first failure, once: frames keep being dropped and counted, the
/// log does not fill up.
#[derive(Debug)]
pub struct FirstError {
    backend: &'static str,
    logged: bool,
}

impl FirstError {
    /// For backend `backend` ("tap", "AF_PACKET").
    pub(crate) fn new(backend: &'static str) -> Self {
        FirstError {
            backend,
            logged: false,
        }
    }

    /// Records that `op` failed with `e`.
    pub(crate) fn note(&mut self, op: &str, e: &io::Error) {
        if !self.logged {
            warn!(backend = self.backend, error = %e,
                  "{op} failed; frames are dropped and counted (logged once)");
            self.logged = true;
        }
    }
}
