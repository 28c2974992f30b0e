//! Reading what guest scripts report about `vdpa-rig` runs and vdpad's log: the
//! console line of a `verify` (`VDPAD-...VERIFY rc=0 verify: sent N received N lost 0
//! ...`), the frames a host-side reflector kept, and the lines of a log that mention
//! something.

use vdpa_rig::frame::FrameChecker;

use std::time::Instant;

use super::packet::{Reflector, ReflectorLog};

/// Parses `key N` out of a rig verify summary (`sent 2000 received 2000 lost 0 ...`).
pub fn verify_field(line: &str, key: &str) -> Option<u64> {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == key {
            return words.next().and_then(|v| v.parse().ok());
        }
    }
    None
}

/// Asserts that a console line carrying a rig verify (`rc=N verify: ...`) reports a
/// clean run of `packets` frames: exit 0, all received, none lost, corrupt, reordered
/// or duplicated. `context` is appended to the panic message.
pub fn assert_verify(line: &str, packets: u64, what: &str, context: &str) {
    assert!(
        line.contains("rc=0") && line.contains("verify:"),
        "{what}: rig verify failed: {line}{context}"
    );
    assert_eq!(
        verify_field(line, "received"),
        Some(packets),
        "{what}: {line}{context}"
    );
    for key in ["lost", "corrupt", "reordered", "dup"] {
        assert_eq!(
            verify_field(line, key),
            Some(0),
            "{what}: {key}: {line}{context}"
        );
    }
}

/// Asserts that the frames a reflector kept are the rig's verify frames, intact and
/// numbered 0, 1, 2, ... in order (what the NIC put on the wire); returns how many.
pub fn assert_rig_frames_in_order(seen: &ReflectorLog) -> usize {
    let mut checker = FrameChecker::new();
    let ids: Vec<u64> = seen
        .kept
        .iter()
        .map(|f| {
            checker
                .check(f)
                .unwrap_or_else(|e| panic!("frame on the host tap: {e}: {f:02x?}"))
                .seq
        })
        .collect();
    assert_eq!(
        ids,
        (0..ids.len() as u64).collect::<Vec<_>>(),
        "sequence on the tap"
    );
    ids.len()
}

/// Checks what a NIC put on its host tap during a verify of `packets` frames: the
/// reflector on the tap sent at least that many back, and the frames it kept are the
/// rig's, in order. Notes the counts as progress (seconds since `t0`).
pub fn assert_tap_carried_verify(t0: Instant, reflector: &Reflector, packets: u64) {
    let seen = reflector.log();
    assert!(
        seen.reflected >= packets,
        "the host tap {} saw {} frames, the rig sent {packets}",
        reflector.ifname(),
        seen.reflected
    );
    let checked = assert_rig_frames_in_order(&seen);
    super::note(
        t0,
        &format!(
            "host: reflector on {} sent back {} frames; the first {checked} are the rig's, in order",
            reflector.ifname(),
            seen.reflected
        ),
    );
}

/// Lines of a log that contain any of `needles`.
pub fn lines_with<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .collect()
}

/// The value of a `key=value` field of a log line (tracing's format: the value ends
/// at the next space; quotes are kept).
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// vdpad's `datapath chosen` line for device `dev` (its mode and reason); panics with
/// the log if there is none.
pub fn datapath_chosen<'a>(log: &'a str, dev: &str) -> &'a str {
    log.lines()
        .find(|l| l.contains("datapath chosen") && l.contains(&format!("device={dev} ")))
        .unwrap_or_else(|| panic!("no datapath decision for {dev}:\n{log}"))
}
