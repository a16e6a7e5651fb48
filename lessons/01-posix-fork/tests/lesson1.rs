//! lesson-1 proves what it prints, on the running kernel.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use assert_cmd::prelude::*;
use common::testkit;
use nix::sys::signal::Signal;
use predicates::prelude::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lesson-1"))
}

fn lesson() -> Command {
    let mut c = Command::new(bin());
    c.env("NO_COLOR", "1");
    c
}

#[test]
fn the_parent_reads_what_the_child_wrote() {
    let name = testkit::unique_name("value");
    lesson()
        .args(["--name", &name])
        .assert()
        .success()
        .stdout(predicate::str::contains("\nchild wrote 0xdeadbeef\n"))
        .stdout(predicate::str::contains(": exited with status 0\n"));
    assert!(!testkit::shm_exists(&name), "{name} was left behind");
}

#[test]
fn narration_shows_the_real_calls_and_evidence() {
    let name = testkit::unique_name("calls");
    let file = name.trim_start_matches('/');
    let out = lesson().args(["--name", &name]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let page = common::inspect::page_size();
    for expected in [
        format!("shm_open(\"{name}\", O_CREAT|O_EXCL|O_RDWR, 0600) = fd "),
        "ftruncate(".to_string(),
        format!(", {page}) = 0"),
        "MAP_SHARED".to_string(),
        "| -rw------- 1 ".to_string(),
        format!(" {page} {file}"),
        "rw-s 00000000".to_string(),
        format!("/dev/shm/{file}"),
        format!("shm_unlink(\"{name}\") = 0"),
        format!("ls: cannot access '/dev/shm/{file}': No such file or directory"),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
    }
    // Colour is off with NO_COLOR: no escape sequences in a log file.
    assert!(!text.contains('\x1b'), "escape codes with NO_COLOR=1");
}

#[test]
fn the_default_name_is_unique_to_the_run_and_removed() {
    let (pid, out) = testkit::run_with_pid(bin(), &[]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let start = text
        .find("shm_open(\"/shm-lessons-1-")
        .expect("default name");
    let name: String = text[start + 10..]
        .chars()
        .take_while(|c| *c != '"')
        .collect();
    // Unique to the run: the name carries this run's pid.
    assert_eq!(name, format!("/shm-lessons-1-{pid}"));
    assert!(!testkit::shm_exists(&name));
}

#[test]
fn bad_arguments_print_usage_and_exit_2() {
    testkit::assert_usage_errors(
        bin(),
        "lesson-1",
        &[
            &["--bogus"],
            &["--hold"],
            &["--hold", "soon"],
            &["--hold", "5", "--pause"],
            &["--name", "/a/b"],
            &["extra"],
        ],
    );
    lesson()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("--hold SECS"));
}

#[test]
fn an_existing_name_is_refused_with_eexist_and_left_alone() {
    let name = testkit::unique_name("taken");
    let path = format!("/dev/shm/{}", name.trim_start_matches('/'));
    std::fs::write(&path, b"someone else's").unwrap();
    lesson()
        .args(["--name", &name])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "ERROR [EEXIST File exists] shm_open(",
        ));
    let still = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        still, b"someone else's",
        "O_EXCL must not touch another object"
    );
}

#[test]
fn four_concurrent_runs_all_succeed() {
    for (pid, out) in testkit::run_concurrently(bin(), &[], 4) {
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("child wrote 0xdeadbeef"));
        testkit::assert_nothing_left_by(1, pid);
    }
}

#[test]
fn sigint_during_the_hold_exits_promptly_and_cleans_up() {
    for (sig, code) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
        let name = testkit::unique_name("sigint");
        let mut run = testkit::start(bin(), &["--hold", "30", "--name", &name]);
        run.wait_for("holding for 30 s", Duration::from_secs(10));
        assert!(
            testkit::shm_exists(&name),
            "the object exists during the hold"
        );
        run.signal(sig);
        let (status, stderr) = run.finish(Duration::from_secs(3));
        assert_eq!(status, Some(code), "stderr: {stderr}");
        assert!(stderr.contains("cleanup: shm_unlink"), "{stderr}");
        assert!(
            !testkit::shm_exists(&name),
            "{name} left behind after {sig}"
        );
    }
}

#[test]
fn works_for_an_unprivileged_user() {
    let name = testkit::unique_name("nobody");
    let Some(out) = testkit::run_as_nobody(bin(), &["--name", &name]) else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("child wrote 0xdeadbeef"));
    assert!(
        text.contains(" nobody "),
        "the object is owned by nobody:\n{text}"
    );
    assert!(!testkit::shm_exists(&name));
}
