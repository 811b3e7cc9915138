//! `heliotrope-executor receive` and `migrate` as two processes over TCP.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use heliotrope_executor::sim::{generate, ContentMix};

const BIN: &str = env!("CARGO_BIN_EXE_heliotrope-executor");
const SECRET: &str = "a-job-secret-of-some-length";

#[test]
fn one_migration_by_hand_between_two_processes() {
    let dir = tempfile::tempdir().unwrap();
    let vm = generate(4 << 20, 8 << 20, &ContentMix::default(), 1, 2);
    let (memory, disk) = (dir.path().join("memory.img"), dir.path().join("disk.img"));
    std::fs::write(&memory, &vm.memory).unwrap();
    std::fs::write(&disk, &vm.disk).unwrap();
    let dest = dir.path().join("dest");
    let mut receiver = Command::new(BIN)
        .args(["receive", "--job", "9", "--data-dir"])
        .arg(&dest)
        .env("HELIOTROPE_JOB_SECRET", SECRET)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(receiver.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first.strip_prefix("listening on ").unwrap_or_else(|| panic!("{first}")).to_owned();

    // Without the secret the source will not start.
    let refused =
        Command::new(BIN).args(["migrate", "--to", &addr, "--job", "9", "--image", "m=/dev/null"]).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("HELIOTROPE_JOB_SECRET"));

    let sent = Command::new(BIN)
        .args(["migrate", "--to", &addr, "--job", "9", "--image"])
        .arg(format!("memory.img={}", memory.display()))
        .arg("--image")
        .arg(format!("disk.img={}", disk.display()))
        .env("HELIOTROPE_JOB_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    let counters: serde_json::Value = serde_json::from_slice(&sent.stdout).unwrap();
    assert_eq!(counters["raw_bytes"], 12 << 20);
    assert!(receiver.wait().unwrap().success());
    let report: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(report["job"], 9);
    assert!(std::fs::read(dest.join("vm-9/memory.img")).unwrap() == vm.memory);
    assert!(std::fs::read(dest.join("vm-9/disk.img")).unwrap() == vm.disk);
}
