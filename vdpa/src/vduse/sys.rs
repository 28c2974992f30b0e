//! The VDUSE user API (`include/uapi/linux/vduse.h`, API version 0): the structures
//! passed to its ioctls and through `read`/`write` on a device fd, with their sizes
//! checked at compile time, and the ioctl numbers.

#![allow(missing_docs)] // field names are the kernel's; each struct says what it is for

use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

/// The ioctl type byte of VDUSE.
const VDUSE_BASE: u32 = 0x81;

/// The API version vdpad speaks (the only one Linux 6.12 knows).
pub const VDUSE_API_VERSION: u64 = 0;

/// Longest device name, NUL included.
pub const VDUSE_NAME_MAX: usize = 256;

/// `VIRTIO_ID_NET`.
pub const VIRTIO_ID_NET: u32 = 1;

/// Result codes of a response.
pub const VDUSE_REQ_RESULT_OK: u32 = 0;
/// The request failed.
pub const VDUSE_REQ_RESULT_FAILED: u32 = 1;

/// Request types read from a device fd.
pub const VDUSE_GET_VQ_STATE: u32 = 0;
/// The driver set the device status.
pub const VDUSE_SET_STATUS: u32 = 1;
/// The IOTLB changed in a range.
pub const VDUSE_UPDATE_IOTLB: u32 = 2;

/// IOTLB permission bits.
pub const VDUSE_ACCESS_RO: u8 = 0x1;
/// Writable (by the device).
pub const VDUSE_ACCESS_WO: u8 = 0x2;

/// `struct vduse_dev_config`, without its trailing config space.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DevConfig {
    pub name: [u8; VDUSE_NAME_MAX],
    pub vendor_id: u32,
    pub device_id: u32,
    pub features: u64,
    pub vq_num: u32,
    pub vq_align: u32,
    pub reserved: [u32; 13],
    pub config_size: u32,
}

/// `struct vduse_iotlb_entry`: one IOVA range and where its pages are.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IotlbEntry {
    pub offset: u64,
    pub start: u64,
    pub last: u64,
    pub perm: u8,
}

/// `struct vduse_vq_config`: a virtqueue's maximum size.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VqConfig {
    pub index: u32,
    pub max_size: u16,
    pub reserved1: u16,
    pub group: u32,
    pub reserved2: [u16; 10],
}

/// `struct vduse_vq_info`: where the driver put a virtqueue (IOVAs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VqInfo {
    pub index: u32,
    pub num: u32,
    pub desc_addr: u64,
    pub driver_addr: u64,
    pub device_addr: u64,
    /// `split.avail_index` in the first u16; packed rings use all four.
    pub state: [u16; 4],
    pub ready: u8,
}

/// `struct vduse_vq_eventfd`: a kick eventfd for a virtqueue (-1 deassigns).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VqEventFd {
    pub index: u32,
    pub fd: i32,
}

/// `struct vduse_dev_request`, read from the device fd.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct DevRequest {
    pub kind: u32,
    pub request_id: u32,
    pub reserved: [u32; 4],
    /// The union: `vq_state.index` (u32), `s.status` (u8), or `iova.start/last`
    /// (two u64).
    pub payload: [u64; 16],
}

impl DevRequest {
    /// The virtqueue index of a GET_VQ_STATE request.
    pub fn vq_index(&self) -> u32 {
        self.payload[0] as u32
    }

    /// The status byte of a SET_STATUS request.
    pub fn status(&self) -> u8 {
        self.payload[0] as u8
    }

    /// The `[start, last]` range of an UPDATE_IOTLB request.
    pub fn iova_range(&self) -> (u64, u64) {
        (self.payload[0], self.payload[1])
    }
}

/// `struct vduse_dev_response`, written to the device fd.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DevResponse {
    pub request_id: u32,
    pub result: u32,
    pub reserved: [u32; 4],
    /// The union: for GET_VQ_STATE, `vq_state.index` (u32) then `split.avail_index`
    /// (u16).
    pub payload: [u32; 32],
}

impl DevResponse {
    /// A response to `request_id` with `result`.
    pub fn new(request_id: u32, result: u32) -> Self {
        DevResponse {
            request_id,
            result,
            reserved: [0; 4],
            payload: [0; 32],
        }
    }

    /// The answer to GET_VQ_STATE of a split ring: `avail_index` for queue `index`.
    pub fn with_split_state(mut self, index: u32, avail_index: u16) -> Self {
        self.payload[0] = index;
        self.payload[1] = u32::from(avail_index);
        self
    }
}

