//! The `frontend` and `vdpa_driver` keys: vhost-user by default, VDUSE with its bus
//! driver, and what a VDUSE device cannot have.

use super::{assert_err, assert_round_trip, dev, ok, DEV};
use crate::ErrorKind::{Conflict, InvalidValue};
use crate::{Frontend, VdpaDriver};

#[test]
fn vhost_user_is_the_default() {
    assert_eq!(ok(DEV).devices[0].frontend, Frontend::VhostUser);
    let config = ok(&dev("frontend = \"vhost-user\""));
    assert_eq!(config.devices[0].frontend, Frontend::VhostUser);
    assert_round_trip(&config);
}

#[test]
fn vduse_takes_a_bus_driver_vhost_vdpa_by_default() {
    let config = ok(&dev("frontend = \"vduse\""));
    assert_eq!(
        config.devices[0].frontend,
        Frontend::Vduse {
            driver: Some(VdpaDriver::VhostVdpa)
        }
    );
    assert_round_trip(&config);
    for (word, driver) in [
        ("virtio_vdpa", Some(VdpaDriver::VirtioVdpa)),
        ("vhost_vdpa", Some(VdpaDriver::VhostVdpa)),
        ("none", None),
    ] {
        let config = ok(&format!(
            "{DEV}frontend = \"vduse\"\nvdpa_driver = \"{word}\"\n"
        ));
        assert_eq!(config.devices[0].frontend, Frontend::Vduse { driver });
        assert_round_trip(&config);
    }
}

#[test]
fn unknown_words_are_refused_with_a_suggestion() {
    let e = assert_err(
        &dev("frontend = \"vdus\""),
        InvalidValue,
        3,
        12,
        "did you mean `vduse`?",
    );
    assert_eq!(
        e.help(),
        Some("frontend must be one of \"vhost-user\", \"vduse\"")
    );
    assert_err(
        &format!("{DEV}frontend = \"vduse\"\nvdpa_driver = \"virtio\"\n"),
        InvalidValue,
        4,
        15,
        "unknown vdpa_driver `virtio`",
    );
}

#[test]
fn a_bus_driver_needs_vduse() {
    let e = assert_err(
        &dev("vdpa_driver = \"vhost_vdpa\""),
        Conflict,
        3,
        15,
        "vdpa_driver only applies to frontend = \"vduse\"",
    );
    assert_eq!(
        e.help(),
        Some("remove vdpa_driver, or add frontend = \"vduse\"")
    );
}

#[test]
fn a_vduse_device_has_no_socket_and_one_queue_pair() {
    for (line, column) in [
        ("socket = \"/run/x.sock\"", 10),
        ("socket_mode = \"0660\"", 15),
        ("socket_owner = 0", 16),
    ] {
        let e = assert_err(
            &format!("{DEV}frontend = \"vduse\"\n{line}\n"),
            Conflict,
            4,
            column,
            "does not apply to frontend = \"vduse\"",
        );
        assert!(e.help().unwrap().contains("/dev/vhost-vdpa-N"), "{e}");
    }
    let e = assert_err(
        &format!("{DEV}frontend = \"vduse\"\nqueue_pairs = 2\n"),
        Conflict,
        4,
        15,
        "serves one queue pair, not 2",
    );
    assert!(e.help().unwrap().contains("control virtqueue"), "{e}");
}

#[test]
fn a_vduse_device_is_not_named_like_its_virtqueues() {
    for name in ["vq0", "vq1"] {
        let e = assert_err(
            &format!("[[device]]\nname = \"{name}\"\nfrontend = \"vduse\"\n"),
            Conflict,
            2,
            8,
            &format!("cannot be named \"{name}\""),
        );
        assert!(e.help().unwrap().contains("another name"), "{e}");
    }
    ok("[[device]]\nname = \"vq2\"\nfrontend = \"vduse\"\n");
    ok("[[device]]\nname = \"vq0\"\nsocket = \"/run/vq0.sock\"\n");
}
