//! lesson-7 proves what it prints, on the running kernel.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{sysv, testkit};
use nix::sys::signal::Signal;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lesson-7"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Parts 1 and 4 allocate and free 64 MiB and read the machine-wide `Shmem:`
/// figure around it. The tests of this file run in parallel threads: every
/// run that moves 64 MiB of Shmem holds this lock, so no two of them blur
/// each other's figures (other processes on the machine still may: the
/// Shmem tests retry).
static BIG_SHMEM: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn big_shmem() -> std::sync::MutexGuard<'static, ()> {
    BIG_SHMEM
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Run one part; assert success and that the run left nothing behind.
fn part(n: &str) -> (String, String) {
    let _alone = (n == "1" || n == "4").then(big_shmem);
    let (pid, out) = testkit::run_with_pid(bin(), &["--part", n]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "part {n}: {stdout}\n{stderr}");
    testkit::assert_nothing_left_by(7, pid);
    (stdout, stderr)
}

fn has(text: &str, expected: &[&str]) {
    for e in expected {
        assert!(text.contains(e), "missing {e:?} in:\n{text}");
    }
}

#[test]
fn part1_unlink_while_mapped() {
    let (out, _) = part("1");
    has(
        &out,
        &[
            "O_CREAT|O_EXCL|O_RDWR, 0600) = fd ",
            "ftruncate(3, 67108864) = 0",
            "posix_fallocate(3, 0, 67108864) = 0",
            "-unlink\") = 0",
            "No such file or directory",
            "-unlink (deleted)",
            "read back: 0xdeadbeef: the mapping still works",
            ", O_RDWR, 0000) = -1 ENOENT (No such file or directory)",
            "Shmem after munmap:",
        ],
    );
    // The maps line of the unlinked object is a shared mapping.
    let line = out
        .lines()
        .find(|l| l.ends_with("-unlink (deleted)"))
        .unwrap();
    assert!(line.contains(" rw-s "), "{line}");
}

/// `Shmem after WHEN: N kB (+D kB)` from part 1's output: (N, D).
fn shmem_fact(out: &str, when: &str) -> (i64, i64) {
    let line = out
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("Shmem {when}: ")))
        .unwrap_or_else(|| panic!("no Shmem {when} in:\n{out}"));
    let (now, delta) = line.split_once(" kB (").unwrap();
    let delta = delta.trim_end_matches(" kB)");
    (now.parse().unwrap(), delta.parse().unwrap())
}

/// The claim of part 1, from the kernel's numbers: Shmem (machine-wide, in
/// /proc/meminfo) rises by the 64 MiB at posix_fallocate, does not fall at
/// shm_unlink, and falls by the 64 MiB only at the last munmap. Other
/// processes move Shmem too, so a run whose numbers are blurred by them (the
/// lesson then says so instead of concluding) is tried again, at most 3
/// times; a lesson that frees the memory early, or never, fails every time.
#[test]
fn part1_the_memory_is_freed_only_at_the_last_munmap() {
    const MIB64_KB: i64 = 64 * 1024;
    let mut seen = String::new();
    for _ in 0..3 {
        let (out, _) = part("1");
        let start: i64 = testkit::number_after(&out, "| Shmem: ").into();
        let (filled, rose) = shmem_fact(&out, "after allocating 64 MiB");
        let (unlinked, at_unlink) = shmem_fact(&out, "after shm_unlink");
        let (end, at_munmap) = shmem_fact(&out, "after munmap");
        // The deltas the lesson printed are its own numbers' differences.
        assert_eq!(
            (rose, at_unlink, at_munmap),
            (filled - start, unlinked - filled, end - unlinked),
            "{out}"
        );
        // The lesson concludes only what its numbers support.
        let concluded = out.contains("fell by");
        assert_eq!(
            concluded,
            rose >= MIB64_KB * 3 / 4 && -at_munmap >= MIB64_KB * 3 / 4,
            "{out}"
        );
        if rose >= MIB64_KB * 3 / 4
            && at_unlink.abs() < MIB64_KB / 4
            && -at_munmap >= MIB64_KB * 3 / 4
        {
            return;
        }
        seen.push_str(&format!(
            "rose {rose:+} kB, at shm_unlink {at_unlink:+} kB, at munmap {at_munmap:+} kB\n"
        ));
    }
    panic!("in 3 runs Shmem never rose by ~64 MiB, held at shm_unlink and fell at munmap:\n{seen}");
}

