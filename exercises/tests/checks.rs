//! The checks are real: for every exercise the starting code FAILS its check
//! and the reference solution PASSES it; and whatever a student's program
//! does (panic, hang, SIGKILL, Ctrl-C on the checker), nothing is left in
//! /dev/shm or ipcs afterwards.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("exercises")
}

/// Every exercise folder: `exercises/NN_name` with a solution beside it.
fn ids() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root().join("exercises"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() > 3 && n[..2].chars().all(|c| c.is_ascii_digit()) && &n[2..3] == "_")
        .collect();
    out.sort();
    out
}

fn checker() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_exercises"));
    c.env("SHM_EX_TARGET_DIR", target_dir())
        .env(
            "XDG_STATE_HOME",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("shm-ex-test-{}", std::process::id())),
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    c
}

/// What is left of a checker run with this pid: `/dev/shm` entries under its
/// names, and System V segments under its key.
fn leftovers(checker_pid: u32) -> Vec<String> {
    let prefix = format!("shm-lessons-ex-{checker_pid}-");
    let key = ((0x53u32 << 24) | (0xe << 20) | (checker_pid & 0xf_ffff)) as i32;
    let mut out: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .map(|n| format!("/dev/shm/{n}"))
        .collect();
    let sysv = std::fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
    for line in sysv.lines().skip(1) {
        if line
            .split_whitespace()
            .next()
            .and_then(|k| k.parse::<i32>().ok())
            == Some(key)
        {
            out.push(format!("segment {line}"));
        }
    }
    out
}

/// Run `check ID [extra]`; the exit code and whatever is left afterwards.
fn check(id: &str, extra: &[&str]) -> (Option<i32>, Vec<String>, String) {
    let child = checker()
        .args(["check", id, "--no-build"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), leftovers(pid), text)
}

/// Build every exercise and solution once, into the checker's target dir.
fn build_all() {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if *built {
        return;
    }
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(["build", "--quiet", "--target-dir"])
        .arg(target_dir())
        .current_dir(root());
    for id in ids() {
        cmd.args(["-p", &format!("ex{id}"), "-p", &format!("sol{id}")]);
    }
    let status = cmd.status().unwrap();
    assert!(status.success(), "the exercises do not build");
    *built = true;
}

/// One exercise: its id, the exit codes of both checks, what went wrong.
type Row = (String, Option<i32>, Option<i32>, String);

#[test]
fn every_start_fails_and_every_solution_passes() {
    build_all();
    let ids = ids();
    assert!(ids.len() >= 16, "only {} exercises", ids.len());
    // At least two for every lesson folder (lessons/NN-name).
    for e in std::fs::read_dir(root().join("lessons")).unwrap() {
        let folder = e.unwrap().file_name().to_string_lossy().into_owned();
        let number = &folder[..2];
        let n = ids
            .iter()
            .filter(|id| id.starts_with(&format!("{number}_")))
            .count();
        assert!(
            n >= 2,
            "{folder} has {n} checked exercises, expected at least 2"
        );
    }
    let rows: Mutex<Vec<Row>> = Mutex::new(Vec::new());
    let next = Mutex::new(ids.iter());
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                loop {
                    let Some(id) = next.lock().unwrap().next() else {
                        break;
                    };
                    // A start that races (06_atomic_counter) can pass by luck
                    // on a busy machine, when its workers happen not to overlap:
                    // it must fail at least once in three tries.
                    let mut tries = 0;
                    let (start, left1, text1) = loop {
                        let got = check(id, &[]);
                        tries += 1;
                        if got.0 != Some(0) || tries == 3 {
                            break got;
                        }
                    };
                    let (sol, left2, text2) = check(id, &["--solution"]);
                    let mut notes = String::new();
                    // 77: the machine refuses what the check needs (a
                    // private mount namespace); both sides must agree.
                    let skipped = start == Some(77) && sol == Some(77);
                    if start != Some(1) && !skipped {
                        notes += &format!("\nstart:\n{text1}");
                    }
                    if sol != Some(0) && !skipped {
                        notes += &format!("\nsolution:\n{text2}");
                    }
                    if !left1.is_empty() || !left2.is_empty() {
                        notes += &format!("\nleft behind: {left1:?} {left2:?}");
                    }
                    rows.lock().unwrap().push((id.clone(), start, sol, notes));
                }
            });
        }
    });
    let mut rows = rows.into_inner().unwrap();
    rows.sort();
    println!("| exercise | start | solution |\n|---|---|---|");
    for (id, start, sol, _) in &rows {
        let word = |c: &Option<i32>| match c {
            Some(0) => "pass".to_string(),
            Some(1) => "FAIL".to_string(),
            Some(77) => "skip".to_string(),
            other => format!("{other:?}"),
        };
        println!("| {id} | {} | {} |", word(start), word(sol));
    }
    let bad: Vec<String> = rows
        .iter()
        .filter(|(_, _, _, notes)| !notes.is_empty())
        .map(|(id, s, t, notes)| format!("{id}: start {s:?}, solution {t:?}{notes}"))
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n\n"));
}

