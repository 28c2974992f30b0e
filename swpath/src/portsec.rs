//! Port security: what a device may receive and send on a shared host interface.
//!
//! - RX: a classic BPF program on each packet socket ([`rx_filter_program`]) passes only
//!   frames to the device's MAC, broadcast and multicast, on the device's VLANs, so a
//!   frame for someone else is dropped in the kernel before it costs a copy. A tap gets
//!   the same MAC filter through `TUNSETTXFILTER` (see `tap.rs`).
//! - TX: [`PortSecurity::check_tx`] looks at the first bytes of every frame the guest
//!   sends: its source MAC must be the device's, its IPv4/IPv6 source and ARP sender
//!   must be in `allowed_ips` when that list is set, and its VLAN tag must fit the
//!   port's VLAN mode. Refused frames are dropped and counted by reason
//!   ([`DropReason::SpoofedMac`] and friends).
//! - VLAN: an access port's frames are tagged on the way out ([`push_tagged`]) and
//!   arrive untagged (AF_PACKET hands the tag over out of band, and the filter checks
//!   it there).
//!
//! What the guest asks for through the virtio-net control queue (its MAC, RX-mode and
//! VLAN tables) never reaches vdpad: QEMU's vhost-user net keeps the control queue. The
//! device's identity is therefore the configured `mac`, and multicast is all or a
//! configured list.

use std::net::IpAddr;
use std::sync::Arc;

use vdpa::virtio::net_hdr::LEGACY_NET_HDR_LEN;
use vdpa::DropReason;

use crate::ring::Chain;
use crate::txq::TxQueue;

/// Bytes of a frame's start that the TX checks read: Ethernet, one VLAN tag, and the
/// largest source address offset (IPv6: 8 + 16 bytes into the L3 header).
pub const HEAD_LEN: usize = 64;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// An address prefix (`192.0.2.10/32`, `fe80::/64`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpPrefix {
    /// The network address.
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub len: u8,
}

impl IpPrefix {
    /// Whether `a` lies in the prefix (never across address families).
    pub fn contains(&self, a: IpAddr) -> bool {
        fn masked(bits: u128, len: u8, width: u8) -> u128 {
            if len == 0 {
                0
            } else {
                bits >> (width - len)
            }
        }
        match (self.addr, a) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let len = self.len.min(32);
                masked(u128::from(u32::from(p)), len, 32)
                    == masked(u128::from(u32::from(a)), len, 32)
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let len = self.len.min(128);
                masked(u128::from(p), len, 128) == masked(u128::from(a), len, 128)
            }
            _ => false,
        }
    }
}

/// The port security settings of one device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSecurity {
    /// The device's MAC: what it receives (unicast) and sends as. `None`: no identity,
    /// nothing is filtered by MAC.
    pub mac: Option<[u8; 6]>,
    /// Receive every unicast frame on the interface (the VLAN filter still applies).
    pub promiscuous: bool,
    /// Drop frames the guest sends with another source MAC (needs `mac`).
    pub spoof_check: bool,
    /// When not empty, IPv4/IPv6 sources and ARP sender addresses the guest may use.
    pub allowed_ips: Vec<IpPrefix>,
    /// Multicast groups to receive; `None` receives all multicast.
    pub multicast: Option<Vec<[u8; 6]>>,
    /// The access VLAN (with `trunk`: the native VLAN): untagged for the guest, tagged
    /// with this id on the wire.
    pub vlan: Option<u16>,
    /// VLANs the guest sends and receives tagged.
    pub trunk: Vec<u16>,
}

/// What to do with a frame the guest sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxVerdict {
    /// Send it as it is.
    Send,
    /// Send it with an 802.1Q tag of this VLAN id inserted after the MAC addresses.
    Tag(u16),
    /// Drop it and count it.
    Drop(DropReason),
}

impl PortSecurity {
    /// Whether frames are filtered on the way in (a MAC to filter on, not promiscuous),
    /// or VLANs restrict what arrives.
    pub fn filters_rx(&self) -> bool {
        (self.mac.is_some() && !self.promiscuous) || self.vlans_configured()
    }

    /// Whether the port is on any VLAN (otherwise it is on the untagged LAN).
    pub fn vlans_configured(&self) -> bool {
        self.vlan.is_some() || !self.trunk.is_empty()
    }

    /// Whether TX frames need looking at at all.
    pub fn checks_tx(&self) -> bool {
        (self.spoof_check && self.mac.is_some())
            || !self.allowed_ips.is_empty()
            || self.vlans_configured()
    }

