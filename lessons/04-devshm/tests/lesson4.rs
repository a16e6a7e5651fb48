//! lesson-4 proves what it prints, on the running kernel, and that the host's
//! mounts and /dev/shm are exactly as they were.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{inspect, ns, testkit};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lesson-4"))
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run the whole lesson (NO_COLOR=1, stdin closed) with one more environment
/// variable, a test switch; returns its pid and output.
fn run_with_env(key: &str, value: &str) -> (u32, Output) {
    let child = Command::new(bin())
        .env("NO_COLOR", "1")
        .env(key, value)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    (pid, child.wait_with_output().unwrap())
}

/// The value of the `result N (...)` line the lesson prints for scenario N.
fn result_line(stdout: &str, n: usize) -> String {
    let head = format!("result {n} (");
    stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(&head))
        .and_then(|l| l.split_once("): "))
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| panic!("no result line for scenario {n} in:\n{stdout}"))
}

/// The host's /dev/shm as the test sees it before a run, to compare after.
struct Host {
    mountinfo: Vec<String>,
    dev_shm_dev: u64,
    dev_shm_ino: u64,
    sentinel: PathBuf,
}

const SENTINEL: &[u8] = b"lesson-4 must leave this file alone";

impl Host {
    fn before() -> Host {
        let md = std::fs::metadata("/dev/shm").expect("the host has /dev/shm");
        let name = testkit::unique_name("sentinel");
        let sentinel = Path::new("/dev/shm").join(name.trim_start_matches('/'));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&sentinel)
            .and_then(|mut f| f.write_all(SENTINEL))
            .unwrap();
        Host {
            mountinfo: ns::mount_table(),
            dev_shm_dev: md.dev(),
            dev_shm_ino: md.ino(),
            sentinel,
        }
    }

    /// The mount table, /dev/shm's identity and type, and our sentinel file
    /// in it are all unchanged.
    fn assert_unchanged(self) {
        let diff = ns::mount_table_diff(&self.mountinfo, &ns::mount_table());
        let still = std::fs::read(&self.sentinel);
        assert!(diff.is_empty(), "the host's mount table changed: {diff:#?}");
        let md = std::fs::metadata("/dev/shm").expect("/dev/shm still exists");
        assert_eq!(
            (md.dev(), md.ino()),
            (self.dev_shm_dev, self.dev_shm_ino),
            "/dev/shm is not the same directory on the same filesystem"
        );
        assert_eq!(inspect::fs_type("/dev/shm").unwrap().name, "tmpfs");
        assert_eq!(
            still.as_deref().ok(),
            Some(SENTINEL),
            "the sentinel file in /dev/shm was lost or changed"
        );
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Also on a failed assertion: never leave the sentinel behind.
        let _ = std::fs::remove_file(&self.sentinel);
    }
}

fn in_memory(fs: &inspect::FsType) -> bool {
    fs.name == "tmpfs" || fs.name == "ramfs"
}

/// Where the lesson may put its scratch directory, in its order of choice.
fn scratch_candidates() -> [PathBuf; 3] {
    [
        std::env::temp_dir(),
        PathBuf::from("/var/tmp"),
        bin().parent().unwrap().to_path_buf(),
    ]
}

/// The scratch directory the lesson printed (`scratch directory: PATH, on
/// FS`): on a disk whenever the temp dir or /var/tmp is.
fn scratch_dir(stdout: &str) -> PathBuf {
    let line = stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("scratch directory: "))
        .unwrap_or_else(|| panic!("no scratch directory line in:\n{stdout}"));
    let dir = PathBuf::from(line.split_once(", on ").unwrap().0);
    let parent = inspect::fs_type(dir.parent().unwrap()).unwrap();
    let disk_available = scratch_candidates()[..2]
        .iter()
        .any(|c| inspect::fs_type(c).is_ok_and(|t| !in_memory(&t)));
    if disk_available {
        assert!(!in_memory(&parent), "{} is on {parent}", dir.display());
    }
    dir
}

