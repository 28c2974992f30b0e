//! Unit tests of the vdpa netlink client: reply decoding, request encoding, sysfs
//! bindings, error texts, and the socket path against the running kernel's controller.

use super::*;

fn attrs_of(build: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut buf = Vec::new();
    build(&mut buf);
    buf
}

#[test]
fn dev_new_request_names_device_and_mgmtdev() {
    let attrs = dev_new_attrs("vdpad0", "vduse");
    let parsed = wire::parse_attrs(&attrs).unwrap();
    let pairs: Vec<(u16, String)> = parsed
        .iter()
        .map(|a| (a.kind, a.as_str().unwrap()))
        .collect();
    assert_eq!(
        pairs,
        vec![
            (attr::MGMTDEV_DEV_NAME, "vduse".to_string()),
            (attr::DEV_NAME, "vdpad0".to_string())
        ]
    );
    // A bus/name handle is split into the two attributes.
    let attrs = dev_new_attrs("v1", "pci/0000:03:00.2");
    let parsed = wire::parse_attrs(&attrs).unwrap();
    assert_eq!(parsed[0].kind, attr::MGMTDEV_BUS_NAME);
    assert_eq!(parsed[0].as_str().unwrap(), "pci");
    assert_eq!(parsed[1].as_str().unwrap(), "0000:03:00.2");
    assert_eq!(parsed[2].as_str().unwrap(), "v1");
}

#[test]
fn mgmtdev_reply_decodes_like_vduse_sends_it() {
    // vdpa_mgmtdev_fill(): no bus for vduse, name, classes (u64 after a pad), max vqs,
    // features (u64 after a pad).
    let attrs = attrs_of(|b| {
        wire::put_str_attr(b, attr::MGMTDEV_DEV_NAME, "vduse");
        wire::put_attr(b, attr::PAD, &[]);
        wire::put_attr(b, attr::MGMTDEV_SUPPORTED_CLASSES, &0b110u64.to_ne_bytes());
        wire::put_attr(b, attr::DEV_MGMTDEV_MAX_VQS, &65535u32.to_ne_bytes());
        wire::put_attr(b, attr::PAD, &[]);
        wire::put_attr(b, attr::DEV_SUPPORTED_FEATURES, &(1u64 << 32).to_ne_bytes());
    });
    let dev = MgmtDev::from_attrs(&wire::parse_attrs(&attrs).unwrap()).unwrap();
    assert_eq!(dev.handle(), "vduse");
    assert!(dev.supports_net());
    assert_eq!(dev.max_vqs, Some(65535));
    assert_eq!(dev.supported_features, Some(1 << 32));
    // With a bus, and block only.
    let attrs = attrs_of(|b| {
        wire::put_str_attr(b, attr::MGMTDEV_BUS_NAME, "pci");
        wire::put_str_attr(b, attr::MGMTDEV_DEV_NAME, "0000:03:00.2");
        wire::put_attr(b, attr::MGMTDEV_SUPPORTED_CLASSES, &0b100u64.to_ne_bytes());
    });
    let dev = MgmtDev::from_attrs(&wire::parse_attrs(&attrs).unwrap()).unwrap();
    assert_eq!(dev.handle(), "pci/0000:03:00.2");
    assert!(!dev.supports_net());
    // No name: an error, not an empty device.
    let attrs = attrs_of(|b| wire::put_attr(b, attr::DEV_MGMTDEV_MAX_VQS, &2u32.to_ne_bytes()));
    assert!(MgmtDev::from_attrs(&wire::parse_attrs(&attrs).unwrap()).is_err());
    // A u64 attribute with a short payload is malformed.
    let attrs = attrs_of(|b| {
        wire::put_str_attr(b, attr::MGMTDEV_DEV_NAME, "vduse");
        wire::put_attr(b, attr::MGMTDEV_SUPPORTED_CLASSES, &2u32.to_ne_bytes());
    });
    assert!(matches!(
        MgmtDev::from_attrs(&wire::parse_attrs(&attrs).unwrap()),
        Err(VdpaNetlinkError::Malformed(_))
    ));
}