const _: () = assert!(std::mem::size_of::<DevConfig>() == 336);
const _: () = assert!(std::mem::size_of::<IotlbEntry>() == 32);
const _: () = assert!(std::mem::size_of::<VqConfig>() == 32);
const _: () = assert!(std::mem::size_of::<VqInfo>() == 48);
const _: () = assert!(std::mem::offset_of!(VqInfo, ready) == 40);
/// `struct vduse_config_data` without its flexible `buffer[]`: VDUSE_DEV_SET_CONFIG
/// reads this header and then `length` bytes right after it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConfigDataHeader {
    /// Offset in the device's config space.
    pub offset: u32,
    /// Bytes that follow.
    pub length: u32,
}

const _: () = assert!(std::mem::size_of::<VqEventFd>() == 8);
const _: () = assert!(std::mem::size_of::<ConfigDataHeader>() == 8);
const _: () = assert!(std::mem::size_of::<DevRequest>() == 152);
const _: () = assert!(std::mem::offset_of!(DevRequest, payload) == 24);
const _: () = assert!(std::mem::size_of::<DevResponse>() == 152);

ioctl_ior_nr!(VDUSE_GET_API_VERSION, VDUSE_BASE, 0x00, u64);
ioctl_iow_nr!(VDUSE_SET_API_VERSION, VDUSE_BASE, 0x01, u64);
ioctl_iow_nr!(VDUSE_CREATE_DEV, VDUSE_BASE, 0x02, DevConfig);
ioctl_iow_nr!(VDUSE_DESTROY_DEV, VDUSE_BASE, 0x03, [u8; VDUSE_NAME_MAX]);
ioctl_iowr_nr!(VDUSE_IOTLB_GET_FD, VDUSE_BASE, 0x10, IotlbEntry);
ioctl_ior_nr!(VDUSE_DEV_GET_FEATURES, VDUSE_BASE, 0x11, u64);
ioctl_iow_nr!(VDUSE_DEV_SET_CONFIG, VDUSE_BASE, 0x12, ConfigDataHeader);
ioctl_io_nr!(VDUSE_DEV_INJECT_CONFIG_IRQ, VDUSE_BASE, 0x13);
ioctl_iow_nr!(VDUSE_VQ_SETUP, VDUSE_BASE, 0x14, VqConfig);
ioctl_iowr_nr!(VDUSE_VQ_GET_INFO, VDUSE_BASE, 0x15, VqInfo);
ioctl_iow_nr!(VDUSE_VQ_SETUP_KICKFD, VDUSE_BASE, 0x16, VqEventFd);
ioctl_iow_nr!(VDUSE_VQ_INJECT_IRQ, VDUSE_BASE, 0x17, u32);

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers the kernel header's macros give (computed by hand from _IOC).
    #[test]
    fn ioctl_numbers_match_the_kernel() {
        assert_eq!(VDUSE_GET_API_VERSION(), 0x8008_8100);
        assert_eq!(VDUSE_SET_API_VERSION(), 0x4008_8101);
        assert_eq!(VDUSE_CREATE_DEV(), 0x4150_8102);
        assert_eq!(VDUSE_DESTROY_DEV(), 0x4100_8103);
        assert_eq!(VDUSE_IOTLB_GET_FD(), 0xc020_8110);
        assert_eq!(VDUSE_DEV_GET_FEATURES(), 0x8008_8111);
        assert_eq!(VDUSE_DEV_INJECT_CONFIG_IRQ(), 0x8113);
        assert_eq!(VDUSE_DEV_SET_CONFIG(), 0x4008_8112);
        assert_eq!(VDUSE_VQ_SETUP(), 0x4020_8114);
        assert_eq!(VDUSE_VQ_GET_INFO(), 0xc030_8115);
        assert_eq!(VDUSE_VQ_SETUP_KICKFD(), 0x4008_8116);
        assert_eq!(VDUSE_VQ_INJECT_IRQ(), 0x4004_8117);
    }

    #[test]
    fn request_fields_sit_where_the_kernel_puts_them() {
        let mut r = DevRequest::default();
        r.payload[0] = 0x1_0000_0002;
        assert_eq!(r.vq_index(), 2);
        assert_eq!(r.status(), 2);
        r.payload[1] = 0xfff;
        assert_eq!(r.iova_range(), (0x1_0000_0002, 0xfff));
        let resp = DevResponse::new(7, VDUSE_REQ_RESULT_OK).with_split_state(1, 300);
        assert_eq!((resp.payload[0], resp.payload[1]), (1, 300));
    }
}