/// The filesystem scenario 2 must report: that of the directory holding the
/// scratch directory, as this test sees it.
fn expected_disk_fs(stdout: &str) -> inspect::FsType {
    inspect::fs_type(scratch_dir(stdout).parent().unwrap()).unwrap()
}

/// Each scenario's real outcome, as the lesson printed it.
fn assert_outcomes(stdout: &str) {
    let disk = expected_disk_fs(stdout);
    let tmpfs = "tmpfs (f_type 0x1021994)";
    assert_eq!(
        result_line(stdout, 0),
        format!("shm_open worked; the object is on {tmpfs}, in the mount at /dev/shm")
    );
    // Unmounted: a plain directory, so the object lands on /dev's tmpfs.
    assert_eq!(
        result_line(stdout, 1),
        format!("shm_open worked; the object is on {tmpfs}, in the mount at /dev")
    );
    // On disk: the type of the scratch directory's filesystem, not tmpfs.
    assert_eq!(
        result_line(stdout, 2),
        format!("shm_open worked; the object is on {disk}, in the mount at /dev/shm")
    );
    // On disk, the kernel's own count: a 4 MiB pwrite made 4 MiB dirty for
    // the disk (this process's write_bytes); on a memory filesystem, not.
    if Path::new("/proc/self/io").exists() {
        let rose = testkit::number_after(stdout, "this process's write_bytes: +");
        if in_memory(&disk) {
            assert!(rose < 4 << 20, "write_bytes +{rose} on {disk}");
        } else {
            assert!(rose >= 4 << 20, "write_bytes +{rose} on {disk}:\n{stdout}");
        }
    }
    // Removed: ENOENT on glibc 2.34+, and 2.33's search picks udev's /dev.
    let r3 = result_line(stdout, 3);
    if inspect::glibc_at_least(2, 34) == Some(true) {
        assert!(r3.starts_with("shm_open failed with ENOENT;"), "{r3}");
    }
    assert!(
        r3.ends_with("glibc 2.33's where_is_shmfs would have used /dev/"),
        "{r3}"
    );
    assert!(stdout.contains("| udev /dev tmpfs "), "{stdout}");
    assert!(
        stdout.contains("statfs(\"/dev/shm/\", &buf) = -1 ENOENT"),
        "where_is_shmfs's first statfs fails:\n{stdout}"
    );
    // Full: ftruncate works, SIGBUS after N > 0 pages that fit the tmpfs,
    // and posix_fallocate fails with ENOSPC.
    let r4 = result_line(stdout, 4);
    let rest = r4
        .strip_prefix("ftruncate to 4194304 worked; SIGBUS after ")
        .unwrap_or_else(|| panic!("{r4}"));
    let (pages, rest) = rest.split_once(" pages (tmpfs size ").unwrap();
    let (size, rest) = rest.split_once(')').unwrap();
    let pages: u64 = pages.parse().unwrap();
    let size: u64 = size.parse().unwrap();
    assert_eq!(size, 1 << 20, "the tmpfs is 1 MiB");
    assert!(
        pages > 0 && pages * inspect::page_size() as u64 <= size,
        "{pages} pages in {size} bytes"
    );
    assert_eq!(rest, "; posix_fallocate: ENOSPC");
    // PostgreSQL's message, built from this run's errno.
    let pid = lesson_pid(stdout);
    assert!(
        stdout.contains(&format!(
            "could not resize shared memory segment \"/shm-lessons-4-{pid}-s4-fallocate\" to \
             4194304 bytes: No space left on device"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("killed by SIGBUS (signal 7)"), "{stdout}");
    assert!(stdout.contains("si_code=BUS_ADRERR"), "{stdout}");
    assert!(stdout.contains("MS_REC|MS_PRIVATE, NULL) = 0"), "{stdout}");
}

/// The lesson's pid, from the names it printed (`/shm-lessons-4-<pid>-s0`).
fn lesson_pid(stdout: &str) -> u32 {
    testkit::number_after(stdout, "\"/shm-lessons-4-")
}

fn assert_nothing_left(pid: u32) {
    testkit::assert_nothing_left_by(4, pid);
    for dir in scratch_candidates() {
        let scratch = dir.join(format!("shm-lessons-4-{pid}-disk"));
        assert!(!scratch.exists(), "{} left behind", scratch.display());
    }
    // Scenarios 1 and 3 create objects in a /dev of their own: never in the
    // host's devtmpfs.
    let prefix = format!("shm-lessons-4-{pid}-");
    let in_dev: Vec<_> = std::fs::read_dir("/dev")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(
        in_dev.is_empty(),
        "written into the host's /dev: {in_dev:?}"
    );
}

/// Exit status 77 is accepted only when the kernel really refuses: the
/// lesson names the refused call, it was not simulated, and unshare(1)
/// fails here too (run as nobody when `as_nobody`).
fn assert_refusal_is_real(stdout: &str, as_nobody: bool) {
    assert!(!stdout.contains("simulated"), "{stdout}");
    // unshare itself, or (Ubuntu 24.04's AppArmor rule) the uid map or the
    // first mount inside a namespace without capabilities.
    assert!(
        stdout.contains("no private mount namespace: ") && stdout.contains(" = -1 E"),
        "{stdout}"
    );
    let probe = if as_nobody {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(["unshare", "--user", "--map-root-user", "--mount", "true"])
            .status()
    } else if testkit::is_root() {
        Command::new("unshare").args(["--mount", "true"]).status()
    } else {
        Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "true"])
            .status()
    };
    if let Ok(status) = probe {
        assert!(
            !status.success(),
            "lesson-4 exited 77, but unshare(1) works here:\n{stdout}"
        );
    }
}