#[test]
fn part2_rmid_while_attached() {
    let (out, _) = part("2");
    has(
        &out,
        &[
            "IPC_CREAT|IPC_EXCL|0600) = ",
            "SHM_DEST not set",
            "SHM_DEST set: marked by IPC_RMID",
            "key     0x00000000",
            ", 0, 0) = -1 ENOENT (No such file or directory)",
            "the second attachment sees the same memory: 0xdeadbeef",
        ],
    );
    // IPC_RMID succeeded on the attached segment; after both detaches
    // (each = 0) IPC_STAT on its id fails with EINVAL.
    let shmid = testkit::number_after(&out, "IPC_CREAT|IPC_EXCL|0600) = ");
    has(
        &out,
        &[
            &format!("shmctl({shmid}, IPC_RMID, NULL) = 0"),
            &format!("shmctl({shmid}, IPC_STAT, &buf) = -1 EINVAL (Invalid argument)"),
        ],
    );
    let detached = out
        .lines()
        .filter(|l| l.contains("▸ shmdt(0x") && l.ends_with(") = 0"))
        .count();
    assert_eq!(detached, 2, "{out}");
    // /proc/sysvipc/shm showed key 0 and perms 1600 (SHM_DEST|0600).
    assert!(
        out.lines()
            .any(|l| l.trim_start_matches([' ', '|']).starts_with("0 ") && l.contains(" 1600 ")),
        "{out}"
    );
    if inspect_ipcs() {
        assert!(
            out.lines()
                .any(|l| l.contains("0x00000000") && l.trim_end().ends_with("dest")),
            "ipcs -m showed no dest row:\n{out}"
        );
        assert!(out.contains("(no row with shmid"), "{out}");
    }
}

fn inspect_ipcs() -> bool {
    common::inspect::ipcs_m().is_some()
}

fn rmid_forced() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced").is_ok_and(|s| s.trim() == "1")
}

#[test]
fn part3_both_kinds_survive_a_sigkilled_child() {
    let (out, _) = part("3");
    has(
        &out,
        &[
            ": killed by SIGKILL (signal 9)",
            "What the dead child left behind",
            "from a shell: rm /dev/shm/shm-lessons-7-",
        ],
    );
    let after = out.split("What the dead child left behind").nth(1).unwrap();
    let file_line = after.lines().nth(2).unwrap();
    assert!(
        file_line.contains("-rw------- 1 ") && file_line.ends_with("-leak"),
        "the POSIX object survived the child: {file_line}"
    );
    // /dev/shm is sticky: as root, the child that became nobody can't
    // remove our leftovers.
    let sticky = after.split("Another user's leftovers").nth(1).unwrap();
    let mode = std::fs::metadata("/dev/shm").unwrap().mode();
    if mode & 0o1000 == 0 {
        assert!(sticky.contains("has no sticky bit"), "{sticky}");
    } else if mode & 0o7777 == 0o1777 {
        assert!(sticky.contains("| drwxrwxrwt root"), "{sticky}");
    }
    if testkit::is_root() && mode & 0o1000 != 0 {
        has(
            sticky,
            &[
                "setuid(65534) = 0: the child is now nobody",
                "-leak\") = -1 EPERM (Operation not permitted)",
                "Both fail with EPERM",
            ],
        );
        if !rmid_forced() {
            assert!(
                sticky.contains(", IPC_RMID, NULL) = -1 EPERM (Operation not permitted)"),
                "{sticky}"
            );
        }
    }
    if rmid_forced() {
        assert!(after.contains("kernel.shm_rmid_forced: 1"), "{after}");
    } else {
        has(
            after,
            &[
                "kernel.shm_rmid_forced: 0",
                "Both survive",
                "from a shell: ipcrm -m ",
            ],
        );
    }
}