#[test]
fn device_reply_decodes() {
    let attrs = attrs_of(|b| {
        wire::put_str_attr(b, attr::MGMTDEV_DEV_NAME, "vduse");
        wire::put_str_attr(b, attr::DEV_NAME, "vdpad0");
        wire::put_attr(b, attr::DEV_ID, &1u32.to_ne_bytes());
        wire::put_attr(b, attr::DEV_VENDOR_ID, &0u32.to_ne_bytes());
        wire::put_attr(b, attr::DEV_MAX_VQS, &2u32.to_ne_bytes());
        wire::put_attr(b, attr::DEV_MAX_VQ_SIZE, &1024u16.to_ne_bytes());
        wire::put_attr(b, attr::DEV_MIN_VQ_SIZE, &1u16.to_ne_bytes());
        wire::put_attr(b, 99, &[7; 5]); // unknown attributes are skipped
    });
    let dev = VdpaDevice::from_attrs(&wire::parse_attrs(&attrs).unwrap()).unwrap();
    assert_eq!(dev.name, "vdpad0");
    assert_eq!(dev.mgmtdev.as_deref(), Some("vduse"));
    assert_eq!(dev.device_id, Some(1));
    assert_eq!(dev.vendor_id, Some(0));
    assert_eq!(dev.max_vqs, Some(2));
    assert_eq!(dev.max_vq_size, Some(1024));
    assert_eq!(dev.min_vq_size, Some(1));
    assert_eq!(dev.binding, Binding::default());
}

/// A scratch sysfs tree, removed on drop.
struct FakeSys(PathBuf);

impl FakeSys {
    fn new(tag: &str) -> FakeSys {
        let dir =
            std::env::temp_dir().join(format!("vdpad-vdpa-netlink-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bus/vdpa/drivers/vhost_vdpa")).unwrap();
        std::fs::create_dir_all(dir.join("bus/vdpa/drivers/virtio_vdpa")).unwrap();
        std::fs::create_dir_all(dir.join("bus/vdpa/devices")).unwrap();
        FakeSys(dir)
    }

    /// A device directory (under devices/vduse/, as the kernel places it) and its
    /// bus link.
    fn device(&self, name: &str, driver: Option<&str>) -> PathBuf {
        let real = self.0.join("devices/vduse").join(name);
        std::fs::create_dir_all(&real).unwrap();
        std::os::unix::fs::symlink(&real, self.0.join("bus/vdpa/devices").join(name)).unwrap();
        if let Some(driver) = driver {
            std::os::unix::fs::symlink(
                self.0.join("bus/vdpa/drivers").join(driver),
                real.join("driver"),
            )
            .unwrap();
        }
        real
    }
}

impl Drop for FakeSys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn binding_from_sysfs() {
    let sys = FakeSys::new("binding");
    // vhost_vdpa: a vhost-vdpa-N child names the character device.
    let d = sys.device("vh0", Some("vhost_vdpa"));
    std::fs::create_dir_all(d.join("vhost-vdpa-3")).unwrap();
    std::fs::create_dir_all(d.join("power")).unwrap();
    let b = Binding::read(&sys.0, "vh0");
    assert_eq!(b.driver.as_deref(), Some("vhost_vdpa"));
    assert_eq!(b.vhost_vdpa, Some(PathBuf::from("/dev/vhost-vdpa-3")));
    assert_eq!((b.virtio, b.netdevs.len()), (None, 0));
    // virtio_vdpa: virtioN/net/<ifname>.
    let d = sys.device("vv0", Some("virtio_vdpa"));
    std::fs::create_dir_all(d.join("virtio7/net/eth1")).unwrap();
    std::fs::create_dir_all(d.join("virtio_extra")).unwrap(); // not virtio<digits>
    let b = Binding::read(&sys.0, "vv0");
    assert_eq!(b.driver.as_deref(), Some("virtio_vdpa"));
    assert_eq!(b.virtio.as_deref(), Some("virtio7"));
    assert_eq!(b.netdevs, vec!["eth1".to_string()]);
    assert_eq!(b.vhost_vdpa, None);
    // Unbound, and absent.
    sys.device("free0", None);
    assert_eq!(Binding::read(&sys.0, "free0"), Binding::default());
    assert_eq!(Binding::read(&sys.0, "nosuch"), Binding::default());
}

