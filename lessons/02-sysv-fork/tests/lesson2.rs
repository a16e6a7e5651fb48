//! lesson-2 proves what it prints, on the running kernel.

use std::path::Path;
use std::time::Duration;

use common::{inspect, names, sysv, testkit};
use nix::sys::signal::Signal;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lesson-2"))
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_parent_reads_what_the_child_wrote_and_nothing_is_left() {
    let (pid, out) = testkit::run_with_pid(bin(), &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("\nchild wrote 0xdeadbeef\n"), "{text}");
    assert!(text.contains(": exited with status 0\n"), "{text}");
    testkit::assert_nothing_left_by(2, pid);
}

#[test]
fn narration_shows_the_calls_nattch_and_the_sysv_file() {
    let (pid, out) = testkit::run_with_pid(bin(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let shmid = testkit::number_after(&text, "IPC_CREAT|IPC_EXCL|0600) = shmid ");
    let page = inspect::page_size();
    for expected in [
        format!("shmget(IPC_PRIVATE, {page}, IPC_CREAT|IPC_EXCL|0600) = shmid "),
        format!("shmat({shmid}, NULL, 0) = 0x"),
        // The article's "invisible in any file system": the maps line names
        // the segment's file, "(deleted)" before any IPC_RMID.
        "rw-s 00000000 ".to_string(),
        "/SYSV00000000 (deleted)".to_string(),
        // nattch: 0 after shmget, 1 after shmat, 2 with the child, 1 after.
        "nattch: 1\n".to_string(),
        "nattch while the child is alive: 2\n".to_string(),
        "nattch after the child exited: 1\n".to_string(),
        format!("shmctl({shmid}, IPC_RMID, NULL) = 0"),
        format!("shmctl({shmid}, IPC_STAT, &buf) = -1 EINVAL (Invalid argument)"),
        "cpid".to_string(),
        format!(" {pid} "),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
    }
    // ipcs (or, without it, /proc/sysvipc/shm) no longer lists the segment.
    let gone = if inspect::ipcs_m().is_some() {
        format!("(no row with shmid {shmid})")
    } else {
        format!("(no segment with shmid {shmid})")
    };
    assert!(text.contains(&gone), "missing {gone:?} in:\n{text}");
    // The maps line appears before IPC_RMID is called.
    let deleted = text.find("/SYSV00000000 (deleted)").unwrap();
    let rmid = text.find("IPC_RMID, NULL) = 0").unwrap();
    assert!(deleted < rmid);
    // After shmget, before shmat, nattch is 0.
    let created = text.find("= shmid ").unwrap();
    let shmat = text.find("shmat(").unwrap();
    assert!(text[created..shmat].contains("nattch: 0\n"), "{text}");
    // After shmdt, nattch is 0.
    let shmdt = text.find("shmdt(0x").unwrap();
    assert!(text[shmdt..].contains("nattch: 0\n"), "{text}");
    assert!(!text.contains('\x1b'), "escape codes with NO_COLOR=1");
    testkit::assert_nothing_left_by(2, pid);
}

#[test]
fn a_named_key_is_shown_in_hex_and_in_the_maps_file_name() {
    let key = testkit::unique_key();
    let hex = names::key_hex(key);
    let (pid, out) = testkit::run_with_pid(bin(), &["--key", &key.to_string()]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(
        text.contains(&format!(
            "shmget({hex}, {}, IPC_CREAT|IPC_EXCL|0600)",
            inspect::page_size()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("/SYSV{} (deleted)", &hex[2..])),
        "{text}"
    );
    if inspect::ipcs_m().is_some() {
        assert!(text.contains(&format!("| {hex} ")), "ipcs row: {text}");
    }
    assert!(testkit::segments_with_key(key).is_empty());
    testkit::assert_nothing_left_by(2, pid);
}

#[test]
fn a_key_someone_else_holds_fails_with_eexist_and_is_left_alone() {
    let key = testkit::unique_key();
    let theirs = sysv::shmget(key, 4096, libc::IPC_CREAT | libc::IPC_EXCL | 0o600).unwrap();
    let _remove = common::cleanup::sysv_segment(theirs);
    let (pid, out) = testkit::run_with_pid(bin(), &["--key", &names::key_hex(key)]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "ERROR [EEXIST File exists] shmget({}, {}, IPC_CREAT|IPC_EXCL|0600)",
            names::key_hex(key),
            inspect::page_size()
        )),
        "{err}"
    );
    assert!(err.contains("is already in use"), "{err}");
    // IPC_EXCL: the other segment is untouched (still there, not marked).
    let st = sysv::shmctl_stat(theirs).expect("their segment still exists");
    assert_eq!(u32::from(st.shm_perm.mode) & sysv::SHM_DEST, 0);
    testkit::assert_nothing_left_by(2, pid);
}

#[test]
fn a_second_run_with_the_same_key_fails_while_the_first_holds_it() {
    let key = testkit::unique_key().to_string();
    let mut first = testkit::start(bin(), &["--key", &key, "--hold", "30"]);
    first.wait_for("holding for 30 s", Duration::from_secs(10));
    let (second, out) = testkit::run_with_pid(bin(), &["--key", &key]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("ERROR [EEXIST File exists] shmget("),
        "{}",
        stderr(&out)
    );
    testkit::assert_nothing_left_by(2, second);
    let pid = first.pid();
    assert_eq!(testkit::segments_created_by(pid).len(), 1);
    first.signal(Signal::SIGINT);
    let (status, err) = first.finish(Duration::from_secs(5));
    assert_eq!(status, Some(130), "{err}");
    testkit::assert_nothing_left_by(2, pid);
}

#[test]
fn sigint_or_sigterm_during_the_hold_leaves_no_segment() {
    for (sig, code) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
        let mut run = testkit::start(bin(), &["--hold", "30"]);
        run.wait_for("holding for 30 s", Duration::from_secs(10));
        let pid = run.pid();
        let segs = testkit::segments_created_by(pid);
        assert_eq!(segs.len(), 1, "the segment exists during the hold");
        assert_eq!(segs[0].nattch, 1);
        // Before any IPC_RMID, the attachment's file is already "(deleted)".
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(maps.contains("/SYSV00000000 (deleted)"), "{maps}");
        run.signal(sig);
        let (status, err) = run.finish(Duration::from_secs(5));
        assert_eq!(status, Some(code), "{err}");
        assert!(
            err.contains(&format!(
                "cleanup: shmctl({}, IPC_RMID, NULL)",
                segs[0].shmid
            )),
            "{err}"
        );
        testkit::assert_nothing_left_by(2, pid);
    }
}

#[test]
fn four_concurrent_runs_all_succeed() {
    for (pid, out) in testkit::run_concurrently(bin(), &[], 4) {
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("child wrote 0xdeadbeef"));
        testkit::assert_nothing_left_by(2, pid);
    }
}

