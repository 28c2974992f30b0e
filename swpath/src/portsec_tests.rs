//! The TX checks on crafted frames, the tag insertion on split buffers, and the RX
//! filter program run by a small interpreter of the instructions it uses (the kernel
//! runs it for real in swpath/tests/port_security.rs).

use super::*;

const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0x17, 1];
const OTHER: [u8; 6] = [0x52, 0x54, 0, 0, 0x17, 2];

fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f.resize(f.len().max(60), 0);
    f
}

fn ipv4(src: [u8; 4]) -> Vec<u8> {
    let mut h = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0];
    h.extend_from_slice(&src);
    h.extend_from_slice(&[192, 0, 2, 1]);
    h
}

fn arp(sender_mac: [u8; 6], sender_ip: [u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&sender_mac);
    a.extend_from_slice(&sender_ip);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&[192, 0, 2, 1]);
    a
}

fn secured() -> PortSecurity {
    PortSecurity {
        mac: Some(MAC),
        spoof_check: true,
        ..Default::default()
    }
}

fn prefix(s: &str) -> IpPrefix {
    let (a, l) = s.split_once('/').unwrap();
    IpPrefix {
        addr: a.parse().unwrap(),
        len: l.parse().unwrap(),
    }
}

#[test]
fn source_mac_must_be_the_devices() {
    let ps = secured();
    let bc = [0xff; 6];
    assert_eq!(ps.check_tx(&frame(bc, MAC, 0x88b5, &[])), TxVerdict::Send);
    assert_eq!(
        ps.check_tx(&frame(bc, OTHER, 0x88b5, &[])),
        TxVerdict::Drop(DropReason::SpoofedMac)
    );
    assert_eq!(
        ps.check_tx(&MAC[..]),
        TxVerdict::Drop(DropReason::SpoofedMac),
        "a runt cannot be checked"
    );
    let off = PortSecurity {
        spoof_check: false,
        ..secured()
    };
    assert_eq!(
        off.check_tx(&frame(bc, OTHER, 0x88b5, &[])),
        TxVerdict::Send
    );
}

#[test]
fn allowed_ips_cover_ipv4_ipv6_and_arp() {
    let ps = PortSecurity {
        allowed_ips: vec![prefix("192.0.2.10/32"), prefix("fe80::/64")],
        ..secured()
    };
    let bc = [0xff; 6];
    let ok = frame(bc, MAC, 0x0800, &ipv4([192, 0, 2, 10]));
    let bad = frame(bc, MAC, 0x0800, &ipv4([192, 0, 2, 11]));
    assert_eq!(ps.check_tx(&ok), TxVerdict::Send);
    assert_eq!(ps.check_tx(&bad), TxVerdict::Drop(DropReason::SpoofedIp));
    let mut v6 = vec![0x60, 0, 0, 0, 0, 0, 58, 255];
    v6.extend_from_slice(&"fe80::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    v6.extend_from_slice(&[0; 16]);
    assert_eq!(ps.check_tx(&frame(bc, MAC, 0x86dd, &v6)), TxVerdict::Send);
    v6[8] = 0x20;
    v6[9] = 0x01;
    assert_eq!(
        ps.check_tx(&frame(bc, MAC, 0x86dd, &v6)),
        TxVerdict::Drop(DropReason::SpoofedIp)
    );
    let good_arp = frame(bc, MAC, 0x0806, &arp(MAC, [192, 0, 2, 10]));
    assert_eq!(ps.check_tx(&good_arp), TxVerdict::Send);
    for bad in [arp(MAC, [192, 0, 2, 99]), arp(OTHER, [192, 0, 2, 10])] {
        assert_eq!(
            ps.check_tx(&frame(bc, MAC, 0x0806, &bad)),
            TxVerdict::Drop(DropReason::SpoofedArp)
        );
    }
    // Non-IP protocols are not address-checked.
    assert_eq!(ps.check_tx(&frame(bc, MAC, 0x88b5, &[])), TxVerdict::Send);
}

#[test]
fn prefixes_match_by_family_and_length() {
    let p = prefix("198.51.100.0/24");
    assert!(p.contains("198.51.100.77".parse().unwrap()));
    assert!(!p.contains("198.51.101.1".parse().unwrap()));
    assert!(!p.contains("::1".parse().unwrap()));
    assert!(prefix("0.0.0.0/0").contains("192.0.2.1".parse().unwrap()));
}

fn tagged(vid: u16, inner: u16) -> Vec<u8> {
    let mut f = frame([0xff; 6], MAC, 0x8100, &[]);
    f.truncate(14);
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&inner.to_be_bytes());
    f.resize(60, 0);
    f
}

