//! The simulated NIC plugged into a tap device in a private network namespace: the
//! guest's frames leave on the tap (read with AF_PACKET), frames injected on the tap
//! arrive in the guest. The test thread unshares its own network namespace, so
//! nothing touches the host's interfaces. Skipped without root or /dev/net/tun.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hwdrv::sim::TapLink;
use hwdrv::{OffloadDatapath, SimConfig, SimNic};
use vdpa::Datapath;

const IFNAME: &str = "hwdrvtap0";

fn if_up(name: &str) {
    // SAFETY: plain socket creation; checked.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(s >= 0);
    // SAFETY: `s` is fresh and owned here.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: ifreq is plain data; zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, b) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write one ifreq.
    unsafe {
        assert_eq!(libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req), 0);
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req), 0);
    }
}

fn packet_socket(name: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
    // SAFETY: socket creation; checked.
    let s = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    assert!(s >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fd.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    assert!(index > 0);
    // SAFETY: sockaddr_ll is plain data.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = proto as u16;
    sa.sll_ifindex = index as i32;
    // SAFETY: binding with a valid sockaddr_ll of the given size.
    let rc = unsafe {
        libc::bind(
            s.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0);
    s
}

/// Reads frames of ethertype 0x88b5 until one arrives or the timeout passes.
fn read_test_frame(s: &OwnedFd, timeout: Duration) -> Option<Vec<u8>> {
    let end = Instant::now() + timeout;
    let mut buf = vec![0u8; 2048];
    while Instant::now() < end {
        let mut p = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut p, 1, 100) } <= 0 {
            continue;
        }
        // SAFETY: reading into a buffer of its length.
        let n = unsafe { libc::recv(s.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 14 && buf[12] == 0x88 && buf[13] == 0xb5 {
            return Some(buf[..n as usize].to_vec());
        }
    }
    None
}

#[test]
fn tap_link_carries_frames_both_ways_in_a_private_netns() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("skipped: needs root and /dev/net/tun");
        return;
    }
    // A dedicated thread so that the namespace change stays with it.
    std::thread::spawn(|| {
        // SAFETY: unshare affects only this thread's network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "skipped: unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        let tap = TapLink::open(IFNAME).unwrap();
        if_up(IFNAME);
        let sock = packet_socket(IFNAME);
        let nic = Arc::new(SimNic::new(SimConfig::default(), Box::new(tap)).unwrap());
        let mut dp = OffloadDatapath::new("tap", nic.clone(), 1).unwrap();
        let mut g = Guest::new(4 << 20);
        let mut p = PairRig::new(&mut g, 0, 64, false, 2048);
        p.fill_rx(&g);
        dp.start(p.config(&g, features(0))).unwrap();
        // Guest → tap.
        for seq in 0..20 {
            let f = frame(0, seq);
            p.send(&g, &f);
            let got = read_test_frame(&sock, Duration::from_secs(5)).expect("frame on the tap");
            assert_eq!(got, f);
        }
        // Tap → guest.
        for seq in 100..120 {
            let f = frame(0, seq);
            // SAFETY: sending a buffer of its length on a bound packet socket.
            let n = unsafe { libc::send(sock.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
            assert_eq!(n as usize, f.len());
            let got = loop {
                let got = p.recv(&g).expect("frame from the tap");
                if got.len() >= 14 && got[12] == 0x88 && got[13] == 0xb5 {
                    break got;
                }
            };
            assert_eq!(got, f);
        }
        assert_eq!(nic.dma_faults(), 0);
        dp.reset();
    })
    .join()
    .unwrap();
}