/// A student's program that creates a POSIX object and a System V segment,
/// forks a child that keeps both mapped, then misbehaves.
fn misbehaving(mode: &str) {
    let (code, left, text) = check("01_child_string", &["--fake", mode, "--timeout", "2"]);
    assert_eq!(code, Some(1), "the check should fail:\n{text}");
    assert!(
        left.is_empty(),
        "left behind after --fake {mode}: {left:?}\n{text}"
    );
}

#[test]
fn a_program_that_panics_leaves_nothing() {
    misbehaving("panic");
}

#[test]
fn a_program_that_hangs_is_killed_and_leaves_nothing() {
    misbehaving("hang");
}

#[test]
fn a_program_killed_by_sigkill_leaves_nothing() {
    misbehaving("kill");
}

#[test]
fn ctrl_c_on_the_checker_during_a_hang_leaves_nothing() {
    let mut child = checker()
        .args([
            "check",
            "01_child_string",
            "--no-build",
            "--fake",
            "hang",
            "--timeout",
            "60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait until the fake program has created its object, then Ctrl-C.
    let seen = (0..1000).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        leftovers(pid).iter().any(|l| l.ends_with("-obj"))
    });
    assert!(seen, "the fake program never created its object");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "the checker should end with 128 + SIGINT"
    );
    assert!(
        leftovers(pid).is_empty(),
        "left behind: {:?}",
        leftovers(pid)
    );
}

#[test]
fn the_list_names_every_exercise_and_ids_are_unique() {
    let out = checker().arg("list").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for id in ids() {
        assert!(text.contains(&id), "`list` does not show {id}");
        assert!(
            root()
                .join("exercises/solutions")
                .join(&id)
                .join("src/main.rs")
                .exists(),
            "{id} has no solution"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["check", "99_nothing"][..],
        &["frobnicate"],
        &["check", "01_child_string", "--bogus"],
    ] {
        let out = checker().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn hints_come_one_at_a_time_and_are_kept_outside_the_repository() {
    let state = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("shm-ex-hints-{}", std::process::id()));
    let hint = || {
        let out = checker()
            .env("XDG_STATE_HOME", &state)
            .args(["hint", "03_ftruncate"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = hint();
    assert!(
        first.contains("hint 1 of 3") && !first.contains("hint 2 of 3"),
        "{first}"
    );
    let second = hint();
    assert!(
        second.contains("hint 2 of 3") && !second.contains("hint 3 of 3"),
        "{second}"
    );
    let kept = std::fs::read_to_string(state.join("shm-lessons-exercises/03_ftruncate.hints"));
    assert_eq!(kept.unwrap().trim(), "2");
    let _ = std::fs::remove_dir_all(&state);
}

/// Ctrl-C during a check's build must stop cargo too: the checker blocks
/// SIGINT/SIGTERM/SIGHUP for its cleanup thread, and a program started with
/// `std::process::Command` keeps that mask through exec unless the checker
/// clears it. A stand-in for cargo records the mask it was started with.
#[test]
fn the_build_starts_with_no_signal_blocked() {
    let dir = std::env::temp_dir().join(format!("shm-ex-fake-cargo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("cargo");
    let record = dir.join("status");
    std::fs::write(
        &script,
        format!(
            // A builtin loop: /proc/self is the shell itself, with the mask
            // it was started with (no fork, no wait in between).
            "#!/bin/sh\nwhile read -r l; do case $l in Sig*) echo \"$l\";; esac; done \
             < /proc/self/status > '{}'\nexit 1\n",
            record.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = checker()
        .env("CARGO", &script)
        .args(["check", "01_child_string"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed build is a failed check"
    );
    let seen = std::fs::read_to_string(&record).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let mask = |name: &str| {
        let line = seen.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line[name.len()..].trim(), 16).unwrap()
    };
    assert_eq!(
        mask("SigBlk:"),
        0,
        "cargo started with signals blocked:\n{seen}"
    );
    let stop = (1 << (libc::SIGINT - 1)) | (1 << (libc::SIGTERM - 1)) | (1 << (libc::SIGHUP - 1));
    assert_eq!(
        mask("SigIgn:") & stop,
        0,
        "cargo started ignoring Ctrl-C:\n{seen}"
    );
}

/// Under a shared CARGO_TARGET_DIR (one per classroom), every student's
/// exercises are built into a folder of their own: cargo copies each build
/// of `ex01_child_string` to the same `debug/ex01_child_string`, so a shared
/// folder would let one student's check run another's program.
#[test]
fn a_shared_cargo_target_dir_gets_a_folder_per_user() {
    let dir = std::env::temp_dir().join(format!("shm-ex-fake-cargo2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("cargo");
    let record = dir.join("args");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\nexit 1\n",
            record.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let shared = dir.join("shared-target");
    let out = checker()
        .env_remove("SHM_EX_TARGET_DIR")
        .env("CARGO_TARGET_DIR", &shared)
        .env("CARGO", &script)
        .args(["check", "01_child_string"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed build is a failed check"
    );
    let args = std::fs::read_to_string(&record).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let uid = nix::unistd::getuid();
    let want = shared.join(format!("exercises-{uid}"));
    let got = args
        .lines()
        .skip_while(|a| *a != "--target-dir")
        .nth(1)
        .unwrap_or_default();
    assert_eq!(got, want.to_str().unwrap(), "cargo's arguments:\n{args}");
}
