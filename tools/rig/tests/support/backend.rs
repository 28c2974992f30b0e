//! An in-process vhost-user *backend* for tests: the `vhost` crate's request dispatcher
//! over a small handler that maps the rig's memory (translating ring VAs with each
//! region's user_addr, as a real backend must), logs every request, and runs the
//! loopback device once every ring is ready.

use std::fs::File;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vdpa::virtio::features::{
    VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use vdpa_rig::RingLayout;
use vhost::vhost_user::message::*;
use vhost::vhost_user::{
    Backend, BackendReqHandler, Error, GpuBackend, VhostUserBackendReqHandlerMut,
};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::device::{spawn, DevRing, DevStats, LoopbackDevice};

type Result<T> = std::result::Result<T, Error>;

/// What the fake backend offers.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub features: u64,
    pub protocol: VhostUserProtocolFeatures,
    pub queue_num: u64,
    pub pairs: usize,
}

impl BackendConfig {
    /// A loopback net device with `pairs` queue pairs offering VERSION_1, EVENT_IDX,
    /// MRG_RXBUF, INDIRECT_DESC (so the rig must decline it), PROTOCOL_FEATURES, and
    /// protocol features REPLY_ACK, MQ, CONFIGURE_MEM_SLOTS.
    pub fn loopback(pairs: usize) -> Self {
        Self {
            features: VIRTIO_F_VERSION_1
                | VIRTIO_RING_F_EVENT_IDX
                | VIRTIO_NET_F_MRG_RXBUF
                | VIRTIO_RING_F_INDIRECT_DESC
                | VHOST_USER_F_PROTOCOL_FEATURES
                | if pairs > 1 { VIRTIO_NET_F_MQ } else { 0 },
            protocol: VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
            queue_num: pairs as u64,
            pairs,
        }
    }
}

#[derive(Debug, Default)]
struct Ring {
    size: u16,
    base: u16,
    addrs: Option<(u64, u64, u64)>,
    kick: Option<File>,
    call: Option<File>,
    enabled: bool,
}

struct Region {
    gpa: u64,
    size: u64,
    user_addr: u64,
    offset: u64,
    file: File,
}

/// The request handler; tests inspect it through [`FakeBackend::handler`].
pub struct Handler {
    cfg: BackendConfig,
    pub log: Vec<String>,
    pub acked_features: u64,
    pub acked_protocol: u64,
    regions: Vec<Region>,
    rings: Vec<Ring>,
    running: Option<(Arc<AtomicBool>, JoinHandle<LoopbackDevice>)>,
    pub stats: Option<Arc<Mutex<DevStats>>>,
    stopped_at: Option<Vec<u16>>,
    pub disconnected: bool,
}

impl Handler {
    fn new(cfg: BackendConfig) -> Self {
        let rings = (0..2 * cfg.pairs).map(|_| Ring::default()).collect();
        Self {
            cfg,
            log: Vec::new(),
            acked_features: 0,
            acked_protocol: 0,
            regions: Vec::new(),
            rings,
            running: None,
            stats: None,
            stopped_at: None,
            disconnected: false,
        }
    }

    fn ring(&mut self, index: u32) -> Result<&mut Ring> {
        self.rings
            .get_mut(index as usize)
            .ok_or(Error::InvalidParam)
    }

    fn va_to_gpa(&self, va: u64) -> Result<u64> {
        self.regions
            .iter()
            .find(|r| va >= r.user_addr && va - r.user_addr < r.size)
            .map(|r| r.gpa + (va - r.user_addr))
            .ok_or(Error::InvalidParam)
    }

    /// True once the device runs.
    pub fn running(&self) -> bool {
        self.running.is_some()
    }