#[test]
fn vlan_modes() {
    let access = PortSecurity {
        vlan: Some(100),
        ..secured()
    };
    let plain = frame([0xff; 6], MAC, 0x88b5, &[]);
    assert_eq!(access.check_tx(&plain), TxVerdict::Tag(100));
    assert_eq!(
        access.check_tx(&tagged(100, 0x88b5)),
        TxVerdict::Drop(DropReason::Vlan),
        "an access port's guest may not tag"
    );
    let trunk = PortSecurity {
        trunk: vec![200, 300],
        ..secured()
    };
    assert_eq!(trunk.check_tx(&tagged(200, 0x88b5)), TxVerdict::Send);
    assert_eq!(
        trunk.check_tx(&tagged(0x2000 | 300, 0x88b5)),
        TxVerdict::Send,
        "priority bits are not the VLAN id"
    );
    assert_eq!(
        trunk.check_tx(&tagged(201, 0x88b5)),
        TxVerdict::Drop(DropReason::Vlan)
    );
    assert_eq!(
        trunk.check_tx(&tagged(200, 0x8100)),
        TxVerdict::Drop(DropReason::Vlan),
        "no double tagging"
    );
    assert_eq!(trunk.check_tx(&plain), TxVerdict::Drop(DropReason::Vlan));
    let native = PortSecurity {
        vlan: Some(100),
        ..trunk.clone()
    };
    assert_eq!(native.check_tx(&plain), TxVerdict::Tag(100));
    // The IP check looks behind the tag.
    let ip = PortSecurity {
        allowed_ips: vec![prefix("192.0.2.10/32")],
        ..trunk
    };
    let mut f = tagged(200, 0x0800);
    f.truncate(18);
    f.extend_from_slice(&ipv4([192, 0, 2, 11]));
    assert_eq!(ip.check_tx(&f), TxVerdict::Drop(DropReason::SpoofedIp));
}

/// A chain over `parts` (owned by the caller), the first `hdr` bytes being the header.
fn chain_over(parts: &mut [Vec<u8>]) -> Chain {
    // SAFETY: every caller keeps `parts` alive and unchanged while it uses the chain.
    unsafe { Chain::over_host_buffers(0, parts) }
}

fn gather(iov: &[libc::iovec]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in iov {
        // SAFETY: the iovecs point into live test buffers.
        out.extend_from_slice(unsafe {
            std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
        });
    }
    out
}

#[test]
fn tag_insertion_on_any_split() {
    let payload = frame([0xff; 6], MAC, 0x0800, &ipv4([192, 0, 2, 10]));
    let mut hdr = [0u8; 12];
    hdr[0] = 1; // NEEDS_CSUM
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
    let whole: Vec<u8> = hdr.iter().chain(&payload).copied().collect();
    let mut want = payload[..12].to_vec();
    want.extend_from_slice(&[0x81, 0, 0, 7]);
    want.extend_from_slice(&payload[12..]);
    for cut1 in 1..30 {
        for cut2 in cut1 + 1..40 {
            let mut parts = vec![
                whole[..cut1].to_vec(),
                whole[cut1..cut2].to_vec(),
                whole[cut2..].to_vec(),
            ];
            let c = chain_over(&mut parts);
            let mut head = [0u8; HEAD_LEN];
            let n = read_head(&c, 12, &mut head);
            assert_eq!(&head[..n], &payload[..n]);
            let mut scratch = [0u8; 16];
            let mut iov = Vec::new();
            push_tagged(&c, 12, 10, 7, &mut scratch, &mut iov);
            let got = gather(&iov);
            assert_eq!(&got[10..], &want[..], "cuts {cut1} {cut2}");
            assert_eq!(u16::from_le_bytes([got[6], got[7]]), 38, "csum_start moved");
        }
    }
}