    /// The verdict on a frame whose first bytes are `head` (up to [`HEAD_LEN`]; fewer
    /// if the frame is shorter).
    pub fn check_tx(&self, head: &[u8]) -> TxVerdict {
        if head.len() < 14 {
            return TxVerdict::Drop(DropReason::SpoofedMac);
        }
        let src: [u8; 6] = head[6..12].try_into().expect("6 bytes");
        if let (true, Some(mac)) = (self.spoof_check, self.mac) {
            if src != mac {
                return TxVerdict::Drop(DropReason::SpoofedMac);
            }
        }
        let mut ethertype = u16::from_be_bytes([head[12], head[13]]);
        let mut l3 = 14;
        let mut verdict = TxVerdict::Send;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            // Tagged by the guest: only on a trunk, with a listed VLAN, one tag deep.
            if head.len() < 18 || ethertype == ETH_P_8021AD {
                return TxVerdict::Drop(DropReason::Vlan);
            }
            let vid = u16::from_be_bytes([head[14], head[15]]) & 0x0fff;
            if !self.trunk.contains(&vid) {
                return TxVerdict::Drop(DropReason::Vlan);
            }
            ethertype = u16::from_be_bytes([head[16], head[17]]);
            if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
                return TxVerdict::Drop(DropReason::Vlan);
            }
            l3 = 18;
        } else if let Some(v) = self.vlan {
            verdict = TxVerdict::Tag(v);
        } else if !self.trunk.is_empty() {
            return TxVerdict::Drop(DropReason::Vlan);
        }
        if let Some(reason) = self.check_l3(ethertype, &head[l3.min(head.len())..], src) {
            return TxVerdict::Drop(reason);
        }
        verdict
    }

    /// The IP and ARP checks on the L3 header `l3` of a frame from MAC `src`.
    fn check_l3(&self, ethertype: u16, l3: &[u8], src: [u8; 6]) -> Option<DropReason> {
        if self.allowed_ips.is_empty() {
            return None;
        }
        let allowed = |a: IpAddr| self.allowed_ips.iter().any(|p| p.contains(a));
        match ethertype {
            ETH_P_IP => {
                let ok = l3.len() >= 20 && {
                    let a: [u8; 4] = l3[12..16].try_into().expect("4 bytes");
                    allowed(IpAddr::from(a))
                };
                (!ok).then_some(DropReason::SpoofedIp)
            }
            ETH_P_IPV6 => {
                let ok = l3.len() >= 24 && {
                    let a: [u8; 16] = l3[8..24].try_into().expect("16 bytes");
                    allowed(IpAddr::from(a))
                };
                (!ok).then_some(DropReason::SpoofedIp)
            }
            ETH_P_ARP => {
                // Ethernet/IPv4 ARP: sender MAC at 8, sender IP at 14.
                let ok = l3.len() >= 18
                    && l3[0..6] == [0, 1, 8, 0, 6, 4]
                    && (!self.spoof_check || l3[8..14] == src)
                    && {
                        let a: [u8; 4] = l3[14..18].try_into().expect("4 bytes");
                        allowed(IpAddr::from(a))
                    };
                (!ok).then_some(DropReason::SpoofedArp)
            }
            _ => None,
        }
    }
}

/// Copies the first bytes of the frame in `chain` (after its `hdr_len`-byte virtio-net
/// header) into `out`; returns how many (fewer than [`HEAD_LEN`] for a short frame).
pub fn read_head(chain: &Chain, hdr_len: usize, out: &mut [u8; HEAD_LEN]) -> usize {
    let mut skip = hdr_len;
    let mut got = 0;
    for s in chain.segs() {
        let len = s.len() as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        got += s.read_at(skip, &mut out[got..]);
        skip = 0;
        if got == HEAD_LEN {
            break;
        }
    }
    got
}

/// Where a tagged frame's private bytes live until its system call returns: the
/// virtio-net header (adjusted for the 4 inserted bytes) and the tag.
pub type TagScratch = [u8; 16];

const NET_HDR_F_NEEDS_CSUM: u8 = 1;