    fn try_start(&mut self) {
        if self.running.is_some() || self.stopped_at.is_some() || self.regions.is_empty() {
            return;
        }
        let proto = self.acked_features & VHOST_USER_F_PROTOCOL_FEATURES != 0;
        let ready = self.rings.iter().all(|r| {
            r.size > 0
                && r.addrs.is_some()
                && r.kick.is_some()
                && r.call.is_some()
                && (r.enabled || !proto)
        });
        if !ready {
            return;
        }
        let mut regions: Vec<&Region> = self.regions.iter().collect();
        regions.sort_by_key(|r| r.gpa);
        let mem = GuestMemoryMmap::from_ranges_with_files(regions.iter().map(|r| {
            (
                GuestAddress(r.gpa),
                r.size as usize,
                Some(FileOffset::new(r.file.try_clone().unwrap(), r.offset)),
            )
        }))
        .expect("map guest memory");
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mrg = self.acked_features & VIRTIO_NET_F_MRG_RXBUF != 0;
        let efd = |f: &File| {
            let fd = f.try_clone().unwrap().into_raw_fd();
            // SAFETY: `fd` is a freshly duplicated eventfd (received with SET_VRING_KICK or
            // SET_VRING_CALL) that nothing else owns.
            unsafe { EventFd::from_raw_fd(fd) }
        };
        let mut devrings = Vec::new();
        for r in &self.rings {
            let (d, a, u) = r.addrs.unwrap();
            let l = RingLayout {
                size: r.size,
                desc: d,
                avail: a,
                used: u,
            };
            devrings.push(DevRing::new(
                &l,
                r.base,
                event_idx,
                efd(r.kick.as_ref().unwrap()),
                efd(r.call.as_ref().unwrap()),
            ));
        }
        let mut pairs = Vec::new();
        let mut it = devrings.into_iter();
        while let (Some(rx), Some(tx)) = (it.next(), it.next()) {
            pairs.push((rx, tx));
        }
        let dev = LoopbackDevice::new(mem, pairs, mrg);
        self.stats = Some(dev.stats.clone());
        self.running = Some(spawn(dev));
        self.log.push("device started".to_string());
    }

    fn stop(&mut self) {
        if let Some((stop, t)) = self.running.take() {
            stop.store(true, Ordering::Release);
            let dev = t.join().expect("device thread");
            self.stopped_at = Some(dev.next_avail());
            self.log.push("device stopped".to_string());
        }
    }
}

fn unsupported<T>() -> Result<T> {
    Err(Error::InvalidOperation("not supported by the fake backend"))
}

impl VhostUserBackendReqHandlerMut for Handler {
    fn set_owner(&mut self) -> Result<()> {
        self.log.push("SET_OWNER".into());
        Ok(())
    }
    fn reset_owner(&mut self) -> Result<()> {
        unsupported()
    }
    fn reset_device(&mut self) -> Result<()> {
        unsupported()
    }
    fn get_features(&mut self) -> Result<u64> {
        self.log.push("GET_FEATURES".into());
        Ok(self.cfg.features)
    }
    fn set_features(&mut self, features: u64) -> Result<()> {
        self.log.push(format!("SET_FEATURES {features:#x}"));
        if features & !self.cfg.features != 0 {
            return Err(Error::InvalidParam);
        }
        self.acked_features = features;
        Ok(())
    }
    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy: Option<bool>,
    ) -> Result<Option<Vec<u64>>> {
        self.log.push(format!("SET_MEM_TABLE {}", ctx.len()));
        if ctx.len() != files.len() {
            return Err(Error::InvalidParam);
        }
        self.regions = ctx
            .iter()
            .zip(files)
            .map(|(r, file)| Region {
                gpa: r.guest_phys_addr,
                size: r.memory_size,
                user_addr: r.user_addr,
                offset: r.mmap_offset,
                file,
            })
            .collect();
        self.try_start();
        Ok(None)
    }
    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        self.log.push(format!("SET_VRING_NUM {index} {num}"));
        if num == 0 || num > 32768 || !num.is_power_of_two() {
            return Err(Error::InvalidParam);
        }
        self.ring(index)?.size = num as u16;
        Ok(())
    }
    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> Result<()> {
        self.log.push(format!("SET_VRING_ADDR {index}"));
        let addrs = (
            self.va_to_gpa(descriptor)?,
            self.va_to_gpa(available)?,
            self.va_to_gpa(used)?,
        );
        self.ring(index)?.addrs = Some(addrs);
        self.try_start();
        Ok(())
    }
    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        self.log.push(format!("SET_VRING_BASE {index} {base}"));
        self.ring(index)?.base = base as u16;
        Ok(())
    }
    fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
        self.log.push(format!("GET_VRING_BASE {index}"));
        self.stop();
        let base = match &self.stopped_at {
            Some(v) => *v.get(index as usize).ok_or(Error::InvalidParam)?,
            None => self.ring(index)?.base,
        };
        Ok(VhostUserVringState::new(index, u32::from(base)))
    }
    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        self.log.push(format!("SET_VRING_KICK {index}"));
        self.ring(u32::from(index))?.kick = fd;
        self.try_start();
        Ok(())
    }
    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        self.log.push(format!("SET_VRING_CALL {index}"));
        self.ring(u32::from(index))?.call = fd;
        self.try_start();
        Ok(())
    }
    fn set_vring_err(&mut self, _index: u8, _fd: Option<File>) -> Result<()> {
        Ok(())
    }
    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
        self.log.push("GET_PROTOCOL_FEATURES".into());
        Ok(self.cfg.protocol)
    }
    fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        self.log
            .push(format!("SET_PROTOCOL_FEATURES {features:#x}"));
        self.acked_protocol = features;
        Ok(())
    }
    fn get_queue_num(&mut self) -> Result<u64> {
        self.log.push("GET_QUEUE_NUM".into());
        Ok(self.cfg.queue_num)
    }
    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        self.log
            .push(format!("SET_VRING_ENABLE {index} {}", u8::from(enable)));
        self.ring(index)?.enabled = enable;
        self.try_start();
        Ok(())
    }
    fn get_config(&mut self, _o: u32, _s: u32, _f: VhostUserConfigFlags) -> Result<Vec<u8>> {
        unsupported()
    }
    fn set_config(&mut self, _o: u32, _b: &[u8], _f: VhostUserConfigFlags) -> Result<()> {
        unsupported()
    }
    fn set_backend_req_fd(&mut self, _backend: Backend) {}
    fn set_gpu_socket(&mut self, _gpu: GpuBackend) -> Result<()> {
        unsupported()
    }
    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> Result<File> {
        unsupported()
    }
    fn get_inflight_fd(&mut self, _i: &VhostUserInflight) -> Result<(VhostUserInflight, File)> {
        unsupported()
    }
    fn set_inflight_fd(&mut self, _i: &VhostUserInflight, _f: File) -> Result<()> {
        unsupported()
    }
    fn get_max_mem_slots(&mut self) -> Result<u64> {
        self.log.push("GET_MAX_MEM_SLOTS".into());
        Ok(8)
    }
    fn add_mem_region(
        &mut self,
        r: &VhostUserSingleMemoryRegion,
        file: File,
        _postcopy: Option<bool>,
    ) -> Result<Option<u64>> {
        self.log.push("ADD_MEM_REG".into());
        self.regions.push(Region {
            gpa: r.guest_phys_addr,
            size: r.memory_size,
            user_addr: r.user_addr,
            offset: r.mmap_offset,
            file,
        });
        self.try_start();
        Ok(None)
    }
    fn remove_mem_region(&mut self, _r: &VhostUserSingleMemoryRegion) -> Result<()> {
        unsupported()
    }
    fn set_device_state_fd(
        &mut self,
        _d: VhostTransferStateDirection,
        _p: VhostTransferStatePhase,
        _f: File,
    ) -> Result<Option<File>> {
        unsupported()
    }
    fn check_device_state(&mut self) -> Result<()> {
        unsupported()
    }
    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
        unsupported()
    }
    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> Result<()> {
        unsupported()
    }
}