#[test]
fn every_scenario_shows_its_real_outcome_and_the_host_is_untouched() {
    let host = Host::before();
    let (pid, out) = testkit::run_with_pid(bin(), &[]);
    let (stdout, stderr) = text(&out);
    if out.status.code() == Some(77) {
        assert_refusal_is_real(&stdout, false);
    } else {
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert_outcomes(&stdout);
        assert!(
            stdout.contains("/proc/self/mountinfo: unchanged"),
            "{stdout}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    host.assert_unchanged();
    assert_nothing_left(pid);
}

#[test]
fn works_for_an_unprivileged_user_through_a_user_namespace() {
    let host = Host::before();
    let Some(out) = testkit::run_as_nobody(bin(), &[]) else {
        host.assert_unchanged();
        return;
    };
    let (stdout, stderr) = text(&out);
    if out.status.code() == Some(77) {
        assert_refusal_is_real(&stdout, true);
    } else {
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(
            stdout.contains("unshare(CLONE_NEWUSER|CLONE_NEWNS) = 0"),
            "{stdout}"
        );
        assert!(stdout.contains("\"/proc/self/uid_map\", \"0 65534 1\") = 9"));
        assert_outcomes(&stdout);
    }
    host.assert_unchanged();
    assert_nothing_left(lesson_pid(&stdout));
}

#[test]
fn without_namespaces_it_explains_every_scenario_and_exits_77() {
    let host = Host::before();
    let (pid, out) = run_with_env(ns::DENY_ENV, "1");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(77), "{stdout}\n{stderr}");
    // The baseline needs no namespace, so it still ran for real.
    assert!(result_line(&stdout, 0).starts_with("shm_open worked"));
    // Which call failed, and why.
    assert!(
        stdout.contains("= -1 EPERM (Operation not permitted)"),
        "{stdout}"
    );
    assert!(stdout.contains("simulated by SHM_LESSONS_DENY_UNSHARE=1"));
    assert!(stdout.contains("CAP_SYS_ADMIN"));
    // Every remaining scenario is still explained, and how to run it.
    for expected in [
        "1. Unmounted:",
        "2. On a disk:",
        "ENOENT",
        "/dev/mymem",
        "SIGBUS",
        "ENOSPC",
        "sudo ./target/debug/lesson-4",
        "exit status 77",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?}:\n{stdout}");
    }
    // Nothing was staged: no mount at all was attempted.
    assert!(!stdout.contains("MS_PRIVATE"), "{stdout}");
    assert!(!stdout.contains("result 1 ("), "{stdout}");
    host.assert_unchanged();
    assert_nothing_left(pid);
}

