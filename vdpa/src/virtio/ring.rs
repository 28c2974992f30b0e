//! The split virtqueue layout (virtio 1.3, 2.7): three areas in guest memory, all
//! fields little endian.
//!
//! ```text
//! descriptor table  size × {addr: u64, len: u32, flags: u16, next: u16}   16-byte aligned
//! avail ring        flags: u16, idx: u16, ring[size]: u16, used_event: u16   2-byte aligned
//! used ring         flags: u16, idx: u16, ring[size]: {id: u32, len: u32},
//!                   avail_event: u16                                         4-byte aligned
//! ```
//!
//! Sizes here always include the event fields (harmless without EVENT_IDX), so one
//! check of an area covers both modes. Offsets are in bytes from the start of their
//! area; sizes are `u64` because they are lengths of guest memory ranges.

use std::mem::size_of;

use virtio_bindings::virtio_ring as vr;

/// Descriptor flag: the chain continues at `next`.
pub const VRING_DESC_F_NEXT: u16 = vr::VRING_DESC_F_NEXT as u16;
/// Descriptor flag: the buffer is device-writable (guest RX).
pub const VRING_DESC_F_WRITE: u16 = vr::VRING_DESC_F_WRITE as u16;
/// Descriptor flag: the buffer holds an indirect descriptor table.
pub const VRING_DESC_F_INDIRECT: u16 = vr::VRING_DESC_F_INDIRECT as u16;
/// Avail ring flag (without EVENT_IDX): the driver does not want interrupts.
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = vr::VRING_AVAIL_F_NO_INTERRUPT as u16;
/// Used ring flag (without EVENT_IDX): the device does not want kicks.
pub const VRING_USED_F_NO_NOTIFY: u16 = vr::VRING_USED_F_NO_NOTIFY as u16;

/// Largest split-ring size the specification allows (sizes are powers of two).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Bytes of one descriptor.
pub const DESC_SIZE: usize = size_of::<vr::vring_desc>();
/// Bytes of one used element (`{id: u32, len: u32}`).
pub const USED_ELEM_SIZE: usize = size_of::<vr::vring_used_elem>();

/// Alignment of the descriptor table.
pub const DESC_ALIGN: u64 = vr::VRING_DESC_ALIGN_SIZE as u64;
/// Alignment of the avail ring.
pub const AVAIL_ALIGN: u64 = vr::VRING_AVAIL_ALIGN_SIZE as u64;
/// Alignment of the used ring.
pub const USED_ALIGN: u64 = vr::VRING_USED_ALIGN_SIZE as u64;

/// Offset of `flags` in the avail ring.
pub const AVAIL_FLAGS_OFFSET: usize = 0;
/// Offset of `idx` in the avail ring.
pub const AVAIL_IDX_OFFSET: usize = 2;
/// Offset of `flags` in the used ring.
pub const USED_FLAGS_OFFSET: usize = 0;
/// Offset of `idx` in the used ring.
pub const USED_IDX_OFFSET: usize = 2;

/// Offset of descriptor `index` in the descriptor table.
#[inline(always)]
pub const fn desc_offset(index: usize) -> usize {
    DESC_SIZE * index
}

/// Offset of entry `slot` (`slot < size`) in the avail ring.
#[inline(always)]
pub const fn avail_slot_offset(slot: usize) -> usize {
    4 + 2 * slot
}

/// Offset of `used_event` in the avail ring of a ring of `size`.
#[inline(always)]
pub const fn used_event_offset(size: usize) -> usize {
    avail_slot_offset(size)
}

/// Offset of element `slot` (`slot < size`) in the used ring.
#[inline(always)]
pub const fn used_slot_offset(slot: usize) -> usize {
    4 + USED_ELEM_SIZE * slot
}

/// Offset of `avail_event` in the used ring of a ring of `size`.
#[inline(always)]
pub const fn avail_event_offset(size: usize) -> usize {
    used_slot_offset(size)
}

/// Bytes of the descriptor table of a ring of `size`.
#[inline]
pub const fn desc_bytes(size: u16) -> u64 {
    desc_offset(size as usize) as u64
}

