//! Numbers from the PCI and virtio 1.x specifications that both sides of the
//! hardware datapath use: the driver (`virtio_pci`) writes them, the simulated NIC
//! (`sim`) answers to them. Section numbers refer to virtio 1.3. Feature bits, the
//! split-ring layout and the net header are the workspace's shared vocabulary, in
//! [`vdpa::virtio`].

/// Red Hat / virtio PCI vendor id.
pub const VIRTIO_VENDOR_ID: u16 = 0x1af4;
/// Modern (virtio 1.x only) virtio-net PCI device id: 0x1040 + device type 1.
pub const VIRTIO_NET_MODERN_DEVICE_ID: u16 = 0x1041;
/// Transitional virtio-net PCI device id (legacy + modern).
pub const VIRTIO_NET_TRANSITIONAL_DEVICE_ID: u16 = 0x1000;

/// PCI configuration space offsets and bits (PCI Local Bus 3.0, 6.1).
pub mod cfg {
    /// Vendor id (u16).
    pub const VENDOR_ID: u16 = 0x00;
    /// Device id (u16).
    pub const DEVICE_ID: u16 = 0x02;
    /// Command register (u16).
    pub const COMMAND: u16 = 0x04;
    /// Status register (u16).
    pub const STATUS: u16 = 0x06;
    /// Revision id (u8); the class code follows in the next three bytes.
    pub const REVISION: u16 = 0x08;
    /// Header type (u8).
    pub const HEADER_TYPE: u16 = 0x0e;
    /// First base address register.
    pub const BAR0: u16 = 0x10;
    /// Subsystem vendor id (u16).
    pub const SUBSYSTEM_VENDOR: u16 = 0x2c;
    /// Subsystem id (u16).
    pub const SUBSYSTEM_ID: u16 = 0x2e;
    /// Capabilities pointer (u8).
    pub const CAP_PTR: u16 = 0x34;
    /// Command: memory space enable.
    pub const COMMAND_MEMORY: u16 = 1 << 1;
    /// Command: bus master enable (the function may DMA).
    pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
    /// Status: the capability list is valid.
    pub const STATUS_CAP_LIST: u16 = 1 << 4;
    /// Capability id: MSI-X.
    pub const CAP_ID_MSIX: u8 = 0x11;
    /// Capability id: vendor specific (virtio structures).
    pub const CAP_ID_VENDOR: u8 = 0x09;
    /// Capability id: PCI Express.
    pub const CAP_ID_PCIE: u8 = 0x10;
    /// Class code of an Ethernet controller (class 0x02, subclass 0x00).
    pub const CLASS_ETHERNET: u32 = 0x02_00_00;
}

/// `cfg_type` values of virtio vendor capabilities (4.1.4).
pub mod cap {
    /// Common configuration.
    pub const COMMON: u8 = 1;
    /// Notifications (doorbells).
    pub const NOTIFY: u8 = 2;
    /// Interrupt status.
    pub const ISR: u8 = 3;
    /// Device-specific configuration.
    pub const DEVICE: u8 = 4;
    /// PCI configuration access window.
    pub const PCI_CFG: u8 = 5;
    /// vdpad extension: per-queue ring state (last avail / last used index), like
    /// ifcvf's `lm_cfg` ring-state words. Not a spec value: 0xf0 is outside the range
    /// the spec uses, so a conforming device never presents it.
    pub const VDPAD_RING_STATE: u8 = 0xf0;
}

/// Device status bits (2.1).
pub mod status {
    /// The guest OS has found the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The driver knows how to drive it.
    pub const DRIVER: u8 = 2;
    /// The driver is set up and ready.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 0x80;
}

/// Offsets in `struct virtio_pci_common_cfg` (4.1.4.3).
pub mod common {
    /// Selects which 32 bits `DEVICE_FEATURE` shows (u32).
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// Device feature bits, 32 at a time (u32, read-only).
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// Selects which 32 bits `DRIVER_FEATURE` accesses (u32).
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// Driver (accepted) feature bits, 32 at a time (u32).
    pub const DRIVER_FEATURE: u64 = 0x0c;
    /// MSI-X vector for configuration changes (u16).
    pub const MSIX_CONFIG: u64 = 0x10;
    /// Number of virtqueues (u16, read-only).
    pub const NUM_QUEUES: u64 = 0x12;
    /// Device status (u8).
    pub const DEVICE_STATUS: u64 = 0x14;
    /// Configuration generation (u8, read-only).
    pub const CONFIG_GENERATION: u64 = 0x15;
    /// Queue the `QUEUE_*` registers refer to (u16).
    pub const QUEUE_SELECT: u64 = 0x16;
    /// Queue size: maximum on read after reset, the driver's choice once written (u16).
    pub const QUEUE_SIZE: u64 = 0x18;
    /// MSI-X vector of the queue (u16; reads NO_VECTOR if refused).
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    /// Queue enable (u16).
    pub const QUEUE_ENABLE: u64 = 0x1c;
    /// Doorbell offset of the queue, in units of `notify_off_multiplier` (u16).
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    /// Descriptor table address (u64 as two u32).
    pub const QUEUE_DESC: u64 = 0x20;
    /// Driver (avail) ring address (u64 as two u32).
    pub const QUEUE_DRIVER: u64 = 0x28;
    /// Device (used) ring address (u64 as two u32).
    pub const QUEUE_DEVICE: u64 = 0x30;
    /// Notification data (u16, read-only).
    pub const QUEUE_NOTIFY_DATA: u64 = 0x38;
    /// Per-queue reset with VIRTIO_F_RING_RESET (u16).
    pub const QUEUE_RESET: u64 = 0x3a;
    /// Length of the structure up to and including `QUEUE_RESET`.
    pub const LEN: u32 = 0x3c;
}

/// MSI-X "no vector" value.
pub const NO_VECTOR: u16 = 0xffff;

/// The virtio-net control queue (5.1.6.5): a command is a read-only header (class,
/// command) and data, followed by one device-writable byte for the ack.
pub mod ctrl {
    /// Class of the multiqueue commands (`VIRTIO_NET_CTRL_MQ`).
    pub const CLASS_MQ: u8 = 4;
    /// Sets the number of queue pairs the device uses (`VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`);
    /// the data is a little-endian u16 from 1 to `max_virtqueue_pairs`.
    pub const MQ_VQ_PAIRS_SET: u8 = 0;
    /// Ack: the command was carried out (`VIRTIO_NET_OK`).
    pub const OK: u8 = 0;
    /// Ack: the command failed (`VIRTIO_NET_ERR`).
    pub const ERR: u8 = 1;
}