/// iovecs for the frame in `chain` with an 802.1Q tag for `vid` inserted after its MAC
/// addresses, appended to `out`. The backend takes a `wire_hdr`-byte header (10 for a
/// packet socket, the guest's length for a tap): a copy of the guest's, in `scratch`,
/// with `csum_start` and `hdr_len` moved by the 4 inserted bytes. Frames shorter than
/// the MAC addresses are not passed here (the TX check drops them).
pub fn push_tagged(
    chain: &Chain,
    hdr_len: usize,
    wire_hdr: usize,
    vid: u16,
    scratch: &mut TagScratch,
    out: &mut Vec<libc::iovec>,
) {
    let mut hdr = [0u8; 12];
    let mut got = 0;
    let mut skip = 0;
    // The guest's header, which may be spread over several buffers.
    for s in chain.segs() {
        got += s.read_at(0, &mut hdr[got..hdr_len]);
        if got == hdr_len {
            break;
        }
    }
    if hdr[0] & NET_HDR_F_NEEDS_CSUM != 0 {
        let cs = u16::from_le_bytes([hdr[6], hdr[7]]).saturating_add(4);
        hdr[6..8].copy_from_slice(&cs.to_le_bytes());
    }
    if hdr[1] != 0 {
        let hl = u16::from_le_bytes([hdr[2], hdr[3]]).saturating_add(4);
        hdr[2..4].copy_from_slice(&hl.to_le_bytes());
    }
    scratch[..wire_hdr].copy_from_slice(&hdr[..wire_hdr]);
    scratch[12..14].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
    scratch[14..16].copy_from_slice(&(vid & 0x0fff).to_be_bytes());
    // Both iovecs into `scratch` come from one raw pointer taken after the last write
    // through the reference: reborrowing `scratch` later would invalidate pointers
    // taken before (Miri's Stacked Borrows check found exactly that).
    let base = scratch.as_mut_ptr();
    let tag = libc::iovec {
        iov_base: base.wrapping_add(12).cast(),
        iov_len: 4,
    };
    out.push(libc::iovec {
        iov_base: base.cast(),
        iov_len: wire_hdr,
    });
    // Frame bytes: the first 12 (MACs), then the tag, then the rest.
    let mut pos = 0usize; // frame offset of the segment start (after the header)
    for s in chain.segs() {
        let len = s.len() as usize;
        if skip + len <= hdr_len {
            skip += len;
            continue;
        }
        let start = hdr_len.saturating_sub(skip);
        skip += len;
        let (seg_from, seg_len) = (start, len - start);
        let (a, b) = (pos, pos + seg_len);
        pos = b;
        let base = s.as_ptr().wrapping_add(seg_from);
        if b <= 12 || a >= 12 {
            out.push(libc::iovec {
                iov_base: base.cast(),
                iov_len: seg_len,
            });
            if b == 12 {
                out.push(tag);
            }
            continue;
        }
        // This segment holds byte 12: split it around the tag.
        let first = 12 - a;
        out.push(libc::iovec {
            iov_base: base.cast(),
            iov_len: first,
        });
        out.push(tag);
        out.push(libc::iovec {
            // SAFETY: first < seg_len.
            iov_base: unsafe { base.add(first) }.cast(),
            iov_len: seg_len - first,
        });
    }
}

/// The TX side of port security for one port: checks each frame and builds its
/// iovecs (tagged if need be), with scratch room for the tags of one batch.
pub struct TxGuard {
    security: Arc<PortSecurity>,
    scratch: Box<[TagScratch]>,
}

impl TxGuard {
    /// A guard for ports sending up to `batch` frames per system call; `None` when
    /// `security` checks nothing on TX (the port then skips the step).
    pub fn new(security: &Arc<PortSecurity>, batch: usize) -> Option<TxGuard> {
        security.checks_tx().then(|| TxGuard {
            security: security.clone(),
            scratch: vec![[0u8; 16]; batch].into_boxed_slice(),
        })
    }

    /// Checks the frame in `chain` and appends its iovecs to `out` as
    /// [`TxQueue::append_iovecs`] would (`hole`: the backend takes the 10-byte header),
    /// tagged if the port is on an access VLAN; `slot` (below the batch size) keeps the
    /// tag's bytes until the batch is sent. A refused frame appends nothing.
    pub fn append(
        &mut self,
        tx: &TxQueue,
        chain: &Chain,
        slot: usize,
        hole: bool,
        out: &mut Vec<libc::iovec>,
    ) -> Result<(), DropReason> {
        let mut head = [0u8; HEAD_LEN];
        let n = read_head(chain, tx.hdr_len(), &mut head);
        match self.security.check_tx(&head[..n]) {
            TxVerdict::Send => tx.append_iovecs(chain, hole, out),
            TxVerdict::Tag(vid) => {
                let wire = if hole {
                    LEGACY_NET_HDR_LEN
                } else {
                    tx.hdr_len()
                };
                push_tagged(chain, tx.hdr_len(), wire, vid, &mut self.scratch[slot], out);
            }
            TxVerdict::Drop(reason) => return Err(reason),
        }
        Ok(())
    }
}

// --- RX: the classic BPF filter ------------------------------------------------------

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_LD_H_ABS: u16 = 0x28;
const BPF_LD_B_ABS: u16 = 0x30;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JSET_K: u16 = 0x45;
const BPF_AND_K: u16 = 0x54;
const BPF_RET_K: u16 = 0x06;
/// `SKF_AD_OFF + SKF_AD_VLAN_TAG`: the TCI the device (or the stack) took off the frame.
const AD_VLAN_TAG: u32 = (-0x1000i32 + 44) as u32;
/// `SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT`: whether the frame had a tag.
const AD_VLAN_PRESENT: u32 = (-0x1000i32 + 48) as u32;

