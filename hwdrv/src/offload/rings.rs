//! The guest's rings as the NIC will see them: whether a ring fits the NIC and lies
//! in guest memory, and where it resumes (its used index, read from guest memory),
//! which a NIC without ring-state registers can only do at 0.

use vdpa::virtio::ring;
use vdpa::{DatapathError, GuestMemory, PairPosition, QueuePairConfig, RingConfig};

use crate::capabilities::NicCapabilities;

/// Where a ring resumes: its used index, read from guest memory.
pub(super) fn position(qp: &QueuePairConfig) -> PairPosition {
    PairPosition {
        pair: qp.pair,
        rx: used_idx(&qp.mem, &qp.rx).unwrap_or(qp.rx.base),
        tx: used_idx(&qp.mem, &qp.tx).unwrap_or(qp.tx.base),
    }
}

/// The used index of a ring, read from guest memory.
pub(super) fn used_idx(mem: &GuestMemory, r: &RingConfig) -> Option<u16> {
    let p = mem.translate(r.addrs.used + ring::USED_IDX_OFFSET as u64, 2)?;
    if !(p as usize).is_multiple_of(2) {
        return None;
    }
    // SAFETY: translate returned 2 bytes of mapped guest memory, aligned; guest
    // memory is shared with the guest and the NIC, so read it volatile, no reference.
    Some(u16::from_le(unsafe {
        std::ptr::read_volatile(p as *const u16)
    }))
}

/// Checks a ring against guest memory and the NIC `caps`, and says where it resumes:
/// `None` at 0, else (avail, used) for the ring-state registers.
pub(super) fn plan(
    caps: &NicCapabilities,
    qp: &QueuePairConfig,
    r: &RingConfig,
) -> Result<Option<(u16, u16)>, DatapathError> {
    let bad = |what: String| DatapathError::Ring {
        ring: r.index,
        what,
    };
    if !r.size.is_power_of_two() || r.size > caps.queue_max_size {
        return Err(bad(format!(
            "size {} does not fit the NIC (maximum {}, power of two)",
            r.size, caps.queue_max_size
        )));
    }
    let (desc_len, avail_len, used_len) = ring::area_sizes(r.size);
    let areas = [
        (r.addrs.desc, desc_len, ring::DESC_ALIGN, "descriptor table"),
        (r.addrs.avail, avail_len, ring::AVAIL_ALIGN, "avail ring"),
        (r.addrs.used, used_len, ring::USED_ALIGN, "used ring"),
    ];
    for (gpa, len, align, what) in areas {
        if gpa % align != 0 || qp.mem.translate(gpa, len).is_none() {
            return Err(bad(format!(
                "{what} at {gpa:#x} ({len} bytes) is misaligned or not in guest memory"
            )));
        }
    }
    let used = used_idx(&qp.mem, r).unwrap_or(0);
    if r.base == 0 && used == 0 {
        return Ok(None);
    }
    if !caps.ring_state {
        return Err(bad(format!(
            "cannot resume at avail index {} (used index {used}): this NIC starts every \
             queue at 0 and has no ring-state registers",
            r.base
        )));
    }
    Ok(Some((r.base, used)))
}

/// What the datapath keeps about one ring of a running pair.
#[derive(Clone, Debug, Default)]
pub(super) struct RingRecord {
    /// Where its interrupt goes (`None`: the frontend polls; the vector goes to a
    /// spare).
    pub call: Option<std::sync::Arc<vmm_sys_util::eventfd::EventFd>>,
    /// Its doorbell, once the ring is programmed on the NIC (dropped by a NIC reset).
    pub doorbell: Option<crate::virtio_pci::Doorbell>,
}
