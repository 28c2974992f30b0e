//! The NIC's control queue, driven by vdpad itself: a spec virtio-net NIC with
//! VIRTIO_NET_F_MQ and VIRTIO_NET_F_CTRL_VQ uses only queue pair 0 until its driver
//! sends VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET. The guest's control queue stays with the
//! frontend (QEMU emulates it for vhost-user and turns the guest's pair count into
//! SET_VRING_ENABLE); vdpad tells the NIC how many pairs run.
//!
//! The queue lives in one page of vdpad's own memory, DMA-mapped at an IOVA no guest
//! region uses (see [`control_iova`]), and has no interrupt: a command is one chain
//! (header and data read-only, the ack byte writable), and the driver polls the used
//! index for at most [`COMMAND_TIMEOUT`], as Linux's virtio_net does for its own
//! control commands.

use std::io;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info};
use vdpa::virtio::ring::{self, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vdpa::GuestMemory;

use crate::pci::PciFunction;
use crate::spec::{ctrl, NO_VECTOR};
use crate::virtio_pci::{Doorbell, QueueSetup, VirtioError, VirtioPci};

/// The longest a command may take before the NIC is considered broken (QEMU under
/// TCG behind VFIO answers in well under a millisecond; hardware in microseconds).
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes of vdpad memory the queue and its buffers take (one page).
const PAGE: usize = 4096;
/// Ring size: one command is in flight at a time, so a small ring is plenty.
const MAX_SIZE: u16 = 8;
/// Where in the page each part lives.
const DESC: usize = 0x000;
const AVAIL: usize = 0x200;
const USED: usize = 0x400;
const COMMAND: usize = 0x800;
const ACK: usize = 0xc00;
/// Longest command (header and data).
const MAX_COMMAND: usize = 64;
/// The control page's IOVA is aligned to (and keeps clear) this much.
const IOVA_ALIGN: u64 = 2 << 20;
/// Lowest IOVA tried: above the 32-bit PCI hole, where a DMA can never be taken for a
/// peer device's BAR, and within a 39-bit IOMMU's reach for any guest below ~500 GiB.
const IOVA_FLOOR: u64 = 4 << 30;

/// Why a control command did not get through.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    /// Setting up the queue on the NIC failed.
    #[error("setting up the NIC's control queue {queue}")]
    Setup {
        /// The queue index.
        queue: u16,
        /// What failed.
        #[source]
        source: VirtioError,
    },
    /// Allocating or DMA-mapping the queue's page failed.
    #[error("{what}")]
    Memory {
        /// What was attempted.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The NIC did not use the command within [`COMMAND_TIMEOUT`].
    #[error("the NIC did not answer {command} within {timeout:?}")]
    Timeout {
        /// The command.
        command: String,
        /// The bound waited.
        timeout: Duration,
    },
    /// The NIC answered VIRTIO_NET_ERR (or something that is not VIRTIO_NET_OK).
    #[error("the NIC refused {command} (ack {ack})")]
    Refused {
        /// The command.
        command: String,
        /// The ack byte it wrote.
        ack: u8,
    },
}

/// Where the control page goes for `mem`: see [`lowest_free_block`].
pub(crate) fn control_iova(mem: &GuestMemory) -> u64 {
    lowest_free_block(
        mem.regions()
            .iter()
            .map(|r| (r.gpa(), r.gpa().saturating_add(r.size()))),
    )
}

/// The lowest [`IOVA_ALIGN`]-aligned address at or above [`IOVA_FLOOR`] whose
/// aligned block none of the `[start, end)` ranges touches.
fn lowest_free_block(ranges: impl Iterator<Item = (u64, u64)>) -> u64 {
    let mut regions: Vec<(u64, u64)> = ranges.collect();
    regions.sort_unstable();
    let mut at = IOVA_FLOOR;
    for (start, end) in regions {
        if end <= at {
            continue;
        }
        if start >= at + IOVA_ALIGN {
            break;
        }
        at = end.div_ceil(IOVA_ALIGN).saturating_mul(IOVA_ALIGN);
    }
    at
}

/// vdpad's control queue on one NIC, enabled until dropped (the NIC must be reset
/// before: dropping unmaps the page the NIC could otherwise still reach).
pub(crate) struct ControlQueue {
    device: String,
    pci: Arc<dyn PciFunction>,
    size: u16,
    iova: u64,
    /// The page (anonymous, private to this process).
    page: *mut u8,
    doorbell: Doorbell,
    /// The next avail index to publish.
    next_avail: u16,
    /// The used index up to which answers were read.
    last_used: u16,
    /// The pair count the NIC uses (1 after reset, then the last VQ_PAIRS_SET taken).
    pairs: u16,
    mapped: bool,
}

// SAFETY: `page` is a mapping this value owns alone; it is only accessed through
// `&mut self` methods (and the NIC by DMA), so moving the value to another thread is
// sound.
unsafe impl Send for ControlQueue {}
// SAFETY: no `&self` method touches the page.
unsafe impl Sync for ControlQueue {}

impl ControlQueue {
    /// Allocates the queue's page, maps it for DMA at [`control_iova`] of `mem` (the
    /// memory mapped for the NIC), programs queue `queue` without an interrupt vector
    /// and enables it. Call between FEATURES_OK and DRIVER_OK.
    pub(crate) fn start(
        device: &str,
        pci: Arc<dyn PciFunction>,
        nic: &VirtioPci,
        queue: u16,
        mem: &GuestMemory,
    ) -> Result<Self, ControlError> {
        let setup = |source| ControlError::Setup { queue, source };
        let max = nic.queue_max_size(queue).map_err(setup)?;
        let size = if max == 0 {
            0
        } else {
            1 << max.min(MAX_SIZE).ilog2()
        };
        // SAFETY: a fresh private anonymous mapping of one page; the result is checked.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if page == libc::MAP_FAILED {
            return Err(ControlError::Memory {
                what: "allocating the control queue's page".into(),
                source: io::Error::last_os_error(),
            });
        }
        let iova = control_iova(mem);
        let mut me = ControlQueue {
            device: device.to_owned(),
            pci,
            size,
            iova,
            page: page.cast(),
            doorbell: Doorbell {
                queue,
                bar: 0,
                offset: 0,
            },
            next_avail: 0,
            last_used: 0,
            pairs: 1,
            mapped: false,
        };
        // SAFETY: `page` is a live mapping of PAGE bytes owned by `me`, which unmaps
        // it from the NIC in its drop before releasing it.
        unsafe { me.pci.dma_map(iova, PAGE as u64, me.page) }.map_err(|source| {
            ControlError::Memory {
                what: format!("DMA map of the control queue's page at IOVA {iova:#x}"),
                source,
            }
        })?;
        me.mapped = true;
        let base = iova;
        me.doorbell = nic
            .program_queue(
                queue,
                &QueueSetup {
                    size,
                    desc: base + DESC as u64,
                    driver: base + AVAIL as u64,
                    device: base + USED as u64,
                    vector: NO_VECTOR,
                    resume: None,
                },
            )
            .and_then(|db| nic.enable_queue(queue).map(|()| db))
            .map_err(setup)?;
        info!(
            device,
            queue,
            size,
            iova = format_args!("{iova:#x}"),
            "offload: NIC control queue enabled (polled, no vector)"
        );
        Ok(me)
    }

    /// The pair count the NIC uses.
    pub(crate) fn pairs(&self) -> u16 {
        self.pairs
    }

    /// Tells the NIC to use `pairs` queue pairs (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET).
    pub(crate) fn set_pairs(&mut self, pairs: u16) -> Result<(), ControlError> {
        let [lo, hi] = pairs.to_le_bytes();
        self.command(
            &format!("VQ_PAIRS_SET {pairs}"),
            &[ctrl::CLASS_MQ, ctrl::MQ_VQ_PAIRS_SET, lo, hi],
        )?;
        self.pairs = pairs;
        Ok(())
    }

    fn write<const N: usize>(&mut self, at: usize, bytes: [u8; N]) {
        assert!(at + N <= PAGE);
        // SAFETY: `at + N` is within the page this value owns; the NIC reads it by DMA
        // only after the avail index is published (Release below), so volatile
        // stores without a reference are enough.
        unsafe {
            for (i, b) in bytes.into_iter().enumerate() {
                std::ptr::write_volatile(self.page.add(at + i), b);
            }
        }
    }

    fn read_u16(&self, at: usize) -> u16 {
        assert!(at + 2 <= PAGE && at.is_multiple_of(2));
        // SAFETY: an aligned u16 within the page this value owns; the NIC writes it by
        // DMA, so read it volatile, without a reference.
        u16::from_le(unsafe { std::ptr::read_volatile(self.page.add(at).cast::<u16>()) })
    }

    fn read_u8(&self, at: usize) -> u8 {
        assert!(at < PAGE);
        // SAFETY: as `read_u16`, one byte.
        unsafe { std::ptr::read_volatile(self.page.add(at)) }
    }

    /// Sends one command and waits for its ack.
    fn command(&mut self, what: &str, cmd: &[u8]) -> Result<(), ControlError> {
        assert!(cmd.len() <= MAX_COMMAND);
        if self.size == 0 {
            return Err(ControlError::Refused {
                command: what.into(),
                ack: ctrl::ERR,
            });
        }
        for (i, b) in cmd.iter().enumerate() {
            self.write(COMMAND + i, [*b]);
        }
        self.write(ACK, [0xff]);
        let desc = |addr: u64, len: u32, flags: u16, next: u16| {
            let mut d = [0u8; ring::DESC_SIZE];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            d
        };
        let base = self.iova;
        self.write(
            DESC,
            desc(
                base + COMMAND as u64,
                cmd.len() as u32,
                VRING_DESC_F_NEXT,
                1,
            ),
        );
        self.write(
            DESC + ring::DESC_SIZE,
            desc(base + ACK as u64, 1, VRING_DESC_F_WRITE, 0),
        );
        let slot = AVAIL + ring::avail_slot_offset(usize::from(self.next_avail % self.size));
        self.write(slot, 0u16.to_le_bytes());
        self.next_avail = self.next_avail.wrapping_add(1);
        // Release: the chain and the command before the index the NIC reads.
        fence(Ordering::Release);
        self.write(
            AVAIL + ring::AVAIL_IDX_OFFSET,
            self.next_avail.to_le_bytes(),
        );
        fence(Ordering::SeqCst);
        self.doorbell
            .ring(&*self.pci)
            .map_err(|source| ControlError::Memory {
                what: format!("ringing the control queue's doorbell for {what}"),
                source,
            })?;
        let start = Instant::now();
        while self.read_u16(USED + ring::USED_IDX_OFFSET) == self.last_used {
            if start.elapsed() > COMMAND_TIMEOUT {
                return Err(ControlError::Timeout {
                    command: what.into(),
                    timeout: COMMAND_TIMEOUT,
                });
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        // Acquire: the ack byte is read after the used index that published it.
        fence(Ordering::Acquire);
        self.last_used = self.last_used.wrapping_add(1);
        match self.read_u8(ACK) {
            ctrl::OK => Ok(()),
            ack => Err(ControlError::Refused {
                command: what.into(),
                ack,
            }),
        }
    }
}

impl Drop for ControlQueue {
    fn drop(&mut self) {
        if self.mapped {
            if let Err(e) = self.pci.dma_unmap(self.iova, PAGE as u64) {
                // The NIC may still reach the page: never give it back.
                error!(device = %self.device, iova = format_args!("{:#x}", self.iova), error = %e,
                       "offload: DMA unmap of the control queue failed; keeping its page");
                return;
            }
        }
        // SAFETY: the page was mapped by `start` with this length, is no longer
        // reachable by the NIC, and nothing else refers to it.
        unsafe { libc::munmap(self.page.cast(), PAGE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_page_keeps_clear_of_guest_memory() {
        let free = |regions: &[(u64, u64)]| {
            lowest_free_block(regions.iter().map(|&(gpa, size)| (gpa, gpa + size)))
        };
        assert_eq!(free(&[(0, 1 << 30)]), 4 << 30);
        assert_eq!(free(&[(4 << 30, 2 << 30), (0, 3 << 30)]), 6 << 30);
        assert_eq!(free(&[(4 << 30, (1 << 20) + 4096)]), (4 << 30) + (2 << 20));
        assert_eq!(
            free(&[(4 << 30, 2 << 20), (8 << 30, 1 << 30)]),
            (4 << 30) + (2 << 20)
        );
        assert_eq!(free(&[((4 << 30) + (3 << 20), 4096)]), 4 << 30);
        assert_eq!(
            free(&[((4 << 30) + (1 << 20), 4096)]),
            (4 << 30) + (2 << 20)
        );
    }
}