#[test]
fn bad_arguments_print_usage_and_exit_2() {
    testkit::assert_usage_errors(
        bin(),
        "lesson-2",
        &[
            &["--bogus"],
            &["--key"],
            &["--key", "nope"],
            &["--key", "0xfffffffff"],
            &["--hold", "soon"],
            &["--hold", "5", "--pause"],
            &["extra"],
        ],
    );
}

#[test]
fn works_for_an_unprivileged_user() {
    let Some(out) = testkit::run_as_nobody(bin(), &[]) else {
        return;
    };
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("child wrote 0xdeadbeef"));
    assert!(
        text.contains(" nobody "),
        "the segment is owned by nobody:\n{text}"
    );
    assert!(text.contains("IPC_STAT, &buf) = -1 EINVAL"), "{text}");
    // setpriv execs the lesson in place, so the pid in its maps command is
    // the lesson's own: no segment that run created is left.
    let pid = testkit::number_after(&text, "$ grep SYSV00000000 /proc/");
    testkit::assert_nothing_left_by(2, pid);
}

/// proc(5): with kernel.shm_rmid_forced = 1 the segment is destroyed when its
/// attach count falls to 0, here at the parent's plain shmdt. Run in a private
/// IPC namespace of its own, so the host's setting is untouched.
#[test]
fn with_shm_rmid_forced_the_segment_dies_at_shmdt_and_the_lesson_still_succeeds() {
    let Some((_pid, out)) = testkit::run_in_ipc_namespace(bin(), &[], &[("shm_rmid_forced", "1")])
    else {
        return;
    };
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("\nchild wrote 0xdeadbeef\n"), "{text}");
    let shmid = testkit::number_after(&text, "IPC_CREAT|IPC_EXCL|0600) = shmid ");
    assert!(
        text.contains("kernel.shm_rmid_forced (/proc/sys/kernel/shm_rmid_forced): 1\n"),
        "{text}"
    );
    // The child's exit took nattch from 2 to 1: not 0, so the segment lived.
    assert!(
        text.contains("nattch after the child exited: 1\n"),
        "{text}"
    );
    // Right after shmdt, /proc/sysvipc/shm (read by the lesson) has no row.
    let after_shmdt = &text[text.find("shmdt(0x").unwrap()..];
    let rmid = after_shmdt.find("IPC_RMID").unwrap();
    assert!(
        after_shmdt[..rmid].contains(&format!("(no segment with shmid {shmid})")),
        "{text}"
    );
    // And the kernel confirms: IPC_RMID and IPC_STAT both find nothing.
    assert!(
        text.contains(&format!(
            "shmctl({shmid}, IPC_RMID, NULL) = -1 EINVAL (Invalid argument)"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "shmctl({shmid}, IPC_STAT, &buf) = -1 EINVAL (Invalid argument)"
        )),
        "{text}"
    );
    assert!(!stderr(&out).contains("cleanup:"), "{}", stderr(&out));
}

/// The same in a fresh IPC namespace with the default setting (0): the
/// segment outlives shmdt until IPC_RMID. Pairs with the test above.
#[test]
fn in_a_fresh_ipc_namespace_the_segment_outlives_shmdt_until_ipc_rmid() {
    let Some((_pid, out)) = testkit::run_in_ipc_namespace(bin(), &[], &[]) else {
        return;
    };
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let shmid = testkit::number_after(&text, "IPC_CREAT|IPC_EXCL|0600) = shmid ");
    assert!(
        text.contains("kernel.shm_rmid_forced (/proc/sys/kernel/shm_rmid_forced): 0\n"),
        "{text}"
    );
    let after_shmdt = &text[text.find("shmdt(0x").unwrap()..];
    assert!(after_shmdt.contains("nattch: 0\n"), "{text}");
    assert!(
        text.contains(&format!("shmctl({shmid}, IPC_RMID, NULL) = 0")),
        "{text}"
    );
}