/// proc(5): with kernel.shm_rmid_forced = 1 (set in a private IPC namespace
/// of the test's own) the killed child's segment is destroyed at nattch 0,
/// while the POSIX object survives; the lesson says so and exits 0.
#[test]
fn part3_with_shm_rmid_forced_only_the_posix_object_survives() {
    let Some((pid, out)) =
        testkit::run_in_ipc_namespace(bin(), &["--part", "3"], &[("shm_rmid_forced", "1")])
    else {
        return;
    };
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let after = stdout
        .split("What the dead child left behind")
        .nth(1)
        .unwrap();
    let file_line = after.lines().nth(2).unwrap();
    assert!(
        file_line.contains("-rw------- 1 ") && file_line.ends_with("-leak"),
        "the POSIX object survived the child: {file_line}"
    );
    // The segment the parent found by key before the SIGKILL is gone after it.
    let shmid = testkit::number_after(&stdout, ", 0, 0) = ");
    let ipcs = after.split("$ ipcs -m").nth(1).unwrap();
    let row = ipcs.lines().nth(1).unwrap();
    assert!(
        row.contains(&format!("(no row with shmid {shmid})"))
            || row.contains(&format!("(no segment with shmid {shmid})")),
        "{after}"
    );
    has(
        after,
        &["kernel.shm_rmid_forced: 1", "The System V segment is gone"],
    );
    assert!(!after.contains("Both survive"), "{after}");
    assert!(!after.contains("from a shell: ipcrm -m "), "{after}");
    testkit::assert_nothing_left_by(7, pid);
}

#[test]
fn part4_memfd_sigbus_without_seals_eperm_with_them() {
    let (out, err) = part("4");
    let (unsealed, sealed) = out.split_once("With F_SEAL_SHRINK|F_SEAL_GROW").unwrap();
    has(
        unsealed,
        &[
            "MFD_CLOEXEC|MFD_ALLOW_SEALING) = fd ",
            "/memfd:shm-lessons-7-memfd (deleted)",
            "SCM_RIGHTS gave us fd ",
            "F_GET_SEALS) = 0 (no seals)",
            "read: \"hello through a memfd\"",
            ": killed by SIGBUS (signal 7)",
        ],
    );
    // The sender's shrink of the unsealed memfd succeeded.
    assert!(
        unsealed
            .lines()
            .any(|l| l.contains("▸ ftruncate(") && l.ends_with(", 0) = 0")),
        "{unsealed}"
    );
    has(
        sealed,
        &[
            "F_ADD_SEALS, F_SEAL_SHRINK|F_SEAL_GROW) = 0",
            "F_GET_SEALS) = F_SEAL_SHRINK|F_SEAL_GROW",
            ", 0) = -1 EPERM (Operation not permitted)",
            ", 8192) = -1 EPERM (Operation not permitted)",
            "\"hello through a memfd\": still there",
            ": exited with status 0",
        ],
    );
    assert!(
        err.contains("SIGBUS handler: si_code=BUS_ADRERR"),
        "the receiver's handler saw the fault: {err}"
    );
    assert!(!out.contains("/dev/shm/shm-lessons-7-memfd"), "{out}");
    // After close, no descriptor and no mapping of the memfd remains.
    let release = sealed.split("Release: the last descriptor").nth(1).unwrap();
    for probe in ["/fd | grep shm-lessons-7-memfd", "/maps"] {
        let after = release.split(probe).nth(1).unwrap();
        let shown = after.lines().nth(1).unwrap();
        assert_eq!(shown.trim(), "| (nothing)", "{probe}: {release}");
    }
}