/// Bytes of the avail ring of `size`, `used_event` included.
#[inline]
pub const fn avail_bytes(size: u16) -> u64 {
    used_event_offset(size as usize) as u64 + 2
}

/// Bytes of the used ring of `size`, `avail_event` included.
#[inline]
pub const fn used_bytes(size: u16) -> u64 {
    avail_event_offset(size as usize) as u64 + 2
}

/// Byte sizes of the three areas of a ring of `size`: descriptor table, avail ring,
/// used ring (event fields included).
#[inline]
pub const fn area_sizes(size: u16) -> (u64, u64, u64) {
    (desc_bytes(size), avail_bytes(size), used_bytes(size))
}

/// Whether the three areas' addresses are aligned as the specification asks.
#[inline]
pub const fn areas_aligned(desc: u64, avail: u64, used: u64) -> bool {
    desc.is_multiple_of(DESC_ALIGN)
        && avail.is_multiple_of(AVAIL_ALIGN)
        && used.is_multiple_of(USED_ALIGN)
}

/// Whether `size` is a valid split-ring size: a power of two from 1 to
/// [`MAX_QUEUE_SIZE`].
#[inline]
pub const fn is_valid_size(size: u32) -> bool {
    size.is_power_of_two() && size <= MAX_QUEUE_SIZE as u32
}

/// `vring_need_event` (2.7.10, Linux `virtio_ring.h`): with EVENT_IDX, moving an index
/// from `old` to `new` must notify the other side when it crosses that side's `event`
/// index, i.e. when `event` lies in the window `[old, new)`, computed modulo 2^16 so
/// that the free-running indices may wrap.
#[inline]
pub const fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_is_event_in_old_to_new() {
        // Notify exactly when `event` lies in [old, new) modulo 2^16, across the wrap.
        for old in [0u16, 5, 0xfff0, 0xfffe, 0xffff] {
            for moved in 0..20u16 {
                let new = old.wrapping_add(moved);
                for ahead in 0..40u16 {
                    let event = old.wrapping_add(ahead).wrapping_sub(10);
                    let crossed = event.wrapping_sub(old) < moved;
                    assert_eq!(need_event(event, new, old), crossed, "{event} {new} {old}");
                }
            }
        }
        // Linux's examples: reaching event + 1 notifies; nothing new never does.
        assert!(need_event(5, 6, 5) && !need_event(7, 7, 7));
    }

    #[test]
    fn sizes_and_offsets_follow_the_layout() {
        assert_eq!(DESC_SIZE, 16);
        assert_eq!(USED_ELEM_SIZE, 8);
        assert_eq!(area_sizes(256), (4096, 6 + 512, 6 + 2048));
        assert_eq!(area_sizes(1), (16, 8, 14));
        assert_eq!(avail_slot_offset(3), 10);
        assert_eq!(used_event_offset(256), 4 + 512);
        assert_eq!(used_slot_offset(3), 28);
        assert_eq!(avail_event_offset(256), 4 + 2048);
        assert_eq!(desc_offset(2), 32);
        // The event fields are the last two bytes of their areas.
        assert_eq!(used_event_offset(8) as u64 + 2, avail_bytes(8));
        assert_eq!(avail_event_offset(8) as u64 + 2, used_bytes(8));
    }

    #[test]
    fn alignment_and_size_rules() {
        assert!(areas_aligned(0x1000, 0x2002, 0x3004));
        assert!(!areas_aligned(0x1008, 0x2002, 0x3004));
        assert!(!areas_aligned(0x1000, 0x2001, 0x3004));
        assert!(!areas_aligned(0x1000, 0x2002, 0x3002));
        assert!(is_valid_size(1));
        assert!(is_valid_size(32768));
        assert!(!is_valid_size(0));
        assert!(!is_valid_size(3));
        assert!(!is_valid_size(65536));
    }

    #[test]
    fn flags_are_the_spec_values() {
        assert_eq!(
            (VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_DESC_F_INDIRECT),
            (1, 2, 4)
        );
        assert_eq!((VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY), (1, 1));
    }
}
