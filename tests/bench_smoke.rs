//! CI smoke test of the benchmark harness: `vdpa-bench --smoke --seed-questions` with
//! the binaries of this build. No assertion on speed — only that every cell produced
//! numbers, and that the CSV, JSON and SVG outputs are there. (The harness's own
//! command-line tests are in tools/bench/tests/cli.rs.)
//!
//! Needs the lab (root, dpdk-testpmd with the vhost and virtio drivers, hugepages
//! optional): `sudo tests/lab/setup.sh`. `vdpa-bench`, `vdpad` and `vdpa-rig` are built
//! by the test itself, with its profile (`support::bins`):
//! `cargo test -p vdpad-tests --test bench_smoke -- --ignored`.
//! Takes about six minutes (81 runs).

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::bins;

fn out_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("vdpa-bench-smoke.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn read_json(p: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("results.json parses")
}

#[test]
#[ignore = "needs the lab: tests/lab/setup.sh"]
fn smoke_every_cell_has_numbers() {
    let out = out_dir();
    let o = Command::new(bins::vdpa_bench())
        .args(["--smoke", "--seed-questions", "--out"])
        .arg(&out)
        .arg("--vdpad")
        .arg(bins::vdpad())
        .arg("--rig")
        .arg(bins::vdpa_rig())
        .output()
        .expect("run vdpa-bench");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "vdpa-bench --smoke failed ({}):\n{stdout}\n{stderr}",
        o.status
    );

    let v = read_json(&out.join("results.json"));
    let cells = v["cells"].as_array().expect("cells");
    let ids: Vec<&str> = cells.iter().filter_map(|c| c["id"].as_str()).collect();
    for want in [
        "tp-64",
        "tp-1518",
        "rig-64",
        "rig-1518",
        "rigpoll-64",
        "rigpoll-1518",
        "lat-64",
        "latpoll-64",
        "seed-notify",
        "seed-coalesce-lat",
        "seed-coalesce-tp",
        "seed-busypoll-lat",
        "seed-busypoll-tp",
        "scale-16",
        "idle-16",
        "kern-tap-64",
        "kern-afp-1518",
    ] {
        assert!(ids.contains(&want), "cell {want} missing from {ids:?}");
    }
    for c in cells {
        let id = c["id"].as_str().unwrap_or("?");
        assert_eq!(c["ok"], true, "cell {id} has no numbers:\n{stderr}");
        let latency = c["frontend"]
            .as_object()
            .is_some_and(|f| f.contains_key("rig_latency"));
        let idle = c["frontend"] == "testpmd_idle";
        for var in c["variants"].as_array().expect("variants") {
            if idle {
                // Nothing is sent: what counts is the backend CPU it measured.
                assert!(
                    var["cpu_util"]["median"].is_f64(),
                    "cell {id} variant {} has no backend CPU: {var}",
                    var["name"]
                );
                continue;
            }
            let key = if latency { "p50_us" } else { "mpps" };
            let median = var[key]["median"].as_f64().unwrap_or(0.0);
            assert!(
                median > 0.0,
                "cell {id} variant {} has no {key}: {var}",
                var["name"]
            );
        }
        if c["group"] == "main" {
            let r = c["ratio"]["spread"]["median"].as_f64().unwrap_or(0.0);
            assert!(r > 0.0, "cell {id} has no B/A ratio: {c}");
        }
    }
    // vdpad's counters were read: packets per kick on the interrupt-driven rig cell.
    let rig = cells.iter().find(|c| c["id"] == "rig-64").expect("rig-64");
    let b = &rig["variants"][1];
    assert!(
        b["pkts_per_kick"]["median"].as_f64().unwrap_or(0.0) > 0.0,
        "no vdpad counters: {b}"
    );
    assert!(v["source"]["commit"].as_str().is_some_and(|c| c.len() >= 7));
    assert!(v["machine"]["kernel"].as_str().is_some());
    for f in ["runs.csv", "summary.csv", "ratios.svg", "table.md"] {
        let p = out.join(f);
        assert!(
            std::fs::metadata(&p).is_ok_and(|m| m.len() > 0),
            "{} missing",
            p.display()
        );
    }
    assert!(stdout.contains("B/A"), "no table on stdout:\n{stdout}");
    let _ = std::fs::remove_dir_all(&out);
}
