//! The host after a whole run of lesson-10 is byte-for-byte the host before:
//! `ipcs -m`, every `/proc/sys/kernel/shm*` sysctl and the mount table.
//! (A test binary of its own, so that no other lesson-10 run of this test
//! process changes `ipcs -m` meanwhile.)

use std::path::Path;
use std::process::Command;

use common::{ns, testkit};

fn sysctls() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir("/proc/sys/kernel")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("shm"))
        .map(|n| {
            let v = std::fs::read(format!("/proc/sys/kernel/{n}")).unwrap();
            (n, v)
        })
        .collect();
    out.sort();
    out
}

fn ipcs_m() -> Vec<u8> {
    Command::new("ipcs")
        .arg("-m")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_else(|_| std::fs::read("/proc/sysvipc/shm").unwrap())
}

#[test]
fn ipcs_sysctls_and_mounts_are_byte_identical_after_a_whole_run() {
    let before = (ipcs_m(), sysctls(), ns::mount_table());
    assert!(before.1.len() >= 4, "kernel.shm* not found: {:?}", before.1);
    let (pid, out) = testkit::run_with_pid(Path::new(env!("CARGO_BIN_EXE_lesson-10")), &[]);
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(77),
        "exit {code:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = (ipcs_m(), sysctls(), ns::mount_table());
    assert_eq!(
        ns::mount_table_diff(&before.2, &after.2),
        Vec::<String>::new(),
        "the mount table changed"
    );
    assert_eq!(before.1, after.1, "a kernel.shm* sysctl changed");
    assert_eq!(
        String::from_utf8_lossy(&before.0),
        String::from_utf8_lossy(&after.0),
        "ipcs -m changed (another program's segment, or one of this run's?)"
    );
    testkit::assert_nothing_left_by(10, pid);
}
