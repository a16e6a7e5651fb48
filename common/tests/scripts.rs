//! The classroom scripts run here: `scripts/check-env` reports this machine
//! and every lesson, `scripts/run-all --list` finds every lesson.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn script(name: &str) -> Command {
    let mut c = Command::new(root().join("scripts").join(name));
    c.env("NO_COLOR", "1");
    c
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `(folder, package)` of every lesson, from `lessons/*/Cargo.toml`.
fn lessons() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in fs::read_dir(root().join("lessons")).unwrap() {
        let dir = e.unwrap().path();
        let manifest = fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let package = manifest
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .map(|l| l.trim_end_matches('"').to_string())
            .expect("a package name");
        out.push((
            dir.file_name().unwrap().to_string_lossy().into_owned(),
            package,
        ));
    }
    out.sort();
    out
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
            ["full", "partly", "skipped"]
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
