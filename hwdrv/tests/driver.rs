//! The virtio-pci driver against the simulated NIC: capabilities, features,
//! FEATURES_OK, vectors, queue programming, device configuration.

use std::sync::Arc;

use hwdrv::pci::ConfigSnapshot;
use hwdrv::sim::layout;
use hwdrv::spec::status;
use hwdrv::virtio_pci::QueueSetup;
use hwdrv::{PciFunction, SimConfig, SimNic, VirtioError, VirtioPci};
use vdpa::virtio::features::{
    VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

fn nic(cfg: SimConfig) -> (Arc<SimNic>, VirtioPci) {
    let sim = Arc::new(SimNic::loopback(cfg).unwrap());
    let drv = VirtioPci::probe(sim.clone()).unwrap();
    (sim, drv)
}

#[test]
fn capabilities_are_found_and_described() {
    let (sim, drv) = nic(SimConfig::default());
    let snap = ConfigSnapshot::read(sim.as_ref()).unwrap();
    assert_eq!((snap.vendor_id(), snap.device_id()), (0x1af4, 0x1041));
    assert_eq!(snap.class_code(), 0x020000);
    assert_eq!(snap.msix_table_size(), Some(9));
    let types: Vec<u8> = snap.virtio_caps().iter().map(|c| c.cfg_type).collect();
    assert_eq!(types, vec![1, 3, 4, 2, 5, 0xf0]);
    assert_eq!(drv.notify_multiplier(), layout::PAGE_MULTIPLIER);
    assert_eq!(drv.doorbells_on_own_pages(), Ok(()));
    let (_, packed) = nic(SimConfig {
        doorbell_pages: false,
        ..SimConfig::default()
    });
    assert_eq!(packed.notify_multiplier(), layout::PACKED_MULTIPLIER);
    assert!(packed
        .doorbells_on_own_pages()
        .unwrap_err()
        .contains("page-per-vq"));
    assert_eq!(drv.num_queues(), 8);
    assert!(drv.has_ring_state());
    assert!(drv.has_pci_cfg());
    assert_eq!(drv.device_features(), SimConfig::default().features);
    let net = drv.net_config().unwrap();
    assert_eq!(net.mac, Some(SimConfig::default().mac));
    assert_eq!(net.max_pairs, 4);
    assert_eq!(net.mtu, Some(1500));
    assert_eq!(net.status, Some(1));
}

#[test]
fn features_ok_is_read_back_and_refusal_is_an_error() {
    let (sim, mut drv) = nic(SimConfig::default());
    let got = drv
        .initialize(
            VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM | VIRTIO_RING_F_EVENT_IDX | (1 << 50),
        )
        .unwrap();
    assert_eq!(
        got,
        VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM | VIRTIO_RING_F_EVENT_IDX
    );
    assert_eq!(sim.driver_features(), got);
    assert_ne!(sim.device_status() & status::FEATURES_OK, 0);
    // The simulated device, like QEMU with iommu_platform=on, insists on ACCESS_PLATFORM.
    let e = drv.initialize(VIRTIO_F_VERSION_1).unwrap_err();
    assert!(matches!(e, VirtioError::FeaturesRejected { .. }), "{e}");
    assert_eq!(sim.device_status() & status::FEATURES_OK, 0);
}

#[test]
fn vectors_are_read_back_and_queues_programmed() {
    let (sim, mut drv) = nic(SimConfig {
        msix_vectors: 3,
        ..Default::default()
    });
    drv.initialize(VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM)
        .unwrap();
    drv.set_config_vector(0).unwrap();
    let e = drv.set_config_vector(3).unwrap_err();
    assert!(
        matches!(e, VirtioError::VectorRejected { read: 0xffff, .. }),
        "{e}"
    );
    assert_eq!(drv.queue_max_size(0).unwrap(), 1024);
    let setup = QueueSetup {
        size: 256,
        desc: 0x10_0000,
        driver: 0x10_1000,
        device: 0x10_2000,
        vector: 1,
        resume: None,
    };
    let too_big = QueueSetup {
        size: 2048,
        ..setup
    };
    assert!(matches!(
        drv.program_queue(0, &too_big),
        Err(VirtioError::Queue { .. })
    ));
    let bad_vec = QueueSetup { vector: 7, ..setup };
    assert!(matches!(
        drv.program_queue(0, &bad_vec),
        Err(VirtioError::VectorRejected { .. })
    ));
    let db = drv.program_queue(1, &setup).unwrap();
    assert_eq!(db.queue, 1);
    assert_eq!(
        db.offset,
        layout::NOTIFY + u64::from(layout::PAGE_MULTIPLIER)
    );
    drv.enable_queue(1).unwrap();
    assert!(sim.queue_enabled(1));
    assert!(matches!(
        drv.program_queue(9, &setup),
        Err(VirtioError::Queue { .. })
    ));
    drv.driver_ok().unwrap();
    assert_eq!(sim.device_status(), 0xf);
    drv.reset().unwrap();
    assert_eq!(sim.device_status(), 0);
    assert!(!sim.queue_enabled(1));
}

#[test]
fn resume_needs_ring_state_and_late_enable_needs_ring_reset() {
    let (sim, mut drv) = nic(SimConfig {
        ring_state: false,
        features: SimConfig::default().features & !VIRTIO_F_RING_RESET,
        ..Default::default()
    });
    drv.initialize(VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM)
        .unwrap();
    let setup = QueueSetup {
        size: 64,
        desc: 0x10_0000,
        driver: 0x10_1000,
        device: 0x10_2000,
        vector: 1,
        resume: Some((5, 5)),
    };
    let e = drv.program_queue(0, &setup).unwrap_err();
    assert!(e.to_string().contains("cannot resume"), "{e}");
    assert!(matches!(
        drv.stop_queue(0),
        Err(VirtioError::Unsupported(_))
    ));
    drv.driver_ok().unwrap();
    // Enabling a queue after DRIVER_OK without RING_RESET is a driver bug the
    // simulator flags with DEVICE_NEEDS_RESET.
    drv.program_queue(
        0,
        &QueueSetup {
            resume: None,
            ..setup
        },
    )
    .unwrap();
    let _ = drv.enable_queue(0);
    assert!(drv.needs_reset().unwrap());
    assert_ne!(sim.device_status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn bar_access_is_checked() {
    let sim = SimNic::loopback(SimConfig::default()).unwrap();
    assert!(sim.bar_read32(2, 0).is_err());
    assert!(sim.bar_read32(4, layout::BAR4_SIZE).is_err());
    let mut eight = [0u8; 8];
    assert!(sim.bar_read(4, 0, &mut eight).is_err());
    assert!(sim.config_read32(4094).is_err());
}
