//! `heliotrope-executor receive` and `migrate` as two processes over TCP:
//! images at rest, and a `sim` VM migrated live.

use std::io::{BufRead, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use heliotrope_executor::sim::{generate, ContentMix};

const BIN: &str = env!("CARGO_BIN_EXE_heliotrope-executor");
const SECRET: &str = "a-job-secret-of-some-length";

/// `receive` for `job` into `data_dir`; returns it, its output and its address.
fn receiver(job: &str, data_dir: &Path) -> (Child, Lines<BufReader<ChildStdout>>, String) {
    let mut receiver = Command::new(BIN)
        .args(["receive", "--job", job, "--data-dir"])
        .arg(data_dir)
        .env("HELIOTROPE_JOB_SECRET", SECRET)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(receiver.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first.strip_prefix("listening on ").unwrap_or_else(|| panic!("{first}")).to_owned();
    (receiver, lines, addr)
}

#[test]
fn one_migration_by_hand_between_two_processes() {
    let dir = tempfile::tempdir().unwrap();
    let vm = generate(&dir.path().join("vm"), 4 << 20, 8 << 20, &ContentMix::default(), 1, 2).unwrap();
    let dest = dir.path().join("dest");
    let (mut receiver, mut lines, addr) = receiver("9", &dest);

    // Without the secret the source will not start.
    let refused =
        Command::new(BIN).args(["migrate", "--to", &addr, "--job", "9", "--image", "m=/dev/null"]).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("HELIOTROPE_JOB_SECRET"));

    let sent = Command::new(BIN)
        .args(["migrate", "--to", &addr, "--job", "9", "--streams", "3", "--image"])
        .arg(format!("disk.img={}", vm.disk.display()))
        .arg("--image")
        .arg(format!("memory.img={}", vm.memory.display()))
        .env("HELIOTROPE_JOB_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    let report: serde_json::Value = serde_json::from_slice(&sent.stdout).unwrap();
    assert_eq!(report["counters"]["raw_bytes"], 12 << 20);
    assert!(report["saved"]["zero"].as_u64().unwrap() > 0, "{report}");
    assert!(receiver.wait().unwrap().success());
    let received: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(received["job"], 9);
    assert_eq!(received["images"].as_array().unwrap().len(), 2);
    assert!(std::fs::read(dest.join("vm-9/memory.img")).unwrap() == std::fs::read(&vm.memory).unwrap());
    assert!(std::fs::read(dest.join("vm-9/disk.img")).unwrap() == std::fs::read(&vm.disk).unwrap());
}

#[test]
fn a_sim_vm_migrates_live_by_hand_and_leaves_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let vm_dir = dir.path().join("vm");
    generate(&vm_dir, 8 << 20, 8 << 20, &ContentMix::default(), 3, 4).unwrap();
    let dest = dir.path().join("dest");
    let (mut receiver, mut lines, addr) = receiver("12", &dest);
    let sent = Command::new(BIN)
        .args(["migrate", "--to", &addr, "--job", "12", "--streams", "2", "--dirty-mbps", "16", "--sim-vm"])
        .arg(&vm_dir)
        .env("HELIOTROPE_JOB_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    let report: serde_json::Value = serde_json::from_slice(&sent.stdout).unwrap();
    assert_eq!(report["driver"], "sim", "a simulated guest says so");
    assert!(report["downtime_ms"].as_f64().unwrap() > 0.0);
    assert!(receiver.wait().unwrap().success());
    let received: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(received["images"].as_array().unwrap().len(), 2, "{received}");
    assert_eq!(std::fs::metadata(dest.join("vm-12/memory.img")).unwrap().len(), 8 << 20);
    assert!(!vm_dir.join("memory.img").exists() && !vm_dir.join("disk.img").exists(), "destroyed at the source");
}