/// Part 4's receiver checks F_GET_SEALS and refuses a memfd without
/// F_SEAL_SHRINK before mapping it; and a 64 MiB memfd whose last holder is
/// SIGKILLed is freed, from the Shmem figures: +64 MiB at posix_fallocate,
/// unchanged at the sender's close, -64 MiB at the receiver's death. (Shmem is
/// machine-wide: a run blurred by other processes is tried again, at most 3
/// times, as in part 1's test.)
#[test]
fn part4_a_careful_receiver_refuses_unsealed_and_a_killed_holder_frees_the_pages() {
    const MIB64_KB: i64 = 64 * 1024;
    let mut seen = String::new();
    for _ in 0..3 {
        let (out, _) = part("4");
        let careful = out
            .split("A careful receiver checks F_GET_SEALS first")
            .nth(1)
            .and_then(|t| t.split("With F_SEAL_SHRINK|F_SEAL_GROW").next())
            .unwrap_or_else(|| panic!("no careful receiver in:\n{out}"));
        has(
            careful,
            &[
                "--receive-fd   (stdin = fd ",
                "F_GET_SEALS) = 0 (no seals)",
                "refused: the memfd lacks F_SEAL_SHRINK",
                ": exited with status 3",
            ],
        );
        assert!(!careful.contains("--trusting"), "{careful}");
        assert!(
            !careful.contains("] mmap("),
            "it refused before mapping: {careful}"
        );
        // The trusting receiver of the unsealed step is the one that died.
        let trusting = out.split("A careful receiver").next().unwrap();
        has(
            trusting,
            &["--receive-fd --trusting", ": killed by SIGBUS (signal 7)"],
        );

        let crash = out
            .split("the last holder of a 64 MiB memfd dies of SIGKILL")
            .nth(1)
            .unwrap_or_else(|| panic!("no SIGKILL step in:\n{out}"));
        has(
            crash,
            &[
                "F_GET_SEALS) = F_SEAL_SHRINK|F_SEAL_GROW",
                ": killed by SIGKILL (signal 9)",
            ],
        );
        let start: i64 = testkit::number_after(crash, "| Shmem: ").into();
        let (filled, rose) = shmem_fact(crash, "after allocating 64 MiB");
        let (closed, at_close) = shmem_fact(crash, "after our close");
        let (end, at_death) = shmem_fact(crash, "after the receiver's death");
        assert_eq!(
            (rose, at_close, at_death),
            (filled - start, closed - filled, end - closed),
            "{crash}"
        );
        let clean = rose >= MIB64_KB * 3 / 4
            && at_close.abs() < MIB64_KB / 4
            && -at_death >= MIB64_KB * 3 / 4;
        // The lesson concludes only what its numbers support.
        assert_eq!(crash.contains("fell by"), clean, "{crash}");
        if clean {
            return;
        }
        seen.push_str(&format!(
            "rose {rose:+} kB, at close {at_close:+} kB, at the death {at_death:+} kB\n"
        ));
    }
    panic!("in 3 runs Shmem never showed the killed holder's 64 MiB freed:\n{seen}");
}

#[test]
fn the_whole_lesson_runs_concurrently_and_leaves_nothing() {
    let _alone = big_shmem();
    for (pid, out) in testkit::run_concurrently(bin(), &[], 2) {
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
        assert!(stdout.contains("lesson-7 done"), "{stdout}");
        assert!(!stdout.contains('\x1b'), "escape codes with NO_COLOR=1");
        testkit::assert_nothing_left_by(7, pid);
    }
}

#[test]
fn ctrl_c_during_a_hold_removes_what_the_run_made() {
    // Part 3's hold comes after the crash: both leftovers exist then.
    let mut run = testkit::start(bin(), &["--part", "3", "--hold", "30"]);
    run.wait_for("holding for 30 s", Duration::from_secs(20));
    let pid = run.pid();
    let name = format!("shm-lessons-7-{pid}-leak");
    assert!(
        testkit::shm_exists(&name),
        "the leftover exists during the hold"
    );
    // The cleanup, even with --yes, leaves both to the run that holds them:
    // the object's name and the segment's key carry its pid.
    let key = (0x53u32 << 24 | 7 << 20 | (pid & 0xf_ffff)) as i32;
    let seg = testkit::segments_with_key(key);
    assert_eq!(
        seg.len(),
        1,
        "the dead child's segment exists during the hold"
    );
    let prefix = format!("shm-lessons-7-{pid}-");
    let keys = format!("{:#010x}", key as u32);
    let out = text(&cleanup(&["--prefix", &prefix, "--keys", &keys, "--yes"]).stdout);
    has(
        &out,
        &[
            &format!("left alone: /dev/shm/{name}: in use: its name carries pid {pid}"),
            &format!(
                "left alone: System V key {keys} shmid {}: in use: the run that made its key, \
                 pid {pid} (lesson-7), is running",
                seg[0].shmid
            ),
            "removed 0 object(s)",
        ],
    );
    assert!(testkit::shm_exists(&name) && testkit::segments_with_key(key).len() == 1);
    run.signal(Signal::SIGINT);
    let (status, stderr) = run.finish(Duration::from_secs(5));
    assert_eq!(status, Some(130), "{stderr}");
    assert!(stderr.contains("cleanup: shm_unlink"), "{stderr}");
    assert!(!testkit::shm_exists(&name), "{name} left after Ctrl-C");
    assert!(testkit::segments_with_key(key).is_empty(), "segment left");
    testkit::assert_nothing_left_by(7, pid);

    // Part 1's hold: the object is unlinked but mapped; SIGTERM still ends it.
    let _alone = big_shmem();
    let mut run = testkit::start(bin(), &["--part", "1", "--hold", "30"]);
    run.wait_for("holding for 30 s", Duration::from_secs(20));
    run.signal(Signal::SIGTERM);
    let (status, stderr) = run.finish(Duration::from_secs(5));
    assert_eq!(status, Some(143), "{stderr}");
}

