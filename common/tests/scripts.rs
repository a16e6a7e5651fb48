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

/// check-env's verdict for a lesson, as run-all would report the run:
/// `full`/`partly` -> `pass`, `fails` -> `FAIL`, `skipped` -> `skip`.
fn predicted(report: &str, folder: &str) -> Option<&'static str> {
    let line = report
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{folder} ")))?;
    match line.split_whitespace().nth(1)? {
        "full" | "partly" => Some("pass"),
        "fails" => Some("FAIL"),
        "skipped" => Some("skip"),
        _ => None,
    }
}

/// The RESULT column of run-all's summary row for a lesson.
fn seen(summary: &str, folder: &str) -> Option<String> {
    summary
        .lines()
        .find(|l| l.starts_with("lesson-") && l.split_whitespace().nth(1) == Some(folder))
        .and_then(|l| l.split_whitespace().nth(2))
        .map(str::to_string)
}

/// A machine condition, staged only inside namespaces of the test's own
/// (never the host's mounts or sysctls): run `prefix sh -c "SETUP exec sh
/// SCRIPT"`. `{save}` in SETUP is a scratch directory of the test.
struct Condition {
    name: &'static str,
    prefix: &'static [&'static str],
    setup: &'static str,
}

const AS_IS: Condition = Condition {
    name: "as it is here",
    prefix: &[],
    setup: "",
};

/// The conditions that need root (namespaces, another uid).
const STAGED: [Condition; 6] = [
    Condition {
        name: "a fresh IPC namespace",
        prefix: &["unshare", "-i"],
        setup: "",
    },
    Condition {
        name: "kernel.shm_rmid_forced=1 (private IPC namespace)",
        prefix: &["unshare", "-i"],
        setup: "echo 1 > /proc/sys/kernel/shm_rmid_forced &&",
    },
    Condition {
        name: "a 64 MiB /dev/shm (private mount namespace)",
        prefix: &["unshare", "-m", "--propagation", "private"],
        setup: "mount -t tmpfs -o size=64m,mode=1777 tmpfs /dev/shm &&",
    },
    Condition {
        name: "a 256 KiB /dev/shm (private mount namespace)",
        prefix: &["unshare", "-m", "--propagation", "private"],
        setup: "mount -t tmpfs -o size=256k,mode=1777 tmpfs /dev/shm &&",
    },
    // A fresh /dev with only the device nodes a shell needs, bound from the
    // real /dev: no shm directory, and a private IPC namespace.
    Condition {
        name: "no /dev/shm, own IPC namespace (docker --ipc=none)",
        prefix: &["unshare", "-i", "-m", "--propagation", "private"],
        setup: "mount --bind /dev '{save}' && mount -t tmpfs -o size=64k,mode=755 tmpfs /dev && \
                for f in null zero full random urandom tty; do \
                touch /dev/$f && mount --bind '{save}'/$f /dev/$f || exit 1; done &&",
    },
    Condition {
        name: "an unprivileged user (uid 65534)",
        prefix: &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        setup: "",
    },
];

/// Item 22 of issue 13: for every lesson, check-env's verdict is exactly what
/// run-all then sees, under the same conditions: as they are here, in a
/// fresh IPC namespace, with kernel.shm_rmid_forced=1 in a private IPC
/// namespace, with a 64 MiB and a 256 KiB /dev/shm (a fresh tmpfs mounted
/// over /dev/shm in a private mount namespace), with no /dev/shm at all
/// (docker --ipc=none: a private IPC namespace and a /dev without shm), and
/// as an unprivileged user. run-all runs prebuilt binaries
/// (SHM_LESSONS_BIN_DIR), lesson-8 with --quick.
#[test]
fn check_env_predicts_what_run_all_sees_in_every_condition() {
    let lessons: Vec<(String, String)> = lessons();
    // Build every lesson and copy them where any user can run them.
    let mut build = Command::new(env!("CARGO"));
    build.current_dir(root()).args(["build", "-q"]);
    for (_, p) in &lessons {
        build.args(["-p", p]);
    }
    assert!(build.status().unwrap().success(), "cargo build failed");
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("debug");
    let dir = std::env::temp_dir().join(format!("shm-lessons-conditions-{}", std::process::id()));
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let _rm = common::cleanup::path(&dir);
    use std::os::unix::fs::PermissionsExt;
    for d in [&dir, &bin] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    for (_, p) in &lessons {
        fs::copy(target.join(p), bin.join(p)).unwrap();
    }
    let numbers: Vec<String> = lessons
        .iter()
        .map(|(_, p)| p.trim_start_matches("lesson-").to_string())
        .collect();
    // run-all keeps its logs when a lesson fails (some conditions expect
    // failures): they go to a TMPDIR inside `dir`, removed with it. Sticky and
    // world-writable, as /tmp is, for the unprivileged condition.
    let logs = dir.join("tmp");
    fs::create_dir_all(&logs).unwrap();
    fs::set_permissions(&logs, fs::Permissions::from_mode(0o1777)).unwrap();
    let script = dir.join("both.sh");
    fs::write(
        &script,
        format!(
            "cd '{}' || exit 1\nscripts/check-env\necho '=== RUN-ALL'\n\
             TMPDIR='{}' SHM_LESSONS_BIN_DIR='{}' scripts/run-all {}\n",
            root().display(),
            logs.display(),
            bin.display(),
            numbers.join(" ")
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let script = script.display().to_string();
    let devsave = dir.join("dev");
    fs::create_dir_all(&devsave).unwrap();
    let devsave = devsave.display().to_string();

    let mut conditions = vec![&AS_IS];
    if nix::unistd::geteuid().is_root() {
        conditions.extend(STAGED.iter());
    } else {
        eprintln!("not root: only the machine as it is (the other conditions need namespaces)");
    }

    let mut table = String::new();
    let mut wrong = Vec::new();
    for c in &conditions {
        let shell = format!("{} exec sh '{script}'", c.setup.replace("{save}", &devsave));
        let mut argv: Vec<&str> = c.prefix.to_vec();
        argv.extend(["sh", "-c", &shell]);
        let out = Command::new(argv[0])
            .args(&argv[1..])
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let all = text(&out);
        let (report, summary) = all
            .split_once("=== RUN-ALL")
            .unwrap_or_else(|| panic!("{}: no run-all:\n{all}\n{out:?}", c.name));
        table.push_str(&format!("{}:\n", c.name));
        for (folder, _) in &lessons {
            let want = predicted(report, folder);
            let got = seen(summary, folder);
            table.push_str(&format!(
                "  {folder:<16} check-env {:<5} run-all {}\n",
                want.unwrap_or("?"),
                got.as_deref().unwrap_or("?")
            ));
            if want.is_none() || want != got.as_deref() {
                wrong.push(format!("{}: {folder}: {want:?} vs {got:?}\n{all}", c.name));
            }
        }
    }
    eprintln!("{table}");
    assert!(wrong.is_empty(), "{table}\n{}", wrong.join("\n"));
}
