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

/// Runs `args` inside the rig's namespace and returns stdout.
fn ns_output(ns: &Netns, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?} in {}", ns.name);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The tap's attached and detached queue counts (`numqueues`, `numdisabled`).
fn tap_queue_counts(ns: &Netns) -> (u32, u32) {
    let text = ns_output(ns, &["ip", "-d", "link", "show", "vdt0"]);
    let field = |key: &str| -> u32 {
        let mut words = text.split_whitespace();
        words.find(|w| *w == key);
        words
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {text}"))
    };
    (field("numqueues"), field("numdisabled"))
}

/// Packet sockets bound to `veth0` (from `/proc/net/packet` in the namespace).
fn packet_sockets_on_veth0(ns: &Netns) -> usize {
    let ifindex = ns_output(ns, &["cat", "/sys/class/net/veth0/ifindex"]);
    let ifindex = ifindex.trim();
    ns_output(ns, &["cat", "/proc/net/packet"])
        .lines()
        .skip(1)
        // sk RefCnt Type Proto Iface R Rmem User Inode
        .filter(|l| l.split_whitespace().nth(4) == Some(ifindex))
        .count()
}

/// Polls `get` until it returns `want` (5 s at most).
fn wait_for<T: PartialEq + std::fmt::Debug>(what: &str, want: T, mut get: impl FnMut() -> T) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let got = get();
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {got:?}, want {want:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The kernel spreads flows over a multi-queue tap's *attached* queues and over a
/// fanout group's *members*: a pair that does not run (never enabled, or disabled by
/// the guest's `ethtool -L`) must not be among them, or the flows hashed to it are
/// never read. Its tap queue is detached / its packet socket closed, and both come
/// back when the pair starts again.
#[test]
#[ignore = "needs root (netns, /dev/net/tun, veth, AF_PACKET); run with --include-ignored"]
fn only_running_pairs_receive_from_the_kernel() {
    let t = KernelRig::tap(2);
    let ns = &t._ns;
    wait_for("tap queues before any frontend", (0, 2), || {
        tap_queue_counts(ns)
    });
    let mut o = t.served.options();
    o.queue_pairs = 2;
    let mut rig = vdpa_rig::Rig::connect(o).expect("rig setup");
    wait_for("tap queues with both pairs", (2, 0), || {
        tap_queue_counts(ns)
    });
    rig.set_vring_enable(2, false).unwrap();
    rig.set_vring_enable(3, false).unwrap();
    wait_for("tap queues with pair 1 disabled", (1, 1), || {
        tap_queue_counts(ns)
    });
    rig.set_vring_enable(2, true).unwrap();
    rig.set_vring_enable(3, true).unwrap();
    wait_for("tap queues with pair 1 enabled again", (2, 0), || {
        tap_queue_counts(ns)
    });
    drop(rig);
    wait_for("tap queues after the frontend left", (0, 2), || {
        tap_queue_counts(ns)
    });
    drop(t);

    let p = KernelRig::af_packet(2);
    let ns = &p._ns;
    wait_for("packet sockets before any frontend", 0, || {
        packet_sockets_on_veth0(ns)
    });
    let mut o = p.served.options();
    o.queue_pairs = 2;
    let mut rig = vdpa_rig::Rig::connect(o).expect("rig setup");
    wait_for("packet sockets with both pairs", 2, || {
        packet_sockets_on_veth0(ns)
    });
    rig.set_vring_enable(2, false).unwrap();
    rig.set_vring_enable(3, false).unwrap();
    wait_for("packet sockets with pair 1 disabled", 1, || {
        packet_sockets_on_veth0(ns)
    });
    rig.set_vring_enable(2, true).unwrap();
    rig.set_vring_enable(3, true).unwrap();
    wait_for("packet sockets with pair 1 enabled again", 2, || {
        packet_sockets_on_veth0(ns)
    });
    drop(rig);
    wait_for("packet sockets after the frontend left", 0, || {
        packet_sockets_on_veth0(ns)
    });
    // A re-opened socket carries traffic (one pair: the reflected frames of several
    // pairs would come back on whichever pair the kernel's hash picks).
    p.verify(|_| {}, 4_000, 64);
    wait_for("packet sockets after the verify", 0, || {
        packet_sockets_on_veth0(ns)
    });
}