/// Where a jump goes, before offsets are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum To {
    Next,
    Accept,
    Drop,
    /// Instruction index.
    At(usize),
}

#[derive(Clone, Copy, Debug)]
struct Insn {
    code: u16,
    jt: To,
    jf: To,
    k: u32,
}

fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: To::Next,
        jf: To::Next,
        k,
    }
}

fn jump(code: u16, k: u32, jt: To, jf: To) -> Insn {
    Insn { code, jt, jf, k }
}

/// The classic BPF program that passes only the frames `ps` may receive (see the
/// module comment), or `None` when nothing is filtered. The program runs on the frame
/// as the packet socket sees it: the VLAN tag (if any) already out of band.
pub fn rx_filter_program(ps: &PortSecurity) -> Option<Vec<libc::sock_filter>> {
    if !ps.filters_rx() {
        return None;
    }
    let mut p: Vec<Insn> = Vec::new();
    p.push(stmt(BPF_LD_W_ABS, AD_VLAN_PRESENT));
    let mac_check;
    if ps.vlans_configured() {
        // Untagged frames belong to the untagged LAN, not to this port.
        p.push(jump(BPF_JEQ_K, 0, To::Drop, To::Next));
        p.push(stmt(BPF_LD_W_ABS, AD_VLAN_TAG));
        p.push(stmt(BPF_AND_K, 0x0fff));
        let vids: Vec<u16> = ps.vlan.iter().chain(&ps.trunk).copied().collect();
        let first = p.len();
        mac_check = first + vids.len() + 1;
        for v in vids {
            p.push(jump(BPF_JEQ_K, u32::from(v), To::At(mac_check), To::Next));
        }
        p.push(stmt(BPF_RET_K, 0));
    } else {
        // A port without VLANs must not see other VLANs' frames (untagged for it).
        mac_check = p.len() + 1;
        p.push(jump(BPF_JEQ_K, 0, To::Next, To::Drop));
    }
    debug_assert_eq!(p.len(), mac_check);
    match (ps.mac, ps.promiscuous) {
        (Some(mac), false) => {
            let ucast = p.len() + 2;
            p.push(stmt(BPF_LD_B_ABS, 0));
            p.push(jump(BPF_JSET_K, 1, To::At(ucast + 4), To::Next));
            // Unicast: exactly our MAC.
            p.push(stmt(BPF_LD_W_ABS, 2));
            p.push(jump(BPF_JEQ_K, be32(&mac[2..6]), To::Next, To::Drop));
            p.push(stmt(BPF_LD_H_ABS, 0));
            p.push(jump(BPF_JEQ_K, be16(&mac[0..2]), To::Accept, To::Drop));
            // Group addresses: all, or broadcast and the listed ones.
            match &ps.multicast {
                None => p.push(stmt(BPF_RET_K, u32::MAX)),
                Some(list) => {
                    let bcast = [0xff; 6];
                    for m in std::iter::once(&bcast).chain(list) {
                        let after = p.len() + 4;
                        p.push(stmt(BPF_LD_W_ABS, 2));
                        p.push(jump(BPF_JEQ_K, be32(&m[2..6]), To::Next, To::At(after)));
                        p.push(stmt(BPF_LD_H_ABS, 0));
                        p.push(jump(BPF_JEQ_K, be16(&m[0..2]), To::Accept, To::At(after)));
                    }
                    p.push(stmt(BPF_RET_K, 0));
                }
            }
        }
        _ => p.push(stmt(BPF_RET_K, u32::MAX)),
    }
    Some(assemble(&p))
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().expect("4 bytes"))
}

fn be16(b: &[u8]) -> u32 {
    u32::from(u16::from_be_bytes(b.try_into().expect("2 bytes")))
}

/// Resolves the symbolic jumps: the program gets a shared accept and drop at its end.
fn assemble(p: &[Insn]) -> Vec<libc::sock_filter> {
    let accept = p.len();
    let drop = p.len() + 1;
    let off = |i: usize, to: To| -> u8 {
        let target = match to {
            To::Next => i + 1,
            To::Accept => accept,
            To::Drop => drop,
            To::At(t) => t,
        };
        u8::try_from(target - i - 1).expect("BPF jump within 255 instructions")
    };
    let mut out: Vec<libc::sock_filter> = p
        .iter()
        .enumerate()
        .map(|(i, x)| libc::sock_filter {
            code: x.code,
            jt: off(i, x.jt),
            jf: off(i, x.jf),
            k: x.k,
        })
        .collect();
    for k in [u32::MAX, 0] {
        out.push(libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k,
        });
    }
    out
}

#[cfg(test)]
#[path = "portsec_tests.rs"]
mod tests;
