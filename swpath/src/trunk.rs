//! Receiving on a VLAN trunk through AF_PACKET: the kernel takes the 802.1Q tag off
//! every frame before a packet socket sees it and reports it out of band
//! (`PACKET_AUXDATA`, `tp_vlan_tci`). A frame of a trunk VLAN must reach the guest
//! tagged, so its tag is put back in the guest's buffer; frames of the native VLAN
//! (the port's `vlan`) stay untagged. The socket's filter already refused every other
//! VLAN, so nothing here decides whether a frame is wanted.

use vdpa::virtio::net_hdr::{LEGACY_NET_HDR_LEN, NET_HDR_F_NEEDS_CSUM};

use crate::af_packet::GuestFrame;
use crate::csum::Bytes;
use crate::portsec::PortSecurity;
use crate::rxq::RxQueue;

const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
/// Room for one `PACKET_AUXDATA` control message (aligned header and the struct).
const CONTROL_LEN: usize = 64;

/// The VLANs a trunk port delivers tagged, and one control buffer per message of a
/// batch.
pub(crate) struct Trunk {
    tagged: Vec<u16>,
    control: Vec<[u64; CONTROL_LEN / 8]>,
}

impl Trunk {
    /// `None` unless the port has a trunk list.
    pub(crate) fn new(security: &PortSecurity, batch: usize) -> Option<Trunk> {
        let tagged: Vec<u16> = security
            .trunk
            .iter()
            .copied()
            .filter(|v| Some(*v) != security.vlan)
            .collect();
        (!tagged.is_empty()).then(|| Trunk {
            tagged,
            control: vec![[0; CONTROL_LEN / 8]; batch],
        })
    }

    /// Gives each of `msgs` a control buffer for its auxiliary data.
    pub(crate) fn attach(&mut self, msgs: &mut [libc::mmsghdr]) {
        for (m, c) in msgs.iter_mut().zip(self.control.iter_mut()) {
            m.msg_hdr.msg_control = c.as_mut_ptr().cast();
            m.msg_hdr.msg_controllen = CONTROL_LEN;
        }
    }

    /// The tag (TCI) to put back on the frame `msg` received, if it came on a VLAN the
    /// guest receives tagged.
    pub(crate) fn tag_of(&self, msg: &libc::mmsghdr) -> Option<u16> {
        let hdr = &msg.msg_hdr;
        // SAFETY: CMSG_FIRSTHDR/NXTHDR walk the control buffer the kernel filled, bounded
        // by msg_controllen; the data of a SOL_PACKET/PACKET_AUXDATA message is a
        // tpacket_auxdata, read unaligned.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(hdr);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA {
                    let aux: libc::tpacket_auxdata =
                        std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    if aux.tp_status & TP_STATUS_VLAN_VALID == 0 {
                        return None;
                    }
                    let vid = aux.tp_vlan_tci & 0x0fff;
                    return self.tagged.contains(&vid).then_some(aux.tp_vlan_tci);
                }
                c = libc::CMSG_NXTHDR(hdr, c);
            }
        }
        None
    }
}

/// Puts an 802.1Q tag `tci` back into the frame of `len` bytes (10-byte header
/// included) a packet socket wrote into the front pending chains: the bytes after the
/// MAC addresses move up by 4, and the header's checksum start and header length move
/// with them. Returns the new length, or `None` if the buffers have no room.
pub(crate) fn insert_tag(rx: &RxQueue, len: usize, tci: u16) -> Option<usize> {
    let hdr_len = rx.hdr_len();
    let flen = len.checked_sub(LEGACY_NET_HDR_LEN)?;
    let mut frame = GuestFrame::new(rx, hdr_len + flen + 4, hdr_len);
    if flen < 12 || frame.len() < flen + 4 {
        return None;
    }
    // From the end: the ranges overlap.
    for i in (12..flen).rev() {
        frame.set(i + 4, frame.get(i));
    }
    let t = tci.to_be_bytes();
    for (i, b) in [0x81, 0x00, t[0], t[1]].into_iter().enumerate() {
        frame.set(12 + i, b);
    }
    let mut hdr = GuestFrame::new(rx, hdr_len, 0);
    let bump = |h: &mut GuestFrame, at: usize| {
        let v = u16::from_le_bytes([h.get(at), h.get(at + 1)]).saturating_add(4);
        let [lo, hi] = v.to_le_bytes();
        h.set(at, lo);
        h.set(at + 1, hi);
    };
    if hdr.get(0) & NET_HDR_F_NEEDS_CSUM != 0 {
        bump(&mut hdr, 6);
    }
    if hdr.get(1) != 0 {
        bump(&mut hdr, 2);
    }
    Some(len + 4)
}
