//! What lesson-8 can leave behind. It creates no named object (its shared
//! memory is `MAP_SHARED|MAP_ANONYMOUS`, gone with its last process), so
//! `assert_nothing_left_by` proves nothing for it. What it can leave is a
//! child: one it forked and never reaped (a zombie) or one still running.
//!
//! This test binary makes itself a child subreaper (PR_SET_CHILD_SUBREAPER):
//! every process the lesson leaves when it exits is re-parented to it, so
//! after reaping the lesson, `waitpid(-1, WNOHANG)` must say ECHILD: no child
//! of ours at all. A binary of its own, with one test, because the subreaper
//! would also collect the orphans of sibling tests.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::children::poll_until;
use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// The children `pid` has right now (`/proc/PID/task/PID/children`).
fn children_of(pid: u32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
}

#[test]
fn no_child_outlives_the_lesson() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes plain integers.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
    // The output goes to a file: a pipe nobody reads while we poll could
    // fill up and stall the lesson.
    let log = std::env::temp_dir().join(format!("shm-lessons-test-{}-l8.log", std::process::id()));
    let file = std::fs::File::create(&log).unwrap();
    let mut lesson = Command::new(Path::new(env!("CARGO_BIN_EXE_lesson-8")))
        .args(["--quick", "--runs", "1"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let pid = lesson.id();

    // Watch its children while it runs, to know that it had some.
    let mut seen = BTreeSet::new();
    let status = poll_until(Duration::from_secs(300), || {
        seen.extend(children_of(pid));
        lesson.try_wait().unwrap()
    });
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let status = status.unwrap_or_else(|| {
        let _ = lesson.kill();
        let _ = lesson.wait();
        panic!("lesson-8 did not finish:\n{output}")
    });
    assert!(status.success(), "{status:?}\n{output}");
    assert!(!seen.is_empty(), "no child of lesson-8 was ever seen");

    // Whatever it left was re-parented to us when it exited.
    match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        Err(Errno::ECHILD) => {}
        Ok(left) => {
            // Reap what we can, so the test leaves nothing either.
            while waitpid(Pid::from_raw(-1), None).is_ok() {}
            panic!(
                "a child of lesson-8 outlived it ({left:?}); its children were {seen:?}\n{output}"
            );
        }
        Err(e) => panic!("waitpid(-1, WNOHANG): {e}"),
    }
}
