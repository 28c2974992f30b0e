//! vdpa-rig ⇄ control plane ⇄ software datapath ⇄ real kernel interfaces in a private
//! network namespace — a tap device, or AF_PACKET on one end of a veth pair — where a
//! packet socket on the far side reflects every frame back: frames cross the kernel
//! twice and must come back intact, in order, exactly once.
//!
//! Needs root (network namespaces, /dev/net/tun); run with `--include-ignored`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

mod support;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use support::Served;

use swpath::af_packet::AfPacket;
use swpath::tap::Tap;
use swpath::{Backend, SoftwareDatapath};
use vdpad_config::Backend as CfgBackend;

/// A network namespace of our own, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("vdpad-swk-{}-{n}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name} (needs root)");
        let ns = Netns { name };
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        ns
    }

    fn exec(&self, args: &[&str]) {
        let ok = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .status()
            .unwrap();
        assert!(ok.success(), "{args:?} in {}", self.name);
    }

    /// Runs `f` on a thread that has entered the namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        let path = PathBuf::from("/var/run/netns").join(&self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap();
            // SAFETY: setns on a namespace fd we own; it only changes this thread's
            // network namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Sends every frame that arrives on `ifname` back out of it, until stopped.
fn reflector(ns: &Netns, ifname: String, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let t = ns.run(move || {
        // SAFETY: socket(2); checked and owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                (libc::ETH_P_ALL as u16).to_be() as i32,
            )
        };
        assert!(fd >= 0);
        // SAFETY: fresh fd, owned by the File.
        let sock = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let cname = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert!(ifindex > 0);
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: binding with a properly sized sockaddr_ll.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0);
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        // SAFETY: setting a timeval socket option with its exact size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        // Room for every frame the rig can have in flight: a slow reflector must not
        // be where frames are lost.
        let big: libc::c_int = 8 << 20;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
            // SAFETY: an int socket option with its exact size.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&big as *const libc::c_int).cast(),
                    4,
                );
            }
        }
        let mut buf = vec![0u8; 65536];
        let mut n_reflected = 0;
        ready_tx.send(()).unwrap();
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: zeroed sockaddr_ll to receive the sender address.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buffer and address are valid for the sizes given.
            let n = unsafe {
                libc::recvfrom(
                    sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n <= 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            // SAFETY: sending n bytes of our buffer to the bound interface.
            let rc = unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    buf.as_ptr().cast(),
                    n as usize,
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if rc > 0 {
                n_reflected += 1;
            }
        }
        n_reflected
    });
    ready_rx.recv().expect("reflector is listening");
    t
}

/// A device on a kernel backend in a namespace, with a reflector on the far side.
/// Fields drop in order: the reflector stops, the device stops, the namespace goes.
struct KernelRig {
    stop: Arc<AtomicBool>,
    refl: Option<JoinHandle<u64>>,
    served: Served,
    _ns: Netns,
}

impl KernelRig {
    /// A tap device `vdt0`; the reflector sits on the tap's kernel side.
    fn tap(pairs: u16) -> Self {
        let ns = Netns::new();
        let tap = ns
            .run(move || Tap::open(Some("vdt0"), pairs))
            .join()
            .unwrap()
            .expect("tap opens");
        let cfg = CfgBackend::Tap {
            name: Some("vdt0".into()),
        };
        Self::serve(ns, Backend::Tap(tap), cfg, pairs, "vdt0")
    }

    /// AF_PACKET on `veth0`; the reflector sits on its peer `veth1`.
    fn af_packet(pairs: u16) -> Self {
        let ns = Netns::new();
        ns.exec(&[
            "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
        ]);
        ns.exec(&["ip", "link", "set", "veth0", "up"]);
        ns.exec(&["ip", "link", "set", "veth1", "up"]);
        let sock = ns
            .run(move || AfPacket::open("veth0", pairs))
            .join()
            .unwrap()
            .expect("sockets open");
        let cfg = CfgBackend::AfPacket {
            netdev: Some("veth0".into()),
        };
        Self::serve(ns, Backend::AfPacket(sock), cfg, pairs, "veth1")
    }

    fn serve(ns: Netns, backend: Backend, cfg: CfgBackend, pairs: u16, far_side: &str) -> Self {
        let served = Served::start("kb", cfg, pairs, 256, |name| {
            SoftwareDatapath::new(name, backend, 1500, swpath::Tuning::default())
        });
        let stop = Arc::new(AtomicBool::new(false));
        let refl = Some(reflector(&ns, far_side.into(), stop.clone()));
        KernelRig {
            stop,
            refl,
            served,
            _ns: ns,
        }
    }

    fn verify(&self, tweak: impl FnOnce(&mut vdpa_rig::RigOptions), packets: u64, size: usize) {
        self.served.verify(tweak, packets, size);
    }
}

impl Drop for KernelRig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.refl.take() {
            println!("reflector sent {} frames", r.join().unwrap_or(0));
        }
    }
}

#[test]
#[ignore = "needs root (netns, /dev/net/tun); run with --include-ignored"]
fn frames_cross_a_real_tap_and_come_back() {
    let t = KernelRig::tap(1);
    t.verify(|_| {}, 20_000, 64);
    t.verify(|o| o.event_idx = false, 5_000, 1514);
    t.verify(|o| o.rx_buf_size = 512, 5_000, 1514);
    t.verify(
        |o| {
            o.mrg_rxbuf = false;
            o.rx_buf_size = 2048;
        },
        5_000,
        1000,
    );
    let s = t.served.handle.stats();
    assert_eq!(s[0].total_drops() + s[1].total_drops(), 0, "{s:#?}");
}

#[test]
#[ignore = "needs root (netns, veth, AF_PACKET); run with --include-ignored"]
fn frames_cross_af_packet_on_a_veth_and_come_back() {
    let t = KernelRig::af_packet(1);
    t.verify(|_| {}, 20_000, 64);
    t.verify(|o| o.event_idx = false, 5_000, 1514);
    // Small mergeable buffers: frames spread over several chains (one recvmsg each).
    t.verify(|o| o.rx_buf_size = 512, 5_000, 1514);
    t.verify(
        |o| {
            o.mrg_rxbuf = false;
            o.rx_buf_size = 2048;
        },
        5_000,
        1000,
    );
    let s = t.served.handle.stats();
    assert_eq!(s[0].total_drops() + s[1].total_drops(), 0, "{s:#?}");
}
