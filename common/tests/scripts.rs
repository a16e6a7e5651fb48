//! The classroom scripts run here: `scripts/check-env` reports this machine
//! and every lesson, `scripts/run-all --list` finds every lesson.

use std::fs;
use std::process::{Command, Output};

mod workspace;
use workspace::{lessons, root};

fn script(name: &str) -> Command {
    let mut c = Command::new(root().join("scripts").join(name));
    c.env("NO_COLOR", "1");
    c
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The CPUs this process may run on, as `nproc` counts them.
fn usable_cpus() -> usize {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    (0..nix::sched::CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .count()
}

#[test]
fn check_env_reports_this_machine() {
    let child = script("check-env")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report = text(&out);

    let kernel = common::inspect::kernel_release();
    assert!(
        report.contains("kernel") && report.contains(&kernel),
        "no kernel {kernel}:\n{report}"
    );
    if let Some(v) = common::inspect::libc_version() {
        assert!(
            report.contains(&format!("glibc {v}")),
            "no glibc {v}:\n{report}"
        );
    }
    let cpus = usable_cpus();
    assert!(
        report.contains(&format!("{cpus} usable by this process")),
        "no CPU count {cpus}:\n{report}"
    );
    for needle in ["== /dev/shm", "unshare -Urm true", "ipcs"] {
        assert!(report.contains(needle), "missing {needle:?}:\n{report}");
    }
    // /dev/shm's filesystem, as statfs sees it.
    if let Ok(t) = common::inspect::fs_type("/dev/shm") {
        assert!(
            report.contains(t.name),
            "no filesystem {}:\n{report}",
            t.name
        );
    }
    // One verdict per lesson.
    for (folder, _) in lessons() {
        let line = report
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{folder} ")))
            .unwrap_or_else(|| panic!("no verdict for {folder}:\n{report}"));
        assert!(
            ["full", "partly", "fails", "skipped"]
                .iter()
                .any(|v| line.contains(v)),
            "{line}"
        );
    }
    // Its probe in /dev/shm is gone.
    let probe = format!("shm-lessons-0-check-{pid}-");
    let left: Vec<_> = fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&probe))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "check-env left {left:?}");
}

#[test]
fn check_env_rejects_unknown_arguments() {
    let out = script("check-env").arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}

#[test]
fn run_all_lists_every_lesson_in_order() {
    let out = script("run-all").arg("--list").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let list = text(&out);
    let mut last = 0;
    for (folder, package) in lessons() {
        let at = list
            .find(&format!("lessons/{folder}"))
            .unwrap_or_else(|| panic!("run-all --list misses {folder}:\n{list}"));
        assert!(at > last, "{folder} out of order:\n{list}");
        last = at;
        assert!(list.contains(&format!("cargo run -p {package}")), "{list}");
        // A lesson that offers --quick (lesson-8) is run with it.
        let src = root().join("lessons").join(&folder).join("src");
        let quick = fs::read_dir(&src).unwrap().any(|e| {
            fs::read_to_string(e.unwrap().path()).is_ok_and(|t| t.contains("\"--quick\""))
        });
        if quick {
            assert!(
                list.contains(&format!("cargo run -p {package} -- --quick")),
                "{list}"
            );
        }
    }
}

#[test]
fn run_all_selects_lessons_and_rejects_bad_arguments() {
    let (folder, package) = lessons().into_iter().next().unwrap();
    let number = package.trim_start_matches("lesson-").to_string();
    for pick in [number.as_str(), package.as_str(), folder.as_str()] {
        let out = script("run-all").args(["--list", pick]).output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        let list = text(&out);
        assert_eq!(list.lines().count(), 2, "header and one lesson:\n{list}");
        assert!(list.contains(&format!("lessons/{folder}")));
    }
    for bad in [
        vec!["--bogus"],
        vec!["--timeout"],
        vec!["--timeout", "0"],
        vec!["--timeout", "soon"],
        vec!["--list", "no-such-lesson"],
    ] {
        let out = script("run-all").args(&bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {out:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty(), "{bad:?}");
    }
}

#[test]
fn check_env_on_one_cpu_says_lessons_6_and_8_run_partly() {
    use std::os::unix::process::CommandExt;
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    let first = (0..nix::sched::CpuSet::count())
        .find(|&i| set.is_set(i).unwrap_or(false))
        .unwrap();
    let mut one = nix::sched::CpuSet::new();
    one.set(first).unwrap();
    let mut c = script("check-env");
    // SAFETY: between fork and exec the child only calls sched_setaffinity,
    // a plain system call (async-signal-safe), on a CpuSet built before fork.
    unsafe {
        c.pre_exec(move || {
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one)
                .map_err(std::io::Error::from)
        });
    }
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report = text(&out);
    assert!(report.contains("1 usable by this process"), "{report}");
    for (folder, _) in lessons() {
        let line = report
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{folder} ")))
            .unwrap();
        if folder.starts_with("06-") || folder.starts_with("08-") {
            assert!(
                line.contains(" partly ") && line.contains("one CPU"),
                "{line}"
            );
        }
    }
}

#[test]
fn run_all_runs_a_lesson_and_counts_exit_77_as_a_skip() {
    // Lesson 1 passes; lesson 4, told by its test switch that unshare is
    // refused, explains itself and exits 77: a skip, with the refused call.
    let (folder1, _) = lessons()
        .into_iter()
        .find(|(f, _)| f.starts_with("01-"))
        .unwrap();
    let (folder4, _) = lessons()
        .into_iter()
        .find(|(f, _)| f.starts_with("04-"))
        .unwrap();
    let out = script("run-all")
        .args(["1", "4"])
        .env(common::ns::DENY_ENV, "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let report = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |folder: &str| {
        report
            .lines()
            .find(|l| l.starts_with("lesson-") && l.contains(&format!(" {folder} ")))
            .unwrap_or_else(|| panic!("no row for {folder}:\n{report}"))
            .to_string()
    };
    assert!(row(&folder1).contains(" pass "), "{report}");
    let skip = row(&folder4);
    assert!(
        skip.contains(" skip ") && skip.contains("no private mount namespace: unshare("),
        "{report}"
    );
    assert!(
        report.contains("2 lessons: 1 passed, 1 skipped, 0 failed."),
        "{report}"
    );
}
