//! Announcing a migrated guest (vhost-user SEND_RARP): a RARP request from the guest's
//! MAC, broadcast on the host side of the device, so that bridges and switches learn
//! the guest's new port before the guest sends anything itself.
//!
//! QEMU asks for it only when the guest did not negotiate VIRTIO_NET_F_GUEST_ANNOUNCE
//! (a guest that did sends its own gratuitous ARPs, through the datapath like any
//! frame). The frame is what QEMU's `announce_self_create` and DPDK's
//! `make_rarp_packet` build: 60 bytes, ethertype 0x8035, operation 3 (request
//! reverse), the MAC as sender and target hardware address, zero IP addresses.

use std::io;
use std::os::fd::AsRawFd;

/// Length of the frame (the Ethernet minimum without FCS).
pub const RARP_LEN: usize = 60;

/// The RARP frame announcing `mac`.
pub fn rarp_frame(mac: [u8; 6]) -> [u8; RARP_LEN] {
    let mut f = [0u8; RARP_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x8035u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6; // hardware address length
    f[19] = 4; // protocol address length
    f[20..22].copy_from_slice(&3u16.to_be_bytes()); // request reverse
    f[22..28].copy_from_slice(&mac); // sender hardware address
    f[32..38].copy_from_slice(&mac); // target hardware address
    f
}

/// Writes `frame` behind a zeroed `hdr_len`-byte virtio-net header (the header a tap or
/// a packet socket with a vnet header expects: no checksum, no segmentation) to `fd`.
pub fn send_with_vnet_hdr(fd: &impl AsRawFd, hdr_len: usize, frame: &[u8]) -> io::Result<()> {
    let hdr = [0u8; vdpa::virtio::net_hdr::NET_HDR_LEN];
    let iov = [
        libc::iovec {
            iov_base: hdr.as_ptr() as *mut libc::c_void,
            iov_len: hdr_len.min(hdr.len()),
        },
        libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        },
    ];
    // SAFETY: both iovecs point at live buffers of the lengths given.
    let n = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_a_broadcast_rarp_request_from_the_mac() {
        let mac = [0x52, 0x54, 0, 0xab, 0xcd, 0xef];
        let f = rarp_frame(mac);
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        assert_eq!(&f[20..22], &[0, 3]);
        assert_eq!((&f[22..28], &f[32..38]), (&mac[..], &mac[..]));
        assert!(f[28..32].iter().chain(&f[38..]).all(|&b| b == 0));
    }
}