#[test]
fn monitor_prints_the_ipc_stat_record() {
    let id = sysv::shmget(libc::IPC_PRIVATE, 4096, libc::IPC_CREAT | 0o600).unwrap();
    let _guard = common::cleanup::sysv_segment(id);
    let out = Command::new(bin())
        .args(["--monitor", &id.to_string()])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    has(
        &stdout,
        &[
            &format!("shmctl({id}, IPC_STAT, &buf) = 0"),
            "segsz   4096",
            "nattch  0",
            &format!("cpid    {}", std::process::id()),
            "dtime   0 (never)",
            "mode    0o600 (rw-------), SHM_DEST not set",
        ],
    );
    sysv::shmctl_rmid(id).unwrap();
    let out = Command::new(bin())
        .args(["--monitor", &id.to_string()])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!(
            "ERROR [EINVAL Invalid argument] shmctl({id}, IPC_STAT, &buf)"
        )),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bad_arguments_print_usage_and_exit_2() {
    testkit::assert_usage_errors(
        bin(),
        "lesson-7",
        &[
            &["--part"],
            &["--part", "0"],
            &["--part", "6"],
            &["--yes"],
            &["--prefix", "shm-lessons-x"],
            &["--cleanup", "--prefix", "mymem"],
            &["--cleanup", "--keys", "12345678"],
            &["--cleanup", "--part", "1"],
            &["--monitor", "x"],
            &["--cleanup", "--hold", "5"],
            &["--monitor", "1", "--pause"],
            &["--bogus"],
            &["--trusting"],
            &["--part", "4", "--trusting"],
        ],
    );
}

// ---- the cleanup command ----------------------------------------------

static N: AtomicU32 = AtomicU32::new(0);

/// Objects a test made; removed on every path (also after a failed assert).
#[derive(Default)]
struct Made {
    files: Vec<String>,
    segments: Vec<i32>,
    /// Scratch directories of ours (not symlinks), removed with their files.
    dirs: Vec<std::path::PathBuf>,
}

impl Drop for Made {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        for &id in &self.segments {
            let _ = sysv::shmctl_rmid(id);
        }
    }
}

/// A pid that no process has now: a child that already ended.
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// A lesson key (0x53 top byte) for tests: lesson nibble 0xe, then bits
/// from our pid and a counter, so parallel tests never collide.
fn test_key() -> i32 {
    let n = N.fetch_add(1, Ordering::Relaxed);
    let low = (std::process::id().wrapping_mul(16) + n) & 0xf_ffff;
    (0x53u32 << 24 | 0xe << 20 | low) as i32
}

/// Create a segment with `key` in a child that then exits, so its creator
/// is dead, like a crashed lesson's.
fn segment_of_a_dead_process(key: i32) -> i32 {
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};
    // SAFETY: the child only calls shmget and _exit, both async-signal-safe.
    match unsafe { fork() }.unwrap() {
        // SAFETY: shmget takes integers only; _exit ends the child at once.
        ForkResult::Child => unsafe {
            let id = libc::shmget(key, 4096, libc::IPC_CREAT | libc::IPC_EXCL | 0o600);
            libc::_exit(if id == -1 { 1 } else { 0 })
        },
        ForkResult::Parent { child } => {
            assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            sysv::shmget(key, 0, 0).unwrap()
        }
    }
}

/// Give a segment to another user (root only).
fn give_segment_to_nobody(id: i32) {
    let mut ds = sysv::shmctl_stat(id).unwrap();
    ds.shm_perm.uid = 65534;
    // SAFETY: ds is a valid shmid_ds read by IPC_STAT; IPC_SET reads it.
    assert_eq!(unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) }, 0);
}