/// Runs a classic BPF program on `pkt` with the VLAN tag `tci` out of band.
fn run(prog: &[libc::sock_filter], pkt: &[u8], tci: Option<u16>) -> u32 {
    let mut a: u32 = 0;
    let mut pc = 0;
    loop {
        let i = prog[pc];
        let load = |k: u32, n: usize| -> Option<u32> {
            if k == AD_VLAN_PRESENT {
                return Some(u32::from(tci.is_some()));
            }
            if k == AD_VLAN_TAG {
                return Some(u32::from(tci.unwrap_or(0)));
            }
            let k = k as usize;
            let b = pkt.get(k..k + n)?;
            Some(b.iter().fold(0, |acc, &x| (acc << 8) | u32::from(x)))
        };
        pc += 1;
        match i.code {
            BPF_LD_W_ABS | BPF_LD_H_ABS | BPF_LD_B_ABS => {
                let n = match i.code {
                    BPF_LD_W_ABS => 4,
                    BPF_LD_H_ABS => 2,
                    _ => 1,
                };
                match load(i.k, n) {
                    Some(v) => a = v,
                    None => return 0,
                }
            }
            BPF_AND_K => a &= i.k,
            BPF_JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
            BPF_JSET_K => pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf }),
            BPF_RET_K => return i.k,
            c => panic!("unexpected opcode {c:#x}"),
        }
    }
}

#[test]
fn rx_filter_passes_own_unicast_broadcast_and_multicast() {
    let ps = secured();
    let prog = rx_filter_program(&ps).expect("filtered");
    let to = |dst: [u8; 6]| frame(dst, OTHER, 0x88b5, &[]);
    assert_ne!(run(&prog, &to(MAC), None), 0);
    assert_ne!(run(&prog, &to([0xff; 6]), None), 0);
    assert_ne!(run(&prog, &to([0x33, 0x33, 0, 0, 0, 1]), None), 0);
    assert_eq!(run(&prog, &to(OTHER), None), 0);
    let mut near = MAC;
    near[0] ^= 0x02;
    assert_eq!(
        run(&prog, &to(near), None),
        0,
        "the first two bytes count too"
    );
    assert_eq!(run(&prog, &to(MAC), Some(5)), 0, "other VLANs stay out");
    // A multicast list: only broadcast and the listed groups.
    let listed = [0x01, 0, 0x5e, 0, 0, 0xfb];
    let ps = PortSecurity {
        multicast: Some(vec![listed]),
        ..secured()
    };
    let prog = rx_filter_program(&ps).unwrap();
    assert_ne!(run(&prog, &to(listed), None), 0);
    assert_ne!(run(&prog, &to([0xff; 6]), None), 0);
    assert_eq!(run(&prog, &to([0x33, 0x33, 0, 0, 0, 1]), None), 0);
    assert_ne!(run(&prog, &to(MAC), None), 0);
    // Promiscuous without VLANs: no filter at all; without a MAC neither.
    let promisc = PortSecurity {
        promiscuous: true,
        ..secured()
    };
    assert!(rx_filter_program(&promisc).is_none());
    assert!(rx_filter_program(&PortSecurity::default()).is_none());
}

#[test]
fn rx_filter_vlans() {
    let ps = PortSecurity {
        vlan: Some(100),
        trunk: vec![200],
        ..secured()
    };
    let prog = rx_filter_program(&ps).unwrap();
    let f = frame(MAC, OTHER, 0x88b5, &[]);
    assert_ne!(run(&prog, &f, Some(100)), 0);
    assert_ne!(
        run(&prog, &f, Some(0xe000 | 200)),
        0,
        "priority bits ignored"
    );
    assert_eq!(run(&prog, &f, Some(300)), 0);
    assert_eq!(run(&prog, &f, None), 0, "untagged is the untagged LAN");
    assert_eq!(run(&prog, &frame(OTHER, MAC, 0x88b5, &[]), Some(100)), 0);
    let promisc = PortSecurity {
        promiscuous: true,
        ..ps
    };
    let prog = rx_filter_program(&promisc).unwrap();
    assert_ne!(run(&prog, &frame(OTHER, MAC, 0x88b5, &[]), Some(100)), 0);
    assert_eq!(run(&prog, &f, Some(300)), 0);
}