/// A fake backend serving one connection on a thread.
pub struct FakeBackend {
    pub handler: Arc<Mutex<Handler>>,
    pub path: PathBuf,
    thread: Option<JoinHandle<()>>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh socket path under the temp dir.
pub fn temp_socket(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "vdpa-rig-test-{}-{}-{name}.sock",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl FakeBackend {
    /// Binds `path` now (so the rig can connect at once) and serves one connection on a
    /// thread: accept (bounded to 10 s), dispatch until the frontend disconnects.
    pub fn start(path: &Path, cfg: BackendConfig) -> Self {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind");
        listener.set_nonblocking(true).unwrap();
        let handler = Arc::new(Mutex::new(Handler::new(cfg)));
        let h = handler.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            let stream = loop {
                match listener.accept() {
                    Ok((s, _)) => break Some(s),
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(_) => break None,
                }
            };
            if let Some(s) = stream {
                s.set_nonblocking(false).unwrap();
                let mut req = BackendReqHandler::from_stream(s, h.clone());
                while req.handle_request().is_ok() {}
            }
            let mut g = h.lock().unwrap();
            g.stop();
            g.disconnected = true;
        });
        Self {
            handler,
            path: path.to_owned(),
            thread: Some(thread),
        }
    }

    /// Waits (bounded) for the connection to end; true if it did.
    pub fn wait_disconnect(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                if let Some(t) = self.thread.take() {
                    t.join().unwrap();
                }
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    /// The request log so far.
    pub fn log(&self) -> Vec<String> {
        self.handler.lock().unwrap().log.clone()
    }

    /// Device counters (once the device started).
    pub fn dev_stats(&self) -> Option<DevStats> {
        let g = self.handler.lock().unwrap();
        g.stats.as_ref().map(|s| *s.lock().unwrap())
    }
}