fn cleanup(args: &[&str]) -> Output {
    let out = Command::new(bin())
        .arg("--cleanup")
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

#[test]
fn cleanup_lists_then_removes_exactly_our_leftovers() {
    let mut made = Made::default();
    let dead = dead_pid();
    let prefix = format!("shm-lessons-test-{dead}-{}-clean-", std::process::id());
    let path = |what: &str| format!("/dev/shm/{prefix}{what}");

    // Ours and left over: a POSIX object and a lesson-key segment of a dead
    // process.
    std::fs::write(path("ours"), b"leftover").unwrap();
    made.files.push(path("ours"));
    let our_key = test_key();
    let our_seg = segment_of_a_dead_process(our_key);
    made.segments.push(our_seg);

    // Not ours to remove: outside the lessons' prefix, a key without the
    // lessons' mark, a segment whose creator (this test) is running, and, when
    // we are root, a lesson object and segment given to another user.
    let foreign_name = format!("/dev/shm/not-{prefix}foreign");
    std::fs::write(&foreign_name, b"not a lesson").unwrap();
    made.files.push(foreign_name.clone());
    let plain_key = test_key() & 0x00ff_ffff | 0x1200_0000;
    let plain_seg = segment_of_a_dead_process(plain_key);
    made.segments.push(plain_seg);
    let live_key = test_key();
    let live_seg = sysv::shmget(live_key, 4096, libc::IPC_CREAT | libc::IPC_EXCL | 0o600).unwrap();
    made.segments.push(live_seg);
    let mut keys = vec![our_key, live_key];
    let root = testkit::is_root();
    let mut other_key = 0;
    if root {
        std::fs::write(path("nobodys"), b"another user's").unwrap();
        made.files.push(path("nobodys"));
        std::os::unix::fs::chown(path("nobodys"), Some(65534), Some(65534)).unwrap();
        other_key = test_key();
        let other_seg = segment_of_a_dead_process(other_key);
        made.segments.push(other_seg);
        give_segment_to_nobody(other_seg);
        keys.push(other_key);
    }
    let keys_arg = keys
        .iter()
        .map(|k| format!("{:#010x}", *k as u32))
        .collect::<Vec<_>>()
        .join(",");
    let filter = ["--prefix", prefix.as_str(), "--keys", keys_arg.as_str()];

    // The dry run lists, and removes nothing.
    let dry = text(&cleanup(&filter).stdout);
    has(
        &dry,
        &[
            &format!("would remove: {}   (rm {})", path("ours"), path("ours")),
            &format!(
                "would remove: System V key {:#010x} shmid {our_seg}   (ipcrm -m {our_seg})",
                our_key as u32
            ),
            &format!(
                "left alone: System V key {:#010x} shmid {live_seg}: in use: its creator, pid {}, is running",
                live_key as u32,
                std::process::id()
            ),
            "dry run: nothing removed; 2 object(s) would be removed",
        ],
    );
    if root {
        has(
            &dry,
            &[
                &format!(
                    "left alone: {}: owned by nobody (uid 65534), not you",
                    path("nobodys")
                ),
                &format!("System V key {:#010x} shmid", other_key as u32),
            ],
        );
    }
    assert!(!dry.contains("foreign"), "{dry}");
    assert!(Path::new(&path("ours")).exists());
    assert!(sysv::shmctl_stat(our_seg).is_ok());

    // --yes removes exactly the two leftovers.
    let yes = text(&cleanup(&[&filter[..], &["--yes"]].concat()).stdout);
    has(
        &yes,
        &[
            &format!("shm_unlink(\"/{prefix}ours\") = 0"),
            &format!("shmctl({our_seg}, IPC_RMID, NULL) = 0"),
            &format!("removed: {}", path("ours")),
            "removed 2 object(s)",
        ],
    );
    assert!(!Path::new(&path("ours")).exists(), "our leftover is gone");
    assert!(sysv::shmctl_stat(our_seg).is_err(), "our segment is gone");
    assert_eq!(std::fs::read(&foreign_name).unwrap(), b"not a lesson");
    assert!(
        sysv::shmctl_stat(plain_seg).is_ok(),
        "the non-lesson segment survives"
    );
    assert!(
        sysv::shmctl_stat(live_seg).is_ok(),
        "the live segment survives"
    );
    if root {
        let md = std::fs::metadata(path("nobodys")).unwrap();
        assert_eq!(md.uid(), 65534, "another user's object survives");
        let seg = sysv::shmctl_stat(made.segments[3]).unwrap();
        assert_eq!(seg.shm_perm.uid, 65534, "another user's segment survives");
    }
}

/// The lessons' scratch files outside /dev/shm (lesson-6's `-msync` file,
/// lesson-9's `-thp` mount point, lesson-4's `-disk` directory with its
/// object), left by a dead pid, are removed; the same for a running pid, a
/// directory holding something no lesson puts there, and a symlink, are not.
#[test]
fn cleanup_removes_scratch_files_of_dead_runs_only() {
    let mut made = Made::default();
    let (me, dead, dead2) = (std::process::id(), dead_pid(), dead_pid());
    let tmp = std::fs::canonicalize(std::env::temp_dir()).unwrap();
    let prefix = format!("shm-lessons-t{me}s-");
    let at = |pid: u32, what: &str| tmp.join(format!("{prefix}{pid}-{what}"));
    let show = |p: &Path| p.display().to_string();
    made.dirs.push(at(dead, "thp"));
    made.dirs.push(at(dead, "disk"));
    made.dirs.push(at(dead2, "disk"));
    for f in [at(dead, "msync"), at(me, "msync"), at(dead2, "msync")] {
        made.files.push(show(&f));
    }
    std::fs::write(at(dead, "msync"), b"a dead run's").unwrap();
    std::fs::write(at(me, "msync"), b"a running one's").unwrap();
    std::fs::create_dir(at(dead, "thp")).unwrap();
    std::fs::create_dir(at(dead, "disk")).unwrap();
    let object = at(dead, "disk").join(format!("{prefix}{dead}-s2-x"));
    std::fs::write(&object, b"scenario 2's object").unwrap();
    std::fs::create_dir(at(dead2, "disk")).unwrap();
    std::fs::write(at(dead2, "disk").join("notes"), b"not a lesson's").unwrap();
    std::os::unix::fs::symlink(at(me, "msync"), at(dead2, "msync")).unwrap();
    // No System V segment has this key: the run touches no segment.
    let key = format!("{:#010x}", test_key() as u32);
    let filter = ["--prefix", prefix.as_str(), "--keys", key.as_str()];

    let dry = text(&cleanup(&filter).stdout);
    let thp = show(&at(dead, "thp"));
    has(
        &dry,
        &[
            &format!("would remove: {0}   (rm {0})", show(&at(dead, "msync"))),
            &format!("would remove: {thp}   (rmdir {thp})"),
            &format!(
                "left alone: {}: in use: its name carries pid {me}, which is running",
                show(&at(me, "msync"))
            ),
            &format!(
                "left alone: {}: it holds notes (-), which no lesson leaves there",
                show(&at(dead2, "disk"))
            ),
            "dry run: nothing removed; 3 object(s) would be removed",
        ],
    );
    assert!(!dry.contains(&format!("{prefix}{dead2}-msync")), "{dry}");
    assert!(at(dead, "msync").exists() && at(dead, "thp").exists() && object.exists());

    let yes = text(&cleanup(&[&filter[..], &["--yes"]].concat()).stdout);
    has(
        &yes,
        &[
            &format!("unlink(\"{}\") = 0", show(&at(dead, "msync"))),
            &format!("rmdir(\"{thp}\") = 0"),
            &format!("unlink(\"{}\") = 0", show(&object)),
            &format!("rmdir(\"{}\") = 0", show(&at(dead, "disk"))),
            "removed 3 object(s)",
        ],
    );
    for gone in [at(dead, "msync"), at(dead, "thp"), at(dead, "disk")] {
        assert!(
            std::fs::symlink_metadata(&gone).is_err(),
            "{gone:?} is gone"
        );
    }
    assert_eq!(std::fs::read(at(me, "msync")).unwrap(), b"a running one's");
    assert_eq!(
        std::fs::read(at(dead2, "disk").join("notes")).unwrap(),
        b"not a lesson's"
    );
    let link = std::fs::symlink_metadata(at(dead2, "msync")).unwrap();
    assert!(link.file_type().is_symlink(), "the symlink survives");
}

/// The cleanup's `ls -l` shows a symlink as `l...` (not `d...`), and a name
/// with a newline quoted like GNU ls, on one line, in the listing and in the
/// `rm` command it suggests.
#[test]
fn cleanup_shows_file_types_and_quotes_names_like_ls() {
    let mut made = Made::default();
    let dead = dead_pid();
    let prefix = format!("shm-lessons-test-{dead}-{}-quote-", std::process::id());
    let link = format!("/dev/shm/{prefix}link");
    std::os::unix::fs::symlink("/nowhere", &link).unwrap();
    made.files.push(link.clone());
    let odd = format!("/dev/shm/{prefix}two\nlines");
    std::fs::write(&odd, b"x").unwrap();
    made.files.push(odd.clone());
    let dry = text(&cleanup(&["--prefix", prefix.as_str()]).stdout);
    let link_line = dry
        .lines()
        .find(|l| l.contains(&format!("{prefix}link -> ")))
        .unwrap_or_else(|| panic!("no ls line for the link:\n{dry}"));
    assert!(
        link_line
            .trim_start_matches([' ', '|'])
            .starts_with("lrwxrwxrwx "),
        "{link_line}"
    );
    assert!(link_line.ends_with(" -> /nowhere"), "{link_line}");
    let quoted = format!("'{prefix}two'$'\\n''lines'");
    assert!(
        dry.lines()
            .any(|l| l.trim_start_matches([' ', '|']).starts_with("-rw") && l.ends_with(&quoted)),
        "{dry}"
    );
    assert!(
        dry.contains(&format!(
            "would remove: /dev/shm/{quoted}   (rm /dev/shm/{quoted})"
        )),
        "{dry}"
    );
    assert!(
        dry.contains(&format!("left alone: /dev/shm/{prefix}link: ")),
        "a symlink is never removed: {dry}"
    );
    assert!(
        !dry.contains(&format!("{prefix}two\n")),
        "a raw newline: {dry}"
    );
}

#[test]
fn cleanup_leaves_an_object_that_a_process_maps() {
    let made = Made::default();
    let mut made = made;
    let dead = dead_pid();
    let prefix = format!("shm-lessons-test-{dead}-{}-mapped-", std::process::id());
    let path = format!("/dev/shm/{prefix}x");
    std::fs::write(&path, [0u8; 4096]).unwrap();
    made.files.push(path.clone());
    let f = std::fs::File::open(&path).unwrap();
    // SAFETY: a fresh read-only shared mapping of our own file, never read.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    drop(f);
    let out = text(&cleanup(&["--prefix", &prefix, "--yes"]).stdout);
    // SAFETY: the mapping made above; unused afterwards.
    unsafe { libc::munmap(p, 4096) };
    // A sibling test that forks at this moment gives its child a copy of the
    // mapping, so more pids than ours may be listed: ours must be among them.
    let listed = out
        .lines()
        .find_map(|l| {
            l.split(&format!(
                "left alone: {path}: in use: mapped or open by pid ["
            ))
            .nth(1)
        })
        .unwrap_or_else(|| panic!("not left alone as in use: {out}"));
    let ours = std::process::id().to_string();
    assert!(
        listed.trim_end_matches(']').split(", ").any(|p| p == ours),
        "{out}"
    );
    assert!(Path::new(&path).exists());
}

#[test]
fn scripts_cleanup_is_a_dry_run_that_calls_the_lesson() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cleanup");
    let help = Command::new(&script).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(text(&help.stdout).contains("usage: scripts/cleanup [--yes]"));

    let mut made = Made::default();
    let dead = dead_pid();
    let prefix = format!("shm-lessons-test-{dead}-{}-script-", std::process::id());
    let path = format!("/dev/shm/{prefix}x");
    std::fs::write(&path, b"leftover").unwrap();
    made.files.push(path.clone());
    let out = Command::new(&script)
        .args(["--prefix", &prefix])
        .env("SHM_LESSONS_CLEANUP_BIN", bin())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!("would remove: {path}")),
        "{stdout}"
    );
    assert!(Path::new(&path).exists(), "a dry run removes nothing");
    let bad = Command::new(&script)
        .arg("--bogus")
        .env("SHM_LESSONS_CLEANUP_BIN", bin())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn works_for_an_unprivileged_user() {
    let _alone = big_shmem();
    let Some(out) = testkit::run_as_nobody(bin(), &[]) else {
        return;
    };
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    has(
        &stdout,
        &[
            "lesson-7 done",
            "-rw------- 1 nobody ",
            ": killed by SIGBUS (signal 7)",
            "owned by nobody (uid 65534): dry run",
        ],
    );
    if std::fs::metadata("/dev/shm").unwrap().mode() & 0o1000 != 0 {
        assert!(
            stdout.contains("Run this part as root to watch a second user"),
            "{stdout}"
        );
    }
    // Only this test runs lesson-7 as nobody: nothing of it may remain.
    let left: Vec<_> = common::inspect::dev_shm_entries()
        .into_iter()
        .filter(|e| e.uid == 65534 && e.name.starts_with("shm-lessons-7-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let segs: Vec<_> = common::inspect::sysv_segments()
        .into_iter()
        .filter(|s| s.uid == 65534 && (s.key as u32) >> 20 == 0x537)
        .collect();
    assert!(segs.is_empty(), "{segs:?}");
}