#[test]
fn concurrent_runs_never_collide() {
    let host = Host::before();
    for (pid, out) in testkit::run_concurrently(bin(), &[], 3) {
        let (stdout, stderr) = text(&out);
        if out.status.code() == Some(77) {
            assert_refusal_is_real(&stdout, false);
        } else {
            assert!(out.status.success(), "{stdout}\n{stderr}");
            assert!(result_line(&stdout, 4).ends_with("posix_fallocate: ENOSPC"));
            // Scenario 0 opens its object in the host's /dev/shm, shared by
            // every run: its name carries this run's pid.
            assert!(
                stdout.contains(&format!("shm_open(\"/shm-lessons-4-{pid}-s0\"")),
                "{stdout}"
            );
        }
        assert_nothing_left(pid);
    }
    host.assert_unchanged();
}

#[test]
fn bad_arguments_print_usage_and_exit_2() {
    testkit::assert_usage_errors(
        bin(),
        "lesson-4",
        &[&["--bogus"], &["extra"], &["--only", "5"], &["--only", "x"]],
    );
    // The internal entry point checks its arguments too, and stages nothing.
    for args in [
        &["--internal-scenario"][..],
        &["--internal-scenario", "x", "/n", "/tmp"],
        &["--internal-scenario", "1", "/n", "/tmp"],
        &["--internal-scenario", "1", "/n", "/tmp", "soon"],
        &["--internal-scenario", "5", "/n", "/tmp"],
    ] {
        let out = Command::new(bin()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage: lesson-4"));
        assert!(!String::from_utf8_lossy(&out.stdout).contains("unshare"));
    }
}

#[test]
fn sigterm_during_a_hold_removes_what_the_killed_child_left() {
    let host = Host::before();
    for only in ["0", "2"] {
        let mut run = testkit::start(bin(), &["--only", only, "--hold", "30"]);
        let pid = run.pid();
        let file = format!("shm-lessons-4-{pid}-s{only}");
        run.wait_for("holding for 30 s", std::time::Duration::from_secs(20));
        let scratch = scratch_dir(&run.seen);
        // The object exists during the hold: on the host's /dev/shm for the
        // baseline, as a file in the scratch directory for the disk case.
        let object = if only == "0" {
            Path::new("/dev/shm").join(&file)
        } else {
            scratch.join(&file)
        };
        assert!(object.exists(), "{} during the hold", object.display());
        // Stop only the parent: its cleanup kills the child (whose own
        // guards then never run) and removes what the child left.
        run.signal(nix::sys::signal::Signal::SIGTERM);
        let (status, stderr) = run.finish(std::time::Duration::from_secs(10));
        assert_eq!(status, Some(143), "{stderr}");
        assert!(stderr.contains("cleanup: kill("), "{stderr}");
        assert!(!object.exists(), "{} left behind", object.display());
        assert!(!scratch.exists(), "{} left behind", scratch.display());
        assert_nothing_left(pid);
    }
    host.assert_unchanged();
}

#[test]
fn only_runs_the_scenario_asked_for() {
    let (pid, out) = testkit::run_with_pid(bin(), &["--only", "3"]);
    let (stdout, stderr) = text(&out);
    if out.status.code() == Some(77) {
        return assert_refusal_is_real(&stdout, false);
    }
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(result_line(&stdout, 3).contains("where_is_shmfs would have used /dev/"));
    assert!(!stdout.contains("result 2 ("), "{stdout}");
    assert_nothing_left(pid);
}

#[test]
fn a_crashed_child_is_reported_and_what_it_left_is_removed() {
    let host = Host::before();
    for only in ["0", "2"] {
        let mut run = testkit::start(bin(), &["--only", only, "--hold", "30"]);
        let pid = run.pid();
        run.wait_for("holding for 30 s", std::time::Duration::from_secs(20));
        let scratch = scratch_dir(&run.seen);
        let file = format!("shm-lessons-4-{pid}-s{only}");
        let object = if only == "0" {
            Path::new("/dev/shm").join(&file)
        } else {
            scratch.join(&file)
        };
        assert!(object.exists(), "{} during the hold", object.display());
        // The scenario's child (which this test's lesson started) dies
        // without running any cleanup of its own.
        let child: i32 = run
            .seen
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("child: pid "))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no child pid in:\n{}", run.seen));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let (status, stderr) = run.finish(std::time::Duration::from_secs(10));
        assert_eq!(status, Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("scenario {only}'s child killed by SIGKILL")),
            "{stderr}"
        );
        assert!(!object.exists(), "{} left behind", object.display());
        assert!(!scratch.exists(), "{} left behind", scratch.display());
        assert_nothing_left(pid);
    }
    host.assert_unchanged();
}