#[test]
fn kernel_error_text_has_errno_and_extack() {
    let e = VdpaNetlinkError::Kernel {
        op: "VDPA_CMD_DEV_NEW",
        errno: libc::ENODEV,
        message: Some("vdpa: Fail to find the specified management device".into()),
    };
    let text = e.to_string();
    assert!(text.starts_with("VDPA_CMD_DEV_NEW: "), "{text}");
    assert!(text.contains("ENODEV"), "{text}");
    assert!(text.contains("os error 19"), "{text}");
    assert!(
        text.ends_with(": vdpa: Fail to find the specified management device"),
        "{text}"
    );
    assert_eq!(e.errno(), Some(libc::ENODEV));
    let e = VdpaNetlinkError::Kernel {
        op: "VDPA_CMD_DEV_DEL",
        errno: 1234,
        message: None,
    };
    assert!(e.to_string().contains("(errno 1234)"), "{e}");
    assert!(!e.to_string().ends_with(": "), "{e}");
    assert_eq!(
        VdpaNetlinkError::Timeout {
            op: "x",
            timeout: DEFAULT_TIMEOUT
        }
        .errno(),
        None
    );
}

#[test]
fn controller_resolves_itself_and_refuses_unknown_families() {
    // The running kernel's generic netlink controller: "nlctrl" always exists with
    // id GENL_ID_CTRL, and an unknown family is ENOENT -> FamilyNotFound (names are at
    // most 15 bytes: a longer one fails the policy with EINVAL).
    let mut nl = VdpaNetlink::unresolved(Duration::from_secs(5)).unwrap();
    assert_eq!(nl.resolve_family("nlctrl").unwrap(), wire::GENL_ID_CTRL);
    match nl.resolve_family("vdpad-nofam") {
        Err(VdpaNetlinkError::FamilyNotFound(name)) => {
            assert_eq!(name, "vdpad-nofam")
        }
        other => panic!("{other:?}"),
    }
    // The socket still works after an error reply (sequence numbers stay in step).
    assert_eq!(nl.resolve_family("nlctrl").unwrap(), wire::GENL_ID_CTRL);
}

#[test]
fn open_reports_family_or_its_absence() {
    // On a host with the vdpa module the family resolves; without it, the error says
    // what to load. Either way the request completed within the timeout.
    match VdpaNetlink::open_with_timeout(Duration::from_secs(5)) {
        Ok(nl) => assert!(nl.family_id() > wire::GENL_ID_CTRL),
        Err(VdpaNetlinkError::FamilyNotFound(name)) => assert_eq!(name, VDPA_GENL_NAME),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_request_the_kernel_never_answers_times_out_in_time() {
    // A message without NLM_F_REQUEST (and without NLM_F_ACK) gets no reply at all.
    let mut nl = VdpaNetlink::unresolved(Duration::from_millis(200)).unwrap();
    let mut attrs = Vec::new();
    wire::put_str_attr(&mut attrs, wire::CTRL_ATTR_FAMILY_NAME, "nlctrl");
    let req = wire::genl_request(
        wire::GENL_ID_CTRL,
        0,
        77,
        wire::CTRL_CMD_GETFAMILY,
        1,
        &attrs,
    );
    nl.send(&req).unwrap();
    let started = Instant::now();
    match nl.collect("silent", 77) {
        Err(VdpaNetlinkError::Timeout { op, timeout }) => {
            assert_eq!((op, timeout), ("silent", Duration::from_millis(200)))
        }
        other => panic!("{other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_secs(2),
        "took {took:?}"
    );
    // The socket is still usable, and a longer timeout is honoured.
    nl.set_timeout(Duration::from_secs(5));
    assert_eq!(nl.timeout(), Duration::from_secs(5));
    assert_eq!(nl.resolve_family("nlctrl").unwrap(), wire::GENL_ID_CTRL);
}
