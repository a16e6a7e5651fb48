//! lesson-10 proves what it prints from the running kernel: namespace
//! identities read by the test itself from /proc, errnos, the segments each
//! namespace lists, and that nothing of a run is left behind.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{inspect, ns, testkit};
use nix::unistd::Pid;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lesson-10"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pid of the child that played `role`: `child: pid N (role)`.
fn child_pid(text: &str, role: &str) -> i32 {
    text.lines()
        .find_map(|l| {
            let l = l.trim_start().strip_prefix("child: pid ")?;
            let (pid, rest) = l.split_once(' ')?;
            (rest == format!("({role})")).then(|| pid.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {role} child in:\n{text}"))
}

/// The value after `label: ` on the first line that starts with it.
fn fact<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(&format!("{label}: ")))
        .unwrap_or_else(|| panic!("no {label:?} in:\n{text}"))
}

/// Each of `pids` is gone: reaped (by `waitpid`, so not even a zombie is
/// left), or its pid already reused by a stranger (alive, not a zombie, and
/// not in the namespace `identity`). Not "no process is in it": once a
/// namespace is gone, the kernel may give its inode number to a new one
/// (another run's), so a scan of every process could find strangers. Called
/// right after the lesson exited, it proves the lesson reaped its children
/// itself: an orphan is reaped by init only later, and one killed by
/// `PR_SET_PDEATHSIG` dies only after the lesson is gone.
fn all_gone(pids: &[i32], kind: &str, identity: &str) {
    for &p in pids {
        if !Path::new(&format!("/proc/{p}")).exists() {
            continue;
        }
        let state = common::children::state(Pid::from_raw(p));
        let now = ns::identity(Some(Pid::from_raw(p)), kind);
        assert!(
            state.is_some_and(|s| s != 'Z') && now.as_deref() != Some(identity),
            "pid {p} was not reaped: state {state:?}, {kind} {now:?} (was {identity})"
        );
    }
}

/// A run that ended 0, or 77 because this machine refuses the namespaces
/// (then it must say which call failed). Returns whether it ran.
fn ran(out: &Output) -> bool {
    let text = stdout(out);
    match out.status.code() {
        Some(0) => true,
        Some(77) => {
            assert!(
                text.contains("unshare(") && text.contains("= -1 E"),
                "exit 77 without the refused call:\n{text}"
            );
            false
        }
        other => panic!(
            "exit {other:?}\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn assert_part1(text: &str) {
    // The identities the lesson printed differ, and the keeper's is the
    // inode the kernel gave a new namespace (not the host's).
    let host = fact(text, "readlink /proc/self/ns/ipc");
    let keeper = child_pid(text, "keep");
    let inner = fact(text, &format!("readlink /proc/{keeper}/ns/ipc"));
    assert!(host.starts_with("ipc:[") && inner.starts_with("ipc:["));
    assert_ne!(host, inner, "the keeper was in the host's IPC namespace");
    // Same mount namespace: the POSIX object was found there.
    assert_eq!(
        fact(text, &format!("readlink /proc/{keeper}/ns/mnt")),
        fact(text, "readlink /proc/self/ns/mnt")
    );
    assert!(
        text.contains(
            "= -1 ENOENT (No such file or directory)\n    result inside: shmget(host key) = ENOENT"
        ),
        "{text}"
    );
    assert!(
        fact(text, "read") == "\"written on the host\"",
        "the POSIX object was not read inside:\n{text}"
    );
    let visitor = child_pid(text, "visit");
    assert!(
        fact(text, "result later").starts_with(&format!("the segment of pid {visitor} ")),
        "{text}"
    );
    // The namespace is gone: every process that was in it has exited.
    all_gone(&[keeper, visitor, child_pid(text, "look")], "ipc", inner);
    assert!(
        text.contains(&format!("processes of this run in {inner}: [] ")),
        "{text}"
    );
}

#[test]
fn part1_a_new_ipc_namespace_hides_segments_but_not_posix_objects() {
    let (pid, out) = testkit::run_with_pid(bin(), &["--part", "1"]);
    if ran(&out) {
        assert_part1(&stdout(&out));
    }
    testkit::assert_nothing_left_by(10, pid);
}

#[test]
fn part1_seen_from_outside_while_the_keeper_holds_then_ctrl_c_cleans_up() {
    let mut run = testkit::start(bin(), &["--part", "1", "--hold", "600"]);
    let lesson = run.pid();
    run.wait_for("holding for 600 s", Duration::from_secs(60));
    let keeper = child_pid(&run.seen, "keep");
    let inner = ns::identity(Some(Pid::from_raw(keeper)), "ipc").expect("the keeper is alive");
    assert_ne!(Some(inner.clone()), ns::identity(None, "ipc"));
    // On the host: exactly one segment with the lesson's key, created by
    // the lesson itself (the visitor's twin lives in the other namespace).
    let ours = testkit::segments_created_by(lesson);
    assert_eq!(ours.len(), 1, "{ours:?}");
    let twins: Vec<_> = inspect::sysv_segments()
        .into_iter()
        .filter(|s| s.key == ours[0].key)
        .collect();
    assert_eq!(twins.len(), 1, "the host sees the inner segment: {twins:?}");
    // Inside (as root, through nsenter): the visitor's segment, same key.
    if testkit::is_root() {
        if let Ok(o) = std::process::Command::new("nsenter")
            .args(["-t", &keeper.to_string(), "-i", "cat", "/proc/sysvipc/shm"])
            .output()
        {
            let inside = inspect::parse_sysvipc_shm(&String::from_utf8_lossy(&o.stdout));
            let visitor = child_pid(&run.seen, "visit");
            assert!(
                inside
                    .iter()
                    .any(|s| s.key == ours[0].key && s.cpid == visitor && s.nattch == 0),
                "not inside: {inside:?}"
            );
        }
    }
    run.signal(nix::sys::signal::Signal::SIGINT);
    let (code, err) = run.finish(Duration::from_secs(30));
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("interrupted by SIGINT"), "{err}");
    all_gone(&[keeper], "ipc", &inner);
    testkit::assert_nothing_left_by(10, lesson);
}

#[test]
fn runs_as_nobody_through_a_user_namespace() {
    let Some(out) = testkit::run_as_nobody(bin(), &["--part", "1"]) else {
        return;
    };
    if ran(&out) {
        let text = stdout(&out);
        assert!(
            text.contains("unshare(CLONE_NEWUSER|CLONE_NEWIPC) = 0"),
            "{text}"
        );
        assert!(text.contains("setns(3, CLONE_NEWUSER) = 0"), "{text}");
        assert_part1(&text);
    }
}

#[test]
fn without_namespaces_it_says_why_and_exits_77() {
    let out = std::process::Command::new(bin())
        .args(["--part", "1"])
        .env(ns::DENY_ENV, "1")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(77), "{text}");
    assert!(
        text.contains("= -1 EPERM (Operation not permitted)"),
        "{text}"
    );
    assert!(
        text.contains("simulated by SHM_LESSONS_DENY_UNSHARE=1"),
        "{text}"
    );
    assert!(text.contains("warning: skipped: exit status 77"), "{text}");
}

#[test]
fn four_runs_at_once_do_not_collide() {
    // Whole runs: every part, four times at once.
    for (pid, out) in testkit::run_concurrently(bin(), &[], 4) {
        if ran(&out) {
            let text = stdout(&out);
            assert_part1(&text);
            assert!(fact(&text, "result container").ends_with("twice, nattch 2"));
            assert_eq!(fact(&text, "df /dev/shm"), "67108864 bytes");
            assert_eq!(fact(&text, "result shmmni"), "ENOSPC after 2 segments");
            assert_eq!(fact(&text, "result host limits"), "unchanged");
        }
        testkit::assert_nothing_left_by(10, pid);
    }
}

#[test]
fn bad_arguments_print_usage_and_exit_2() {
    testkit::assert_usage_errors(
        bin(),
        "lesson-10",
        &[
            &["--part", "0"],
            &["--part", "6"],
            &["--bogus"],
            &["--hold"],
        ],
    );
}

fn pair(text: &str, label: &str) -> (String, String) {
    let v = fact(text, label);
    let (a, b) = v.split_once(' ').unwrap_or_else(|| panic!("{label}: {v}"));
    (a.to_string(), b.to_string())
}

#[test]
fn part2_each_ipc_mode_shares_what_docker_shares() {
    let (pid, out) = testkit::run_with_pid(bin(), &["--part", "2"]);
    if ran(&out) {
        let text = stdout(&out);
        let (host_ipc, host_mnt) = pair(&text, "host ipc / mnt");
        // private: both namespaces its own; the host saw neither object.
        let (ipc, mnt) = pair(&text, "container ipc / mnt");
        assert!(ipc != host_ipc && mnt != host_mnt, "{text}");
        assert_eq!(fact(&text, "the host sees"), "key: no, name: no", "{text}");
        // shareable + container:one: the joiner reads the same namespaces
        // from its own /proc/self/ns, and the values through both objects.
        let one = pair(&text, "container one ipc / mnt");
        assert!(one.0 != host_ipc && one.1 != host_mnt, "{text}");
        assert_eq!(fact(&text, "readlink /proc/self/ns/ipc"), one.0);
        assert_eq!(fact(&text, "readlink /proc/self/ns/mnt"), one.1);
        assert!(
            fact(&text, "result container").ends_with("0x5ca1ab1e00000010 twice, nattch 2"),
            "{text}"
        );
        // host: the host's namespace.
        assert_eq!(fact(&text, "container ipc"), host_ipc);
        // none: shm_open fails with the real errno, System V works.
        assert!(
            fact(&text, "result none").starts_with("shm_open = ENOENT, shmget = shmid "),
            "{text}"
        );
        assert!(
            text.contains("docker run --ipc=container:one IMAGE"),
            "{text}"
        );
        for role in ["private", "shareable", "host", "none"] {
            testkit::assert_nothing_left_by(10, child_pid(&text, role) as u32);
        }
    }
    testkit::assert_nothing_left_by(10, pid);
}

#[test]
fn part2_sigterm_while_a_shareable_container_holds() {
    let mut run = testkit::start(bin(), &["--part", "2", "--hold", "600"]);
    let lesson = run.pid();
    run.wait_for("holding for 600 s", Duration::from_secs(60));
    let one = child_pid(&run.seen, "shareable");
    let theirs = (
        ns::identity(Some(Pid::from_raw(one)), "ipc").expect("alive"),
        ns::identity(Some(Pid::from_raw(one)), "mnt").expect("alive"),
    );
    assert_ne!(Some(theirs.0.clone()), ns::identity(None, "ipc"));
    assert_ne!(Some(theirs.1.clone()), ns::identity(None, "mnt"));
    // Its object is in its own /dev/shm, not in the host's.
    let name = format!("shm-lessons-10-{one}-shareable");
    assert!(!testkit::shm_exists(&name), "{name} is on the host");
    assert!(
        std::fs::metadata(format!("/proc/{one}/root/dev/shm/{name}")).is_ok()
            || !testkit::is_root(),
        "{name} is not in the container's /dev/shm"
    );
    run.signal(nix::sys::signal::Signal::SIGTERM);
    let (code, err) = run.finish(Duration::from_secs(30));
    assert_eq!(code, Some(143), "{err}");
    // The lesson stopped the container with SIGTERM, not SIGKILL: its own
    // cleanup ran (what it removed, it says on stderr), then the lesson
    // reaped it before exiting.
    assert!(
        err.contains(&format!("cleanup: shm_unlink(\"/{name}\")")),
        "the container's own cleanup did not run:\n{err}"
    );
    all_gone(&[one], "ipc", &theirs.0);
    testkit::assert_nothing_left_by(10, lesson);
    testkit::assert_nothing_left_by(10, one as u32);
}

#[test]
fn part3_a_64_mib_dev_shm_gives_sigbus_or_enospc() {
    let (pid, out) = testkit::run_with_pid(bin(), &["--part", "3"]);
    if ran(&out) {
        let text = stdout(&out);
        assert_eq!(fact(&text, "df /dev/shm"), "67108864 bytes", "{text}");
        // The child was killed by SIGBUS, and its own handler saw BUS_ADRERR.
        assert_eq!(fact(&text, "the child"), "killed by SIGBUS (signal 7)");
        let r = fact(&text, "result ftruncate");
        assert!(r.starts_with("SIGBUS with si_code=BUS_ADRERR"), "{r}");
        // It wrote exactly what the tmpfs holds, then faulted.
        let bytes = testkit::number_after(r, "pages (");
        assert_eq!(bytes, 64 << 20, "{r}");
        let pages = testkit::number_after(r, " after ") as usize;
        assert_eq!(pages * inspect::page_size(), 64 << 20, "{r}");
        assert!(
            text.contains("posix_fallocate(4, 0, 100663296) = -1 ENOSPC (No space left on device)")
                || text.contains(", 0, 100663296) = -1 ENOSPC"),
            "{text}"
        );
        assert!(text.contains(
            "could not resize shared memory segment \"/PostgreSQL.NNN\" to 100663296 bytes: No space left on device"
        ));
        testkit::assert_nothing_left_by(10, child_pid(&text, "shm-size") as u32);
    }
    testkit::assert_nothing_left_by(10, pid);
}

fn host_sysctls() -> Vec<(String, String)> {
    ["shmmax", "shmall", "shmmni", "shm_rmid_forced"]
        .iter()
        .map(|n| {
            let v = std::fs::read_to_string(format!("/proc/sys/kernel/{n}")).unwrap();
            (n.to_string(), v)
        })
        .collect()
}

#[test]
fn part4_small_limits_in_the_lessons_namespace_give_the_documented_errnos() {
    let before = host_sysctls();
    let (pid, out) = testkit::run_with_pid(bin(), &["--part", "4"]);
    assert_eq!(host_sysctls(), before, "the host's kernel.shm* changed");
    if ran(&out) {
        let text = stdout(&out);
        let page = inspect::page_size();
        assert_eq!(
            fact(&text, "result shmmax"),
            format!("EINVAL for {} bytes", 2 * page)
        );
        assert_eq!(
            fact(&text, "result shmall"),
            "ENOSPC after 2 one-page segments"
        );
        assert_eq!(fact(&text, "result shmmni"), "ENOSPC after 2 segments");
        assert_eq!(
            fact(&text, "result shm_rmid_forced=0"),
            "still there after the last shmdt"
        );
        assert_eq!(
            fact(&text, "result shm_rmid_forced=1"),
            "gone at the last shmdt (IPC_STAT: EINVAL)"
        );
        // The writes happened in the child's namespace, not the host's.
        let child = child_pid(&text, "limits");
        assert!(text.contains(&format!("child: pid {child} (limits)\n  ▸ unshare(")));
        assert!(text.contains("write(\"/proc/sys/kernel/shmmni\", \"2\") = 0"));
        if text.contains("------ Shared Memory Limits") {
            assert!(text.contains("| max number of segments = 2"), "{text}");
        }
        assert_eq!(fact(&text, "result host limits"), "unchanged");
    }
    testkit::assert_nothing_left_by(10, pid);
}

#[test]
fn the_whole_lesson_runs_as_nobody() {
    let before = host_sysctls();
    let Some(out) = testkit::run_as_nobody(bin(), &[]) else {
        return;
    };
    assert_eq!(host_sysctls(), before, "the host's kernel.shm* changed");
    if ran(&out) {
        let text = stdout(&out);
        for r in [
            "result 1",
            "result none",
            "result ftruncate",
            "result host limits",
        ] {
            fact(&text, r);
        }
        // Part 4 sets the limits, or shows the kernel refusing the write.
        if !text.contains("result limits: refused (") {
            fact(&text, "result shmmni");
        }
        assert_eq!(
            fact(&text, "result logout 65534"),
            "removed 1 segment(s) and 1 file(s)"
        );
    }
}

#[test]
fn part5_removeipc_is_read_from_this_machine_and_emulated_in_namespaces() {
    let (pid, out) = testkit::run_with_pid(bin(), &["--part", "5"]);
    if ran(&out) {
        let text = stdout(&out);
        // The setting, as the test finds it: an uncommented RemoveIPC= in a
        // logind.conf anywhere systemd looks, else the default.
        let set_somewhere = ["/etc", "/run", "/usr/local/lib", "/usr/lib"]
            .iter()
            .flat_map(|d| {
                let main = format!("{d}/systemd/logind.conf");
                let dropins = std::fs::read_dir(format!("{d}/systemd/logind.conf.d"))
                    .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
                    .unwrap_or_else(|_| Vec::new());
                std::iter::once(main.into()).chain(dropins)
            })
            .filter_map(|p: std::path::PathBuf| std::fs::read_to_string(p).ok())
            .any(|t| {
                t.lines()
                    .filter_map(|l| l.split_once('='))
                    .any(|(k, _)| k.trim() == "RemoveIPC")
            });
        let effective = fact(&text, "RemoveIPC, effective");
        assert_eq!(
            effective.starts_with("yes (the default"),
            !set_somewhere,
            "{effective}"
        );
        let logind = fact(&text, "systemd-logind");
        assert_eq!(
            logind.starts_with("not systemd"),
            !Path::new("/run/systemd/system").exists(),
            "{logind}"
        );
        if testkit::is_root() {
            assert_eq!(
                fact(&text, "result logout 1000"),
                "removed 1 segment(s) and 1 file(s)"
            );
            let sys = testkit::number_after(&text, "system users: uid <= ");
            assert_eq!(fact(&text, &format!("result logout {sys}")), "spared");
        }
    }
    testkit::assert_nothing_left_by(10, pid);
}

/// proc(5): with kernel.shm_rmid_forced = 1 in the namespace the lesson runs
/// in (a private IPC namespace of the test's own), part 2's --ipc=host
/// container, which shares that namespace, still removes its segment: it
/// marks it with IPC_RMID while attached, then detaches (a shmdt first would
/// already destroy it, and IPC_RMID would fail with EINVAL).
#[test]
fn part2_host_mode_removes_its_segment_under_shm_rmid_forced() {
    let Some((_, out)) =
        testkit::run_in_ipc_namespace(bin(), &["--part", "2"], &[("shm_rmid_forced", "1")])
    else {
        return;
    };
    if !ran(&out) {
        return;
    }
    let text = stdout(&out);
    let (_, host) = text
        .split_once("--ipc=host: docker run --ipc=host IMAGE")
        .unwrap_or_else(|| panic!("no --ipc=host part:\n{text}"));
    let host = host.split("  · ").next().unwrap();
    assert!(
        host.lines().any(|l| l.contains("IPC_RMID, NULL) = 0")),
        "{text}"
    );
}

#[test]
fn part4_a_read_only_proc_sys_is_shown_not_hidden() {
    // /proc/sys read-only, as in a container: staged with a read-only bind
    // mount in a private mount namespace of the test's own (never the host's).
    if !testkit::is_root() {
        eprintln!("skipped: staging a read-only /proc/sys needs root");
        return;
    }
    let before = host_sysctls();
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount --bind -o ro /proc/sys /proc/sys || exit 125; exec \"$0\" \"$@\"")
        .arg(bin())
        .args(["--part", "4"])
        .env("NO_COLOR", "1")
        .output()
        .expect("run unshare");
    if out.status.code() == Some(125) {
        eprintln!("skipped: no private mount namespace for the test");
        return;
    }
    assert_eq!(host_sysctls(), before, "the host's kernel.shm* changed");
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("write(\"/proc/sys/kernel/shmmni\", ") && text.contains(") = -1 EROFS"),
        "{text}"
    );
    assert_eq!(fact(&text, "result limits"), "refused (EROFS)", "{text}");
    assert_eq!(fact(&text, "result host limits"), "unchanged");
}

#[test]
fn part2_none_on_a_glibc_that_searches_the_mount_table_never_calls_shm_open() {
    // glibc before 2.34 would look for a tmpfs in the mount table, which in
    // the container's namespace holds the host's mounts: the lesson must not
    // create anything there. Simulated (the switch lesson 4 reads too).
    let out = std::process::Command::new(bin())
        .args(["--part", "2"])
        .env("SHM_LESSONS_SIMULATE_GLIBC", "2.33")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    if !ran(&out) {
        return;
    }
    let text = stdout(&out);
    let none = child_pid(&text, "none");
    assert!(
        !text.contains(&format!("shm_open(\"/shm-lessons-10-{none}-none\"")),
        "shm_open was called:\n{text}"
    );
    assert!(
        fact(&text, "result none").starts_with("shm_open = not called, shmget = shmid "),
        "{text}"
    );
    assert!(text.contains("glibc 2.33 (simulated)"), "{text}");
}