/// Objects named `shm-lessons-4-<pid>-*` in any tmpfs the host has mounted
/// (/run, /dev/shm, ...): where old glibc's search could have put them.
fn objects_in_host_tmpfs(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("shm-lessons-4-{pid}-");
    inspect::mounts()
        .iter()
        .filter(|m| m.fs_type == "tmpfs")
        .filter_map(|m| std::fs::read_dir(&m.mount_point).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// SIMULATION (SHM_LESSONS_SIMULATE_GLIBC=2.33): on glibc before 2.34,
/// shm_open searches the mount table for a tmpfs when /dev/shm is not one.
/// Scenarios 2 and 3 must then only replay the search, never call shm_open
/// (it could create the object in a host tmpfs such as /run), and
/// check-env must predict "partly", with the reason.
#[test]
fn on_glibc_before_2_34_scenarios_2_and_3_only_replay_the_search() {
    let host = Host::before();
    let (pid, out) = run_with_env("SHM_LESSONS_SIMULATE_GLIBC", "2.33");
    let (stdout, stderr) = text(&out);
    if out.status.code() == Some(77) {
        return assert_refusal_is_real(&stdout, false);
    }
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("simulated: SHM_LESSONS_SIMULATE_GLIBC=2.33"),
        "{stdout}"
    );
    for n in [2, 3] {
        let call = format!("shm_open(\"/shm-lessons-4-{pid}-s{n}\"");
        assert!(
            !stdout.contains(&call),
            "scenario {n} called {call}:\n{stdout}"
        );
    }
    let r2 = result_line(&stdout, 2);
    assert!(
        r2.starts_with("shm_open not called: glibc 2.33 (simulated) would use /"),
        "{r2}"
    );
    let r3 = result_line(&stdout, 3);
    assert_eq!(
        r3,
        "shm_open not called on glibc 2.33 (simulated); glibc 2.33's where_is_shmfs would have \
         used /dev/"
    );
    // The other scenarios run as usual.
    assert!(result_line(&stdout, 1).starts_with("shm_open worked"));
    assert!(result_line(&stdout, 4).ends_with("posix_fallocate: ENOSPC"));
    let stray = objects_in_host_tmpfs(pid);
    assert!(stray.is_empty(), "created in a host tmpfs: {stray:?}");
    host.assert_unchanged();
    assert_nothing_left(pid);

    // check-env predicts it: "partly", with the reason.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let env = Command::new(root.join("scripts/check-env"))
        .env("SHM_LESSONS_SIMULATE_GLIBC", "2.33")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&env.stdout);
    let row = report
        .lines()
        .find(|l| l.trim_start().starts_with("04-devshm"))
        .unwrap_or_else(|| panic!("no 04-devshm row:\n{report}"));
    let verdict = row.split_whitespace().nth(1);
    assert_eq!(verdict, Some("partly"), "{row}");
    assert!(
        row.contains("glibc 2.33 (simulated) is older than 2.34"),
        "{row}"
    );
    assert!(row.contains("never calls shm_open"), "{row}");
}
